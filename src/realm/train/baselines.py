"""Fit or train a baseline and export it as a run directory (``realm train NAME``).

Non-parametric baselines (static mean, random clip, mirror, nearest neighbour) fit in one pass
over the training split. Neural baselines train with Lightning exactly as REALM does: the same
windows (``realm.train.prepare_data``), checkpoints selected on the ``val`` loss (never on
``test``), ``resume`` from ``lightning/last.ckpt``, accelerator / devices / strategy passed
through. A run directory holds::

    RUN/config.json  model.safetensors  stats.npz  feature_stats.npz   (the exported model)
    RUN/lightning/last.ckpt, best.ckpt                                 (neural baselines: resume state)
    RUN/logs/                                                          (TensorBoard + CSV)
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from realm.checkpoint import save
from realm.data.mix import data_config
from realm.errors import RealmInputError
from realm.io import write_json
from realm.models.baselines.base import Baseline
from realm.registry import MODELS
from realm.threads import cpu_attention
from realm.train import TrainConfig, prepare_data
from realm.train.harness import (
    ResumableCheckpoint,
    ResumableLoader,
    StopRequested,
    best_model_state,
    fit_resumable,
    interrupted,
    jsonable,
    launched_rank,
    make_trainer,
    read_state,
    seed_all,
    seed_key,
)

log = logging.getLogger(__name__)


#: The registry's models this trainer trains: the baselines, the mmlm and its tokenizer.
HARNESS_MODELS = tuple(n for n, m in MODELS.items() if m.trainer == __name__)


def baseline_class(name: str) -> type[Baseline]:
    if name not in HARNESS_MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(HARNESS_MODELS)}")
    return MODELS[name].load_class()


def baseline_train_config(name: str, **overrides) -> TrainConfig:
    """TrainConfig with the baseline's recipe defaults (its paper's, where it has one), then ``overrides``."""
    cls = baseline_class(name)
    names = {f.name for f in fields(TrainConfig)}
    base = {k: v for k, v in cls.train_defaults.items() if k in names}
    return TrainConfig(**{**base, **{k: v for k, v in overrides.items() if v is not None}})


def make_model(name: str, data, model_cfg: dict | None = None) -> Baseline:
    """The baseline's model with its data-dependent config fields filled from ``data`` (a ``Prepared``)."""
    cls = baseline_class(name)
    clips = getattr(data.train, "clips", None)
    if clips is None:  # a store (realm.data.store) holds windows, not Clip objects
        raise RealmInputError(data.train.reader.dir.parent, f"the {name} baseline reads whole clips in memory; "
                              "train it from --data without --store")  # fmt: skip
    with_speaker = all(c.speaker is not None for c in clips)
    speaker_dim = clips[0].speaker.shape[1] if with_speaker else 0
    cfg = cls.Config.from_dict(dict(model_cfg or {}))
    cfg.spec, cfg.audio_dim = data.spec, data.audio_dim
    cfg.speaker_dim, cfg.speaker_spec = speaker_dim, (clips[0].speaker_spec or data.spec) if with_speaker else ""
    if cls.uses_speaker and not with_speaker:
        if name == "mirror":
            raise RealmInputError(clips[0].source or "data", "the mirror baseline needs speaker motion; this dataset has none")
        log.warning("%s: the dataset has no speaker motion; the model reads zeros (the mean speaker) instead", name)
    cls.configure(cfg, data)
    model = cls(cfg)
    model.set_speaker_stats(clips)
    return model


# ---------------------------------------------------------------- Lightning module for the neural baselines


class BaselineTask(L.LightningModule):
    def __init__(self, name: str, model_cfg: dict, train_cfg: dict, model: Baseline | None = None):
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        cls = baseline_class(name)
        self.model = model if model is not None else cls(cls.Config.from_dict(model_cfg))
        self.cfg = TrainConfig.from_dict(train_cfg)

    def _progress(self) -> float:
        total = self.trainer.max_steps if self.trainer.max_steps > 0 else self.trainer.estimated_stepping_batches
        return self.global_step / max(1, total)

    def on_train_batch_start(self, batch, batch_idx):
        # the step's random draws from (seed, epoch, batch): a resumed run draws what an uninterrupted one does
        seed_all(seed_key(self.cfg.seed, 0, self.current_epoch, batch_idx, self.global_rank))

    def training_step(self, batch, batch_idx):
        with cpu_attention(self.device):  # the same maths, faster on a CPU (realm.threads)
            out = self.model.loss(batch, progress=self._progress())
        B = len(batch["mask"])
        self.log_dict({f"train/{k}": v for k, v in out.items() if k != "loss"}, batch_size=B)
        self.log("loss", out["loss"], prog_bar=True, batch_size=B)
        return out["loss"]

    def validation_step(self, batch, batch_idx):
        out = self.model.loss(batch, progress=1.0)  # the inference mode of the model
        B = len(batch["mask"])
        self.log("val/loss", out["loss"], prog_bar=True, batch_size=B, sync_dist=True)

    def configure_optimizers(self):
        c, m = self.cfg, self.model.config
        params = [p for p in self.model.parameters() if p.requires_grad]  # frozen parts (a pretrained LM) stay out
        opt = torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
        step = getattr(m, "lr_step_epochs", 0)
        if not step:
            return opt
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=step, gamma=getattr(m, "lr_gamma", 0.5))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


