"""Step 1 of ``realm bench``: the synthetic benchmark's data, made or reused."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path

from realm.bench.config import SYNTH_IGNORED, BenchConfig, Progress

log = logging.getLogger(__name__)


def synth_config(cfg: BenchConfig):
    from realm.data.synth import SynthConfig

    workers = cfg.workers or min(8, os.cpu_count() or 1)
    kw = dict(hours=cfg.hours, seed=cfg.seed, backend=cfg.backend, listener_samples=cfg.listener_samples,
              workers=workers, **cfg.synth)  # fmt: skip
    return SynthConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()})


def _comparable(config: dict) -> dict:
    """A generator config as ``meta.json`` stores it (JSON types), without the fields that do not change the data."""
    return {k: v for k, v in json.loads(json.dumps(config)).items() if k not in SYNTH_IGNORED}


def prepare_benchmark_data(cfg: BenchConfig, say: Progress) -> tuple[Path, dict, bool]:
    """Reuse ``cfg.data_dir`` if it holds this generator config, else synthesise it there.

    Returns (directory, generator config as compared, reused).
    """
    from realm.data.clip import read_meta
    from realm.data.synth import generate

    sc = synth_config(cfg)
    want = _comparable(asdict(sc))
    root = cfg.data_dir
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        meta = read_meta(root)
        have = _comparable(meta.get("config", {})) if meta.get("generator") == "realm.data.synth" else None
        if have == want:
            log.info("reusing the benchmark data in %s", root)
            return root, want, True
        if have is None:
            raise ValueError(f"{root}: exists and does not hold a synthetic benchmark (meta.json); choose another --data")
        diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
        raise ValueError(
            f"{root}: holds a synthetic benchmark with another config (differs in {', '.join(diff)}); "
            "choose another --data or the same settings"
        )
    step = "synthesise data"
    say(step, 0, sc.n_clips())
    generate(sc, root, force=root.exists(), progress=lambda i, n: say(step, i, n))
    return root, want, False


def dataset_summary(data: Path, reused: bool) -> dict:
    from realm.data.clip import read_meta
    from realm.data.inspect import summarize

    s = summarize(data)
    cfg = read_meta(data).get("config", {})
    return {
        "path": str(data), "reused": reused, "hours": round(s.hours, 4), "clips": s.n_clips,
        "splits": {sp.split: {"clips": sp.clips, "hours": round(sp.hours, 4), "listeners": len(sp.listeners)}
                   for sp in s.splits},
        "realisations": s.realisations, "spec": s.spec, "speaker": s.speaker,
        "generator": {k: cfg.get(k) for k in ("backend", "seed", "identity_seed", "tau", "tau_jitter", "tau_spread",
                                               "n_identities", "n_ood_identities", "no_cue_fraction", "clip_seconds")
                      if k in cfg},
    }  # fmt: skip

