"""``realm bench`` from start to end: data, models, evaluation (step 3: :func:`realm.eval.evaluate`), document."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from realm.bench.config import BenchConfig, Progress
from realm.bench.data import dataset_summary, prepare_benchmark_data
from realm.bench.document import document, machine, reading
from realm.bench.training import train_model
from realm.io import atomic_path, refuse_existing, write_json

log = logging.getLogger(__name__)


def run_bench(cfg: BenchConfig, progress: Progress | None = None) -> dict:
    """Run the benchmark of ``cfg``; write ``cfg.doc`` and ``OUT/bench_results.json``; return the latter."""
    import torch

    from realm.threads import set_torch_threads

    threads = torch.get_num_threads()
    set_torch_threads(cfg.threads)
    try:
        return _run(cfg, progress)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: BenchConfig, progress: Progress | None) -> dict:
    t0 = time.time()
    if not cfg.force:  # before hours of work; atomic_path checks again when it writes
        refuse_existing(cfg.doc)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "bench.json", asdict(cfg))
    command = cfg.command or f"realm.bench.run_bench({cfg!r})"
    say = progress or (lambda step, done, total: None)

    data, synth_cfg, reused = prepare_benchmark_data(cfg, say)
    trained = {}
    for i, name in enumerate(cfg.models, start=1):
        step = f"train {name} ({i}/{len(cfg.models)})"
        say(step, 0, None)
        trained[name] = train_model(name, cfg, data, synth_cfg, command)
        say(step, 1, 1)
    evals = {}
    from realm.eval import evaluate

    for split in cfg.splits:
        step = f"evaluate {split}"
        say(step, 0, None)
        evals[split] = evaluate(
            {n: str(out / "models" / n) for n in cfg.models}, data, split=split, samples=cfg.samples,
            max_clips=cfg.max_clips, out=out / "eval" / split, force=True, command=command,
            progress=lambda i, n, what, step=step: say(step, i, n),
        )  # fmt: skip
        say(step, 1, 1)
    result = {
        "command": command,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(cfg),
        "config": asdict(cfg),
        "dataset": dataset_summary(data, reused),
        "models": trained,
        "eval": {s: str(out / "eval" / s) for s in evals},
        "reading": {s: reading(r, trained) for s, r in evals.items()},
        "seconds": round(time.time() - t0, 1),
        "doc": str(cfg.doc),
    }
    doc = document(result, evals)
    with atomic_path(cfg.doc, force=cfg.force) as tmp:
        tmp.write_text(doc)
    write_json(out / "bench_results.json", result)
    log.info("wrote %s", cfg.doc)
    return result