# ---------------------------------------------------------------- entry point


def train_baseline(
    name: str,
    cfg: TrainConfig,
    out: str | Path,
    model_cfg: dict | None = None,
    resume: bool = False,
    progress: bool = True,
    command: str | None = None,
) -> dict:
    """Fit (non-parametric) or train (neural, Lightning) baseline ``name``; export it to ``out``.

    ``model_cfg`` overrides fields of the baseline's config dataclass (e.g. ``{"hidden": 128}``).
    Returns a summary dict (steps, seconds, best val loss for neural baselines).
    """
    cls = baseline_class(name)
    out = Path(out)
    if launched_rank() == 0 and out.exists() and any(out.iterdir()) and not resume:
        raise FileExistsError(f"{out}: run directory exists and is not empty (use --resume to continue it)")
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    prep = prepare_data(cfg)
    if resume and (out / "train_state.json").exists():
        saved = read_state(out / "train_state.json").get("model")
        if saved and model_cfg and any(saved.get(k) != v for k, v in model_cfg.items()):
            log.warning("resuming with the saved model config (command-line model options ignored)")
        model_cfg = saved or model_cfg
    model = make_model(name, prep, model_cfg)
    extra = {
        "train": jsonable(asdict(cfg)), "command": command or " ".join(sys.argv), "selected_on": "val",
        "data_config": data_config(cfg.data), "baseline": name,
    }  # fmt: skip
    t0 = time.time()
    model.fit_data(prep)  # non-parametric baselines: everything; neural models: what they need before training
    if not cls.trainable:
        results = {"fit": {"seconds": round(time.time() - t0, 1), "train_clips": len(prep.train.clips)}}
        save(out, model.eval(), prep.stats, prep.feature_stats, cfg.extractor, {**extra, "results": results}, model.name)
        return results
    write_json(out / "train_state.json", {"model": model.config.to_dict(), "train": extra["train"]})
    try:
        return _fit_neural(name, model, prep, cfg, out, resume, progress, extra, t0)
    except (StopRequested, KeyboardInterrupt) as e:  # Ctrl-C: saved; say how to resume
        raise interrupted(out, command, e) from None


def _fit_neural(name, model, prep, cfg, out, resume, progress, extra, t0) -> dict:

    loader_kw = dict(batch_size=cfg.batch_size, num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0)
    train_ds, val_ds = model.wrap_dataset(prep.train), model.wrap_dataset(prep.val)
    # order and items pure functions of (seed, epoch, position), resumable mid-epoch (realm.train.harness)
    train_dl = ResumableLoader(train_ds, seed_key(cfg.seed, 0), drop_last=len(train_ds) > cfg.batch_size, **loader_kw)
    val_dl = DataLoader(val_ds, shuffle=False, **loader_kw)
    task = BaselineTask(name, model.config.to_dict(), jsonable(asdict(cfg)), model=model)  # with what fit_data set
    ckpt = ResumableCheckpoint(out / "lightning", "val/loss", loader=train_dl, label=name)
    trainer = make_trainer(
        cfg, out, name, ckpt, progress, train_dl, max_epochs=cfg.epochs, max_steps=cfg.max_steps,
        # staged models (VQ-VAE, then the token model) leave one part without gradients at a time
        unused_parameters=model.staged,
        val_check_interval=cfg.max_steps if cfg.max_steps > 0 else None,  # a short budget still validates
    )  # fmt: skip
    best = fit_resumable(trainer, task, train_dl, val_dl, ckpt, resume)  # Ctrl-C: finish the batch, save, stop
    score = ckpt.best_model_score
    results = {
        "train": {
            "best_checkpoint": best, "val/loss": float(score) if score is not None else None,
            "epochs": trainer.current_epoch, "steps": trainer.global_step, "seconds": round(time.time() - t0, 1),
            "world_size": trainer.world_size,
        }
    }  # fmt: skip
    if trainer.global_rank == 0:
        model.load_state_dict(best_model_state(best))
        save(out, model.eval(), prep.stats, prep.feature_stats, cfg.extractor, {**extra, "results": results}, model.name)
    return results
