"""Training of the speaker-emotion classifier (:mod:`realm.models.emotion`; ``realm lm emotion``).

A plain PyTorch loop (no Lightning: one small model, no resume or multi-device needs): random
windows of the train clips, class-balanced cross-entropy, the epoch with the best val macro F1
kept, written as a run directory by :meth:`realm.models.emotion.EmotionClassifier.save`.
"""

from __future__ import annotations

import copy
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from realm.data.clip import Clip
from realm.errors import RealmInputError
from realm.models.emotion import (
    IGNORE,
    EmotionClassifier,
    EmotionConfig,
    EmotionNet,
    clip_label_names,
    clip_labels,
    frame_metrics,
)
from realm.motion import NormStats

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- training


@dataclass
class EmotionTrainConfig:
    data: str = ""
    extractor: str = "logmel"
    epochs: int = 30
    batch_size: int = 16
    window: int = 300  # frames per training window
    lr: float = 3e-3
    weight_decay: float = 1e-4
    cue_only: bool = True  # train only on frames whose audio can carry the label (see module docstring)
    balanced: bool = True  # class-balanced cross-entropy (macro F1 is the selection metric)
    seed: int = 0
    model: dict = field(default_factory=dict)  # EmotionConfig overrides (hidden, dilations, ...)


def _batches(feats, labels, cfg: EmotionTrainConfig, rng: np.random.Generator):
    """Shuffled batches of random windows: (B, L, F) features, (B, L) labels (IGNORE on padding).

    A clip of T frames gives ``max(1, round(T / window))`` windows per epoch (an epoch sees about
    every frame once).
    """
    items = np.concatenate([np.full(max(1, round(len(f) / cfg.window)), j) for j, f in enumerate(feats)])
    order = items[rng.permutation(len(items))]
    for i in range(0, len(order), cfg.batch_size):
        idx = order[i : i + cfg.batch_size]
        L = min(cfg.window, max(len(feats[j]) for j in idx))
        x = np.zeros((len(idx), L, feats[0].shape[1]), np.float32)
        y = np.full((len(idx), L), IGNORE, np.int64)
        for b, j in enumerate(idx):
            T = len(feats[j])
            s = int(rng.integers(0, T - L + 1)) if T > L else 0
            n = min(L, T)
            x[b, :n], y[b, :n] = feats[j][s : s + n], labels[j][s : s + n]
        yield torch.from_numpy(x), torch.from_numpy(y)


@torch.no_grad()
def _predict_all(net: EmotionNet, feats: list[np.ndarray]) -> list[np.ndarray]:
    net.eval()
    return [net(torch.from_numpy(f)[None])[0].argmax(-1).numpy() for f in feats]


def evaluate(pred: list[np.ndarray], labels: list[np.ndarray], n_classes: int) -> dict:
    """Metrics pooled over the frames of several clips."""
    return frame_metrics(np.concatenate(pred), np.concatenate(labels), n_classes)


def fit(
    train_feats: list[np.ndarray],
    train_labels: list[np.ndarray],
    val_feats: list[np.ndarray],
    val_labels: list[np.ndarray],
    classes: list[str],
    extractor: str,
    cfg: EmotionTrainConfig | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> tuple[EmotionClassifier, dict]:
    """Train on raw features and per-frame labels; keep the epoch with the best val macro F1.

    Returns the classifier and a history ``{"epochs": [{epoch, loss, val accuracy, val macro_f1}],
    "best_epoch": k, "seconds": s}``.
    """
    cfg = cfg or EmotionTrainConfig(extractor=extractor)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    n_classes = len(classes)
    stats = NormStats.fit(train_feats, extractor)
    tr = [stats.apply(f).astype(np.float32) for f in train_feats]
    va = [stats.apply(f).astype(np.float32) for f in val_feats]
    counts = np.bincount(np.concatenate([lab[lab != IGNORE] for lab in train_labels]), minlength=n_classes)
    if counts.sum() == 0:
        raise ValueError("no labelled training frames (the dataset has no emotion labels)")
    weight = None
    if cfg.balanced:
        w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / n_classes, 0.0)
        weight = torch.tensor(w, dtype=torch.float32)
    net = EmotionNet(EmotionConfig(in_dim=tr[0].shape[1], n_classes=n_classes, **cfg.model))
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.epochs))
    loss_fn = nn.CrossEntropyLoss(weight=weight, ignore_index=IGNORE)
    history: dict = {"epochs": []}
    best, best_state, t0 = -1.0, copy.deepcopy(net.state_dict()), time.time()
    for epoch in range(1, cfg.epochs + 1):
        net.train()
        losses = []
        for x, y in _batches(tr, train_labels, cfg, rng):
            if (y != IGNORE).sum() == 0:
                continue
            loss = loss_fn(net(x).reshape(-1, n_classes), y.reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        sched.step()
        m = (
            evaluate(_predict_all(net, va), val_labels, n_classes)
            if va
            else {"accuracy": float("nan"), "macro_f1": -1.0}
        )
        score = m["macro_f1"] if not math.isnan(m["macro_f1"]) else -1.0
        history["epochs"].append(
            {"epoch": epoch, "loss": round(float(np.mean(losses)) if losses else float("nan"), 4),
             "val_accuracy": round(m["accuracy"], 4), "val_macro_f1": round(m["macro_f1"], 4)}
        )  # fmt: skip
        if score > best:
            best, best_state, history["best_epoch"] = score, copy.deepcopy(net.state_dict()), epoch
        if progress:
            progress(
                epoch, cfg.epochs, f"loss {history['epochs'][-1]['loss']:.3f} val F1 {m['macro_f1']:.3f}"
            )
    net.load_state_dict(best_state)
    history["seconds"] = round(time.time() - t0, 1)
    return EmotionClassifier(net.eval(), classes, stats, extractor), history


def train_emotion(
    cfg: EmotionTrainConfig,
    out: str | Path,
    force: bool = False,
    command: str | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict:
    """Train on a dataset directory, evaluate on every split, write the run directory ``out``.

    Results per split (``val``, ``test``, ``ood`` where present): ``cue`` (the headline: frames
    whose audio can carry their label), ``all`` (every labelled frame) and the same two for a
    majority-class baseline (the most frequent train class, predicted everywhere). Written into
    ``config.json`` and returned as ``{"results": ..., "history": ...}``.
    """
    from realm.data import load_any
    from realm.data.clip import read_meta
    from realm.data.windows import clip_features
    from realm.io import atomic_dir

    out = Path(out)
    if out.exists() and not force:
        raise FileExistsError(f"{out}: exists (use --force to overwrite)")
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
    clf, history = fit(
        feats["train"],
        labels["train"],
        feats[val_split],
        cue[val_split],
        classes,
        cfg.extractor,
        cfg,
        progress,
    )
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
        "train": asdict(cfg), "command": command or " ".join(sys.argv), "selected_on": f"{val_split} macro F1 (cue labels)",
        "data_config": read_meta(cfg.data).get("config", {}) if (Path(cfg.data) / "clips.csv").exists() else {},
        "majority_class": classes[majority], "train_class_frames": train_counts.tolist(),
        "results": results, "history": history,
    }  # fmt: skip
    with atomic_dir(out, force=force) as tmp:
        clf.save(tmp)
    return {"results": results, "history": history}
