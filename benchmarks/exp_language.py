"""Does the listener react to what is said? Smile and concern reactions split by whether their trigger
word carried a prosodic cue (issue 19, seed 2's claim).

    python benchmarks/exp_language.py --data DATA --split test -m mmlm=RUN -m realm=checkpoints/realm-demo [--samples 1]
    python benchmarks/exp_language.py --data DATA --split ood -m smollm2=RUN1,RUN2,RUN3 -m realm=RUN4,RUN5   # seeds: each and their mean

The synthetic benchmark logs every reaction with its trigger, and every trigger with ``cue``:
whether its phrase was spoken with its emotion's prosody (``realm data synth --no-cue-fraction``).
A reaction to a trigger without a cue can only come from the *meaning* of the word. For each
model, smiles and concern events are detected in the generated motion (``realm.metrics.detect_events``)
and matched one-to-one within +-0.5 s:

* ``all``: against every smile / concern reaction of the ground truth (event F1 per kind);
  reactions that only prolong one already shown (``visible_onset`` false) count neither way, as in
  ``realm.metrics.event_f1``;
* ``no cue``: against the reactions to uncued triggers only, detections matching a cued reaction
  counting neither way (``match_events``'s ``ignore``): smile and concern pooled.

A second table gives every model's event F1 for each kind the detectors know (smile, concern,
brow raise, nod, blink; ``realm.metrics.event_f1``, every reaction of the kind, cued or not).

Words: the dataset's transcripts (as ``realm eval`` gives them). Prints a Markdown table, the machine
and the command. Its first row, *another realisation*, scores the dataset's second listener
realisation of each clip against the first one's reactions: a listener drawn from the very process
that made the data. Each trigger leads to a reaction only with its identity's probability, so this
row, not 1, is what a perfect model reaches on average, and a model that reacts to every trigger
has a precision near that probability.

``--why`` adds a second table: each model's uncued false alarms (the detections that lower the
``no cue`` precision) sorted into what lies around them in the ground truth, first that applies:
*near a true one* (a true reaction of the same kind within 1.5 s: the right reaction placed too
early or late, or shown twice), *other emotion* (a true reaction of the other kind within 0.5 s: the right moment, the
wrong feeling), *let pass* (a trigger of its own polarity 0-2 s before it that the listener let
pass), *neutral phrase* (a pause or question 0-2 s before it: a phrase without either word) and
*nothing* (none of these).
"""

from __future__ import annotations

import argparse
import platform
import sys

import numpy as np
import torch

