"""REALM: Reactive Embodied Audio-driven Listening Model (coarse-to-fine), top to bottom.

    speaker audio A (window of W frames) ──► SpeakerEncoder ──────────────┐
    listener history H (K frames) ──► Linear ──► ReactiveFusion (shifted ALiBi cross-attn) ──► F
                                                      ReactiveGate: alpha = sigmoid(MLP(F))
    memory = [(1 - alpha) * PE(Linear(H)) ; alpha * F]          (2W tokens)
             [ ; Linear(start frame) + anchor embedding ]       (our option identity_anchor: +1 token)
    W learned queries ──► CoarseDecoder (causal) ──► LSTM ──► delta heads per block ──► deltas
    motion of the window = last history frame + cumsum(deltas)           (per block)
    ...autoregressive over non-overlapping W-frame windows; the first window's history is the
       bootstrap guide: frame 0 held, head rotation interpolated to a predicted waypoint.
    Refinement (stage 2): expression + audio-modulated noise ──► SE ──► transformer ──►
       zero-initialised residual (starts as the identity). Pose is never refined.

Facts from the authors' code (lipzh5/REALM) and DESIGN section 7: W = K = 16, d = 128, 4 heads,
FF 512, tau = 8, ~2.29 M parameters (coarse) / 2.86 M (with refinement) at 768-d audio and
70-d motion. Block sizes come from the ``MotionSpec``. Everything works in normalised motion
space (z-scores); the caller de-normalises.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from realm.models.alibi import shifted_alibi_bias
from realm.motion import MotionSpec, get_spec


@dataclass
class REALMConfig:
    spec: str = "vico70"
    audio_dim: int = 768
    d_model: int = 128
    n_heads: int = 4
    ff_dim: int = 512
    dropout: float = 0.1
    window: int = 16  # W: frames predicted per step
    history: int = 16  # K: listener frames the model sees
    encoder_layers: int = 2
    decoder_layers: int = 4
    tau: int = 8  # reaction delay of the shifted ALiBi (0 = plain one-sided ALiBi)
    audio_context: int = 0  # frames of audio before the window the speaker encoder also reads
    #   (our option; 0 = the authors' setting). The fusion's keys stay the W window frames.
    #   Local features (logmel) need it to hear triggers up to tau frames before a window.
    use_gate: bool = True  # False: memory = [PE(Linear(H)) ; F] unweighted
    use_history: bool = True  # False: the model never sees its own past motion (audio-only)
    use_audio: bool = True  # False: audio zeroed ("deaf", history-only)
    use_refinement: bool = True
    zero_init_heads: bool = True  # our deviation: the delta heads start at 0 ("hold the last
    #   frame"), so early random deltas, summed over the rollout, do not swamp the optimiser's
    #   statistics; with default init a tiny model needed ~5x more steps to learn a reaction
    identity_anchor: bool = False  # our option: the frame generation starts from stays in the
    #   decoder's memory as one more token for the whole rollout, so the listener's identity
    #   (resting face) is not lost once the K-frame history is all the model's own output
    #   (docs/benchmark.md, "identity drift"). False = the authors' model.
    refine_dim: int = 128
    refine_ff: int = 256
    refine_block: str = "expression"

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- building blocks


class SinusoidalPE(nn.Module):
    def __init__(self, d: int, dropout: float = 0.1, max_len: int = 4096):
        super().__init__()
        pos = torch.arange(max_len).unsqueeze(1)
        div = torch.exp(torch.arange(0, d, 2) * (-math.log(10000.0) / d))
        pe = torch.zeros(max_len, d)
        pe[:, 0::2] = torch.sin(pos * div)
        pe[:, 1::2] = torch.cos(pos * div)
        self.register_buffer("pe", pe, persistent=False)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, d)
        return self.drop(x + self.pe[: x.shape[1]])


def _decoder_layer(c: REALMConfig, d: int | None = None, ff: int | None = None) -> nn.TransformerDecoderLayer:
    return nn.TransformerDecoderLayer(
        d or c.d_model, c.n_heads, ff or c.ff_dim, c.dropout, activation="gelu", batch_first=True, norm_first=False
    )


class SpeakerEncoder(nn.Module):
    """Conv1d(audio -> d, k3) + GELU, positions, 2 post-norm encoder layers, LayerNorm."""

    def __init__(self, c: REALMConfig):
        super().__init__()
        self.conv = nn.Conv1d(c.audio_dim, c.d_model, 3, padding=1)
        self.pe = SinusoidalPE(c.d_model, c.dropout)
        layer = nn.TransformerEncoderLayer(
            c.d_model, c.n_heads, c.ff_dim, c.dropout, activation="gelu", batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, c.encoder_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(c.d_model)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:  # (B, W, A) -> (B, W, d)
        x = F.gelu(self.conv(audio.transpose(1, 2))).transpose(1, 2)
        return self.norm(self.encoder(self.pe(x)))


class ReactiveFusion(nn.Module):
    """Listener history queries the speaker's audio through a shifted-ALiBi cross-attention."""

    def __init__(self, c: REALMConfig, motion_dim: int):
        super().__init__()
        self.n_heads = c.n_heads
        self.listener_proj = nn.Linear(motion_dim, c.d_model)
        self.layer = _decoder_layer(c)
        self.norm = nn.LayerNorm(c.d_model)
        self.pe = SinusoidalPE(c.d_model, c.dropout)
        self.register_buffer("bias", shifted_alibi_bias(c.history, c.window, c.n_heads, c.tau), persistent=False)

    def forward(self, audio_enc: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        # audio_enc (B, W, d), history (B, K, D) -> F (B, K, d)
        q = self.listener_proj(history)  # no positions; self-attention over history unmasked
        mask = self.bias.repeat(q.shape[0], 1, 1)  # (B * heads, K, W)
        fused = self.layer(tgt=q, memory=audio_enc, memory_mask=mask)
        return self.pe(self.norm(fused))


class ReactiveGate(nn.Module):
    """alpha = sigmoid(Linear - GELU - Linear(F)), one value per time step (output bias 0)."""

    def __init__(self, d: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, 1))
        nn.init.zeros_(self.mlp[2].bias)

    def forward(self, fused: torch.Tensor) -> torch.Tensor:  # (B, K, d) -> (B, K, 1)
        return torch.sigmoid(self.mlp(fused))


