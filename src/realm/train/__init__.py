"""Training: Lightning modules and the fit entry point (``realm train realm``).

REALM trains in two stages (DESIGN section 7):

* **Stage 1** (coarse): 128-frame clips sampled with stride 4; frame 0 is given, the model
  bootstraps and rolls out 8 windows with backprop through the rollout.
  ``L = L_mse + 10 L_vel + 5 L_boundary + 1 L_waypoint + 0.01 (1 - mean alpha)`` with
  ``L_mse = MSE_exp + 5 MSE_rot + MSE_trans`` (rotation axes weighted 2, 2, 1), all in
  normalised space, masked by valid length, frame 0 excluded. AdamW 2e-3, weight decay 1e-4,
  cosine schedule with 10 % linear warm-up per iteration.
* **Stage 2** (refinement, coarse frozen), as the authors train it: L1 on the expression +
  0.5 x adversarial (soft labels: real U(0.9, 1), fake U(0, 0.1)); generator AdamW 2e-3 with
  weight decay 1e-4, discriminator AdamW 5e-4 with betas (0.5, 0.999), both on 10 % warm-up +
  cosine schedules; the discriminator is stepped only while its loss is above 0.3 (``d_gate``).
  Our changes, each a field of :class:`TrainConfig` (docs/realm.md says why):
  ``stage2_rollout="clip"`` trains on segments of whole-clip coarse rollouts, computed once
  (the coarse model is frozen and deterministic), with the refinement's causal context in front,
  exactly as generation refines them; ``d_input="detail"`` shows the discriminator the fast
  detail only; ``w_detail`` holds the slow part of the noise's detail at 0 (no offset: the noise
  adds detail around the coarse motion); ``w_event`` fits the fast events' onsets;
  ``stage2_select="behaviour"`` selects on val FD exp + FD_delta exp + blink-rate error, each
  divided by the coarse model's value.

Checkpoints are selected on ``val`` (stage 1: the validation loss; stage 2: see above) and
never on ``test``. A run directory holds::

    RUN/config.json  model.safetensors  stats.npz  feature_stats.npz   (the exported model)
    RUN/lightning/stage{1,2}/last.ckpt, best.ckpt                       (resume state)
    RUN/logs/                                                          (TensorBoard + CSV)
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Timer
from torch.utils.data import DataLoader

from realm.checkpoint import save
from realm.data.mix import data_config
from realm.data.windows import WindowDataset, clip_features
from realm.errors import check_choices
from realm.io import write_json
from realm.metrics import (
    DETECTORS,
    blink_rate,
    block_columns,
    detect_events,
    detector_columns,
    event_onsets,
    fd_delta_per_clip,
    fd_per_clip,
)
from realm.models.realm import (
    ANY_REACTION,
    REALM,
    REALMConfig,
    refine_prefix,
    refine_sequence,
    windows_carry_state,
)
from realm.motion import FAST_EVENTS, NormStats, events_in_spec
from realm.threads import cpu_attention
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


@dataclass
class TrainConfig:
    data: str = ""
    extractor: str = "logmel"
    store: str = ""  # a store of data's features and motion (`realm data store`): windows are read from
    #   disk a batch at a time, so the data may be larger than memory (realm.data.store)
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
    weight_decay_g: float = 1e-4  # the authors' generator weight decay
    lr_d: float = 5e-4
    betas_d: tuple[float, float] = (0.5, 0.999)
    d_gate: float = 0.3  # the discriminator is stepped only while its loss is above this (the
    #   authors'); 0: every batch
    stage2_rollout: str = "clip"  # "clip" (ours): segments of whole-clip coarse rollouts, as long
    #   as the clips generation refines, with the refinement's context in front; "window" (the
    #   authors'): a 128-frame rollout from each training window's frame 0
    stage1_select: str = "val_loss"  # stage 1's exported checkpoint: "val_loss" (the authors': the lowest
    #   val loss) or "last" (ours: the last validation's; val MSE rewards a quiet model: docs/realm.md)
    stage2_select: str = "behaviour"  # "behaviour" (ours): val FD exp / coarse + FD_delta exp /
    #   coarse + blink-rate error / coarse; "fd_delta": val FD_delta exp alone
    init: str = ""  # a run directory to start from (its weights and normalisation stats); with
    #   stages (2,), the refinement is retrained on that run's coarse model
    seed: int = 23456
    # loss weights
    w_rot: float = 5.0
    rot_axis: tuple[float, float, float] = (2.0, 2.0, 1.0)  # pitch, yaw, roll
    w_vel: float = 10.0
    w_boundary: float = 5.0
    boundary_weights: dict = field(default_factory=lambda: {"expression": 0.5, "rotation": 1.0, "translation": 0.1})
    w_waypoint: float = 1.0
    w_gate: float = 0.01
    teacher_forcing: float = 0.0  # ours: the fraction of stage 1's planned steps (max_steps, else epochs x
    #   batches; the first ones) whose windows read the ground truth's frames as their history instead of
    #   the model's own (REALM.teacher_rollout): the windows then run as one batch, 1.3-1.4x faster a step
    #   with bf16-mixed on a CPU (1.05x in fp32), but the model sees its own output only in the rest of the
    #   steps (exposure bias; docs/realm.md measures the cost). 0 = the authors' backprop through every
    #   rollout; validation always rolls out
    coarse_loss: str = "mse"  # stage 1: "mse" (the paper's); "l2" (ours: each block's per-frame Euclidean
    #   distance, not squared, as the ViCo baseline's loss: a median, not a mean); or "energy" (ours, for a model with
    #   latent_dim > 0): coarse_samples rollouts per clip, scored on the energy_blocks by the energy
    #   score of whole W-frame windows (a strictly proper scoring rule: its optimum is the true
    #   conditional distribution of a window, spread included), the other blocks by MSE
    coarse_samples: int = 2  # rollouts per clip with coarse_loss="energy" (>= 2)
    mean_rollout: bool = False  # ours, with coarse_loss="energy": one more rollout per clip with
    #   every latent 0, scored by the paper's loss (MSE on every block + velocity): the model's
    #   conditional mean, which times the reactions, learnt as the paper learns it, while the
    #   samples learn the spread around it from the energy score (without it the samples' timing
    #   was lost: docs/realm.md)
    energy_blocks: tuple[str, ...] = ("expression", "rotation")  # blocks the energy score scores
    w_energy: float = 1.0  # weight of the energy score (each block's is in RMS units, the rotation's
    #   also times w_rot and the axis weights, as in the MSE)
    energy_exclude: tuple[str, ...] = ()  # ours: fast events (realm.motion.FAST_EVENTS, e.g. "blink")
    #   whose channels leave the energy score and keep the MSE, like a block outside energy_blocks.
    #   The refinement samples those events; a coarse model spread on them as well drew blink-like
    #   swings that the refinement's blinks then added to (raw eyeBlink up to 1.6-1.8 in silence,
    #   docs/realm.md). () = every channel of energy_blocks is scored
    energy_groups: str = "window"  # what one energy-score vector is: "window" (each window's frames x
    #   channels of a block: the joint distribution) or "channel" (each channel's W frames apart, the
    #   scores averaged: proper for each channel's window, not for their joint). A reaction moves a
    #   few of the 52 blendshapes; in one 832-value vector its spread is a small part of the norm
    w_react: float = 1.0  # ours: weight of the reaction classifier's binary cross-entropy (models with
    #   react_gate): each window's logit against whether the ground truth starts a reaction of
    #   react_kinds in it (realm.metrics.detect_events on the de-normalised clip)
    react_kinds: tuple[str, ...] = ("smile", "concern", "brow_raise", "nod")
    freeze: tuple[str, ...] = ()  # REALM modules or parameters kept fixed (dotted names, e.g. "audio_encoder",
    #   "fusion", "decoder.gate"; in stage 2 those under "refinement", e.g. "refinement.template").
    #   Ours: a fine-tune that adds the stochastic generator to a trained model keeps what it hears
    #   and when (the reaction timing lives in the encoder, the shifted-ALiBi fusion and the gate)
    #   and trains the decoder to spread; a stage-2 retrain on a new coarse model can keep the
    #   blink's learned shape and refit when blinks come
    lr_leak: float = 0.005  # learning rate of the rest leak's logits (models with rest_leak). Adam
    #   moves a parameter by about its learning rate a step: 0.005 lets the leak change 10x in
    #   ~460 steps of one sign, where the network's 2e-3 would need ~1000
    w_l1: float = 1.0
    w_adv: float = 0.5
    w_event: float = 1.0  # ours: weight of the fast events' hazard loss (binary cross-entropy of
    #   the onset hazard against the ground truth's onsets; models with refine_events)
    w_detail: float = 10.0  # ours: weight of |running median (0.5 s) of refined - coarse|^2: the
    #   refinement adds detail (what a 0.5 s median removes), never an offset or a drift
    d_input: str = "detail"  # "detail" (ours): the discriminator sees the expression minus its
    #   0.5 s running median, so it judges fast detail only, which is all the refinement may change;
    #   "expression" (the authors'): the expression itself
    # runtime
    max_steps: int = -1  # per stage; -1: run the epochs
    max_minutes: float = 0.0  # > 0: each stage also stops after this much wall-clock training time
    #   (Lightning's max_time; the best checkpoint so far is exported as usual)
    val_every: int = 0  # validate (and maybe keep a checkpoint) every this many batches; 0: per epoch
    num_workers: int = 0
    accelerator: str = "auto"
    devices: str = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "32-true"
    stages: tuple[int, ...] = (1, 2)

    def __post_init__(self):
        check_choices(self, stage2_rollout=("clip", "window"), d_input=("detail", "expression"),
                      stage2_select=("behaviour", "fd_delta"), coarse_loss=("mse", "energy", "l2"),
                      stage1_select=("val_loss", "last"), energy_groups=("window", "channel"))  # fmt: skip
        if self.coarse_loss == "energy" and self.coarse_samples < 2:
            raise ValueError(f"coarse_loss='energy' needs coarse_samples >= 2, got {self.coarse_samples}")
        if not 0.0 <= self.teacher_forcing <= 1.0:
            raise ValueError(f"teacher_forcing is a fraction of stage 1's steps, in [0, 1]; got {self.teacher_forcing}")
        if self.mean_rollout and self.coarse_loss != "energy":
            raise ValueError("mean_rollout is the zero-latent rollout beside the energy score's samples: set coarse_loss='energy'")
        self.energy_blocks = tuple(self.energy_blocks)
        self.energy_exclude = tuple(self.energy_exclude)
        if unknown := [e for e in self.energy_exclude if e not in FAST_EVENTS]:
            raise ValueError(f"energy_exclude: unknown fast events {unknown}; known: {sorted(FAST_EVENTS)}")
        self.react_kinds = tuple(self.react_kinds)
        unknown = [k for k in self.react_kinds if k not in DETECTORS]
        if unknown:
            raise ValueError(f"react_kinds: no detector for {unknown} (known: {', '.join(DETECTORS)})")
        self.freeze = tuple(self.freeze)
        if self.max_minutes < 0:
            raise ValueError(f"max_minutes must be >= 0, got {self.max_minutes}")

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


def prepare_data(cfg: TrainConfig, progress=None, stats: tuple[NormStats, NormStats] | None = None) -> Prepared:
    """Clips, features (cached), normalisation stats (train split only) and windows for train / val.

    ``stats``: (motion stats, feature stats) to use instead of fitting them (a run started from
    another run's weights must keep that run's normalisation)."""
    from realm.data import load_any

    if cfg.store:
        return _prepare_store(cfg, stats)
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
    train_feats = clip_features(train_clips, cfg.extractor, progress=progress)
    val_feats = clip_features(val_clips, cfg.extractor)
    if stats is not None:
        stats, feature_stats = stats
    else:
        stats = NormStats.fit([c.samples().reshape(-1, c.listener.shape[1]) for c in train_clips], spec)
        feature_stats = NormStats.fit(train_feats, cfg.extractor)
    kw = dict(stats=stats, length=cfg.clip_len, history=0, feature_stats=feature_stats)
    train = WindowDataset(train_clips, train_feats, stride=cfg.clip_stride, sample="random", seed=cfg.seed, **kw)
    val = WindowDataset(val_clips, val_feats, stride=cfg.val_stride, sample="first", **kw)
    return Prepared(train, val, stats, feature_stats, spec, train_feats[0].shape[1])


def _prepare_store(cfg: TrainConfig, stats: tuple[NormStats, NormStats] | None) -> Prepared:
    """:func:`prepare_data` from a store: the same windows, read from disk as they are asked for."""
    from realm.data.store import StoreWindows, open_store
    from realm.errors import RealmInputError

    meta, store_stats, store_feature_stats = open_store(cfg.store, cfg.extractor)
    if cfg.data and Path(cfg.data).resolve() != Path(meta["data"]):
        raise RealmInputError(cfg.store, f"the store was built from {meta['data']}, not --data {cfg.data}")
    if "val" not in meta["splits"]:
        raise RealmInputError(cfg.store, "the store has no val split (checkpoints are selected on val, never on test)")
    stats, feature_stats = stats if stats is not None else (store_stats, store_feature_stats)
    kw = dict(stats=stats, length=cfg.clip_len, history=0, feature_stats=feature_stats)
    train = StoreWindows(cfg.store, "train", stride=cfg.clip_stride, sample="random", seed=cfg.seed, **kw)
    val = StoreWindows(cfg.store, "val", stride=cfg.val_stride, sample="first", **kw)
    log.info("store %s: %d train windows over %d clips (%.1f h), read from disk", cfg.store, len(train), train.n_clips,
             meta["splits"]["train"]["frames"] / meta["fps"] / 3600)  # fmt: skip
    return Prepared(train, val, stats, feature_stats, meta["spec"], meta["feature_dim"])


# ---------------------------------------------------------------- stage 2: whole-clip coarse rollouts


@dataclass
class CoarseClip:
    """One listener realisation of a clip, normalised: its coarse rollout from the realisation's
    frame 0 (as generation starts), its features and the ground truth, all (T, .) float32."""

    coarse: np.ndarray
    audio: np.ndarray
    motion: np.ndarray
    events: np.ndarray | None = None  # (T, K) onsets of the model's fast events in the ground truth


@torch.no_grad()
def coarse_rollouts(model: REALM, ds: WindowDataset, all_samples: bool = True, max_clips: int | None = None) -> list[CoarseClip]:
    """The frozen coarse model's rollout over every whole clip of ``ds`` (each listener
    realisation, or only the first), from the realisation's ground-truth frame 0."""
    was = model.training
    model.eval()
    out = []
    for ci in range(ds.n_clips)[:max_clips]:
        f, S = ds.clip_arrays(ci)  # (T, F), (S, T, D)
        audio = ds.feature_stats.apply(f).astype(np.float32)
        S = S if all_samples else S[:1]
        gt = np.stack([ds.stats.apply(m) for m in S]).astype(np.float32)  # (K, T, D)
        a = torch.from_numpy(audio)[None].expand(len(gt), -1, -1)
        coarse, _ = model.rollout(a, frame0=torch.from_numpy(gt[:, 0]))
        ev = [event_onsets(m, model.spec, model.events, model.spec.fps) if model.events else None for m in S]
        out += [CoarseClip(coarse[k].numpy(), audio, gt[k], ev[k]) for k in range(len(gt))]
    model.train(was)
    return out


