"""Time the synthetic benchmark generator.

    python benchmarks/synth_speed.py --hours 1.0 --backend piper --workers 2

Prints hours generated, wall time and the real-time factor, with the command that ran.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from realm.data.synth import SynthConfig, generate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hours", type=float, default=1.0)
    ap.add_argument("--backend", default="piper")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = Path(tempfile.mkdtemp()) / "ds"
    t0 = time.perf_counter()
    res = generate(SynthConfig(hours=args.hours, seed=args.seed, backend=args.backend, workers=args.workers), out)
    wall = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6
    print(f"command: python {' '.join(sys.argv)}")
    print(f"clips {res.n_clips}  speech {res.hours:.3f} h  wall {wall:.1f} s  "
          f"({res.hours * 3600 / wall:.0f}x real time)  disk {size:.0f} MB")
    shutil.rmtree(out.parent)


if __name__ == "__main__":
    main()
