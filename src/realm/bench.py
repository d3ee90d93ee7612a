"""The whole benchmark in one call (``realm bench``): data, every model, both splits, one document.

    realm bench --out runs/bench --doc docs/benchmark.md --force    # 0.5 h, 4 CPU minutes a model; --force replaces the doc
    realm bench --out runs/bench2h --hours 2 --seed 0 --threads 1 --minutes-per-model 15 \
        --minutes realm_sb=45 --minutes lstm=45 --models realm,realm_sb,tau0_sb,lstm,...   # the real-budget run
    from realm.bench import BenchConfig, run_bench
    run_bench(BenchConfig(out="runs/bench", hours=0.5, minutes_per_model=4))

Steps (each one resumes: rerun the same command after an interruption):

1. **Data.** The standard synthetic benchmark (DESIGN 5): ``SynthConfig(hours, seed=0,
   backend="piper", listener_samples=2)``, written to ``--data`` (default ``OUT/data``); a
   directory that already holds a dataset with the same generator config (``meta.json``,
   parallelism aside) is reused, one with another config is an error.
2. **Models.** REALM, its ablations (``tau0``: tau = 0, plain one-sided ALiBi; ``no_gate``;
   ``no_refine``: coarse only; ``audio_only``: no listener history; ``history_only``: no audio)
   every baseline of :data:`realm.registry.BASELINES` and the multimodal-LM listener
   (:data:`LM_VARIANTS`: ``mmlm`` tiny backbone, ``mmlm_smollm2``), each trained into
   ``OUT/models/<name>/`` with the same feature extractor and a fixed **wall-clock budget**
   (``minutes_per_model``, or a model's own in ``minutes``, ``--minutes NAME=M``; REALM splits
   its training time 75 % stage 1 / 25 % stage 2). Our stochastic, bounded REALM, ``realm_sb``
   (and ``tau0_sb``, its tau = 0 ablation), is the demo checkpoint's recipe: stages 1 and 2 into
   ``OUT/models/<name>/steps12``, then step 3 (:data:`STEP3_MODEL`, :data:`STEP3_TRAIN`) from
   them; its budget splits :data:`STEP3_SHARES`. The
   budget becomes a step count: a short calibration run times the model's real training steps
   (data loading included), then ``max_steps`` = the time left / the step time (rounded to whole
   epochs, because checkpoints are selected on ``val`` at epoch ends). A step count, not a timer,
   so the learning-rate schedules and the staged baselines (VQ-VAE, then tokens) run their whole
   course within the budget. A model already trained there with the same settings is skipped
   (``bench_train.json`` is its record); a REALM run interrupted after stage 1 continues with
   stage 2 (a ``*_sb`` one interrupted in step 3 redoes step 3).
3. **Evaluation.** :func:`realm.eval.evaluate` on ``test`` and ``ood`` (``OUT/eval/<split>/``).
4. **Document.** ``doc`` (default ``docs/benchmark.md``; an existing one is replaced only with
   ``force``, ``--force``): the command, date, machine, dataset,
   per-model budget and steps done, the tables of both splits (with the floor and the oracle
   rows) and a "reading" section computed from the numbers. ``OUT/bench.json`` holds the
   config, ``OUT/bench_results.json`` everything the document says.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

from realm.io import atomic_path, refuse_existing, write_json
from realm.registry import BASELINES, MODELS

log = logging.getLogger(__name__)

#: REALM and its ablations: name -> (REALMConfig fields, what it is).
REALM_VARIANTS: dict[str, tuple[dict, str]] = {
    "realm": ({}, "REALM as released (DESIGN 7)"),
    "tau0": ({"tau": 0}, "ablation: tau = 0 (plain one-sided ALiBi, no reaction delay)"),
    "no_gate": ({"use_gate": False}, "ablation: no reactive gate"),
    "no_refine": ({"use_refinement": False}, "ablation: coarse model only (no stage 2)"),
    "audio_only": ({"use_history": False}, "ablation: never sees its own past motion"),
    "history_only": ({"use_audio": False}, "ablation: audio zeroed ('deaf')"),
    "realm_sb": ({}, "ours: REALM, then its coarse model fine-tuned stochastic and bounded (the demo's step 3)"),
    "tau0_sb": ({"tau": 0}, "ablation of ours: realm_sb with tau = 0"),
}
#: The step that follows stages 1 and 2 for the ``*_sb`` variants (the demo checkpoint's recipe,
#: checkpoints/realm-demo/README.md): a 16-d latent per window trained by the energy score on the
#: expression, a zero-latent rollout by the paper's loss, a learned leak toward the start frame, on
#: 256-frame rollouts, the hearing and timing frozen; the step-2 refinement kept.
STEP3_MODEL = {"latent_dim": 16, "rest_leak": True, "rest_leak_init": 0.005, "latent_temperature": 0.5}
STEP3_TRAIN = {"coarse_loss": "energy", "energy_blocks": ["expression"], "mean_rollout": True, "batch_size": 32,
               "clip_len": 256, "lr": 5e-4, "val_every": 0,
               "freeze": ["audio_encoder", "fusion", "decoder.gate", "waypoint"]}  # fmt: skip
#: Shares of a ``*_sb`` variant's training time: stage 1, stage 2, step 3.
STEP3_SHARES = (0.55, 0.15, 0.30)

#: Metrics REALM must lead on (DESIGN 13), and the ones compared with the floor.
HEADLINE = ("fd_exp", "fd_pose", "p_fd_exp", "p_fd_pose", "rpcc_exp", "rpcc_pose")
FLOOR_KEYS = ("l1_exp", "fd_exp", "fd_pose", "fd_delta_exp", "p_fd_exp", "p_fd_pose", "rpcc_exp", "rpcc_pose")
RECORD = "bench_train.json"
SYNTH_IGNORED = ("workers",)  # generator fields that do not change the data


#: The multimodal-LM listener (seed 2) in its two backbones: bench name -> (harness model, config fields, what).
LM_VARIANTS: dict[str, tuple[str, dict, str]] = {
    "mmlm": ("mmlm", {"backbone": "tiny"}, "multimodal-LM listener, small transformer from scratch (seed 2)"),
    "mmlm_smollm2": ("mmlm", {"backbone": "smollm2"}, "multimodal-LM listener, SmolLM2-135M + LoRA (seed 2)"),
}


def default_models() -> list[str]:
    return list(REALM_VARIANTS) + list(BASELINES) + list(LM_VARIANTS)


def harness_model(name: str) -> tuple[str, dict]:
    """(model of the harness, config fields it implies) of a bench model that is not a REALM variant."""
    if name in LM_VARIANTS:
        return LM_VARIANTS[name][0], dict(LM_VARIANTS[name][1])
    return name, {}


@dataclass
class BenchConfig:
    out: str = "runs/bench"  # OUT: models/, eval/, bench.json, bench_results.json
    doc: str = "docs/benchmark.md"
    force: bool = False  # replace an existing doc (refused before anything runs, and when it is written)
    data: str = ""  # dataset directory ("": OUT/data)
    # -- data (DESIGN 5)
    hours: float = 0.5
    seed: int = 0
    backend: str = "piper"
    listener_samples: int = 2
    synth: dict = field(default_factory=dict)  # further SynthConfig fields
    workers: int = 0  # synthesis processes (0: min(8, CPUs)); does not change the data
    # -- models and training
    models: list[str] = field(default_factory=default_models)
    minutes_per_model: float = 4.0  # wall-clock budget per model (calibration + training)
    minutes: dict = field(default_factory=dict)  # name -> its own budget in minutes (else minutes_per_model)
    stage1_fraction: float = 0.75  # REALM: share of the training time for stage 1
    max_steps: int = 0  # > 0: this many steps per stage instead of the time budget
    extractor: str = "logmel"
    batch_size: int = 64  # CPU cap on every recipe's batch size (0: the recipes' own)
    audio_context: int = -1  # REALM audio_context (-1: 16 for frame-local features, else 0)
    train: dict = field(default_factory=dict)  # further TrainConfig fields for every model
    step3: dict = field(default_factory=dict)  # TrainConfig fields over STEP3_TRAIN (the *_sb variants' step 3)
    model_overrides: dict = field(default_factory=dict)  # name -> model config fields ("realm": every variant)
    accelerator: str = "auto"
    devices: str = "auto"
    threads: int = 0  # torch CPU threads for the whole run (0: torch's default); 1 is best on a busy machine
    # -- evaluation
    samples: int = 3
    max_clips: int | None = None
    splits: list[str] = field(default_factory=lambda: ["test", "ood"])
    command: str = ""  # the command line recorded in the document ("" : this config's repr)

    def __post_init__(self):
        unknown = [m for m in self.models if m not in REALM_VARIANTS and m not in BASELINES and m not in LM_VARIANTS]
        if unknown:
            raise ValueError(f"unknown model(s) {unknown}; known: {', '.join(default_models())}")
        if not self.models:
            raise ValueError("no models to benchmark")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"models named twice: {self.models}")
        if self.minutes_per_model <= 0 and self.max_steps <= 0:
            raise ValueError("minutes_per_model must be > 0 (or give max_steps)")
        odd = [m for m in self.minutes if m not in self.models]
        if odd:
            raise ValueError(f"budgets for models not in the run: {odd}")
        if any(float(v) <= 0 for v in self.minutes.values()):
            raise ValueError(f"per-model minutes must be > 0: {self.minutes}")
        if not 0 < self.stage1_fraction <= 1:
            raise ValueError(f"stage1_fraction must be in (0, 1], got {self.stage1_fraction}")

    @property
    def data_dir(self) -> Path:
        return Path(self.data) if self.data else Path(self.out) / "data"

    @classmethod
    def from_dict(cls, d: dict) -> BenchConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


Progress = Callable[[str, int, "int | None"], None]  # (step, done, total): a step's progress


# ---------------------------------------------------------------- entry point


def run_bench(cfg: BenchConfig, progress: Progress | None = None) -> dict:
    """Run the benchmark of ``cfg``; write ``cfg.doc`` and ``OUT/bench_results.json``; return the latter."""
    import torch

    from realm.threads import set_torch_threads

    threads = torch.get_num_threads()
    set_torch_threads(cfg.threads)
    try:
        return _run(cfg, progress)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: BenchConfig, progress: Progress | None) -> dict:
    t0 = time.time()
    if not cfg.force:  # before hours of work; atomic_path checks again when it writes
        refuse_existing(cfg.doc)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "bench.json", asdict(cfg))
    command = cfg.command or f"realm.bench.run_bench({cfg!r})"
    say = progress or (lambda step, done, total: None)

    data, synth_cfg, reused = prepare_benchmark_data(cfg, say)
    trained = {}
    for i, name in enumerate(cfg.models, start=1):
        step = f"train {name} ({i}/{len(cfg.models)})"
        say(step, 0, None)
        trained[name] = train_model(name, cfg, data, synth_cfg, command)
        say(step, 1, 1)
    evals = {}
    from realm.eval import evaluate

    for split in cfg.splits:
        step = f"evaluate {split}"
        say(step, 0, None)
        evals[split] = evaluate(
            {n: str(out / "models" / n) for n in cfg.models}, data, split=split, samples=cfg.samples,
            max_clips=cfg.max_clips, out=out / "eval" / split, force=True, command=command,
            progress=lambda i, n, what, step=step: say(step, i, n),
        )  # fmt: skip
        say(step, 1, 1)
    result = {
        "command": command,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(cfg),
        "config": asdict(cfg),
        "dataset": dataset_summary(data, reused),
        "models": trained,
        "eval": {s: str(out / "eval" / s) for s in evals},
        "reading": {s: reading(r, trained) for s, r in evals.items()},
        "seconds": round(time.time() - t0, 1),
        "doc": str(cfg.doc),
    }
    doc = document(result, evals)
    with atomic_path(cfg.doc, force=cfg.force) as tmp:
        tmp.write_text(doc)
    write_json(out / "bench_results.json", result)
    log.info("wrote %s", cfg.doc)
    return result


# ---------------------------------------------------------------- data


def synth_config(cfg: BenchConfig):
    from realm.data.synth import SynthConfig

    workers = cfg.workers or min(8, os.cpu_count() or 1)
    kw = dict(hours=cfg.hours, seed=cfg.seed, backend=cfg.backend, listener_samples=cfg.listener_samples,
              workers=workers, **cfg.synth)  # fmt: skip
    return SynthConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()})


def _comparable(config: dict) -> dict:
    """A generator config as ``meta.json`` stores it (JSON types), without the fields that do not change the data."""
    return {k: v for k, v in json.loads(json.dumps(config)).items() if k not in SYNTH_IGNORED}


def prepare_benchmark_data(cfg: BenchConfig, say: Progress) -> tuple[Path, dict, bool]:
    """Reuse ``cfg.data_dir`` if it holds this generator config, else synthesise it there.

    Returns (directory, generator config as compared, reused).
    """
    from realm.data.clip import read_meta
    from realm.data.synth import generate

    sc = synth_config(cfg)
    want = _comparable(asdict(sc))
    root = cfg.data_dir
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        meta = read_meta(root)
        have = _comparable(meta.get("config", {})) if meta.get("generator") == "realm.data.synth" else None
        if have == want:
            log.info("reusing the benchmark data in %s", root)
            return root, want, True
        if have is None:
            raise ValueError(f"{root}: exists and does not hold a synthetic benchmark (meta.json); choose another --data")
        diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
        raise ValueError(
            f"{root}: holds a synthetic benchmark with another config (differs in {', '.join(diff)}); "
            "choose another --data or the same settings"
        )
    step = "synthesise data"
    say(step, 0, sc.n_clips())
    generate(sc, root, force=root.exists(), progress=lambda i, n: say(step, i, n))
    return root, want, False


def dataset_summary(data: Path, reused: bool) -> dict:
    from realm.data.clip import read_meta
    from realm.data.inspect import summarize

    s = summarize(data)
    cfg = read_meta(data).get("config", {})
    return {
        "path": str(data), "reused": reused, "hours": round(s.hours, 4), "clips": s.n_clips,
        "splits": {sp.split: {"clips": sp.clips, "hours": round(sp.hours, 4), "listeners": len(sp.listeners)}
                   for sp in s.splits},
        "realisations": s.realisations, "spec": s.spec, "speaker": s.speaker,
        "generator": {k: cfg.get(k) for k in ("backend", "seed", "identity_seed", "tau", "tau_jitter", "tau_spread",
                                               "n_identities", "n_ood_identities", "no_cue_fraction", "clip_seconds")
                      if k in cfg},
    }  # fmt: skip


# ---------------------------------------------------------------- training


def _audio_context(cfg: BenchConfig) -> int:
    from realm.train import LOCAL_EXTRACTORS

    if cfg.audio_context >= 0:
        return cfg.audio_context
    return 16 if cfg.extractor in LOCAL_EXTRACTORS else 0


def _model_fields(name: str, cfg: BenchConfig) -> dict:
    """Config fields of model ``name``: REALM variants get the bench's audio context, the "realm" overrides and their flags."""
    if name in REALM_VARIANTS:
        own = cfg.model_overrides.get(name, {}) if name != "realm" else {}
        return {"audio_context": _audio_context(cfg), **cfg.model_overrides.get("realm", {}), **own,
                **REALM_VARIANTS[name][0]}  # fmt: skip
    return {**harness_model(name)[1], **cfg.model_overrides.get(name, {})}


