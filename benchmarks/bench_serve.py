"""Load benchmark of `realm serve`: how many live clients one machine serves in time.

    python benchmarks/bench_serve.py [--checkpoint checkpoints/realm-demo] [--seconds 20] [--levels 1,2,4,8,...]

Starts `realm serve` (loopback, a free port) in its own process, then for each level N runs N
concurrent clients in this process, each streaming ``--seconds`` of speech (jfk.flac, looped) at
real-time pace in 100 ms chunks, starts spread over the first second. Per level it reports the
added latency of streamed frames (chunk sent -> frame received: model compute, queueing and
transport on top of the model's algorithmic latency), dropped and missing frames, and the
server's memory (peak RSS over the level minus the RSS with no client, per client).

A level passes when p95 added latency < 50 ms and no frame is dropped or missing; the script
reports the largest passing N. Clients and server share the machine (the clients' own CPU
use is part of the load). Stops after the first failing level unless ``--all``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class RssSampler(threading.Thread):
    """Peak RSS of a process, sampled every 50 ms."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.running = pid, 0.0, True

    def run(self):
        while self.running:
            self.peak = max(self.peak, rss_mb(self.pid))
            time.sleep(0.05)


async def level(url: str, audio: np.ndarray, n: int, rng: np.random.Generator) -> list:
    from realm.serve import listen_async

    async def one(delay: float, seed: int):
        await asyncio.sleep(delay)
        return await listen_async(url, audio, realtime=True, chunk_ms=100, options={"seed": seed})

    return await asyncio.gather(*[one(float(d), k) for k, d in enumerate(rng.uniform(0, 1, n))])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=str(ROOT / "checkpoints/realm-demo"))
    ap.add_argument("--seconds", type=float, default=20.0, help="audio per client")
    ap.add_argument("--levels", default="1,2,4,8,12,16,24,32,48,64")
    ap.add_argument("--workers", type=int, default=2, help="server model threads")
    ap.add_argument("--p95-ms", type=float, default=50.0)
    ap.add_argument("--all", action="store_true", help="run every level, not just up to the first failure")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()

    from realm.audio import load_audio

    y = load_audio(ROOT / "tests/data/jfk.flac")
    audio = np.resize(y, int(args.seconds * 16000)).astype(np.float32)
    levels = [int(x) for x in args.levels.split(",")]
    cmd = [str(Path(sys.executable).parent / "realm"), "serve", "-c", args.checkpoint, "--port", "0",
           "--workers", str(args.workers), "--max-clients", str(max(levels) + 1)]  # fmt: skip
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = server.stdout.readline()
    m = re.search(r"ws://[\d.]+:\d+", line)
    if not m:
        server.kill()
        sys.exit(f"server did not start: {line}{server.stdout.read()}")
    url = m.group(0)
    print(f"# python benchmarks/bench_serve.py {' '.join(sys.argv[1:])}")
    print(f"# server: {' '.join(cmd[1:])}  ({os.cpu_count()} CPUs, {line.strip()})")
    rng = np.random.default_rng(0)
    results, best = [], 0
    try:
        asyncio.run(level(url, audio[:48000], 1, rng))  # warm-up
        base = rss_mb(server.pid)
        print(f"# server RSS with no client: {base:.0f} MB; {args.seconds:g} s of audio per client, real-time pace\n")
        print("| clients | frames | dropped | missing | p50 ms | p95 ms | max ms | server RSS MB | MB per client | CPU s / audio s | pass |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for n in levels:
            sampler = RssSampler(server.pid)
            sampler.start()
            cpu0 = _cpu_s(server.pid)
            t = time.perf_counter()
            rs = asyncio.run(level(url, audio, n, rng))
            wall = time.perf_counter() - t
            cpu = _cpu_s(server.pid) - cpu0
            sampler.running = False
            sampler.join()
            lat = np.concatenate([r.latency_s[(r.chunk >= 0) & np.isfinite(r.latency_s)] for r in rs]) * 1e3
            row = {
                "clients": n, "frames": int(sum(r.received for r in rs)),
                "dropped": int(sum(r.end.get("dropped", 0) for r in rs)), "missing": int(sum(r.missing for r in rs)),
                "p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)),
                "max_ms": float(lat.max()), "rss_mb": sampler.peak, "mb_per_client": (sampler.peak - base) / n,
                "server_cpu_per_audio_s": cpu / (n * args.seconds), "wall_s": wall,
            }  # fmt: skip
            row["pass"] = row["p95_ms"] < args.p95_ms and row["dropped"] == 0 and row["missing"] == 0
            results.append(row)
            print(
                f"| {n} | {row['frames']} | {row['dropped']} | {row['missing']} | {row['p50_ms']:.1f} | "
                f"{row['p95_ms']:.1f} | {row['max_ms']:.1f} | {row['rss_mb']:.0f} | {row['mb_per_client']:.2f} | "
                f"{row['server_cpu_per_audio_s']:.3f} | {'yes' if row['pass'] else 'no'} |",
                flush=True,
            )
            if row["pass"]:
                best = max(best, n)
            elif not args.all:
                break
    finally:
        server.send_signal(2)
        server.communicate(timeout=30)
    print(f"\nlargest N with p95 added latency < {args.p95_ms:g} ms and no dropped frames: {best}")
    if args.json:
        Path(args.json).write_text(json.dumps({"command": sys.argv, "server": cmd, "levels": results, "best": best}, indent=1))


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick


if __name__ == "__main__":
    main()
