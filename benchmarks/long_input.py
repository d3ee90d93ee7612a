"""Bounded over long inputs: does a listener stay inside the range its training data occupies,
without a trend, for minutes to an hour of silence, noise, tones and speech?

    python benchmarks/long_input.py -c checkpoints/realm-demo --minutes 60            # the full check
    python benchmarks/long_input.py -c checkpoints/realm-demo --minutes 10 --inputs silence pink

For each input (generated here, deterministic; ``speech`` loops tests/data/jfk.flac)
it generates one sample with the checkpoint on one torch thread and reports, for the model's raw
output (``clamp=False``: what the model does, not what the last-line clamp hides):

* ``out %``: frames with any channel outside the data's range (``stats.npz``'s 0.5th-99.5th
  percentiles, widened by ``realm.metrics.RANGE_MARGIN`` of the range, at least ``RANGE_FLOOR``;
  :func:`realm.metrics.out_of_range`), and the worst channel;
* ``trend``: the expression's rest drift between the first and the last ``--segment`` minutes,
  ``mean_d |median(last)[d] - median(first)[d]|`` (:func:`realm.metrics.rest_drift` with the
  first segment's median as the rest), and its largest channel (``max |.|``);
* the largest |head pitch|, |yaw|, |roll| in degrees against arkit58's ranges (30, 30, 20);
* blinks per minute (:func:`realm.metrics.detect_blinks`) and the generation time.

A checkpoint whose ``stats.npz`` predates the saved range needs ``--data`` (its training data)
to compute the range.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np

SR = 16000
JFK = Path(__file__).resolve().parents[1] / "tests" / "data" / "jfk.flac"
INPUTS = ("silence", "pink", "white", "tones", "speech")


def make_input(name: str, seconds: float, seed: int = 0) -> np.ndarray:
    """``seconds`` of 16 kHz audio: silence, pink or white noise (RMS 0.05), music-like tones
    (harmonic notes of 0.25-1 s with a decay, RMS ~0.05), or jfk.flac looped."""
    n = int(seconds * SR)
    rng = np.random.default_rng(seed)
    if name == "silence":
        return np.zeros(n, np.float32)
    if name == "pink":
        from realm.data.channel import pink_noise

        return (0.05 * pink_noise(n, rng)).astype(np.float32)
    if name == "white":
        w = rng.standard_normal(n)
        return (0.05 * w / w.std()).astype(np.float32)
    if name == "tones":
        out, t = np.zeros(n, np.float32), 0
        while t < n:
            dur = int(rng.uniform(0.25, 1.0) * SR)
            f0 = 110.0 * 2 ** (rng.integers(0, 36) / 12)
            tt = np.arange(min(dur, n - t)) / SR
            note = sum(np.sin(2 * np.pi * f0 * h * tt) / h for h in (1, 2, 3, 4))
            out[t : t + len(tt)] = 0.07 * note * np.exp(-3 * tt)
            t += dur
        return out
    if name == "speech":
        from realm.audio import load_audio

        y = load_audio(JFK)
        return np.tile(y, int(np.ceil(n / len(y))))[:n].astype(np.float32)
    raise ValueError(f"unknown input {name!r}; inputs: {', '.join(INPUTS)}")


def data_range(listener, data: str | None) -> tuple[np.ndarray, np.ndarray]:
    st = listener.stats
    if st.lo is not None:
        return st.lo, st.hi
    if data is None:
        raise SystemExit(f"{listener.path}/stats.npz has no data range (lo, hi): pass --data (the training data)")
    from realm.data import load_any
    from realm.motion import NormStats

    train = [c for c in load_any(data) if c.split == "train"]
    fit = NormStats.fit([c.listener for c in train], spec=listener.spec.name)
    return fit.lo, fit.hi


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--checkpoint", default="checkpoints/realm-demo")
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--segment", type=float, default=None, help="Minutes compared first vs last (default: minutes / 6).")
    ap.add_argument("--inputs", nargs="+", default=list(INPUTS), choices=INPUTS)
    ap.add_argument("--data", default=None, help="Training data, for a checkpoint without a saved range.")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch

    import realm
    from realm.metrics import detect_blinks, out_of_range, rest_drift
    from realm.motion import HEAD_PITCH_YAW, HEAD_ROLL

    torch.set_num_threads(1)
    lis = realm.load(args.checkpoint)
    spec, fps = lis.spec, lis.fps
    lo, hi = data_range(lis, args.data)
    ex, rot = spec.block("expression").slice, spec.block("rotation").slice
    seg = args.segment if args.segment is not None else args.minutes / 6
    limits = np.degrees([HEAD_PITCH_YAW, HEAD_PITCH_YAW, HEAD_ROLL])
    print(f"# {args.checkpoint}, {args.minutes:g} min per input, trend = first vs last {seg:g} min; "
          f"{platform.processor() or platform.machine()}, 1 torch thread")  # fmt: skip
    print(f"# python benchmarks/long_input.py -c {args.checkpoint} --minutes {args.minutes:g}")
    print("| input | out % | worst channel | trend (mean) | trend (max) | max |pitch, yaw, roll| deg | blinks/min | gen s |")
    print("|---|---:|---|---:|---:|---|---:|---:|")
    for name in args.inputs:
        y = make_input(name, args.minutes * 60, args.seed)
        t0 = time.perf_counter()
        m = lis.generate(y, seed=args.seed, clamp=False)[0]
        dt = time.perf_counter() - t0
        r = out_of_range(m, lo, hi)
        n = max(1, int(seg * 60 * fps))
        first = np.median(m[:n, ex], axis=0)
        trend = rest_drift(m[-n:, ex], first, fps, segments=((0.0, None),))[0]
        trend_max = float(np.abs(np.median(m[-n:, ex], axis=0) - first).max())
        head = np.degrees(np.abs(m[:, rot]).max(0))
        blinks = len(detect_blinks(m, spec, fps)) / (len(m) / fps / 60)
        worst = "-" if r["worst"] is None else f"{spec.names[r['worst']]} (+{r['excess']:.2f})"
        flag = ["" if h <= lim else "!" for h, lim in zip(head, limits, strict=True)]
        heads = ", ".join(f"{h:.1f}{f}" for h, f in zip(head, flag, strict=True))
        print(f"| {name} | {100 * r['frames']:.1f} | {worst} | {trend:.3f} | {trend_max:.3f} | {heads} | {blinks:.1f} | {dt:.0f} |")


if __name__ == "__main__":
    main()
