"""Identity drift over a rollout: does a model keep the listener's resting expression?

    python benchmarks/exp_drift.py --data DATA --split test -m realm=checkpoints/realm-demo -m lstm=runs/lstm

Every model starts from the ground truth's frame 0, as in ``realm eval``. For each clip and each
time segment (0-3 s, 3-8 s, 8 s to the end) it measures how far the median expression of the
generated motion is from the listener's resting expression (the median expression of the
ground truth over the whole clip): the mean absolute difference over the expression
channels. The population row is the distance of the training set's mean expression from
each listener's rest, the error of a model that forgets who is listening.

A model that keeps identity stays flat across segments. A model whose only memory of the
listener is its own recent output drifts towards, or past, the population row.
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("-m", "--model", action="append", required=True, help="NAME=RUN")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from realm.data import load_any
    from realm.eval import load_models
    from realm.metrics import DRIFT_KEYS, rest_drift
    from realm.motion import get_spec

    clips = load_any(args.data)
    test = [c for c in clips if c.split == args.split]
    train = [c for c in clips if c.split == "train"]
    spec = get_spec(test[0].spec)
    ex = spec.indices("expression")
    fps = float(test[0].fps)
    population = np.concatenate([c.samples()[0][:, ex] for c in train]).mean(axis=0)
    models = load_models(dict(m.split("=", 1) for m in args.model))
    print(f"# python benchmarks/exp_drift.py --data {args.data} --split {args.split} "
          + " ".join(f"-m {m}" for m in args.model))  # fmt: skip
    print(f"# {len(test)} clips; error = mean |median generated expression - listener's rest| per segment\n")
    names = [label.removeprefix("drift ") for _, label in DRIFT_KEYS]
    print("| model | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    rests = [np.median(c.samples()[0][:, ex], axis=0) for c in test]  # each listener's resting expression
    for name, m in models.items():
        rows = []
        for c, rest in zip(test, rests, strict=True):
            gt = c.samples()[0]
            p = np.asarray(m.generate(str(c.audio_path), first_frame=gt[0], samples=1, seed=args.seed,
                                      speaker=c.speaker, words=c.words))  # fmt: skip
            p = p[0] if p.ndim == 3 else p
            rows.append(rest_drift(p[:, ex], rest, fps))
        print(f"| {name} | " + " | ".join(f"{v:.4f}" for v in np.nanmean(rows, axis=0)) + " |", flush=True)
    pop = float(np.mean([np.abs(population - rest).mean() for rest in rests]))
    print("| *population mean expression* | " + " | ".join([f"{pop:.4f}"] * len(DRIFT_KEYS)) + " |")


if __name__ == "__main__":
    main()
