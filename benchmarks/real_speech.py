"""Real speech: does a listener hold up on real, espeak-ng and noisy speech (issue 16, point 2)?

    OMP_NUM_THREADS=1 python benchmarks/real_speech.py [-c checkpoints/realm-demo] [--data DIR]
        [--seconds 60] [--samples 3] [--sweep-on piper|jfk] [--json OUT.json]

Inputs (each about ``--seconds`` long, generated here, deterministic, offline):

* ``jfk``: tests/data/jfk.flac (11 s of real speech) looped;
* ``espeak``: a few sentences from the espeak-ng binary (voice en-us) with 0.6-1.2 s pauses,
  looped (skipped when espeak-ng is not installed);
* an SNR sweep: a passage of the same sentences from the Piper voice of the synthetic benchmark
  (or jfk, ``--sweep-on jfk``) clean and with pink noise at 30, 20, 10 and 5 dB SNR (active speech
  power over noise power, :func:`realm.data.channel.add_noise`).

For each input the checkpoint generates ``--samples`` samples (``listener.generate``, the default
clamp) and, per minute of motion over all samples (:func:`realm.metrics.behaviour_numbers`, the
numbers `make demo`'s report shows for its speech file):

* ``blinks`` (:func:`realm.metrics.detect_blinks`), ``nods``, ``smiles``, ``concern`` (the event
  detectors of event F1, :func:`realm.metrics.detect_events`);
* ``nods after pause``: nods whose onset is 0-1.5 s after a speech offset
  (:func:`realm.metrics.speech_offsets` of the clean audio: noise does not move the pauses);
* ``pitch``/``yaw`` range: max - min of the head's pitch and yaw in degrees (mean over samples);
* ``drift``: the expression's rest drift from the first to the last third,
  ``mean_d |median(last third)[d] - median(first third)[d]|`` (:func:`realm.metrics.rest_drift`
  with the first third's median as the rest; mean over samples).

Next to them, the same numbers computed the same way on the synthetic ground truth's test clips
(``--data``, default data/synth-0.5h; without it the test clips of ``realm data synth --hours 0.5
--seed 0`` are synthesised in memory, the same clips), every listener realisation, pauses from each
clip's audio; and the checkpoint on those clips' audio. Then the issue's targets, pass or fail:
concern events on real speech (jfk, espeak) at most 2x the ground truth's rate; nods after pauses
kept down to 10 dB SNR (at 30, 20 and 10 dB at least half the clean count); blinks on real and
clean speech (jfk, espeak, clean passage) within 30 % of the ground truth's rate; drift first->last
third under 0.1 on every input; in ``--seconds`` of digital silence at most 1 smile and 1 concern
event a minute (the synthetic listeners make none in a silence: `benchmarks/react_gate.py --data`).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
JFK = ROOT / "tests" / "data" / "jfk.flac"
SR = 16000
SNRS = (None, 30.0, 20.0, 10.0, 5.0)  # None: clean
SENTENCES = (
    "I went to the market on Saturday morning.",
    "The weather was lovely, and the stalls were full of fresh bread.",
    "My brother wanted to buy a new bicycle.",
    "We looked at three of them, but none of them were quite right.",
    "Have you ever tried to choose a bicycle with him?",
    "It takes hours.",
    "In the end we had coffee by the river and watched the boats go by.",
    "Honestly, it was a really good day.",
)
PAUSES_S = (0.8, 1.1, 0.6, 1.2, 0.9, 0.7)


# ---------------------------------------------------------------- inputs


def passage(say, seconds: float, sentences=SENTENCES, pauses=PAUSES_S) -> np.ndarray:
    """Sentences said by ``say(text) -> 16 kHz audio`` with the pauses between them, repeated to ``seconds``."""
    said = [np.asarray(say(s), np.float32) for s in sentences]
    out, k = [np.zeros(int(0.4 * SR), np.float32)], 0
    while sum(len(x) for x in out) < seconds * SR:
        out += [said[k % len(said)], np.zeros(int(pauses[k % len(pauses)] * SR), np.float32)]
        k += 1
    return np.concatenate(out)[: int(seconds * SR)]


def jfk(seconds: float) -> np.ndarray:
    from realm.audio import load_audio

    y = load_audio(JFK)
    return np.tile(y, int(np.ceil(seconds * SR / len(y))))[: int(seconds * SR)].astype(np.float32)


def make_inputs(seconds: float, sweep_on: str = "piper", seed: int = 0, snrs=SNRS, log=print) -> dict:
    """name -> (audio, clean audio for the pauses, group): jfk, espeak (if installed), the SNR sweep, silence."""
    from realm.data.channel import add_noise, pink_noise
    from realm.data.speech import EspeakBackend, PiperBackend, espeak_available

    inputs = {"jfk": (jfk(seconds), None, "real")}
    if espeak_available():
        inputs["espeak"] = (passage(EspeakBackend("en-us").say, seconds), None, "real")
    else:
        log("# espeak-ng is not installed: no espeak row")
    base = jfk(seconds) if sweep_on == "jfk" else passage(PiperBackend().say, seconds)
    for snr in snrs:
        name = f"{sweep_on} clean" if snr is None else f"{sweep_on} {snr:g} dB"
        if snr is None:
            inputs[name] = (base, None, "sweep")
        else:
            noise = pink_noise(len(base), np.random.default_rng([seed, 16, int(snr * 10)]))
            inputs[name] = (add_noise(base, noise, snr), base, "sweep")
    inputs["silence"] = (np.zeros(int(seconds * SR), np.float32), None, "silence")
    return inputs


def test_clips(data: str | None, log=print):
    """(audio, listener realisations (K, T, D)) of the synthetic ground truth's test clips."""
    from realm.audio import load_audio

    if data is not None:
        from realm.data import load_dataset

        clips = [c for c in load_dataset(data) if c.split == "test"]
        if not clips:
            raise SystemExit(f"{data}: no test clips")
        return [(load_audio(c.audio_path), c.samples()) for c in clips], f"{data} (test split, {len(clips)} clips)"
    from realm.data.synth import SynthConfig, make_clip, split_plan

    cfg = SynthConfig(hours=0.5, seed=0, backend="piper")
    idx = [i for i, s in enumerate(split_plan(cfg)) if s == "test"]
    log(f"# no --data: synthesising the {len(idx)} test clips of `realm data synth --hours 0.5 --seed 0` in memory")
    out = []
    for i in idx:
        clip, audio, _ = make_clip(i, "test", cfg)
        out.append((audio, clip.samples()))
    return out, f"realm data synth --hours 0.5 --seed 0 (test split, {len(idx)} clips, in memory)"


