"""Generation speed and memory of a REALM checkpoint (DESIGN section 13 targets).

    python benchmarks/bench_generate.py [--checkpoint checkpoints/realm-demo] [--seconds 60]

For 1 and 2 torch threads (each in a fresh process) it prints: offline real-time factor with
feature extraction included and excluded (coarse + refinement, one sample), streaming compute
per 16-frame window (median and 95th percentile; audio pushed in 20 ms chunks), and the
process's peak resident memory. Targets: >= 100x real time offline, < 10 ms per window.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def worker(checkpoint: str, threads: int, seconds: float) -> dict:
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    threadpool_limits(limits=threads)  # BLAS/OpenMP pools too (numpy's matmuls in feature extraction)
    import realm
    from realm.audio import extract, get_extractor, load_audio

    lis = realm.load(checkpoint)
    y = load_audio(ROOT / "tests/data/jfk.flac")
    y = np.resize(y, int(seconds * 16000)).astype(np.float32)  # jfk, looped
    lis.generate(y[:32000])  # warm-up (loads the feature model too)
    feat_times, model_times = [], []
    for _ in range(3):  # medians of 3; features are extracted without the disk cache
        t = time.perf_counter()
        feats = lis.feature_stats.apply(extract(y, lis.extractor, cache=False))
        feat_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        lis.generate(y, features=feats)
        model_times.append(time.perf_counter() - t)
    model_only = float(np.median(model_times))
    with_features = float(np.median(feat_times)) + model_only
    stream_lis, twin = lis, False
    if get_extractor(lis.extractor).context is None:  # e.g. whisper: not streamable exactly
        stream_lis, twin = _logmel_twin(lis), True  # compute per window does not depend on the weights
    s = stream_lis.streamer()
    chunk = 320  # 20 ms
    per_window = []
    for i in range(0, len(y), chunk):
        t = time.perf_counter()
        frames = s.push(y[i : i + chunk])
        if len(frames):
            per_window.append((time.perf_counter() - t) / (len(frames) / lis.model.config.window))
    return {
        "threads": threads,
        "audio_s": seconds,
        "offline_rtf_with_features": seconds / with_features,
        "offline_rtf_model_only": seconds / model_only,
        "stream_ms_per_window_median": 1000 * float(np.median(per_window)),
        "stream_ms_per_window_p95": 1000 * float(np.percentile(per_window, 95)),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "extractor": lis.extractor,
        "stream_twin": twin,
    }


def _logmel_twin(lis):
    """The same REALM architecture with 80-d logmel input and random weights, for streaming timings."""
    import dataclasses

    from realm.generate import Listener
    from realm.models.realm import REALM
    from realm.motion import NormStats

    cfg = dataclasses.replace(lis.model.config, audio_dim=80)
    fstats = NormStats(np.zeros(80, np.float32), np.ones(80, np.float32), "logmel")
    return Listener(REALM(cfg).eval(), lis.stats, fstats, "logmel", lis.config, lis.path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default=str(ROOT / "checkpoints/realm-demo"))
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.checkpoint, args.threads[0], args.seconds)))
        return
    print(f"command: python benchmarks/bench_generate.py --checkpoint {args.checkpoint} --seconds {args.seconds:g}")
    for n in args.threads:
        r = subprocess.run([sys.executable, __file__, "--worker", "--checkpoint", args.checkpoint,
                            "--seconds", str(args.seconds), "--threads", str(n)],
                           capture_output=True, text=True, check=True)  # fmt: skip
        d = json.loads(r.stdout.strip().splitlines()[-1])
        print(f"threads {n}: offline {d['offline_rtf_with_features']:.0f}x real time with {d['extractor']} features, "
              f"{d['offline_rtf_model_only']:.0f}x model only; streaming {d['stream_ms_per_window_median']:.1f} ms "
              f"per 16-frame window (p95 {d['stream_ms_per_window_p95']:.1f})"
              + (" [logmel twin: same architecture, 80-d input]" if d["stream_twin"] else "")
              + f"; peak RSS {d['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
