"""Training of the speaker-emotion classifier (:mod:`realm.models.emotion`; ``realm train emotion``).

A task of the one training harness (:mod:`realm.train.harness`): random windows of the train clips,
class-balanced cross-entropy, validation on whole clips after every epoch, the epoch with the best
val macro F1 kept (``best.ckpt``), resumable exactly (``--resume``: data order, optimiser, cosine
schedule and history from ``lightning/last.ckpt``), accelerator / devices / strategy a flag like
every other model's. The run directory is written by :meth:`realm.models.emotion.EmotionClassifier.save`.
"""

from __future__ import annotations

import logging
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from realm.data.clip import Clip
from realm.errors import RealmInputError
from realm.models.emotion import (
    IGNORE,
    EmotionClassifier,
    EmotionConfig,
    EmotionNet,
    clip_label_names,
    clip_labels,
    confusion,
    confusion_metrics,
    frame_metrics,
)
from realm.motion import NormStats
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
    seed_all,
    seed_key,
)

log = logging.getLogger(__name__)

#: What the checkpoint selects on (lower is better): 1 - val macro F1 (2 where val has no labelled frame).
MONITOR = "val/error"


@dataclass
class EmotionTrainConfig:
    data: str = ""
    extractor: str = "logmel"
    epochs: int = 30
    batch_size: int = 16
    window: int = 300  # frames per training window
    lr: float = 3e-3
    weight_decay: float = 1e-4
    cue_only: bool = True  # train only on frames whose audio can carry the label (see realm.models.emotion)
    balanced: bool = True  # class-balanced cross-entropy (macro F1 is the selection metric)
    seed: int = 0
    model: dict = field(default_factory=dict)  # EmotionConfig overrides (hidden, dilations, ...)
    # runtime (Lightning), as in realm.train.TrainConfig
    num_workers: int = 0
    accelerator: str = "auto"
    devices: str = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "32-true"


# ---------------------------------------------------------------- data


class RandomWindows(Dataset):
    """An epoch's items: clip ``j`` listed ``max(1, round(T_j / window))`` times (an epoch sees about
    every frame once); item ``i`` is a window of its clip at a random start drawn from ``self.rng``
    (set per item by the harness: a pure function of seed, epoch and position). Returns normalised
    features ``(L, F)`` and labels ``(L,)``, ``L = min(window, T_j)``."""

    def __init__(self, feats: list[np.ndarray], labels: list[np.ndarray], window: int):
        self.feats, self.labels, self.window = feats, labels, window
        self.items = np.concatenate([np.full(max(1, round(len(f) / window)), j) for j, f in enumerate(feats)])
        self.rng = np.random.default_rng(0)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        j = int(self.items[i])
        T = len(self.feats[j])
        n = min(self.window, T)
        s = int(self.rng.integers(0, T - n + 1))
        return torch.from_numpy(self.feats[j][s : s + n]), torch.from_numpy(self.labels[j][s : s + n])


class WholeClips(Dataset):
    """Validation items: each clip whole (the classifier is causal: a clip is one sequence)."""

    def __init__(self, feats: list[np.ndarray], labels: list[np.ndarray]):
        self.feats, self.labels = feats, labels

    def __len__(self) -> int:
        return len(self.feats)

    def __getitem__(self, i):
        return torch.from_numpy(self.feats[i]), torch.from_numpy(self.labels[i])


