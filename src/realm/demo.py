"""The demo job (``make demo`` / ``realm demo``): a trained REALM on held-out synthetic
conversations and on real speech, with metrics against ground truth and trivial baselines."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from realm.data import load_dataset
from realm.data.synth import SynthConfig, generate
from realm.io import save_npz, write_json
from realm.metrics import fd_delta, frechet_distance, l1

log = logging.getLogger(__name__)

#: Metric columns of the demo table: (name, block kind, function).
COLUMNS = (
    ("L1 exp", "expression", l1),
    ("L1 pose", "pose", l1),
    ("FD exp", "expression", frechet_distance),
    ("FD pose", "pose", frechet_distance),
    ("FD_delta exp", "expression", fd_delta),
)


def run_demo(checkpoint: str | Path, out: str | Path, speech: str | Path | None, hours: float = 0.05,
             seed: int = 1, samples: int = 3, progress=None) -> dict:  # fmt: skip
    """Build a small held-out synthetic set, generate with REALM and baselines, score against GT.

    The set uses a new conversation seed with the checkpoint's identity seed: the same
    listeners as in training, new conversations. Metrics are means over the test clips (and
    over REALM's samples: mean, never best-of-N).
    """
    import realm

    out = Path(out)
    listener = realm.load(checkpoint)
    train_cfg = listener.config.get("data_config", {})
    synth_dir = out / "synth"
    cfg = SynthConfig(hours=hours, seed=seed, identity_seed=int(train_cfg.get("identity_seed", 0)))
    generate(cfg, synth_dir, force=True, progress=progress)
    clips = load_dataset(synth_dir)
    test = [c for c in clips if c.split == "test"]
    train = [c for c in clips if c.split == "train"]
    spec = listener.spec
    rng = np.random.default_rng(seed)
    rows: dict[str, list[list[float]]] = {"REALM": [], "static mean": [], "random train clip": [], "GT resample": []}
    outputs = {}
    for c in test:
        gt = c.listener
        preds = listener.generate(c.audio_path, first_frame=gt[0], samples=samples, seed=seed)
        outputs[c.clip_id] = preds
        save_npz(out / f"{c.clip_id}.realm.npz", listener=preds, gt=c.samples(), spec=np.array(spec.name),
                 fps=np.array(listener.fps), audio=np.array(str(c.audio_path)))  # fmt: skip
        donor = train[int(rng.integers(len(train)))].listener
        random_clip = np.resize(donor, gt.shape) if len(donor) < len(gt) else donor[: len(gt)]
        candidates = {
            "REALM": list(preds),
            "static mean": [np.repeat(listener.stats.mean[None], len(gt), 0)],
            "random train clip": [random_clip],
            "GT resample": list(c.samples()[1:]),
        }
        for name, preds_ in candidates.items():
            if preds_:  # mean over samples (never best-of-N)
                rows[name].append([np.mean([_score(gt, p, spec, kind, fn) for p in preds_]) for _, kind, fn in COLUMNS])
    table = {name: np.mean(v, axis=0).tolist() for name, v in rows.items() if v}
    result = {
        "checkpoint": str(checkpoint), "synth_dir": str(synth_dir), "test_clips": [c.clip_id for c in test],
        "columns": [c[0] for c in COLUMNS], "table": table, "samples": samples, "outputs": {},
    }  # fmt: skip
    result["outputs"]["test"] = [str(out / f"{c.clip_id}.realm.npz") for c in test]
    if speech is not None:
        from realm.generate import generate_file

        path = out / f"{Path(speech).stem}.realm.npz"
        generate_file(listener, speech, path, force=True, samples=samples, seed=seed)
        result["outputs"]["speech"] = str(path)
    write_json(out / "demo_metrics.json", result)
    return result


def _score(gt, pred, spec, kind, fn) -> float:
    idx = spec.indices(kind)
    return fn(gt[:, idx], pred[:, idx])