class CoarseSegments(torch.utils.data.Dataset):
    """Stage-2 training items from whole-clip rollouts: ``length`` scored frames [s, s + length)
    with ``context`` frames before them, exactly what the refinement reads when it generates them.

    Before frame 0 come the frames generation puts there (:func:`realm.models.realm.refine_prefix`:
    coarse frame 0 held, silent audio). Items: ``coarse``, ``audio``, ``motion`` (context +
    length, .), ``mask`` (True on scored frames: real, inside [s, s + length), not frame 0) and,
    for a model with fast events, ``events`` (the ground truth's onsets).
    """

    def __init__(self, clips: list[CoarseClip], length: int, context: int, stride: int):
        self.clips, self.L, self.R = clips, length, max(0, context)
        self.index = [(i, s) for i, c in enumerate(clips) for s in range(0, max(1, len(c.coarse) - length + 1), stride)]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        ci, s = self.index[i]
        c, L, R = self.clips[ci], self.L, self.R
        T = len(c.coarse)
        idx = np.arange(s - R, s + L)
        inside = (idx >= 0) & (idx < T)
        take = np.clip(idx, 0, T - 1)  # before 0: frame 0 held; past the end: the last frame held
        audio = c.audio[take] * inside[:, None]  # silence outside the clip
        mask = inside & (idx >= max(s, 1))
        item = {"coarse": torch.from_numpy(c.coarse[take]), "audio": torch.from_numpy(audio.astype(np.float32)),
                "motion": torch.from_numpy(c.motion[take]), "mask": torch.from_numpy(mask)}  # fmt: skip
        if c.events is not None:  # no onsets outside the clip
            item["events"] = torch.from_numpy((c.events[take] * inside[:, None]).astype(np.float32))
        return item


