"""The listener contract: what every loaded model offers ``generate``, ``eval``, ``bench`` and ``serve``.

A run directory loads (:func:`realm.checkpoint.load`) into a :class:`RunModel`: the model with
its motion statistics, feature statistics, feature extractor and config. Every listener has

* ``generate(audio, options=None, *, first_frame, history, features, speaker, words, progress,
  **option_fields) -> (samples, T, D)`` motion in ``spec``, de-normalised, at ``fps``. How to
  sample is one frozen :class:`GenerateOptions` (``options``, or its fields as keywords, or
  both: the keywords replace the dataclass's values), checked by :meth:`RunModel.options`:
  a model refuses the options it cannot honour (``temperature`` and ``top_p`` are the token
  models'), in one line. What to react to are the other arguments: the speaker's audio, motion
  (``speaker``) and words (``words``), the listener's past (``first_frame``, ``history``); a
  model that does not read one of them ignores it (``uses_speaker``, ``uses_words`` say which);
* ``name``, ``stochastic`` (samples differ), ``spec``, ``fps``, ``extractor``, ``features(audio)``;
* declared capabilities: ``uses_words``, ``uses_speaker``, ``refines``, ``sample_options``;
* ``streams``: a declared capability. A listener with ``streams = True`` has ``streamer(**kw)``
  returning an object with ``push(chunk) -> frames`` and ``flush()`` (``realm.generate.Streamer``);
  the others raise a one-line :class:`~realm.errors.RealmInputError` from ``streamer()``.

REALM's listener is :class:`realm.generate.Listener`; the baselines', the mmlm's and the
tokenizer's is :class:`realm.models.baselines.base.BaselineListener`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from realm.audio import extract, file_features
from realm.errors import RealmInputError
from realm.motion import NormStats


@dataclass(frozen=True)
class GenerateOptions:
    """How a listener samples (what it reacts to is passed beside it)."""

    samples: int = 1  # realisations, (samples, T, D)
    seed: int = 0  # the same seed gives the same motion
    refine: bool = True  # REALM: the refinement stage (False: the coarse motion); models without one ignore it
    clamp: bool = True  # keep values inside the spec's ranges (blendshapes 0..1, head within +-30/+-20 deg)
    temperature: float | None = None  # token models (mmlm): 0 = greedy; None = the model's default
    top_p: float | None = None  # token models: nucleus sampling mass; None = the model's default

    def __post_init__(self):
        if int(self.samples) != self.samples or self.samples < 1:
            raise ValueError(f"samples must be a whole number >= 1, got {self.samples}")
        if self.temperature is not None and not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @classmethod
    def of(cls, options: GenerateOptions | None = None, **kw) -> GenerateOptions:
        """``options`` (default: the defaults) with the fields in ``kw`` replaced."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kw) - known)
        if unknown:
            raise TypeError(f"unknown generate option(s) {', '.join(unknown)} (options: {', '.join(sorted(known))})")
        return replace(options or cls(), **kw)


#: The options only some models honour, and the model attribute that lists them.
MODEL_SPECIFIC = ("temperature", "top_p")


@dataclass
class RunModel:
    """A loaded run directory: the model with everything it needs to run on raw audio."""

    model: torch.nn.Module
    stats: NormStats
    feature_stats: NormStats
    extractor: str
    config: dict
    path: Path

    #: Whether :meth:`streamer` exists for this listener (frames out as audio arrives).
    streams: ClassVar[bool] = False

    @property
    def name(self) -> str:
        return str(getattr(self.model, "name", "model"))

    # ------------------------------------------------ declared capabilities (no hasattr in callers)

    @property
    def uses_words(self) -> bool:
        """Reads the speaker's words (pass ``words=``; ``realm generate`` transcribes for it)."""
        return bool(getattr(type(self.model), "uses_words", False))

    @property
    def uses_speaker(self) -> bool:
        """Reads the speaker's motion (pass ``speaker=``)."""
        return bool(getattr(type(self.model), "uses_speaker", False))

    @property
    def refines(self) -> bool:
        """Has a refinement stage that ``refine=False`` turns off (REALM after stage 2)."""
        return False

    @property
    def sample_options(self) -> frozenset[str]:
        """Model-specific options of ``generate`` beyond the shared ones (e.g. ``temperature``)."""
        return frozenset(getattr(type(self.model), "sample_options", frozenset()))

    @property
    def spec(self):
        return self.model.spec

    @property
    def fps(self) -> float:
        return float(self.config.get("fps", 30.0))

    def features(self, audio) -> np.ndarray:
        """Normalised (T, A) features of a file path or a 16 kHz waveform. A file longer than
        :data:`realm.audio.LONG_AUDIO_S` is read and featurised a block at a time
        (:func:`realm.audio.file_features`), so its waveform is never held whole."""
        if isinstance(audio, (str, Path)):
            blocks = file_features(self.extractor, audio)
            if blocks is not None:
                return self.feature_stats.apply(blocks)
        return self.feature_stats.apply(extract(audio, self.extractor))

    def options(self, options: GenerateOptions | None = None, **kw) -> GenerateOptions:
        """The :class:`GenerateOptions` of a call, refused in one line where this model cannot honour
        one (``temperature``/``top_p`` outside :attr:`sample_options`)."""
        o = GenerateOptions.of(options, **kw)
        extra = sorted(k for k in MODEL_SPECIFIC if getattr(o, k) is not None and k not in self.sample_options)
        if extra:
            raise ValueError(f"{self.name} does not take {', '.join(extra)}")
        return o

    def streamer(self, **kw):
        """A streaming generator (listeners with ``streams = True``); others refuse in one line."""
        raise RealmInputError(self.path, f"{self.name} does not stream (only REALM checkpoints do)")
