"""What every baseline shares: its config, the model base class, the loaded-model wrapper, export and load.

A baseline is an ``nn.Module`` (:class:`Baseline`) that works in normalised space, exactly like
REALM: audio features z-scored with the training feature statistics, listener motion z-scored
with the training motion statistics. Models that read the speaker's motion z-score it
themselves with statistics they keep as buffers (``speaker_mean``, ``speaker_std``), so a run
directory holds the same four files as a REALM run::

    RUN/config.json         model_type (the baseline's name), model (its config dataclass), spec,
                            fps, feature_extractor, train config, command
    RUN/model.safetensors   weights, or for non-parametric baselines what they remember
                            (mean frame, clip bank, window bank) and the speaker statistics
    RUN/stats.npz           listener motion statistics
    RUN/feature_stats.npz   audio feature statistics

:class:`BaselineListener` is what :func:`realm.load` returns for such a run: the same
``generate`` interface and properties as :class:`realm.generate.Listener`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from realm.data.clip import LENGTH_TOLERANCE_FRAMES
from realm.errors import RealmInputError
from realm.models.listener import GenerateOptions, RunModel
from realm.motion import NormStats, get_spec

log = logging.getLogger(__name__)



# ---------------------------------------------------------------- config and model base


@dataclass
class BaselineConfig:
    """Fields every baseline has; filled from the data at training time."""

    spec: str = "arkit58"
    audio_dim: int = 80
    speaker_dim: int = 0  # width of the speaker-motion input (the listener's dim when the data has none)
    speaker_spec: str = ""  # "" when the training data had no speaker motion (the model saw zeros)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> BaselineConfig:
        """Build from a saved dict; unknown keys are an error (a config for another model)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise TypeError(f"unknown {cls.__name__} field(s) {unknown}")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})

    @classmethod
    def from_saved(cls, d: dict) -> BaselineConfig:
        """Build from a run directory's saved config (a model whose newer fields change what an
        older run computes sets their older values here)."""
        return cls.from_dict(d)


