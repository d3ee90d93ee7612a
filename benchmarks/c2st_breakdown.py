"""What gives a model away in the two-sample test: its accuracy per feature group and per channel.

    OMP_NUM_THREADS=1 python benchmarks/c2st_breakdown.py --data DATA [-m NAME=RUN ...] [--split test] [--top 12]

``realm eval``'s two-sample test (``c2st``: a logistic regression told ground-truth 4 s listener windows
from a model's, given the speaker's loudness; :func:`realm.metrics.c2st_accuracy`) gives one number.
This prints where it comes from (:func:`realm.metrics.c2st_breakdown`), for each model (default: the demo
checkpoint) and for the floor (the split's second listener realisation, where the data has one):

* the test on one feature group at a time: level (a channel's mean over the window), spread (its standard
  deviation), speed (its mean |first difference|), range, and the correlation of its speed with the
  speaker's loudness 0, 8 and 16 frames earlier;
* the ``--top`` channels that alone tell the model from the listener best, with the model's speed and
  spread over the listener's (1 = the same) and its mean minus the listener's, over all frames.

One sample per clip, every model starting from the ground truth's frame 0 (as ``realm eval``). Prints the
machine and the command beside the numbers.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="dataset directory (realm data synth ...)")
    ap.add_argument("-m", "--model", action="append", default=[], help="NAME=RUN (repeatable; default the demo)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--top", type=int, default=12, help="channels listed per model")
    ap.add_argument("--max-clips", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    import torch

    from realm.audio import load_audio
    from realm.data import load_any
    from realm.eval import FLOOR, load_models
    from realm.metrics import c2st_breakdown, loudness
    from realm.motion import get_spec
    from realm.threads import cpu_model

    torch.set_num_threads(args.threads)
    pairs = [m.split("=", 1) for m in args.model] or [["demo", "checkpoints/realm-demo"]]
    if any(len(p) != 2 for p in pairs):
        ap.error("--model expects NAME=RUN")
    clips = sorted(load_any(args.data, splits=args.split), key=lambda c: c.clip_id)[: args.max_clips]
    if len(clips) < 2:
        ap.error(f"{args.data}: the two-sample test needs at least 2 clips in split {args.split!r}")
    names = list(get_spec(clips[0].spec).names)
    gts = [c.listener for c in clips]
    conds = [loudness(load_audio(c.audio_path), fps=c.fps) for c in clips]
    preds = {}
    for name, m in load_models(dict(pairs)).items():
        out = []
        for c in clips:
            p = np.asarray(m.generate(str(c.audio_path), first_frame=c.listener[0], samples=1, seed=args.seed,
                                      speaker=c.speaker, words=c.words), np.float32)  # fmt: skip
            out.append(p[0] if p.ndim == 3 else p)
        preds[name] = out
    if all(c.samples().shape[0] >= 2 for c in clips):
        preds[FLOOR] = [c.samples()[1] for c in clips]
    command = " ".join(["python benchmarks/c2st_breakdown.py", *(sys.argv[1:] if argv is None else argv)])
    print(f"# {command}")
    print(f"# machine: {cpu_model()}, {os.cpu_count()} CPUs, {args.threads} torch thread(s)")
    print(f"# data: {args.data}, split {args.split}, {len(clips)} clips, one sample each (seed {args.seed})\n")
    result = {name: c2st_breakdown(gts, p, conds, names=names) for name, p in preds.items()}
    groups = list(next(iter(result.values()))["groups"])
    print("| model | all | " + " | ".join(groups) + " |")
    print("|---|---:|" + "---:|" * len(groups))
    for name, r in result.items():
        print(f"| {name} | {r['all']:.3f} | " + " | ".join(f"{r['groups'][g]:.3f}" for g in groups) + " |")
    for name, r in result.items():
        top = sorted(r["channels"].items(), key=lambda kv: -kv[1]["accuracy"])[: args.top]
        alone = sum(c["accuracy"] >= 0.9 for c in r["channels"].values())
        print(f"\n{name}: {alone} of {len(names)} channels alone tell it at >= 0.9")
        print("| channel | accuracy alone | speed ratio | spread ratio | level diff |")
        print("|---|---:|---:|---:|---:|")
        f = lambda v, s="{:.2f}": "n/a" if v is None else s.format(v)  # noqa: E731
        for ch, c in top:
            print(f"| {ch} | {c['accuracy']:.3f} | {f(c['speed_ratio'])} | {f(c['spread_ratio'])} | "
                  f"{f(c['level_diff'], '{:+.4f}')} |")  # fmt: skip
    return result


if __name__ == "__main__":
    main()
