"""Step 4 of ``realm bench``: the document (tables, training table, a reading computed from the numbers)."""

from __future__ import annotations

import logging
import os
import platform

from realm.bench.config import (
    FLOOR_KEYS,
    FLOOR_MULTIPLE,
    HEADLINE,
    OURS,
    REALM_VARIANTS,
    STEP3_SHARES,
    VAR_RATIO_RANGE,
    BenchConfig,
    audio_context,
)
from realm.registry import BASELINES

log = logging.getLogger(__name__)


def machine(cfg: BenchConfig) -> dict:
    import lightning
    import torch

    gpu = torch.cuda.is_available()
    return {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(), "cpus": os.cpu_count(), "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "lightning": lightning.__version__,
        "gpu": torch.cuda.get_device_name(0) if gpu else None, "gpus": torch.cuda.device_count() if gpu else 0,
        "accelerator": cfg.accelerator, "devices": cfg.devices, "precision": cfg.precision or "32-true",
    }  # fmt: skip


def _mean(result: dict, row: str, key: str) -> float | None:
    r = result["rows"].get(row)
    return None if r is None else r["metrics"].get(key, {}).get("mean")


def _label(result: dict, key: str) -> str:
    return result["metrics"][key]["label"]


def _g(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4g}"


def reading(result: dict, trained: dict) -> list[str]:
    """Sentences about one split's numbers: REALM vs the baselines, delay, FD_delta, the floor, the ablations."""
    from realm.eval import FLOOR

    rows = result["rows"]
    if "realm" not in rows:
        return ["REALM was not among the models of this run: nothing to read."]
    lines = []
    baselines = [n for n, r in rows.items() if r["kind"] == "model" and n in BASELINES]
    # 1. REALM vs every baseline on FD, P-FD and rPCC
    if baselines:
        ahead, behind, missing = [], [], []
        for k in HEADLINE:
            mine = _mean(result, "realm", k)
            if mine is None:
                missing.append(_label(result, k))
                continue
            better = sorted((v, b) for b in baselines if (v := _mean(result, b, k)) is not None and v <= mine)
            if better:
                who = ", ".join(f"{b} {_g(v)}" for v, b in better)
                behind.append(f"{_label(result, k)} (REALM {_g(mine)}; as good or better: {who})")
            else:
                ahead.append(_label(result, k))
        if not behind and not missing:
            lines.append(f"REALM is ahead of every baseline ({', '.join(baselines)}) on {', '.join(ahead)}.")
        else:
            s = "REALM is **not** ahead of every baseline on all of FD, P-FD and rPCC. "
            s += f"It is ahead on {', '.join(ahead)}. " if ahead else "It is ahead on none of them. "
            if behind:
                s += "Not ahead on: " + "; ".join(behind) + "."
            if missing:
                s += f" Not available: {', '.join(missing)}."
            lines.append(s.strip())
    else:
        lines.append("No baseline was evaluated: no comparison.")
    # 2. the reaction delay
    tau = result.get("tau")
    d, err = _mean(result, "realm", "delay"), _mean(result, "realm", "delay_err")
    if tau is None or d is None:
        lines.append("Reaction delay: not measurable on this data (no event logs).")
    else:
        ok = "within" if err is not None and err <= 1.0 else "not within"
        s = f"Recovered reaction delay: REALM {d:.3g} frames vs the true tau = {tau:g} (error {_g(err)} frames: {ok} 1 frame)"
        extra = [f"{n} {_g(_mean(result, n, 'delay'))}" for n in ("tau0", FLOOR) if _mean(result, n, "delay") is not None]
        lines.append(s + (f"; for comparison: {', '.join(extra)}." if extra else "."))
    # 3. FD_delta vs the deterministic baselines
    det = [n for n in baselines if not rows[n].get("stochastic")]
    for k in ("fd_delta_exp", "fd_delta_pose"):
        mine = _mean(result, "realm", k)
        vals = [(n, _mean(result, n, k)) for n in det if _mean(result, n, k) is not None]
        if mine is None or not vals:
            continue
        lower = [n for n, v in vals if mine < v]
        lines.append(
            f"{_label(result, k)}: REALM {_g(mine)} vs the deterministic baselines "
            + ", ".join(f"{n} {_g(v)}" for n, v in vals)
            + f" (REALM lower than {len(lower)} of {len(vals)})."
        )
    # 4. distance to the floor
    if rows.get(FLOOR, {}).get("samples", 0):
        parts = []
        for k in FLOOR_KEYS:
            mine, floor = _mean(result, "realm", k), _mean(result, FLOOR, k)
            if mine is None or floor is None:
                continue
            ratio = f", {mine / floor:.2g}x" if floor > 1e-12 else ""
            parts.append(f"{_label(result, k)} {_g(mine)} vs {_g(floor)} (+{_g(mine - floor)}{ratio})")
        if parts:
            lines.append(f"Distance to the floor ({FLOOR}), REALM vs floor: " + "; ".join(parts) + ".")
    else:
        lines.append(f"No floor: the data has one listener realisation per clip ({FLOOR} n/a).")
    # 5. the ablations
    abl = [n for n in rows if n in REALM_VARIANTS and n != "realm"]
    if abl:
        parts = []
        for n in abl:
            cells = []
            for k in ("fd_exp", "p_fd_exp", "delay_err"):
                a, r = _mean(result, n, k), _mean(result, "realm", k)
                if a is not None and r is not None:
                    cells.append(f"{_label(result, k)} {_g(a)} ({'+' if a >= r else ''}{_g(a - r)})")
            parts.append(f"{n}: " + ", ".join(cells or ["n/a"]))
        lines.append("Ablations vs REALM (difference in brackets; lower is better): " + "; ".join(parts) + ".")
    return lines