def _batch_size(recipe: int, cfg: BenchConfig) -> int:
    return min(recipe, cfg.batch_size) if cfg.batch_size > 0 else recipe


def _train_config(name: str, cfg: BenchConfig, data: Path):
    from realm.train import TrainConfig

    common = dict(data=str(data), extractor=cfg.extractor, accelerator=cfg.accelerator, devices=cfg.devices)
    if name in REALM_VARIANTS:
        base = TrainConfig(**{**common, **cfg.train})
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
    t.pop("data", None)
    for k in ("accelerator", "devices", "max_steps"):
        t.pop(k, None)
    return json.loads(json.dumps({
        "model": name, "model_fields": _model_fields(name, cfg), "train": t, "data": synth,
        "budget_minutes": _budget(cfg, name) / 60.0 if cfg.max_steps <= 0 else None, "max_steps": cfg.max_steps,
        "stage1_fraction": cfg.stage1_fraction,
    }))  # fmt: skip


def train_model(name: str, cfg: BenchConfig, data: Path, synth: dict, command: str) -> dict:
    """Train (or reuse) model ``name`` in ``OUT/models/<name>``; return its training record."""
    mdir = Path(cfg.out) / "models" / name
    tcfg = _train_config(name, cfg, data)
    key = _record_key(name, cfg, synth, tcfg)
    rec_path = mdir / RECORD
    old = json.loads(rec_path.read_text()) if rec_path.exists() else None
    if old is not None and old.get("key") != key:
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
    """The ``*_sb`` variants: stages 1 and 2, then step 3 (:data:`STEP3_MODEL`)."""
    return name.endswith("_sb")


