"""``realm``: a thin command-line front end over the library.

Bad input ends with one line, ``error: <file>: <problem>``, and exit code 2.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing downloads at run time

app = typer.Typer(
    help="Reactive listener motion: data, features, models, evaluation, rendering, robots.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Datasets: synthesise the benchmark, inspect any supported layout.", no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def _friendly(fn):
    """Turn expected failures into one clear line instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from realm.errors import RealmInputError

        try:
            return fn(*args, **kwargs)
        except (RealmInputError, FileExistsError, KeyError, ValueError) as e:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            console.print(f"[red]error:[/red] {msg}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details.")):
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=False,
    )  # fmt: skip


# ---------------------------------------------------------------- realm data ...


@data_app.command("synth")
@_friendly
def data_synth(
    out_dir: Path = typer.Option(..., "--out", help="Dataset directory to create."),
    hours: float = typer.Option(0.05, help="Total speaker audio to generate."),
    seed: int = typer.Option(0, help="Same seed, identical files."),
    backend: str = typer.Option("piper", help="Speech: 'piper' (real words, neural TTS) or 'formant' (fast babble)."),
    tau: int = typer.Option(8, help="Listener reaction delay in frames (30 fps)."),
    tau_jitter: int = typer.Option(1, help="+- frames of jitter per reaction."),
    listener_samples: int = typer.Option(2, "--listener-samples", help="Listener realisations per speaker track."),
    no_cue_fraction: float = typer.Option(0.3, help="Fraction of emotional phrases spoken without prosodic cue."),
    identities: int = typer.Option(8, help="Listener identities of train/val/test."),
    ood_identities: int = typer.Option(3, help="Unseen listener identities of the ood split."),
    workers: int = typer.Option(1, help="Parallel worker processes."),
    force: bool = typer.Option(False, "--force", help="Replace an existing directory."),
):
    """Generate the synthetic reactive-dyads benchmark (DESIGN section 5)."""
    import time

    from realm.data.synth import SynthConfig, generate

    cfg = SynthConfig(
        hours=hours, seed=seed, backend=backend, tau=tau, tau_jitter=tau_jitter, listener_samples=listener_samples,
        no_cue_fraction=no_cue_fraction, n_identities=identities, n_ood_identities=ood_identities, workers=workers,
    )  # fmt: skip
    if out_dir.exists() and not force:
        raise FileExistsError(f"{out_dir}: exists (use --force to overwrite)")
    t0 = time.time()
    with _progress() as p:
        task = p.add_task("synthesising clips", total=cfg.n_clips())
        res = generate(cfg, out_dir, force=force, progress=lambda i, n: p.update(task, completed=i, total=n))
    out.print(f"wrote {res.n_clips} clips ({res.hours:.3f} h of speech) to {res.out} in {time.time() - t0:.1f} s")


@data_app.command("inspect")
@_friendly
def data_inspect(root: Path = typer.Argument(..., help="Dataset directory (any supported layout).")):
    """Summarise a dataset: clips per split, hours, identities, dims, and what is missing."""
    from realm.data.inspect import summarize

    s = summarize(root)
    t = Table(title=f"{root}  [{s.format}]")
    for col in ("split", "clips", "hours", "listeners", "speakers"):
        t.add_column(col, justify="right" if col != "split" else "left")
    for sp in s.splits:
        t.add_row(sp.split, str(sp.clips), f"{sp.hours:.3f}", str(len(sp.listeners)), str(len(sp.speakers)))
    t.add_row("[bold]all", f"[bold]{s.n_clips}", f"[bold]{s.hours:.3f}", "", "")
    out.print(t)
    out.print(f"listener motion: {s.spec} ({s.listener_dim} dims), {s.realisations} realisation(s) per clip")
    out.print(f"speaker motion:  {s.speaker}")
    feats = ", ".join(f"{k} ({v})" for k, v in s.features.items()) or "none precomputed"
    out.print(f"speaker audio:   {s.with_audio}/{s.n_clips} clips; features: {feats}")
    out.print(f"words: {s.with_words}/{s.n_clips}   events: {s.with_events}/{s.n_clips}   stats.npz: {'yes' if s.has_stats else 'no'}")
    if s.missing:
        out.print("[yellow]missing:[/yellow]")
        for m in s.missing:
            out.print(f"  - {m}", highlight=False)
    else:
        out.print("[green]nothing missing[/green]")


@data_app.command("features")
@_friendly
def data_features(
    root: Path = typer.Argument(..., help="Dataset directory."),
    extractor: str = typer.Option("logmel", "--extractor", "-e", help="logmel | vico45 | prosody | whisper"),
):
    """Extract (and cache) speaker features for every clip of a dataset."""
    from realm.data import load_any
    from realm.data.windows import clip_features

    clips = load_any(root)
    with _progress() as p:
        task = p.add_task(f"{extractor} features", total=len(clips))
        feats = clip_features(clips, extractor, progress=lambda i, n: p.update(task, completed=i))
    frames = sum(len(f) for f in feats)
    out.print(f"{len(clips)} clips, {frames} frames of {extractor} ({feats[0].shape[1]} dims), cached")


# ---------------------------------------------------------------- realm features


@app.command("features")
@_friendly
def features(
    audio: Path = typer.Argument(..., help="Audio file: wav, flac, mp3, ogg; any rate, mono or stereo."),
    extractor: str = typer.Option("logmel", "--extractor", "-e", help="logmel | vico45 | prosody | whisper"),
    out_path: Path = typer.Option(None, "--out", "-o", help="Output .npy (default: <audio stem>.<extractor>.npy)."),
    channel: int = typer.Option(None, help="Pick one channel (0-based) instead of the downmix."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or write the feature cache."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output file."),
):
    """Write frame-synchronous features (one vector per 30 fps frame) of an audio file."""
    from realm.audio import extract, get_extractor
    from realm.io import save_npy

    ex = get_extractor(extractor)
    out_path = out_path or Path(f"{audio.stem}.{ex.name}.npy")
    if out_path.exists() and not force:
        raise FileExistsError(f"{out_path}: exists (use --force to overwrite)")
    with console.status(f"extracting {ex.name} features"):
        feats = extract(audio, ex, cache=not no_cache, channel=channel)
    save_npy(out_path, feats)
    out.print(f"{out_path}: shape {feats.shape[0]} x {feats.shape[1]} ({feats.shape[0] / ex.fps:.2f} s at {ex.fps:g} fps)")


def run() -> None:  # pragma: no cover - entry point helper
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    run()
