"""The listener contract: what every loaded model offers ``generate``, ``eval``, ``bench`` and ``serve``.

A run directory loads (:func:`realm.checkpoint.load`) into a :class:`RunModel`: the model with
its motion statistics, feature statistics, feature extractor and config. Every listener has

* ``generate(audio, *, first_frame, history, samples, seed, features, clamp, speaker, words,
  progress, **options) -> (samples, T, D)`` motion in ``spec``, de-normalised, at ``fps``;
  the options one model type does not use are accepted and ignored only where they are part of
  this contract (``speaker``, ``words``, ``refine``); model-specific sampling options
  (``identity_ref``, ``temperature``, ``top_p``) are refused by models that lack them;
* ``name``, ``stochastic`` (samples differ), ``spec``, ``fps``, ``extractor``, ``features(audio)``;
* declared capabilities: ``uses_words``, ``uses_speaker``, ``refines``, ``sample_options``;
* ``streams``: a declared capability. A listener with ``streams = True`` has ``streamer(**kw)``
  returning an object with ``push(chunk) -> frames`` and ``flush()`` (``realm.generate.Streamer``);
  the others raise a one-line :class:`~realm.errors.RealmInputError` from ``streamer()``.

REALM's listener is :class:`realm.generate.Listener`; the baselines', the mmlm's and the
tokenizer's is :class:`realm.models.baselines.base.BaselineListener`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from realm.audio import extract, file_features
from realm.errors import RealmInputError
from realm.motion import NormStats


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

    def streamer(self, **kw):
        """A streaming generator (listeners with ``streams = True``); others refuse in one line."""
        raise RealmInputError(self.path, f"{self.name} does not stream (only REALM checkpoints do)")