# ---------------------------------------------------------------- measuring


def measure(listener, inputs: dict, gt_clips: list, samples: int = 3, seed: int = 0, log=print) -> list[dict]:
    """Rows: the ground truth, the listener on the ground truth's audio, and the listener on each input."""
    from realm.metrics import behaviour_numbers as numbers
    from realm.metrics import pool_behaviour as pool
    from realm.metrics import speech_offsets

    spec, fps = listener.spec, listener.fps
    rows = []
    gt, model_gt, t_gt = [], [], 0.0
    for audio, real in gt_clips:
        pauses = speech_offsets(audio, fps)
        gt += [numbers(r, pauses, spec, fps) for r in real]
        t0 = time.perf_counter()
        motion = listener.generate(audio, samples=samples, seed=seed)
        t_gt += time.perf_counter() - t0
        model_gt += [numbers(m, pauses, spec, fps) for m in motion]
    rows.append({"input": "ground truth (synthetic test)", "group": "gt", **pool(gt), "gen_s": None})
    rows.append({"input": "model on synthetic test", "group": "synthetic", **pool(model_gt), "gen_s": t_gt})
    for name, (audio, clean, group) in inputs.items():
        pauses = speech_offsets(audio if clean is None else clean, fps)
        t0 = time.perf_counter()
        motion = listener.generate(audio, samples=samples, seed=seed)
        dt = time.perf_counter() - t0
        rows.append({"input": name, "group": group, **pool([numbers(m, pauses, spec, fps) for m in motion]), "gen_s": dt})
        log(f"#   {name}: {len(audio) / SR:.0f} s, generated in {dt:.1f} s")
    return rows


