"""What the benchmark runs: the models (REALM, its ablations, ours, the LM listener), the step-3 recipe, :class:`BenchConfig`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

from realm.registry import BASELINES

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
    "realm_sbk": ({}, "ours: realm_sb, then told which reaction kind starts (the demo's steps 3 and 4)"),
    "tau0_sbk": ({"tau": 0}, "ablation of ours: realm_sbk with tau = 0"),
    "realm_tf_sbk": ({}, "ours: realm_sbk whose stage 1 reads the ground truth as each window's history for its "
                         "first 75 % of steps (teacher forcing), then rolls out"),
    "tau0_tf_sbk": ({"tau": 0}, "ablation of ours: realm_tf_sbk with tau = 0"),
    "realm_rw_sbk": ({}, "ours: realm_tf_sbk with rotation's loss weights divided by 10 (w_rot 0.5, w_vel 1.0)"),
    "tau0_rw_sbk": ({"tau": 0}, "ablation of ours: realm_rw_sbk with tau = 0"),
}


#: TrainConfig fields of a REALM variant's stages 1 and 2 (its steps 3 and 4 roll out, as the demo's):
#: the ``*_tf_*`` variants teacher-force the first 75 % of stage 1's steps (``TrainConfig.teacher_forcing``;
#: measured at equal wall-clock in docs/realm.md, "Teacher-forced windows": reactions timed at tau); the ``*_rw_*``
#: variants also divide rotation's loss weights by 10 (DESIGN's w_rot 5 and w_vel 10 drown the expression's
#: gradient: docs/realm.md, "Why ours miss the expression reactions"); their steps 3 and 4 keep these weights.
_TF = {"teacher_forcing": 0.75}
_RW = {**_TF, "w_rot": 0.5, "w_vel": 1.0}
VARIANT_TRAIN: dict[str, dict] = {"realm_tf_sbk": _TF, "tau0_tf_sbk": _TF, "realm_rw_sbk": _RW, "tau0_rw_sbk": _RW}


#: The step that follows stages 1 and 2 for the ``*_sb`` variants (the demo checkpoint's recipe,
#: checkpoints/realm-demo/README.md): a 16-d latent per window trained by the energy score on the
#: expression, a zero-latent rollout by the paper's loss, a learned leak toward the start frame, on
#: 256-frame rollouts, the hearing and timing frozen; the step-2 refinement kept.
STEP3_MODEL = {"latent_dim": 16, "rest_leak": True, "rest_leak_init": 0.005, "latent_temperature": 0.5}


STEP3_TRAIN = {"coarse_loss": "energy", "energy_blocks": ["expression"], "mean_rollout": True, "batch_size": 32,
               "clip_len": 256, "lr": 5e-4, "val_every": 0,
               "freeze": ["audio_encoder", "fusion", "decoder.gate", "waypoint"]}  # fmt: skip


#: Shares of a ``*_sb`` variant's training time: stage 1, stage 2, step 3 (a ``*_sbk`` variant's step 3 and
#: step 4 share the last half and half, as the demo's 460 steps each).
STEP3_SHARES = (0.55, 0.15, 0.30)


#: What the ``*_sbk`` variants' step 4 adds to step 3's model (the demo checkpoint's step 4): step 3's recipe again
#: from step 3, the decoder told which reaction kind starts in each window (drawn from a classifier at generation,
#: at kind_temperature 1.5 as the demo; docs/realm.md, "The decoder told which reaction starts").
STEP4_MODEL = {"react_condition": ["smile", "concern", "brow_raise"], "react_shift": 8, "kind_temperature": 1.5}


#: "Ours" for the targets of issue 15 (point 6): a table for each of these a run holds, in this order.
OURS = ("realm_sbk", "realm_tf_sbk", "realm_rw_sbk", "realm_sb")


#: Issue 15 point 6: the expression variance ratio ours must reach, FD exp at most this multiple of the floor.
VAR_RATIO_RANGE = (0.7, 1.3)
FLOOR_MULTIPLE = 3.0


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
    precision: str = ""  # Lightning precision of every neural model's training ("": TrainConfig's, fp32);
    #   "bf16-mixed" gives REALM 2.2x the steps on a CPU with bf16 instructions (docs/realm.md)
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


def audio_context(cfg: BenchConfig) -> int:
    from realm.train import LOCAL_EXTRACTORS

    if cfg.audio_context >= 0:
        return cfg.audio_context
    return 16 if cfg.extractor in LOCAL_EXTRACTORS else 0

