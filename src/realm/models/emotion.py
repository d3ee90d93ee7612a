"""A small speaker-emotion classifier over frame-rate acoustic features (DESIGN section 8).

The multimodal-LM listener reads a speaker-emotion signal beside words and acoustics. This module
learns it from a dataset's own labels and outputs per-frame class probabilities ``(T, C)``.

Labels (:func:`clip_labels`)
----------------------------
* Synthetic benchmark (``clip.events["phrases"]``): frames inside a phrase take the phrase's
  emotion (positive / negative / neutral; questions are neutral), frames in pauses are neutral.
  A fraction of emotional phrases is spoken *without* emotional prosody (``cue = false``, the
  generator's ``no_cue_fraction``): their audio is neutral by construction, so no acoustic model
  can tell them apart. By default (``cue_only=True``) their frames are left out of training and
  out of the headline metrics ("cue" labels); metrics over every frame ("all" labels, those
  phrases labelled by their emotion) are reported too.
* Per-clip labels (ViCo's attitude, read into ``clip.emotion``): every frame of the clip takes it.
* Clips with neither are unlabelled (ignored). Classes are the sorted label names of the train split.

Model (:class:`EmotionNet`)
---------------------------
Causal dilated 1-D convolutions (kernel 3, dilations 1, 2, 4, 8, 16: a 63-frame = 2.1 s
look-back, no look-ahead, so it streams exactly) over z-scored features, with residual
connections, then a linear layer to class logits. Optionally (``running_norm``) the input also
holds each feature minus its causal running mean over the clip so far (speaker-relative pitch
and loudness); on the synthetic benchmark it did not help (docs/mmlm.md), so it is off by default.

Features: ``logmel`` by default. The synthetic emotions change speech rate, pitch and loudness
together (``realm.data.synth.EMOTION_PROSODY``); the 80 log-mel bands carry all three (energy,
harmonic spacing, the syllable rhythm of the envelope) and, measured on a 0.3 h formant set, gave
val / test macro F1 0.81 / 0.93 against 0.67 / 0.77 for the 4-dim ``prosody`` features, which
also learn more slowly. Any extractor of ``realm.audio`` can be chosen.

Training (:mod:`realm.train.emotion`) is a task of the one Lightning harness (resumable, devices a
flag): random windows of the train clips, class-balanced cross-entropy, the epoch with the best val
macro F1 kept. A run directory holds ``config.json`` (``model_type:
"emotion"``, classes, extractor, training config, results), ``model.safetensors`` and
``feature_stats.npz``, checked and read by :mod:`realm.checkpoint`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from realm.audio import FPS
from realm.checkpoint import check_files, load_state, read_config
from realm.data.clip import Clip
from realm.errors import RealmInputError
from realm.motion import NormStats

log = logging.getLogger(__name__)

IGNORE = -100  # label of frames that are not trained on or scored
SYNTH_EMOTIONS = ("negative", "neutral", "positive")  # phrase emotions of realm.data.synth
CHECKPOINT_FILES = ("config.json", "model.safetensors", "feature_stats.npz")


# ---------------------------------------------------------------- labels


def clip_label_names(clip: Clip) -> set[str]:
    """Label names of a clip: a synthetic clip's are the generator's three emotions (any clip may
    lack one), a per-clip label's is that label."""
    phrases = (clip.events or {}).get("phrases")
    if phrases:
        return set(SYNTH_EMOTIONS) | {str(p["emotion"]) for p in phrases}
    return {clip.emotion} if clip.emotion else set()