class WholeClips(torch.utils.data.Dataset):
    """Stage-2 validation: one whole clip per item (batch size 1)."""

    def __init__(self, clips: list[CoarseClip]):
        self.clips = clips

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> dict:
        c = self.clips[i]
        return {"coarse": torch.from_numpy(c.coarse), "audio": torch.from_numpy(c.audio),
                "motion": torch.from_numpy(c.motion), "mask": torch.ones(len(c.coarse), dtype=torch.bool)}  # fmt: skip


@torch.no_grad()
def init_events(model: REALM, clips: list[CoarseClip], keep: tuple[str, ...] = ()) -> dict[str, float]:
    """Start the fast events where the data puts them: each event's template at its onset-triggered
    average of the residual ``motion - coarse`` (the least-squares filter for sparse onsets) and its
    hazard at the data's onset rate. ``keep``: modules left as they are (``TrainConfig.freeze``:
    "refinement.template" keeps an init's template, "refinement.hazard" its hazard). Returns the
    onsets per frame of each event."""
    ref = model.refinement
    if ref is None or not ref.n_events:
        return {}
    keep_template = any(n in ("refinement", "refinement.template") for n in keep)
    keep_hazard = any(n == "refinement" or n.startswith("refinement.hazard") for n in keep)
    k, e = ref.event_k, model.exp
    rates = {}
    for j, name in enumerate(model.events):
        windows, frames = [], 0
        for c in clips:
            res = c.motion[:, e] - c.coarse[:, e]
            frames += len(res)
            for t in np.flatnonzero(c.events[:, j]):
                w = res[t : t + k]
                if len(w) == k:
                    windows.append(w)
        rate = max(len(windows), 1) / max(frames, 1)
        rates[name] = rate
        if windows and not keep_template:  # weight[:, j, k - 1 - d]: the template d frames after the onset
            avg = torch.from_numpy(np.mean(windows, axis=0).T[:, ::-1].copy())  # (on the event's channels)
            ref.template.weight[:, j, :] = avg * ref.event_mask[:, j]
        if not keep_hazard:
            ref.hazard[-1].bias[j] = math.log(rate / (1 - rate))
    return rates


def refinement_scores(refined: list[np.ndarray], gt: list[np.ndarray], spec, fps: float) -> dict[str, float]:
    """What stage 2 is selected on, for de-normalised whole clips (T, D): FD exp (per clip, mean),
    FD_delta exp (per clip, mean) and blinks per minute (the project's blink definition)."""
    e = block_columns(spec, "exp")
    G, P = [g[:, e] for g in gt], [p[:, e] for p in refined]
    rate = blink_rate(refined, spec, fps)
    return {"fd_exp": fd_per_clip(G, P), "fd_delta_exp": fd_delta_per_clip(G, P),
            "blink_rate": float("nan") if rate is None else rate}  # fmt: skip


#: Frame-local speaker features: the encoder needs audio before each window to hear a trigger
#: tau frames before it (whisper's states already carry context).
LOCAL_EXTRACTORS = ("logmel", "vico45", "prosody", "pcen", "logmel_norm", "logmel_prosody")

#: Named recipes of ``realm train realm --preset`` (TrainConfig fields, and REALMConfig's
#: ``audio_context``; explicit options and --set override them). "cpu" is the demo checkpoint's
#: stages 1 and 2 (checkpoints/realm-demo/README.md; its steps 3 and 4 are further runs);
#: "paper" the authors' schedule (batch 512, 200 + 50 epochs, no audio context): GPU-sized. "cpu"
#: exports stage 1's last validation: on the randomised-channel data the lowest val loss came at
#: epoch 3 of 8 with a model that made no nods at all (val MSE rewards a quiet model; docs/realm.md).
#: It also divides rotation's two loss weights by 10 (DESIGN's 5 and 10 make three rotation channels
#: outweigh the 52 expression channels: no concern is learned) and teacher-forces stage 1's first
#: 75 % of steps (faster, reactions timed better): the benchmark's leading realm_rw_sbk (docs/benchmark.md).
#: Runs that retrain stage 1 from a checkpoint on rollouts (the demo's steps 3 and 4) set teacher_forcing=0.
PRESETS: dict[str, dict] = {
    "cpu": {"batch_size": 64, "epochs": 8, "stage2_epochs": 2, "val_every": 50, "audio_context": "local",
            "stage1_select": "last", "w_rot": 0.5, "w_vel": 1.0, "teacher_forcing": 0.75},
    "paper": {"batch_size": 512, "epochs": 200, "stage2_epochs": 50, "audio_context": 0},
}


