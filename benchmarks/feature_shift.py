"""Feature shift: how far do speech features move with level, noise and channel (issue 16, point 2)?

    OMP_NUM_THREADS=1 python benchmarks/feature_shift.py [--extractors logmel,pcen,logmel_norm]
        [--seconds 40] [--no-piper] [--json OUT.json]

Inputs: tests/data/jfk.flac (11 s of real speech) and a passage of Piper sentences with 0.6-1.2 s
pauses (the SNR-sweep passage of ``benchmarks/real_speech.py``, ``--seconds`` long; ``--no-piper``
or a missing Piper voice: the formant backend's babble instead). Each is measured clean and under
the channel of :mod:`realm.data.channel`: gain -20 dB and +6 dB, pink noise at 30, 20, 10 and
5 dB SNR (active speech power over noise power, :func:`add_noise`), and the telephone band
(300-3400 Hz, :func:`band_limit`).

For each extractor, input and condition, with ``f`` the condition's features and ``c`` the clean
ones, both (T, dim), and ``sd`` the clean features' std per dim:

* ``shift``: ``mean_{t,d} |f - c| / sd`` (a trained model sees its inputs move by this many stds);
* ``pause shift``: ``mean_d |mean_pause(f) - mean_pause(c)| / sd``: does a pause still look like
  the clean pause? (pause frames below);
* ``AUC`` and ``bal.acc``: a logistic regression (L2, balanced classes) trained on the clean
  features (standardised by the clean mean and sd) to tell speech frames from pause frames, applied
  unchanged to the condition's features: the AUC of its score and its balanced accuracy at its
  clean threshold. A model trained on clean speech keeps its reactions only as far as this holds.

Speech and pause frames come from the clean audio (noise does not move the pauses): frame RMS
lightly smoothed above 0.1 x its 95th percentile is speech (the rule of
:func:`realm.metrics.speech_offsets`); a pause frame is a non-speech frame at least 2 frames
(67 ms) from any speech frame; the frames in between are not scored.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
JFK = ROOT / "tests" / "data" / "jfk.flac"
SR = 16000
CONDITIONS = ("gain -20 dB", "gain +6 dB", "pink 30 dB", "pink 20 dB", "pink 10 dB", "pink 5 dB", "telephone")
EXTRACTORS = ("logmel", "pcen", "logmel_norm")


# ---------------------------------------------------------------- inputs and labels


def piper_passage(seconds: float, log=print) -> tuple[str, np.ndarray]:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from real_speech import passage

    try:
        from realm.data.speech import PiperBackend

        return "piper", passage(PiperBackend().say, seconds)
    except Exception as e:  # no Piper voice here
        log(f"# Piper unavailable ({e}): formant-backend passage instead")
        return "formant", formant_passage(seconds)


def formant_passage(seconds: float) -> np.ndarray:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from real_speech import passage

    from realm.data.speech import VOICES, FormantBackend, Prosody

    backend, rng = FormantBackend(), np.random.default_rng(0)
    gap = np.zeros(int(0.08 * SR), np.float32)  # between words

    def say(text: str) -> np.ndarray:
        words = [backend.word(w.strip(".,?!"), VOICES[1], Prosody(), rng) for w in text.split()]
        return np.concatenate([x for w in words for x in (w, gap)][:-1])

    return passage(say, seconds)


def conditions(y: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    from realm.data.channel import add_noise, band_limit, pink_noise

    out = {"clean": y, "gain -20 dB": y * 10 ** (-20 / 20), "gain +6 dB": y * 10 ** (6 / 20)}
    for snr in (30, 20, 10, 5):
        noise = pink_noise(len(y), np.random.default_rng([seed, 16, snr]))
        out[f"pink {snr} dB"] = add_noise(y, noise, snr)
    out["telephone"] = band_limit(y, "telephone")
    return {k: np.asarray(v, np.float32) for k, v in out.items()}


def speech_pause_frames(y: np.ndarray, margin: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Boolean (T,) speech and pause masks of clean audio (the rule of realm.metrics.speech_offsets)."""
    from scipy.ndimage import binary_dilation, uniform_filter1d

    from realm.metrics import frame_rms

    rms = uniform_filter1d(frame_rms(y), 3)
    speech = rms > 0.1 * np.percentile(rms, 95)
    near = binary_dilation(speech, iterations=margin)
    return speech, ~near


# ---------------------------------------------------------------- numbers


