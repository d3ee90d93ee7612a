"""`realm generate` and `realm demo`: listener motion for any audio, and the one-command demo."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from realm.cli.common import (
    app,
    console,
    friendly,
    out,
    progress_bar,
)
from realm.threads import GENERATE_THREADS

# ---------------------------------------------------------------- realm generate


@app.command("generate")
@friendly
def generate_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="Run directory of a trained model."),
    audio: Path = typer.Option(..., "--audio", "-a", help="Speaker audio (any format, rate, channels)."),
    out_path: Path = typer.Option(..., "--out", "-o", help="Output .npz (listener (N, T, D), spec, fps)."),
    first_frame: Path = typer.Option(None, "--first-frame", help="Motion file whose (last) frame starts the listener."),
    history: Path = typer.Option(None, "--history", help="Motion file of the listener's recent frames."),
    samples: int = typer.Option(1, help="Number of stochastic samples."),
    seed: int = typer.Option(0, help="Seed of the refinement noise / token sampling."),
    no_refine: bool = typer.Option(False, "--no-refine", help="Coarse motion only."),
    no_clamp: bool = typer.Option(False, "--no-clamp", help="Raw model output (values may leave the spec's ranges)."),
    transcript: Path = typer.Option(None, "--transcript", help="Words JSON [{word, start, end}] (models that read words; default: offline ASR)."),
    identity_ref: Path = typer.Option(None, "--identity-ref", help="Motion (>= 2 s) of the listener whose style to decode in (mmlm)."),
    temperature: float = typer.Option(None, help="Token sampling temperature, 0 = greedy (mmlm; default: the model's)."),
    top_p: float = typer.Option(None, "--top-p", help="Nucleus sampling mass (mmlm)."),
    greedy: bool = typer.Option(False, "--greedy", help="Greedy token decoding (= --temperature 0)."),
    threads: int = typer.Option(GENERATE_THREADS, help="torch CPU threads (0: torch's default, one per core; 1 is fastest for these small models)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output file."),
):
    """Generate listener motion for an audio file with a trained checkpoint."""
    import realm
    from realm.generate import generate_file
    from realm.motion import read_motion
    from realm.threads import set_torch_threads

    set_torch_threads(threads)

    if out_path.exists() and not force:
        raise FileExistsError(f"{out_path}: exists (use --force to overwrite)")
    listener = realm.load(checkpoint)
    spec = listener.spec.name
    ff = read_motion(first_frame, spec)[-1] if first_frame else None
    hist = read_motion(history, spec) if history else None
    kw = {}
    if identity_ref is not None:
        kw["identity_ref"] = read_motion(identity_ref, spec)
    if greedy or temperature is not None:
        kw["temperature"] = 0.0 if greedy else temperature
    if top_p is not None:
        kw["top_p"] = top_p
    words = None
    if listener.uses_words:
        from realm.text import words_for

        with console.status("reading words" if transcript else "transcribing the speech (offline ASR)"):
            words = words_for(audio, transcript=transcript)
    elif transcript is not None:
        console.print(f"note: {listener.name} does not read words; --transcript ignored")
    from rich.progress import TaskProgressColumn, TimeRemainingColumn

    bar = Progress(TextColumn("[bold]generating"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), console=console, transient=True)  # fmt: skip
    with bar:
        task = bar.add_task("generating", total=1.0)
        motion = generate_file(listener, audio, out_path, force=force, first_frame=ff, history=hist,
                               samples=samples, seed=seed, refine=not no_refine, clamp=not no_clamp, words=words,
                               progress=lambda f: bar.update(task, completed=f), **kw)  # fmt: skip
    n, T, D = motion.shape
    out.print(f"{out_path}: {n} sample(s) x {T} frames x {D} ({spec}, {listener.fps:g} fps, {T / listener.fps:.2f} s)")


# ---------------------------------------------------------------- realm demo


@app.command("demo")
@friendly
def demo_cmd(
    checkpoint: Path = typer.Option(Path("checkpoints/realm-demo"), "--checkpoint", "-c", help="Trained REALM run."),
    out_dir: Path = typer.Option(Path("demo_out"), "--out", help="Where the demo writes its outputs."),
    speech: Path = typer.Option(Path("tests/data/jfk.flac"), "--speech", help="Real speech to react to."),
    hours: float = typer.Option(0.05, help="Size of the held-out synthetic set."),
    samples: int = typer.Option(3, help="REALM samples per clip (metrics are their mean)."),
    force: bool = typer.Option(False, "--force", help="Replace the outputs of an earlier demo in a non-empty --out."),
):
    """Held-out synthetic conversations + real speech: REALM vs ground truth and trivial baselines."""
    import time

    from realm.demo import run_demo
    from realm.metrics import behaviour_cell

    t0 = time.time()
    with progress_bar() as p:
        task = p.add_task("synthesising a held-out set", total=None)
        res = run_demo(checkpoint, out_dir, speech if speech and str(speech) else None, hours=hours, samples=samples,
                       force=force, progress=lambda i, n: p.update(task, completed=i, total=n))  # fmt: skip
    t = Table(title=f"REALM on {len(res['test_clips'])} held-out test clip(s) (arkit58; lower is better)")
    t.add_column("model")
    for c in res["columns"]:
        t.add_column(c, justify="right")
    best = {c: min(v[i] for k, v in res["table"].items() if k != "GT resample") for i, c in enumerate(res["columns"])}
    for name, vals in res["table"].items():
        cells = [f"[bold]{v:.4f}[/bold]" if v == best[c] and name != "GT resample" else f"{v:.4f}"
                 for c, v in zip(res["columns"], vals, strict=True)]  # fmt: skip
        t.add_row(name + (" (floor)" if name == "GT resample" else ""), *cells)
    out.print(t)
    out.print(f"REALM: mean of {res['samples']} samples per clip; GT resample = a second listener realisation.")
    if "real_speech" in res:
        real = res["real_speech"]
        r = Table(title="per minute: the synthetic listeners and REALM on real speech")
        r.add_column("motion")
        for c in real["columns"]:
            r.add_column(c, justify="right")
        for name, vals in real["rows"].items():
            r.add_row(name, *[behaviour_cell(c, v) for c, v in zip(real["columns"], vals, strict=True)])
        out.print(r)
        for line in res.get("findings", []) + real.get("findings", []):
            out.print(f"  {escape(line)}")
    out.print(f"outputs in {out_dir}/: held-out set {res['synth_dir']}, motion {', '.join(res['outputs']['test'])}"
              + (f", speech {res['outputs']['speech']}" if "speech" in res["outputs"] else "")
              + f", metrics {out_dir}/demo_metrics.json  ({time.time() - t0:.0f} s)")  # fmt: skip
    if "video" in res["outputs"]:
        out.print(f"video: {res['outputs']['video']}")
    if "report" in res["outputs"]:
        out.print(f"report: {res['outputs']['report']} (open it in a browser)")