KINDS = ("smile", "concern")
TOL_S = 0.5


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("-m", "--model", action="append", required=True,
                    help="NAME=RUN, repeatable; NAME=RUN,RUN,... scores each run (seeds of one recipe) and adds their mean")
    ap.add_argument("--samples", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--temperature", type=float, default=None, help="token models: sampling temperature (0: greedy; default: the model's)")
    ap.add_argument("--top-p", type=float, default=None, help="token models: nucleus mass (default: the model's)")
    ap.add_argument("--decoded", default=None, metavar="RUN",
                    help="also score the ground truth's own tokens decoded by RUN's tokenizer (an mmlm or idvq run): what the tokens can show")
    ap.add_argument("--why", action="store_true", help="also sort each model's uncued false alarms by what lies around them")
    args = ap.parse_args()
    torch.set_num_threads(1)

    import realm
    from realm.data import load_any
    from realm.metrics import EVENT_KINDS, detect_events, event_f1, false_alarms, match_events, prf

    clips = [c for c in load_any(args.data, splits=args.split) if c.events]
    truth = []  # per clip: {kind: (cued frames, uncued frames, frames of reactions with no visible onset)}
    context = []  # per clip: (every smile / concern reaction as (kind, frame), triggers as (kind, frame, reacted to))
    for c in clips:
        reacted = {r["trigger"] for r in c.events["reactions"] if r.get("trigger") is not None}
        context.append(([(r["kind"], r["frame"]) for r in c.events["reactions"] if r["kind"] in KINDS],
                        [(tr["kind"], tr["frame"], i in reacted) for i, tr in enumerate(c.events.get("triggers", []))]))
        trig = c.events.get("triggers", [])
        t = {}
        for k in KINDS:
            rs = [r for r in c.events["reactions"] if r["kind"] == k and r.get("visible_onset", True)]
            cued = [r["frame"] for r in rs if r.get("trigger") is None or trig[r["trigger"]].get("cue", True)]
            hidden = [r["frame"] for r in c.events["reactions"] if r["kind"] == k and not r.get("visible_onset", True)]
            t[k] = (cued, [r["frame"] for r in rs if r["frame"] not in cued], hidden)
        truth.append(t)
    n = {k: (sum(len(t[k][0]) for t in truth), sum(len(t[k][1]) for t in truth)) for k in KINDS}  # visible onsets
    print(f"machine: {platform.machine()}, torch {torch.__version__}, 1 thread")
    print(f"command: python benchmarks/exp_language.py {' '.join(sys.argv[1:])}")
    print(f"\n{len(clips)} {args.split} clips; reactions (cued + uncued): "
          + ", ".join(f"{k} {a} + {b}" for k, (a, b) in n.items()) + "\n")
    print("| model | smile F1 | concern F1 | uncued smile + concern: F1 | recall | precision |")
    print("|---|---:|---:|---:|---:|---:|")
    why_rows, kind_rows = [], []

    def why(alarm: int, kind: str, ctx, fps: float) -> str:
        """What lies around one uncued false alarm of ``kind`` at frame ``alarm`` (see ``--why``)."""
        reactions, triggers = ctx
        other = KINDS[1 - KINDS.index(kind)]
        own = "positive" if kind == "smile" else "negative"
        if any(k == kind and abs(alarm - f) <= 3 * TOL_S * fps for k, f in reactions):
            return "near a true one"
        if any(k == other and abs(alarm - f) <= TOL_S * fps for k, f in reactions):
            return "other emotion"
        before = [(k, r) for k, f, r in triggers if 0 <= alarm - f <= 4 * TOL_S * fps]
        if any(k == own and not r for k, r in before):
            return "let pass"
        if any(k in ("pause", "question") for k, _ in before):
            return "neutral phrase"
        return "nothing"

    def score(name: str, motions, spec, fps: float) -> None:
        """Print the row of ``motions``: per clip, an iterable of (T, D) realisations or samples."""
        nocue = [0, 0, 0]
        causes: dict[str, int] = {}
        every = {k: [0, 0, 0] for k in EVENT_KINDS}
        for motion, t, ctx, clip in zip(motions, truth, context, clips, strict=True):
            for x in motion:
                for k, v in event_f1(x, clip.events["reactions"], spec, fps, TOL_S)["per_kind"].items():
                    for i, key in enumerate(("tp", "fp", "fn")):
                        every[k][i] += v[key]
                found = detect_events(x, spec, fps, list(KINDS))
                for k in KINDS:
                    det = [e["frame"] for e in found if e["kind"] == k]
                    cued, uncued, hidden = t[k]  # (smile / concern F1 over all of them: event_f1's, above)
                    for i, v in enumerate(match_events(det, uncued, TOL_S * fps, ignore=cued + hidden)):
                        nocue[i] += v
                    for a in false_alarms(det, uncued, TOL_S * fps, ignore=cued + hidden):
                        cause = why(a, k, ctx, fps)
                        causes[cause] = causes.get(cause, 0) + 1
        f = {k: prf(*c)["f1"] for k, c in every.items()}
        r = prf(*nocue)
        print(f"| {name} | {f['smile']:.3f} | {f['concern']:.3f} | {r['f1']:.3f} | {r['recall']:.3f} | {r['precision']:.3f} |")
        why_rows.append((name, r["tp"], causes))
        kind_rows.append((name, f))
        return f, r

    if all(c.samples().shape[0] > 1 for c in clips):  # the reference: the process that made the data
        score("*another realisation (reference)*", [c.samples()[1:] for c in clips], clips[0].spec, clips[0].fps)
    if args.decoded:
        run = realm.load(args.decoded)
        vq = getattr(run.model, "vq", run.model)

        def decoded(clip):
            gt = clip.samples()[0]
            x = torch.from_numpy(run.stats.apply(gt).astype("float32"))[None]
            with torch.inference_mode():
                yield run.stats.invert(vq.restyle(x, x)[0].numpy())  # its tokens decoded, itself the reference

        score(f"*ground truth's tokens decoded ({args.decoded})*", (decoded(c) for c in clips), run.spec, run.spec.fps)
    for spec_ in args.model:
        name, _, runs = spec_.partition("=")
        runs = runs.split(",")  # NAME=RUN,RUN,...: runs of one recipe (seeds), each scored, then their mean
        rows = []
        for run in runs:
            lis = realm.load(run)
            how = {k: v for k, v in (("temperature", args.temperature), ("top_p", args.top_p)) if v is not None}
            how = how if how and "temperature" in lis.sample_options else {}
            gen = (lis.generate(c.audio_path, words=c.words, samples=args.samples, seed=args.seed, **how) for c in clips)
            rows.append(score(name if len(runs) == 1 else f"{name} ({run})", gen, lis.spec, lis.fps))
        if len(rows) > 1:
            f = {k: float(np.mean([fk[k] for fk, _ in rows])) for k in EVENT_KINDS}
            r = {k: float(np.mean([rk[k] for _, rk in rows])) for k in ("f1", "recall", "precision")}
            spread = max(rk["f1"] for _, rk in rows) - min(rk["f1"] for _, rk in rows)
            mean = f"**{name}: mean of {len(rows)}** (uncued F1 spread {spread:.3f})"
            print(f"| {mean} | {f['smile']:.3f} | {f['concern']:.3f} | **{r['f1']:.3f}** | {r['recall']:.3f} | {r['precision']:.3f} |")
            kind_rows.append((mean, f))
    print("\nEvent F1 of every kind (``realm.metrics.event_f1``: all reactions of the kind, cued or not, +-0.5 s):\n")
    print("| model | " + " | ".join(EVENT_KINDS) + " |")
    print("|---|" + "---:|" * len(EVENT_KINDS))
    for name, f1 in kind_rows:
        print(f"| {name} | " + " | ".join(f"{f1[k]:.3f}" for k in EVENT_KINDS) + " |")
    if args.why:
        names = ("near a true one", "other emotion", "let pass", "neutral phrase", "nothing")
        print("\nUncued false alarms by what lies around them (``--why``); hits for scale:\n")
        print("| model | hits | false alarms | " + " | ".join(names) + " |")
        print("|---|---:|---:|" + "---:|" * len(names))
        for name, hits, causes in why_rows:
            print(f"| {name} | {hits} | {sum(causes.values())} | " + " | ".join(str(causes.get(c, 0)) for c in names) + " |")


if __name__ == "__main__":
    main()