def _budget(cfg: BenchConfig, name: str) -> float:
    """Model ``name``'s wall-clock budget in seconds."""
    return float(cfg.minutes.get(name, cfg.minutes_per_model)) * 60.0


def _plan_steps(seconds: float, step_s: float, per_epoch: int) -> int:
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
                "stage1_steps": _plan_steps(s1, cal["stage1_step_s"], cal["batches_per_epoch"]),
                "stage2_batches": _plan_steps(train_s - s1, cal["stage2_step_s"], cal["batches_per_epoch"]) if refine else 0,
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

    t3 = replace(tcfg, init=str(init), stages=(1,), **{**STEP3_TRAIN, **(over or {})})
    return t3, REALMConfig(**{**fields_, **STEP3_MODEL})


def _train_step3(name, cfg: BenchConfig, tcfg, mdir: Path, run12: Path, fields_: dict, rec: dict, command: str) -> None:
    """Step 3 of a ``*_sb`` variant, into ``mdir`` (the model the bench evaluates), from ``run12``."""
    from realm.train import train_realm

    t3 = time.time()
    t3cfg, m3 = _step3_configs(tcfg, fields_, run12, cfg.step3)
    if cfg.max_steps > 0:
        steps = cfg.max_steps
    else:
        budget = _budget(cfg, name) * STEP3_SHARES[2]
        cal = calibrate_realm(t3cfg, m3, False, seconds=min(20.0, max(2.0, 0.08 * budget)))
        left = budget - (time.time() - t3) - cal["prep_s"] - 2.0 - cal.get("rollout_s", 0.0)
        steps = _plan_steps(0.9 * max(left, 0.0), cal["stage1_step_s"], cal["batches_per_epoch"])
        rec["calibration_step3"] = cal
    rec.setdefault("plan", {})["step3_steps"] = t3cfg.max_steps = steps
    run3 = mdir / "step3"
    if run3.exists():  # a step 3 interrupted earlier: again from its start
        shutil.rmtree(run3)
    res = train_realm(t3cfg, m3, run3, progress=False, command=command)
    for f in sorted(run3.iterdir()):  # the exported model, where the bench evaluates it
        if f.is_file() and f.name != "train_state.json":
            shutil.copy2(f, mdir / f.name)
    rec["step3"] = _stage_summary(res.get("stage1", {}))
    rec["seconds"] = round(rec.get("seconds", 0.0) + time.time() - t3, 1)


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
            rec["plan"] = {"steps": _plan_steps(0.9 * max(left, 0.0), cal["step_s"], cal["batches_per_epoch"])}
        tcfg.max_steps = rec["plan"]["steps"]
    res = train_baseline(model_name, tcfg, mdir, model_cfg=overrides, progress=False, command=command)
    rec["train" if info.trained else "fit"] = _stage_summary(res.get("train") or res.get("fit") or {})
    rec["seconds"] = round(time.time() - t_start, 1)
    rec["complete"] = True
    write_json(mdir / RECORD, rec)
    return rec


