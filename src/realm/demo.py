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
from realm.metrics import fd_delta, frechet_distance, l1
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
    if speech is not None:
        from realm.generate import generate_file

        path = out / f"{Path(speech).stem}.realm.npz"
        generate_file(listener, speech, path, force=force, samples=samples, seed=seed)
        result["outputs"]["speech"] = str(path)
    if render and test:
        result["outputs"]["report"] = str(out / "report.html")
    write_json(out / "demo_metrics.json", result, force=force)
    if render and test:
        media = render_demo_media(listener, test[0], outputs[test[0].clip_id][0], out / "media", seed=seed, force=force)
        result["outputs"].update(media)
        result["outputs"]["report"] = str(build_report(out, out / "report.html", force=force, title="REALM demo"))
    return result


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