def pad_batch(items) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, L, F)`` features (zeros after a shorter window's end: the model is causal, so they reach
    no labelled frame) and ``(B, L)`` labels (``IGNORE`` there)."""
    L = max(len(x) for x, _ in items)
    x = torch.zeros(len(items), L, items[0][0].shape[1])
    y = torch.full((len(items), L), IGNORE, dtype=torch.long)
    for b, (f, lab) in enumerate(items):
        x[b, : len(f)], y[b, : len(f)] = f, lab
    return x, y


# ---------------------------------------------------------------- the task


class EmotionTask(L.LightningModule):
    """Cross-entropy on labelled frames; after each epoch the val confusion matrix (summed over ranks),
    logged as ``val/macro_f1``, ``val/accuracy`` and :data:`MONITOR`; a per-epoch history kept in the
    checkpoints (a resumed run reports every epoch)."""

    def __init__(self, net: EmotionNet, cfg: EmotionTrainConfig, weight: torch.Tensor | None,
                 progress: Callable[[int, int, str], None] | None = None):  # fmt: skip
        super().__init__()
        self.model, self.cfg, self.report = net, cfg, progress
        self.loss_fn = nn.CrossEntropyLoss(weight=weight, ignore_index=IGNORE)
        self.history: list[dict] = []
        self._losses: list[float] = []
        self._conf: torch.Tensor | None = None

    def on_train_batch_start(self, batch, batch_idx):
        # the step's random draws (dropout) from (seed, epoch, batch): a resumed run draws what an uninterrupted one does
        seed_all(seed_key(self.cfg.seed, 0, self.current_epoch, batch_idx, self.global_rank))

    def training_step(self, batch, batch_idx):
        x, y = batch  # (B, L, F), (B, L)
        if (y != IGNORE).sum() == 0:
            return None  # nothing labelled in this batch: no step
        loss = self.loss_fn(self.model(x).flatten(0, 1), y.flatten())  # (B*L, C) against (B*L,)
        self._losses.append(float(loss.detach()))
        self.log("loss", loss, prog_bar=True, batch_size=len(x))
        return loss

    def on_validation_epoch_start(self):
        n = self.model.config.n_classes
        self._conf = torch.zeros(n, n, dtype=torch.long, device=self.device)

    def validation_step(self, batch, batch_idx):
        x, y = batch  # whole clips, one at a time
        pred = self.model(x).argmax(-1)  # (1, T)
        self._conf += confusion(pred.flatten(), y.flatten(), self.model.config.n_classes)

    def on_validation_epoch_end(self):
        conf = self._conf
        if self.trainer.world_size > 1:
            conf = self.trainer.strategy.reduce(conf, reduce_op="sum")
        m = confusion_metrics(conf.cpu().numpy())
        f1 = m["macro_f1"]
        error = 2.0 if math.isnan(f1) else 1.0 - f1
        self.log_dict({"val/macro_f1": -1.0 if math.isnan(f1) else f1, "val/accuracy": m["accuracy"] if m["frames"] else 0.0,
                       MONITOR: error}, prog_bar=False)  # fmt: skip
        if self.trainer.sanity_checking:
            return
        loss = round(float(np.mean(self._losses)), 4) if self._losses else float("nan")
        self.history.append({"epoch": self.current_epoch + 1, "loss": loss, "val_accuracy": round(m["accuracy"], 4),
                             "val_macro_f1": round(f1, 4)})  # fmt: skip
        self._losses = []
        if self.report is not None and self.global_rank == 0:
            self.report(self.current_epoch + 1, self.cfg.epochs, f"loss {loss:.3f} val F1 {f1:.3f}")

    def on_save_checkpoint(self, checkpoint):
        checkpoint["emotion_history"] = self.history

    def on_load_checkpoint(self, checkpoint):
        self.history = list(checkpoint.get("emotion_history", []))

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.model.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, self.cfg.epochs))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


# ---------------------------------------------------------------- fitting


def evaluate(pred: list[np.ndarray], labels: list[np.ndarray], n_classes: int) -> dict:
    """Metrics pooled over the frames of several clips."""
    return frame_metrics(np.concatenate(pred), np.concatenate(labels), n_classes)


@torch.no_grad()
def _predict_all(net: EmotionNet, feats: list[np.ndarray]) -> list[np.ndarray]:
    net.eval()
    return [net(torch.from_numpy(f)[None])[0].argmax(-1).numpy() for f in feats]


def best_epoch(history: list[dict]) -> int | None:
    """The first epoch with the highest val macro F1 (the one ``best.ckpt`` holds)."""
    scores = [-1.0 if math.isnan(h["val_macro_f1"]) else h["val_macro_f1"] for h in history]
    return history[int(np.argmax(scores))]["epoch"] if scores else None


def fit(
    train_feats: list[np.ndarray],
    train_labels: list[np.ndarray],
    val_feats: list[np.ndarray],
    val_labels: list[np.ndarray],
    classes: list[str],
    extractor: str,
    cfg: EmotionTrainConfig | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    command: str | None = None,
) -> tuple[EmotionClassifier, dict]:
    """Train on raw features and per-frame labels with the harness; keep the epoch with the best val macro F1.

    ``out``: where the Lightning state goes (``out/lightning``, logs in ``out/logs/emotion``; a
    temporary directory when None); ``resume`` continues from ``out/lightning/last.ckpt``.
    Returns the classifier and a history ``{"epochs": [{epoch, loss, val_accuracy, val_macro_f1}],
    "best_epoch": k, "seconds": s}``.
    """
    cfg = cfg or EmotionTrainConfig(extractor=extractor)
    if out is None:
        with tempfile.TemporaryDirectory(prefix="realm-emotion-") as tmp:
            return fit(train_feats, train_labels, val_feats, val_labels, classes, extractor, cfg, progress, tmp)
    out, n_classes, t0 = Path(out), len(classes), time.time()
    stats = NormStats.fit(train_feats, extractor)
    tr = [stats.apply(f).astype(np.float32) for f in train_feats]
    va = [stats.apply(f).astype(np.float32) for f in val_feats]
    counts = np.bincount(np.concatenate([lab[lab != IGNORE] for lab in train_labels]), minlength=n_classes)
    if counts.sum() == 0:
        raise ValueError("no labelled training frames (the dataset has no emotion labels)")
    weight = None
    if cfg.balanced:
        weight = torch.tensor(np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / n_classes, 0.0), dtype=torch.float32)
    seed_all(seed_key(cfg.seed, 0))  # the initialisation
    net = EmotionNet(EmotionConfig(in_dim=tr[0].shape[1], n_classes=n_classes, **cfg.model))
    task = EmotionTask(net, cfg, weight, progress)
    kw = dict(num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0, collate_fn=pad_batch)
    train_dl = ResumableLoader(RandomWindows(tr, train_labels, cfg.window), seed_key(cfg.seed, 0), batch_size=cfg.batch_size, **kw)
    val_dl = DataLoader(WholeClips(va, val_labels), batch_size=1, shuffle=False, **kw)
    ckpt = ResumableCheckpoint(out / "lightning", MONITOR, loader=train_dl, label="emotion")
    trainer = make_trainer(cfg, out, "emotion", ckpt, False, train_dl, max_epochs=cfg.epochs)
    try:
        best = fit_resumable(trainer, task, train_dl, val_dl, ckpt, resume)  # Ctrl-C: finish the batch, save, stop
    except (StopRequested, KeyboardInterrupt) as e:
        raise interrupted(out, command, e) from None
    net.load_state_dict(best_model_state(best))
    history = {"epochs": task.history, "best_epoch": best_epoch(task.history), "seconds": round(time.time() - t0, 1)}
    return EmotionClassifier(net.eval(), classes, stats, extractor), history


def train_emotion(
    cfg: EmotionTrainConfig,
    out: str | Path,
    force: bool = False,
    command: str | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    resume: bool = False,
) -> dict:
    """Train on a dataset directory, evaluate on every split, write the run directory ``out``.

    Results per split (``val``, ``test``, ``ood`` where present): ``cue`` (the headline: frames
    whose audio can carry their label), ``all`` (every labelled frame) and the same two for a
    majority-class baseline (the most frequent train class, predicted everywhere). Written into
    ``config.json`` and returned as ``{"results": ..., "history": ...}``. An existing ``out`` is
    continued with ``resume`` (from its last checkpoint) or started over with ``force``.
    """
    from realm.data import load_any
    from realm.data.mix import data_config
    from realm.data.windows import clip_features

    out = Path(out)
    if launched_rank() == 0 and out.exists() and not resume:
        if not force:
            raise FileExistsError(f"{out}: exists (use --force to overwrite, --resume to continue it)")
        for stale in ("lightning", "logs"):  # an old run's resume state and logs; its model files are replaced at the end
            shutil.rmtree(out / stale, ignore_errors=True)
    clips = load_any(cfg.data)
    by_split: dict[str, list[Clip]] = {}
    for c in clips:
        by_split.setdefault(c.split, []).append(c)
    if not by_split.get("train"):
        raise RealmInputError(cfg.data, "no clips in the train split")
    classes = sorted(set().union(*(clip_label_names(c) for c in by_split["train"])))
    if len(classes) < 2:
        raise RealmInputError(
            cfg.data,
            f"needs at least two emotion classes in the train split (found {classes or 'no labels'})",
        )
    feats = {s: clip_features(cs, cfg.extractor) for s, cs in by_split.items()}
    labels = {s: [clip_labels(c, classes, cfg.cue_only) for c in cs] for s, cs in by_split.items()}
    cue = {s: [clip_labels(c, classes, True) for c in cs] for s, cs in by_split.items()}
    every = {s: [clip_labels(c, classes, False) for c in cs] for s, cs in by_split.items()}
    val_split = "val" if by_split.get("val") else "train"
    if val_split == "train":
        log.warning("no val split: the epoch is selected on train")
    out.mkdir(parents=True, exist_ok=True)
    clf, history = fit(
        feats["train"], labels["train"], feats[val_split], cue[val_split], classes, cfg.extractor, cfg, progress,
        out=out, resume=resume, command=command,
    )  # fmt: skip
    train_counts = np.bincount(
        np.concatenate([lab[lab != IGNORE] for lab in labels["train"]]), minlength=len(classes)
    )
    majority = int(np.argmax(train_counts))
    results: dict = {"best_epoch": history.get("best_epoch")}
    for split in ("train", "val", "test", "ood"):
        if split not in by_split:
            continue
        pred = _predict_all(clf.net, [clf.feature_stats.apply(f).astype(np.float32) for f in feats[split]])
        base = [np.full_like(p, majority) for p in pred]
        results[split] = {
            "clips": len(by_split[split]),
            "cue": evaluate(pred, cue[split], len(classes)),
            "all": evaluate(pred, every[split], len(classes)),
            "majority_cue": evaluate(base, cue[split], len(classes)),
            "majority_all": evaluate(base, every[split], len(classes)),
        }
    clf.info = {
        "train": jsonable(asdict(cfg)), "command": command or " ".join(sys.argv),
        "selected_on": f"{val_split} macro F1 (cue labels)",
        "data_config": data_config(cfg.data) if (Path(cfg.data) / "clips.csv").exists() else {},
        "majority_class": classes[majority], "train_class_frames": train_counts.tolist(),
        "results": results, "history": history,
    }  # fmt: skip
    if launched_rank() == 0:
        clf.save(out)  # each file atomically
    return {"results": results, "history": history}