def targets(rows: list[dict]) -> list[dict]:
    """The issue's targets for the shipped checkpoint: name, pass, what was measured."""
    by = {r["input"]: r for r in rows}
    gt = by["ground truth (synthetic test)"]
    real = [r for r in rows if r["group"] == "real"]
    sweep = [r for r in rows if r["group"] == "sweep"]
    clean = sweep[0] if sweep else None
    out = []

    def ratio(a, b):
        return a / b if b else (float("inf") if a else 1.0)

    conc = [(r["input"], ratio(r["concern_pm"], gt["concern_pm"])) for r in real]
    out.append({"target": "concern events on real speech <= 2x the ground truth's rate",
                "pass": bool(conc) and all(x <= 2.0 for _, x in conc),
                "measured": ", ".join(f"{n} {r['concern_pm']:.1f}/min = {x:.2f}x" for (n, x), r in zip(conc, real, strict=True))
                + f" (ground truth {gt['concern_pm']:.1f}/min)"})  # fmt: skip
    if clean is not None:
        base = clean["nods_after_pause"]
        kept = [(r["input"], r["nods_after_pause"]) for r in sweep[1:] if _snr(r["input"]) >= 10]
        out.append({"target": "nods after pauses kept down to 10 dB SNR (>= half the clean count)",
                    "pass": base > 0 and all(n >= 0.5 * base for _, n in kept),
                    "measured": f"clean {base}; " + ", ".join(f"{k} {n}" for k, n in kept)})  # fmt: skip
    blink_rows = real + ([clean] if clean is not None else [])
    dev = [(r["input"], ratio(r["blinks_pm"], gt["blinks_pm"]) - 1.0) for r in blink_rows]
    out.append({"target": "blinks within 30 % of the ground truth's rate",
                "pass": bool(dev) and all(abs(d) <= 0.3 for _, d in dev),
                "measured": ", ".join(f"{n} {100 * d:+.0f} %" for n, d in dev) + f" (ground truth {gt['blinks_pm']:.1f}/min)"})  # fmt: skip
    quiet = [r for r in rows if r["group"] == "silence"]
    if quiet:  # the synthetic listeners make none in silence (their long silences: benchmarks/react_gate.py --data)
        out.append({"target": "in silence at most 1 smile and 1 concern event a minute",
                    "pass": all(r["smiles_pm"] <= 1.0 and r["concern_pm"] <= 1.0 for r in quiet),
                    "measured": ", ".join(f"{r['input']}: smiles {r['smiles_pm']:.1f}/min, concern {r['concern_pm']:.1f}/min"
                                          for r in quiet)})  # fmt: skip
    model = [r for r in rows if r["group"] != "gt"]
    worst = max(model, key=lambda r: r["drift"])
    out.append({"target": "expression drift first->last third < 0.1",
                "pass": all(r["drift"] < 0.1 for r in model),
                "measured": f"largest {worst['drift']:.3f} ({worst['input']})"})  # fmt: skip
    return out


def _snr(name: str) -> float:
    tail = name.rsplit(" ", 2)
    return float(tail[-2]) if len(tail) >= 2 and tail[-1] == "dB" else float("inf")


def machine(threads: int) -> str:
    from realm.threads import cpu_model

    return f"{cpu_model()}, {os.cpu_count()} CPUs, {threads} torch thread(s), OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"


def table(rows: list[dict]) -> str:
    from realm.metrics import BEHAVIOUR_COLUMNS as COLUMNS

    head = "| input | minutes | " + " | ".join(h for _, h, _ in COLUMNS) + " | gen s |"
    lines = [head, "|---|" + "---:|" * (len(COLUMNS) + 2)]
    for r in rows:
        cells = [fmt.format(r[k]) for k, _, fmt in COLUMNS]
        gen = "-" if r["gen_s"] is None else f"{r['gen_s']:.1f}"
        lines.append(f"| {r['input']} | {r['minutes']:.1f} | " + " | ".join(cells) + f" | {gen} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--checkpoint", default="checkpoints/realm-demo")
    ap.add_argument("--data", default=None, help="A `realm data synth` dataset (its test split); default data/synth-0.5h if present.")
    ap.add_argument("--seconds", type=float, default=60.0, help="Length of each input.")
    ap.add_argument("--samples", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sweep-on", choices=("piper", "jfk"), default="piper")
    ap.add_argument("--threads", type=int, default=1, help="torch and BLAS threads.")
    ap.add_argument("--json", default=None, help="Also write the rows and targets here.")
    ap.add_argument("--force", action="store_true", help="Replace an existing output file.")
    args = ap.parse_args(argv)
    from realm.io import refuse_output

    refuse_output(ap, args.json, args.force)

    import torch

    torch.set_num_threads(args.threads)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=args.threads)
    except ImportError:  # optional
        pass
    import realm

    data = args.data
    if data is None and (ROOT / "data" / "synth-0.5h" / "meta.json").exists():
        data = str(ROOT / "data" / "synth-0.5h")
    print(f"# OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} python benchmarks/real_speech.py "
          + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)))  # fmt: skip
    print(f"# machine: {machine(args.threads)}")
    lis = realm.load(args.checkpoint)
    clips, source = test_clips(data)
    inputs = make_inputs(args.seconds, args.sweep_on, args.seed)
    print(f"# checkpoint {args.checkpoint}; {args.samples} samples per input, seed {args.seed}; ground truth: {source}")
    rows = measure(lis, inputs, clips, args.samples, args.seed)
    goals = targets(rows)
    print()
    print(table(rows))
    print()
    print("| target | result | measured |")
    print("|---|---|---|")
    for g in goals:
        print(f"| {g['target']} | {'pass' if g['pass'] else 'FAIL'} | {g['measured']} |")
    result = {"command": sys.argv if argv is None else ["benchmarks/real_speech.py", *argv], "machine": machine(args.threads),
              "checkpoint": args.checkpoint, "ground_truth": source, "samples": args.samples, "seconds": args.seconds,
              "rows": rows, "targets": goals}  # fmt: skip
    if args.json:
        from realm.io import write_json

        write_json(args.json, result, force=args.force)
    return result


if __name__ == "__main__":
    main()