# ---------------------------------------------------------------- calibration: seconds per training step


def _timer_callback(max_batches: int, max_seconds: float):
    from lightning.pytorch.callbacks import Callback

    class StepTimer(Callback):
        """Wall time between the ends of consecutive training batches (loading included); stops when it has enough."""

        def __init__(self):
            self.ends: list[float] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.ends.append(time.perf_counter())
            n = len(self.ends) - 1  # intervals; the first batch (warm-up) is not one
            if n >= max_batches or (n >= 1 and self.ends[-1] - self.ends[0] >= max_seconds):
                trainer.should_stop = True

        @property
        def step_s(self) -> float:
            if len(self.ends) < 2:
                return math.nan
            return (self.ends[-1] - self.ends[0]) / (len(self.ends) - 1)

    return StepTimer()


def _time_steps(task, train_dl, tcfg, max_batches: int, seconds: float, opt_steps_per_batch: int = 1) -> float:
    """Seconds per training batch of a LightningModule, measured on the real loader (a few batches)."""
    import lightning as L

    timer = _timer_callback(max_batches, seconds)
    with tempfile.TemporaryDirectory(prefix="realm-bench-cal-") as tmp:
        trainer = L.Trainer(
            max_steps=(max_batches + 1) * opt_steps_per_batch, max_epochs=10_000, accelerator=tcfg.accelerator,
            devices=1, precision=tcfg.precision, callbacks=[timer], logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
            default_root_dir=tmp,
        )  # fmt: skip
        trainer.fit(task, train_dl)
    step = timer.step_s
    if not math.isfinite(step):
        raise RuntimeError("the step-time calibration ran fewer than 2 training batches")
    return step


