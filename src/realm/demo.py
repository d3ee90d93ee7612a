"""The demo job (``make demo`` / ``realm demo``): a trained REALM on held-out synthetic
conversations and on real speech, with metrics against ground truth and trivial baselines, a rendered clip,
plots and an HTML report (``OUT/report.html``)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from realm.data import load_dataset
from realm.data.synth import SynthConfig, generate
from realm.io import save_npz, write_json
from realm.metrics import (
    BEHAVIOUR_COLUMNS,
    behaviour_numbers,
    fd_delta,
    frechet_distance,
    l1,
    pool_behaviour,
    speech_offsets,
)
from realm.report import build_report

log = logging.getLogger(__name__)

#: Metric columns of the demo table: (name, block kind, function).
COLUMNS = (
    ("L1 exp", "expression", l1),
    ("L1 pose", "pose", l1),
    ("FD exp", "expression", frechet_distance),
    ("FD pose", "pose", frechet_distance),
    ("FD_delta exp", "expression", fd_delta),
)
#: What each column of the demo's two tables measures (shown under them in the report).
COLUMN_HELP = {
    "L1 exp": "mean absolute error of the expression (52 blendshapes) against the ground truth, frame by frame: "
              "rewards the average face, so a still face scores well on it",
    "L1 pose": "the same for head rotation (radians) and translation",
    "FD exp": "Frechet distance between the distributions of ground-truth and generated expression frames "
              "(mean term + covariance term): rewards moving like the listener, not only on average",
    "FD pose": "the same for the head pose",
    "FD_delta exp": "Frechet distance of frame-to-frame changes: how alike the speed of the motion is",
    "pauses/min": "speech offsets in the audio (a pause of 0.2 s or more), the cues a listener reacts to",
    "blinks/min": "eye closures detected in the motion",
    "nods/min": "head nods (pitch dips) detected in the motion",
    "nods after pause/min": "nods starting 0-1.5 s after a pause: reactions on cue",
    "smiles/min": "smile onsets", "concern/min": "concern onsets (inner brow up with a frown)",
    "pitch range deg": "max - min of head pitch", "yaw range deg": "max - min of head yaw",
    "drift 1st->3rd third": "how far the resting expression moves from the first to the last third (0: none)",
}  # fmt: skip


def run_demo(checkpoint: str | Path, out: str | Path, speech: str | Path | None, hours: float = 0.05,
             seed: int = 1, samples: int = 3, progress=None, render: bool = True, force: bool = False) -> dict:  # fmt: skip
    """Build a small held-out synthetic set, generate with REALM and baselines, score against GT.

    The set uses a new conversation seed with the checkpoint's identity seed: the same
    listeners as in training, new conversations. Metrics are means over the test clips (and
    over REALM's samples: mean, never best-of-N). With ``render``, the first test clip also gets
    a 5 s MP4 (speaker, ground truth, REALM), trajectory/gate/attention plots under ``out/media``,
    and ``out/report.html`` collects the table, plots and video (paths in ``result["outputs"]``).
    ``out`` must be missing or empty unless ``force``; without it no file is ever replaced, even
    one that appears while the demo runs.
    """
    import realm

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise FileExistsError(f"{out}: exists and is not empty (use --force to overwrite)")
    listener = realm.load(checkpoint)
    train_cfg = listener.config.get("data_config", {})
    synth_dir = out / "synth"
    cfg = SynthConfig(hours=hours, seed=seed, identity_seed=int(train_cfg.get("identity_seed", 0)))
    generate(cfg, synth_dir, force=force, progress=progress)
    clips = load_dataset(synth_dir)
    test = [c for c in clips if c.split == "test"]
    train = [c for c in clips if c.split == "train"]
    spec = listener.spec
    rng = np.random.default_rng(seed)
    rows: dict[str, list[list[float]]] = {"REALM": [], "static mean": [], "random train clip": [], "GT resample": []}
    outputs = {}
    for c in test:
        gt = c.listener
        preds = listener.generate(c.audio_path, first_frame=gt[0], samples=samples, seed=seed)
        outputs[c.clip_id] = preds
        save_npz(out / f"{c.clip_id}.realm.npz", force=force, listener=preds, gt=c.samples(), spec=np.array(spec.name),
                 fps=np.array(listener.fps), audio=np.array(str(c.audio_path)))  # fmt: skip
        donor = train[int(rng.integers(len(train)))].listener
        random_clip = np.resize(donor, gt.shape) if len(donor) < len(gt) else donor[: len(gt)]
        candidates = {
            "REALM": list(preds),
            "static mean": [np.repeat(listener.stats.mean[None], len(gt), 0)],
            "random train clip": [random_clip],
            "GT resample": list(c.samples()[1:]),
        }
        for name, preds_ in candidates.items():
            if preds_:  # mean over samples (never best-of-N)
                rows[name].append([np.mean([_score(gt, p, spec, kind, fn) for p in preds_]) for _, kind, fn in COLUMNS])
    table = {name: np.mean(v, axis=0).tolist() for name, v in rows.items() if v}
    result = {
        "checkpoint": str(checkpoint), "synth_dir": str(synth_dir), "test_clips": [c.clip_id for c in test],
        "columns": [c[0] for c in COLUMNS], "table": table, "samples": samples, "outputs": {},
    }  # fmt: skip
    result["outputs"]["test"] = [str(out / f"{c.clip_id}.realm.npz") for c in test]
    result["column_help"] = {c: COLUMN_HELP[c] for c in result["columns"]}
    result["findings"] = synthetic_findings(table)
    if speech is not None:
        from realm.audio import load_audio
        from realm.generate import generate_file

        path = out / f"{Path(speech).stem}.realm.npz"
        motion = generate_file(listener, speech, path, force=force, samples=samples, seed=seed)
        result["outputs"]["speech"] = str(path)
        result["real_speech"] = real_speech_section(listener, clips, outputs, Path(speech), load_audio(speech), motion)
    if render and test:
        result["outputs"]["report"] = str(out / "report.html")
    write_json(out / "demo_metrics.json", result, force=force)
    if render and test:
        media = render_demo_media(listener, test[0], outputs[test[0].clip_id][0], out / "media", seed=seed, force=force)
        result["outputs"].update(media)
        result["outputs"]["report"] = str(build_report(out, out / "report.html", force=force, title="REALM demo"))
    return result


def real_speech_section(listener, clips, outputs: dict, speech: Path, audio: np.ndarray, motion: np.ndarray) -> dict:
    """What the listener does on real speech next to what the synthetic listeners do, per minute.

    Rows: the ground truth (every realisation of every clip of the demo's synthetic set: the
    rates of the process REALM learned), REALM on the synthetic test clips, REALM on ``speech``;
    columns :data:`realm.metrics.BEHAVIOUR_COLUMNS` (:func:`realm.metrics.behaviour_numbers`, the
    numbers of ``benchmarks/real_speech.py``), and findings that say where REALM is behind."""
    from realm.audio import load_audio

    spec, fps = listener.spec, listener.fps
    gt, model = [], []
    for c in clips:
        pauses = speech_offsets(load_audio(c.audio_path), fps)
        gt += [behaviour_numbers(r, pauses, spec, fps) for r in c.samples()]
        model += [behaviour_numbers(m, pauses, spec, fps) for m in outputs.get(c.clip_id, [])]
    pauses = speech_offsets(audio, fps)
    rows = {
        f"ground truth (synthetic, {_n(len(clips), 'clip')})": pool_behaviour(gt),
        f"REALM on synthetic test ({_n(len(outputs), 'clip')})": pool_behaviour(model),
        f"REALM on {speech.name}": pool_behaviour([behaviour_numbers(m, pauses, spec, fps) for m in motion]),
    }
    columns = [h for _, h, _ in BEHAVIOUR_COLUMNS]
    return {"columns": columns, "column_help": {h: COLUMN_HELP[h] for h in columns},
            "rows": {name: [r[k] for k, _, _ in BEHAVIOUR_COLUMNS] for name, r in rows.items()},
            "findings": real_speech_findings(*rows.values(), name=speech.name)}  # fmt: skip


def _n(k: int, what: str) -> str:
    return f"{k} {what}" + ("" if k == 1 else "s")


def _times(a: float, b: float) -> str:
    return "n/a" if b <= 0 else f"{a / b:.1f}x"


def synthetic_findings(table: dict) -> list[str]:
    """Plain sentences on where REALM stands in the synthetic table (lower is better in every column)."""
    out = []
    realm, floor = table.get("REALM"), table.get("GT resample")
    if realm is None:
        return out
    names = [c[0] for c in COLUMNS]
    fd = names.index("FD exp")
    if floor is not None:
        out.append(f"FD exp: REALM {realm[fd]:.3f}, {_times(realm[fd], floor[fd])} the floor ({floor[fd]:.3f}, a second "
                   "realisation of the same listener): REALM is behind the real listener by that much.")  # fmt: skip
    for name in ("static mean", "random train clip"):
        base = table.get(name)
        if base is None:
            continue
        worse = [n for j, n in enumerate(names) if realm[j] > base[j]]
        if worse:
            out.append(f"Behind the {name} on {', '.join(worse)}"
                       + (" (L1 rewards the average face: a model that moves like a listener pays for it in L1)."
                          if all(w.startswith("L1") for w in worse) else "."))  # fmt: skip
        else:
            out.append(f"Ahead of the {name} on every column.")
    return out


def real_speech_findings(gt: dict, synth: dict, real: dict, name: str) -> list[str]:
    """Plain sentences on how REALM behaves on real speech against the synthetic ground truth's rates.

    The checks are the real-speech targets of ``benchmarks/real_speech.py``: concern events at most
    2x the ground truth's rate, blinks within 30 %, drift under 0.1; and reactions on cue, nods
    after a pause per pause, at least half the ground truth's."""
    out = []

    def rate(r, k):
        return r[f"{k}_pm"]

    c, cg = rate(real, "concern"), rate(gt, "concern")
    behind = c > 2 * cg
    out.append(f"{'Behind' if behind else 'Holds'}: concern on {name} {c:.1f}/min against the ground truth's {cg:.1f} "
               f"({_times(c, cg)}; the target is at most 2x{': real speech makes it look worried' if behind else ''}).")  # fmt: skip
    b, bg = rate(real, "blinks"), rate(gt, "blinks")
    off = abs(b - bg) > 0.3 * bg
    out.append(f"{'Behind' if off else 'Holds'}: blinks on {name} {b:.1f}/min against {bg:.1f} (target within 30 %).")
    per = real["nods_after_pause"] / real["pauses"] if real["pauses"] else 0.0
    per_gt = gt["nods_after_pause"] / gt["pauses"] if gt["pauses"] else 0.0
    few = per < 0.5 * per_gt
    out.append(f"{'Behind' if few else 'Holds'}: nods after a pause on {name}: {per:.2f} per pause against the ground "
               f"truth's {per_gt:.2f} (target at least half){' - it reacts on cue less than the listeners it learned from' if few else ''}.")  # fmt: skip
    for k, what in (("nods", "nods"), ("smiles", "smiles")):
        r, rg = rate(real, k), rate(gt, k)
        if r < 0.5 * rg:
            out.append(f"Behind: {what} on {name} {r:.1f}/min against the ground truth's {rg:.1f}.")
    p, pg = real["pitch_range_deg"], gt["pitch_range_deg"]
    if p < 0.5 * pg:
        out.append(f"Behind: head pitch range on {name} {p:.1f} deg against {pg:.1f}: it moves its head less.")
    d = real["drift"]
    out.append(f"{'Behind' if d >= 0.1 else 'Holds'}: expression drift first->last third {d:.3f} (target under 0.1).")
    if synth["n"]:
        out.append(f"On the synthetic test clips the same numbers: concern {rate(synth, 'concern'):.1f}/min, blinks "
                   f"{rate(synth, 'blinks'):.1f}/min, nods after a pause "
                   f"{synth['nods_after_pause'] / max(1, synth['pauses']):.2f} per pause.")  # fmt: skip
    return out


def busiest_window(motion: np.ndarray, fps: float, seconds: float, step: float = 0.5) -> tuple[float, float]:
    """(start, duration) of the ``seconds``-long stretch of ``motion`` (T, D) that moves the most."""
    T = len(motion)
    n = int(round(seconds * fps))
    if T <= n:
        return 0.0, T / fps
    speed = np.abs(np.diff(motion, axis=0)).sum(axis=1)
    energy = np.concatenate([[0.0], np.cumsum(speed)])
    starts = np.arange(0, T - n, max(1, int(round(step * fps))))
    best = starts[np.argmax(energy[np.minimum(starts + n, T - 1)] - energy[starts])]
    return float(best / fps), n / fps


def render_demo_media(listener, clip, pred: np.ndarray, media: Path, seed: int = 0, seconds: float = 5.0,
                      force: bool = False) -> dict:  # fmt: skip
    """A short MP4 (speaker, ground truth, REALM), trajectory, gate and attention plots of one test clip."""
    from realm.render.plots import plot_attention, plot_gate, plot_trajectories, realm_internals
    from realm.render.video import Track, render_video

    spec = listener.spec
    exp = spec.indices("expression")
    start, duration = busiest_window(clip.listener[:, exp], clip.fps, seconds)
    video = render_video(
        media / f"{clip.clip_id}.mp4", [Track("ground truth", clip.listener, spec, clip.fps), Track("REALM", pred, spec, listener.fps)],
        audio=clip.audio_path, words=clip.words, start=start, duration=duration, force=force,
    )  # fmt: skip
    traj = plot_trajectories(media / f"trajectories_{clip.clip_id}.png", {"REALM": pred}, spec, listener.fps, gt=clip.listener,
                             words=clip.words, title=f"{clip.clip_id}: ground truth vs REALM (sample 0)", force=force)  # fmt: skip
    inside = realm_internals(listener, clip.audio_path, first_frame=clip.listener[0])
    gate = plot_gate(media / f"gate_{clip.clip_id}.png", inside.alpha, inside.fps, words=clip.words, window=inside.window,
                     force=force)  # fmt: skip
    # the window of the first triggered reaction (else the middle one)
    triggers = [tr["frame"] for tr in (clip.events or {}).get("triggers", [])]
    w = min(len(inside.attention) - 1, (triggers[0] // inside.window) if triggers else len(inside.attention) // 2)
    attn = plot_attention(media / f"attention_{clip.clip_id}.png", inside.attention[w], tau=inside.tau, window=w,
                          fps=inside.fps, force=force)  # fmt: skip
    log.info("rendered %s (%d frames in %.1f s)", video.paths[0], video.n_frames, video.seconds)
    return {"video": str(video.paths[0]), "plots": [str(traj), str(gate), str(attn)]}


def _score(gt, pred, spec, kind, fn) -> float:
    idx = spec.indices(kind)
    return fn(gt[:, idx], pred[:, idx])
