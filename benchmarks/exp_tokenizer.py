"""What can a motion tokenizer show? Listener events in the ground truth's own tokens, decoded (issue 19).

    python benchmarks/exp_tokenizer.py --data DATA [--split test] -c NAME=RUN [-c NAME=RUN ...]

RUN: an idvq run (``realm train idvq``) or an mmlm run (its tokenizer). For every clip of the split
(its first listener realisation), the motion is encoded and decoded with the clip itself as the
identity reference (``realm.models.mmlm.restyle``: an mmlm run with the blink channel through both of
its outputs, the tokens of the deblinked motion plus its blink template at the ground truth's onsets). The events the detectors find (``realm.metrics.detect_events``: smile,
concern, brow raise, nod, blink) in the decoding are matched one-to-one within +-``--tol-s`` to the
ones they find in the ground truth (``realm.metrics.match_events``; blinks within +-0.1 s). A
decoding that makes a rise the data does not have is a false alarm every listener built on those
tokens inherits, so this is the ceiling of a token LM's event precision. Also the mean absolute error
of the channels the detectors read. Prints a Markdown table, the machine and the command.
"""

from __future__ import annotations

import argparse
import platform
import sys

import numpy as np
import torch

KINDS = ("smile", "concern", "brow_raise", "nod", "blink")
BLINK_TOL_S = 0.1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("-c", "--checkpoint", action="append", required=True, help="NAME=RUN (idvq or mmlm), repeatable")
    ap.add_argument("--tol-s", type=float, default=0.5, help="matching tolerance of the slow events, seconds")
    args = ap.parse_args()
    torch.set_num_threads(1)

    import realm
    from realm.data import load_any
    from realm.metrics import DETECTORS, detect_events, match_events, prf
    from realm.models.mmlm import restyle

    clips = [c for c in load_any(args.data, splits=args.split)]
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread")
    print(f"command: python benchmarks/exp_tokenizer.py {' '.join(sys.argv[1:])}")
    minutes = sum(c.n_frames for c in clips) / clips[0].fps / 60 if clips else 0.0
    print(f"\n{len(clips)} {args.split} clips, {minutes:.1f} min; events of the decoded ground truth against the ground truth's "
          f"(+-{args.tol_s} s, blinks +-{BLINK_TOL_S} s)\n")
    print("| tokenizer | " + " | ".join(f"{k} F1 (P / R)" for k in KINDS) + " | false smile + concern onsets | MAE smile / frown / brow / pitch |")
    print("|---|" + "---:|" * (len(KINDS) + 2))
    for spec_ in args.checkpoint:
        name, _, path = spec_.partition("=")
        run = realm.load(path or name)
        spec, fps = run.spec, run.spec.fps
        counts = {k: [0, 0, 0] for k in KINDS}
        err, n_err = {k: 0.0 for k in KINDS[:4]}, 0
        for clip in clips:
            gt = clip.samples()[0]
            dec = restyle(run, gt, gt)
            truth, found = detect_events(gt, spec, fps, KINDS), detect_events(dec, spec, fps, KINDS)
            for k in KINDS:
                tol = (BLINK_TOL_S if k == "blink" else args.tol_s) * fps
                hit = match_events([e["frame"] for e in found if e["kind"] == k], [e["frame"] for e in truth if e["kind"] == k], tol)
                for i, v in enumerate(hit):
                    counts[k][i] += v
            for k in err:
                cols = [spec.channel(c) for c in DETECTORS[k].channels]
                err[k] += float(np.abs(dec[:, cols] - gt[:, cols]).sum())
            n_err += len(gt)
        cells = []
        for k in KINDS:
            r = prf(*counts[k])
            cells.append(f"{r['f1']:.3f} ({r['precision']:.2f} / {r['recall']:.2f})")
        false = counts["smile"][1] + counts["concern"][1]
        mae = " / ".join(f"{err[k] / n_err / len(DETECTORS[k].channels):.3f}" for k in err)
        print(f"| {name} | " + " | ".join(cells) + f" | {false} | {mae} |")


if __name__ == "__main__":
    main()