def _loader(ds, tcfg):
    from torch.utils.data import DataLoader

    return DataLoader(ds, batch_size=tcfg.batch_size, shuffle=True, drop_last=len(ds) > tcfg.batch_size,
                      num_workers=tcfg.num_workers)  # fmt: skip


def calibrate_realm(tcfg, mcfg, refine: bool, seconds: float = 10.0, max_batches: int = 10) -> dict:
    """Seconds per stage-1 and stage-2 batch of REALM ``mcfg`` on ``tcfg``'s data (weights untrained)."""
    import torch

    from realm.train import CoarseSegments, REALMTask, coarse_rollouts, prepare_data
    from realm.train.harness import jsonable

    t0 = time.time()
    prep = prepare_data(tcfg)
    prep_s = time.time() - t0
    mcfg.spec, mcfg.audio_dim = prep.spec, prep.audio_dim
    dl = _loader(prep.train, tcfg)
    out = {"prep_s": round(prep_s, 2), "batches_per_epoch": len(dl)}
    rng = torch.get_rng_state()
    share = seconds / (2 if refine else 1)
    out["stage1_step_s"] = _time_steps(REALMTask(mcfg.to_dict(), jsonable(asdict(tcfg)), 1), dl, tcfg, max_batches, share)
    if refine:
        task = REALMTask(mcfg.to_dict(), jsonable(asdict(tcfg)), 2)
        dl2 = dl
        if tcfg.stage2_rollout == "clip":  # stage 2 first rolls the coarse model over every clip: time a few
            t1 = time.time()
            few = coarse_rollouts(task.model, prep.train, max_clips=2)
            done = sum(len(c.coarse) for c in few)
            frames = sum(c.n_frames * c.samples().shape[0] for c in prep.train.clips)
            out["rollout_s"] = round((time.time() - t1) * frames / max(1, done), 2)
            dl2 = _loader(CoarseSegments(few, tcfg.clip_len, task.model.refine_context, tcfg.clip_stride), tcfg)
        out["stage2_step_s"] = _time_steps(task, dl2, tcfg, max_batches, share, opt_steps_per_batch=2)
    torch.set_rng_state(rng)
    out["seconds"] = round(time.time() - t0, 2)
    return out


