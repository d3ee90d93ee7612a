"""Baselines of DESIGN section 10: one harness, same data, same metrics, same commands as REALM.

=================  ==============  ============================================================
name               module          what
=================  ==============  ============================================================
static_mean        simple          the mean training frame, held
random_clip        simple          a random stretch of a random training clip (stochastic)
mirror             simple          the speaker's motion, moved to the listener's statistics
nearest_neighbour  simple          per window, the training motion whose audio is nearest
lstm               lstm            ViCo / RLHG: speaker motion + audio -> LSTM(96) from frame 0
listenformer       listenformer    ListenFormer: audio encoder, speaker-motion queries, NAR decoder
l2l                l2l             Learning2Listen: motion VQ-VAE (8 frames / token) + token predictor
lm_listener        lmlistener      LM-Listener: VQ-VAE + GPT over interleaved word and motion tokens
=================  ==============  ============================================================

    realm train lstm --data DIR --out runs/lstm          # fit (non-parametric) or train (neural)
    realm generate --checkpoint runs/lstm --audio a.wav --out motion.npz

    from realm.models.baselines import train_baseline, baseline_train_config
    train_baseline("lstm", baseline_train_config("lstm", data="DIR"), "runs/lstm")
    listener = realm.load("runs/lstm")                   # BaselineListener: same generate() as REALM

This module imports no torch: the registry names each model's module and class, loaded on use.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class BaselineInfo:
    name: str
    module: str
    cls: str
    summary: str
    trained: bool = False  # trained by gradient descent (Lightning); else fitted in one pass

    def load_class(self):
        module = self.module if "." in self.module else f"realm.models.baselines.{self.module}"
        return getattr(importlib.import_module(module), self.cls)


BASELINES: dict[str, BaselineInfo] = {
    b.name: b
    for b in (
        BaselineInfo("static_mean", "simple", "StaticMean", "the mean training frame, held for the whole clip"),
        BaselineInfo("random_clip", "simple", "RandomClip", "a random stretch of a random training clip (stochastic)"),
        BaselineInfo("mirror", "simple", "Mirror", "the speaker's own motion, moved to the listener's statistics"),
        BaselineInfo("nearest_neighbour", "simple", "NearestNeighbour", "per window, the training motion whose audio features are nearest"),
        BaselineInfo("lstm", "lstm", "LSTMListener", "ViCo/RLHG baseline: speaker motion + audio -> 2-layer LSTM(96) from frame 0", True),
        BaselineInfo("listenformer", "listenformer", "ListenFormer", "ListenFormer: audio encoder, speaker-motion queries, non-autoregressive decoder", True),
        BaselineInfo("l2l", "l2l", "Learning2Listen", "Learning2Listen: motion VQ-VAE (8 frames/token) + cross-modal token predictor (stochastic)", True),
        BaselineInfo("lm_listener", "lmlistener", "LMListener", "LM-Listener: motion VQ-VAE + GPT over interleaved word and motion tokens", True),
    )
}  # fmt: skip

#: Every model that trains, loads and generates through this harness: the baselines, and our
#: multimodal-LM listener with its identity-disentangled tokenizer (seed 2, ``realm.models.mmlm``).
#: REALM has its own two-stage trainer (``realm.train``).
MODELS: dict[str, BaselineInfo] = {
    **BASELINES,
    "mmlm": BaselineInfo("mmlm", "realm.models.mmlm", "MMLM", "multimodal-LM listener: words + acoustics + emotion -> IDVQ motion tokens", True),
    "idvq": BaselineInfo("idvq", "realm.models.mmlm", "IDVQRun", "identity-disentangled motion VQ-VAE (IN encoder, AdaIN decoder)", True),
}  # fmt: skip


def load(run):
    """Load a baseline run directory (a :class:`~realm.models.baselines.base.BaselineListener`)."""
    from realm.models.baselines.base import load as _load

    return _load(run)


def train_baseline(name, cfg, out, **kw):
    """Fit or train baseline ``name`` on ``cfg.data`` and export it to ``out``; see :mod:`.train`."""
    from realm.models.baselines.train import train_baseline as _train

    return _train(name, cfg, out, **kw)


def baseline_train_config(name, **overrides):
    """A ``realm.train.TrainConfig`` with the baseline's training-recipe defaults, then ``overrides``."""
    from realm.models.baselines.train import baseline_train_config as _cfg

    return _cfg(name, **overrides)


__all__ = ["BASELINES", "MODELS", "BaselineInfo", "load", "train_baseline", "baseline_train_config"]
