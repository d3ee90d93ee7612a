"""`realm bench` and `realm eval`: the benchmark harness and the evaluation of trained runs."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.table import Table

from realm.cli.common import (
    ACCELERATOR,
    DEVICES,
    app,
    friendly,
    out,
    parse_sets,
    progress_bar,
    quiet_lightning,
)

# ---------------------------------------------------------------- realm bench


@app.command("bench")
@friendly
def bench_cmd(
    out_dir: Path = typer.Option(..., "--out", help="Run directory: data/, models/<name>/, eval/<split>/, bench.json."),
    doc: Path = typer.Option(Path("docs/benchmark.md"), "--doc", help="Markdown document to write (atomically; an existing one only with --force)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --doc."),
    data: Path = typer.Option(None, "--data", help="Dataset directory (default OUT/data); reused if it holds the same generator config."),
    hours: float = typer.Option(0.5, help="Hours of synthetic conversations."),
    seed: int = typer.Option(0, help="Data seed."),
    backend: str = typer.Option("piper", help="Speech: 'piper' (real words) or 'formant' (fast babble)."),
    listener_samples: int = typer.Option(2, "--listener-samples", help="Listener realisations per speaker track (>= 2: the floor)."),
    workers: int = typer.Option(0, help="Data synthesis processes (0: min(8, CPUs))."),
    models: str = typer.Option("", "--models", help="Comma-separated models (default: realm, its ablations, every baseline)."),
    minutes_per_model: float = typer.Option(4.0, "--minutes-per-model", help="Wall-clock training budget per model (REALM: 75 % stage 1, 25 % stage 2)."),
    minutes: list[str] = typer.Option(None, "--minutes", help="A model's own budget, NAME=MINUTES (repeatable), e.g. --minutes realm_sbk=45 --minutes lstm=45."),
    max_steps: int = typer.Option(0, "--max-steps", help="> 0: this many steps per stage instead of the time budget."),
    extractor: str = typer.Option("logmel", "--extractor", "-e", help="Speaker features for every model: logmel | logmel_norm | logmel_prosody | pcen | whisper | vico45 | prosody"),
    batch_size: int = typer.Option(64, "--batch-size", help="Cap on each model's recipe batch size (CPU; 0: the recipes')."),
    audio_context: int = typer.Option(-1, "--audio-context", help="REALM audio context frames (-1: 16 for frame-local features, 0 for whisper)."),
    samples: int = typer.Option(3, help="Samples per clip for stochastic models."),
    max_clips: int = typer.Option(None, "--max-clips", help="Score only the first N clips of each split."),
    accelerator: str = ACCELERATOR,
    devices: str = DEVICES,
    threads: int = typer.Option(0, help="torch CPU threads (0: torch's default; 1 is fastest on a busy machine)."),
    precision: str = typer.Option("", help="Lightning precision of every neural model's training, e.g. bf16-mixed (default fp32)."),
):
    """The whole benchmark: data, REALM + ablations + baselines on a fixed budget, test and ood, one document."""
    import time

    import lightning.pytorch  # noqa: F401  (it sets its loggers' levels on import: quiet them after)

    from realm.bench import BenchConfig, default_models, run_bench

    quiet_lightning()
    names = [m.strip() for m in models.split(",") if m.strip()] if models else default_models()
    own = parse_sets(minutes or [], "--minutes", "NAME=MINUTES")
    for name, value in own.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"--minutes {name}={value!r}: expected NAME=MINUTES, e.g. realm_sb=45")
    cfg = BenchConfig(
        out=str(out_dir), doc=str(doc), force=force, data=str(data) if data else "", hours=hours, seed=seed, backend=backend,
        listener_samples=listener_samples, workers=workers, models=names, minutes_per_model=minutes_per_model,
        minutes=own, max_steps=max_steps, extractor=extractor, batch_size=batch_size, audio_context=audio_context, samples=samples,
        max_clips=max_clips, accelerator=accelerator, devices=devices, threads=threads, precision=precision,
        command="realm " + " ".join(sys.argv[1:]),
    )  # fmt: skip
    t0 = time.time()
    tasks: dict = {}
    with progress_bar() as p:

        def progress(step: str, done: int, total: int | None) -> None:
            if step not in tasks:
                tasks[step] = p.add_task(step, total=total)
            p.update(tasks[step], completed=done, total=total)

        res = run_bench(cfg, progress=progress)
    t = Table(title=f"trained into {out_dir}/models")
    for col in ("model", "steps", "seconds"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for name, r in res["models"].items():
        if r["kind"] == "realm":
            steps = " + ".join(str(r[s]["steps"]) for s in ("stage1", "stage2") if s in r)
        else:
            steps = str(r["train"]["steps"]) if "train" in r else "fitted"
        t.add_row(name, steps, f"{r.get('seconds', 0):.0f}" + (" (reused)" if r.get("reused") else ""))
    out.print(t)
    for split, sentences in res["reading"].items():
        out.print(f"[bold]{split}[/bold]")
        for s in sentences:
            out.print(f"  - {s}", highlight=False)
    out.print(f"wrote {doc} (tables of {', '.join(res['eval'])}) in {time.time() - t0:.0f} s")


# ---------------------------------------------------------------- realm eval


@app.command("eval")
@friendly
def eval_cmd(
    data: Path = typer.Option(..., "--data", help="Dataset directory (any supported layout)."),
    model: list[str] = typer.Option(..., "--model", "-m", help="NAME=PATH of a trained run (repeat for several models)."),
    out_dir: Path = typer.Option(..., "--out", help="Directory for results.json/.csv/.md and plots/."),
    split: str = typer.Option("test", help="Split to score: train | val | test | ood."),
    samples: int = typer.Option(3, help="Samples per clip for stochastic models (reported as mean ± std)."),
    seed: int = typer.Option(0, help="Seed of the models' sampling and of the metrics' random draws."),
    max_clips: int = typer.Option(None, "--max-clips", help="Score only the first N clips of the split."),
    first_frame: str = typer.Option("gt", "--first-frame", help="gt: start from the ground truth's frame 0 | mean."),
    coarse_rows: bool = typer.Option(True, "--coarse-rows/--no-coarse-rows", help="Also score REALM before its refinement, as '<name> (coarse)'."),
    metrics: str = typer.Option("all", "--metrics", help="dim: the DIM/L2L suite and ours | react: the REACT family (FRCorr, FRDist, FRDiv, FRDvs, FRVar, FRSyn) | all. See docs/metrics.md."),
    force: bool = typer.Option(False, "--force", help="Overwrite a non-empty output directory."),
):
    """Score models on a dataset split with every metric of DESIGN section 9 (tables and plots)."""
    from realm.eval import FLOOR, evaluate
    from realm.metrics import metric_families

    metric_families(metrics)  # a bad choice fails before any model loads

    models: dict[str, str] = {}
    for item in model:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = Path(item).name, item
        if not name or not path:
            raise ValueError(f"--model {item!r}: expected NAME=PATH")
        if name in models:
            raise ValueError(f"--model: the name {name!r} is given twice")
        models[name] = path
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not force:
        raise FileExistsError(f"{out_dir}: exists and is not empty (use --force to overwrite)")
    command = "realm " + " ".join(sys.argv[1:])
    with progress_bar() as p:
        task = p.add_task("generating", total=None)
        res = evaluate(models, data, split=split, samples=samples, seed=seed, max_clips=max_clips, out=out_dir,
                       first_frame=first_frame, force=force, command=command, coarse_rows=coarse_rows, metrics=metrics,
                       progress=lambda i, n, what: p.update(task, completed=i, total=n, description=what))  # fmt: skip
    dim_keys = ("l1_exp", "fd_exp", "fd_delta_exp", "var_ratio_exp", "l1_pose", "delay_err", "event_f1", "blink_rate")
    react_keys = ("frcorr_exp", "frdist_exp", "frdiv_exp", "frdvs_exp", "frvar_exp", "frsyn_exp")
    keys = {"dim": dim_keys, "react": react_keys, "all": dim_keys + ("frcorr_mean_exp", "frdiv_exp")}[metrics]
    keys = tuple(k for k in keys if k in res["metrics"])
    t = Table(title=f"{data} (split {split}, {res['n_clips']} clips; mean ± std over {samples} samples)")
    t.add_column("model")
    for k in keys:
        m = res["metrics"][k]
        t.add_column(m["label"] + {"lower": " ↓", "higher": " ↑"}.get(m["direction"], ""), justify="right")
    for name, row in res["rows"].items():  # the ground truth row holds the targets of the →GT columns
        std = row["kind"] == "model" and row["samples"] > 1
        cells = [(("—" if row["kind"] == "reference" else "n/a") if v["mean"] is None else f"{v['mean']:.4g}" + (f" ± {v['std']:.2g}" if std and v["std"] is not None else ""))
                 for v in (row["metrics"][k] for k in keys)]  # fmt: skip
        t.add_row(name + (" (floor)" if name == FLOOR else ""), *cells)
    out.print(t)
    out.print(f"all metrics: {out_dir}/results.md, {out_dir}/results.json, {out_dir}/results.csv; plots in {out_dir}/plots/")