def calibrate_baseline(name: str, tcfg, model_cfg: dict | None, seconds: float = 10.0, max_batches: int = 10) -> dict:
    """Seconds per training batch of neural baseline ``name`` (staged models: over their stages)."""
    from realm.train import prepare_data
    from realm.train.baselines import BaselineTask, make_model
    from realm.train.harness import jsonable

    t0 = time.time()
    prep = prepare_data(tcfg)
    prep_s = time.time() - t0
    model = make_model(name, prep, model_cfg)
    dl = _loader(model.wrap_dataset(prep.train), tcfg)
    task = BaselineTask(name, model.config.to_dict(), jsonable(asdict(tcfg)), model=model)
    # max_steps of the calibration trainer = its batches, so a staged model's progress covers its stages
    step = _time_steps(task, dl, tcfg, max_batches, seconds)
    return {"prep_s": round(prep_s, 2), "batches_per_epoch": len(dl), "step_s": step, "seconds": round(time.time() - t0, 2)}


# ---------------------------------------------------------------- machine


def machine(cfg: BenchConfig) -> dict:
    import lightning
    import torch

    gpu = torch.cuda.is_available()
    return {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(), "cpus": os.cpu_count(), "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "lightning": lightning.__version__,
        "gpu": torch.cuda.get_device_name(0) if gpu else None, "gpus": torch.cuda.device_count() if gpu else 0,
        "accelerator": cfg.accelerator, "devices": cfg.devices,
    }  # fmt: skip