def clip_labels(
    clip: Clip, classes: list[str], cue_only: bool = True, n_frames: int | None = None
) -> np.ndarray:
    """Per-frame class indices ``(T,)`` of a clip; ``IGNORE`` where unlabelled (see module docstring).

    Frame ``t`` belongs to a phrase when its centre ``(t + 0.5) / fps`` lies in ``[start, end)``.
    """
    T = clip.n_frames if n_frames is None else n_frames
    index = {c: i for i, c in enumerate(classes)}
    phrases = (clip.events or {}).get("phrases")
    if phrases:
        labels = np.full(T, index.get("neutral", IGNORE), dtype=np.int64)
        centres = (np.arange(T) + 0.5) / clip.fps
        for p in phrases:
            inside = (centres >= float(p["start"])) & (centres < float(p["end"]))
            if cue_only and not p.get("cue", True):
                labels[inside] = IGNORE
            else:
                labels[inside] = index.get(str(p["emotion"]), IGNORE)
        return labels
    if clip.emotion:
        return np.full(T, index.get(clip.emotion, IGNORE), dtype=np.int64)
    return np.full(T, IGNORE, dtype=np.int64)


# ---------------------------------------------------------------- metrics


def confusion(pred, labels, n_classes: int):
    """Confusion counts ``(C, C)`` (row: label, column: prediction) of the labelled frames
    (``labels != IGNORE``); numpy arrays or torch tensors (then a tensor on their device)."""
    if isinstance(labels, torch.Tensor):
        keep = labels != IGNORE
        idx = labels[keep] * n_classes + pred[keep]
        return torch.bincount(idx, minlength=n_classes * n_classes).reshape(n_classes, n_classes)
    keep = labels != IGNORE
    return np.bincount(labels[keep] * n_classes + pred[keep], minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def confusion_metrics(conf: np.ndarray) -> dict:
    """Accuracy and macro F1 of confusion counts (see :func:`frame_metrics`)."""
    conf = np.asarray(conf, dtype=np.int64)
    total = int(conf.sum())
    if total == 0:
        return {"frames": 0, "accuracy": float("nan"), "macro_f1": float("nan"), "f1": []}
    tp = np.diag(conf)
    fp, fn = conf.sum(0) - tp, conf.sum(1) - tp
    f1 = [float(2 * t / (2 * t + a + b)) if t + a + b else float("nan") for t, a, b in zip(tp, fp, fn, strict=True)]
    present = [f for f in f1 if not math.isnan(f)]
    return {
        "frames": total,
        "accuracy": float(tp.sum() / total),
        "macro_f1": float(np.mean(present)),
        "f1": [round(f, 4) if not math.isnan(f) else None for f in f1],
    }


def frame_metrics(pred: np.ndarray, labels: np.ndarray, n_classes: int) -> dict:
    """Per-frame accuracy and macro F1 over labelled frames (``labels != IGNORE``).

    Macro F1 averages the per-class F1 over the classes that occur in the labels or the
    predictions (scikit-learn's convention); per-class F1 is listed too.
    """
    return confusion_metrics(confusion(np.asarray(pred), np.asarray(labels), n_classes))


# ---------------------------------------------------------------- model


@dataclass
class EmotionConfig:
    in_dim: int
    n_classes: int
    hidden: int = 64
    kernel: int = 3
    dilations: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    dropout: float = 0.1
    running_norm: bool = False

    @property
    def lookback(self) -> int:
        """Frames before ``t`` that the prediction at ``t`` can see (its receptive field minus one)."""
        return (self.kernel - 1) * sum(self.dilations)

    def to_dict(self) -> dict:
        return asdict(self)


def causal_running_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of frames ``0..t`` for every ``t``: ``(B, T, F) -> (B, T, F)``."""
    counts = torch.arange(1, x.shape[1] + 1, device=x.device, dtype=x.dtype)[None, :, None]
    return torch.cumsum(x, dim=1) / counts


class CausalBlock(nn.Module):
    def __init__(self, channels: int, kernel: int, dilation: int, dropout: float):
        super().__init__()
        self.pad = (kernel - 1) * dilation
        self.conv = nn.Conv1d(channels, channels, kernel, dilation=dilation)
        self.norm = nn.LayerNorm(channels)  # per frame: statistics over time would look ahead
        self.drop = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (B, C, T)
        y = self.conv(nn.functional.pad(h, (self.pad, 0)))
        y = self.norm(y.transpose(1, 2)).transpose(1, 2)
        return h + self.drop(nn.functional.gelu(y))


class EmotionNet(nn.Module):
    """Causal dilated conv classifier: ``(B, T, F)`` z-scored features -> ``(B, T, C)`` logits."""

    def __init__(self, config: EmotionConfig):
        super().__init__()
        self.config = config
        in_dim = config.in_dim * (2 if config.running_norm else 1)
        self.inp = nn.Conv1d(in_dim, config.hidden, 1)
        self.blocks = nn.ModuleList(
            CausalBlock(config.hidden, config.kernel, d, config.dropout) for d in config.dilations
        )
        self.out = nn.Conv1d(config.hidden, config.n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.running_norm:
            x = torch.cat([x, x - causal_running_mean(x)], dim=-1)
        h = self.inp(x.transpose(1, 2))
        for block in self.blocks:
            h = block(h)
        return self.out(h).transpose(1, 2)


# ---------------------------------------------------------------- the classifier: predict, save, load


class EmotionClassifier:
    """A trained :class:`EmotionNet` with its classes, feature extractor and feature statistics."""

    def __init__(
        self, net: EmotionNet, classes: list[str], feature_stats: NormStats, extractor: str, info=None
    ):
        self.net = net.eval()
        self.classes = list(classes)
        self.feature_stats = feature_stats
        self.extractor = extractor
        self.info = dict(info or {})  # training config and results, as in config.json

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @torch.no_grad()
    def predict(self, features: np.ndarray) -> np.ndarray:
        """Per-frame class probabilities ``(T, C)`` of raw (not normalised) features ``(T, F)``."""
        f = np.asarray(features, dtype=np.float32)
        if f.ndim != 2 or f.shape[1] != self.net.config.in_dim:
            raise ValueError(
                f"expected features of shape (T, {self.net.config.in_dim}) from the {self.extractor!r} "
                f"extractor, got {f.shape}"
            )
        x = torch.from_numpy(self.feature_stats.apply(f))[None]
        return torch.softmax(self.net(x)[0], dim=-1).numpy()

    def predict_audio(self, audio, cache: bool = True) -> np.ndarray:
        """Per-frame probabilities of an audio file or a 16 kHz waveform (features through the cache)."""
        from realm.audio import extract

        return self.predict(extract(audio, self.extractor, cache=cache))

    def save(self, run: str | Path) -> None:
        """Write ``config.json``, ``model.safetensors`` and ``feature_stats.npz`` into ``run``, each atomically."""
        from safetensors.torch import save_file

        from realm.io import atomic_path, write_json

        run = Path(run)
        run.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        with atomic_path(run / "model.safetensors") as tmp:
            save_file(state, str(tmp))
        self.feature_stats.save(run / "feature_stats.npz")
        config = {
            **self.info,
            "model_type": "emotion",
            "model": self.net.config.to_dict(),
            "classes": self.classes,
            "feature_extractor": self.extractor,
            "fps": FPS,
        }
        write_json(run / "config.json", config)

    @classmethod
    def load(cls, run: str | Path) -> EmotionClassifier:
        """Load a run directory written by :meth:`save` (errors name the faulty file)."""
        run = check_files(run, CHECKPOINT_FILES, "an emotion classifier run")
        config = read_config(run, "emotion")
        try:
            net = EmotionNet(EmotionConfig(**config["model"]))
            classes, extractor = list(config["classes"]), str(config["feature_extractor"])
        except (ValueError, KeyError, TypeError) as e:
            raise RealmInputError(run / "config.json", f"invalid emotion classifier config ({e})") from None
        load_state(run, net)
        stats = NormStats.load(run / "feature_stats.npz")
        if stats.mean.shape != (net.config.in_dim,):
            raise RealmInputError(
                run / "feature_stats.npz", f"{stats.mean.shape[0]} dims, model expects {net.config.in_dim}"
            )
        info = {k: v for k, v in config.items() if k not in ("model", "classes", "feature_extractor")}
        return cls(net, classes, stats, extractor, info)


def load_emotion(run: str | Path) -> EmotionClassifier:
    """Load a trained emotion classifier from its run directory."""
    return EmotionClassifier.load(run)