class CoarseDecoder(nn.Module):
    """Learned queries decode the gated memory (causal over queries), LSTM smoothing, delta heads."""

    def __init__(self, c: REALMConfig, spec: MotionSpec):
        super().__init__()
        self.c = c
        self.queries = nn.Parameter(torch.randn(1, c.window, c.d_model) * 0.02)
        self.pe = SinusoidalPE(c.d_model, c.dropout)
        self.motion_proj = nn.Linear(spec.dim, c.d_model)
        self.gate = ReactiveGate(c.d_model)
        layer = _decoder_layer(c)
        self.decoder = nn.TransformerDecoder(layer, c.decoder_layers)
        self.register_buffer(
            "causal", torch.triu(torch.full((c.window, c.window), float("-inf")), diagonal=1), persistent=False
        )
        self.lstm = nn.LSTM(c.d_model, c.d_model, batch_first=True)
        if c.identity_anchor:  # marks the anchor token apart from the history tokens
            self.anchor_embed = nn.Parameter(torch.randn(1, 1, c.d_model) * 0.02)
        self.heads = nn.ModuleDict({name: nn.Linear(c.d_model, size) for name, size in spec.blocks})
        if c.zero_init_heads:
            for head in self.heads.values():
                nn.init.zeros_(head.weight)
                nn.init.zeros_(head.bias)

    def forward(self, fused: torch.Tensor, history: torch.Tensor, anchor: torch.Tensor | None = None):
        # fused (B, K, d), history (B, K, D), anchor (B, D) -> deltas (B, W, D), alpha (B, K, 1)
        B = fused.shape[0]
        hist = self.pe(self.motion_proj(history))
        if self.c.use_gate:
            alpha = self.gate(fused)
            memory = torch.cat([(1 - alpha) * hist, alpha * fused], dim=1)  # (B, 2K, d)
        else:
            alpha = torch.ones(B, fused.shape[1], 1, device=fused.device)
            memory = torch.cat([hist, fused], dim=1)
        if self.c.identity_anchor:
            if anchor is None:
                raise ValueError("a model with identity_anchor needs the anchor frame (the frame generation starts from)")
            memory = torch.cat([memory, self.motion_proj(anchor).unsqueeze(1) + self.anchor_embed], dim=1)  # (B, 2K + 1, d)
        q = self.pe(self.queries.expand(B, -1, -1))
        x = self.decoder(tgt=q, memory=memory, tgt_mask=self.causal)
        x, _ = self.lstm(x)
        return torch.cat([head(x) for head in self.heads.values()], dim=-1), alpha


