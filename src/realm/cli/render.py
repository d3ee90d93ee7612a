"""CLI commands of one area: `realm render`, `realm report`: videos, plots and the HTML report."""

from __future__ import annotations

from pathlib import Path

import typer

from realm.cli.common import (
    app,
    friendly,
    out,
    progress_bar,
)


def _parse_motion(item: str) -> tuple[str, Path]:
    """``NAME=PATH`` or a bare ``PATH`` (named after the file: ``listener.npz`` -> ``listener``)."""
    if "=" in item:
        name, _, path = item.partition("=")
        if not name or not path:
            raise ValueError(f"--motion {item!r}: expected NAME=PATH")
        return name, Path(path)
    p = Path(item)
    return p.name.split(".")[0], p


@app.command("render")
@friendly
def render_cmd(
    motion: list[str] = typer.Option([], "--motion", "-m", help="Listener motion to show, NAME=PATH (.npz from realm generate, or .npy); repeat for more panels."),
    out_path: Path = typer.Option(..., "--out", "-o", help="Output video: .mp4 (H.264 + audio) or .gif."),
    audio: Path = typer.Option(None, "--audio", "-a", help="Speaker audio (default: the --data clip's audio)."),
    words: Path = typer.Option(None, "--words", help="words.json: [{word, start, end}, ...] in seconds (default: the clip's words)."),
    data: Path = typer.Option(None, "--data", help="Dataset directory; with --clip, takes audio, words and ground truth from it."),
    clip: str = typer.Option(None, "--clip", help="Clip id in --data."),
    no_gt: bool = typer.Option(False, "--no-gt", help="With --data: do not show the ground-truth listener."),
    spec: str = typer.Option(None, "--spec", help="Motion spec of the --motion files when they do not say (default: from the file or its width)."),
    sample: int = typer.Option(0, "--sample", help="Which realisation of an (N, T, D) motion file to show."),
    start: float = typer.Option(0.0, "--start", help="First second to show."),
    duration: float = typer.Option(None, "--duration", help="Seconds to show (default: to the end)."),
    fps: float = typer.Option(30.0, "--fps", help="Video frame rate."),
    gif: bool = typer.Option(False, "--gif", help="Also write a GIF beside the MP4 (same name, .gif)."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing outputs."),
):
    """Render listeners side by side with the speaker's waveform and words: MP4 with audio, or GIF."""
    from realm.render.video import Track, load_track, render_video

    tracks: list[Track] = []
    clip_words = None
    if (data is None) != (clip is None):
        raise ValueError("--data and --clip go together")
    if data is not None:
        from realm.data import load_any

        clips = {c.clip_id: c for c in load_any(data)}
        if clip not in clips:
            raise ValueError(f"{data}: no clip {clip!r} ({len(clips)} clips, e.g. {', '.join(list(clips)[:3])})")
        c = clips[clip]
        if audio is None:
            if c.audio_path is None:
                raise ValueError(f"{data}: clip {clip} has no audio; pass --audio")
            audio = c.audio_path
        clip_words = c.words
        if not no_gt:
            tracks.append(Track("ground truth", c.listener, c.spec, c.fps))
    for item in motion:
        name, path = _parse_motion(item)
        tracks.append(load_track(name, path, spec=spec, sample=sample))
    if not tracks and audio is None:
        raise ValueError("nothing to render: give --motion NAME=PATH and/or --audio (or --data with --clip)")
    gif_path = out_path.with_suffix(".gif") if gif and out_path.suffix.lower() != ".gif" else None
    with progress_bar() as p:
        task = p.add_task("rendering frames", total=None)
        res = render_video(out_path, tracks, audio=audio, words=words if words is not None else clip_words,
                           start=start, duration=duration, fps=fps, gif=gif_path, force=force,
                           progress=lambda i, n: p.update(task, completed=i, total=n))  # fmt: skip
    paths = ", ".join(str(x) for x in res.paths)
    out.print(f"wrote {paths}: {res.n_frames} frames ({res.duration:.2f} s at {res.fps:g} fps, {res.size[0]}x{res.size[1]}) "
              f"in {res.seconds:.1f} s ({res.fps_rendered:.0f} frames/s)")  # fmt: skip


@app.command("report")
@friendly
def report_cmd(
    src: Path = typer.Argument(..., help="A realm eval, bench or demo output directory."),
    out_path: Path = typer.Option(None, "--out", "-o", help="HTML file to write (default: SRC/report.html)."),
    title: str = typer.Option(None, "--title", help="Page title."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing report."),
):
    """A static HTML page (no server, nothing from the network): tables, plots and videos of a run."""
    from realm.report import build_report

    path = build_report(src, out_path, force=force, title=title)
    out.print(f"wrote {path}")
