"""Step 2 of ``realm bench``: every model trained on its budget, resumable (``bench_train.json`` records)."""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from realm.bench.calibrate import calibrate_baseline, calibrate_realm
from realm.bench.config import (
    LM_VARIANTS,
    REALM_VARIANTS,
    RECORD,
    STEP3_MODEL,
    STEP3_SHARES,
    STEP3_TRAIN,
    STEP4_MODEL,
    VARIANT_TRAIN,
    BenchConfig,
    audio_context,
    harness_model,
)
from realm.io import write_json
from realm.registry import BASELINES, MODELS

log = logging.getLogger(__name__)

# Training fields that say where or on what the training runs, not what it learns: left out of a record's key
# (a store gives the same batches as the directory it was built from; tested in test_store).
WHERE_NOT_WHAT = ("data", "store", "accelerator", "devices", "max_steps")


def _model_fields(name: str, cfg: BenchConfig) -> dict:
    """Config fields of model ``name``: REALM variants get the bench's audio context, the "realm" overrides and their flags."""
    if name in REALM_VARIANTS:
        own = cfg.model_overrides.get(name, {}) if name != "realm" else {}
        return {"audio_context": audio_context(cfg), **cfg.model_overrides.get("realm", {}), **own,
                **REALM_VARIANTS[name][0]}  # fmt: skip
    return {**harness_model(name)[1], **cfg.model_overrides.get(name, {})}


def _batch_size(recipe: int, cfg: BenchConfig) -> int:
    return min(recipe, cfg.batch_size) if cfg.batch_size > 0 else recipe


def _train_config(name: str, cfg: BenchConfig, data: Path):
    from realm.train import TrainConfig

    common = dict(data=str(data), extractor=cfg.extractor, accelerator=cfg.accelerator, devices=cfg.devices)
    if cfg.precision:
        common["precision"] = cfg.precision
    if name in REALM_VARIANTS:
        base = TrainConfig(**{**common, **cfg.train, **VARIANT_TRAIN.get(name, {})})
    else:
        from realm.train.baselines import baseline_train_config

        base = baseline_train_config(harness_model(name)[0], **{**common, **cfg.train})
    if "batch_size" not in cfg.train:
        base.batch_size = _batch_size(base.batch_size, cfg)
    return base


def _record_key(name: str, cfg: BenchConfig, synth: dict, tcfg) -> dict:
    """What decides whether a model trained earlier can be reused."""
    from realm.train.harness import jsonable

    t = jsonable(asdict(tcfg))
    for k in WHERE_NOT_WHAT:
        t.pop(k, None)
    key = {
        "model": name, "model_fields": _model_fields(name, cfg), "train": t, "data": synth,
        "budget_minutes": _budget(cfg, name) / 60.0 if cfg.max_steps <= 0 else None, "max_steps": cfg.max_steps,
        "stage1_fraction": cfg.stage1_fraction,
    }  # fmt: skip
    if _has_step3(name):  # step 3's own recipe: a change redoes step 3 only (train_model)
        key["step3"] = {"model": STEP3_MODEL, "train": {**STEP3_TRAIN, **cfg.step3}, "shares": list(STEP3_SHARES)}
        if _has_step4(name):
            key["step3"]["step4"] = STEP4_MODEL
    return json.loads(json.dumps(key))


def _train_defaults(tcfg) -> dict:
    """The default of every field of ``tcfg``'s class, as in a key."""
    from realm.train.harness import jsonable

    return json.loads(json.dumps(jsonable(asdict(type(tcfg)()))))


def same_key(old: dict | None, key: dict, defaults: dict) -> bool:
    """Whether a record's key ``old`` names the training of ``key``.

    A training field added to the code after the record was written (absent from ``old``) matches when ``key``
    holds its default: a new option left at its default trains as before, and must not throw away hours of models.
    """
    if old is None:
        return False
    if {k: v for k, v in old.items() if k != "train"} != {k: v for k, v in key.items() if k != "train"}:
        return False
    was = {k: v for k, v in old.get("train", {}).items() if k not in WHERE_NOT_WHAT}
    now = key.get("train", {})
    added = {k for k in now if k not in was}
    return all(k in now for k in was) and all(was[k] == now[k] for k in was) and all(
        k in defaults and now[k] == defaults[k] for k in added)  # fmt: skip


