"""Benchmark harness (DESIGN sections 9 and 10): models x one dataset split -> tables and plots.

    from realm.eval import evaluate
    res = evaluate({"realm": "runs/realm", "mirror": "runs/mirror"}, "data/synth", split="test",
                   samples=3, out="results/synth-test")

Every model loads with :func:`realm.checkpoint.load` (``realm.load``; or is passed loaded) and shares one
interface: ``generate(audio, first_frame, samples, seed, speaker=, words=) -> (N, T, D)``.
For each clip of the split, each model generates from the clip's audio with frame 0 of the
ground truth as its first frame (``first_frame="gt"``), and every metric of
:mod:`realm.metrics` is computed per block.

Rows of the table:

* one per model: stochastic models draw ``samples`` samples per clip; the metrics are computed
  on each sample set (sample s of every clip) and reported as **mean ± std over samples**;
  deterministic models draw one;
* ``GT resample`` (the floor, DESIGN 5.4): the dataset's second listener realisation of each
  clip scored against the first, the best any model can do; "n/a" when the data has one;
* ``ground truth``: the ground truth's own value of the metrics that describe motion alone
  (variance, diversity, SID, FRSyn, delay, event F1 of the detectors): columns marked →GT are
  read against it;
* ``<model> (oracle)``: per clip the sample closest to the ground truth in L1, the
  best-of-N number DIM's code reports; shown for reference, **never the headline**.

``metrics`` (``realm eval --metrics``): ``dim`` (the DIM/L2L suite, its peers' variants and ours),
``react`` (the REACT challenge's family: FRCorr, FRDist, FRDiv, FRDvs, FRVar, FRSyn) or ``all``.
The REACT family is computed on all K samples of a model at once, as REACT does: K = ``samples``;
a deterministic model's one output stands for all K (what REACT's K runs of it give: FRDiv 0).
Appropriate real reactions per clip (:func:`appropriate_reactions`): a neighbour matrix when the
dataset ships one (``neighbours_<split>.npy`` or REACT's ``neighbour_emotion_<split>.npy``), else
every listener realisation of the clip (the synthetic benchmark), which on one-realisation data is
the clip's own ground truth. The floor and oracle rows have no REACT values; the ground-truth row
has FRDiv, FRDvs, FRVar and FRSyn of the real listeners.

Outputs (written atomically: the directory appears complete or not at all): ``results.json``
(every number, mean and std, with the command, date, dataset, split and samples),
``results.csv`` (one line per row and metric), ``results.md`` (tables; best model value per
column in bold) and ``plots/metrics.png``, ``plots/trajectories_<clip>.png``.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from realm.errors import RealmInputError
from realm.io import atomic_dir, atomic_path, write_json
from realm.metrics import (
    METRICS,
    evaluate_clip_set,
    evaluate_react,
    l1,
    make_reference,
    metric_families,
    metric_keys,
    neighbour_reactions,
    single_thread_blas,
)
from realm.motion import get_spec

log = logging.getLogger(__name__)

ARROWS = {"lower": "↓", "higher": "↑", "gt": "→GT"}
FLOOR = "GT resample"
REFERENCE = "ground truth"

#: Table groups of results.md: (title, metric keys).
GROUPS = (
    ("Expression (accuracy and distribution)", [k for k, m in METRICS.items() if m.block == "exp" and m.family == "dim"
                                                and not k.startswith(("id_", "blink", "drift_"))]),
    ("Pose (accuracy and distribution)", [k for k, m in METRICS.items()
                                          if m.block == "pose" and m.family == "dim" and not k.startswith("id_")]),
    ("REACT family (appropriateness, diversity, synchrony; FRCorr and FRDist sum over the K samples)",
     [k for k, m in METRICS.items() if m.family == "react"]),
    ("ViCo's \"FD\" (an L1)", ["vico_l1_exp", "vico_l1_angle", "vico_l1_trans"]),
    ("Behaviour (ours): blinks, rest drift, two-sample test", [k for k in METRICS if k.startswith(("blink", "drift_", "c2st"))]),
    ("Reactions and identity (ours)", [k for k in METRICS if k.startswith(("delay", "event_", "id_"))]),
)  # fmt: skip

#: Metrics drawn in plots/metrics.png.
HEADLINE = ("l1_exp", "fd_exp", "fd_delta_exp", "p_fd_exp", "rpcc_exp", "var_ratio_exp",
            "l1_pose", "fd_pose", "p_fd_pose", "rpcc_pose", "delay_err", "event_f1",
            "blink_rate", "drift_8_end", "c2st", "frcorr_mean_exp", "frdist_mean_exp", "frdiv_exp")  # fmt: skip

#: Files of a neighbour matrix (appropriate reactions) in a dataset directory; ``{split}``: the split.
NEIGHBOUR_FILES = ("neighbours_{split}.npy", "neighbour_emotion_{split}.npy")


@dataclass
class Row:
    name: str
    kind: str  # model | oracle | floor | reference
    samples: int = 1
    metrics: dict[str, dict] = field(default_factory=dict)  # key -> {"mean", "std"}
    note: str = ""
    info: dict = field(default_factory=dict)


def load_models(models: dict) -> dict:
    """``{name: loaded model}`` from ``{name: run directory or loaded model}``."""
    from realm.checkpoint import load

    out = {}
    for name, m in models.items():
        out[name] = load(m) if isinstance(m, str | Path) else m
    return out


def aggregate(per_sample: list[dict], keys=None) -> dict[str, dict]:
    """Mean and std (population, over samples) of each metric (``keys``, default all); None where any sample lacks it."""
    out = {}
    for k in METRICS if keys is None else keys:
        vals = [d.get(k) for d in per_sample]
        if not vals or any(v is None for v in vals):
            out[k] = {"mean": None, "std": None}
        else:
            out[k] = {"mean": float(np.mean(vals)), "std": float(np.std(vals))}
    return out


def evaluate(
    models: dict,
    data: str | Path,
    split: str = "test",
    samples: int = 3,
    seed: int = 0,
    max_clips: int | None = None,
    out: str | Path | None = None,
    first_frame: str = "gt",
    force: bool = False,
    oracle: bool = True,
    coarse_rows: bool = True,
    plots: bool = True,
    plot_clips: int = 2,
    progress: Callable[[int, int, str], None] | None = None,
    command: str | None = None,
    metrics: str = "all",
) -> dict:
    """Score ``models`` on the ``split`` clips of dataset ``data``; write results to ``out``.

    ``models``: ``{name: run directory or loaded model}``. ``samples``: samples per clip for
    stochastic models (deterministic models draw one). ``first_frame``: ``"gt"`` starts every
    model at the ground truth's frame 0, ``"mean"`` at the model's default. ``out``: a new or
    empty directory (a non-empty one needs ``force=True``); ``None`` writes nothing.
    ``coarse_rows``: REALM models with a refinement also get a ``<name> (coarse)`` row, their
    stage-1 output before refinement (``generate(refine=False)``), so that what the refinement
    adds or breaks is one row apart.
    ``progress(done, total, what)`` is called as generation advances. ``metrics``: ``"dim"``,
    ``"react"`` or ``"all"`` (the module docstring). Returns the content of ``results.json``.
    """
    from realm.data import detect_format, load_any

    families = metric_families(metrics)
    keys = metric_keys(families)
    react = "react" in families
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if first_frame not in ("gt", "mean"):
        raise ValueError(f"first_frame must be 'gt' or 'mean', got {first_frame!r}")
    if not models:
        raise ValueError("no models to evaluate")
    out = Path(out) if out is not None else None
    if out is not None and out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise FileExistsError(f"{out}: exists and is not empty (use --force to overwrite)")
    data = Path(data)
    pool = sorted(load_any(data, splits=split), key=lambda c: c.clip_id)
    if not pool:
        raise RealmInputError(data, f"no clips in split {split!r}")
    clips = pool[: max(1, int(max_clips))] if max_clips is not None else pool
    spec = get_spec(clips[0].spec)
    fps = float(clips[0].fps)
    loaded = load_models(models)
    for name, m in loaded.items():
        if m.spec.name != spec.name:
            raise RealmInputError(data, f"model {name!r} generates {m.spec.name} but the data is {spec.name}")
        if abs(float(m.fps) - fps) > 1e-6:
            raise RealmInputError(data, f"model {name!r} runs at {m.fps} fps but the data is {fps} fps")
    for c in clips:
        if c.audio_path is None:
            raise RealmInputError(c.source or data, f"clip {c.clip_id}: no speaker audio, models cannot run")

    gts = [c.listener for c in clips]
    kw = _context(clips)
    kw["families"] = families
    ref = make_reference(gts, spec, seed, sid="dim" in families)
    appropriate, appropriate_from = appropriate_reactions(clips, pool, data, split) if react else (None, None)
    rows: list[Row] = []
    preds_of: dict[str, list[np.ndarray]] = {}
    done = 0
    runs = [(name, name, m, {}) for name, m in loaded.items()]  # (row, model key, model, generate options)
    if coarse_rows:  # REALM before its refinement, one row apart
        runs = [r for name, key, m, kw_ in runs
                for r in [(name, key, m, kw_)] + ([(f"{name} (coarse)", key, m, {"refine": False})] if _refines(m) else [])]  # fmt: skip
    total = len(runs) * len(clips)
    for name, key, m, gen_kw in runs:
        n = samples if getattr(m, "stochastic", False) and gen_kw.get("refine", True) else 1
        t0 = time.time()
        preds = []
        for c in clips:
            if progress:
                progress(done, total, f"{name}: {c.clip_id}")
            p = m.generate(
                str(c.audio_path), first_frame=c.listener[0] if first_frame == "gt" else None, samples=n, seed=seed,
                speaker=c.speaker, words=c.words, **gen_kw,
            )  # fmt: skip
            p = np.asarray(p, np.float32)
            if p.ndim == 2:
                p = p[None]
            if not np.all(np.isfinite(p)):
                raise RealmInputError(None, f"model {name!r} produced NaN/inf for clip {c.clip_id}")
            preds.append(p)
            done += 1
        seconds = time.time() - t0
        if progress:
            progress(done, total, f"{name}: scoring")
        preds_of[name] = preds
        per_sample = [evaluate_clip_set(gts, [p[s] for p in preds], spec, reference=ref, seed=seed, fps=fps, **kw)
                      for s in range(n)]  # fmt: skip
        scores = aggregate(per_sample, keys)
        if react:  # on all K samples at once; a deterministic model's output stands for all K
            k_samples = [np.repeat(p, samples, axis=0) if len(p) == 1 else p for p in preds]
            scores.update(_set_scores(evaluate_react(k_samples, spec, appropriate)))
        src = models[key]
        info = {"model": str(src) if isinstance(src, str | Path) else type(m).__name__,
                "type": getattr(m, "name", type(m).__name__), "stochastic": bool(getattr(m, "stochastic", False)) and gen_kw.get("refine", True), **gen_kw,
                "extractor": getattr(m, "extractor", None), "generation_seconds": round(seconds, 3)}  # fmt: skip
        rows.append(Row(name, "model", n, scores, info=info))
        if oracle and n > 1:
            with single_thread_blas():
                best = [p[int(np.argmin([l1(g, s) for s in p]))] for g, p in zip(gts, preds, strict=True)]
            rows.append(Row(f"{name} (oracle)", "oracle", n,
                            aggregate([evaluate_clip_set(gts, best, spec, reference=ref, seed=seed, fps=fps, **kw)], keys),
                            note=f"per clip the best of {n} samples by L1 to the ground truth; not a headline number"))  # fmt: skip
    if all(c.samples().shape[0] >= 2 for c in clips):
        second = [c.samples()[1] for c in clips]
        rows.append(Row(FLOOR, "floor", 1, aggregate([evaluate_clip_set(gts, second, spec, reference=ref, seed=seed,
                                                                          fps=fps, **kw)], keys),
                        note="a second listener realisation of each clip vs the first: the best reachable"))  # fmt: skip
    else:
        rows.append(Row(FLOOR, "floor", 0, aggregate([{}], keys), note="n/a: the dataset has one listener realisation per clip"))
    own = evaluate_clip_set(gts, gts, spec, reference=ref, seed=seed, fps=fps, **kw)
    if react:  # the real listeners' diversity and variance: every realisation of each clip (as many for each)
        real = [c.samples() for c in clips]
        own.update(evaluate_react([r[: min(len(x) for x in real)] for r in real], spec))
    rows.append(Row(REFERENCE, "reference", 1,
                    aggregate([{k: (v if METRICS[k].reference else None) for k, v in own.items()}], keys),
                    note="the ground truth's own values of the metrics that describe motion alone (→GT columns)"))  # fmt: skip

    result = {
        "command": command or _call_string(models, data, split, samples, seed, max_clips, first_frame),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dataset": {"path": str(data), "format": detect_format(data), **_meta(data)},
        "split": split,
        "samples": samples,
        "seed": seed,
        "first_frame": first_frame,
        "spec": spec.name,
        "fps": fps,
        "n_clips": len(clips),
        "clips": [c.clip_id for c in clips],
        "tau": kw.get("tau"),
        "metric_set": metrics,
        "appropriate": appropriate_from,
        "metrics": {k: {"label": METRICS[k].label, "direction": METRICS[k].direction, "variant": METRICS[k].variant,
                        "block": METRICS[k].block, "family": METRICS[k].family} for k in keys},  # fmt: skip
        "rows": {r.name: {"kind": r.kind, "samples": r.samples, "note": r.note, **r.info, "metrics": r.metrics}
                 for r in rows},  # fmt: skip
    }
    if out is not None:
        with atomic_dir(out, force=force, allow_empty=True) as tmp:  # refused at write time too
            write_json(tmp / "results.json", result)
            _write_csv(tmp / "results.csv", rows, keys)
            with atomic_path(tmp / "results.md") as p:
                p.write_text(markdown(result))
            if plots:
                (tmp / "plots").mkdir()
                _plot_metrics(tmp / "plots" / "metrics.png", rows, keys)
                for c, i in zip(clips[:plot_clips], range(plot_clips), strict=False):
                    _plot_trajectories(tmp / "plots" / f"trajectories_{c.clip_id}.png", c, spec,
                                       {name: p[i][0] for name, p in preds_of.items()})  # fmt: skip
        log.info("wrote %s", out)
    return result


# ---------------------------------------------------------------- helpers


def _set_scores(values: dict) -> dict[str, dict]:
    """Set-level values (one per model, no spread over samples) in a row's ``{"mean", "std"}`` form."""
    return {k: {"mean": v, "std": None} for k, v in values.items()}