# ---------------------------------------------------------------- reading: sentences computed from the numbers


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


# ---------------------------------------------------------------- the document


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
            s1, s2, s3 = r.get("stage1", {}), r.get("stage2"), r.get("step3")
            plan = r.get("plan", {})
            steps = f"stage 1: {s1.get('steps', '?')}{_planned(s1.get('steps'), plan.get('stage1_steps'))}"
            if s2 is not None:
                planned2 = 2 * plan["stage2_batches"] if plan.get("stage2_batches") else None
                steps += f"; stage 2: {s2.get('steps', '?')} (G + D){_planned(s2.get('steps'), planned2)}"
            if s2 and "val/select" in s2:
                val = f"loss {_g(s1.get('val/loss'))}; stage-2 score {_g(s2.get('val/select'))}"
            else:
                val = f"loss {_g(s1.get('val/loss'))}" + (f"; FD_delta {_g(s2.get('val/fd_delta'))}" if s2 else "")
            if s3 is not None:
                cal3 = r.get("calibration_step3", {})
                st += [f"{cal3['stage1_step_s']:.3g}"] if "stage1_step_s" in cal3 else []
                steps += f"; step 3: {s3.get('steps', '?')}{_planned(s3.get('steps'), plan.get('step3_steps'))}"
                val += f"; step 3 loss {_g(s3.get('val/loss'))}"
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
        f"variants: {' / '.join(f'{x:.0%}' for x in STEP3_SHARES)} stage 1 / stage 2 / step 3)")  # fmt: skip
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
        f"accelerator {m['accelerator']}, devices {m['devices']}",
        f"- Features: `{cfg['extractor']}` for every model; REALM audio context {_audio_context(BenchConfig.from_dict(cfg))} frames",
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
    from realm.eval import markdown

    splits = list(evals)
    for i, split in enumerate(splits):
        res = evals[split]
        lines += [f"## Split `{split}` ({res['n_clips']} clips)", ""]
        lines.append(_split_tables(markdown(res), keep_variants=i == len(splits) - 1))
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"