def _only_step3_differs(old: dict | None, key: dict, defaults: dict) -> bool:
    """Whether a ``*_sb`` record's key differs from ``key`` in step 3's recipe alone (its stages 1-2 stand)."""
    if not old or "step3" not in key:
        return False
    rest = lambda k: {a: b for a, b in k.items() if a != "step3"}  # noqa: E731
    return same_key(rest(old.get("key") or {}), rest(key), defaults) and (old.get("key") or {}).get("step3") != key["step3"]


def train_model(name: str, cfg: BenchConfig, data: Path, synth: dict, command: str) -> dict:
    """Train (or reuse) model ``name`` in ``OUT/models/<name>``; return its training record."""
    mdir = Path(cfg.out) / "models" / name
    tcfg = _train_config(name, cfg, data)
    key = _record_key(name, cfg, synth, tcfg)
    defaults = _train_defaults(tcfg)
    rec_path = mdir / RECORD
    old = json.loads(rec_path.read_text()) if rec_path.exists() else None
    if _only_step3_differs(old, key, defaults) and old.get("stage2") is not None:
        log.warning("%s: step 3's recipe changed; stages 1 and 2 kept, step 3 again", name)
        old = {k: v for k, v in old.items() if k not in ("step3", "calibration_step3", "step4", "calibration_step4")}
        old.update(key=key, complete=False)
        for k in ("step3_steps", "step4_steps"):
            old.get("plan", {}).pop(k, None)
    elif old is not None and not same_key(old.get("key"), key, defaults):
        log.warning("%s: trained earlier with other settings; training again", name)
        old = None
    if old is not None and old.get("complete") and all((mdir / f).exists() for f in ("config.json", "model.safetensors")):
        log.info("%s: already trained in %s, reused", name, mdir)
        return {**old, "reused": True}
    if not _stage1_done(old, mdir):
        old = None
        if mdir.exists():
            shutil.rmtree(mdir)  # a partial or outdated run of ours: start clean
    mdir.mkdir(parents=True, exist_ok=True)
    if name in REALM_VARIANTS:
        rec = _train_realm_variant(name, cfg, tcfg, mdir, key, old, command)
    else:
        rec = _train_baseline(name, cfg, tcfg, mdir, key, command)
    return {**rec, "reused": False}


def _stage1_done(old: dict | None, mdir: Path) -> bool:
    """A REALM run of ours interrupted after its stage 1 (it continues with stage 2, or step 3)."""
    state = (mdir / "steps12" if _has_step3(mdir.name) else mdir) / "train_state.json"
    if not (old and old.get("stage1") and state.exists()):
        return False
    try:
        return 1 in json.loads(state.read_text()).get("done", [])
    except ValueError:
        return False


def _has_step3(name: str) -> bool:
    """The ``*_sb`` and ``*_sbk`` variants: stages 1 and 2, then step 3 (:data:`STEP3_MODEL`)."""
    return name.endswith(("_sb", "_sbk"))


def _has_step4(name: str) -> bool:
    """The ``*_sbk`` variants: step 3, then step 4 (:data:`STEP4_MODEL`)."""
    return name.endswith("_sbk")


def _budget(cfg: BenchConfig, name: str) -> float:
    """Model ``name``'s wall-clock budget in seconds."""
    return float(cfg.minutes.get(name, cfg.minutes_per_model)) * 60.0