def appropriate_reactions(clips, pool, data: str | Path, split: str) -> tuple[list, str]:
    """Per scored clip its appropriate real reactions (full frames, a (S, T, D) array or a list of
    (T, D)), and where they came from.

    A neighbour matrix shipped with the dataset (:data:`NEIGHBOUR_FILES` in ``data``: (M, M), one row
    and one column per clip of the split in clip_id order, 1 where column clip's real listener is
    an appropriate reaction to row clip's speaker; REACT's layout of ``neighbour_emotion_<split>.npy``)
    gives each clip its neighbours' listeners; otherwise every listener realisation of the clip
    (``Clip.samples()``: the synthetic benchmark's K realisations of the same speaker track; on
    one-realisation data the clip's own ground truth). ``pool``: all clips of the split (``clips``
    may be its first few).
    """
    data = Path(data)
    for name in NEIGHBOUR_FILES:
        path = data / name.format(split=split)
        if data.is_dir() and path.is_file():
            try:
                matrix = np.load(path, allow_pickle=False)
            except Exception as e:  # not an .npy, a pickle, truncated
                raise RealmInputError(path, f"unreadable neighbour matrix ({type(e).__name__}: {e})") from None
            if matrix.shape != (len(pool), len(pool)):
                raise RealmInputError(path, f"neighbour matrix is {matrix.shape}, expected ({len(pool)}, {len(pool)}): "
                                            f"one row and column per clip of split {split!r} in clip_id order")  # fmt: skip
            index = {c.clip_id: i for i, c in enumerate(pool)}
            try:
                found = neighbour_reactions(matrix, [c.listener for c in pool], [index[c.clip_id] for c in clips])
            except ValueError as e:
                raise RealmInputError(path, str(e)) from None
            return found, f"neighbour matrix {path.name}"
    many = any(c.samples().shape[0] > 1 for c in clips)
    return [c.samples() for c in clips], ("every listener realisation of the clip" if many else "the clip's own ground truth")


