"""Where a react_gate checkpoint expects reactions: its classifier's p on silence, noise and speech.

    OMP_NUM_THREADS=1 python benchmarks/react_gate.py -c RUN [-c RUN ...] [--seconds 60]

A REALM with ``react_gate`` scales each window's latent by p, the probability that a reaction starts
in the window (docs/realm.md). For each checkpoint this prints p's mean and maximum over the windows
of a rollout with every latent at 0 (the conditional mean, as the classifier was trained to read it),
starting from the training mean frame, on:

* ``silence``: ``--seconds`` of digital silence;
* ``white -30 dBFS``: white noise (``--seconds``, seed 0);
* ``jfk in pink noise, 10 dB``: tests/data/jfk.flac looped to ``--seconds`` (real_speech.py's
  ``jfk``) in pink noise at 10 dB SNR (:func:`realm.data.channel.add_noise`);
* ``jfk``: tests/data/jfk.flac (11 s of real speech) as it is.

The listener in the synthetic data reacts to speech only, so p should be near 0 on the first two
and follow the speech on the others. Then what the checkpoint does in silence, sampled as a user
gets it (``listener.generate``, ``--samples`` samples of ``--seconds``): events a minute of each kind
(:func:`realm.metrics.detect_events`: smile, concern, brow raise, nod; the synthetic listener makes
none in silence but the nod right after a pause) and the expression's restlessness, the mean over the
52 blendshapes of their standard deviation over time (the ground truth's in its long silences is the
comparison: ``--data`` with ``realm data synth --long-pause-fraction``, its test clips' stretches
3 s after a phrase to the next phrase). Last, where the face settles in silence: the rest offset,
the mean over the 52 blendshapes of |the mean over the second half of the silence - the frame it
started from|, and the signed offsets of the frown (mouthFrown, both sides) and browInnerUp, the
"concerned face" a drift toward sadness shows. With ``--data`` each checkpoint starts from every
test clip's frame 0 (a real listener's rest) and the ground truth's long silences are compared with
their clip's frame 0; without it, from generation's default start (the training mean frame).
Prints the machine beside the numbers.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from real_speech import JFK, SR, jfk  # this folder's: the same looped jfk.flac


def inputs(seconds: float) -> dict[str, np.ndarray]:
    from realm.audio import load_audio
    from realm.data.channel import add_noise, pink_noise

    n = int(seconds * SR)
    rng = np.random.default_rng(0)
    return {
        "silence": np.zeros(n, np.float32),
        "white -30 dBFS": (rng.standard_normal(n) * 10 ** (-30 / 20)).astype(np.float32),
        "jfk in pink noise, 10 dB": add_noise(jfk(seconds), pink_noise(n, np.random.default_rng(0)), 10.0),
        "jfk": load_audio(JFK),
    }


def reaction_p(listener, audio: np.ndarray) -> np.ndarray:
    """p of every window (n,) of a zero-latent rollout of ``audio`` (16 kHz)."""
    import torch

    m = listener.model
    a = torch.from_numpy(np.asarray(listener.features(audio), np.float32))[None]
    f0, _ = listener._start(None, None)  # generation's default start: the training mean frame
    n = -(-a.shape[1] // m.config.window)
    with torch.inference_mode():
        _, aux = m.rollout(a, frame0=f0, latents=torch.zeros(1, n, m.config.latent_dim))
    return torch.sigmoid(aux["react_logit"][0]).numpy()


KINDS = ("smile", "concern", "brow_raise", "nod")


def silence_numbers(motions: list[np.ndarray], spec, fps: float, minutes: float) -> dict[str, float]:
    """Events a minute of each of KINDS over ``motions`` (each (T, D)) and the blendshapes' mean std over time."""
    from realm.metrics import detect_events

    out = {k: 0.0 for k in KINDS}
    for m in motions:
        for e in detect_events(m, spec, fps, list(KINDS)):
            out[e["kind"]] += 1 / minutes
    out["restless"] = float(np.mean([m[:, :52].std(0).mean() for m in motions]))
    return out


