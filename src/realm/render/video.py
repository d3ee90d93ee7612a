"""Side-by-side videos of listener motion: MP4 (H.264 + the speaker's audio) and GIF.

    from realm.render.video import Track, render_video
    gen = load_track("realm", "listener.npz")
    render_video("clip.mp4", [gen], audio="speech.wav", words="words.json", gif="clip.gif")

Panels, left to right: the speaker (waveform with a time cursor, the words appearing as they
are spoken), then one face per track (ground truth first, if given). ``arkit58`` tracks drive
the cartoon face of :mod:`realm.render.face`; other specs (``vico70``, ``vico73``,
``flame56``) show a neutral face that follows their head rotation plus a scrolling heat strip of
their expression coefficients (z-scored per channel over the clip, +-2 s around the cursor).

Frames are drawn with Pillow at twice the size and box-filtered down; the MP4 is encoded by
the ffmpeg binary of ``imageio-ffmpeg`` (libx264, ``yuv420p``, AAC audio), the GIF by Pillow.
Outputs are written atomically and never overwrite an existing file without ``force``.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from realm.audio import SAMPLE_RATE, load_audio
from realm.data.clip import Word
from realm.errors import RealmInputError
from realm.io import atomic_path
from realm.motion import MotionSpec, get_spec
from realm.render.face import draw_face, face_frame

#: Output size of one panel (pixels); drawing happens at SUPERSAMPLE times this.
PANEL_W, PANEL_H = 320, 384
SUPERSAMPLE = 2
TITLE_H = 34
BG = (232, 236, 242)
PANEL_BG = (246, 247, 250)
INK = (40, 44, 52)
MUTED = (150, 156, 166)
ACCENT = (214, 84, 60)
WAVE_PLAYED = (60, 110, 170)
WAVE_TODO = (186, 198, 214)
STRIP_SECONDS = 2.0  # heat strips show +- this many seconds around the cursor


# ---------------------------------------------------------------- inputs


@dataclass
class Track:
    """One listener to draw: a (T, D) motion array in ``spec`` at ``fps``."""

    name: str
    motion: np.ndarray
    spec: MotionSpec
    fps: float = 30.0

    def __post_init__(self) -> None:
        self.spec = get_spec(self.spec)
        self.motion = self.spec.validate(self.motion, self.name)

    @property
    def duration(self) -> float:
        return len(self.motion) / self.fps

    def frame_index(self, t: float) -> int:
        """The motion frame shown at time ``t`` (s); the last frame is held past the end."""
        return int(np.clip(round(t * self.fps), 0, len(self.motion) - 1))


def load_track(name: str, path: str | Path, spec: str | None = None, sample: int = 0) -> Track:
    """A :class:`Track` from a generated .npz (``listener`` (N, T, D), ``spec``, ``fps``) or a .npy file.

    ``sample`` picks the realisation of an (N, T, D) array; ``spec`` overrides the file's spec.
    """
    from realm.motion import load_motion_file

    mf = load_motion_file(path, spec)
    return Track(name, mf.realisation(sample), mf.spec, mf.fps)


def load_words(words: str | Path | Sequence | None) -> list[Word]:
    """Words from a words.json path (``[{"word", "start", "end"}, ...]``), Word objects or dicts."""
    if words is None:
        return []
    if isinstance(words, (str, Path)):
        path = Path(words)
        if not path.exists():
            raise RealmInputError(path, "words file not found")
        try:
            items = json.loads(path.read_text())
        except ValueError as e:
            raise RealmInputError(path, f"not valid JSON ({e})") from None
        source = path
    else:
        items, source = list(words), "<words>"
    out = []
    for i, w in enumerate(items):
        if isinstance(w, Word):
            out.append(w)
            continue
        try:
            out.append(Word(str(w["word"]), float(w["start"]), float(w["end"])))
        except (KeyError, TypeError, ValueError):
            raise RealmInputError(source, f"word {i} must be an object with word, start, end (seconds)") from None
    return sorted(out, key=lambda w: w.start)


# ---------------------------------------------------------------- drawing


_FONTS: dict[int, ImageFont.FreeTypeFont | ImageFont.ImageFont] = {}


def _font(size: int):
    if size not in _FONTS:
        _FONTS[size] = ImageFont.load_default(size=size)
    return _FONTS[size]


def _heat_colours(values: np.ndarray) -> np.ndarray:
    """(C, T) z-scores -> (C, T, 3) uint8 through a blue-white-red map (clipped at +-2.5)."""
    from matplotlib import colormaps

    lut = (colormaps["coolwarm"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)
    idx = np.clip((values / 2.5 + 1) / 2 * 255, 0, 255).astype(np.int64)
    return lut[idx]


@dataclass
class Compositor:
    """Draws the frames of one video. ``frame(i)`` -> (H, W, 3) uint8 for video frame ``i``.

    ``waveform`` is 16 kHz mono audio of the shown segment (``start`` .. ``start + duration``),
    or None for no speaker panel. ``words`` use clip time (seconds from the audio's start).
    """

    tracks: list[Track]
    waveform: np.ndarray | None
    words: list[Word]
    start: float
    duration: float
    fps: float = 30.0
    panel: tuple[int, int] = (PANEL_W, PANEL_H)
    title: str = ""
    _bg: Image.Image = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.ss = SUPERSAMPLE
        self.pw, self.ph = self.panel[0] * self.ss, self.panel[1] * self.ss
        self.n_panels = len(self.tracks) + (self.waveform is not None)
        if self.n_panels == 0:
            raise ValueError("nothing to render: give at least one motion track or audio")
        self.n_frames = max(1, int(round(self.duration * self.fps)))
        self.size = (self.panel[0] * self.n_panels, self.panel[1])  # output (width, height)
        self._build_background()
        self._strips = {i: self._strip_image(tr) for i, tr in enumerate(self.tracks) if tr.spec.name != "arkit58"}

    # -- static parts
    def _panel_x(self, k: int) -> int:
        return k * self.pw

    def _build_background(self) -> None:
        ss = self.ss
        img = Image.new("RGB", (self.pw * self.n_panels, self.ph), BG)
        d = ImageDraw.Draw(img)
        titles = (["speaker"] if self.waveform is not None else []) + [t.name for t in self.tracks]
        for k, name in enumerate(titles):
            x0 = self._panel_x(k)
            d.rectangle([x0 + 3 * ss, 3 * ss, x0 + self.pw - 3 * ss, self.ph - 3 * ss], fill=PANEL_BG)
            d.text((x0 + self.pw // 2, TITLE_H * ss // 2 + 2 * ss), name, font=_font(17 * ss), fill=INK, anchor="mm")
        if self.waveform is not None:
            self._wave_box = (10 * ss, (TITLE_H + 8) * ss, self.pw - 20 * ss, 84 * ss)  # x0, y0, w, h
            x0, y0, w, h = self._wave_box
            env = self._envelope(w)
            self._wave_todo = self._wave_image(env, WAVE_TODO)
            self._wave_played = self._wave_image(env, WAVE_PLAYED)
            img.paste(self._wave_todo, (x0, y0))
            d.text((x0, y0 + h + 4 * ss), f"{self.start:.1f} s", font=_font(11 * ss), fill=MUTED, anchor="lt")
            d.text((x0 + w, y0 + h + 4 * ss), f"{self.start + self.duration:.1f} s", font=_font(11 * ss),
                   fill=MUTED, anchor="rt")  # fmt: skip
        for k, tr in enumerate(self.tracks):
            if tr.spec.name != "arkit58":
                x0 = self._panel_x(k + (self.waveform is not None))
                y = int(self.ph * 0.62)
                label = f"{tr.spec.name} expression ({tr.spec.block('expression').size}), ±{STRIP_SECONDS:g} s"
                d.text((x0 + self.pw // 2, y - 6 * ss), label, font=_font(11 * ss), fill=MUTED, anchor="mb")
        self._bg = img

    def _envelope(self, width: int) -> np.ndarray:
        y = self.waveform
        n = max(1, len(y))
        edges = np.linspace(0, n, width + 1).astype(int)
        peak = np.array([np.abs(y[a:b]).max() if b > a else 0.0 for a, b in zip(edges[:-1], edges[1:], strict=True)])
        return peak / max(1e-6, float(np.abs(y).max()) if y.size else 1.0)

    def _wave_image(self, env: np.ndarray, colour) -> Image.Image:
        _, _, w, h = self._wave_box
        arr = np.empty((h, w, 3), np.uint8)
        arr[:] = PANEL_BG
        rows = np.arange(h)[:, None]
        half = (env[None, :] * (h / 2 - 2)).clip(0.5)
        mask = np.abs(rows - h / 2) <= half
        arr[mask] = colour
        return Image.fromarray(arr)

    def _strip_image(self, tr: Track) -> np.ndarray:
        """(C, T, 3) colours of a track's expression block, z-scored per channel over the track."""
        e = tr.spec.take(tr.motion, "expression").T.astype(np.float64)
        z = (e - e.mean(1, keepdims=True)) / np.maximum(e.std(1, keepdims=True), 1e-6)
        return _heat_colours(z)

    # -- per frame
    def time_of(self, i: int) -> float:
        """Clip time (s) of video frame ``i``."""
        return self.start + i / self.fps

    def frame(self, i: int) -> np.ndarray:
        t = self.time_of(i)
        img = self._bg.copy()
        d = ImageDraw.Draw(img)
        k0 = 0
        if self.waveform is not None:
            self._draw_speaker(img, d, t)
            k0 = 1
        for k, tr in enumerate(self.tracks):
            x0 = self._panel_x(k + k0)
            f = tr.motion[tr.frame_index(t)]
            if tr.spec.name == "arkit58":
                draw_face(d, f, (x0, (TITLE_H + 4) * self.ss, self.pw, self.ph - (TITLE_H + 8) * self.ss))
            else:
                self._draw_pose_strip(img, d, x0, tr, k, f, t)
            if t > tr.duration + 0.5 / tr.fps:
                d.text((x0 + self.pw // 2, self.ph - 10 * self.ss), "(motion ended)", font=_font(11 * self.ss),
                       fill=MUTED, anchor="mb")  # fmt: skip
        # progress bar along the bottom edge
        frac = (i + 1) / self.n_frames
        d.rectangle([0, self.ph - 3 * self.ss, int(img.width * frac), self.ph], fill=ACCENT)
        if self.ss > 1:
            img = img.reduce(self.ss)
        return np.asarray(img)

    def _draw_speaker(self, img: Image.Image, d: ImageDraw.ImageDraw, t: float) -> None:
        ss = self.ss
        x0, y0, w, h = self._wave_box
        frac = np.clip((t - self.start) / max(self.duration, 1e-6), 0, 1)
        cx = int(round(frac * (w - 1)))
        if cx > 0:
            img.paste(self._wave_played.crop((0, 0, cx, h)), (x0, y0))
        d.line([(x0 + cx, y0 - 2 * ss), (x0 + cx, y0 + h + 2 * ss)], fill=ACCENT, width=2 * ss)
        d.text((self.pw // 2, y0 + h + 4 * ss), f"t = {t:.2f} s", font=_font(13 * ss), fill=INK, anchor="mt")
        self._draw_words(d, t, top=y0 + h + 26 * ss)

    def _draw_words(self, d: ImageDraw.ImageDraw, t: float, top: int) -> None:
        """The words spoken so far (from the segment's start), wrapped; the current one highlighted."""
        ss = self.ss
        font = _font(16 * ss)
        said = [w for w in self.words if w.start <= t and w.end >= self.start - 1.0]
        if not said:
            if not self.words:
                d.text((self.pw // 2, top + 40 * ss), "(no transcript)", font=_font(12 * ss), fill=MUTED, anchor="mt")
            return
        left, right, line_h = 14 * ss, self.pw - 14 * ss, 22 * ss
        lines: list[list[tuple[Word, float]]] = [[]]
        x = left
        space = d.textlength(" ", font=font)
        for w in said:
            wl = d.textlength(w.word, font=font)
            if x + wl > right and lines[-1]:
                lines.append([])
                x = left
            lines[-1].append((w, x))
            x += wl + space
        max_lines = max(1, (self.ph - top - 12 * ss) // line_h)
        for j, line in enumerate(lines[-max_lines:]):
            for w, x in line:
                current = w.start <= t < w.end
                colour = ACCENT if current else (INK if t - w.end < 2.0 else MUTED)
                d.text((x, top + j * line_h + int(0.8 * line_h)), w.word, font=font, fill=colour, anchor="ls")

    def _draw_pose_strip(self, img, d, x0: int, tr: Track, k: int, f: np.ndarray, t: float) -> None:
        ss = self.ss
        arkit, _ = face_frame(tr.spec, f)
        face_h = int(self.ph * 0.62) - (TITLE_H + 26) * ss
        draw_face(d, arkit, (x0, (TITLE_H + 4) * ss, self.pw, face_h), pose_only=True)
        strip = self._strips[k]
        half = int(round(STRIP_SECONDS * tr.fps))
        c = tr.frame_index(t)
        cols = np.clip(np.arange(c - half, c + half + 1), 0, strip.shape[1] - 1)
        window = strip[:, cols].copy()
        outside = (np.arange(c - half, c + half + 1) < 0) | (np.arange(c - half, c + half + 1) >= strip.shape[1])
        window[:, outside] = PANEL_BG
        box = (x0 + 12 * ss, int(self.ph * 0.62), self.pw - 24 * ss, self.ph - int(self.ph * 0.62) - 16 * ss)
        im = Image.fromarray(window).resize((box[2], box[3]), Image.Resampling.NEAREST)
        img.paste(im, (box[0], box[1]))
        mid = box[0] + box[2] // 2
        d.line([(mid, box[1] - 2 * ss), (mid, box[1] + box[3] + 2 * ss)], fill=INK, width=2 * ss)


# ---------------------------------------------------------------- writing


@dataclass
class RenderResult:
    """What :func:`render_video` wrote and how long it took."""

    paths: list[Path]
    n_frames: int
    fps: float
    duration: float
    size: tuple[int, int]
    seconds: float  # wall-clock time of drawing + encoding

    @property
    def fps_rendered(self) -> float:
        return self.n_frames / max(self.seconds, 1e-9)


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary that ships with imageio-ffmpeg."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def render_video(
    out: str | Path | None,
    tracks: Sequence[Track],
    audio: str | Path | np.ndarray | None = None,
    words: str | Path | Sequence | None = None,
    start: float = 0.0,
    duration: float | None = None,
    fps: float = 30.0,
    gif: str | Path | None = None,
    gif_fps: float = 15.0,
    gif_scale: float = 0.5,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
    title: str = "",
) -> RenderResult:
    """Render ``tracks`` side by side with the speaker's waveform and words; write MP4 and/or GIF.

    ``out``: an .mp4 (H.264, yuv420p, the audio segment muxed in as AAC) or a .gif path; ``gif``
    writes a GIF too (``gif_fps`` frames per second, ``gif_scale`` of the video size). ``audio``:
    a file or a 16 kHz mono waveform; ``words``: a words.json path or a list of words in the
    audio's time. ``start``/``duration`` (s) choose the segment (default: all of the audio, or of
    the longest track). ``progress(done, total)`` is called per frame. Existing outputs are
    replaced only with ``force``.
    """
    t0 = time.perf_counter()
    tracks = list(tracks)
    outs = [Path(p) for p in (out, gif) if p is not None]
    if not outs:
        raise ValueError("give an output path (.mp4 or .gif)")
    for p in outs:
        if p.suffix.lower() not in (".mp4", ".gif"):
            raise ValueError(f"{p}: output must end in .mp4 or .gif")
        if p.exists() and not force:
            raise FileExistsError(f"{p}: exists (use --force to overwrite)")
    y = None
    if audio is not None:
        y = load_audio(audio) if isinstance(audio, (str, Path)) else np.asarray(audio, np.float32).reshape(-1)
    total = len(y) / SAMPLE_RATE if y is not None else max((t.duration for t in tracks), default=0.0)
    if start < 0 or start >= total:
        raise ValueError(f"start {start:g} s is outside the clip (0 .. {total:.2f} s)")
    if duration is None:
        duration = total - start
    if duration <= 0:
        raise ValueError(f"duration must be > 0 s, got {duration:g}")
    duration = min(duration, total - start)
    n = max(1, int(round(duration * fps)))
    duration = n / fps
    seg = None
    if y is not None:
        a = int(round(start * SAMPLE_RATE))
        seg = y[a : a + int(round(duration * SAMPLE_RATE))]
        seg = np.pad(seg, (0, int(round(duration * SAMPLE_RATE)) - len(seg)))
    comp = Compositor(tracks, seg, load_words(words), start, duration, fps, title=title)
    mp4 = next((p for p in outs if p.suffix.lower() == ".mp4"), None)
    gifs = [p for p in outs if p.suffix.lower() == ".gif"]
    gif_every = max(1, int(round(fps / gif_fps)))
    gif_frames: list[Image.Image] = []

    def frames() -> Iterator[np.ndarray]:
        for i in range(n):
            f = comp.frame(i)
            if gifs and i % gif_every == 0:
                im = Image.fromarray(f)
                if gif_scale != 1.0:
                    im = im.resize((int(im.width * gif_scale) // 2 * 2, int(im.height * gif_scale) // 2 * 2),
                                   Image.Resampling.BILINEAR)  # fmt: skip
                gif_frames.append(im)
            if progress is not None:
                progress(i + 1, n)
            yield f

    if mp4 is not None:
        _write_mp4(mp4, frames(), comp.size, fps, seg, force)
    else:
        for _ in frames():
            pass
    for g in gifs:
        _write_gif(g, gif_frames, fps / gif_every, force)
    return RenderResult(outs, n, fps, duration, comp.size, time.perf_counter() - t0)


def _write_mp4(out: Path, frames: Iterator[np.ndarray], size: tuple[int, int], fps: float,
               audio: np.ndarray | None, force: bool) -> None:  # fmt: skip
    """Pipe RGB frames into ffmpeg: libx264 + yuv420p video, AAC audio from ``audio`` (16 kHz)."""
    import soundfile as sf

    w, h = size
    with tempfile.TemporaryDirectory(prefix="realm-render-") as tmpdir, atomic_path(out, force=force) as tmp:
        cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", f"{fps:g}", "-i", "-"]  # fmt: skip
        if audio is not None:
            wav = Path(tmpdir) / "audio.wav"
            sf.write(str(wav), audio, SAMPLE_RATE, subtype="PCM_16")
            cmd += ["-i", str(wav), "-map", "0:v", "-map", "1:a", "-c:a", "aac", "-b:a", "128k"]
        cmd += ["-c:v", "libx264", "-preset", "veryfast", "-crf", "20", "-pix_fmt", "yuv420p",
                "-movflags", "+faststart", "-f", "mp4", str(tmp)]  # fmt: skip
        err = tempfile.TemporaryFile(dir=tmpdir)
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err)
        try:
            for f in frames:
                proc.stdin.write(np.ascontiguousarray(f).tobytes())
        except BrokenPipeError:
            pass
        finally:
            proc.stdin.close()
            rc = proc.wait()
        if rc != 0:
            err.seek(0)
            msg = err.read().decode(errors="replace").strip().splitlines()
            raise RuntimeError(f"ffmpeg failed with code {rc}: {msg[-1] if msg else 'no message'}")


def _write_gif(out: Path, frames: list[Image.Image], fps: float, force: bool) -> None:
    """An endlessly looping GIF; frame durations alternate so the total matches ``fps`` (10 ms units)."""
    if not frames:
        raise ValueError("no frames for the GIF")
    ends = np.round(np.arange(1, len(frames) + 1) * 100.0 / fps) * 10  # ms, on GIF's 10 ms grid
    durations = np.diff(np.concatenate([[0], ends])).astype(int).tolist()
    sample = frames[:: max(1, len(frames) // 6)][:6]  # one palette from frames spread over the clip
    montage = Image.new("RGB", (sample[0].width, sample[0].height * len(sample)))
    for j, f in enumerate(sample):
        montage.paste(f, (0, j * f.height))
    palette = montage.quantize(colors=255, method=Image.Quantize.MEDIANCUT)
    quant = [f.quantize(palette=palette, dither=Image.Dither.NONE) for f in frames]
    with atomic_path(out, force=force) as tmp:
        quant[0].save(tmp, format="GIF", save_all=True, append_images=quant[1:], duration=durations, loop=0,
                      optimize=False, disposal=1)  # fmt: skip