class Baseline(nn.Module):
    """Base of every baseline model (normalised space in and out).

    Subclasses set ``name``, ``Config`` and the flags below and implement :meth:`sample`;
    non-parametric ones implement :meth:`fit_data`, neural ones :meth:`loss`.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type[BaselineConfig]] = BaselineConfig
    stochastic: ClassVar[bool] = False  # samples differ
    trainable: ClassVar[bool] = False  # trained by gradient descent (Lightning) rather than fitted
    uses_speaker: ClassVar[bool] = False  # reads the speaker's motion
    uses_words: ClassVar[bool] = False  # reads the speaker's words (transcript or offline ASR)
    staged: ClassVar[bool] = False  # trains its parts one after the other (DDP must allow unused parameters)
    #: extra keyword options :meth:`sample` accepts (``identity_ref``, ``history``, ``temperature``, ``top_p``)
    sample_options: ClassVar[frozenset] = frozenset()
    #: training recipe defaults (TrainConfig fields) of the baseline's paper, or ours where it has none
    train_defaults: ClassVar[dict] = {}

    def __init__(self, config: BaselineConfig):
        super().__init__()
        self.config = config
        self.spec = get_spec(config.spec)
        if self.uses_speaker:
            self.register_buffer("speaker_mean", torch.zeros(self.speaker_width()))
            self.register_buffer("speaker_std", torch.ones(self.speaker_width()))

    def speaker_width(self) -> int:
        """Width of the normalised speaker input (the listener's dim when the data had no speaker)."""
        return self.config.speaker_dim or self.spec.dim

    # -- data
    @property
    def has_speaker(self) -> bool:
        """True when the model was trained with real speaker motion (not zeros)."""
        return bool(self.config.speaker_spec)

    def set_speaker_stats(self, clips) -> None:
        """Fit the speaker z-score statistics on the training clips (identity when they have none)."""
        if not self.uses_speaker or not self.has_speaker:
            return
        st = NormStats.fit([self.speaker_input(c.speaker) for c in clips])
        self.speaker_mean.copy_(torch.from_numpy(st.mean))
        self.speaker_std.copy_(torch.from_numpy(st.std))

    def speaker_input(self, speaker: np.ndarray) -> np.ndarray:
        """Raw speaker motion as the model reads it (the mirror converts it to the listener's spec)."""
        return np.asarray(speaker, np.float32)

    def speaker_z(self, speaker: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        """Normalised speaker motion (B, T, Ds); zeros (the mean speaker) when there is none."""
        B, T = like.shape[:2]
        if speaker is None or not self.has_speaker:
            return like.new_zeros(B, T, self.speaker_mean.shape[0])
        return (speaker - self.speaker_mean) / self.speaker_std

    # -- hooks for models that need more than the windows
    @classmethod
    def configure(cls, config: BaselineConfig, data) -> None:
        """Fill data-dependent config fields before the model is built (e.g. a word vocabulary)."""

    def wrap_dataset(self, windows):
        """The training / validation dataset the model reads (default: the windows as they are)."""
        return windows

    # -- the three things a baseline may do
    def fit_data(self, data) -> None:
        """Non-parametric baselines: remember what they need from ``data`` (a ``realm.train.Prepared``)."""

    def loss(self, batch: dict, progress: float = 0.0) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        """Neural baselines: loss terms of a training batch (``progress`` = fraction of training done)."""
        raise NotImplementedError

    def sample(
        self,
        audio: torch.Tensor,
        first: torch.Tensor,
        speaker: torch.Tensor | None = None,
        words: list | None = None,
        samples: int = 1,
        seed: int = 0,
    ) -> torch.Tensor:  # pragma: no cover - abstract
        """Normalised motion (samples, T, D) for normalised audio (1, T, A) and frame 0 (1, D)."""
        raise NotImplementedError


# ---------------------------------------------------------------- losses shared by the ViCo-family baselines


def block_l2_loss(
    pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor, spec, vel_weights: dict, pos_weights: dict | None = None
) -> dict[str, torch.Tensor]:
    """The ViCo baseline loss, per block: mean per-frame L2 distance + weighted L2 of velocities.

    For each block b of the spec: ``pos_b = mean_t |pred_t - gt_t|_2`` and
    ``vel_b = mean_t |(pred_t - pred_t-1) - (gt_t - gt_t-1)|_2`` over valid frames (frame 0 is
    given, never scored); ``loss = sum_b pos_weights[b] pos_b + vel_weights[b] vel_b`` (weights
    default to 1; the ViCo config weights the expression velocity 0.001).
    """
    m = mask.float().clone()
    m[:, 0] = 0
    mv = m[:, 1:] * m[:, :-1]
    dp, dg = torch.diff(pred, dim=1), torch.diff(gt, dim=1)
    out, total = {}, pred.new_zeros(())
    for name, _ in spec.blocks:
        s = spec.block(name).slice
        pos = ((pred[..., s] - gt[..., s]).pow(2).sum(-1) + 1e-12).sqrt()
        vel = ((dp[..., s] - dg[..., s]).pow(2).sum(-1) + 1e-12).sqrt()
        out[f"{name}"] = (pos * m).sum() / m.sum().clamp(min=1)
        out[f"{name}_vel"] = (vel * mv).sum() / mv.sum().clamp(min=1)
        total = total + (pos_weights or {}).get(name, 1.0) * out[name] + vel_weights.get(name, 1.0) * out[f"{name}_vel"]
    out["loss"] = total
    return out


def crossfade_into(out: torch.Tensor, filled: int, start: int, frames: torch.Tensor) -> int:
    """Write ``frames`` (B, n, D) at ``out[:, start:]``, blending linearly over what is already filled.

    Frames ``start .. filled-1`` exist already: they fade from the old to the new values with
    weights (i + 1) / (overlap + 1); the rest is copied. Returns the new filled length.
    """
    n = frames.shape[1]
    o = max(0, min(filled - start, n))
    if o:
        w = torch.arange(1, o + 1, dtype=out.dtype, device=out.device).div(o + 1).view(1, -1, 1)
        out[:, start : start + o] = (1 - w) * out[:, start : start + o] + w * frames[:, :o]
    out[:, start + o : start + n] = frames[:, o:]
    return max(filled, start + n)


def seeded(seed: int, sample: int) -> torch.Generator:
    """A torch generator for sample ``sample`` of seed ``seed`` (independent streams)."""
    g = torch.Generator()
    g.manual_seed(int(np.random.SeedSequence([seed, sample]).generate_state(1)[0]))
    return g


def top_p_sample(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> torch.Tensor:
    """Nucleus sampling: one token per row of ``logits`` (B, V) at ``temperature``, keeping mass ``top_p``."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = F.softmax(logits / temperature, dim=-1)
    sorted_p, order = probs.sort(dim=-1, descending=True)
    keep = sorted_p.cumsum(-1) - sorted_p < top_p  # the smallest set whose mass reaches top_p
    sorted_p = sorted_p * keep
    choice = torch.multinomial(sorted_p / sorted_p.sum(-1, keepdim=True), 1, generator=generator)
    return order.gather(-1, choice).squeeze(-1)


# ---------------------------------------------------------------- the loaded model


@dataclass
class BaselineListener(RunModel):
    """A trained or fitted baseline with everything it needs to run on raw audio.

    Same interface as :class:`realm.generate.Listener`: ``generate``, ``features``, ``spec``,
    ``fps``, ``name``, ``stochastic``, ``extractor``.
    """

    model: Baseline

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def stochastic(self) -> bool:
        return self.model.stochastic

    def _first(self, first_frame, history) -> torch.Tensor:
        D = self.spec.dim
        if history is not None:
            first = self.spec.validate(np.asarray(history, np.float32).reshape(-1, D), "history")[-1]
        elif first_frame is not None:
            first = self.spec.validate(np.asarray(first_frame, np.float32).reshape(-1, D), "first_frame")[-1]
        else:
            first = self.stats.mean
        return torch.from_numpy(self.stats.apply(first.astype(np.float32)))[None]  # (1, D)

    def _motion(self, x, what: str) -> torch.Tensor | None:
        """Listener motion (T, D) -> normalised (1, T, D), checked against the spec; None stays None."""
        if x is None:
            return None
        x = self.spec.validate(np.asarray(x, np.float32), what)
        return torch.from_numpy(self.stats.apply(x).astype(np.float32))[None]

    def _speaker(self, speaker, T: int) -> torch.Tensor | None:
        """Raw speaker motion (1, T, Ds) checked against the model, or None."""
        m = self.model
        if not m.uses_speaker:
            return None
        if speaker is None:
            if m.name == "mirror":
                raise RealmInputError(
                    None,
                    "the mirror baseline copies the speaker's motion: pass speaker=(T, D) motion "
                    "(audio-only callers such as `realm generate` cannot run it)",
                )
            if m.has_speaker:
                log.warning("%s: no speaker motion given; using the mean speaker (zeros)", m.name)
            return None
        if not m.has_speaker:
            log.info("%s was trained without speaker motion; the given speaker motion is ignored", m.name)
            return None
        x = np.asarray(speaker, np.float32)
        if x.ndim != 2 or x.shape[1] != m.config.speaker_dim:
            raise RealmInputError(
                "speaker", f"speaker motion must be (frames, {m.config.speaker_dim}) in {m.config.speaker_spec}, got {x.shape}"
            )
        if not np.all(np.isfinite(x)):
            raise RealmInputError("speaker", "NaN/inf in speaker motion")
        if abs(len(x) - T) > LENGTH_TOLERANCE_FRAMES:
            raise RealmInputError("speaker", f"speaker motion has {len(x)} frames but the audio {T}")
        if len(x) < T:
            x = np.concatenate([x, np.repeat(x[-1:], T - len(x), axis=0)])
        x = m.speaker_input(x[:T])
        return torch.from_numpy(np.ascontiguousarray(x, np.float32))[None]

    @torch.inference_mode()
    def generate(
        self,
        audio,
        options: GenerateOptions | None = None,
        *,
        first_frame: np.ndarray | None = None,
        history: np.ndarray | None = None,
        features: np.ndarray | None = None,
        speaker: np.ndarray | None = None,
        words: list | None = None,
        identity_ref: np.ndarray | None = None,
        progress=None,
        **option_fields,
    ) -> np.ndarray:
        """Listener motion (samples, T, D), de-normalised, for ``audio`` (path or 16 kHz waveform).

        ``features`` (T, A) normalised features skip extraction (as for REALM). ``first_frame``
        (D,) or the last frame of ``history`` is frame 0 of the models that continue a listener
        (LSTM, ListenFormer); the default is the training mean frame; the other baselines ignore
        it. ``speaker`` (T, Ds) is the speaker's raw motion (mirror, LSTM, ListenFormer, L2L),
        ``words`` (list of :class:`realm.data.clip.Word`) the speaker's words (LM-Listener).
        ``identity_ref`` (Tr >= 60, D) motion of the target listener (the mmlm decodes in its style;
        else from ``history`` when it is >= 2 s; the others reject it). How to sample: ``options``
        and/or its fields as keywords (:class:`realm.models.listener.GenerateOptions`):
        ``samples``, ``seed``, ``clamp``; ``temperature`` (0 = greedy) and ``top_p`` for the
        models that have token sampling (mmlm), refused by the others; ``refine`` is REALM's
        (these models have no refinement stage). ``progress(fraction)`` is called at the end
        (1.0), as REALM calls it along the way.
        """
        o = self.options(options, **option_fields)
        samples, seed, clamp, temperature, top_p = o.samples, o.seed, o.clamp, o.temperature, o.top_p
        self.model.eval()
        feats = self.features(audio) if features is None else np.asarray(features, np.float32)
        if feats.ndim != 2 or feats.shape[1] != self.model.config.audio_dim:
            raise RealmInputError(
                "features", f"features must be (frames, {self.model.config.audio_dim}) {self.extractor}, got {feats.shape}"
            )
        T = feats.shape[0]
        a = torch.from_numpy(np.ascontiguousarray(feats, np.float32))[None]  # (1, T, A)
        if identity_ref is not None and "identity_ref" not in self.model.sample_options:
            raise ValueError(f"{self.name} does not take identity_ref")  # temperature, top_p: checked by options()
        opts = {"identity_ref": identity_ref, "temperature": temperature, "top_p": top_p}
        kw = {k: v for k, v in opts.items() if k in self.model.sample_options}
        if "identity_ref" in self.model.sample_options:
            kw["identity_ref"] = self._motion(identity_ref, "identity_ref")
            kw["history"] = self._motion(history, "history")
        z = self.model.sample(a, self._first(first_frame, history), self._speaker(speaker, T), words, samples, seed, **kw)
        out = self.stats.invert(z.float().numpy()).astype(np.float32)  # (samples, T, D)
        if progress is not None:
            progress(1.0)
        return self.spec.clamp(out) if clamp else out