def _refines(model) -> bool:
    """A REALM whose output goes through a refinement (stage 2)."""
    return bool(getattr(model, "refines", False))  # the listener contract's capability (fakes in tests may lack it)


def _context(clips) -> dict:
    """Speaker motion, event logs, identities and triggers of the clips, as evaluate_clip_set wants them."""
    kw: dict = {"listener_ids": [c.listener_id or "?" for c in clips]}
    if all(c.speaker is not None for c in clips):
        kw["speakers"] = [c.speaker for c in clips]
        kw["speaker_spec"] = clips[0].speaker_spec or clips[0].spec
    if all(c.events for c in clips):
        kw["events"] = [c.events for c in clips]
        kw["tau"] = float(np.mean([c.events.get("tau", math.nan) for c in clips]))
        if not math.isfinite(kw["tau"]):
            kw["tau"] = None
    from realm.audio import load_audio
    from realm.metrics import loudness, speech_offsets

    audio = [load_audio(c.audio_path) if c.audio_path is not None else None for c in clips]
    if all(a is not None for a in audio):  # what the two-sample test's classifier hears
        kw["conditions"] = [loudness(a, fps=c.fps) for a, c in zip(audio, clips, strict=True)]
    if "events" not in kw and all(a is not None for a in audio):  # real data: speech offsets are the triggers
        kw["triggers"] = [speech_offsets(a, fps=c.fps) for a, c in zip(audio, clips, strict=True)]
    return kw


