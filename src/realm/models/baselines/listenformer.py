"""ListenFormer (Liu et al., 2024): responsive listening heads with a non-autoregressive transformer.

    speaker audio (L, A) ──► Linear(A, 256) - LayerNorm - dropout ──► x sqrt(256) + positions
        ──► 3 pre-norm encoder blocks (4 heads, FF 1024, ReLU) ──► LayerNorm ──► audio encoding E
    speaker motion (L, Ds) ──► Linear(Ds, 256) ──► LayerNorm ──► queries Q
    fusion block (post-norm, 8 heads, FF 1024):  E = LN(E + SelfAttn(E + pos))
                                                 E = LN(E + CrossAttn(query Q + pos, key E + pos, value E))
                                                 E = LN(E + FF(E))
    decoder input (L, D) ──► Linear(D, 256) x sqrt(256) + positions
        ──► 3 pre-norm decoder blocks (4 heads, FF 1024) over memory E ──► LayerNorm ──► Linear(256, D)
    output t predicts listener frame t + 1 (frame 0 is given)

Training (authors' run.sh: 200 epochs, switch at 100; 90-frame windows, batch 128, lr 2e-3,
AdamW weight decay 0.05, x0.5 every 30 epochs; the ViCo per-block L2 + velocity loss):
* stage 1, teacher forced: decoder input = the ground-truth window, causal self-attention;
* stage 2, non-autoregressive: decoder input = the first frame repeated, full self-attention.
``teacher_forcing`` is the fraction of training steps spent in stage 1 (0.5 = 100 of 200 epochs).

Inference: 90-frame windows shifted by 80; window k starts from the frame already generated at
its start and its frames replace the previous window's over the overlap with a linear crossfade
(ours; the authors cut without blending). The last window is aligned with the end of the clip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from realm.models.baselines.base import Baseline, BaselineConfig, block_l2_loss, crossfade_into


@dataclass
class ListenFormerConfig(BaselineConfig):
    d_model: int = 256
    n_heads: int = 4
    ff_dim: int = 1024
    encoder_layers: int = 3
    decoder_layers: int = 3
    fusion_heads: int = 8
    dropout: float = 0.1
    window: int = 90  # frames per inference window
    shift: int = 80  # window start every `shift` frames
    teacher_forcing: float = 0.5  # fraction of training steps in stage 1 (teacher forced, causal)
    vel_weights: dict = field(default_factory=lambda: {"expression": 0.001})  # other blocks: 1
    lr_step_epochs: int = 30
    lr_gamma: float = 0.5


class ScaledPositions(nn.Module):
    """x * sqrt(d) + sinusoidal positions, dropout (wenet's PositionalEncoding); also returns the positions."""

    def __init__(self, d: int, dropout: float, max_len: int = 4096):
        super().__init__()
        pos = torch.arange(max_len).unsqueeze(1)
        div = torch.exp(torch.arange(0, d, 2) * (-math.log(10000.0) / d))
        pe = torch.zeros(max_len, d)
        pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * div), torch.cos(pos * div)
        self.register_buffer("pe", pe, persistent=False)
        self.scale = math.sqrt(d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # (B, L, d)
        pos = self.pe[: x.shape[1]][None]  # (1, L, d)
        return self.drop(x * self.scale + pos), pos


class AudioEncoder(nn.Module):
    """Linear input layer, scaled positions, pre-norm transformer blocks, final LayerNorm."""

    def __init__(self, c: ListenFormerConfig):
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(c.audio_dim, c.d_model), nn.LayerNorm(c.d_model), nn.Dropout(c.dropout))
        self.pos = ScaledPositions(c.d_model, c.dropout)
        layer = nn.TransformerEncoderLayer(c.d_model, c.n_heads, c.ff_dim, c.dropout, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, c.encoder_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(c.d_model)

    def forward(self, audio: torch.Tensor, pad: torch.Tensor | None):
        x, pos = self.pos(self.embed(audio))  # (B, L, d), (1, L, d)
        return self.norm(self.blocks(x, src_key_padding_mask=pad)), pos


class SpeakerAudioFusion(nn.Module):
    """Speaker-motion queries cross-attend to the audio encoding (post-norm block, 8 heads)."""

    def __init__(self, c: ListenFormerConfig, speaker_dim: int):
        super().__init__()
        d = c.d_model
        self.speaker_proj = nn.Linear(speaker_dim, d)
        self.speaker_norm = nn.LayerNorm(d)
        self.self_attn = nn.MultiheadAttention(d, c.fusion_heads, dropout=c.dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(d, c.fusion_heads, dropout=c.dropout, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(d, c.ff_dim), nn.ReLU(), nn.Dropout(c.dropout), nn.Linear(c.ff_dim, d))
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.drop1, self.drop2, self.drop3 = nn.Dropout(c.dropout), nn.Dropout(c.dropout), nn.Dropout(c.dropout)

    def forward(self, audio: torch.Tensor, speaker: torch.Tensor, pos: torch.Tensor, pad: torch.Tensor | None):
        q = self.speaker_norm(self.speaker_proj(speaker))  # (B, L, d)
        x = audio
        x = self.norm1(x + self.drop1(self.self_attn(x + pos, x + pos, x, key_padding_mask=pad, need_weights=False)[0]))
        x = self.norm2(x + self.drop2(self.cross_attn(q + pos, x + pos, x, key_padding_mask=pad, need_weights=False)[0]))
        return self.norm3(x + self.drop3(self.ff(x)))  # (B, L, d)


class MotionDecoder(nn.Module):
    """Linear(D, d) + scaled positions, pre-norm decoder blocks over the fused memory, LayerNorm, Linear(d, D)."""

    def __init__(self, c: ListenFormerConfig, motion_dim: int):
        super().__init__()
        self.embed = nn.Linear(motion_dim, c.d_model)
        self.pos = ScaledPositions(c.d_model, c.dropout)
        layer = nn.TransformerDecoderLayer(c.d_model, c.n_heads, c.ff_dim, c.dropout, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerDecoder(layer, c.decoder_layers)
        self.norm = nn.LayerNorm(c.d_model)
        self.out = nn.Linear(c.d_model, motion_dim)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, causal: bool, pad: torch.Tensor | None):
        x, _ = self.pos(self.embed(tgt))  # (B, L, d)
        L = x.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(L, device=x.device) if causal else None
        x = self.blocks(x, memory, tgt_mask=mask, tgt_is_causal=causal, memory_key_padding_mask=pad)
        return self.out(self.norm(x))  # (B, L, D)


class ListenFormer(Baseline):
    name = "listenformer"
    Config = ListenFormerConfig
    trainable = True
    uses_speaker = True
    train_defaults = dict(lr=2e-3, weight_decay=0.05, epochs=200, batch_size=128, clip_len=90, clip_stride=1)

    def __init__(self, config: ListenFormerConfig):
        super().__init__(config)
        D = self.spec.dim
        self.encoder = AudioEncoder(config)
        self.fusion = SpeakerAudioFusion(config, self.speaker_width())
        self.decoder = MotionDecoder(config, D)

    def window(self, audio, speaker, decoder_in, causal: bool, mask=None) -> torch.Tensor:
        """One window: motion (B, L, D) = decoder_in[:, :1] then the predicted frames 1 .. L-1."""
        pad = None if mask is None else ~mask
        enc, pos = self.encoder(audio, pad)  # (B, L, d)
        fused = self.fusion(enc, self.speaker_z(speaker, audio), pos, pad)  # (B, L, d)
        nxt = self.decoder(decoder_in, fused, causal, pad)  # (B, L, D): output t predicts frame t + 1
        return torch.cat([decoder_in[:, :1], nxt[:, :-1]], dim=1)

    def loss(self, batch, progress=0.0):
        motion, mask = batch["motion"], batch["mask"]
        teacher = self.training and progress < self.config.teacher_forcing
        # stage 1: the ground truth, causal; stage 2 (and validation): the first frame repeated, non-causal
        decoder_in = motion if teacher else motion[:, :1].expand_as(motion)
        pred = self.window(batch["audio"], batch.get("speaker"), decoder_in, causal=teacher, mask=mask)
        out = block_l2_loss(pred, motion, mask, self.spec, self.config.vel_weights)
        out["stage"] = torch.tensor(1.0 if teacher else 2.0)
        return out

    def sample(self, audio, first, speaker=None, words=None, samples=1, seed=0):
        T, W, shift = audio.shape[1], self.config.window, self.config.shift
        starts = [0] if T <= W else list(range(0, T - W, shift))
        if T > W and starts[-1] + W < T:
            starts.append(T - W)  # the last window ends with the clip
        out = torch.zeros(1, T, self.spec.dim)
        out[:, 0] = first
        filled = 1
        for s in starts:
            a = audio[:, s : s + W]
            spk = None if speaker is None else speaker[:, s : s + W]
            start_frame = out[:, s : s + 1].expand(-1, a.shape[1], -1)  # the frame generated at the window start
            pred = self.window(a, spk, start_frame, causal=False)  # (1, L, D), pred[:, 0] = out[:, s]
            filled = crossfade_into(out, filled, s + 1, pred[:, 1:])
        return out.expand(samples, -1, -1).clone()
