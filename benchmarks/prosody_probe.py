"""Can a speaker's features tell a positive, neutral or negative phrase? A linear probe per feature set.

The synthetic speaker says emotional phrases with their emotion's prosody (positive: 10 % faster,
pitch x 1.08, gain x 1.25; negative: 18 % slower, x 0.93, x 0.75; `realm.data.synth.EMOTION_PROSODY`)
unless the phrase is one of the ``no_cue_fraction`` spoken neutrally. A listener model can only
smile at a cued phrase it hears as positive. This scores a standardised logistic regression on
the phrase-level features of the cued emotional phrases and the neutral ones, 5-fold
cross-validated with the folds split by clip (train, val and test clips), for each feature set:

* ``logmel_norm`` (82 dims, mean over the phrase) and its dims 80-81 (level cues; mean and std);
* ``logmel_prosody`` (86 dims, phrase mean) and its dims 82-85 alone (voicing, pitch and the last
  second's pitch and level over the speaker's 10 s baseline; causal) as the phrase mean and at
  the phrase's last frame;
* a non-causal reference: the phrase's pitch and level over the clip's median (whole clip, future
  included), its voiced share and frames per word.

    python benchmarks/prosody_probe.py --data data/synth-0.5h

Prints the machine, the command and the accuracies (mean over the folds; chance: the majority class).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

LABELS = {"neutral": 0, "positive": 1, "negative": 2}


def phrase_features(data: Path, splits: tuple[str, ...], limit: int | None):
    from realm.audio import get_extractor, load_audio

    norm, pros = get_extractor("logmel_norm"), get_extractor("logmel_prosody")
    rows = [r for r in csv.DictReader(open(data / "clips.csv")) if r["split"] in splits][:limit]
    X: dict[str, list] = {"logmel_norm": [], "logmel_norm level cues": [], "logmel_prosody": [], "logmel_prosody dims 82-85": [],
                          "logmel_prosody dims 82-85 (phrase end)": [], "reference: clip-median pitch, level, voicing, rate": []}  # fmt: skip
    y, groups = [], []
    for r in rows:
        audio = load_audio(data / r["audio"])
        A, P = norm(audio), pros(audio)
        raw = pros.raw_prosody(audio, len(P))  # log F0, voiced, log power
        v = raw[:, 1] > 0
        med_f0, med_e = (np.median(raw[v, 0]), np.median(raw[v, 2])) if v.any() else (0.0, 0.0)
        fps = float(json.load(open(data / r["events"])).get("fps", 30.0))
        for ph in json.load(open(data / r["events"]))["phrases"]:
            if ph["emotion"] != "neutral" and not ph["cue"]:
                continue  # spoken neutrally: nothing to hear
            s, e = int(ph["start"] * fps), min(int(ph["end"] * fps), len(P))
            if e - s < 5:
                continue
            vv = raw[s:e, 1] > 0
            X["logmel_norm"].append(A[s:e].mean(0))
            X["logmel_norm level cues"].append(np.r_[A[s:e, 80:].mean(0), A[s:e, 80:].std(0)])
            X["logmel_prosody"].append(P[s:e].mean(0))
            X["logmel_prosody dims 82-85"].append(P[s:e, 82:].mean(0))
            X["logmel_prosody dims 82-85 (phrase end)"].append(P[e - 1, 82:])
            X["reference: clip-median pitch, level, voicing, rate"].append(
                [raw[s:e][vv, 0].mean() - med_f0 if vv.any() else 0.0, raw[s:e][vv, 2].mean() - med_e if vv.any() else 0.0,
                 vv.mean(), (e - s) / max(1, len(ph["text"].split()))])  # fmt: skip
            y.append(LABELS[ph["emotion"]])
            groups.append(r["clip_id"])
    return {k: np.asarray(v, np.float64) for k, v in X.items()}, np.asarray(y), np.asarray(groups)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="a `realm data synth` directory (events with phrases)")
    ap.add_argument("--clips", type=int, default=None, help="read at most this many clips (default: all of train, val, test)")
    args = ap.parse_args()
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from realm.threads import cpu_model

    data = Path(args.data)
    X, y, groups = phrase_features(data, ("train", "val", "test"), args.clips)
    print("command: python " + " ".join(sys.argv))
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"phrases: {len(y)} in {len(set(groups))} clips (neutral / positive / negative: {np.bincount(y, minlength=3).tolist()})")
    print(f"chance (majority class): {np.bincount(y).max() / len(y):.3f}\n")
    print("| features | dims | accuracy (5 folds by clip, mean ± std) |\n|---|---:|---:|")
    for name in X:
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
        acc = cross_val_score(clf, X[name], y, groups=groups, cv=GroupKFold(5))
        print(f"| {name} | {X[name].shape[1]} | {acc.mean():.3f} ± {acc.std():.3f} |")


if __name__ == "__main__":
    main()