def _meta(data: Path) -> dict:
    from realm.data.clip import read_meta

    meta = read_meta(data)
    return {k: meta[k] for k in ("generator", "config", "spec", "source") if k in meta}


def _call_string(models, data, split, samples, seed, max_clips, first_frame) -> str:
    ms = ", ".join(f"{k!r}: {str(v)!r}" if isinstance(v, str | Path) else f"{k!r}: <{type(v).__name__}>"
                   for k, v in models.items())  # fmt: skip
    return (f"realm.eval.evaluate({{{ms}}}, {str(data)!r}, split={split!r}, samples={samples}, seed={seed}, "
            f"max_clips={max_clips}, first_frame={first_frame!r})")  # fmt: skip


def _fmt(v: float | None, std: float | None = None, with_std: bool = False) -> str:
    if v is None:
        return "n/a"
    s = f"{v:.4g}"
    if with_std and std is not None:
        s += f" ± {std:.2g}"
    return s


def best_per_column(result: dict, keys) -> dict[str, list[str]]:
    """The model rows with the best mean per metric (↓ min, ↑ max, →GT closest to the ground truth).

    Ties are all best; when every model ties, none is.
    """
    rows = result["rows"]
    gt = rows.get(REFERENCE, {}).get("metrics", {})
    out = {}
    for k in keys:
        d = result["metrics"][k]["direction"]
        cand = {n: r["metrics"][k]["mean"] for n, r in rows.items() if r["kind"] == "model" and r["metrics"][k]["mean"] is not None}
        target = gt.get(k, {}).get("mean")
        if not cand or (d == "gt" and target is None):
            out[k] = []
            continue
        score = {n: v if d == "lower" else -v if d == "higher" else abs(v - target) for n, v in cand.items()}
        top = min(score.values())
        winners = [n for n, v in score.items() if v <= top + 1e-12 * max(1.0, abs(top))]
        out[k] = winners if len(winners) < len(cand) or len(cand) == 1 else []  # a tie of all says nothing
    return out