def logistic(X: np.ndarray, y: np.ndarray, l2: float = 1.0, iters: int = 50) -> np.ndarray:
    """L2-regularised logistic regression with balanced class weights (Newton steps): (w, b)."""
    Xb = np.concatenate([X, np.ones((len(X), 1))], axis=1)
    cw = np.where(y, 0.5 / max(y.mean(), 1e-9), 0.5 / max(1 - y.mean(), 1e-9))
    w = np.zeros(Xb.shape[1])
    reg = l2 * np.eye(Xb.shape[1])
    reg[-1, -1] = 0.0
    for _ in range(iters):
        p = 1 / (1 + np.exp(-np.clip(Xb @ w, -30, 30)))
        g = Xb.T @ (cw * (p - y)) + reg @ w
        H = (Xb * (cw * p * (1 - p))[:, None]).T @ Xb + reg
        step = np.linalg.solve(H, g)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


def auc(score: np.ndarray, label: np.ndarray) -> float:
    """Area under the ROC curve (rank statistic, ties counted half)."""
    from scipy.stats import rankdata

    r = rankdata(score)
    n1, n0 = label.sum(), (~label).sum()
    return float((r[label].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)) if n1 and n0 else float("nan")


def measure(feats: dict[str, np.ndarray], speech: np.ndarray, pause: np.ndarray) -> dict[str, dict]:
    clean = feats["clean"]
    mu, sd = clean.mean(0), clean.std(0)
    sd = np.maximum(sd, 1e-3 * max(sd.mean(), 1e-12))  # a constant dim does not blow up the units
    scored = speech | pause
    Z = (clean[scored] - mu) / sd
    w = logistic(Z, speech[scored])
    out = {}
    for cond, f in feats.items():
        z = (f[scored] - mu) / sd
        s = z @ w[:-1] + w[-1]
        lab = speech[scored]
        out[cond] = {
            "shift": float(np.mean(np.abs(f - clean) / sd)),
            "pause_shift": float(np.mean(np.abs(f[pause].mean(0) - clean[pause].mean(0)) / sd)),
            "auc": auc(s, lab),
            "bal_acc": float(0.5 * ((s[lab] > 0).mean() + (s[~lab] <= 0).mean())),
        }
    return out


def machine() -> str:
    from realm.threads import cpu_model

    return f"{cpu_model()}, {os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"


def table(name: str, res: dict) -> str:
    conds = list(next(iter(res.values())))
    lines = [f"\n## {name}", "", "| extractor | metric | " + " | ".join(conds) + " |",
             "|---|---|" + "---:|" * len(conds)]  # fmt: skip
    for ex, r in res.items():
        for key, label, fmt in (("shift", "shift (std)", "{:.2f}"), ("pause_shift", "pause shift (std)", "{:.2f}"),
                                ("auc", "speech/pause AUC", "{:.3f}"), ("bal_acc", "bal. accuracy", "{:.3f}")):  # fmt: skip
            lines.append(f"| {ex} | {label} | " + " | ".join(fmt.format(r[c][key]) for c in conds) + " |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--extractors", default=",".join(EXTRACTORS))
    ap.add_argument("--seconds", type=float, default=40.0, help="length of the Piper passage")
    ap.add_argument("--no-piper", action="store_true", help="formant babble instead of Piper")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--force", action="store_true", help="Replace an existing output file.")
    args = ap.parse_args(argv)
    from realm.io import refuse_output

    refuse_output(ap, args.json, args.force)

    from realm.audio import get_extractor, load_audio

    print("$ " + " ".join(shlex.quote(a) for a in [f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')}",
                                                    "python", "benchmarks/feature_shift.py", *(argv or sys.argv[1:])]))  # fmt: skip
    print(f"# machine: {machine()}; python {platform.python_version()}")
    t0 = time.perf_counter()
    inputs = {"jfk": load_audio(JFK)}
    name, y = ("formant", formant_passage(args.seconds)) if args.no_piper else piper_passage(args.seconds)
    inputs[f"{name} passage {args.seconds:g} s"] = y
    extractors = [get_extractor(e) for e in args.extractors.split(",")]
    for ex in extractors:
        la = ex.ahead
        print(f"# {ex.name}: dim {ex.dim}, context {ex.context} samples ({ex.context / SR * 1000:.0f} ms), "
              f"lookahead {la} samples ({la / SR * 1000:.0f} ms), key {ex.key()}")  # fmt: skip
    results = {}
    for inp, y in inputs.items():
        speech, pause = speech_pause_frames(y)
        conds = conditions(y)
        res = {}
        for ex in extractors:
            res[ex.name] = measure({c: ex(a) for c, a in conds.items()}, speech, pause)
        results[inp] = res
        print(f"\n# {inp}: {len(speech)} frames, {speech.sum()} speech, {pause.sum()} pause")
        print(table(inp, res))
    print(f"\n# {time.perf_counter() - t0:.1f} s")
    if args.json:
        from realm.io import write_json

        write_json(args.json, {"machine": machine(), "results": results}, force=args.force)
    return results


if __name__ == "__main__":
    main()
