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
import os
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


def mmlm_worker(checkpoint: str, threads: int, seconds: float) -> dict:
    """The multimodal-LM listener on the same looped speech, with its words (offline ASR of jfk.flac,
    repeated with the audio; ASR time not counted): offline real-time factor (1 and 3 samples, with
    and without the key/value cache) and streaming compute per token (8 frames)."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    threadpool_limits(limits=threads)
    import realm
    from realm.audio import load_audio
    from realm.data.clip import Word
    from realm.text import transcribe

    lis = realm.load(checkpoint)
    y0 = load_audio(ROOT / "tests/data/jfk.flac")
    heard = transcribe(y0)
    d0 = len(y0) / 16000
    y = np.resize(y0, int(seconds * 16000)).astype(np.float32)
    words = [Word(w.word, w.start + k * d0, w.end + k * d0) for k in range(int(np.ceil(seconds / d0))) for w in heard
             if w.end + k * d0 <= seconds]  # fmt: skip
    feats = lis.features(y)
    lis.generate(y[:32000], words=words[:5])  # warm-up
    out = {"threads": threads, "audio_s": seconds, "words": len(words), "backbone": lis.model.config.backbone}
    for name, kv, samples in (("rtf_1", True, 1), ("rtf_3", True, 3), ("rtf_1_nocache", False, 1)):
        lis.model.config.kv_cache = kv
        t = time.perf_counter()
        lis.generate(y, words=words, features=feats, samples=samples)
        out[name] = seconds / (time.perf_counter() - t)
    lis.model.config.kv_cache = True
    s = lis.streamer()
    per = []
    pending = list(words)
    for i in range(0, len(y), 320):  # 20 ms chunks, each word once its audio is in
        now = [w for w in pending if w.end * 16000 <= i + 320]
        pending = pending[len(now):]
        t = time.perf_counter()
        frames = s.push(y[i : i + 320], words=now)
        if len(frames):
            per.append((time.perf_counter() - t) / (len(frames) / 8))
    out.update({"stream_ms_per_token_median": 1000 * float(np.median(per)), "stream_ms_per_token_p95":
                1000 * float(np.percentile(per, 95)), "latency_s": s.latency_s})  # fmt: skip
    return out


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
    ap.add_argument("--mmlm", default=str(ROOT / "checkpoints/mmlm-demo"),
                    help="a multimodal-LM listener run, measured beside REALM ('' or a missing directory: skipped)")
    ap.add_argument("--worker", choices=["realm", "mmlm"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker == "realm":
        print(json.dumps(worker(args.checkpoint, args.threads[0], args.seconds)))
        return
    if args.worker == "mmlm":
        print(json.dumps(mmlm_worker(args.mmlm, args.threads[0], args.seconds)))
        return
    import platform

    print(f"command: python benchmarks/bench_generate.py --checkpoint {args.checkpoint} --seconds {args.seconds:g}"
          f" --mmlm {args.mmlm}")
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor() or platform.machine()) if os.path.exists("/proc/cpuinfo") else platform.machine()  # fmt: skip
    print(f"machine: {cpu}, {os.cpu_count()} CPUs")
    for n in args.threads:
        r = subprocess.run([sys.executable, __file__, "--worker", "realm", "--checkpoint", args.checkpoint,
                            "--seconds", str(args.seconds), "--threads", str(n)],
                           capture_output=True, text=True, check=True)  # fmt: skip
        d = json.loads(r.stdout.strip().splitlines()[-1])
        print(f"threads {n}: offline {d['offline_rtf_with_features']:.0f}x real time with {d['extractor']} features, "
              f"{d['offline_rtf_model_only']:.0f}x model only; streaming {d['stream_ms_per_window_median']:.1f} ms "
              f"per 16-frame window (p95 {d['stream_ms_per_window_p95']:.1f})"
              + (" [logmel twin: same architecture, 80-d input]" if d["stream_twin"] else "")
              + f"; peak RSS {d['peak_rss_mb']:.0f} MB")


    if args.mmlm and Path(args.mmlm).is_dir():
        for n in args.threads:
            r = subprocess.run([sys.executable, __file__, "--worker", "mmlm", "--mmlm", args.mmlm, "--seconds",
                                str(args.seconds), "--threads", str(n)], capture_output=True, text=True, check=True)  # fmt: skip
            d = json.loads(r.stdout.strip().splitlines()[-1])
            print(f"threads {n}: mmlm ({d['backbone']} backbone, {d['words']} words): offline {d['rtf_1']:.0f}x real time "
                  f"(3 samples at once {d['rtf_3']:.0f}x; without the KV cache {d['rtf_1_nocache']:.0f}x); streaming "
                  f"{d['stream_ms_per_token_median']:.1f} ms per 8-frame token (p95 {d['stream_ms_per_token_p95']:.1f}), "
                  f"latency {d['latency_s']:.3f} s")


if __name__ == "__main__":
    main()