def markdown(result: dict) -> str:
    """results.md: one table per metric group, mean ± std over samples, best model value in bold."""
    rows = result["rows"]
    lines = [
        f"# Benchmark: {result['dataset']['path']} ({result['split']}, {result['n_clips']} clips, {result['spec']})",
        "",
        f"Command: `{result['command']}`  ",
        f"Date: {result['date']}  ",
        f"Stochastic models: mean ± std over {result['samples']} samples per clip; deterministic: one.  ",
        "↓ lower is better, ↑ higher is better, →GT closer to the *ground truth* row is better. "
        f"**Bold**: best model per column. *{FLOOR}* is the floor (a second listener realisation); "
        "*(oracle)* rows are best-of-N and never the headline.",
        "",
    ]
    if result.get("tau") is not None:
        lines += [f"True reaction delay tau = {result['tau']:g} frames.", ""]
    if result.get("appropriate"):
        lines += [f"REACT family: all K = {result['samples']} samples of a clip at once (a deterministic model's "
                  f"output counts K times); appropriate real reactions: {result['appropriate']}.", ""]  # fmt: skip
    for title, keys in GROUPS:
        keys = [k for k in keys if k in result["metrics"] and any(r["metrics"][k]["mean"] is not None for r in rows.values())]
        if not keys:
            continue
        best = best_per_column(result, keys)
        lines += [f"## {title}", ""]
        heads = [f"{result['metrics'][k]['label']} {ARROWS[result['metrics'][k]['direction']]}" for k in keys]
        lines.append("| model | " + " | ".join(heads) + " |")
        lines.append("|---|" + "---:|" * len(keys))
        for name, r in rows.items():
            label = {"floor": f"*{name}* (floor)", "reference": f"*{name}*", "oracle": f"*{name}*"}.get(r["kind"], name)
            cells = []
            for k in keys:
                m = r["metrics"][k]
                cell = _fmt(m["mean"], m["std"], with_std=r["kind"] == "model" and r["samples"] > 1)
                if r["kind"] == "reference" and m["mean"] is None:
                    cell = "—"
                if name in best.get(k, []) and m["mean"] is not None:
                    cell = f"**{cell}**"
                cells.append(cell)
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Rows", ""]
    for name, r in rows.items():
        extra = f" ({r['note']})" if r.get("note") else ""
        src = f" `{r['model']}`" if r.get("model") else ""
        lines.append(f"- **{name}**{src}: {r['kind']}, {r['samples']} sample(s){extra}")
    lines += ["", "## Metric variants", ""]
    for k, m in result["metrics"].items():
        lines.append(f"- `{k}` ({m['label']}, {ARROWS[m['direction']]}): {m['variant']}")
    return "\n".join(lines) + "\n"


