"""Generation: load a run, generate listener motion for any audio, offline or streaming.

    import realm
    listener = realm.load("runs/demo")                     # a run directory or a committed checkpoint
    motion = listener.generate("speech.wav", samples=3)    # (3, T, D) in the checkpoint's spec, 30 fps

REALM's samples differ through the refinement's noise, a function of the absolute frame
(:class:`SequenceNoise`: frames [16 b, 16 b + 16) of sample ``s`` draw from the seed
``(seed, s, b)``), and, with a stochastic coarse generator (``latent_dim`` > 0), through each
window's latent, a function of the window index (:class:`WindowLatents`); the paper's coarse
stage is deterministic. So results are reproducible and do not depend on how the audio arrived.
Offline and streaming generation refine through one computation, :class:`RefineStream`: with the default causal refinement (``refine_mode="causal"``) a frame is
refined from the ``model.refine_context`` frames before it, and streaming gives the offline frames
exactly (tested to 1e-5). The authors' whole-sequence refinement (``refine_mode="whole"``) refines
the whole clip at once offline (chunks of ``refine_chunk`` frames beyond that) and, when streamed,
each window with ``refine_context`` frames of left context only (an approximation).

Streaming (:class:`Streamer`): push 16 kHz audio chunks of any size; frames come out one
window (W = 16 frames) at a time, as soon as the audio of the window plus the feature
extractor's context has arrived. **Algorithmic latency**: the first frame of a window is
emitted W / fps + context / 16000 s after its audio starts (533 ms + 25 ms with ``logmel``;
+ 100 ms with ``vico45`` or ``prosody``); the last frame of a window 1 / fps + context later.
The causal refinement adds no latency. Compute per window is measured by
``benchmarks/bench_generate.py``. Whisper features come from a bidirectional encoder over 30 s
and cannot be streamed exactly, so a whisper checkpoint refuses to stream.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from realm.audio import SAMPLE_RATE, get_extractor, n_frames, n_samples_for
from realm.errors import RealmInputError
from realm.models.listener import GenerateOptions, RunModel
from realm.models.realm import REALM, RefineStream, WindowLatents, refine_sequence
from realm.threads import single_thread_blas


@dataclass
class Listener(RunModel):
    """A trained REALM with everything it needs to run on raw audio (:class:`RunModel`'s contract)."""

    model: REALM
    streams: ClassVar[bool] = True

    @property
    def name(self) -> str:
        return "realm"

    @property
    def refines(self) -> bool:
        return self.model.refinement is not None

    @property
    def stochastic(self) -> bool:
        """True when samples differ (refinement noise, coarse latents), so evaluation draws several."""
        return self.model.refinement is not None or self.model.config.latent_width > 0

    def latents(self, seed: int, sample: int) -> WindowLatents:
        """Sample ``sample``'s window latents for ``seed`` at the checkpoint's ``latent_temperature`` (and
        ``kind_temperature``; models with ``latent_dim`` > 0 or ``react_condition``): offline and
        streaming generation draw them here."""
        c = self.model.config
        return WindowLatents(c.latent_width, seed, sample, c.latent_temperatures())

    def _start(self, first_frame, history):
        """Normalised frame 0 (1, D) and/or history (1, K, D) tensors from raw motion arrays."""
        D = self.spec.dim
        f0 = h = None
        if history is not None:
            history = np.asarray(history, np.float32).reshape(-1, D)
            h = torch.from_numpy(self.stats.apply(self.spec.validate(history, "history")))[None]
        else:
            first = self.stats.mean if first_frame is None else np.asarray(first_frame, np.float32).reshape(-1, D)[-1]
            f0 = torch.from_numpy(self.stats.apply(first.astype(np.float32)))[None]
        return f0, h

    @torch.inference_mode()
    def generate(
        self,
        audio,
        options: GenerateOptions | None = None,
        *,
        first_frame: np.ndarray | None = None,
        history: np.ndarray | None = None,
        features: np.ndarray | None = None,
        speaker: np.ndarray | None = None,
        words: list | None = None,
        progress: Callable[[float], None] | None = None,
        **option_fields,
    ) -> np.ndarray:
        """Listener motion (samples, T, D), de-normalised, for ``audio`` (path or 16 kHz waveform).

        ``first_frame`` (D,) starts the bootstrap (default: the training mean frame); ``history``
        (K', D) of real listener frames replaces the bootstrap. ``features`` skips extraction.
        ``clamp`` keeps values inside the spec's defined ranges (arkit58: blendshapes in 0..1, head
        pitch and yaw within +-30 deg, roll within +-20 deg);
        ``clamp=False`` returns the raw model output. ``speaker`` (T, Ds) speaker motion and
        ``words`` (list of :class:`realm.data.clip.Word`) are part of the interface every model
        shares (baselines and the multimodal LM use them); REALM hears audio only and ignores them.
        ``progress(fraction)`` is called as generation goes (0..1; the coarse windows are 80 %).
        How to sample (``samples``, ``seed``, ``refine``, ``clamp``): ``options`` and/or its fields
        as keywords (:class:`realm.models.listener.GenerateOptions`).
        """
        o = self.options(options, **option_fields)
        samples, seed, refine, clamp = o.samples, o.seed, o.refine, o.clamp
        self.model.eval()
        feats = self.features(audio) if features is None else features
        a = torch.from_numpy(np.asarray(feats, np.float32))[None]  # (1, T, A)
        f0, h = self._start(first_frame, history)
        Z, W = self.model.config.latent_width, self.model.config.window
        step = None if progress is None else (lambda w, n: progress(0.8 * w / n))  # noqa: E731
        if Z:  # a stochastic coarse generator: one rollout per sample, each with its seeded latents
            n = -(-a.shape[1] // W)
            z = torch.cat([self.latents(seed, s)(0, n) for s in range(samples)])  # (samples, n, Z)
            coarse, aux = self.model.rollout(a, frame0=f0, history=h, latents=z, samples=samples, on_window=step)
        else:
            coarse, aux = self.model.rollout(a, frame0=f0, history=h, on_window=step)
        T = coarse.shape[1]
        outs = []
        for s in range(samples):
            k = s if Z else 0
            m = coarse[k : k + 1]
            if refine and self.model.refinement is not None:  # whole windows, then cut to T
                m = refine_sequence(self.model, aux["padded"][k : k + 1], aux["padded_audio"][k : k + 1], seed, s)[:, :T]
            outs.append(self.stats.invert(m[0].numpy()))
            if progress is not None:
                progress(0.8 + 0.2 * (s + 1) / samples)
        out = np.stack(outs).astype(np.float32)
        return self.spec.clamp(out) if clamp else out

    def streamer(self, **kw) -> Streamer:
        return Streamer(self, **kw)


class FeatureFeed:
    """The speaker's features as 16 kHz audio arrives: ``push(chunk)``, then the raw features of
    any frames whose audio (plus the extractor's look-ahead) is in, exactly as offline extraction
    of the whole audio gives them. Extractors with an incremental form (``logmel_norm``, ``logmel_prosody``) compute
    each 10 ms hop once; the others re-extract a block-aligned span with its context. Shared by
    REALM's :class:`Streamer` and the multimodal-LM listener's (:mod:`realm.generate_lm`)."""

    def __init__(self, extractor: str, fps: float):
        ex = get_extractor(extractor)
        if ex.context is None:
            raise ValueError(
                f"the {ex.name!r} extractor cannot be streamed exactly (it needs the whole clip); "
                "use a checkpoint trained on logmel, logmel_norm, logmel_prosody, pcen, vico45 or prosody features"
            )
        self.ex, self.fps = ex, fps
        self.buf = np.zeros(0, np.float32)
        self.offset = 0  # global index of buf[0]
        self.fs = ex.stream() if hasattr(ex, "stream") else None
        self.feats = np.zeros((0, ex.dim), np.float32)  # raw features of frames [fbase, ...), stream mode
        self.fbase = 0
        self.total = 0  # samples pushed
        # re-extraction starts at multiples of this many samples (0.1 s at 30 fps: whole frames and hops)
        self.block = 3 * SAMPLE_RATE // 30 if fps == 30 else SAMPLE_RATE

    @property
    def ahead(self) -> int:
        """Samples of audio after a frame that its features read."""
        return self.ex.ahead

    def push(self, chunk: np.ndarray) -> None:
        chunk = np.asarray(chunk, np.float32).reshape(-1)
        if not np.all(np.isfinite(chunk)):
            raise RealmInputError(None, "audio chunk holds NaN/inf samples")
        self.total += len(chunk)
        if self.fs is not None:
            self.fs.feed(chunk)
        else:
            self.buf = np.concatenate([self.buf, chunk])

    def ready(self, frames: int) -> bool:
        """Whether the features of frames [0, ``frames``) can be computed now."""
        return self.total >= n_samples_for(frames, self.fps) + self.ex.ahead

    @property
    def frames(self) -> int:
        """Frames of the audio pushed so far (the offline extraction's count)."""
        return n_frames(self.total)

    def raw(self, first: int, last: int, final: bool) -> np.ndarray:
        """Raw features of frames [first, last), as offline extraction of the whole audio gives them
        (``final``: the audio has ended, the last frames may use what remains)."""
        with single_thread_blas():  # small filterbank products: BLAS threads only add latency
            if self.fs is not None:
                if final and not self.fs.done:
                    self.feats = np.concatenate([self.feats, self.fs.flush()])
                elif not final and last > self.fbase + len(self.feats):
                    self.feats = np.concatenate([self.feats, self.fs.take(last)])
                return self.feats[first - self.fbase : last - self.fbase]
            # re-extract from a block boundary ``context`` samples before the first frame
            g0 = max(0, (n_samples_for(first, self.fps) - self.ex.context) // self.block * self.block)
            end = self.total if final else min(self.total, n_samples_for(last, self.fps) + self.ex.ahead)
            feats = self.ex(self.buf[g0 - self.offset : end - self.offset])  # frames from global frame t0
            t0 = round(g0 * self.fps / SAMPLE_RATE)
            return feats[first - t0 : last - t0]

    def forget(self, first: int) -> None:
        """Drop the audio or features no later read from frame ``first`` on needs."""
        if self.fs is not None:
            if first > self.fbase:
                self.feats, self.fbase = self.feats[first - self.fbase :], first
            return
        keep = max(0, n_samples_for(first, self.fps) - self.ex.context - 2 * self.block)
        if keep > self.offset:
            self.buf = self.buf[keep - self.offset :]
            self.offset = keep


class Streamer:
    """Streaming generation: ``push`` 16 kHz mono chunks of any size, get frames as they are ready.

    ``frames = streamer.push(chunk)`` returns a (n, D) array (n may be 0); ``streamer.flush()``
    ends the stream and returns the remaining frames. See the module docstring for latency.
    """

    def __init__(self, listener: Listener, first_frame=None, history=None, seed: int = 0, sample: int = 0,
                 refine: bool = True, clamp: bool = True):  # fmt: skip
        self.feed = FeatureFeed(listener.extractor, listener.fps)
        self.listener, self.ex = listener, self.feed.ex
        self.model = listener.model.eval()
        self.W = self.model.config.window
        self.K = self.model.config.history
        self.f0, self.history = listener._start(first_frame, history)
        self.hist = None  # the model's K-frame history, set by the first window
        self.carry = None  # what the last window left the next (REALM.step: the branch's offset, latent)
        self.refine, self.clamp = refine, clamp
        self.refiner = RefineStream(self.model, seed, sample)
        self.latents = listener.latents(seed, sample) if self.model.config.latent_width else None  # as offline
        self.window = 0  # next window to produce
        self.done = False

    @property
    def latency_s(self) -> float:
        """Algorithmic latency of the first frame of a window (seconds)."""
        return self.W / self.listener.fps + self.ex.ahead / SAMPLE_RATE

    def push(self, chunk: np.ndarray) -> np.ndarray:
        if self.done:
            raise RuntimeError("the stream was flushed; start a new Streamer")
        self.feed.push(chunk)
        out = []
        while self._ready():
            out.append(self._produce(final=False))
        return np.concatenate(out) if out else np.zeros((0, self.model.spec.dim), np.float32)

    def flush(self) -> np.ndarray:
        out = []
        while self.window * self.W < self.feed.frames:
            out.append(self._produce(final=True))
        self.done = True
        return np.concatenate(out) if out else np.zeros((0, self.model.spec.dim), np.float32)

    # -- internals
    def _ready(self) -> bool:
        return self.feed.ready((self.window + 1) * self.W)

    @torch.inference_mode()
    def _produce(self, final: bool) -> np.ndarray:
        W, w = self.W, self.window
        total = self.feed.frames
        C = self.model.config.audio_context
        first = max(0, w * W - C)  # first frame whose features this window reads
        last = min((w + 1) * W, total)
        raw = self.feed.raw(first, last, final)
        f = self.listener.feature_stats.apply(raw)
        ctx = torch.zeros(1, C + W, f.shape[1])  # [w W - C, (w + 1) W): zeros before the start and past the end
        ctx[0, C - (w * W - first) : C - (w * W - first) + len(f)] = torch.from_numpy(f.astype(np.float32))
        a = ctx[:, C:]
        n = min(W, total - w * W)
        enc = self.model.encode_window(ctx)
        if self.hist is None:
            self.hist, _ = self.model.start(a, self.f0, self.history)
        base = self.model.first_base(self.f0, self.history) if w == 0 else None
        z = None if self.latents is None else self.latents(w, w + 1)[:, 0]
        extras: dict = {}
        anchor = self.model.anchor_frame(self.f0, self.history)
        motion, _ = self.model.step(a, self.hist, enc, anchor, base, z, extras, self.carry)
        seen = extras.get("history", motion)  # what the next window's history holds (as offline)
        self.carry = extras["carry"]
        if w == 0 and self.history is None:
            motion[:, 0] = self.f0  # frame 0 is kept exactly, as offline
            seen[:, 0] = self.f0
        self.hist = torch.cat([self.hist, seen], dim=1)[:, -self.K :]
        if self.refine and self.model.refinement is not None:
            motion = self.refiner.push(motion, a)
        self.window += 1
        self.feed.forget(max(0, self.window * W - C))
        frames = self.listener.stats.invert(motion[0, :n].numpy()).astype(np.float32)
        return self.model.spec.clamp(frames) if self.clamp else frames


def generate_file(
    listener: Listener, audio: str | Path, out: str | Path, force: bool = False, **kw
) -> np.ndarray:
    """Generate for an audio file and write ``out`` (.npz: listener (N, T, D), spec, fps, samples, audio)."""
    from realm.io import save_npz

    out = Path(out)
    if out.exists() and not force:
        raise FileExistsError(f"{out}: exists (use --force to overwrite)")
    motion = listener.generate(audio, **kw)  # a long file is featurised a block at a time
    save_npz(
        out, force=force, listener=motion, spec=np.array(listener.spec.name), fps=np.array(listener.fps),
        samples=np.array(motion.shape[0]), audio=np.array(str(audio)), checkpoint=np.array(str(listener.path)),
    )  # fmt: skip
    return motion
