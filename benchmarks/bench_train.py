"""Training throughput: REALM stage 1 and the LSTM baseline side by side, in training frames per second.

At the demo's configuration (batch 64, 128-frame clips, logmel features, REALM audio context 16),
on the real Lightning training loop and data loader (`realm.bench` calibration: wall time between
consecutive training batches, loading included, the first batch not counted), for each torch
thread count asked. A training frame is one frame of one clip of a batch: batch x clip_len per step.

    python benchmarks/bench_train.py                       # synthesises 0.1 h into a temp dir
    python benchmarks/bench_train.py --data data/synth-0.5h --threads 1,2 --seconds 30
    python benchmarks/bench_train.py --profile             # plus the top operators of a REALM step

Prints the machine (CPU model, threads) beside every number. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def configs(data: str, batch: int, clip_len: int, accelerator: str):
    from realm.models.realm import REALMConfig
    from realm.train import TrainConfig

    tcfg = TrainConfig(data=data, extractor="logmel", batch_size=batch, clip_len=clip_len, accelerator=accelerator,
                       devices="1", stages=(1,))  # fmt: skip
    return tcfg, REALMConfig(audio_context=16)


def profile_realm(tcfg, mcfg, steps: int = 5, top: int = 15) -> str:
    """The operators of ``steps`` REALM stage-1 training steps (forward, backward, optimiser), by self CPU time."""
    from dataclasses import asdict

    import torch
    from torch.profiler import ProfilerActivity, profile

    from realm.train import REALMTask, _jsonable, prepare_data

    prep = prepare_data(tcfg)
    mcfg.spec, mcfg.audio_dim = prep.spec, prep.audio_dim
    task = REALMTask(mcfg.to_dict(), _jsonable(asdict(tcfg)), 1)
    opt = torch.optim.AdamW(task.model.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(prep.train, batch_size=tcfg.batch_size, shuffle=True, drop_last=True)
    batches = [b for _, b in zip(range(steps + 1), loader, strict=False)]

    def step(b):
        loss = task._stage1(b)["loss"]  # the training step's loss, without Lightning's logging
        opt.zero_grad()
        loss.backward()
        opt.step()

    task.train()
    step(batches[0])  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for b in batches[1:]:
            step(b)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="", help="a dataset directory (default: synthesise 0.1 h into a temp dir)")
    ap.add_argument("--threads", default="1,2", help="torch thread counts, comma-separated")
    ap.add_argument("--seconds", type=float, default=20.0, help="seconds of training timed per model and thread count")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--clip-len", type=int, default=128)
    ap.add_argument("--accelerator", default="cpu")
    ap.add_argument("--profile", action="store_true", help="also print the top operators of a REALM stage-1 step")
    ap.add_argument("--json", default="", help="also write the numbers here")
    args = ap.parse_args()

    import torch

    from realm.bench import calibrate_baseline, calibrate_realm

    with tempfile.TemporaryDirectory(prefix="realm-bench-train-") as tmp:
        data = args.data
        if not data:
            data = str(Path(tmp) / "synth")
            subprocess.run([sys.executable, "-m", "realm.cli", "data", "synth", "--hours", "0.1", "--seed", "0",
                            "--out", data], check=True, capture_output=True)  # fmt: skip
        machine = f"{cpu_model()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
        frames = args.batch_size * args.clip_len
        rows = []
        for n in [int(x) for x in args.threads.split(",")]:
            torch.set_num_threads(n)
            tcfg, mcfg = configs(data, args.batch_size, args.clip_len, args.accelerator)
            realm_s = calibrate_realm(tcfg, mcfg, refine=False, seconds=args.seconds, max_batches=1000)["stage1_step_s"]
            tcfg, _ = configs(data, args.batch_size, args.clip_len, args.accelerator)
            lstm_s = calibrate_baseline("lstm", tcfg, None, seconds=args.seconds, max_batches=1000)["step_s"]
            rows.append({"threads": n, "realm_step_s": realm_s, "realm_frames_s": frames / realm_s,
                         "lstm_step_s": lstm_s, "lstm_frames_s": frames / lstm_s})  # fmt: skip
        print(f"command: python benchmarks/bench_train.py {' '.join(sys.argv[1:])}")
        print(f"machine: {machine}; batch {args.batch_size} x {args.clip_len} frames, logmel, REALM audio context 16")
        print("| threads | REALM stage 1 s/step | REALM frames/s | LSTM s/step | LSTM frames/s | LSTM / REALM |")
        print("|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['threads']} | {r['realm_step_s']:.3f} | {r['realm_frames_s']:,.0f} | {r['lstm_step_s']:.3f} | "
                  f"{r['lstm_frames_s']:,.0f} | {r['lstm_frames_s'] / r['realm_frames_s']:.1f}x |")  # fmt: skip
        if args.json:
            Path(args.json).write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))
        if args.profile:
            torch.set_num_threads(int(args.threads.split(",")[0]))
            tcfg, mcfg = configs(data, args.batch_size, args.clip_len, args.accelerator)
            print(profile_realm(tcfg, mcfg))


if __name__ == "__main__":
    main()
