"""The ViCo / RLHG baseline (Zhou et al., 2022; dc3ea9f/vico_challenge_baseline), top to bottom.

    first listener frame (D) ──► LayerNorm ──► Linear(D, D) - tanh - Linear(D, 2 x layers x 96) ──► (h0, c0)
    [speaker audio (A) ; speaker motion (Ds)] per frame ──► LayerNorm ──► Linear(A + Ds, 192) + tanh
        ──► 2-layer LSTM(96, no bias, dropout 0.1), started from (h0, c0) ──► Linear(96, D)
    output t predicts listener frame t + 1 (frame 0 is given)

Facts from the authors' code: 73-d speaker motion + 45-d audio (118 -> 192), LSTM hidden 96,
2 layers, ``bias=False``, dropout 0.1; loss per block (angle, exp, trans, crop) = mean per-frame
L2 distance + mean L2 distance of first differences ("spiky" loss), every weight 1 except the
expression velocity, 0.001; AdamW lr 1e-3, weight decay 0.05, step decay x0.5 every 30 epochs.
Block sizes, the audio width and the speaker width come from our data, so the same code runs on
every spec and extractor. Speaker and listener motion are z-scored (as in the authors' data
pipeline); without speaker motion in the data the speaker input is zeros (the mean speaker).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from einops import rearrange
from torch import nn

from realm.models.baselines.base import Baseline, BaselineConfig, block_l2_loss


@dataclass
class LSTMConfig(BaselineConfig):
    fusion_dim: int = 192  # Linear(A + Ds -> 192) + tanh
    hidden: int = 96
    layers: int = 2
    dropout: float = 0.1
    lstm_bias: bool = False
    vel_weights: dict = field(default_factory=lambda: {"expression": 0.001})  # other blocks: 1
    lr_step_epochs: int = 30  # step decay of the learning rate (authors: x0.5 every 30 epochs)
    lr_gamma: float = 0.5


class LSTMListener(Baseline):
    name = "lstm"
    Config = LSTMConfig
    trainable = True
    uses_speaker = True
    train_defaults = dict(lr=1e-3, weight_decay=0.05, epochs=100, batch_size=32, clip_len=90, clip_stride=1)

    def __init__(self, config: LSTMConfig):
        super().__init__(config)
        c, D = config, self.spec.dim
        driven = c.audio_dim + self.speaker_width()
        # initial state from the first listener frame
        self.init_norm = nn.LayerNorm(D)
        self.init_state = nn.Sequential(nn.Linear(D, D), nn.Tanh(), nn.Linear(D, 2 * c.layers * c.hidden))
        # step-wise driving signal: speaker audio + speaker motion
        self.driven_norm = nn.LayerNorm(driven)
        self.fusion = nn.Sequential(nn.Linear(driven, c.fusion_dim), nn.Tanh())
        self.lstm = nn.LSTM(c.fusion_dim, c.hidden, c.layers, bias=c.lstm_bias, batch_first=True, dropout=c.dropout)
        self.out = nn.Linear(c.hidden, D)

    def forward(self, audio: torch.Tensor, speaker: torch.Tensor | None, first: torch.Tensor) -> torch.Tensor:
        """Motion (B, T, D): ``first`` (B, D) then the predicted frames 1 .. T-1 (normalised space)."""
        c = self.config
        state = self.init_state(self.init_norm(first))  # (B, 2 * layers * hidden)
        h0, c0 = rearrange(state, "b (two l h) -> two l b h", two=2, l=c.layers).contiguous()  # (layers, B, hidden) each
        x = torch.cat([audio, self.speaker_z(speaker, audio)], dim=-1)  # (B, T, A + Ds)
        x = self.fusion(self.driven_norm(x))  # (B, T, 192)
        y, _ = self.lstm(x, (h0, c0))  # (B, T, 96)
        nxt = self.out(y)  # (B, T, D): step t predicts frame t + 1
        return torch.cat([first[:, None], nxt[:, :-1]], dim=1)

    def loss(self, batch, progress=0.0):
        motion = batch["motion"]
        pred = self(batch["audio"], batch.get("speaker"), motion[:, 0])
        return block_l2_loss(pred, motion, batch["mask"], self.spec, self.config.vel_weights)

    def sample(self, audio, first, speaker=None, words=None, samples=1, seed=0):
        return self(audio, speaker, first).expand(samples, -1, -1).clone()  # deterministic
