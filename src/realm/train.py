"""Training: Lightning modules and the fit entry point (``realm train realm``).

REALM trains in two stages (DESIGN section 7):

* **Stage 1** (coarse): 128-frame clips sampled with stride 4; frame 0 is given, the model
  bootstraps and rolls out 8 windows with backprop through the rollout.
  ``L = L_mse + 10 L_vel + 5 L_boundary + 1 L_waypoint + 0.01 (1 - mean alpha)`` with
  ``L_mse = MSE_exp + 5 MSE_rot + MSE_trans`` (rotation axes weighted 2, 2, 1), all in
  normalised space, masked by valid length, frame 0 excluded. AdamW 2e-3, weight decay 1e-4,
  cosine schedule with 10 % linear warm-up per iteration.
* **Stage 2** (refinement, coarse frozen): L1 on the expression + 0.5 x adversarial (soft
  labels: real U(0.9, 1), fake U(0, 0.1)); generator AdamW 2e-3, discriminator AdamW 5e-4
  with betas (0.5, 0.999).

Checkpoints are selected on ``val`` (stage 1: the validation loss; stage 2: the Frechet
distance of expression velocities, FD_delta, computed on whole windows) and never on
``test``. A run directory holds::

    RUN/config.json  model.safetensors  stats.npz  feature_stats.npz   (the exported model)
    RUN/lightning/stage{1,2}/last.ckpt, best.ckpt                       (resume state)
    RUN/logs/                                                          (TensorBoard + CSV)
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from realm.data.clip import read_meta
from realm.data.windows import WindowDataset, clip_features
from realm.metrics import frechet_distance
from realm.models.realm import REALM, REALMConfig
from realm.motion import NormStats

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    data: str = ""
    extractor: str = "logmel"
    clip_len: int = 128  # bootstrap window + 7 autoregressive steps
    clip_stride: int = 4
    val_stride: int = 64
    batch_size: int = 512
    epochs: int = 200  # stage 1
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup: float = 0.1
    stage2_epochs: int = 50
    lr_g: float = 2e-3
    lr_d: float = 5e-4
    betas_d: tuple[float, float] = (0.5, 0.999)
    seed: int = 23456
    # loss weights
    w_rot: float = 5.0
    rot_axis: tuple[float, float, float] = (2.0, 2.0, 1.0)  # pitch, yaw, roll
    w_vel: float = 10.0
    w_boundary: float = 5.0
    boundary_weights: dict = field(default_factory=lambda: {"expression": 0.5, "rotation": 1.0, "translation": 0.1})
    w_waypoint: float = 1.0
    w_gate: float = 0.01
    w_l1: float = 1.0
    w_adv: float = 0.5
    # runtime
    max_steps: int = -1  # per stage; -1: run the epochs
    num_workers: int = 0
    accelerator: str = "auto"
    devices: str = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "32-true"
    stages: tuple[int, ...] = (1, 2)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        d = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}
        return cls(**d)


# ---------------------------------------------------------------- data


@dataclass
class Prepared:
    train: WindowDataset
    val: WindowDataset
    stats: NormStats
    feature_stats: NormStats
    spec: str
    audio_dim: int


def prepare_data(cfg: TrainConfig, progress=None) -> Prepared:
    """Clips, features (cached), normalisation stats (train split only) and windows for train / val."""
    from realm.data import load_any

    root = Path(cfg.data)
    train_clips = load_any(root, splits="train")
    val_clips = load_any(root, splits="val")
    if not train_clips:
        raise ValueError(f"{root}: no train clips")
    if not val_clips:
        raise ValueError(f"{root}: no val clips (checkpoints are selected on val, never on test)")
    spec = train_clips[0].spec
    # Fitted here on the train split (every realisation), whatever stats file the dataset holds,
    # so every run uses the current normalisation rule (per-channel z-scores, block-floored).
    stats = NormStats.fit([c.samples().reshape(-1, c.listener.shape[1]) for c in train_clips], spec)
    train_feats = clip_features(train_clips, cfg.extractor, progress=progress)
    val_feats = clip_features(val_clips, cfg.extractor)
    feature_stats = NormStats.fit(train_feats, cfg.extractor)
    kw = dict(stats=stats, length=cfg.clip_len, history=0, feature_stats=feature_stats)
    train = WindowDataset(train_clips, train_feats, stride=cfg.clip_stride, sample="random", seed=cfg.seed, **kw)
    val = WindowDataset(val_clips, val_feats, stride=cfg.val_stride, sample="first", **kw)
    return Prepared(train, val, stats, feature_stats, spec, train_feats[0].shape[1])


# ---------------------------------------------------------------- losses


class REALMLoss:
    """Stage-1 loss terms in normalised space (block layout from the spec)."""

    def __init__(self, model: REALM, cfg: TrainConfig):
        self.spec, self.cfg, self.W = model.spec, cfg, model.config.window
        self.rot = self.spec.block("rotation").slice if self.spec.has("rotation") else None
        self.w, self.wb = self._dim_weights(), self._dim_weights(boundary=True)  # computed once
        self.axis = torch.tensor(cfg.rot_axis)

    def _dim_weights(self, boundary: bool = False) -> torch.Tensor:
        """Per-dimension weights: block weight (rotation x axis weights) / block size."""
        w = torch.zeros(self.spec.dim)
        for name, size in self.spec.blocks:
            b = self.spec.block(name)
            if boundary:
                key = "rotation" if name == "rotation" else ("translation" if b.kind == "pose" else "expression")
                w[b.slice] = self.cfg.boundary_weights[key] / size
            elif name == "rotation":
                w[b.slice] = self.cfg.w_rot * torch.tensor(self.cfg.rot_axis) / size
            else:
                w[b.slice] = 1.0 / size
        return w

    def __call__(self, pred, gt, mask, aux) -> dict[str, torch.Tensor]:
        m = mask.clone().float()
        m[:, 0] = 0  # frame 0 is given, never scored
        n = m.sum().clamp(min=1)
        w = self.w.to(pred.device)
        err = (pred - gt) ** 2
        mse = (err * w * m[..., None]).sum() / n
        out = {"mse": mse}
        if self.rot is not None:
            axis = self.axis.to(pred.device)
            dv = torch.diff(pred[..., self.rot], dim=1) - torch.diff(gt[..., self.rot], dim=1)
            mv = m[:, 1:] * m[:, :-1]
            out["vel"] = ((dv**2) * axis * mv[..., None]).sum() / (mv.sum().clamp(min=1) * 3)
            if aux["waypoint"] is not None:
                out["waypoint"] = F.mse_loss(aux["waypoint"], gt[:, self.W - 1, self.rot])
        wb = self.wb.to(pred.device)
        terms = []
        for k, (hist, win) in enumerate(aux["bounds"][1:], start=1):  # windows after the bootstrap
            valid = mask[:, k * self.W].float()
            if valid.sum() == 0:
                continue
            pos = ((win[:, 0] - hist[:, -1]) ** 2 * wb).sum(-1)
            vel = (((win[:, 1] - win[:, 0]) - (hist[:, -1] - hist[:, -2])) ** 2 * wb).sum(-1)
            terms.append(((pos + vel) * valid).sum() / valid.sum())
        out["boundary"] = torch.stack(terms).mean() if terms else pred.sum() * 0
        alpha = aux["alpha"][..., 0]
        out["gate"] = 1 - (alpha * mask).sum() / mask.sum().clamp(min=1)
        c = self.cfg
        out["loss"] = (
            out["mse"] + c.w_vel * out.get("vel", 0) + c.w_boundary * out["boundary"]
            + c.w_waypoint * out.get("waypoint", 0) + c.w_gate * out["gate"]
        )  # fmt: skip
        return out


# ---------------------------------------------------------------- Lightning module


class REALMTask(L.LightningModule):
    def __init__(self, model_cfg: dict, train_cfg: dict, stage: int = 1):
        super().__init__()
        self.save_hyperparameters()
        self.model = REALM(REALMConfig(**model_cfg))
        self.cfg = TrainConfig.from_dict(train_cfg)
        self.stage = stage
        self.loss = REALMLoss(self.model, self.cfg)
        # Parameters a stage does not train are frozen (DDP requires every trained parameter to get a gradient).
        unused = [self.model.refinement] if stage == 1 else []
        if not self.model.config.use_gate:
            unused.append(self.model.decoder.gate)
        for module in unused:
            for p in module.parameters() if module is not None else []:
                p.requires_grad_(False)
        if stage == 2:
            from realm.models.realm import Discriminator

            self.disc = Discriminator(self.model.spec.block(self.model.config.refine_block).size)
            self.automatic_optimization = False
            for p in self.model.parameters():
                p.requires_grad_(False)
            for p in self.model.refinement.parameters():
                p.requires_grad_(True)
        self._val: list = []

    # -- stage 1
    def _stage1(self, batch):
        motion, aux = self.model.rollout(batch["audio"], frame0=batch["motion"][:, 0])
        return self.loss(motion, batch["motion"], batch["mask"], aux)

    # -- stage 2
    def _coarse(self, batch):
        self.model.eval()  # the frozen coarse model runs deterministically
        with torch.no_grad():
            coarse, _ = self.model.rollout(batch["audio"], frame0=batch["motion"][:, 0])
        self.model.refinement.train(self.training)
        return coarse

    def _l1_exp(self, refined, batch):
        e = self.model.exp
        m = batch["mask"].float().clone()
        m[:, 0] = 0
        err = (refined[..., e] - batch["motion"][..., e]).abs().mean(-1)
        return (err * m).sum() / m.sum().clamp(min=1)

    def training_step(self, batch, batch_idx):
        if self.stage == 1:
            out = self._stage1(batch)
            self.log_dict({f"train/{k}": v for k, v in out.items()}, prog_bar=False, batch_size=len(batch["mask"]))
            self.log("loss", out["loss"], prog_bar=True, batch_size=len(batch["mask"]))
            return out["loss"]
        opt_g, opt_d = self.optimizers()
        coarse = self._coarse(batch)
        refined = self.model.refine(coarse, batch["audio"])
        e = self.model.exp
        real, fake = batch["motion"][..., e], refined[..., e]
        B = real.shape[0]
        # discriminator: soft labels
        d_loss = F.binary_cross_entropy_with_logits(
            self.disc(real), torch.empty(B, device=real.device).uniform_(0.9, 1.0)
        ) + F.binary_cross_entropy_with_logits(
            self.disc(fake.detach()), torch.empty(B, device=real.device).uniform_(0.0, 0.1)
        )
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        opt_d.step()
        # generator (the refinement)
        l1 = self._l1_exp(refined, batch)
        adv = F.binary_cross_entropy_with_logits(self.disc(fake), torch.ones(B, device=real.device))
        g_loss = self.cfg.w_l1 * l1 + self.cfg.w_adv * adv
        opt_g.zero_grad()
        self.manual_backward(g_loss)
        opt_g.step()
        self.log_dict({"train/l1_exp": l1, "train/adv": adv, "train/d_loss": d_loss}, batch_size=B)
        self.log("loss", g_loss, prog_bar=True, batch_size=B)

    def validation_step(self, batch, batch_idx):
        B = len(batch["mask"])
        if self.stage == 1:
            out = self._stage1(batch)
            self.log("val/loss", out["loss"], prog_bar=True, batch_size=B, sync_dist=True)
            self.log("val/mse", out["mse"], batch_size=B, sync_dist=True)
            return
        coarse = self._coarse(batch)
        torch.manual_seed(batch_idx)  # the same noise at every validation
        refined = self.model.refine(coarse, batch["audio"])
        self.log("val/l1_exp", self._l1_exp(refined, batch), batch_size=B, sync_dist=True)
        e, mask = self.model.exp, batch["mask"]
        for i in range(B):
            n = int(mask[i].sum())
            self._val.append((np.diff(batch["motion"][i, :n, e].cpu().numpy(), axis=0),
                              np.diff(refined[i, :n, e].cpu().numpy(), axis=0)))  # fmt: skip

    def on_validation_epoch_end(self):
        if self.stage == 2 and self._val:
            gt = np.concatenate([g for g, _ in self._val])
            pr = np.concatenate([p for _, p in self._val])
            self.log("val/fd_delta", frechet_distance(gt, pr), prog_bar=True, sync_dist=True)
        self._val = []

    def configure_optimizers(self):
        c = self.cfg
        if self.stage == 2:
            opt_g = torch.optim.AdamW(self.model.refinement.parameters(), lr=c.lr_g)
            opt_d = torch.optim.AdamW(self.disc.parameters(), lr=c.lr_d, betas=tuple(c.betas_d))
            return [opt_g, opt_d]
        opt = torch.optim.AdamW(self.model.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        total = max(1, self.trainer.estimated_stepping_batches)
        warm = max(1, int(c.warmup * total))

        def schedule(step: int) -> float:  # linear warm-up, then cosine to 0, per iteration
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


# ---------------------------------------------------------------- run directory: export and load


def export(run: Path, model, prepared_or_stats, extractor: str, extra: dict, model_type: str = "realm") -> None:
    """Write a model (REALM or a baseline: ``model_type``) as safetensors weights + JSON config +
    normalisation stats, each file atomically."""
    from safetensors.torch import save_file

    from realm.io import atomic_path, write_json

    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    stats, fstats = prepared_or_stats
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(run / "model.safetensors") as tmp:
        save_file(state, str(tmp))
    stats.save(run / "stats.npz")
    fstats.save(run / "feature_stats.npz")
    config = {
        "model_type": model_type,
        "model": model.config.to_dict(),
        "spec": model.spec.name,
        "fps": model.spec.fps,
        "feature_extractor": extractor,
        **extra,
    }
    write_json(run / "config.json", config)


def train_realm(
    cfg: TrainConfig,
    model_cfg: REALMConfig,
    out: str | Path,
    resume: bool = False,
    progress: bool = True,
    command: str | None = None,
) -> dict:
    """Fit stage 1 then stage 2 (as ``cfg.stages`` says); export the best-on-val model to ``out``."""
    out = Path(out)
    launched_rank = int(os.environ.get("LOCAL_RANK", 0)) + int(os.environ.get("NODE_RANK", 0))
    if launched_rank == 0 and out.exists() and any(out.iterdir()) and not resume:  # ranks > 0 join rank 0's run
        raise FileExistsError(f"{out}: run directory exists and is not empty (use --resume to continue it)")
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    prep = prepare_data(cfg)
    model_cfg.spec, model_cfg.audio_dim = prep.spec, prep.audio_dim
    state_path = out / "train_state.json"
    state = json.loads(state_path.read_text()) if resume and state_path.exists() else {"done": []}
    if resume and state_path.exists():
        saved = state.get("model")
        if saved and saved != model_cfg.to_dict():
            log.warning("resuming with the saved model config (command-line model options ignored)")
            model_cfg = REALMConfig(**saved)
    state.update({"model": model_cfg.to_dict(), "train": _jsonable(asdict(cfg))})
    loader_kw = dict(batch_size=cfg.batch_size, num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0)
    train_dl = DataLoader(prep.train, shuffle=True, drop_last=len(prep.train) > cfg.batch_size, **loader_kw)
    val_dl = DataLoader(prep.val, shuffle=False, **loader_kw)
    from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    results = {}
    prev_best = None
    for stage in cfg.stages:
        if stage == 2 and not model_cfg.use_refinement:
            continue
        ckdir = out / "lightning" / f"stage{stage}"
        monitor = "val/loss" if stage == 1 else "val/fd_delta"
        if stage in state["done"]:
            prev_best = state.get(f"best{stage}")
            log.info("stage %d already done (%s)", stage, prev_best)
            continue
        task = REALMTask(model_cfg.to_dict(), _jsonable(asdict(cfg)), stage)
        if stage == 2:
            best1 = prev_best or state.get("best1")
            if best1 is None:
                raise FileNotFoundError(f"{out}: stage 2 needs a finished stage 1 (no best stage-1 checkpoint)")
            sd = torch.load(best1, map_location="cpu", weights_only=False)["state_dict"]
            task.load_state_dict({k: v for k, v in sd.items() if k.startswith("model.")}, strict=False)
        ckpt = ModelCheckpoint(
            dirpath=ckdir, filename="best", monitor=monitor, mode="min", save_top_k=1, save_last=True
        )
        callbacks = [ckpt] + ([RichProgressBar()] if progress else [])
        trainer = L.Trainer(
            max_epochs=cfg.epochs if stage == 1 else cfg.stage2_epochs,
            # stage 2 steps two optimizers per batch: the budget counts batches in both stages
            max_steps=cfg.max_steps * (2 if stage == 2 and cfg.max_steps > 0 else 1),
            accelerator=cfg.accelerator,
            devices=_devices(cfg.devices),
            # stage 2 is a GAN: each of its two backward passes reaches only one network
            strategy="ddp_find_unused_parameters_true" if stage == 2 and cfg.strategy == "ddp" else cfg.strategy,
            num_nodes=cfg.num_nodes,
            precision=cfg.precision,
            callbacks=callbacks,
            logger=[
                TensorBoardLogger(out / "logs", name=f"stage{stage}", version=""),
                CSVLogger(out / "logs", name=f"stage{stage}", version=""),
            ],
            enable_progress_bar=progress,
            enable_model_summary=False,
            log_every_n_steps=max(1, min(50, len(train_dl))),
            # a step budget shorter than an epoch still ends with a validation
            val_check_interval=cfg.max_steps if 0 < cfg.max_steps < len(train_dl) else None,
            num_sanity_val_steps=0,
            deterministic=False,
        )
        last = ckdir / "last.ckpt"
        t0 = time.time()
        trainer.fit(task, train_dl, val_dl, ckpt_path=str(last) if resume and last.exists() else None)
        best = ckpt.best_model_path or str(last)
        prev_best = best  # every rank goes on to the next stage; only rank 0 writes
        if trainer.global_rank != 0:
            continue
        score = ckpt.best_model_score
        results[f"stage{stage}"] = {
            "best_checkpoint": best, monitor: float(score) if score is not None else None,
            "epochs": trainer.current_epoch, "steps": trainer.global_step, "seconds": round(time.time() - t0, 1),
            "world_size": trainer.world_size,
        }  # fmt: skip
        state[f"best{stage}"] = best
        state["done"].append(stage)
        state_path.write_text(json.dumps(state, indent=1))
        _export_best(out, best, model_cfg, prep, cfg, stage, results, command)
    return results


def _export_best(out, best, model_cfg, prep, cfg, stage, results, command):
    model = REALM(model_cfg)
    sd = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
    model.load_state_dict({k[len("model.") :]: v for k, v in sd.items() if k.startswith("model.")})
    extra = {
        "stage": stage, "train": _jsonable(asdict(cfg)), "results": results,
        "command": command or " ".join(sys.argv), "selected_on": "val",
        "data_config": read_meta(cfg.data).get("config", {}),
    }  # fmt: skip
    export(out, model, (prep.stats, prep.feature_stats), cfg.extractor, extra)


def _devices(d: str):
    if d == "auto":
        return "auto"
    return [int(x) for x in d.split(",")] if "," in d else int(d)


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=list))
