"""LM-Listener (Ng et al., ICCV 2023, "Can Language Models Learn to Listen?"), top to bottom.

    1. motion VQ-VAE (T2M-GPT style), 8 frames per token:
       listener motion (T, D) ──► Conv1d(D, 512, k3) - ReLU
           ──► 3 x [Conv1d(512, 512, k4, stride 2) ──► residual stack, depth 3, dilations 9, 3, 1]
           ──► Conv1d(512, 512, k3) ──► z (T / 8, 512) ──► nearest of 256 codes (EMA 0.99, dead-code reset)
       codes ──► Conv1d - ReLU ──► 3 x [residual stack ──► upsample x2 ──► Conv1d] ──► Conv1d - ReLU - Conv1d(512, D)
       loss: SmoothL1(motion) + 0.5 SmoothL1(velocity) + 0.02 commitment
    2. token language model over the speaker's words interleaved with listener motion tokens:
       [BOS] words of the 3 s before | w w m_0 w m_1 m_2 w ... : a word precedes motion token j once
       its end frame < 8 j; the model predicts each motion token from everything before it
       (cross-entropy on motion tokens only; half of the motion-token inputs replaced by random
       codes in training); greedy decoding.

Facts from the authors' code are in DESIGN section 8. Ours: the language model is a small GPT
trained from scratch (the authors fine-tune GPT-2 medium, which cannot be downloaded here) with a
word-level vocabulary of the training transcripts (unknown words -> <unk>); one training run does
both stages (the first ``vq_fraction`` of the steps train the VQ-VAE, the rest the LM with the
VQ-VAE frozen); generation slides a window of ``window_tokens`` motion tokens (the training
window, with its words and the 3 s of words before it). The model hears no audio (as
the authors'): without words (e.g. ``realm generate`` on bare audio, until offline ASR is wired in)
it produces the motion its LM expects in silence. The validation loss is the motion SmoothL1 of
the decoded teacher-forced argmax tokens, comparable across the two stages.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.data import Dataset

from realm.models.baselines.base import Baseline, BaselineConfig
from realm.text import normalise_word

log = logging.getLogger(__name__)

FRAMES_PER_TOKEN = 8  # 3 stride-2 stages
MAX_WORDS = 96  # words per training window kept for the LM (3 s before + the window)


@dataclass
class LMListenerConfig(BaselineConfig):
    # motion VQ-VAE
    width: int = 512
    codes: int = 256
    depth: int = 3  # residual blocks per stage, dilations 9, 3, 1
    ema: float = 0.99
    commit: float = 0.02
    w_vel: float = 0.5
    # language model
    gpt_dim: int = 256
    gpt_layers: int = 4
    gpt_heads: int = 4
    dropout: float = 0.1
    context: int = 256  # most tokens the LM reads (positions)
    window_tokens: int = 32  # motion tokens of a training window (clip_len / 8, set by fit); generation
    #                          slides a window of this many motion tokens, as the LM saw in training
    word_context_s: float = 3.0  # preceding words
    random_codes: float = 0.5  # fraction of motion-token inputs replaced by random codes in training
    max_vocab: int = 4000
    vocab: list = field(default_factory=list)  # words of the training transcripts, set by fit
    # training (ours): fraction of the steps that train the VQ-VAE before the LM
    vq_fraction: float = 0.5


# ---------------------------------------------------------------- 1. motion VQ-VAE


class ResStack(nn.Module):
    """Residual 1-D conv blocks, dilations 9, 3, 1 (depth 3): x + Conv1(ReLU(Conv3_d(ReLU(x))))."""

    def __init__(self, w: int, depth: int):
        super().__init__()
        dil = [3**i for i in range(depth)][::-1]
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.ReLU(), nn.Conv1d(w, w, 3, padding=d, dilation=d), nn.ReLU(), nn.Conv1d(w, w, 1)) for d in dil
        )

    def forward(self, x):
        for b in self.blocks:
            x = x + b(x)
        return x


class EMAQuantizer(nn.Module):
    """Codebook updated by exponential moving averages (0.99), dead codes reset to encoder outputs."""

    def __init__(self, codes: int, dim: int, mu: float):
        super().__init__()
        self.mu = mu
        self.register_buffer("codebook", torch.randn(codes, dim) * 0.01)
        self.register_buffer("code_sum", self.codebook.clone())
        self.register_buffer("code_count", torch.ones(codes))

    def tokens(self, z: torch.Tensor) -> torch.Tensor:  # (N, dim) -> (N,)
        return torch.cdist(z, self.codebook).argmin(-1)

    @torch.no_grad()
    def update(self, z: torch.Tensor, tokens: torch.Tensor) -> None:
        onehot = F.one_hot(tokens, self.codebook.shape[0]).type(z.dtype)  # (N, codes)
        self.code_sum.mul_(self.mu).add_(onehot.T @ z, alpha=1 - self.mu)
        self.code_count.mul_(self.mu).add_(onehot.sum(0), alpha=1 - self.mu)
        used = (self.code_count >= 1.0)[:, None]
        random = z[torch.randint(len(z), (self.codebook.shape[0],), device=z.device)]
        self.codebook.copy_(torch.where(used, self.code_sum / self.code_count.clamp(min=1e-5)[:, None], random))
        self.code_sum.copy_(torch.where(used, self.code_sum, random))
        self.code_count.copy_(torch.where(used[:, 0], self.code_count, torch.ones_like(self.code_count)))

    def forward(self, z: torch.Tensor):
        """z (B, n, dim) -> tokens (B, n), straight-through quantised z, commitment loss."""
        flat = z.reshape(-1, z.shape[-1])
        tokens = self.tokens(flat)
        if self.training:
            self.update(flat.detach(), tokens)
        q = self.codebook[tokens].view_as(z)
        return tokens.view(z.shape[:2]), z + (q - z).detach(), F.mse_loss(z, q.detach())


class MotionVQ(nn.Module):
    def __init__(self, c: LMListenerConfig, motion_dim: int):
        super().__init__()
        w = c.width
        stages = FRAMES_PER_TOKEN.bit_length() - 1
        self.encoder = nn.Sequential(
            nn.Conv1d(motion_dim, w, 3, padding=1), nn.ReLU(),
            *[m for _ in range(stages) for m in (nn.Conv1d(w, w, 4, stride=2, padding=1), ResStack(w, c.depth))],
            nn.Conv1d(w, w, 3, padding=1),
        )  # fmt: skip
        self.quantizer = EMAQuantizer(c.codes, w, c.ema)
        self.decoder = nn.Sequential(
            nn.Conv1d(w, w, 3, padding=1), nn.ReLU(),
            *[m for _ in range(stages) for m in (ResStack(w, c.depth), nn.Upsample(scale_factor=2), nn.Conv1d(w, w, 3, padding=1))],
            nn.Conv1d(w, w, 3, padding=1), nn.ReLU(), nn.Conv1d(w, motion_dim, 3, padding=1),
        )  # fmt: skip

    def encode(self, motion: torch.Tensor) -> torch.Tensor:  # (B, 8n, D) -> z (B, n, w)
        return rearrange(self.encoder(rearrange(motion, "b t d -> b d t")), "b w n -> b n w")

    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, n) -> (B, 8n, D)
        return self.decode(self.quantizer.codebook[tokens])

    def decode(self, q: torch.Tensor) -> torch.Tensor:
        return rearrange(self.decoder(rearrange(q, "b n w -> b w n")), "b d t -> b t d")


# ---------------------------------------------------------------- 2. the token language model


class GPT(nn.Module):
    """A small decoder-only transformer (nanoGPT-style: pre-norm blocks, learned positions, tied head)."""

    def __init__(self, vocab: int, c: LMListenerConfig):
        super().__init__()
        self.tok = nn.Embedding(vocab, c.gpt_dim)
        self.pos = nn.Embedding(c.context, c.gpt_dim)
        self.drop = nn.Dropout(c.dropout)
        layer = nn.TransformerEncoderLayer(
            c.gpt_dim, c.gpt_heads, 4 * c.gpt_dim, c.dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, c.gpt_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(c.gpt_dim)
        nn.init.normal_(self.tok.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (B, L) -> logits (B, L, vocab)
        L = ids.shape[1]
        x = self.drop(self.tok(ids) + self.pos(torch.arange(L, device=ids.device)))
        mask = nn.Transformer.generate_square_subsequent_mask(L, device=ids.device)
        return F.linear(self.norm(self.blocks(x, mask=mask, is_causal=True)), self.tok.weight)  # tied head


class WordWindows(Dataset):
    """Training windows plus the speaker's words: ``word_ids`` (MAX_WORDS,) (-1 = none) and
    ``word_end`` (MAX_WORDS,) end frames relative to the window start, for the words that end in the
    ``context_s`` seconds before the window or inside it."""

    def __init__(self, windows, vocab: dict[str, int], context_s: float):
        self.windows, self.vocab, self.context_s = windows, vocab, context_s

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict:
        item = self.windows[i]
        clip = self.windows.clips[int(item["clip"])]
        start, L, fps = int(item["start"]), len(item["mask"]), clip.fps
        ids = torch.full((MAX_WORDS,), -1, dtype=torch.long)
        ends = torch.zeros(MAX_WORDS, dtype=torch.long)
        k = 0
        for w in clip.words or []:
            e = int(np.floor(w.end * fps)) - start
            if -self.context_s * fps <= e < L and k < MAX_WORDS:
                ids[k], ends[k] = self.vocab.get(normalise_word(w.word), 0), e
                k += 1
        return {**item, "word_ids": ids, "word_end": ends}


class LMListener(Baseline):
    name = "lm_listener"
    Config = LMListenerConfig
    trainable = True
    staged = True  # VQ-VAE first, then the token model
    uses_words = True
    train_defaults = dict(lr=2e-4, weight_decay=0.0, epochs=100, batch_size=32, clip_len=256, clip_stride=32)

    # vocabulary layout: [motion codes | BOS | word tokens (0 = <unk>) ...]
    def __init__(self, config: LMListenerConfig):
        super().__init__(config)
        c = config
        self.vq = MotionVQ(c, self.spec.dim)
        self.bos = c.codes
        self.word0 = c.codes + 1
        self.words = {w: i + 1 for i, w in enumerate(c.vocab)}  # 0 = <unk>
        self.lm = GPT(c.codes + 2 + len(c.vocab), c)

    @classmethod
    def configure(cls, config: LMListenerConfig, data) -> None:
        """The word vocabulary of the training transcripts (most frequent first, ``max_vocab`` at most)."""
        counts = Counter(normalise_word(w.word) for c in data.train.clips for w in c.words or [])
        counts.pop("", None)
        config.vocab = [w for w, _ in counts.most_common(config.max_vocab)]
        config.window_tokens = max(1, data.train.length // FRAMES_PER_TOKEN)
        if not config.vocab:
            log.warning("lm_listener: the training clips have no words; the LM sees motion tokens only")

    def wrap_dataset(self, windows):
        return WordWindows(windows, self.words, self.config.word_context_s)

    # -- token sequences
    def sequence(self, motion_tokens: list[int], word_ids: list[int], word_end: list[int]):
        """Interleave: [BOS] prefix words (end < 0), then before motion token j the words with end < 8 j.

        Returns (ids, motion positions): the position of each motion token in ``ids``.
        """
        order = sorted(range(len(word_ids)), key=lambda i: word_end[i])
        ids, pos, w = [self.bos], [], 0
        for j, m in enumerate(motion_tokens):
            while w < len(order) and word_end[order[w]] < FRAMES_PER_TOKEN * j:
                ids.append(self.word0 + word_ids[order[w]])
                w += 1
            pos.append(len(ids))
            ids.append(m)
        return ids, pos

    def lm_batch(self, tokens: torch.Tensor, batch: dict, randomise: bool):
        """Padded LM inputs (B, L), targets (B, L) (-100 except at motion tokens)."""
        B, n = tokens.shape
        seqs, targets = [], []
        for b in range(B):
            wid = batch["word_ids"][b] if "word_ids" in batch else torch.zeros(0, dtype=torch.long)
            valid = wid >= 0
            ids, pos = self.sequence(tokens[b].tolist(), wid[valid].tolist(), batch["word_end"][b][valid].tolist() if valid.any() else [])
            ids, pos = ids[-self.config.context :], [p - max(0, len(ids) - self.config.context) for p in pos]
            tgt = [-100] * len(ids)
            for p, m in zip(pos, tokens[b].tolist(), strict=True):
                if p >= 1:
                    tgt[p - 1] = m  # the position before a motion token predicts it
            seqs.append(ids)
            targets.append(tgt)
        L = max(len(s) for s in seqs)
        ids = torch.full((B, L), self.bos, dtype=torch.long)
        tgt = torch.full((B, L), -100, dtype=torch.long)
        for b, (s, t) in enumerate(zip(seqs, targets, strict=True)):
            ids[b, : len(s)], tgt[b, : len(t)] = torch.tensor(s), torch.tensor(t)
        ids, tgt = ids.to(tokens.device), tgt.to(tokens.device)
        if randomise:  # half of the motion-token inputs become random codes
            is_motion = ids < self.config.codes
            swap = is_motion & (torch.rand(ids.shape, device=ids.device) < self.config.random_codes)
            ids = torch.where(swap, torch.randint_like(ids, self.config.codes), ids)
        return ids, tgt

    def motion_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return logits[..., : self.config.codes]  # motion tokens only

    # -- training
    def loss(self, batch, progress=0.0):
        motion, mask = batch["motion"], batch["mask"]
        B, T, _ = motion.shape
        if T % FRAMES_PER_TOKEN:
            raise ValueError(f"lm_listener trains on windows of a multiple of {FRAMES_PER_TOKEN} frames (clip_len), got {T}")
        m = mask.float()
        if self.training and progress < self.config.vq_fraction:  # stage 1: the VQ-VAE
            tokens, q, commit = self.vq.quantizer(self.vq.encode(motion))
            recon = self.vq.decode(q)
            rec = self.smooth_l1(recon, motion, m)
            loss = rec + self.config.commit * commit
            return {"loss": loss, "recon": rec, "commit": commit, "stage": torch.tensor(1.0)}
        with torch.no_grad():  # stage 2: the LM, the VQ-VAE frozen
            self.vq.eval()
            tokens, _, _ = self.vq.quantizer(self.vq.encode(motion))  # (B, n)
            self.vq.train(self.training)
        ids, tgt = self.lm_batch(tokens, batch, randomise=self.training)
        logits = self.motion_logits(self.lm(ids))  # (B, L, codes)
        ce = F.cross_entropy(rearrange(logits, "b l v -> (b l) v"), tgt.reshape(-1), ignore_index=-100)
        if self.training:
            return {"loss": ce, "ce": ce, "stage": torch.tensor(2.0)}
        with torch.no_grad():  # validation: motion SmoothL1 of the decoded teacher-forced argmax tokens
            pred_tokens = tokens.clone()
            for b in range(B):
                at = (tgt[b] >= 0).nonzero()[:, 0]
                pred_tokens[b, -len(at) :] = logits[b, at].argmax(-1)
            rec = self.smooth_l1(self.vq.decode_tokens(pred_tokens), motion, m)
        return {"loss": rec, "ce": ce}

    def smooth_l1(self, pred, gt, m) -> torch.Tensor:
        """SmoothL1 of positions + w_vel x SmoothL1 of velocities, masked means."""
        pos = (F.smooth_l1_loss(pred, gt, reduction="none").mean(-1) * m).sum() / m.sum().clamp(min=1)
        mv = m[:, 1:] * m[:, :-1]
        vel = F.smooth_l1_loss(torch.diff(pred, dim=1), torch.diff(gt, dim=1), reduction="none").mean(-1)
        return pos + self.config.w_vel * (vel * mv).sum() / mv.sum().clamp(min=1)

    # -- generation
    def sample(self, audio, first, speaker=None, words=None, samples=1, seed=0):
        T = audio.shape[1]
        n = -(-T // FRAMES_PER_TOKEN)
        if words is None:
            log.warning("lm_listener: no words given; the LM generates without speech content")
        fps, f, W = self.spec.fps, FRAMES_PER_TOKEN, self.config.window_tokens
        wids = [self.words.get(normalise_word(w.word), 0) for w in words or []]
        wend = [int(np.floor(w.end * fps)) for w in words or []]
        tokens: list[int] = []
        for j in range(n):  # greedy: deterministic, every sample the same
            j0 = max(0, j - W + 1)  # a window of W motion tokens ending with token j, as in training
            rel = [(i, e - f * j0) for i, e in zip(wids, wend, strict=True)
                   if -self.config.word_context_s * fps <= e - f * j0 < f * (j - j0)]  # fmt: skip
            ids, _ = self.sequence(tokens[j0:] + [0], [i for i, _ in rel], [e for _, e in rel])
            ids = [self.bos] + ids[1:-1][-(self.config.context - 1) :]  # drop the placeholder for token j
            logits = self.motion_logits(self.lm(torch.tensor([ids])))[0, -1]
            tokens.append(int(logits.argmax()))
        motion = self.vq.decode_tokens(torch.tensor([tokens]))[:, :T]
        return motion.expand(samples, -1, -1).clone()
