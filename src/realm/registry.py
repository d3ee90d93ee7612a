"""Every model type of realm-listener, by the name its run directory's ``config.json`` gives it.

=================  ==========  =================================================================
name               kind        loads into
=================  ==========  =================================================================
realm              listener    :class:`realm.generate.Listener` (streams)
the baselines      listener    :class:`realm.models.baselines.base.BaselineListener`
mmlm               listener    :class:`realm.generate_lm.MMLMListener` (seed 2's multimodal-LM listener; streams)
idvq               tokenizer   ``BaselineListener`` (the IN/AdaIN motion tokenizer; ``generate``
                               reconstructs, ``realm lm restyle`` re-decodes in another style)
emotion            classifier  :class:`realm.models.emotion.EmotionClassifier` (speaker emotion, mmlm input)
=================  ==========  =================================================================

:func:`realm.checkpoint.load` reads any of them; ``realm train NAME`` trains any of them. The
registry names modules and classes as strings and imports a model's module only when it is used
(a plugin table: this module imports nothing of the package, so every layer may read it), and
listing models (``realm train --help``, ``realm bench``) imports no torch.

Adding a model: its module (an ``nn.Module`` with a ``Config`` dataclass, ``spec`` and, for a
listener, the :class:`realm.models.baselines.base.Baseline` interface) and one entry here; see
docs/architecture.md.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


def _resolve(path: str):
    """``"package.module:Attr.attr"`` -> the object."""
    module, _, attr = path.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class ModelInfo:
    """One model type: its module and class, what it loads into and how it trains."""

    name: str
    module: str
    cls: str
    summary: str
    kind: str = "listener"  # listener | tokenizer | classifier
    trained: bool = True  # by gradient descent; else fitted in one pass
    trainer: str = "realm.train.baselines"  # the module that trains it (``realm train NAME``)
    baseline: bool = False  # one of DESIGN section 10's baselines
    listener: str = "realm.models.baselines.base:BaselineListener"  # the loaded run's class
    loader: str = ""  # a run type with its own directory layout: "module:function" loading it

    def load_class(self):
        """The model class (imports its module)."""
        return getattr(importlib.import_module(self.module), self.cls)

    def listener_class(self):
        return _resolve(self.listener)

    def custom_loader(self):
        return _resolve(self.loader) if self.loader else None


def _baseline(name: str, module: str, cls: str, summary: str, trained: bool = False) -> ModelInfo:
    return ModelInfo(name, f"realm.models.baselines.{module}", cls, summary, trained=trained, baseline=True)


#: DESIGN section 10's baselines (``realm.models.baselines``), in the order tables list them.
BASELINES: dict[str, ModelInfo] = {
    b.name: b
    for b in (
        _baseline("static_mean", "simple", "StaticMean", "the mean training frame, held for the whole clip"),
        _baseline("random_clip", "simple", "RandomClip", "a random stretch of a random training clip (stochastic)"),
        _baseline("mirror", "simple", "Mirror", "the speaker's own motion, moved to the listener's statistics"),
        _baseline("nearest_neighbour", "simple", "NearestNeighbour", "per window, the training motion whose audio features are nearest"),
        _baseline("lstm", "lstm", "LSTMListener", "ViCo/RLHG baseline: speaker motion + audio -> 2-layer LSTM(96) from frame 0", True),
        _baseline("listenformer", "listenformer", "ListenFormer", "ListenFormer: audio encoder, speaker-motion queries, non-autoregressive decoder", True),
        _baseline("l2l", "l2l", "Learning2Listen", "Learning2Listen: motion VQ-VAE (8 frames/token) + cross-modal token predictor (stochastic)", True),
        _baseline("lm_listener", "lmlistener", "LMListener", "LM-Listener: motion VQ-VAE + GPT over interleaved word and motion tokens", True),
    )
}  # fmt: skip

MODELS: dict[str, ModelInfo] = {
    "realm": ModelInfo("realm", "realm.models.realm", "REALM", "REALM: reactive gated fusion, shifted ALiBi, coarse decoder + refinement (seed 1)",
                       listener="realm.generate:Listener", trainer="realm.train"),
    **BASELINES,
    "mmlm": ModelInfo("mmlm", "realm.models.mmlm", "MMLM", "multimodal-LM listener: words + acoustics + emotion -> IDVQ motion tokens (seed 2)",
                      listener="realm.generate_lm:MMLMListener"),
    "idvq": ModelInfo("idvq", "realm.models.mmlm", "IDVQRun", "identity-disentangled motion VQ-VAE (IN encoder, AdaIN decoder)", kind="tokenizer"),
    "emotion": ModelInfo("emotion", "realm.models.emotion", "EmotionNet", "speaker emotion classifier over audio features (mmlm input)",
                         kind="classifier", listener="", loader="realm.models.emotion:EmotionClassifier.load",
                         trainer="realm.train.emotion"),
}  # fmt: skip


def get_model(name: str) -> ModelInfo:
    """The registry entry of ``name``; a ValueError listing the known names otherwise."""
    if name not in MODELS:
        raise ValueError(f"unknown model type {name!r} (known: {', '.join(MODELS)})")
    return MODELS[name]
