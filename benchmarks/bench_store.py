"""Training data larger than memory: peak memory and window throughput, in memory vs from a store.

    python benchmarks/bench_store.py --hours 10                  # synthesises 10 h (formant speech) into a temp dir
    python benchmarks/bench_store.py --data data/synth-10h --store data/synth-10h.store --batches 200

Each measurement runs in its own process, which reports its peak RSS (``VmHWM`` of /proc/self/status:
``ru_maxrss`` would carry the launching process's peak across exec):

* ``build``: ``realm.data.store.build_store`` (clip by clip; features extracted, or read from the
  feature cache when warm);
* ``memory``: ``prepare_data`` as training does it without a store (every clip's features and
  motion in memory), then ``--batches`` batches of the shuffling training loader;
* ``store``: the same from the store (windows read with ``os.pread`` as they are asked for).

Prints the machine (CPU model, threads) and the command beside the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM), MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker(mode: str, data: str, store: str, extractor: str, batches: int, batch_size: int, workers: int) -> dict:
    """One measurement in this process: its seconds and peak RSS."""
    t0 = time.perf_counter()
    if mode == "build":
        from realm.data.store import build_store

        build_store(data, store, extractor, force=True)
        return {"seconds": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb()}
    from realm.train import TrainConfig, prepare_data
    from realm.train.harness import ResumableLoader

    cfg = TrainConfig(data=data, extractor=extractor, store=store if mode == "store" else "", batch_size=batch_size,
                      clip_len=128, clip_stride=4)  # fmt: skip
    prep = prepare_data(cfg)
    prep_s = time.perf_counter() - t0
    rss_prep = peak_rss_mb()
    dl = ResumableLoader(prep.train, seed=0, batch_size=batch_size, drop_last=True, num_workers=workers)
    t1 = time.perf_counter()
    n = 0
    for k, batch in enumerate(dl):
        n += batch["audio"].shape[0]
        if k + 1 >= batches:
            break
    load_s = time.perf_counter() - t1
    return {"prepare_s": prep_s, "rss_after_prepare_mb": rss_prep, "windows": len(prep.train),
            "windows_per_s": n / load_s, "frames_per_s": n * 128 / load_s,
            "peak_rss_mb": peak_rss_mb()}  # fmt: skip


def run(mode: str, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", mode, "--data", args.data, "--store", args.store, "--extractor",
           args.extractor, "--batches", str(args.batches), "--batch-size", str(args.batch_size), "--workers",
           str(args.workers)]  # fmt: skip
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="dataset directory (default: synthesise --hours into a temp dir)")
    ap.add_argument("--store", default=None, help="store directory (default: beside the data)")
    ap.add_argument("--hours", type=float, default=10.0)
    ap.add_argument("--extractor", default="logmel")
    ap.add_argument("--batches", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.data, args.store, args.extractor, args.batches, args.batch_size,
                                args.workers)))  # fmt: skip
        return
    from realm.threads import cpu_model

    tmp = None
    if args.data is None:
        from realm.data.synth import SynthConfig, generate

        tmp = tempfile.TemporaryDirectory(prefix="realm-bench-store-")
        args.data = str(Path(tmp.name) / "data")
        t = time.perf_counter()
        generate(SynthConfig(hours=args.hours, seed=0, backend="formant"), args.data)
        print(f"# synthesised {args.hours:g} h (formant) in {time.perf_counter() - t:.0f} s")
    args.store = args.store or str(Path(args.data).with_name(Path(args.data).name + ".store"))
    print(f"# python benchmarks/bench_store.py {' '.join(sys.argv[1:])}")
    print(f"# machine: {cpu_model()}, {os.cpu_count()} CPUs; data {args.data}; {args.extractor} features")
    build = run("build", args)
    print(f"build: {build['seconds']:.0f} s, peak RSS {build['peak_rss_mb']:.0f} MB")
    du = sum(f.stat().st_size for f in Path(args.store).rglob("*") if f.is_file()) / 2**20
    print(f"store size: {du:.0f} MB\n")
    print("| source | prepare s | RSS after prepare MB | peak RSS MB | windows | windows/s | training frames/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for mode in ("memory", "store"):
        r = run(mode, args)
        print(f"| {mode} | {r['prepare_s']:.1f} | {r['rss_after_prepare_mb']:.0f} | {r['peak_rss_mb']:.0f} | {r['windows']} | "
              f"{r['windows_per_s']:.0f} | {r['frames_per_s']:.0f} |")  # fmt: skip
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