def targets(result: dict, ours: str | None = None) -> list[str]:
    """Issue 15's targets (point 6) for ``ours`` (default: the first of :data:`OURS` in the run) on one split, as a
    table: each target, ours, what it is measured against, met or not, and by how much. [] without ours."""
    from realm.eval import FLOOR

    rows = result["rows"]
    if ours is None:
        ours = next((n for n in OURS if n in rows), None)
    if ours not in rows:
        return []
    baselines = [n for n, r in rows.items() if r["kind"] == "model" and n in BASELINES]
    others = [n for n, r in rows.items() if r["kind"] == "model" and n != ours and not n.startswith(ours + " (")]
    out = [f"| target ({ours}) | {ours} | against | met | by how much |", "|---|---:|---|---|---|"]

    def row(target, mine, against, met, how):
        flag = "n/a" if met is None else ("**yes**" if met else "no")
        out.append(f"| {target} | {_g(mine)} | {against} | {flag} | {how} |")

    def best_of(names, key, higher=False):
        vals = [(v, n) for n in names if (v := _mean(result, n, key)) is not None]
        return (max if higher else min)(vals) if vals else (None, None)

    for key, higher in (("fd_exp", False), ("p_fd_exp", False), ("event_f1", True)):
        mine, (v, n) = _mean(result, ours, key), best_of(baselines, key, higher)
        label = result["metrics"].get(key, {}).get("label", key)
        if mine is None or v is None:
            row(f"{label}: ahead of every baseline", mine, "no baseline" if v is None else f"{n} {_g(v)}", None, "")
            continue
        met = mine > v if higher else mine < v
        how = f"{'+' if mine >= v else ''}{_g(mine - v)} ({mine / v:.2g}x the best baseline)" if v else _g(mine - v)
        row(f"{label}: ahead of every baseline", mine, f"best baseline {n} {_g(v)}", met, how)
    tau, err = result.get("tau"), _mean(result, ours, "delay_err")
    row("delay within 1 frame of tau", _mean(result, ours, "delay"), f"tau = {_g(tau)}",
        None if err is None or tau is None else err <= 1.0, "" if err is None else f"{_g(err)} frames off")
    lo, hi = VAR_RATIO_RANGE
    vr = _mean(result, ours, "var_ratio_exp")
    how = "" if vr is None else ("inside" if lo <= vr <= hi else f"{_g(lo - vr)} under {lo:g}" if vr < lo
                                 else f"{_g(vr - hi)} over {hi:g}")  # fmt: skip
    row(f"expression variance ratio in [{lo:g}, {hi:g}]", vr,
        "the ground truth's variance", None if vr is None else lo <= vr <= hi, how)
    drift, ref = _mean(result, ours, "drift_8_end"), _mean(result, "lstm", "drift_8_end")
    row("rest drift after 8 s no larger than the LSTM's", drift, "no lstm" if ref is None else f"lstm {_g(ref)}",
        None if drift is None or ref is None else drift <= ref,
        "" if drift is None or ref is None or not ref else f"{drift / ref:.2g}x the LSTM's")
    fd, floor = _mean(result, ours, "fd_exp"), _mean(result, FLOOR, "fd_exp")
    ok = fd is not None and floor is not None and floor > 1e-12
    row(f"FD exp at most {FLOOR_MULTIPLE:g}x the floor", fd, f"{FLOOR} {_g(floor)}",
        (fd <= FLOOR_MULTIPLE * floor) if ok else None, f"{fd / floor:.2g}x the floor" if ok else "")
    acc, (v, n) = _mean(result, ours, "c2st"), best_of(others, "c2st")
    row("lowest two-sample test accuracy of all models", acc, "no other model" if v is None else f"lowest other: {n} {_g(v)}",
        None if acc is None or v is None else acc < v, "" if acc is None or v is None else f"{'+' if acc >= v else ''}{_g(acc - v)}")
    return out