class Refinement(nn.Module):
    """Audio-modulated noise injection for high-frequency expression detail (stage 2)."""

    def __init__(self, c: REALMConfig, exp_dim: int):
        super().__init__()
        h = c.refine_dim
        self.local = nn.Sequential(
            nn.Conv1d(exp_dim, h, 3, padding=1), nn.GELU(), nn.Conv1d(h, h, 3, padding=1), nn.GELU()
        )
        self.modulator = nn.Sequential(nn.Conv1d(c.audio_dim, h, 3, padding=1), nn.GELU(), nn.Conv1d(h, 2 * h, 1))
        self.se = nn.Sequential(nn.Conv1d(h, h // 4, 1), nn.ReLU(), nn.Conv1d(h // 4, h, 1), nn.Sigmoid())
        layer = nn.TransformerEncoderLayer(h, c.n_heads, c.refine_ff, c.dropout, activation="gelu", batch_first=True)
        self.temporal = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.out = nn.Conv1d(h, exp_dim, 3, padding=1)
        nn.init.zeros_(self.out.weight)  # zero-initialised residual: starts as the identity
        nn.init.zeros_(self.out.bias)

    def forward(self, exp: torch.Tensor, audio: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        # exp (B, T, E), audio (B, T, A), noise (B, h, T) or None (drawn) -> refined exp (B, T, E)
        x = exp.transpose(1, 2)
        f = self.local(x)  # (B, h, T)
        gamma, beta = self.modulator(audio.transpose(1, 2)).chunk(2, dim=1)
        eps = torch.randn_like(f) if noise is None else noise
        f = f + gamma * eps + beta
        f = f * self.se(f.mean(dim=2, keepdim=True))  # squeeze-excitation channel attention
        f = self.temporal(f.transpose(1, 2)).transpose(1, 2)
        return (x + self.out(f)).transpose(1, 2)


class Discriminator(nn.Module):
    """Conv1d exp->128 - LeakyReLU - 128->256 (s2) - 256->512 (s2) - global average pool - Linear(512->1)."""

    def __init__(self, exp_dim: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(exp_dim, 128, 3, padding=1), nn.LeakyReLU(0.2),
            nn.Conv1d(128, 256, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv1d(256, 512, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
        )  # fmt: skip
        self.fc = nn.Linear(512, 1)

    def forward(self, exp: torch.Tensor) -> torch.Tensor:  # (B, T, E) -> logits (B,)
        return self.fc(self.net(exp.transpose(1, 2)).mean(dim=2)).squeeze(-1)


# ---------------------------------------------------------------- the model


class REALM(nn.Module):
    def __init__(self, config: REALMConfig):
        super().__init__()
        self.config = c = config
        self.spec = spec = get_spec(c.spec)
        self.audio_encoder = SpeakerEncoder(c)
        self.fusion = ReactiveFusion(c, spec.dim)
        self.decoder = CoarseDecoder(c, spec)
        self.rot = spec.block("rotation").slice if spec.has("rotation") else None
        if self.rot is not None:
            self.waypoint = nn.Sequential(nn.Linear(3 + c.audio_dim, 128), nn.GELU(), nn.Linear(128, 3))
        self.exp = spec.block(c.refine_block).slice
        self.refinement = Refinement(c, spec.block(c.refine_block).size) if c.use_refinement else None

    # -- one autoregressive step ------------------------------------------------
    def encode_window(self, audio: torch.Tensor) -> torch.Tensor:
        """Encode one window with its context: audio (B, C + W, A) -> (B, W, d), the last W frames."""
        if not self.config.use_audio:
            audio = torch.zeros_like(audio)
        return self.audio_encoder(audio)[:, -self.config.window :]

    def encode_audio(self, audio: torch.Tensor) -> torch.Tensor:
        """Encode every W-frame window of ``audio`` (B, n*W, A) at once -> (B, n, W, d).

        Window w reads frames [w W - C, (w + 1) W) (zeros before the start). Windows are encoded
        independently, so batching them changes nothing but the speed.
        """
        B, T, A = audio.shape
        W, C = self.config.window, self.config.audio_context
        ctx = F.pad(audio, (0, 0, C, 0)).unfold(1, C + W, W)  # (B, n, A, C + W)
        ctx = ctx.permute(0, 1, 3, 2).reshape(B * (T // W), C + W, A)
        return self.encode_window(ctx).reshape(B, T // W, W, -1)

    def step(self, audio: torch.Tensor, history: torch.Tensor, audio_enc: torch.Tensor | None = None,
             anchor: torch.Tensor | None = None):  # fmt: skip
        """Predict one window. audio (B, W, A), history (B, K, D) -> motion (B, W, D), alpha (B, K, 1).

        The window's motion is the last history frame plus the cumulative sum of the deltas.
        ``audio_enc`` (B, W, d) may hold the window's precomputed encoding (it must, when the
        model reads audio context before the window). ``anchor`` (B, D): the frame the rollout
        started from (:meth:`anchor_frame`), read only by models with ``identity_anchor``.
        """
        c = self.config
        if audio_enc is None:
            if c.audio_context:
                raise ValueError("with audio_context > 0, pass the window's encoding (encode_window)")
            audio_enc = self.encode_window(audio)
        seen = history if c.use_history else torch.zeros_like(history)
        fused = self.fusion(audio_enc, seen)  # (B, K, d)
        deltas, alpha = self.decoder(fused, seen, anchor)  # (B, W, D)
        return history[:, -1:] + torch.cumsum(deltas, dim=1), alpha

    def bootstrap(self, frame0: torch.Tensor, audio0: torch.Tensor):
        """Guide history for the first window from frame 0 (B, D) and its window's audio (B, W, A).

        Head rotation goes linearly from frame 0 to a waypoint predicted at frame W-1 from frame 0's
        rotation and the window's mean audio; every other block is held at frame 0.
        """
        W = self.config.window
        guide = frame0.unsqueeze(1).repeat(1, W, 1)  # (B, W, D)
        if self.rot is None:
            return guide, None
        a = audio0 if self.config.use_audio else torch.zeros_like(audio0)
        rot0 = frame0[:, self.rot]
        waypoint = self.waypoint(torch.cat([rot0, a.mean(dim=1)], dim=-1))  # (B, 3)
        s = torch.linspace(0, 1, W, device=frame0.device).view(1, W, 1)
        guide = guide.clone()
        guide[:, :, self.rot] = (1 - s) * rot0.unsqueeze(1) + s * waypoint.unsqueeze(1)
        return guide, waypoint

    @staticmethod
    def anchor_frame(frame0: torch.Tensor | None, history: torch.Tensor | None) -> torch.Tensor:
        """The identity anchor (B, D): the frame generation starts from (``frame0``, else the last
        frame of a real ``history``), as in training, where it is each clip's frame 0."""
        return history[:, -1] if history is not None else frame0

    def start(self, audio0: torch.Tensor, frame0: torch.Tensor | None = None, history: torch.Tensor | None = None):
        """History for the first window: the bootstrap guide from ``frame0`` (B, D), or the last K
        frames of a real ``history`` (B, K', D). Returns (history (B, K, D), waypoint or None)."""
        if history is not None:
            return _left_pad(history, self.config.history), None
        if frame0 is None:
            raise ValueError("generation needs frame0 or history")
        return self.bootstrap(frame0, audio0)

    def rollout(self, audio: torch.Tensor, frame0: torch.Tensor | None = None, history: torch.Tensor | None = None):
        """Coarse motion for all T frames of ``audio`` (B, T, A), autoregressively in W-frame windows.

        Start from ``frame0`` (B, D) through the bootstrap (frame 0 is then kept exactly), or from a
        real ``history`` (B, K', D) of the listener's last frames. Returns (motion (B, T, D), aux)
        where aux holds the gate values, the per-window boundary frames and the waypoint.
        """
        c = self.config
        B, T, _ = audio.shape
        W, K = c.window, c.history
        n_win = max(1, math.ceil(T / W))
        audio = F.pad(audio, (0, 0, 0, n_win * W - T))  # zero-pad the last window
        hist, waypoint = self.start(audio[:, :W], frame0, history)
        anchor = self.anchor_frame(frame0, history)
        enc = self.encode_audio(audio)  # (B, n_win, W, d)
        frames, alphas, bounds = [], [], []
        for w in range(n_win):
            window, alpha = self.step(audio[:, w * W : (w + 1) * W], hist, enc[:, w], anchor)
            if w == 0 and history is None:
                window = torch.cat([frame0.unsqueeze(1), window[:, 1:]], dim=1)  # anchor frame 0
            bounds.append((hist[:, -2:], window[:, :2]))
            frames.append(window)
            alphas.append(alpha)
            hist = torch.cat([hist, window], dim=1)[:, -K:]
        padded = torch.cat(frames, dim=1)  # (B, n_win * W, D): whole windows, before truncation to T
        aux = {"alpha": torch.cat(alphas, dim=1)[:, :T], "bounds": bounds, "waypoint": waypoint,
               "padded": padded, "padded_audio": audio}  # fmt: skip
        return padded[:, :T], aux

    # -- refinement ----------------------------------------------------------------
    def refine(self, motion: torch.Tensor, audio: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Replace the refined block of ``motion`` (B, T, D) by its refinement given ``audio`` (B, T, A)."""
        if self.refinement is None:
            return motion
        a = audio if self.config.use_audio else torch.zeros_like(audio)
        out = motion.clone()
        out[:, :, self.exp] = self.refinement(motion[:, :, self.exp], a, noise)
        return out

    def forward(self, audio, frame0=None, history=None, refine: bool = True):
        motion, aux = self.rollout(audio, frame0, history)
        if refine and self.refinement is not None:  # refine whole windows, as streaming does
            motion = self.refine(aux["padded"], aux["padded_audio"])[:, : motion.shape[1]]
        return motion, aux

    # -- introspection -------------------------------------------------------------
    @contextmanager
    def record_internals(self) -> Iterator[dict[str, list[torch.Tensor]]]:
        """Record the gate and the fusion's cross-attention of every window run inside the block.

            with model.record_internals() as rec:
                model.rollout(audio, frame0)
            rec["alpha"]      # one (B, K, 1) tensor per window: the reactive gate's values
            rec["attention"]  # one (B, heads, K, W) tensor per window: shifted-ALiBi cross-attention

        Forward hooks only: outputs are unchanged. The attention weights are recomputed from the
        same inputs with ``need_weights=True`` (the decoder layer itself does not ask for them).
        """
        rec: dict[str, list[torch.Tensor]] = {"alpha": [], "attention": []}
        attn = self.fusion.layer.multihead_attn
        busy = [False]

        def on_attention(module, args, kwargs):
            if busy[0]:
                return None
            busy[0] = True
            try:
                _, w = module(*args[:3], attn_mask=kwargs.get("attn_mask"), key_padding_mask=kwargs.get("key_padding_mask"),
                              need_weights=True, average_attn_weights=False)  # fmt: skip
                rec["attention"].append(w.detach().clone())
            finally:
                busy[0] = False
            return None

        def on_gate(module, args, output):
            rec["alpha"].append(output.detach().clone())

        handles = [attn.register_forward_pre_hook(on_attention, with_kwargs=True),
                   self.decoder.gate.register_forward_hook(on_gate)]  # fmt: skip
        try:
            yield rec
        finally:
            for h in handles:
                h.remove()

    def param_counts(self) -> dict[str, int]:
        n = lambda m: sum(p.numel() for p in m.parameters()) if m is not None else 0  # noqa: E731
        counts = {
            "audio_encoder": n(self.audio_encoder),
            "fusion": n(self.fusion),
            "decoder": n(self.decoder),
            "waypoint": n(self.waypoint) if self.rot is not None else 0,
            "refinement": n(self.refinement),
        }
        counts["coarse"] = counts["audio_encoder"] + counts["fusion"] + counts["decoder"] + counts["waypoint"]
        counts["total"] = counts["coarse"] + counts["refinement"]
        return counts


def _left_pad(history: torch.Tensor, K: int) -> torch.Tensor:
    """The last K frames of ``history`` (B, K', D); shorter histories repeat their first frame."""
    if history.shape[1] >= K:
        return history[:, -K:]
    return torch.cat([history[:, :1].expand(-1, K - history.shape[1], -1), history], dim=1)
