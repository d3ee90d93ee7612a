"""Learning2Listen (Ng et al., CVPR 2022; evonneng/learning2listen), top to bottom.

    1. motion VQ-VAE ("l2_32_smoothSS"), on 32-frame chunks:
       listener motion (32, D) ──► Conv1d(D, 256, k5, stride 2) - LeakyReLU - BN
           ──► 2 x [Conv1d(256, 256, k5) - LeakyReLU - BN - MaxPool(2)]      (8 frames per token)
           ──► Linear + positions ──► transformer ──► z (4, 256) ──► nearest of 200 codes
       codes ──► ConvTranspose1d(stride 2) - LeakyReLU - BN ──► 2 x [Conv1d - LeakyReLU - BN, repeat x2]
           ──► Linear + positions ──► transformer ──► Conv1d(256, D, k5) ──► motion (32, D)
    2. predictor ("delta_v6"), one listener token at a time:
       speaker audio + speaker motion, the 40 frames up to the end of the token (32 past + 8 current)
           ──► Linear(-> 400) + positions each ──► cross-modal transformer (audio attends to motion)
           ──► Conv1d stride 2 + 2 x [Conv1d - MaxPool(2)] (8x down: 5 tokens) ──► Linear(400 -> 200)
       the listener's 4 past tokens ──► Embedding(200, 200) + positions ──► 1-layer transformer
       [listener past (4) ; speaker (5)] + positions ──► 5-layer transformer ──► Linear(200 -> 200 codes)
    3. sampling: nucleus sampling, temperature 0.7, top-p 0.9; tokens decoded 4 at a time.

Facts from the authors' configs: codebook 200 x 256, commitment 0.25, VQ transformer 12 layers x 8
heads x FF 384, L1 reconstruction per block; predictor hidden 200, 10 heads, FF 128, 5 cross-modal
layers, 1-layer listener-past transformer, 2-layer speaker cross-modal transformer at width 400;
listener past randomly masked in training (whole past hidden with probability 1/21, only the last
k = 1..3 tokens visible with 1/21 each). Ours: one training run does both stages (the first
``vq_fraction`` of the steps train the VQ-VAE, the rest the predictor with the VQ-VAE frozen);
sinusoidal instead of learned positions; AdamW instead of the Noam schedule; the codebook
initialised from the encoder outputs of the first training batch; generation starts
with no listener past (the first frame is not used); any audio extractor replaces the 4-per-frame
mel input; the validation loss is the motion L1 of the decoded teacher-forced argmax tokens, so
it is comparable across the two stages.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from realm.models.baselines.base import Baseline, BaselineConfig, seeded, top_p_sample

FRAMES_PER_TOKEN = 8  # 3 halvings (quant_factor 3)


@dataclass
class L2LConfig(BaselineConfig):
    # motion VQ-VAE
    hidden: int = 256
    vq_layers: int = 12
    vq_heads: int = 8
    vq_ff: int = 384
    codes: int = 200
    beta: float = 0.25  # commitment
    chunk_tokens: int = 4  # the VQ-VAE reads and writes 32-frame chunks
    # predictor
    pred_hidden: int = 200
    pred_heads: int = 10
    pred_ff: int = 128
    pred_layers: int = 5
    speaker_layers: int = 2
    past_tokens: int = 4
    # sampling
    temperature: float = 0.7
    top_p: float = 0.9
    # training (ours): fraction of the steps that train the VQ-VAE before the predictor
    vq_fraction: float = 0.5


def positions(L: int, d: int, device=None) -> torch.Tensor:
    """Sinusoidal positions (L, d)."""
    pos = torch.arange(L, device=device).unsqueeze(1)
    div = torch.exp(torch.arange(0, d, 2, device=device) * (-math.log(10000.0) / d))
    pe = torch.zeros(L, d, device=device)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * div), torch.cos(pos * div)  # d even
    return pe


def encoder(d: int, heads: int, ff: int, layers: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(d, heads, ff, 0.1, activation="gelu", batch_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


def downsampler(d_in: int, d: int) -> nn.Sequential:
    """8x temporal downsampling: conv stride 2, then 2 x (conv, max-pool 2); channels first."""
    block = lambda: [nn.Conv1d(d, d, 5, padding=2, padding_mode="replicate"), nn.LeakyReLU(0.2), nn.BatchNorm1d(d), nn.MaxPool1d(2)]  # noqa: E731
    return nn.Sequential(
        nn.Conv1d(d_in, d, 5, stride=2, padding=2, padding_mode="replicate"), nn.LeakyReLU(0.2), nn.BatchNorm1d(d),
        *block(), *block(),
    )  # fmt: skip


# ---------------------------------------------------------------- 1. motion VQ-VAE


class MotionVQ(nn.Module):
    def __init__(self, c: L2LConfig, motion_dim: int):
        super().__init__()
        h = c.hidden
        self.beta = c.beta
        # encoder
        self.squash = downsampler(motion_dim, h)
        self.enc_in = nn.Linear(h, h)
        self.enc = encoder(h, c.vq_heads, c.vq_ff, c.vq_layers)
        # quantiser
        self.codebook = nn.Embedding(c.codes, h)
        self.codebook.weight.data.uniform_(-1.0 / c.codes, 1.0 / c.codes)
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))  # codebook set from data yet?
        # decoder
        self.expand = nn.ModuleList([
            nn.Sequential(nn.ConvTranspose1d(h, h, 5, stride=2, padding=2, output_padding=1), nn.LeakyReLU(0.2), nn.BatchNorm1d(h)),
            nn.Sequential(nn.Conv1d(h, h, 5, padding=2, padding_mode="replicate"), nn.LeakyReLU(0.2), nn.BatchNorm1d(h)),
            nn.Sequential(nn.Conv1d(h, h, 5, padding=2, padding_mode="replicate"), nn.LeakyReLU(0.2), nn.BatchNorm1d(h)),
        ])  # fmt: skip
        self.dec_in = nn.Linear(h, h)
        self.dec = encoder(h, c.vq_heads, c.vq_ff, c.vq_layers)
        self.smooth = nn.Conv1d(h, motion_dim, 5, padding=2)

    def encode(self, motion: torch.Tensor) -> torch.Tensor:  # (B, 8n, D) -> z (B, n, h)
        x = rearrange(self.squash(rearrange(motion, "b t d -> b d t")), "b h n -> b n h")
        x = self.enc_in(x)
        return self.enc(x + positions(x.shape[1], x.shape[2], x.device))

    @torch.no_grad()
    def init_codebook(self, z: torch.Tensor) -> None:
        """Codes := random encoder outputs of the first training batch (ours: the authors' tiny uniform
        init leaves most codes unused for a long time)."""
        flat = z.reshape(-1, z.shape[-1])
        idx = torch.randint(len(flat), (self.codebook.num_embeddings,), device=z.device)
        self.codebook.weight.copy_(flat[idx] + 0.01 * torch.randn_like(flat[idx]))
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.broadcast(self.codebook.weight, 0)
        self.initialised.fill_(True)

    def quantize(self, z: torch.Tensor):
        """Nearest codes: (tokens (B, n), straight-through quantised z, VQ loss)."""
        if self.training and not self.initialised:
            self.init_codebook(z)
        d = torch.cdist(z.reshape(-1, z.shape[-1]), self.codebook.weight)  # (B n, codes)
        tokens = d.argmin(-1).view(z.shape[:2])
        q = self.codebook(tokens)
        loss = F.mse_loss(q, z.detach()) + self.beta * F.mse_loss(z, q.detach())
        return tokens, z + (q - z).detach(), loss

    def decode(self, q: torch.Tensor) -> torch.Tensor:  # (B, n, h) -> motion (B, 8n, D)
        x = rearrange(q, "b n h -> b h n")
        for i, layer in enumerate(self.expand):
            x = layer(x)
            if i > 0:
                x = x.repeat_interleave(2, dim=-1)
        x = self.dec_in(rearrange(x, "b h t -> b t h"))
        x = self.dec(x + positions(x.shape[1], x.shape[2], x.device))
        return rearrange(self.smooth(rearrange(x, "b t h -> b h t")), "b d t -> b t d")

    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.decode(self.codebook(tokens))


# ---------------------------------------------------------------- 2. predictor


class SpeakerEncoder(nn.Module):
    """Speaker audio + motion of 40 frames -> 5 speaker tokens."""

    def __init__(self, c: L2LConfig, audio_dim: int, speaker_dim: int):
        super().__init__()
        w = 2 * c.pred_hidden
        self.audio = nn.Linear(audio_dim, w)
        self.motion = nn.Linear(speaker_dim, w)
        layer = nn.TransformerDecoderLayer(w, c.pred_heads, c.pred_ff, 0.1, activation="gelu", batch_first=True)
        self.cross_modal = nn.TransformerDecoder(layer, c.speaker_layers)
        self.post = downsampler(w, w)
        self.proj = nn.Linear(w, c.pred_hidden)

    def forward(self, audio: torch.Tensor, speaker: torch.Tensor) -> torch.Tensor:  # (N, 40, A), (N, 40, Ds)
        pe = positions(audio.shape[1], self.audio.out_features, audio.device)
        x = self.cross_modal(self.audio(audio) + pe, self.motion(speaker) + pe)  # (N, 40, 400)
        x = rearrange(self.post(rearrange(x, "n t w -> n w t")), "n w k -> n k w")  # (N, 5, 400)
        return self.proj(x)  # (N, 5, 200)


class Predictor(nn.Module):
    def __init__(self, c: L2LConfig, audio_dim: int, speaker_dim: int):
        super().__init__()
        h = c.pred_hidden
        self.speaker = SpeakerEncoder(c, audio_dim, speaker_dim)
        self.past_embed = nn.Embedding(c.codes, h)
        self.past = encoder(h, c.pred_heads, c.pred_ff, 1)
        self.cross = encoder(h, c.pred_heads, c.pred_ff, c.pred_layers)
        self.head = nn.Linear(h, c.codes)

    def forward(self, past: torch.Tensor, visible: torch.Tensor, audio: torch.Tensor, speaker: torch.Tensor):
        """Logits (N, codes) of the next listener token.

        past (N, P) tokens, visible (N, P) bool (hidden past = zeros), audio (N, 40, A), speaker (N, 40, Ds).
        """
        P, h = past.shape[1], self.past_embed.embedding_dim
        x = self.past_embed(past) * visible[..., None]
        x = x + positions(P, h, x.device)
        lp = torch.where(visible.any(-1, keepdim=True)[..., None], self.past(x), x)  # (N, P, h)
        sp = self.speaker(audio, speaker)  # (N, 5, h)
        y = torch.cat([lp, sp], dim=1)  # (N, P + 5, h)
        y = self.cross(y + positions(y.shape[1], h, y.device))
        return self.head(y[:, -1])  # the current speaker token, aligned with the predicted listener token


# ---------------------------------------------------------------- the model


class Learning2Listen(Baseline):
    name = "l2l"
    Config = L2LConfig
    trainable = True
    staged = True  # VQ-VAE first, then the token model
    stochastic = True
    uses_speaker = True
    train_defaults = dict(lr=2e-4, weight_decay=0.0, epochs=200, batch_size=32, clip_len=64, clip_stride=8)

    def __init__(self, config: L2LConfig):
        super().__init__(config)
        self.vq = MotionVQ(config, self.spec.dim)
        self.predictor = Predictor(config, config.audio_dim, self.speaker_width())

    # -- VQ-VAE on 32-frame chunks
    @property
    def chunk(self) -> int:
        return self.config.chunk_tokens * FRAMES_PER_TOKEN

    def tokenize(self, motion: torch.Tensor) -> torch.Tensor:
        """Tokens (B, T / 8) of motion (B, T, D), T a multiple of 32."""
        x = rearrange(motion, "b (k t) d -> (b k) t d", t=self.chunk)
        tokens, _, _ = self.vq.quantize(self.vq.encode(x))
        return rearrange(tokens, "(b k) n -> b (k n)", b=motion.shape[0])

    def detokenize(self, tokens: torch.Tensor) -> torch.Tensor:
        """Motion (B, 8 n, D) of tokens (B, n): decoded ``chunk_tokens`` at a time (n padded by repeating)."""
        B, n = tokens.shape
        k = self.config.chunk_tokens
        pad = (-n) % k
        t = torch.cat([tokens, tokens[:, -1:].expand(-1, pad)], dim=1) if pad else tokens
        x = self.vq.decode_tokens(rearrange(t, "b (c k) -> (b c) k", k=k))
        return rearrange(x, "(b c) t d -> b (c t) d", b=B)[:, : n * FRAMES_PER_TOKEN]

    # -- predictor inputs: for every token j, its past tokens and its 40 speaker frames
    def contexts(self, audio: torch.Tensor, spk: torch.Tensor, tokens: torch.Tensor, j: torch.Tensor):
        """Inputs of the predictions of tokens ``j`` (J,) for every batch row: N = B x J rows.

        audio (B, T, A), spk (B, T, Ds) normalised speaker motion, tokens (B, >= max j) listener tokens.
        """
        P, f = self.config.past_tokens, FRAMES_PER_TOKEN
        frames = (P + 1) * f
        pad = lambda x: F.pad(x, (0, 0, P * f, 0))  # noqa: E731  zeros before the clip starts
        a, s = pad(audio), pad(spk)
        idx = (j[:, None] * f + torch.arange(frames, device=audio.device)[None])  # (J, 40) in padded frames
        a = rearrange(a[:, idx], "b j t d -> (b j) t d")
        s = rearrange(s[:, idx], "b j t d -> (b j) t d")
        pidx = j[:, None] - P + torch.arange(P, device=audio.device)[None]  # (J, P) past token indices
        visible = (pidx >= 0).expand(tokens.shape[0], -1, -1)
        past = tokens[:, pidx.clamp(min=0)] if tokens.shape[1] else torch.zeros_like(pidx).expand(tokens.shape[0], -1, -1)
        return rearrange(past, "b j p -> (b j) p"), rearrange(visible, "b j p -> (b j) p"), a, s

    def loss(self, batch, progress=0.0):
        motion, mask = batch["motion"], batch["mask"]
        B, T, _ = motion.shape
        if T % self.chunk:
            raise ValueError(f"l2l trains on windows of a multiple of {self.chunk} frames (clip_len), got {T}")
        m = mask.float()
        if self.training and progress < self.config.vq_fraction:  # stage 1: the VQ-VAE
            x = rearrange(motion, "b (k t) d -> (b k) t d", t=self.chunk)
            _, q, vq_loss = self.vq.quantize(self.vq.encode(x))
            recon = rearrange(self.vq.decode(q), "(b k) t d -> b (k t) d", b=B)
            rec = self.block_l1(recon, motion, m)
            return {"loss": rec + vq_loss, "recon": rec, "vq": vq_loss, "stage": torch.tensor(1.0)}
        with torch.no_grad():  # stage 2: the predictor, the VQ-VAE frozen
            self.vq.eval()
            tokens = self.tokenize(motion)  # (B, n)
            self.vq.train(self.training)
        n = tokens.shape[1]
        j = torch.arange(n, device=motion.device)
        spk = self.speaker_z(batch.get("speaker"), batch["audio"])
        past, visible, a, s = self.contexts(batch["audio"], spk, tokens, j)
        if self.training:  # random masking of the listener past (the authors' schedule)
            k = torch.randint(0, 5 * self.config.past_tokens + 1, (len(past), 1), device=past.device)
            keep = torch.arange(self.config.past_tokens, device=past.device)[None] >= self.config.past_tokens - k
            visible = visible & keep
        logits = self.predictor(past, visible, a, s)  # (B n, codes)
        tm = rearrange(m, "b (n f) -> (b n) f", f=FRAMES_PER_TOKEN).amax(-1)  # tokens with a real frame
        ce = (F.cross_entropy(logits, tokens.reshape(-1), reduction="none") * tm).sum() / tm.sum().clamp(min=1)
        if self.training:
            return {"loss": ce, "ce": ce, "stage": torch.tensor(2.0)}
        with torch.no_grad():  # validation: motion L1 of the decoded argmax tokens (comparable across stages)
            pred = self.detokenize(logits.argmax(-1).view(B, n))
            rec = self.block_l1(pred, motion, m)
        return {"loss": rec, "ce": ce}

    def block_l1(self, pred, gt, m) -> torch.Tensor:
        """Sum over blocks of the masked mean L1 (the authors' exp + rot + jaw L1)."""
        total = pred.new_zeros(())
        for name, _ in self.spec.blocks:
            s = self.spec.block(name).slice
            total = total + ((pred[..., s] - gt[..., s]).abs().mean(-1) * m).sum() / m.sum().clamp(min=1)
        return total

    def sample(self, audio, first, speaker=None, words=None, samples=1, seed=0):
        T, f = audio.shape[1], FRAMES_PER_TOKEN
        n = -(-T // f)
        pad = n * f - T
        a = F.pad(audio, (0, 0, 0, pad)).expand(samples, -1, -1)  # (S, 8n, A)
        s = self.speaker_z(None if speaker is None else F.pad(speaker, (0, 0, 0, pad), mode="replicate"), a[:1])
        s = s.expand(samples, -1, -1)  # (S, 8n, Ds) normalised
        gens = [seeded(seed, k) for k in range(samples)]
        tokens = torch.zeros(samples, 0, dtype=torch.long)
        for j in range(n):
            past, visible, aj, sj = self.contexts(a, s, tokens, torch.tensor([j]))
            logits = self.predictor(past, visible, aj, sj)  # (S, codes)
            nxt = torch.stack([top_p_sample(logits[k : k + 1], self.config.temperature, self.config.top_p, gens[k])[0]
                               for k in range(samples)])  # fmt: skip
            tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        return self.detokenize(tokens)[:, :T]