def preset_fields(name: str, extractor: str) -> dict:
    """The fields of preset ``name`` for ``extractor`` (``audio_context="local"``: 16 frames for
    frame-local features, else 0)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    out = dict(PRESETS[name])
    if out.get("audio_context") == "local":
        out["audio_context"] = 16 if extractor in LOCAL_EXTRACTORS else 0
    return out


def selection_score(scores: dict, coarse: dict, gt_blink_rate: float) -> float:
    """``FD exp / FD exp_coarse + FD_delta exp / FD_delta exp_coarse + |blinks - GT| / |blinks_coarse - GT|``:
    each term 1 for a refinement that changes nothing, lower is better (denominators floored at
    1e-9 and 1 blink per minute; a spec without eyeBlink channels drops the blink term)."""
    out = scores["fd_exp"] / max(coarse["fd_exp"], 1e-9) + scores["fd_delta_exp"] / max(coarse["fd_delta_exp"], 1e-9)
    if math.isfinite(scores["blink_rate"]) and math.isfinite(gt_blink_rate):
        out += abs(scores["blink_rate"] - gt_blink_rate) / max(abs(coarse["blink_rate"] - gt_blink_rate), 1.0)
    return float(out)


# ---------------------------------------------------------------- losses


class REALMLoss:
    """Stage-1 loss terms in normalised space (block layout from the spec)."""

    def __init__(self, model: REALM, cfg: TrainConfig):
        self.spec, self.cfg, self.W, self.K = model.spec, cfg, model.config.window, model.config.history
        self.react_shift = model.config.react_shift
        self.rot = self.spec.block("rotation").slice if self.spec.has("rotation") else None
        self.w, self.wb = self._dim_weights(), self._dim_weights(boundary=True)  # computed once
        self.axis = torch.tensor(cfg.rot_axis)
        # the energy score's blocks: (slice, weight, per-dimension scale); the MSE skips them
        self.energy = []
        if cfg.coarse_loss == "energy":
            for name in cfg.energy_blocks:
                if not self.spec.has(name):
                    continue
                b = self.spec.block(name)
                scale = torch.sqrt(self.axis) if name == "rotation" else torch.ones(b.size)
                self.energy.append((b.slice, cfg.w_rot if name == "rotation" else 1.0, scale))
        # coarse_loss="l2": each block's per-frame distance, not squared, in RMS units (rotation: times w_rot,
        #   the axis weights inside), as ViCo's baseline scores its blocks
        self.l2_blocks = [(b.slice, cfg.w_rot if name == "rotation" else 1.0,
                           self.axis if name == "rotation" else torch.ones(b.size))
                          for name, b in ((n, self.spec.block(n)) for n, _ in self.spec.blocks)]  # fmt: skip
        self.w_mse = self.w.clone()
        for sl, _, _ in self.energy:
            self.w_mse[sl] = 0.0
        # energy_exclude: those channels out of the energy score (scale 0) and back in the MSE
        for i in [self.spec.channel(ch) for e in events_in_spec(self.spec, cfg.energy_exclude) for ch in FAST_EVENTS[e]]:
            for sl, _, scale in self.energy:
                if sl.start <= i < sl.stop:
                    scale[i - sl.start] = 0.0
                    self.w_mse[i] = self.w[i]

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
        # pred (R B, T, D): R rollouts of each of the B clips of gt (B, T, D), mask (B, T): the
        # samples, then (mean_rollout) the zero-latent rollout
        B = gt.shape[0]
        R = pred.shape[0] // B
        m = mask.clone().float()
        m[:, 0] = 0  # frame 0 is given, never scored
        n = m.sum().clamp(min=1)
        samples, mean = (pred[:-B], pred[-B:]) if self.cfg.mean_rollout else (pred, None)
        S = samples.shape[0] // B
        energy = self.energy if S > 1 else []
        w = (self.w_mse if energy else self.w).to(pred.device)
        err = (samples.unflatten(0, (S, -1)) - gt) ** 2  # (S, B, T, D)
        mse = (err * w * m[..., None]).sum() / (n * S)
        if mean is not None:  # the conditional mean, scored as the paper scores its model
            mse = mse + (((mean - gt) ** 2) * self.w.to(pred.device) * m[..., None]).sum() / n
        out = {"mse": mse}
        if self.cfg.coarse_loss == "l2":  # the MSE is logged; the loss takes each block's unsquared distance
            out["l2"] = sum(wt * ((err[..., sl] * ax.to(pred.device)).mean(-1) + 1e-8).sqrt() for sl, wt, ax in self.l2_blocks)
            out["l2"] = (out["l2"] * m).sum() / (n * S)  # (S, B, T) -> the mean over scored frames
        if energy:
            out["energy"] = sum(wt * self.energy_score(samples, gt, m, sl, scale) for sl, wt, scale in energy)
        if self.rot is not None:
            axis = self.axis.to(pred.device)
            # with samples, on the zero-latent rollout or else the samples' mean: the velocity loss
            # then leaves the spread to the energy score
            if mean is None:
                mean = samples.unflatten(0, (S, -1)).mean(0)
            dv = torch.diff(mean[..., self.rot], dim=1) - torch.diff(gt[..., self.rot], dim=1)
            mv = m[:, 1:] * m[:, :-1]
            out["vel"] = ((dv**2) * axis * mv[..., None]).sum() / (mv.sum().clamp(min=1) * 3)
            if aux["waypoint"] is not None:  # (B or R B, 3): shared by rollouts of one clip
                wp = aux["waypoint"]
                out["waypoint"] = F.mse_loss(wp, gt[:, self.W - 1, self.rot].repeat(wp.shape[0] // B, 1))
        wb = self.wb.to(pred.device)
        terms = []
        for k, (hist, win) in enumerate(aux["bounds"][1:], start=1):  # windows after the bootstrap
            valid = mask[:, k * self.W].float().repeat(R)
            if valid.sum() == 0:
                continue
            pos = ((win[:, 0] - hist[:, -1]) ** 2 * wb).sum(-1)
            vel = (((win[:, 1] - win[:, 0]) - (hist[:, -1] - hist[:, -2])) ** 2 * wb).sum(-1)
            terms.append(((pos + vel) * valid).sum() / valid.sum())
        out["boundary"] = torch.stack(terms).mean() if terms else pred.sum() * 0
        alpha = aux["alpha"][..., 0]  # (R B, L): each window's K gate values in turn (cut at T frames)
        first = torch.arange(alpha.shape[1], device=mask.device) // self.K * self.W  # each value's window's first frame
        mS = mask[:, first.clamp(max=mask.shape[1] - 1)].repeat(R, 1)  # counted where that frame is scored
        out["gate"] = 1 - (alpha * mS).sum() / mS.sum().clamp(min=1)
        for key in ("react", "kind"):  # react_gate's (R B, n) logits against (B, n) labels; react_condition's (R B, n, k)
            if f"{key}_logit" not in aux or f"{key}_labels" not in aux:
                continue
            logit = aux[f"{key}_logit"]
            y = aux[f"{key}_labels"].to(pred.device).repeat(R, *[1] * (logit.dim() - 1))
            n = logit.shape[1]
            if self.react_shift:  # window w's label spans [w W + s, (w + 1) W + s): valid if its last frame is scored
                last = mask[:, self.W + self.react_shift - 1 :: self.W][:, :n]
                valid = F.pad(last.float(), (0, n - last.shape[1])).repeat(R, 1)  # past the clip: not scored
            else:
                valid = mask[:, :: self.W][:, :n].float().repeat(R, 1)  # windows with a scored frame
            valid = valid.view(*valid.shape, *[1] * (logit.dim() - 2)).expand_as(logit)
            bce = F.binary_cross_entropy_with_logits(logit.float(), y, reduction="none")
            out[key] = (bce * valid).sum() / valid.sum().clamp(min=1)
        c = self.cfg
        out["loss"] = (
            out.get("l2", out["mse"]) + c.w_energy * out.get("energy", 0) + c.w_vel * out.get("vel", 0)
            + c.w_boundary * out["boundary"] + c.w_waypoint * out.get("waypoint", 0) + c.w_gate * out["gate"]
            + c.w_react * (out.get("react", 0) + out.get("kind", 0))
        )  # fmt: skip
        return out

    def energy_score(self, pred, gt, m, sl: slice, scale: torch.Tensor) -> torch.Tensor:
        """Energy score of whole W-frame windows of one block, in RMS units:
        ``ES = mean_i |x_i - y| - 1/2 mean_{i != j} |x_i - x_j|``, where x_i (i = 1..S) are the
        samples' windows and y the ground truth's, each window's frames one vector (W x block size,
        times ``scale`` per dimension; frames outside the mask zeroed), |.| the Euclidean norm over
        sqrt(W x size). Averaged over windows with a scored frame. With ``energy_groups="channel"``
        each channel's W frames are a vector of their own (|.| over sqrt(W)) and the channels'
        scores are averaged. pred (S B, T, D), gt (B, T, D), m (B, T) the scored frames."""
        S, W = pred.shape[0] // gt.shape[0], self.W
        B, T = m.shape
        n = T // W
        scale = scale.to(pred.device)
        x = (pred[:, : n * W, sl] * scale * m.repeat(S, 1)[:, : n * W, None]).reshape(S, B, n, W, -1)  # (S, B, n, W, E)
        y = (gt[:, : n * W, sl] * scale * m[:, : n * W, None]).reshape(B, n, W, -1)
        if self.cfg.energy_groups == "channel":  # RMS over each channel's frames, then the mean over channels
            norm = lambda d: torch.sqrt(d.pow(2).mean(-2) + 1e-8).mean(-1)  # noqa: E731
        else:  # RMS over the whole window (smooth at 0)
            norm = lambda d: torch.sqrt(d.pow(2).mean((-2, -1)) + 1e-8)  # noqa: E731
        fit = norm(x - y).mean(0)  # (B, n)
        pairs = [(i, j) for i in range(S) for j in range(i + 1, S)]
        spread = torch.stack([norm(x[i] - x[j]) for i, j in pairs]).mean(0)
        valid = (m[:, : n * W].reshape(B, n, W).sum(-1) > 0).float()
        return ((fit - 0.5 * spread) * valid).sum() / valid.sum().clamp(min=1)


# ---------------------------------------------------------------- Lightning module


#: Frames of the running median that separates detail from slow motion (0.5 s at 30 fps): a
#: blink (150-200 ms) passes as detail, a smile or a head turn does not.
DETAIL_MEDIAN = 15


def running_median(x: torch.Tensor, w: int = DETAIL_MEDIAN) -> torch.Tensor:
    """Centred running median over ``w`` frames (odd; edges replicated) of x (B, T, C)."""
    r = w // 2
    xp = F.pad(x.transpose(1, 2), (r, r), mode="replicate")  # (B, C, T + 2r)
    return xp.unfold(2, w, 1).median(dim=-1).values.transpose(1, 2)


def warmup_cosine(opt: torch.optim.Optimizer, total: int, warmup: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup`` x ``total`` steps, then cosine to 0 at ``total`` (per iteration)."""
    total = max(1, int(total))
    warm = max(1, int(warmup * total))

    def schedule(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    return torch.optim.lr_scheduler.LambdaLR(opt, schedule)


class REALMTask(L.LightningModule):
    def __init__(self, model_cfg: dict, train_cfg: dict, stage: int = 1):
        super().__init__()
        self.save_hyperparameters()
        self.model = REALM(REALMConfig(**model_cfg))
        self.cfg = TrainConfig.from_dict(train_cfg)
        self.stage = stage
        self._steps = 1  # the stage's planned optimizer steps (configure_optimizers): teacher_forcing's share
        #   of them (outside a Trainer: 1, so a step is teacher-forced whenever teacher_forcing > 0)
        self.loss = REALMLoss(self.model, self.cfg)
        # Parameters a stage does not train are frozen (DDP requires every trained parameter to get a gradient).
        unused = [self.model.refinement] if stage == 1 else []
        if not self.model.config.use_gate:
            unused.append(self.model.decoder.gate)
        frozen: list[torch.nn.Parameter] = []
        params = dict(self.model.named_parameters())
        modules = dict(self.model.named_modules())
        for name in self.cfg.freeze:  # a module or a single parameter (e.g. "leak_logit", "decoder.queries")
            if name in params:
                frozen.append(params[name])
            elif name in modules:
                frozen += list(modules[name].parameters())
            else:
                names = ", ".join(n for n, _ in self.model.named_children())
                raise ValueError(f"freeze: REALM has no module or parameter {name!r} (top level: {names})")
        for module in unused:
            for p in module.parameters() if module is not None else []:
                p.requires_grad_(False)
        for p in frozen if stage == 1 else []:
            p.requires_grad_(False)
        if stage == 2:
            from realm.models.realm import Discriminator

            self.disc = Discriminator(self.model.spec.block(self.model.config.refine_block).size)
            self.automatic_optimization = False
            for p in self.model.parameters():
                p.requires_grad_(False)
            for p in self.model.refinement.parameters():
                p.requires_grad_(True)
            for p in frozen:  # e.g. "refinement.template": a fine-tune keeps the blink's shape
                p.requires_grad_(False)
        # stage-2 validation, set by train_realm: motion stats (to score de-normalised clips) and
        # the coarse model's own scores on val (what the selection divides by)
        self.stats: NormStats | None = None
        self.val_reference: dict | None = None
        self._val: list = []

    # -- stage 1
    def _stage1(self, batch):
        a, f0 = batch["audio"], batch["motion"][:, 0]
        mc = self.model.config
        R, latents, kinds = 1, None, None
        B, n = a.shape[0], math.ceil(a.shape[1] / mc.window)
        if self.cfg.coarse_loss == "energy":  # coarse_samples rollouts of each clip, their latents
            # drawn, then (mean_rollout) one with latents 0; one encoding of the audio for all
            S = self.cfg.coarse_samples
            R = S + self.cfg.mean_rollout
            latents = torch.randn(R * B, n, mc.latent_width, device=a.device)
            if self.cfg.mean_rollout:
                latents[S * B :] = 0
        if mc.react_condition:  # the decoder is told which kinds the ground truth starts in each window
            kind_labels = self.react_labels(batch["motion"], n, mc.react_condition)  # (B, n, k)
            kinds = kind_labels.to(a.device).repeat(R, 1, 1)
        if self._teacher_forced():  # every window at once, the ground truth before it
            motion, aux = self.model.teacher_rollout(a, batch["motion"], latents=latents, samples=R, kinds=kinds)
        else:
            motion, aux = self.model.rollout(a, frame0=f0, latents=latents, samples=R, kinds=kinds)  # (R B, T, D)
        if "react_logit" in aux:
            aux["react_labels"] = self.react_labels(batch["motion"], aux["react_logit"].shape[1])
        if kinds is not None:
            aux["kind_labels"] = kind_labels
        return self.loss(motion, batch["motion"], batch["mask"], aux)

    def _teacher_forced(self) -> bool:
        """Whether this training step reads the ground truth as each window's history (``teacher_forcing`` F):
        the first F of the stage's planned steps and, under a wall-clock budget (``max_minutes``: Lightning's
        Timer, resumed runs included), of its time too, whichever ends first."""
        f = self.cfg.teacher_forcing
        if not self.training or f <= 0 or self.global_step >= f * self._steps:
            return False
        timer = next((cb for cb in self.trainer.callbacks if isinstance(cb, Timer)), None) if self._trainer else None
        left = None if timer is None else timer.time_remaining("train")
        if left is None:
            return True
        used = timer.time_elapsed("train")
        return used < f * (used + left)

    def react_labels(self, motion: torch.Tensor, n: int, kinds: tuple[str, ...] | None = None) -> torch.Tensor:
        """(B, n) 1 where the ground truth starts a reaction of ``react_kinds`` in window w, else 0 (the
        react_gate classifier's labels); with ``kinds``, (B, n, k): 1 where it starts one of kind k of
        ``kinds`` (react_condition's). From the de-normalised clips' detected events."""
        if self.stats is None:
            raise RuntimeError("the reaction labels need the motion stats (task.stats)")
        if kinds is None:
            return self.react_labels(motion, n, tuple(self.cfg.react_kinds)).amax(-1)
        W, shift = self.model.config.window, self.model.config.react_shift
        named = [k for k in kinds if k != ANY_REACTION]  # ANY_REACTION: any of react_kinds or of these
        det = list(dict.fromkeys(named + (list(self.cfg.react_kinds) if ANY_REACTION in kinds else [])))
        y = np.zeros((motion.shape[0], n, len(det)), np.float32)
        for b, x in enumerate(motion.detach().float().cpu().numpy()):
            for e in detect_events(self.stats.invert(x), self.model.spec, self.model.spec.fps, det):
                w = (e["frame"] - shift) // W  # react_shift: window w covers [w W + shift, (w + 1) W + shift)
                if 0 <= w < n:
                    y[b, w, det.index(e["kind"])] = 1.0
        cols = [y.max(-1) if k == ANY_REACTION else y[..., det.index(k)] for k in kinds]
        return torch.from_numpy(np.stack(cols, -1))

    # -- stage 2
    def _stage2_batch(self, batch) -> dict:
        """A stage-2 batch with ``coarse`` (B, R + L, D): as it comes (``stage2_rollout="clip"``), or
        the authors' rollout of the window from its frame 0, with the refinement's context frames
        (frame 0 held, silence) in front; ``events`` (B, R + L, K): the ground truth's onsets of the
        model's fast events."""
        if "coarse" in batch:
            return batch
        self.model.eval()  # the frozen coarse model runs deterministically
        with torch.no_grad():
            coarse, _ = self.model.rollout(batch["audio"], frame0=batch["motion"][:, 0])
        self.model.refinement.train(self.training)
        R = self.model.refine_context
        c, a = refine_prefix(coarse, batch["audio"], R)
        m, _ = refine_prefix(batch["motion"], batch["audio"][..., :0], R)
        mask = batch["mask"].clone()
        mask[:, 0] = False  # frame 0 is given, never scored
        out = {"coarse": c, "audio": a, "motion": m, "mask": torch.cat([mask.new_zeros(len(mask), R), mask], 1)}
        if self.model.events and self.stats is not None:
            raw = [self.stats.invert(x.cpu().numpy()) for x in batch["motion"]]
            ev = np.stack([event_onsets(x, self.model.spec, self.model.events, self.model.spec.fps) for x in raw])
            out["events"] = F.pad(torch.from_numpy(ev), (0, 0, R, 0)).to(c.device)
        return out

    def _masked_mean(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # x (B, T), mask (B, T)
        m = mask.float()
        return (x * m).sum() / m.sum().clamp(min=1)

    def _stage2_step(self, batch) -> dict[str, torch.Tensor]:
        opt_g, opt_d = self.optimizers()
        b = self._stage2_batch(batch)
        c, a, gt, mask = b["coarse"], b["audio"], b["motion"], b["mask"]
        e, L, cfg = self.model.exp, self.cfg.clip_len, self.cfg
        # fast events at the ground truth's onsets (teacher forcing); the noise does the rest
        refined, parts = self.model.refine(c, a, events=b.get("events"), parts=True)  # (B, R + L, D)
        logit, event_term = parts["onset_logit"], parts["events"]
        real, fake = gt[:, -L:, e], refined[:, -L:, e]
        if cfg.d_input == "detail":  # what the refinement may change: the fast detail
            real, fake = real - running_median(real), fake - running_median(fake)
        B = real.shape[0]
        # discriminator, soft labels; stepped only while its loss is above d_gate (the authors')
        d_loss = F.binary_cross_entropy_with_logits(
            self.disc(real), torch.empty(B, device=real.device).uniform_(0.9, 1.0)
        ) + F.binary_cross_entropy_with_logits(
            self.disc(fake.detach()), torch.empty(B, device=real.device).uniform_(0.0, 0.1)
        )
        d_seen = self.trainer.strategy.reduce(d_loss.detach(), reduce_op="mean")  # every rank decides alike
        d_on = bool(d_seen > cfg.d_gate)
        opt_d.zero_grad()  # also clears what the generator's adversarial term left in D
        if d_on:
            self.manual_backward(d_loss)
        opt_d.step()
        # generator (the refinement)
        out = {"l1_exp": self._masked_mean((refined[..., e] - gt[..., e]).abs().mean(-1), mask)}
        out["adv"] = F.binary_cross_entropy_with_logits(self.disc(fake), torch.ones(B, device=real.device))
        g_loss = cfg.w_l1 * out["l1_exp"] + cfg.w_adv * out["adv"]
        if cfg.w_detail > 0:  # the slow part (a 0.5 s running median) of the noise's detail stays 0
            detail = refined[..., e] - c[..., e] - (0 if event_term is None else event_term)
            slow = running_median(detail)  # (the events' term has zero mean by construction)
            out["offset"] = self._masked_mean(slow.pow(2).mean(-1), mask)
            g_loss = g_loss + cfg.w_detail * out["offset"]
        if logit is not None and cfg.w_event > 0 and "events" in b:
            bce = F.binary_cross_entropy_with_logits(logit, b["events"].to(logit.dtype), reduction="none").mean(-1)
            out["event_bce"] = self._masked_mean(bce, mask)
            g_loss = g_loss + cfg.w_event * out["event_bce"]
        opt_g.zero_grad()
        self.manual_backward(g_loss)
        opt_g.step()
        for sched in self.lr_schedulers():
            sched.step()
        out.update(d_loss=d_loss.detach(), d_on=torch.tensor(float(d_on)), loss=g_loss.detach())
        return out

    def on_train_batch_start(self, batch, batch_idx):
        # every draw of the step (dropout, latents, the refinement's noise, the discriminator's label
        # noise) from (seed, stage, epoch, batch): a resumed run draws what an uninterrupted one does
        seed_all(seed_key(self.cfg.seed, self.stage, self.current_epoch, batch_idx, self.global_rank))

    def training_step(self, batch, batch_idx):
        B = len(batch["mask"])
        with cpu_attention(self.device):  # the same maths, faster on a CPU (realm.threads)
            out = self._stage1(batch) if self.stage == 1 else self._stage2_step(batch)
        self.log_dict({f"train/{k}": v for k, v in out.items()}, prog_bar=False, batch_size=B)
        self.log("loss", out["loss"], prog_bar=True, batch_size=B)
        return out["loss"] if self.stage == 1 else None

    def validation_step(self, batch, batch_idx):
        B = len(batch["mask"])
        if self.stage == 1:
            with cpu_attention(self.device):
                out = self._stage1(batch)
            self.log("val/loss", out["loss"], prog_bar=True, batch_size=B, sync_dist=True)
            self.log("val/mse", out["mse"], batch_size=B, sync_dist=True)
            return
        for i in range(B):  # whole clips, refined exactly as generation refines them (seed 0)
            n = int(batch["mask"][i].sum())
            refined = refine_sequence(self.model, batch["coarse"][i : i + 1, :n], batch["audio"][i : i + 1, :n])
            self._val.append((self.stats.invert(batch["motion"][i, :n].cpu().numpy()),
                              self.stats.invert(refined[0].cpu().numpy())))  # fmt: skip

    def on_validation_epoch_end(self):
        if self.stage == 2 and self._val:
            sc = refinement_scores([p for _, p in self._val], [g for g, _ in self._val], self.model.spec, self.model.spec.fps)
            self.log("val/fd_exp", sc["fd_exp"], sync_dist=True)
            self.log("val/fd_delta", sc["fd_delta_exp"], prog_bar=True, sync_dist=True)
            if math.isfinite(sc["blink_rate"]):
                self.log("val/blink_rate", sc["blink_rate"], sync_dist=True)
            if self.val_reference is not None:
                ref = self.val_reference
                self.log("val/select", selection_score(sc, ref["coarse"], ref["gt_blink_rate"]), prog_bar=True, sync_dist=True)
        self._val = []

    def configure_optimizers(self):
        c = self.cfg
        total = self._steps = self.trainer.estimated_stepping_batches
        if self.stage == 2:
            if self.trainer.max_steps > 0:  # stage 2 counts two optimizer steps (G and D) per batch
                total = max(1, total // 2)
            opt_g = torch.optim.AdamW(self.model.refinement.parameters(), lr=c.lr_g, weight_decay=c.weight_decay_g)
            opt_d = torch.optim.AdamW(self.disc.parameters(), lr=c.lr_d, betas=tuple(c.betas_d))
            return [opt_g, opt_d], [warmup_cosine(opt_g, total, c.warmup), warmup_cosine(opt_d, total, c.warmup)]
        own = ("leak_logit", "offset_logit")  # the per-channel decays: their own learning rate, no decay
        leak = [p for n, p in self.model.named_parameters() if n in own]
        rest = [p for n, p in self.model.named_parameters() if n not in own]
        groups = [{"params": rest}] + ([{"params": leak, "lr": c.lr_leak, "weight_decay": 0.0}] if leak else [])
        opt = torch.optim.AdamW(groups, lr=c.lr, weight_decay=c.weight_decay)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": warmup_cosine(opt, total, c.warmup), "interval": "step"}}


# ---------------------------------------------------------------- starting from another run; the fit


#: Coarse-model fields a stage-1 retraining from ``--init`` takes from the command: additions to
#: the init run's architecture, whose new parameters start from their initialisation.
COARSE_ADDED_FIELDS = ("latent_dim", "latent_gate", "react_gate", "react_floor", "latent_branch", "branch_queries",
                       "branch_form", "branch_into", "offset_decay_init", "offset_bounds", "offset_floor",
                       "branch_blocks", "branch_exclude", "react_shift", "react_condition", "rest_leak",
                       "rest_leak_init")  # fmt: skip
#: Fields a run started from ``--init`` takes from the command when the command sets them (differ
#: from the default): speed and generation knobs, which change no weight.
COMMAND_FIELDS = ("fast_train", "latent_temperature", "kind_temperature", "kind_draw", "react_threshold")
#: REALMConfig fields of the refinement: the ones a run started from another run (``init``) takes
#: from the command instead of from that run, since stage 2 retrains the refinement.
REFINE_FIELDS = ("use_refinement", "refine_dim", "refine_ff", "refine_block", "refine_mode", "refine_context",
                 "refine_chunk", "refine_events", "event_template", "event_refractory", "detail")  # fmt: skip


def _from_init(cfg: TrainConfig, model_cfg: REALMConfig) -> tuple[REALMConfig, dict, tuple[NormStats, NormStats]]:
    """Model config, weights and stats of ``cfg.init``: its coarse model as it is, the refinement
    fields from ``model_cfg``; refinement weights are kept only when stage 2 is not retrained."""
    from realm.checkpoint import load
    from realm.generate import Listener

    lis = load(cfg.init)
    if not isinstance(lis, Listener):
        raise ValueError(f"{cfg.init}: --init needs a REALM run, not a {lis.name!r} run")
    if lis.extractor != cfg.extractor:
        raise ValueError(f"{cfg.init}: the run uses {lis.extractor!r} features, the command {cfg.extractor!r}")
    ours, theirs, default = model_cfg.to_dict(), lis.model.config.to_dict(), REALMConfig().to_dict()
    keep = REFINE_FIELDS + (COARSE_ADDED_FIELDS if 1 in cfg.stages else ())
    keep += tuple(k for k in COMMAND_FIELDS if ours[k] != default[k])
    for k in ours.keys() - set(keep) - {"spec", "audio_dim"}:  # set on the command, and not taken: refuse
        if ours[k] != default[k] and ours[k] != theirs[k]:
            raise ValueError(f"{k}={ours[k]!r}: a run started from {cfg.init} keeps that run's {k} ({theirs[k]!r}); "
                             f"with stages {list(cfg.stages)} the command may set {', '.join(keep)}")  # fmt: skip
    mcfg = REALMConfig(**{**theirs, **{k: ours[k] for k in keep}})
    state = {k: v for k, v in lis.model.state_dict().items() if not (2 in cfg.stages and k.startswith("refinement."))}
    return mcfg, state, (lis.stats, lis.feature_stats)


def _stage2_data(task: REALMTask, prep: Prepared, cfg: TrainConfig):
    """Stage-2 train and val datasets, and the coarse model's own val scores (set on ``task``)."""
    val = coarse_rollouts(task.model, prep.val, all_samples=False)
    if cfg.stage2_rollout == "clip":
        clips = coarse_rollouts(task.model, prep.train)
        train = CoarseSegments(clips, cfg.clip_len, task.model.refine_context, cfg.clip_stride)
    else:
        clips = coarse_rollouts(task.model, prep.train, max_clips=8) if task.model.events else []  # event inits
        train = prep.train
    rates = init_events(task.model, clips, keep=cfg.freeze)
    spec, fps = task.model.spec, task.model.spec.fps
    gt = [prep.stats.invert(c.motion) for c in val]
    rate = blink_rate(gt, spec, fps)
    task.val_reference = {"coarse": refinement_scores([prep.stats.invert(c.coarse) for c in val], gt, spec, fps),
                          "gt_blink_rate": float("nan") if rate is None else rate}  # fmt: skip
    log.info("stage 2: %d training items, event onsets per frame %s, coarse model on val: %s", len(train), rates,
             task.val_reference)  # fmt: skip
    return train, WholeClips(val)


#: TrainConfig fields a resumed run may change: where it runs, which stages, its step budget.
RUNTIME_FIELDS = ("num_workers", "accelerator", "devices", "strategy", "num_nodes", "stages", "max_steps", "max_minutes")


def _resumed_train_config(cfg: TrainConfig, saved: dict | None) -> TrainConfig:
    """``cfg`` with the saved run's training fields (a resumed run keeps its recipe: batch size,
    epochs, schedule...); only :data:`RUNTIME_FIELDS` come from the command. Logs what differed."""
    if not saved:
        return cfg
    now = jsonable(asdict(cfg))
    differ = sorted(k for k in saved if k in now and k not in RUNTIME_FIELDS and saved[k] != now[k])
    if differ:
        log.warning("resuming with the run's saved training config (%s differ on the command line; ignored)", ", ".join(differ))
    keep = {k: v for k, v in saved.items() if k in now and k not in RUNTIME_FIELDS}
    return TrainConfig.from_dict({**now, **keep})


def train_realm(
    cfg: TrainConfig,
    model_cfg: REALMConfig,
    out: str | Path,
    resume: bool = False,
    progress: bool = True,
    command: str | None = None,
) -> dict:
    """Fit stage 1 then stage 2 (as ``cfg.stages`` says); export the best-on-val model to ``out``.

    With ``cfg.init`` the run starts from another run's weights and normalisation: ``stages=(2,)``
    retrains the refinement on that run's coarse model (whose architecture fields are kept).
    ``resume`` continues the run in ``out`` exactly as if it had not stopped (a SIGKILL anywhere
    included). Ctrl-C saves the current step and raises :class:`realm.train.harness.TrainingInterrupted`, after printing
    one line that says how to resume.
    """
    try:
        return _train_realm(cfg, model_cfg, out, resume, progress, command)
    except (StopRequested, KeyboardInterrupt) as e:
        raise interrupted(out, command, e) from None


def _train_realm(cfg: TrainConfig, model_cfg: REALMConfig, out, resume: bool, progress: bool, command: str | None) -> dict:
    out = Path(out)
    if launched_rank() == 0 and out.exists() and any(out.iterdir()) and not resume:  # ranks > 0 join rank 0's run
        raise FileExistsError(f"{out}: run directory exists and is not empty (use --resume to continue it)")
    state_path = out / "train_state.json"
    state = read_state(state_path) if resume and state_path.exists() else {"done": []}
    cfg = _resumed_train_config(cfg, state.get("train"))  # the run's own recipe, not today's defaults
    init_state = init_stats = None
    if cfg.init:
        model_cfg, init_state, init_stats = _from_init(cfg, model_cfg)
    if cfg.coarse_loss == "energy" and 1 in cfg.stages and not model_cfg.latent_dim:
        raise ValueError("coarse_loss='energy' scores samples: it needs a model with latent_dim > 0")
    if cfg.teacher_forcing > 0 and 1 in cfg.stages and windows_carry_state(model_cfg):
        raise ValueError("teacher_forcing runs a clip's windows at once, but this model's windows carry state to the "
                         "next (branch_into='offset', or latent_branch with react_shift): it needs teacher_forcing=0")  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    prep = prepare_data(cfg, stats=init_stats)
    model_cfg.spec, model_cfg.audio_dim = prep.spec, prep.audio_dim
    if model_cfg.react_gate and 1 in cfg.stages:
        _check_react_kinds(cfg.react_kinds, prep.spec)
    if model_cfg.react_condition:
        _check_condition_kinds(model_cfg.react_condition, prep.spec)
    if resume and state_path.exists():
        saved = state.get("model")
        if saved and saved != model_cfg.to_dict():
            log.warning("resuming with the saved model config (command-line model options ignored)")
            model_cfg = REALMConfig(**saved)
    state.update({"model": model_cfg.to_dict(), "train": jsonable(asdict(cfg))})
    loader_kw = dict(batch_size=cfg.batch_size, num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0)
    results = {}
    prev_best = stopped = None
    for stage in cfg.stages:
        if stage == 2 and not model_cfg.use_refinement:
            continue
        if stopped:  # Ctrl-C in the last batch of the stage before: it finished, the next one waits
            raise StopRequested(stopped)
        ckdir = out / "lightning" / f"stage{stage}"
        monitor = "val/loss" if stage == 1 else ("val/select" if cfg.stage2_select == "behaviour" else "val/fd_delta")
        if stage in state["done"]:
            prev_best = state.get(f"best{stage}")
            log.info("stage %d already done (%s)", stage, prev_best)
            continue
        # each stage from its own seed: its initialisation, the stage-2 hand-over (coarse rollouts)
        # and data do not depend on what ran before in this process (a resumed run skips that)
        seed_all(seed_key(cfg.seed, stage))
        task = REALMTask(model_cfg.to_dict(), jsonable(asdict(cfg)), stage)
        task.stats = prep.stats  # de-normalises clips: stage 2's events and scores, react_gate's labels
        best1 = prev_best or state.get("best1")
        if stage == 2 and best1 is not None:
            task.model.load_state_dict(best_model_state(best1), strict=False)
        elif init_state is not None:
            task.model.load_state_dict(init_state, strict=False)
        elif stage == 2:
            raise FileNotFoundError(f"{out}: stage 2 needs a finished stage 1 (no best stage-1 checkpoint; or use --init RUN)")
        if stage == 1 and hasattr(task.model, "out_bounds"):  # the offset's bounds, from this data's stats
            task.model.set_out_bounds(prep.stats)
        if stage == 1:
            train_ds, val_ds, val_kw = prep.train, prep.val, loader_kw
        else:
            train_ds, val_ds = _stage2_data(task, prep, cfg)
            val_kw = {**loader_kw, "batch_size": 1}  # whole clips of different lengths
        train_dl = ResumableLoader(train_ds, seed_key(cfg.seed, stage), drop_last=len(train_ds) > cfg.batch_size, **loader_kw)
        val_dl = DataLoader(val_ds, shuffle=False, **val_kw)
        ckpt = ResumableCheckpoint(ckdir, monitor, loader=train_dl, label=f"stage {stage}")
        trainer = make_trainer(
            cfg, out, f"stage{stage}", ckpt, progress, train_dl,
            max_epochs=cfg.epochs if stage == 1 else cfg.stage2_epochs,
            # stage 2 steps two optimizers per batch: the budget counts batches in both stages
            max_steps=cfg.max_steps * (2 if stage == 2 and cfg.max_steps > 0 else 1),
            max_minutes=cfg.max_minutes,
            unused_parameters=stage == 2,  # stage 2 is a GAN: each of its two backward passes reaches one network
            # a step budget shorter than an epoch still ends with a validation
            val_check_interval=cfg.val_every if cfg.val_every > 0 else cfg.max_steps if cfg.max_steps > 0 else None,
            deterministic=False,
        )  # fmt: skip
        t0 = time.time()
        best = fit_resumable(trainer, task, train_dl, val_dl, ckpt, resume)
        if stage == 1 and cfg.stage1_select == "last":
            best = ckpt.last_path  # written at every validation: the last validated weights
        stopped = ckpt.interrupted and f"stage {stage} finished"
        prev_best = best  # every rank goes on to the next stage; only rank 0 writes
        if trainer.global_rank != 0:
            continue
        score = ckpt.best_model_score
        results[f"stage{stage}"] = {
            "best_checkpoint": best, monitor: float(score) if score is not None else None,
            "epochs": trainer.current_epoch, "steps": trainer.global_step, "seconds": round(time.time() - t0, 1),
            "world_size": trainer.world_size,
            "last_val": {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")},
        }  # fmt: skip
        if stage == 2:
            results["stage2"]["coarse_val"] = task.val_reference
        _export_best(out, best, model_cfg, prep, cfg, stage, results, command)
        state[f"best{stage}"] = best
        state["done"].append(stage)
        write_json(state_path, state)  # atomically, after the export: a stage is done once exported
    return results


def _check_react_kinds(kinds: tuple[str, ...], spec) -> None:
    """react_gate's labels come from detectors of named channels: refuse a spec where none of ``kinds``
    can be detected (the classifier would learn p = 0 and remove the latent), warn for each kind skipped."""
    from realm.motion import get_spec

    spec = get_spec(spec)
    usable = [k for k in kinds if detector_columns(k, spec) is not None]
    if not usable:
        raise ValueError(f"react_gate: the spec {spec.name!r} has the channels of none of {list(kinds)}: "
                         "no reaction onsets to learn from")  # fmt: skip
    for k in kinds:
        if k not in usable:
            log.warning("react_gate: the spec %s lacks the channels of %r; its onsets are not labelled", spec.name, k)


def _check_condition_kinds(kinds: tuple[str, ...], spec) -> None:
    """react_condition's kinds are labelled by their detectors: refuse a kind without one or whose
    channels the spec lacks (the decoder would be told it never starts)."""
    from realm.motion import get_spec

    spec = get_spec(spec)
    bad = [k for k in kinds if k != ANY_REACTION and (k not in DETECTORS or detector_columns(k, spec) is None)]
    if bad:
        raise ValueError(f"react_condition: no detector of {bad} on the spec {spec.name!r} "
                         f"(detectors: {', '.join(DETECTORS)}; {ANY_REACTION!r}: any of react_kinds)")  # fmt: skip


def _export_best(out, best, model_cfg, prep, cfg, stage, results, command):
    model = REALM(model_cfg)
    model.load_state_dict(best_model_state(best))
    extra = {
        "stage": stage, "train": jsonable(asdict(cfg)), "results": results,
        "command": command or " ".join(sys.argv),
        "selected_on": "val" if stage == 2 or cfg.stage1_select == "val_loss" else "the last validation (stage1_select)",
        "data_config": data_config(cfg.data),
    }  # fmt: skip
    if cfg.init:  # provenance of the weights this run started from (its stage 1, with --stages 2)
        init = json.loads((Path(cfg.init) / "config.json").read_text())
        extra["init"] = {"path": str(cfg.init), **{k: init.get(k) for k in ("command", "results", "init")}}
    save(out, model, prep.stats, prep.feature_stats, cfg.extractor, extra)
