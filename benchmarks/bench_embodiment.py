"""Physical viability of generated listener motion on a robot (DESIGN section 11).

    python benchmarks/bench_embodiment.py --data DATASET --model realm=checkpoints/realm-demo \\
        --model static_mean=runs/static_mean --model random_clip=runs/random_clip \\
        [--profile ameca] [--split test] [--max-clips 8] [--json out.json]

For every model and every clip of the split it generates listener motion from the clip's
speaker audio (one sample, seed 0, starting at the ground truth's first frame), retargets it
to the robot profile and simulates it with the MuJoCo model of ``realm.embodiment.sim``, twice:
the raw retargeted commands (what the model asks of the robot) and the commands after the
safety layer (what the robot is actually sent). The ground truth listener motion of the same
clips is scored the same way (row ``ground truth``). It prints a markdown table of the means
over clips:

* ``RMSE deg`` / ``RMSE face`` / ``RMSE norm``: tracking error of the safe commands (joint
  controls in degrees, face controls in 0..1, all range-normalised);
* ``lag ms``: cross-correlation lag of the simulated robot behind the safe commands;
* ``limit sat %`` / ``rate sat %``: how often the *raw* commands sit at or beyond a position
  limit, or at or over a velocity limit (the safety layer then clamps them);
* ``jerk raw`` / ``jerk safe``: mean squared jerk of the simulated robot, range-normalised,
  (range/s^3)^2, following the raw and the safe commands.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np

COLUMNS = (
    ("RMSE deg", "safe", "rmse_deg", ".3f"),
    ("RMSE face", "safe", "rmse_face", ".4f"),
    ("RMSE norm", "safe", "rmse_norm", ".4f"),
    ("lag ms", "safe", "lag_ms", ".0f"),
    ("limit sat %", "raw", "limit_saturation_pct", ".2f"),
    ("rate sat %", "raw", "rate_saturation_pct", ".2f"),
    ("jerk raw", "raw", "jerk_ms_norm", ".3g"),
    ("jerk safe", "safe", "jerk_ms_norm", ".3g"),
)


def score_motion(motion: np.ndarray, fps: float, profile, spec: str = "arkit58") -> dict:
    """Overall sim metrics of one (T, D) motion: ``{"raw": {...}, "safe": {...}}``."""
    from realm.embodiment.sim import commands_from_motion, sim_metrics, simulate

    out = {}
    for key, safety in (("raw", False), ("safe", True)):
        cmd, rate = commands_from_motion(motion, fps, profile, spec=spec, safety=safety)
        out[key] = sim_metrics(simulate(profile, cmd, rate))["overall"]
    return out


def mean_metrics(per_clip: list[dict]) -> dict:
    """Mean over clips of every metric of ``raw`` and ``safe`` (None values skipped)."""
    out: dict = {}
    for key in ("raw", "safe"):
        out[key] = {}
        for m in per_clip[0][key]:
            vals = [c[key][m] for c in per_clip if c[key][m] is not None]
            out[key][m] = float(np.mean(vals)) if vals else None
    return out


def table(rows: dict[str, dict]) -> str:
    head = "| motion | " + " | ".join(c[0] for c in COLUMNS) + " |"
    lines = [head, "|---" * (len(COLUMNS) + 1) + "|"]
    for name, m in rows.items():
        cells = []
        for _, key, metric, fmt in COLUMNS:
            v = m[key][metric]
            cells.append("n/a" if v is None else format(v, fmt))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(data: Path, models: dict[str, str], profile: str, split: str, max_clips: int | None, seed: int) -> dict:
    from realm.checkpoint import load
    from realm.data import load_any
    from realm.embodiment.profile import load_profile

    prof = load_profile(profile)
    clips = sorted(load_any(data, splits=split), key=lambda c: c.clip_id)
    if not clips:
        raise SystemExit(f"error: {data}: no clips in split {split!r}")
    clips = clips[:max_clips] if max_clips else clips
    spec, fps = clips[0].spec, float(clips[0].fps)
    results: dict[str, dict] = {}
    t0 = time.time()
    results["ground truth"] = mean_metrics([score_motion(c.listener, fps, prof, spec) for c in clips])
    print(f"ground truth: {len(clips)} clips scored ({time.time() - t0:.0f} s)", file=sys.stderr)
    for name, path in models.items():
        t0 = time.time()
        m = load(path)
        if m.spec.name != spec:
            raise SystemExit(f"error: model {name!r} generates {m.spec.name}, the data is {spec}")
        per_clip = []
        for c in clips:
            p = np.asarray(m.generate(str(c.audio_path), first_frame=c.listener[0], samples=1, seed=seed,
                                      speaker=c.speaker, words=c.words), np.float64)  # fmt: skip
            while p.ndim > 2:
                p = p[0]
            per_clip.append(score_motion(p, fps, prof, spec))
        results[name] = mean_metrics(per_clip)
        print(f"{name}: {len(clips)} clips generated and scored ({time.time() - t0:.0f} s)", file=sys.stderr)
    return {"data": str(data), "split": split, "profile": prof.name, "clips": [c.clip_id for c in clips],
            "seconds": float(sum(len(c.listener) for c in clips) / fps), "rows": results}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="Dataset directory (any supported layout).")
    ap.add_argument("--model", action="append", default=[], metavar="NAME=RUN_DIR",
                    help="A trained run directory (repeat for each model).")  # fmt: skip
    ap.add_argument("--profile", default="ameca", help="Robot profile: ameca, neck3 or a YAML path.")
    ap.add_argument("--split", default="test")
    ap.add_argument("--max-clips", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="Also write the results as JSON here.")
    ap.add_argument("--force", action="store_true", help="Replace an existing output file.")
    args = ap.parse_args(argv)
    from realm.io import refuse_output

    refuse_output(ap, args.json, args.force)
    models = {}
    for item in args.model:
        name, sep, path = item.partition("=")
        if not sep:
            ap.error(f"--model wants NAME=RUN_DIR, got {item!r}")
        models[name] = path
    result = run(args.data, models, args.profile, args.split, args.max_clips, args.seed)
    result["command"] = "python benchmarks/bench_embodiment.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    print(f"\n{result['profile']}, split {result['split']}: {len(result['clips'])} clips, "
          f"{result['seconds']:.0f} s of motion; means over clips\n")  # fmt: skip
    print(table(result["rows"]))
    if args.json:
        from realm.io import write_json

        write_json(args.json, result, force=args.force)


if __name__ == "__main__":
    main()