def _write_csv(path: Path, rows: list[Row], keys=None) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["row", "kind", "samples", "metric", "label", "direction", "mean", "std"])
            for r in rows:
                for k in METRICS if keys is None else keys:
                    m, v = METRICS[k], r.metrics[k]
                    w.writerow([r.name, r.kind, r.samples, k, m.label, m.direction,
                                "" if v["mean"] is None else repr(v["mean"]), "" if v["std"] is None else repr(v["std"])])  # fmt: skip


# ---------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_metrics(path: Path, rows: list[Row], keys=None) -> None:
    plt = _pyplot()
    keys = [k for k in HEADLINE if (keys is None or k in keys) and any(r.metrics[k]["mean"] is not None for r in rows)]
    if not keys:
        return
    ncol = 4
    nrow = math.ceil(len(keys) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4 * ncol, 3 * nrow), squeeze=False)
    shown = [r for r in rows if r.kind != "reference"]
    ref = next((r for r in rows if r.kind == "reference"), None)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, k in zip(axes.flat, keys, strict=False):
        vals = [r.metrics[k]["mean"] for r in shown]
        errs = [r.metrics[k]["std"] or 0.0 for r in shown]
        xs = np.arange(len(shown))
        bars = ax.bar(xs, [v if v is not None else 0.0 for v in vals], yerr=errs, capsize=3,
                      color=[colors[i % len(colors)] for i in range(len(shown))])  # fmt: skip
        for b, r, v in zip(bars, shown, vals, strict=True):
            if r.kind in ("floor", "oracle"):
                b.set_hatch("//")
                b.set_alpha(0.6)
            if v is None:
                b.set_alpha(0.0)
        m = METRICS[k]
        if m.direction == "gt" and ref is not None and ref.metrics[k]["mean"] is not None:
            ax.axhline(ref.metrics[k]["mean"], color="k", ls="--", lw=1, label="ground truth")
            ax.legend(fontsize=7)
        ax.set_title(f"{m.label} {ARROWS[m.direction]}", fontsize=9)
        ax.set_xticks(xs)
        ax.set_xticklabels([r.name for r in shown], rotation=30, ha="right", fontsize=7)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def trajectory_channels(spec) -> list[tuple[str, int]]:
    """(label, column) of the channels drawn per clip: three expression channels, pitch and yaw."""
    chans: list[tuple[str, int]] = []
    for name in ("mouthSmileLeft", "eyeBlinkLeft", "browInnerUp"):
        try:
            chans.append((name, spec.channel(name)))
        except KeyError:
            pass
    if not chans:
        exp = spec.indices("expression")
        chans += [(f"expression[{i}]", int(c)) for i, c in enumerate(exp[:3])]
    for axis in ("pitch", "yaw"):
        try:
            chans.append((f"head {axis}", spec.channel(f"rotation.{axis}")))
        except KeyError:
            pass
    return chans