def rest_offset(motions: list[np.ndarray], starts: list[np.ndarray], spec) -> dict[str, float]:
    """Where the face settles: the mean over the blendshapes of |mean of the second half of each
    motion - its start frame|, and the signed offsets of the frown and browInnerUp (means over motions)."""
    names = list(spec.names)
    frown = [names.index(n) for n in ("mouthFrownLeft", "mouthFrownRight") if n in names]
    brow = [names.index("browInnerUp")] if "browInnerUp" in names else []
    late = [m[len(m) // 2 :].mean(0) - x0 for m, x0 in zip(motions, starts, strict=True)]
    signed = lambda idx: float(np.mean([d[idx].mean() for d in late])) if idx else float("nan")  # noqa: E731
    exp = spec.block("expression").slice
    return {"offset": float(np.mean([np.abs(d[exp]).mean() for d in late])), "frown": signed(frown), "brow": signed(brow)}


def data_silences(data: str, seconds_after: float = 3.0):
    """The ground truth's motion in the long silences of a dataset's test clips (every listener
    realisation), the frame 0 of each one's clip (as many), the clips and their spec and fps."""
    from realm.data import load_dataset

    clips = load_dataset(data, splits="test")
    out, starts = [], []
    for c in clips:
        ph = c.events["phrases"]
        for a, b in zip(ph, ph[1:], strict=False):
            f0, f1 = int((a["end"] + seconds_after) * c.fps), int(b["start"] * c.fps)
            if f1 - f0 >= 3 * c.fps:
                out += [x[f0:f1] for x in c.samples()]
                starts += [x[0] for x in c.samples()]
    return out, starts, clips, (clips[0].spec if clips else "arkit58"), (clips[0].fps if clips else 30.0)


def main() -> None:
    import torch

    import realm
    from realm.motion import get_spec

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-c", "--checkpoint", action="append", required=True, help="a listener checkpoint (repeatable); p for REALMs with react_gate")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--samples", type=int, default=3, help="samples of silence generated per checkpoint")
    ap.add_argument("--data", help="a dataset with long silences (realm data synth --long-pause-fraction): the ground truth's row")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = inputs(args.seconds)
    from realm.threads import cpu_model

    print(f"command: python benchmarks/react_gate.py {' '.join(sys.argv[1:])}")
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs, torch {torch.__version__}, 1 thread")
    print("| checkpoint | " + " | ".join(f"p on {k} (mean / max)" for k in data) + " |")
    print("|---|" + "---:|" * len(data))
    listeners = {ck: realm.load(ck) for ck in args.checkpoint}
    for ck, listener in listeners.items():
        if not getattr(getattr(getattr(listener, "model", None), "config", None), "react_gate", False):
            print(f"| {ck} | " + " | ".join("(no react_gate)" for _ in data) + " |")
            continue
        cells = []
        for y in data.values():
            p = reaction_p(listener, y)
            cells.append(f"{p.mean():.2f} / {p.max():.2f}")
        print(f"| {ck} | " + " | ".join(cells) + " |")
    minutes = args.samples * args.seconds / 60
    print(f"\nin silence ({args.samples} samples of {args.seconds:.0f} s, seed 0), events a minute and restlessness")
    print("| motion | " + " | ".join(KINDS) + " | mean std over time |")
    print("|---|" + "---:|" * (len(KINDS) + 1))
    rows, rests = [], []
    clips = []
    if args.data:
        gt, starts, clips, spec, fps = data_silences(args.data)
        if not gt:
            raise SystemExit(f"error: {args.data}: no long silences in its test clips (make it with --long-pause-fraction)")
        mins = sum(len(m) for m in gt) / fps / 60
        name = f"ground truth, {mins:.1f} min of silence in {args.data}"
        rows.append((name, silence_numbers(gt, spec, fps, mins)))
        rests.append((name, rest_offset(gt, starts, get_spec(spec))))
    for ck, listener in listeners.items():
        m = listener.generate(data["silence"], samples=args.samples, seed=0)
        rows.append((ck, silence_numbers(list(m), listener.spec, listener.fps, minutes)))
        if clips:  # from each test clip's first frame: the real listeners' rests
            x0 = [c.listener[0] for c in clips]
            m = [listener.generate(data["silence"], first_frame=x, samples=1, seed=0)[0] for x in x0]
        else:
            x0 = [listener.stats.mean] * len(m)
        rests.append((ck, rest_offset(list(m), x0, listener.spec)))
    for name, r in rows:
        print(f"| {name} | " + " | ".join(f"{r[k]:.1f}" for k in KINDS) + f" | {r['restless']:.4f} |")
    start = "each test clip's frame 0" if clips else "generation's default start (the training mean frame)"
    print(f"\nwhere the face settles in silence: the second half's mean against the start frame ({start})")
    print("| motion | rest offset (mean abs, blendshapes) | frown offset | browInnerUp offset |\n|---|---:|---:|---:|")
    for name, r in rests:
        print(f"| {name} | {r['offset']:.4f} | {r['frown']:+.3f} | {r['brow']:+.3f} |")


if __name__ == "__main__":
    main()
