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

    from realm.train.baselines import train_baseline, baseline_train_config
    train_baseline("lstm", baseline_train_config("lstm", data="DIR"), "runs/lstm")
    listener = realm.load("runs/lstm")                   # BaselineListener: same generate() as REALM

Each is one entry of the model registry (:data:`realm.registry.MODELS`, which names every model
type: REALM, these, the mmlm, its tokenizer and the emotion classifier) and imports no torch
until used.
"""

from realm.registry import BASELINES

__all__ = ["BASELINES"]
