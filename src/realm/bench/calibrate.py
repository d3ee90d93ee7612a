"""Step-time calibration: a wall-clock budget becomes a step count (a few real training steps, timed)."""

from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

log = logging.getLogger(__name__)


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
    from realm.train.harness import make_timing_trainer

    timer = _timer_callback(max_batches, seconds)
    with tempfile.TemporaryDirectory(prefix="realm-bench-cal-") as tmp:
        trainer = make_timing_trainer(tcfg, [timer], (max_batches + 1) * opt_steps_per_batch, Path(tmp))
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
    """Seconds per stage-1 and stage-2 batch of REALM ``mcfg`` on ``tcfg``'s data (weights untrained).

    With ``tcfg.teacher_forcing`` F in (0, 1), stage 1's step is the mix of both kinds it runs: F times a
    teacher-forced step plus (1 - F) times a rollout step, each timed (``stage1_teacher_step_s``,
    ``stage1_rollout_step_s``)."""
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
    f = tcfg.teacher_forcing  # in (0, 1), stage 1 runs both kinds of step: time each, plan on their mix
    kinds = {"stage1_teacher_step_s": 1.0, "stage1_rollout_step_s": 0.0} if 0 < f < 1 else {"stage1_step_s": f}
    for key, ff in kinds.items():
        t = replace(tcfg, teacher_forcing=ff)
        task = REALMTask(mcfg.to_dict(), jsonable(asdict(t)), 1)
        task.stats = prep.stats  # as in training: react_gate's and react_condition's labels de-normalise the clips
        out[key] = _time_steps(task, dl, t, max_batches, share / len(kinds))
    if "stage1_step_s" not in out:
        out["stage1_step_s"] = f * out["stage1_teacher_step_s"] + (1 - f) * out["stage1_rollout_step_s"]
    if refine:
        task = REALMTask(mcfg.to_dict(), jsonable(asdict(tcfg)), 2)
        task.stats = prep.stats
        dl2 = dl
        if tcfg.stage2_rollout == "clip":  # stage 2 first rolls the coarse model over every clip: time a few
            t1 = time.time()
            few = coarse_rollouts(task.model, prep.train, max_clips=2)
            done = sum(len(c.coarse) for c in few)
            frames = prep.train.frames_total
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

