"""Training throughput: REALM stage 1 and the LSTM baseline side by side, in training frames per second.

At the demo's configuration (batch 64, 128-frame clips, logmel features, REALM audio context 16),
on the real Lightning training loop and data loader (`realm.bench` calibration: wall time between
consecutive training batches, loading included, the first batch not counted), for each torch
thread count asked. A training frame is one frame of one clip of a batch: batch x clip_len per step.

    python benchmarks/bench_train.py                       # synthesises 0.1 h into a temp dir
    python benchmarks/bench_train.py --against 872b1c7     # plus an older commit's REALM, in the same run
    python benchmarks/bench_train.py --data data/synth-0.5h --threads 1,2 --seconds 30
    python benchmarks/bench_train.py --profile             # plus the top operators of a REALM step

REALM is timed in each ``--variants`` entry: ``exact`` is the configuration as given (fp32,
dropout 0.1: the maths of the paper's model; the layers as realm.models.layers' functions, dropout
masks from NumPy); ``modules`` the same through the nn modules and torch's dropout
(``REALMConfig.fast_train = False``, the training path before 2026-11-29); ``bf16`` adds ``--precision bf16-mixed``;
``dropout0`` sets ``REALMConfig.dropout = 0``; ``bf16+dropout0`` both; ``teacher`` sets
``TrainConfig.teacher_forcing = 1`` (every window reads the ground truth as its history, so the 8 windows
run as one batch: other maths, whose quality cost docs/realm.md measures); ``bf16+teacher`` adds bf16-mixed. ``--against REF`` also
times REALM (``exact``) and the LSTM from a git worktree of commit REF in a subprocess, between
the other measurements, so "how much faster than before" is measured in one run on one machine.

Prints the machine (CPU model, threads) beside every number. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

VARIANTS = {  # name -> (TrainConfig overrides, REALMConfig overrides)
    "modules": ({}, {"fast_train": False}),
    "exact": ({}, {}),
    "bf16": ({"precision": "bf16-mixed"}, {}),
    "dropout0": ({}, {"dropout": 0.0}),
    "bf16+dropout0": ({"precision": "bf16-mixed"}, {"dropout": 0.0}),
    "teacher": ({"teacher_forcing": 1.0}, {}),
    "bf16+teacher": ({"precision": "bf16-mixed", "teacher_forcing": 1.0}, {}),
}


def configs(data: str, batch: int, clip_len: int, accelerator: str, variant: str = "exact"):
    from realm.models.realm import REALMConfig
    from realm.train import TrainConfig

    tset, mset = VARIANTS[variant]
    tcfg = TrainConfig(data=data, extractor="logmel", batch_size=batch, clip_len=clip_len, accelerator=accelerator,
                       devices="1", stages=(1,), **tset)  # fmt: skip
    return tcfg, REALMConfig(audio_context=16, **mset)


def measure(data: str, threads: int, args, variants: list[str], lstm: bool) -> dict:
    """Seconds per training step of REALM stage 1 in each variant (and of the LSTM) at ``threads``."""
    import torch

    from realm.bench import calibrate_baseline, calibrate_realm

    torch.set_num_threads(threads)
    out = {}
    for v in variants:
        tcfg, mcfg = configs(data, args.batch_size, args.clip_len, args.accelerator, v)
        out[v] = calibrate_realm(tcfg, mcfg, refine=False, seconds=args.seconds, max_batches=1000)["stage1_step_s"]
    if lstm:
        tcfg, _ = configs(data, args.batch_size, args.clip_len, args.accelerator)
        out["lstm"] = calibrate_baseline("lstm", tcfg, None, seconds=args.seconds, max_batches=1000)["step_s"]
    return out


def measure_at(ref: str, data: str, threads: int, args) -> dict:
    """:func:`measure` (REALM exact and the LSTM) with the ``realm`` package of git commit ``ref``."""
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="realm-bench-ref-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", str(tree), ref], check=True,
                       capture_output=True)  # fmt: skip
        try:
            cmd = [sys.executable, __file__, "--worker", "--data", data, "--threads", str(threads),
                   "--seconds", str(args.seconds), "--batch-size", str(args.batch_size), "--clip-len",
                   str(args.clip_len), "--accelerator", args.accelerator]  # fmt: skip
            env = {**os.environ, "PYTHONPATH": str(tree / "src")}
            done = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, cwd=tmp)
            return json.loads(done.stdout.strip().splitlines()[-1])
        finally:
            subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(tree)], capture_output=True)


def profile_realm(tcfg, mcfg, steps: int = 5, top: int = 15) -> str:
    """The operators of ``steps`` REALM stage-1 training steps (forward, backward, optimiser), by self CPU
    time, as Lightning runs them on a CPU (the plain attention kernel; bf16 autocast with --precision bf16-mixed)."""
    from dataclasses import asdict

    import torch
    from torch.profiler import ProfilerActivity, profile

    from realm.train import REALMTask, prepare_data
    from realm.train.harness import jsonable

    prep = prepare_data(tcfg)
    mcfg.spec, mcfg.audio_dim = prep.spec, prep.audio_dim
    task = REALMTask(mcfg.to_dict(), jsonable(asdict(tcfg)), 1)
    task.stats = prep.stats  # de-normalises clips (react_gate's labels)
    opt = torch.optim.AdamW(task.model.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(prep.train, batch_size=tcfg.batch_size, shuffle=True, drop_last=True)
    batches = [b for _, b in zip(range(steps + 1), loader, strict=False)]

    from realm.threads import cpu_attention

    bf16 = tcfg.precision.startswith("bf16")

    def step(b):
        with cpu_attention("cpu"), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
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
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"REALM variants, of {', '.join(VARIANTS)}")
    ap.add_argument("--against", default="", help="a git commit whose REALM (exact) and LSTM are also timed")
    ap.add_argument("--profile", action="store_true", help="also print the top operators of a REALM stage-1 step")
    ap.add_argument("--json", default="", help="also write the numbers here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # --against's subprocess
    ap.add_argument("--force", action="store_true", help="Replace an existing output file.")
    args = ap.parse_args()
    if args.worker:  # only the exact configuration exists in every commit (and only what the worker imports)
        print(json.dumps(measure(args.data, int(args.threads), args, ["exact"], lstm=True)))
        return
    from realm.io import refuse_output

    refuse_output(ap, args.json, args.force)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if unknown := [v for v in variants if v not in VARIANTS]:
        ap.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")

    import torch

    with tempfile.TemporaryDirectory(prefix="realm-bench-train-") as tmp:
        data = args.data
        if not data:
            data = str(Path(tmp) / "synth")
            subprocess.run([sys.executable, "-m", "realm.cli", "data", "synth", "--hours", "0.1", "--seed", "0",
                            "--out", data], check=True, capture_output=True)  # fmt: skip
        data = str(Path(data).resolve())
        from realm.threads import cpu_model

        machine = f"{cpu_model()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
        frames = args.batch_size * args.clip_len
        rows = []
        for n in [int(x) for x in args.threads.split(",")]:
            row = {"threads": n, **measure(data, n, args, variants, lstm=True)}
            if args.against:
                ref = measure_at(args.against, data, n, args)
                row["ref_realm"], row["ref_lstm"] = ref["exact"], ref["lstm"]
            rows.append(row)
        print(f"command: python benchmarks/bench_train.py {' '.join(sys.argv[1:])}")
        print(f"machine: {machine}; batch {args.batch_size} x {args.clip_len} frames, logmel, REALM audio context 16")
        print("training frames per second (s per step); speed-ups against "
              + (f"REALM at {args.against}" if args.against else "REALM exact"))  # fmt: skip
        cols = (["ref_realm"] if args.against else []) + variants + ["lstm"]
        names = {"ref_realm": f"REALM @ {args.against}", "lstm": "LSTM"} | {v: f"REALM {v}" for v in variants}
        print("| threads | " + " | ".join(names[c] for c in cols) + " |")
        print("|---:|" + "---:|" * len(cols))
        for r in rows:
            base = r["ref_realm"] if args.against else r[variants[0]]
            cells = [f"{frames / r[c]:,.0f} ({r[c]:.3f} s, {base / r[c]:.2f}x)" for c in cols]
            print(f"| {r['threads']} | " + " | ".join(cells) + " |")
        if args.json:
            from realm.io import write_json

            write_json(args.json, {"machine": machine, "against": args.against, "rows": rows}, force=args.force)
        if args.profile:
            torch.set_num_threads(int(args.threads.split(",")[0]))
            tcfg, mcfg = configs(data, args.batch_size, args.clip_len, args.accelerator, variants[0])
            print(profile_realm(tcfg, mcfg))


if __name__ == "__main__":
    main()