def _split_tables(md: str, keep_variants: bool) -> str:
    """eval's results.md without its title, command and date, headings one level down."""
    out, skip = [], False
    for line in md.splitlines()[1:]:
        if line.startswith(("Command:", "Date:")):
            continue
        if line.startswith("## "):
            skip = line.startswith("## Metric variants") and not keep_variants
            line = "#" + line
        if not skip:
            out.append(line)
    return "\n".join(out).strip("\n")


def _planned(done, planned) -> str:
    """" (of N planned)" where the run stopped elsewhere (the recipe's epoch cap, say)."""
    return "" if planned is None or done == planned else f" (of {planned} planned)"


def _training_table(trained: dict) -> list[str]:
    lines = ["| model | what | batch | budget (s) | step time (s) | steps done | wall seconds | best on val |",
             "|---|---|---:|---:|---:|---|---:|---|"]  # fmt: skip
    for name, r in trained.items():
        cal = r.get("calibration", {})
        budget = "—" if r.get("budget_s") is None else f"{r['budget_s']:.0f}"
        if "stage1" in r:  # REALM and its variants
            st = [f"{cal['stage1_step_s']:.3g}"] if "stage1_step_s" in cal else []
            st += [f"{cal['stage2_step_s']:.3g}"] if "stage2_step_s" in cal else []
            s1, s2 = r.get("stage1", {}), r.get("stage2")
            plan = r.get("plan", {})
            steps = f"stage 1: {s1.get('steps', '?')}{_planned(s1.get('steps'), plan.get('stage1_steps'))}"
            if s2 is not None:
                planned2 = 2 * plan["stage2_batches"] if plan.get("stage2_batches") else None
                steps += f"; stage 2: {s2.get('steps', '?')} (G + D){_planned(s2.get('steps'), planned2)}"
            if s2 and "val/select" in s2:
                val = f"loss {_g(s1.get('val/loss'))}; stage-2 score {_g(s2.get('val/select'))}"
            else:
                val = f"loss {_g(s1.get('val/loss'))}" + (f"; FD_delta {_g(s2.get('val/fd_delta'))}" if s2 else "")
            for i in (3, 4):  # the *_sb variants' step 3, the *_sbk variants' step 4
                sk, calk = r.get(f"step{i}"), r.get(f"calibration_step{i}", {})
                if sk is None:
                    continue
                st += [f"{calk['stage1_step_s']:.3g}"] if "stage1_step_s" in calk else []
                steps += f"; step {i}: {sk.get('steps', '?')}{_planned(sk.get('steps'), plan.get(f'step{i}_steps'))}"
                val += f"; step {i} loss {_g(sk.get('val/loss'))}"
        elif "train" in r:
            st = [f"{cal['step_s']:.3g}"] if "step_s" in cal else []
            steps = f"{r['train'].get('steps', '?')}{_planned(r['train'].get('steps'), r.get('plan', {}).get('steps'))}"
            val = f"loss {_g(r['train'].get('val/loss'))}"
        else:
            st, steps, val = [], "fitted", "—"
        batch = "—" if r.get("batch_size") is None else str(r["batch_size"])
        seconds = f"{r.get('seconds', 0):.0f}" + (" (earlier run)" if r.get("reused") else "")
        lines.append(f"| {name} | {r['what']} | {batch} | {budget} | {' / '.join(st) or '—'} | {steps} | {seconds} | {val} |")
    return lines