def _plot_trajectories(path: Path, clip, spec, preds: dict[str, np.ndarray]) -> None:
    plt = _pyplot()
    chans = trajectory_channels(spec)
    fig, axes = plt.subplots(len(chans), 1, figsize=(12, 1.8 * len(chans)), sharex=True, squeeze=False)
    t = np.arange(clip.n_frames) / clip.fps
    samples = clip.samples()
    for ax, (label, col) in zip(axes[:, 0], chans, strict=True):
        ax.plot(t, clip.listener[:, col], color="k", lw=1.4, label="ground truth")
        if samples.shape[0] > 1:
            ax.plot(t, samples[1][:, col], color="0.6", lw=1, ls="--", label=FLOOR)
        for name, p in preds.items():
            n = min(len(p), len(t))
            ax.plot(t[:n], p[:n, col], lw=1, label=name)
        ax.set_ylabel(label, fontsize=8)
    if clip.events:
        for tr in clip.events.get("triggers", []):
            for ax in axes[:, 0]:
                ax.axvline(tr["frame"] / clip.fps, color="tab:red", alpha=0.15, lw=0.8)
    axes[0, 0].legend(fontsize=7, ncol=4, loc="upper right")
    axes[0, 0].set_title(f"{clip.clip_id} ({clip.listener_id}); red lines: speaker triggers", fontsize=9)
    axes[-1, 0].set_xlabel("time (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