def plan_steps(seconds: float, step_s: float, per_epoch: int) -> int:
    """Steps that fit ``seconds``, as whole epochs once past one (checkpoints are chosen on val at epoch ends)."""
    steps = max(1, int(seconds / max(step_s, 1e-6)))
    if per_epoch <= 0 or steps < per_epoch:
        return steps
    near = round(steps / per_epoch) * per_epoch
    return near if near <= 1.1 * steps else (steps // per_epoch) * per_epoch


def _train_realm_variant(name, cfg: BenchConfig, tcfg, mdir: Path, key: dict, old: dict | None, command: str) -> dict:
    from realm.models.realm import REALMConfig
    from realm.train import train_realm

    t_start = time.time()
    fields_ = _model_fields(name, cfg)
    refine = REALMConfig(**fields_).use_refinement
    three = _has_step3(name)  # stages 1 and 2 in mdir/steps12, step 3 from them in mdir/step3, copied to mdir
    run12 = mdir / "steps12" if three else mdir
    budget = _budget(cfg, name) * (sum(STEP3_SHARES[:2]) if three else 1.0)  # stages 1 and 2
    rec = {"key": key, "model": name, "kind": "realm" if not three else "ours", "what": REALM_VARIANTS[name][1], "complete": False,
           "budget_s": None if cfg.max_steps > 0 else _budget(cfg, name), "batch_size": tcfg.batch_size,
           "extractor": tcfg.extractor}  # fmt: skip
    if old is not None:  # train_model checked it: stage 1 done before an interruption
        rec, resumed = dict(old), True  # stage 1 done before an interruption
        log.info("%s: stage 1 done earlier, continuing with stage 2", name)
    else:
        resumed = False
        if cfg.max_steps > 0:
            rec["plan"] = {"stage1_steps": cfg.max_steps, "stage2_batches": cfg.max_steps if refine else 0}
        else:
            cal = calibrate_realm(tcfg, REALMConfig(**fields_), refine, seconds=min(20.0, max(2.0, 0.08 * budget)))
            left = budget - (time.time() - t_start) - (2 if refine else 1) * (cal["prep_s"] + 2.0) - cal.get("rollout_s", 0.0)
            train_s = 0.9 * max(left, 0.0)
            frac = STEP3_SHARES[0] / sum(STEP3_SHARES[:2]) if three else cfg.stage1_fraction
            s1 = train_s * (frac if refine else 1.0)
            rec["calibration"] = cal
            rec["plan"] = {
                "stage1_steps": plan_steps(s1, cal["stage1_step_s"], cal["batches_per_epoch"]),
                "stage2_batches": plan_steps(train_s - s1, cal["stage2_step_s"], cal["batches_per_epoch"]) if refine else 0,
            }  # fmt: skip
        tcfg.max_steps, tcfg.stages = rec["plan"]["stage1_steps"], (1,)
        res = train_realm(tcfg, REALMConfig(**fields_), run12, progress=False, command=command)
        rec["stage1"] = _stage_summary(res.get("stage1", {}))
        rec["seconds"] = round(time.time() - t_start, 1)
        write_json(mdir / RECORD, rec)  # stage 1 survives an interruption
    if refine and "stage2" not in rec:
        t2 = time.time()
        tcfg.max_steps, tcfg.stages = rec["plan"]["stage2_batches"], (2,)
        res = train_realm(tcfg, REALMConfig(**fields_), run12, resume=True, progress=False, command=command)
        rec["stage2"] = _stage_summary(res.get("stage2", {}))
        rec["seconds"] = round(rec.get("seconds", 0.0) + time.time() - t2, 1) if resumed else round(time.time() - t_start, 1)
        write_json(mdir / RECORD, rec)
    if three:
        _train_step3(name, cfg, tcfg, mdir, run12, fields_, rec, command)
    rec["complete"] = True
    write_json(mdir / RECORD, rec)
    return rec


def _step3_configs(tcfg, fields_: dict, init: Path, over: dict | None = None):
    """(TrainConfig, REALMConfig) of step 3 on the two-stage run ``init`` (``over``: TrainConfig fields over STEP3_TRAIN)."""
    from dataclasses import replace

    from realm.models.realm import REALMConfig

    # steps 3 and 4 roll out (a *_tf_* variant's teacher forcing is its stage 1's)
    t3 = replace(tcfg, init=str(init), stages=(1,), **{"teacher_forcing": 0.0, **STEP3_TRAIN, **(over or {})})
    return t3, REALMConfig(**{**fields_, **STEP3_MODEL})


def _train_step3(name, cfg: BenchConfig, tcfg, mdir: Path, run12: Path, fields_: dict, rec: dict, command: str) -> None:
    """Step 3 of a ``*_sb`` variant from ``run12`` (and step 4 of a ``*_sbk`` from step 3), into ``mdir`` (the model
    the bench evaluates)."""
    from dataclasses import replace

    t3cfg, m3 = _step3_configs(tcfg, fields_, run12, cfg.step3)
    four = _has_step4(name)
    share = STEP3_SHARES[2] / (2 if four else 1)
    last = _train_step(name, "step3", cfg, t3cfg, m3, mdir / "step3", share, rec, command)
    if four:  # step 3's recipe again from step 3, told which reaction kind starts
        m4 = replace(m3, **STEP4_MODEL)
        last = _train_step(name, "step4", cfg, replace(t3cfg, init=str(last)), m4, mdir / "step4", share, rec, command)
    for f in sorted(last.iterdir()):  # the exported model, where the bench evaluates it
        if f.is_file() and f.name != "train_state.json":
            shutil.copy2(f, mdir / f.name)


def _train_step(name, step: str, cfg: BenchConfig, tcfg, mcfg, run: Path, share: float, rec: dict, command: str) -> Path:
    """One stage-1 fine-tuning ``step`` ("step3", "step4") into ``run``, on ``share`` of the model's budget."""
    from realm.train import train_realm

    t0 = time.time()
    if cfg.max_steps > 0:
        steps = cfg.max_steps
    else:
        budget = _budget(cfg, name) * share
        cal = calibrate_realm(tcfg, mcfg, False, seconds=min(20.0, max(2.0, 0.08 * budget)))
        left = budget - (time.time() - t0) - cal["prep_s"] - 2.0 - cal.get("rollout_s", 0.0)
        steps = plan_steps(0.9 * max(left, 0.0), cal["stage1_step_s"], cal["batches_per_epoch"])
        rec[f"calibration_{step}"] = cal
    rec.setdefault("plan", {})[f"{step}_steps"] = tcfg.max_steps = steps
    if run.exists():  # a step interrupted earlier: again from its start
        shutil.rmtree(run)
    res = train_realm(tcfg, mcfg, run, progress=False, command=command)
    rec[step] = _stage_summary(res.get("stage1", {}))
    rec["seconds"] = round(rec.get("seconds", 0.0) + time.time() - t0, 1)
    return run


def _stage_summary(r: dict) -> dict:
    return {k: v for k, v in r.items() if k != "best_checkpoint"}


def _train_baseline(name, cfg: BenchConfig, tcfg, mdir: Path, key: dict, command: str) -> dict:
    from realm.train.baselines import train_baseline

    t_start = time.time()
    model_name = harness_model(name)[0]
    info = MODELS[model_name]
    what = LM_VARIANTS[name][2] if name in LM_VARIANTS else info.summary
    budget = _budget(cfg, name)
    rec = {"key": key, "model": name, "kind": "baseline" if name in BASELINES else "ours", "what": what, "complete": False,
           "budget_s": (None if cfg.max_steps > 0 else budget) if info.trained else None,
           "batch_size": tcfg.batch_size if info.trained else None, "extractor": tcfg.extractor}  # fmt: skip
    overrides = _model_fields(name, cfg) or None
    if info.trained:
        if cfg.max_steps > 0:
            rec["plan"] = {"steps": cfg.max_steps}
        else:
            cal = calibrate_baseline(model_name, tcfg, overrides, seconds=min(20.0, max(2.0, 0.08 * budget)))
            left = budget - (time.time() - t_start) - (cal["prep_s"] + 2.0)
            rec["calibration"] = cal
            rec["plan"] = {"steps": plan_steps(0.9 * max(left, 0.0), cal["step_s"], cal["batches_per_epoch"])}
        tcfg.max_steps = rec["plan"]["steps"]
    res = train_baseline(model_name, tcfg, mdir, model_cfg=overrides, progress=False, command=command)
    rec["train" if info.trained else "fit"] = _stage_summary(res.get("train") or res.get("fit") or {})
    rec["seconds"] = round(time.time() - t_start, 1)
    rec["complete"] = True
    write_json(mdir / RECORD, rec)
    return rec