def document(result: dict, evals: dict) -> str:
    cfg, m, ds = result["config"], result["machine"], result["dataset"]
    gpu = f"{m['gpu']} (x{m['gpus']})" if m["gpu"] else "none"
    clips = "all clips" if cfg["max_clips"] is None else f"the first {cfg['max_clips']} clips"
    own = ", ".join(f"{k} {v:g} min" for k, v in (cfg.get("minutes") or {}).items())
    budget = ("a fixed step count: " + str(cfg["max_steps"]) + " steps per stage") if cfg["max_steps"] > 0 else (
        f"{cfg['minutes_per_model']:g} min of wall-clock time per model{' (' + own + ')' if own else ''} (calibration "
        f"included; REALM: {cfg['stage1_fraction']:.0%} stage 1 / {1 - cfg['stage1_fraction']:.0%} stage 2; the *_sb "
        f"variants: {' / '.join(f'{x:.0%}' for x in STEP3_SHARES)} stage 1 / stage 2 / step 3, the *_sbk variants' step 3 "
        f"halved between steps 3 and 4)")  # fmt: skip
    lines = [
        "# Benchmark: REALM, its ablations and the baselines on the synthetic reactive-dyads data",
        "",
        "Generated by `realm bench` (`realm.bench`); every number below comes from the command:",
        "",
        f"```\n{result['command']}\n```",
        "",
        f"- Date: {result['date']} (total {result['seconds']:.0f} s)",
        f"- Machine: {m['platform']}, {m['processor']}, {m['cpus']} CPUs ({m['torch_threads']} torch threads), "
        f"Python {m['python']}, torch {m['torch']}, Lightning {m['lightning']}; GPU: {gpu}; "
        f"accelerator {m['accelerator']}, devices {m['devices']}, training precision {m.get('precision', '32-true')}",
        f"- Features: `{cfg['extractor']}` for every model; REALM audio context {audio_context(BenchConfig.from_dict(cfg))} frames",
        f"- Training budget: {budget}; batch size capped at {cfg['batch_size'] or 'the recipes'}",
        f"- Evaluation: {cfg['samples']} samples per clip for stochastic models (mean ± std over samples), "
        f"{clips} of each split, "
        "every model starting from the ground truth's frame 0",
        "",
        "## Dataset",
        "",
        f"`{ds['path']}`{' (reused)' if ds['reused'] else ''}: {ds['hours']:.3f} h in {ds['clips']} clips, "
        f"{ds['realisations']} listener realisation(s) per speaker track (K), listener {ds['spec']}, speaker {ds['speaker']}.",
        "",
        "| split | clips | hours | listeners |",
        "|---|---:|---:|---:|",
    ]
    for sp, s in ds["splits"].items():
        lines.append(f"| {sp} | {s['clips']} | {s['hours']:.3f} | {s['listeners']} |")
    gen = ", ".join(f"{k} = {v}" for k, v in ds["generator"].items())
    lines += ["", f"Generator: {gen}.", "", "## Models and training", ""]
    lines += _training_table(result["models"])
    lines += [
        "",
        "Step time: seconds per training batch measured by a short calibration run (data loading included); "
        "the budget left after it becomes the step count, in whole epochs once past one (fewer steps are done "
        "where the recipe's epoch cap comes first). Stage 2 counts generator and discriminator steps. Wall seconds: "
        "calibration, training, validation and export. Checkpoints are selected on `val`, never on `test`.",
        "",
        "## Reading",
        "",
        "Computed from the tables below (DESIGN 13: REALM should beat every baseline on FD, P-FD and rPCC, recover "
        "the reaction delay within 1 frame and come close to the floor).",
        "",
    ]
    for split, sentences in result["reading"].items():
        lines.append(f"**{split}**")
        lines.append("")
        lines += [f"- {s}" for s in sentences]
        lines.append("")
    ours = [o for o in OURS if any(o in res["rows"] for res in evals.values())]
    tables = {(split, o): targets(res, o) for o in ours for split, res in evals.items()}
    if any(tables.values()):
        lines += ["## Issue 15's targets for ours", "",
                  "Computed from the tables below (issue 15, point 6: ours ahead of every baseline on FD exp, P-FD exp "
                  "and event F1, delay within 1 frame of tau, expression variance ratio in "
                  f"{VAR_RATIO_RANGE[0]:g}-{VAR_RATIO_RANGE[1]:g}, rest drift after 8 s no larger than the LSTM's, FD exp "
                  f"at most {FLOOR_MULTIPLE:g}x the floor, the lowest two-sample test accuracy of all models; \"n/a\": "
                  "not measured in this run).", ""]  # fmt: skip
        for (split, o), table in tables.items():
            lines += [f"**{split}**" + (f", {o}" if len(ours) > 1 else ""), "", *table, ""]
    from realm.eval import markdown

    splits = list(evals)
    for i, split in enumerate(splits):
        res = evals[split]
        lines += [f"## Split `{split}` ({res['n_clips']} clips)", ""]
        lines.append(_split_tables(markdown(res), keep_variants=i == len(splits) - 1))
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"

