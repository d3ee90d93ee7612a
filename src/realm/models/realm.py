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
       refine_mode "causal" (ours, default): causal convolutions, SE over the last
       refine_context frames, attention to the last refine_context frames, so frame t depends on
       frames [t - R, t] only (R = Refinement.context): streams exactly, no window seams.
       refine_mode "whole" (the authors'): centred convolutions, SE and attention over the whole
       sequence (inference.py refines the whole generated sequence at once).

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

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from realm.errors import check_choices
from realm.models.alibi import shifted_alibi_bias
from realm.models.layers import Dropout, attention, decoder_layer, encoder_layer
from realm.motion import FAST_EVENTS, MotionSpec, events_in_spec, get_spec


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
    latent_dim: int = 0  # ours: a stochastic coarse generator. Each window's decoder queries get
    #   a projected N(0, I) latent of this size, so rollouts with different latents are samples of
    #   the listener's reaction, not its conditional mean (trained with the energy score,
    #   TrainConfig.coarse_loss="energy"; docs/realm.md). 0 = the paper's deterministic decoder.
    latent_gate: bool = False  # ours: each window's latent is scaled, per channel, by a gate read from
    #   what the model hears and its history (sigmoid(Linear(the fused tokens' mean))), so the spread
    #   of the samples can follow the audio (wide after a trigger, none in silence) instead of being
    #   the same in every window. Starts mostly open (0.88, where the sigmoid still learns). Measured
    #   with the energy score: the gate did not learn (docs/realm.md). False = the latent added as it is
    react_gate: bool = False  # ours: each window's latent is scaled by the probability that a reaction
    #   (smile, concern, brow raise, nod) starts in the window, read from the fused tokens by a small
    #   classifier trained on the ground truth's reaction onsets (TrainConfig.w_react: binary
    #   cross-entropy), not through the latent: the samples spread where the listener may react and
    #   keep to the conditional mean elsewhere (silence). The scale is the classifier's output
    #   without its gradient. False = the latent added as it is
    react_floor: float = 0.0  # ours, with react_gate: the latent is scaled by floor + (1 - floor) p
    #   instead of p, so the samples keep this much of their spread where the classifier hears no
    #   reaction (noise it never heard, speech unlike the training data). 0 = p itself (as trained);
    #   1 = the gate open (the ungated model). Chosen at generation, like latent_temperature
    #   (docs/realm.md, measured)
    react_threshold: float = 0.0  # ours, with react_gate: the latent is scaled by (p - t) / (1 - t), 0
    #   below t, instead of p: the classifier's floor (p about 0.02 in silence) opens no spread, which
    #   through the branch's offset (time constant 1/mu frames) made the face wander in silence
    #   (measured; docs/realm.md). 0 = p itself. Set at generation (like react_floor) or in training
    latent_branch: bool = False  # ours, with latent_dim: the latent does not enter the decoder's
    #   queries; a branch of its own, an MLP on each frame's decoded state and the window's projected
    #   latent, adds a term that is 0 at z = 0 to the deltas (branch_form). The zero-latent rollout is then
    #   the deterministic decoder's exactly, so a fine-tune with that decoder frozen learns the spread
    #   without moving the zero-latent rollout. False = the latent added to the queries
    branch_queries: bool = False  # with latent_branch: the latent also enters the decoder's queries, as
    #   without the branch (before react_gate's scale, as a decoder trained without react_gate read it), so
    #   a branch trained over a frozen decoder that already has its latent path adds to that decoder's
    #   spread instead of replacing it (measured; docs/realm.md). False = the branch is the latent's only path
    branch_form: str = "odd"  # with latent_branch: "odd" adds (branch(state, z) - branch(state, -z)) / 2,
    #   an odd function of z, so the samples' mean over z is the zero-latent rollout's delta by
    #   construction; "diff" adds branch(state, z) - branch(state, 0), 0 at z = 0 only, whose mean
    #   over z moved (measured: a drift on long inputs; docs/realm.md)
    branch_into: str = "deltas"  # with latent_branch: where the branch's term goes. "deltas": added to
    #   the decoder's deltas, so the integration keeps it (a step; measured: the noise it adds to the
    #   channels the listener does not move builds up over minutes); "offset": into an offset of its
    #   own, o_t = (1 - mu) o_{t-1} + term_t with a learned per-channel decay mu, added to the motion
    #   and carried from window to window but kept out of the decoder's history and integration (a
    #   pulse: it returns to 0 when the branch's term does, and the zero-latent rollout is the decoder's)
    offset_decay_init: float = 0.05  # mu per frame at the start (0.05: an offset halves in 0.45 s)
    branch_blocks: tuple[str, ...] = ()  # with latent_branch: the blocks the branch moves (e.g.
    #   ("expression",), the blocks the energy score trains it on); () = every channel (as before 2026-11-30)
    branch_exclude: tuple[str, ...] = ()  # with latent_branch: channels (MotionSpec.channel names: "mouthFrownLeft")
    #   the branch does not move, inside branch_blocks: their motion is the decoder's alone (measured: the
    #   branch's frowns came with its smiles and erased the decoder's own; docs/realm.md). () = none
    react_shift: int = 0  # ours, with latent_branch: frames the window's latent (scaled by react_gate's
    #   probability) is shifted later. Frames [0, shift) of window w read window w-1's latent and the
    #   classifier learns "a reaction starts in frames [shift, W + shift) of window w", so the spread
    #   can open tau frames after the trigger the window's audio holds, not at the window's first frame
    #   (measured: 10 frames early with shift 0; docs/realm.md). 0 = the window's own latent
    react_condition: tuple[str, ...] = ()  # ours: reaction kinds (realm.metrics.DETECTORS names: "smile",
    #   "concern", "brow_raise", "nod") the decoder is told about. Each window's queries get an embedding of
    #   which of them start in the window (its frames [react_shift, W + react_shift)): in training the ground
    #   truth's onsets, at generation drawn, kind k with the probability a classifier on the fused tokens
    #   gives it (trained on those onsets, TrainConfig.w_react), from extra dims of the window's latent
    #   (u = Phi(latent), so the seed, the samples and streaming stay as they are; at kind_temperature 0 a
    #   kind starts where its probability is above 0.5). The decoder then plays one reaction or none instead of
    #   the conditional mean's blend of every kind at each trigger (measured: the mean smiled and frowned a
    #   little at once at every phrase end of real speech; docs/realm.md). () = none. "any" (ANY_REACTION)
    #   is "a reaction starts" (any of TrainConfig.react_kinds or of the kinds named): told with every other
    #   kind and alone where the reaction is none of them (a nod), so "nothing told" means no reaction
    #   without telling the nod's own timing; drawn with the classifier's p_any, alone with what p_any leaves
    offset_bounds: bool = True  # with branch_into="offset": the offset cannot take a channel past the
    #   spec's defined range (arkit58: blendshapes 0..1, set in normalised units from the training data's
    #   stats, REALM.set_out_bounds) nor further past it than the decoder's own motion; a sample whose
    #   offset would go below a blendshape's 0 rests at 0, so the symmetric odd branch gives one-sided
    #   reactions (a smile or none). False: unbounded (measured: half the samples frowned by as much
    #   as others smiled, far below the data's range; docs/realm.md)
    offset_floor: str = "range"  # with offset_bounds: how low the offset may take a channel that has a
    #   range: "range", to the range's floor (a blendshape's 0); "rest", not below the frame the rollout
    #   started from (the anchor, the listener's resting face) either, so a sample whose offset is
    #   negative does not erase a reaction of the decoder's below rest (measured; docs/realm.md)
    latent_temperature: float = 1.0  # ours, generation only: each window's latent is scaled by
    #   this (training draws N(0, I)). Below 1 the samples keep nearer the conditional mean (the
    #   zero latent): reaction timing over spread; 0 is the mean itself (docs/realm.md, measured)
    kind_temperature: float = 1.0  # ours, generation only, with react_condition: the latent's kind dims
    #   are scaled by this instead. 1 draws each kind with the classifier's probability (the listener's
    #   rate where the classifier is calibrated); 0 plays a kind only where its probability is above 0.5
    #   (at 0.5, as latent_temperature, a kind with p 0.15 would start in 2 % of windows, not 15 %)
    kind_draw: str = "each"  # ours, generation only, with react_condition: "each" draws every kind apart
    #   (two may start in one window); "one" draws one kind or none from the window's first kind dim, kind k
    #   with probability p_k (the p_k scaled to sum to 1 where they sum above 1), so a smile and a frown
    #   never start together (measured: drawn apart, a sample smiled and frowned at once; docs/realm.md)
    rest_leak: bool = False  # ours: a learned restoring force. Each channel's integrated state
    #   leaks toward the rollout's start frame (the identity anchor, the listener's resting face):
    #   x_t = a + (1 - lambda) (x_{t-1} - a) + delta_t, lambda = sigmoid(a learned logit) per
    #   channel, so an offset decays instead of drifting (docs/realm.md). False = the paper's sum.
    rest_leak_init: float = 0.002  # lambda per frame at the start (0.002: an offset halves in 11.5 s)
    first_window: str = "frame0"  # "frame0": the first window's deltas are integrated from frame 0
    #   (the authors'); "guide": from the bootstrap guide's last frame (our checkpoints before
    #   2026-11-28), which made head rotation jump between frames 0 and 1
    refine_dim: int = 128
    refine_ff: int = 256
    refine_block: str = "expression"
    refine_mode: str = "causal"  # "causal" (ours): frame t of the refinement reads frames
    #   [t - Refinement.context, t] only, so streaming equals offline and window edges leave no
    #   seam; "whole" (the authors'): bidirectional over the whole sequence (docs/realm.md)
    refine_context: int = 32  # causal mode: frames the SE squeeze and the attention look back
    refine_chunk: int = 2048  # whole mode: sequences longer than this are refined in independent
    #   chunks of this many frames (attention memory grows with the square of the length)
    refine_events: tuple[str, ...] = ("blink",)  # ours: fast events the refinement samples as
    #   discrete events (a learned hazard, an onset drawn from the noise, a learned template), where
    #   the spec has their channels (realm.motion.FAST_EVENTS); () = the authors' refinement
    event_template: int = 12  # frames an event's learned template lasts (12 = 400 ms)
    event_refractory: int = 9  # an onset is dropped when another candidate onset fell in the
    #   frames before it (9 = 300 ms, the shortest gap between a person's blinks); 0 = none
    fast_train: bool = True  # ours, speed only: training runs the transformer layers as the plain
    #   functions of realm.models.layers, with dropout masks from NumPy's SFC64 generator instead of
    #   torch.bernoulli_ (the same maths, other random numbers: 1.3x a CPU training step; docs/realm.md).
    #   False = through the nn modules and torch's dropout, as before 2026-11-29 (the speaker encoder's
    #   last layer, computed for the window's frames only, is realm.models.layers' in both)
    detail: str = "odd"  # "odd" (ours): the noise detail is an odd function of the noise,
    #   (N(eps) - N(-eps)) / 2, so its mean over the noise is 0 by construction (no offset, and
    #   nothing without the noise); "free" (the authors'): N(eps), which our runs learned to make
    #   deterministic (the same with the noise at 0) and late (docs/realm.md, "Stage 2")

    def __post_init__(self):
        check_choices(self, first_window=("frame0", "guide"), refine_mode=("causal", "whole"), detail=("odd", "free"),
                      branch_form=("odd", "diff"), branch_into=("deltas", "offset"),
                      offset_floor=("range", "rest"), kind_draw=("each", "one"))
        if self.refine_context < 1 or self.refine_chunk < 1 or self.event_template < 1:
            raise ValueError("refine_context, refine_chunk and event_template must be >= 1")
        if not 0 < self.rest_leak_init < 1:
            raise ValueError(f"rest_leak_init must be in (0, 1), got {self.rest_leak_init}")
        if not 0 < self.offset_decay_init < 1:
            raise ValueError(f"offset_decay_init must be in (0, 1), got {self.offset_decay_init}")
        if not 0 <= self.latent_temperature <= 4:
            raise ValueError(f"latent_temperature must be in [0, 4], got {self.latent_temperature}")
        if not 0 <= self.kind_temperature <= 4:
            raise ValueError(f"kind_temperature must be in [0, 4], got {self.kind_temperature}")
        if self.latent_dim < 0:
            raise ValueError(f"latent_dim must be >= 0, got {self.latent_dim}")
        if not 0 <= self.react_threshold < 1:
            raise ValueError(f"react_threshold must be in [0, 1), got {self.react_threshold}")
        if not 0 <= self.react_floor <= 1:
            raise ValueError(f"react_floor must be in [0, 1], got {self.react_floor}")
        if self.react_gate and (not self.latent_dim or self.latent_gate):
            raise ValueError("react_gate scales the latent: it needs latent_dim > 0 and latent_gate off")
        if self.latent_branch and not self.latent_dim:
            raise ValueError("latent_branch is the latent's own path: it needs latent_dim > 0")
        shifted = self.latent_branch or self.react_condition
        if self.react_shift and not (shifted and 0 < self.react_shift < self.window):
            raise ValueError(f"react_shift shifts the latent branch's latent (or react_condition's kinds) by 0 < shift "
                             f"< window frames, got {self.react_shift} (latent_branch={self.latent_branch}, "
                             f"react_condition={tuple(self.react_condition)}, window={self.window})")
        if len(set(self.react_condition)) != len(self.react_condition):
            raise ValueError(f"react_condition names a kind twice: {tuple(self.react_condition)}")
        if self.react_threshold and not self.react_gate:
            raise ValueError("react_threshold thresholds react_gate's probability: it needs react_gate")
        if self.branch_queries and not self.latent_branch:
            raise ValueError("branch_queries keeps the queries' latent beside the latent branch: it needs latent_branch")
        if self.branch_exclude and not self.latent_branch:
            raise ValueError("branch_exclude names channels of the latent branch: it needs latent_branch")
        if self.branch_blocks and not self.latent_branch:
            raise ValueError("branch_blocks are the blocks the latent branch moves: they need latent_branch")
        if self.offset_floor != "range" and self.branch_into != "offset":
            raise ValueError('offset_floor bounds the branch\'s offset: it needs branch_into="offset"')
        if self.branch_into == "offset" and not self.latent_branch:
            raise ValueError('branch_into="offset" is where the latent branch goes: it needs latent_branch')
        if not 0 <= self.event_refractory <= 30:
            raise ValueError(f"event_refractory must be 0..30 frames, got {self.event_refractory}")
        self.refine_events = tuple(self.refine_events)
        self.branch_blocks = tuple(self.branch_blocks)
        self.branch_exclude = tuple(self.branch_exclude)
        self.react_condition = tuple(self.react_condition)

    def latent_temperatures(self) -> torch.Tensor:
        """(latent_width,) what generation scales each dim of a window's latent by: latent_temperature
        for the latent_dim dims, kind_temperature for react_condition's."""
        return torch.tensor([self.latent_temperature] * self.latent_dim + [self.kind_temperature] * len(self.react_condition))

    @property
    def latent_width(self) -> int:
        """Size of a window's latent: latent_dim for the queries or the branch, then one dim per
        react_condition kind (the uniform draw of whether that kind starts in the window)."""
        return self.latent_dim + len(self.react_condition)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> REALMConfig:
        """A config saved with a checkpoint. Fields it lacks take the value that checkpoints of
        that time were trained with (:data:`LEGACY_DEFAULTS`), not today's default."""
        return cls(**{**LEGACY_DEFAULTS, **d})

    from_saved = from_dict  # the checkpoint loader's name for it (every model config has one)


#: react_condition's pseudo-kind: a reaction of any of TrainConfig.react_kinds starts in the window.
ANY_REACTION = "any"

#: What a saved config without the field meant: the behaviour its checkpoint was trained with.
LEGACY_DEFAULTS = {"first_window": "guide", "refine_mode": "whole", "refine_events": (), "detail": "free",
                   "event_refractory": 0, "branch_form": "diff",
                   "offset_bounds": False}


# ---------------------------------------------------------------- building blocks


class SinusoidalPE(nn.Module):
    def __init__(self, d: int, dropout: float = 0.1, max_len: int = 4096, fast_dropout: bool = False):
        super().__init__()
        pos = torch.arange(max_len).unsqueeze(1)
        div = torch.exp(torch.arange(0, d, 2) * (-math.log(10000.0) / d))
        pe = torch.zeros(max_len, d)
        pe[:, 0::2] = torch.sin(pos * div)
        pe[:, 1::2] = torch.cos(pos * div)
        self.register_buffer("pe", pe, persistent=False)
        self.drop = Dropout(dropout) if fast_dropout else nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, d)
        return self.drop(x + self.pe[: x.shape[1]])


def _decoder_layer(c: REALMConfig, d: int | None = None, ff: int | None = None) -> nn.TransformerDecoderLayer:
    return nn.TransformerDecoderLayer(
        d or c.d_model, c.n_heads, ff or c.ff_dim, c.dropout, activation="gelu", batch_first=True, norm_first=False
    )


def _eval_fast(module: nn.Module) -> bool:
    """Generation (eval mode, no autograd)."""
    return not module.training and not torch.is_grad_enabled()


def _lean(module: nn.Module, fast_train: bool) -> bool:
    """Whether ``module`` runs its transformer layers through :mod:`realm.models.layers` (generation always;
    training and autograd unless ``REALMConfig.fast_train`` is off: then through the nn modules)."""
    return fast_train or _eval_fast(module)


class SpeakerEncoder(nn.Module):
    """Conv1d(audio -> d, k3) + GELU, positions, 2 post-norm encoder layers, LayerNorm."""

    def __init__(self, c: REALMConfig):
        super().__init__()
        self.conv = nn.Conv1d(c.audio_dim, c.d_model, 3, padding=1)
        self.pe = SinusoidalPE(c.d_model, c.dropout, fast_dropout=c.fast_train)
        layer = nn.TransformerEncoderLayer(
            c.d_model, c.n_heads, c.ff_dim, c.dropout, activation="gelu", batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, c.encoder_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(c.d_model)
        self.fast_train = c.fast_train

    def forward(self, audio: torch.Tensor, keep: int | None = None) -> torch.Tensor:
        # audio (B, T, A) -> (B, T, d), or (B, keep, d): the last ``keep`` frames only
        x = F.gelu(self.conv(audio.transpose(1, 2))).transpose(1, 2)
        x = self.pe(x)
        *first, last = self.encoder.layers
        if _lean(self, self.fast_train):
            for layer in first:
                x = encoder_layer(layer, x)
            return self.norm(encoder_layer(last, x, keep))
        for layer in first:
            x = layer(x)
        if keep is None or keep >= x.shape[1]:
            return self.norm(last(x))
        return self.norm(encoder_layer(last, x, keep))  # the window's frames only (no module has that form)


class ReactiveFusion(nn.Module):
    """Listener history queries the speaker's audio through a shifted-ALiBi cross-attention."""

    def __init__(self, c: REALMConfig, motion_dim: int):
        super().__init__()
        self.n_heads = c.n_heads
        self.listener_proj = nn.Linear(motion_dim, c.d_model)
        self.layer = _decoder_layer(c)
        self.norm = nn.LayerNorm(c.d_model)
        self.pe = SinusoidalPE(c.d_model, c.dropout, fast_dropout=c.fast_train)
        self.register_buffer("bias", shifted_alibi_bias(c.history, c.window, c.n_heads, c.tau), persistent=False)
        self.fast_train = c.fast_train
        self.watch: list | None = None  # record_internals: where generation appends the cross-attention

    def forward(self, audio_enc: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        # audio_enc (B, W, d), history (B, K, D) -> F (B, K, d)
        q = self.listener_proj(history)  # no positions; self-attention over history unmasked
        if _lean(self, self.fast_train):
            fused = decoder_layer(self.layer, q, audio_enc, mem_mask=self.bias, cross_weights=self.watch)
        else:
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
        self.pe = SinusoidalPE(c.d_model, c.dropout, fast_dropout=c.fast_train)
        self.motion_proj = nn.Linear(spec.dim, c.d_model)
        self.gate = ReactiveGate(c.d_model)
        layer = _decoder_layer(c)
        self.decoder = nn.TransformerDecoder(layer, c.decoder_layers)
        self.register_buffer(
            "causal", torch.triu(torch.full((c.window, c.window), float("-inf")), diagonal=1), persistent=False
        )
        self.lstm = nn.LSTM(c.d_model, c.d_model, batch_first=True)
        if c.latent_dim:  # a window's latent, added to each of its queries (PyTorch's default init:
            #   about as large as the positions, so samples differ from the first step; see docs/realm.md)
            self.latent = nn.Linear(c.latent_dim, c.d_model)
            nn.init.zeros_(self.latent.bias)
            if c.latent_gate:  # (B, K, d) fused -> (B, d) gate, open at the start
                self.latent_gate = nn.Linear(c.d_model, c.d_model)
                nn.init.zeros_(self.latent_gate.weight)
                nn.init.constant_(self.latent_gate.bias, 2.0)
            if c.react_gate:  # (B, K, d) fused -> (B,) logit of "a reaction starts in this window"
                self.react = nn.Sequential(nn.Linear(c.d_model, c.d_model), nn.GELU(), nn.Linear(c.d_model, 1))
            if c.latent_branch:  # (B, W, 2d) [decoded state ; latent] -> (B, W, D) deltas
                self.branch = nn.Sequential(nn.Linear(2 * c.d_model, 2 * c.d_model), nn.GELU(),
                                            nn.Linear(2 * c.d_model, spec.dim))  # fmt: skip
                mask = torch.ones(spec.dim) if not c.branch_blocks else torch.zeros(spec.dim)
                for name in c.branch_blocks:  # (D,) 1 on the channels the branch moves
                    if not spec.has(name):
                        raise ValueError(f"branch_blocks: spec {spec.name} has no block {name!r} (blocks: {spec.block_names})")
                    mask[spec.block(name).slice] = 1.0
                for name in c.branch_exclude:  # channels left to the decoder alone
                    try:
                        mask[spec.channel(name)] = 0.0
                    except KeyError as e:
                        raise ValueError(f"branch_exclude: {e.args[0]}") from None
                self.register_buffer("branch_mask", mask, persistent=False)
        if c.react_condition:  # (B, K, d) fused -> (B, n) logits of "kind k starts in this window";
            #   (B, n) which kinds start -> (B, d), added to the queries: 0 where none starts (the decoder as
            #   it was). PyTorch's default init, about as large as the positions (measured: from 0, 460 steps
            #   took it to a fifth of that and the decoder still blended every kind; docs/realm.md)
            n = len(c.react_condition)
            self.kind_head = nn.Sequential(nn.Linear(c.d_model, c.d_model), nn.GELU(), nn.Linear(c.d_model, n))
            self.kind_embed = nn.Linear(n, c.d_model, bias=False)
        if c.identity_anchor:  # marks the anchor token apart from the history tokens
            self.anchor_embed = nn.Parameter(torch.randn(1, 1, c.d_model) * 0.02)
        self.heads = nn.ModuleDict({name: nn.Linear(c.d_model, size) for name, size in spec.blocks})
        if c.zero_init_heads:
            for head in self.heads.values():
                nn.init.zeros_(head.weight)
                nn.init.zeros_(head.bias)

    def forward(self, fused: torch.Tensor, history: torch.Tensor, anchor: torch.Tensor | None = None,
                latent: torch.Tensor | None = None, extras: dict | None = None,
                prev: torch.Tensor | None = None, kind: torch.Tensor | None = None,
                prev_kind: torch.Tensor | None = None):  # fmt: skip
        # fused (B, K, d), history (B, K, D), anchor (B, D), latent (B, latent_width)
        #   -> deltas (B, W, D), alpha (B, K, 1), the branch's offset term (B, W, D) or None
        # extras: filled with "react_logit" (B,) by a model with react_gate and, with latent_branch,
        # "latent" (B, d): the window's projected, gated latent (the next window's ``prev`` with react_shift);
        # with react_condition, "kind_logit" (B, n) and "kind" (B, d), the kinds' embedding (the next
        # window's ``prev_kind``). ``kind`` (B, n): which kinds start in the window (training: the ground
        # truth's); drawn from the classifier and the latent's last n dims when None
        B = fused.shape[0]
        if self.c.latent_width and latent is None:
            raise ValueError("a model with latent_dim > 0 or react_condition needs each window's latent")
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
        q = self.queries.expand(B, -1, -1)  # (B, W, d)
        if self.c.react_condition:
            q = q + self.kind_queries(fused, latent[:, self.c.latent_dim :], kind, prev_kind, extras)
        if self.c.latent_dim:
            z = self.latent(latent[:, : self.c.latent_dim])  # (B, d)
            if self.c.latent_gate:
                z = z * torch.sigmoid(self.latent_gate(fused.mean(dim=1)))
            if self.c.branch_queries:  # beside the branch, the queries' latent as the decoder was trained (ungated)
                q = q + z.unsqueeze(1)
            if self.c.react_gate:
                logit = self.react(fused.mean(dim=1)).squeeze(-1)  # (B,)
                p = torch.sigmoid(logit).detach()  # (B,)
                if self.c.react_threshold:  # 0 below the threshold, 1 at p = 1
                    t = self.c.react_threshold
                    p = ((p - t) / (1 - t)).clamp(min=0.0)
                f = self.c.react_floor
                z = z * (f + (1 - f) * p).unsqueeze(-1)
                if extras is not None:
                    extras["react_logit"] = logit
            if not self.c.latent_branch:
                q = q + z.unsqueeze(1)
        q = self.pe(q)
        if _lean(self, self.c.fast_train):
            x = q
            for layer in self.decoder.layers:
                x = decoder_layer(layer, x, memory, self_mask=self.causal)
        else:
            x = self.decoder(tgt=q, memory=memory, tgt_mask=self.causal, tgt_is_causal=True)  # (the hint skips a check)
        x, _ = self.lstm(x)  # (B, W, d)
        deltas = torch.cat([head(x) for head in self.heads.values()], dim=-1)  # (B, W, D)
        if not self.c.latent_branch:
            return deltas, alpha, None
        # the latent's own path, 0 at z = 0 (the config makes latent_dim > 0)
        if extras is not None:
            extras["latent"] = z
        zw = self.per_frame(z, prev)  # (B, W, d)
        other = -zw if self.c.branch_form == "odd" else torch.zeros_like(zw)
        both = self.branch(torch.cat([torch.cat([x, x]), torch.cat([zw, other])], -1))  # (2B, W, D), one batch
        scale = 0.5 if self.c.branch_form == "odd" else 1.0  # odd: (b(x, z) - b(x, -z)) / 2, zero-mean over z
        term = scale * (both[:B] - both[B:]) * self.branch_mask  # (B, W, D), 0 outside branch_blocks
        if self.c.branch_into == "offset":
            return deltas, alpha, term
        return deltas + term, alpha, None

    def kind_queries(self, fused: torch.Tensor, u_latent: torch.Tensor, kind: torch.Tensor | None,
                     prev_kind: torch.Tensor | None, extras: dict | None) -> torch.Tensor:  # fmt: skip
        """react_condition: the kinds' embedding for each query (B, W, d). fused (B, K, d); u_latent
        (B, n): the latent's kind dims (N(0, 1) times the temperature), kind k drawn where
        Phi(u_latent_k) < p_k; ``kind`` (B, n) given instead in training (the ground truth's onsets)."""
        logit = self.kind_head(fused.mean(dim=1))  # (B, n)
        if kind is None:  # kind k starts with the classifier's probability (0.5 at temperature 0: where p > 0.5)
            u = torch.special.ndtr(u_latent.float())  # (B, n) Phi: uniform at temperature 1
            kind = self.draw_kinds(u, torch.sigmoid(logit.float()))  # (B, n)
        e = self.kind_embed(kind.to(self.kind_embed.weight.dtype))  # (B, d)
        if extras is not None:
            extras["kind_logit"], extras["kind"] = logit, e
        return self.per_frame(e, prev_kind)

    def draw_kinds(self, u: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """(B, n) which kinds start, from uniforms u (B, n) and the classifier's p (B, n). "each": kind k
        where u_k < p_k; "one": kind k where u_0 falls in [P_{k-1}, P_k), P the p's cumulative sum (scaled
        to 1 where it sums above 1). ANY_REACTION is on with every kind drawn, and alone with what its p
        leaves: (p_any - P(some kind)) / (1 - P(some kind)) of the windows with none ("each"), the slice
        [P_K, p_any) of u_0 ("one"), so its marginal is p_any where p_any >= P(some kind)."""
        kinds = self.c.react_condition
        named = [i for i, k in enumerate(kinds) if k != ANY_REACTION]
        kind = torch.zeros_like(p)
        pk, u0 = p[:, named], u[:, :1]  # (B, m), (B, 1)
        if self.c.kind_draw == "one":  # kind k where u_0 falls in [P_{k-1}, P_k)
            hi = pk.cumsum(-1) / pk.sum(-1, keepdim=True).clamp(min=1)  # (B, m)
            lo = F.pad(hi[:, :-1], (1, 0))
            kind[:, named] = ((u0 >= lo) & (u0 < hi)).float()  # one 1 at most
        else:
            kind[:, named] = (u[:, named] < pk).float()
        if ANY_REACTION in kinds:
            a = kinds.index(ANY_REACTION)
            some = kind[:, named].amax(-1) if named else torch.zeros_like(p[:, a])  # (B,)
            if self.c.kind_draw == "one":
                top = hi[:, -1] if named else torch.zeros_like(p[:, a])
                alone = (u0[:, 0] >= top) & (u0[:, 0] < torch.maximum(p[:, a], top))
            else:
                p_some = 1 - (1 - pk).prod(-1)  # (B,) P(some named kind starts)
                alone = u[:, a] < ((p[:, a] - p_some) / (1 - p_some).clamp(min=1e-6)).clamp(0, 1)
            kind[:, a] = torch.maximum(some, alone.float())
        return kind

    def per_frame(self, cur: torch.Tensor, prev: torch.Tensor | None) -> torch.Tensor:
        """A window's vector (B, d) for each of its W frames (B, W, d); with react_shift, frames [0, shift)
        read the previous window's ``prev`` (0 before the first window)."""
        out = cur.unsqueeze(1).expand(-1, self.c.window, -1)
        sh = self.c.react_shift
        if not sh:
            return out
        before = torch.zeros_like(cur) if prev is None else prev
        return torch.cat([before.unsqueeze(1).expand(-1, sh, -1), out[:, sh:]], dim=1)


class CausalConv1d(nn.Conv1d):
    """Conv1d that pads only on the left: output frame t reads input frames [t - (k - 1) d, t]."""

    def __init__(self, c_in: int, c_out: int, k: int, dilation: int = 1):
        super().__init__(c_in, c_out, k, padding=0, dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T) -> (B, C', T)
        return super().forward(F.pad(x, ((self.kernel_size[0] - 1) * self.dilation[0], 0)))


def _after(past: torch.Tensor | None, x: torch.Tensor, n: int) -> torch.Tensor:
    """``x`` (B, C, T) with the ``n`` frames before it in front: ``past`` (B, C, n), or zeros (the start)."""
    return F.pad(x, (n, 0)) if past is None else torch.cat([past, x], dim=2)


def causal_conv(full: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dilation: int = 1) -> torch.Tensor:
    """A causal convolution of ``full`` (B, C, (k - 1) d + L), which holds the frames before its
    last L in front -> (B, C', L). Dilated: the taps gathered and contracted at once (PyTorch's
    dilated CPU convolution loops over channels)."""
    if dilation == 1:
        return F.conv1d(full, weight, bias)
    n = (weight.shape[2] - 1) * dilation
    out = torch.einsum("bclk,ock->bol", full.unfold(2, n + 1, 1)[..., ::dilation], weight)  # (B, C', L)
    return out if bias is None else out + bias[:, None]


def banded_causal_mask(T: int, span: int, device=None, last: int | None = None) -> torch.Tensor:
    """(T, T) additive mask: query t may attend keys [t - span, t], -inf elsewhere (``last``: the
    rows of the last ``last`` queries only, (last, T))."""
    i = torch.arange(0 if last is None else T - last, T, device=device).view(-1, 1)
    j = torch.arange(T, device=device).view(1, -1)
    allowed = (j <= i) & (j >= i - span)
    return torch.zeros(len(i), T, device=device).masked_fill(~allowed, float("-inf"))


#: Frames before t that the refinement's event hazard at t reads (its k5 and k5-dilated-4 convolutions).
HAZARD_SPAN = 20


class Refinement(nn.Module):
    """Audio-modulated noise injection for high-frequency expression detail (stage 2).

    ``mode="whole"`` is the authors' module (k3 convolutions centred, squeeze over the whole
    sequence, unmasked attention). ``mode="causal"`` (ours) has the same layers and parameter
    shapes, made causal: left-padded convolutions, the squeeze a mean over the last ``context``
    frames, attention to the last ``context`` frames. Frame t then depends on input frames
    [t - :attr:`context`, t] only, whatever the sequence around it.

    **Detail.** ``N(eps)`` = audio-modulated noise -> channel attention -> self-attention ->
    output convolution. ``detail="free"`` (the authors') adds ``N(eps)``; ``detail="odd"`` (ours)
    adds ``(N(eps) - N(-eps)) / 2``, an odd function of the Gaussian noise: its mean over the noise
    is 0 whatever the weights, so it cannot become an offset or a deterministic, noise-ignoring
    signal, which is what the free detail became in our runs.

    **Fast events** (ours, ``n_events`` > 0, e.g. blinks). Noise through convolutions and
    attention makes micro-motion, but a rare, all-or-nothing event at a random time (a blink) is
    not what a generator trained on it learns to make of Gaussian noise (docs/realm.md, "Stage 2").
    So each event has a hazard ``p_t = sigmoid(head(features))`` (read from the coarse motion and
    the audio), a candidate onset ``c_t = 1[Phi(eps_t) < p_t]`` drawn from an extra noise channel,
    an onset ``z_t`` = a candidate with no candidate in the ``event_refractory - 1`` frames before
    it (probability ``q_t = p_t prod_k (1 - p_{t-k})``), and a learned template (a causal
    convolution, ``event_template`` frames) that draws it on its own channels (a blink on the
    eyelids). The refinement adds ``template * (z - q)``: the noise-averaged event term is 0, so
    events are detail around the coarse motion, which holds their expected value, not an offset.
    Training passes the ground truth's onsets as ``events`` and fits q to them.
    """

    def __init__(self, c: REALMConfig, exp_dim: int, n_events: int = 0, event_mask: torch.Tensor | None = None):
        super().__init__()
        h = c.refine_dim
        self.causal, self.span, self.n_events = c.refine_mode == "causal", c.refine_context, n_events
        self.odd = c.detail == "odd"
        conv = ((lambda i, o, k=3, d=1: CausalConv1d(i, o, k, d)) if self.causal
                else (lambda i, o, k=3, d=1: nn.Conv1d(i, o, k, padding=d * (k // 2), dilation=d)))  # fmt: skip
        self.local = nn.Sequential(conv(exp_dim, h), nn.GELU(), conv(h, h), nn.GELU())
        self.modulator = nn.Sequential(conv(c.audio_dim, h), nn.GELU(), nn.Conv1d(h, 2 * h, 1))
        self.se = nn.Sequential(nn.Conv1d(h, h // 4, 1), nn.ReLU(), nn.Conv1d(h // 4, h, 1), nn.Sigmoid())
        layer = nn.TransformerEncoderLayer(h, c.n_heads, c.refine_ff, c.dropout, activation="gelu", batch_first=True)
        self.temporal = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.out = conv(h, exp_dim)
        nn.init.zeros_(self.out.weight)  # zero-initialised residual: starts as the identity
        nn.init.zeros_(self.out.bias)
        self.event_k, self.refractory = c.event_template, c.event_refractory
        if n_events:
            # hazard: HAZARD_SPAN = 20 frames of context (k5, then k5 dilated 4), enough to hear a pause begin tau ago
            self.hazard = nn.Sequential(conv(2 * h, h, 5), nn.GELU(), conv(h, h, 5, 4), nn.GELU(), nn.Conv1d(h, n_events, 1))
            nn.init.constant_(self.hazard[-1].bias, -4.0)  # about 1 % a frame to start with
            self.template = nn.Conv1d(n_events, exp_dim, self.event_k, bias=False)  # causal: onset -> frames after it
            nn.init.zeros_(self.template.weight)
            # (E, K, 1): an event is drawn on its own channels only (a blink on the eyelids)
            mask = torch.ones(exp_dim, n_events, 1) if event_mask is None else event_mask.reshape(exp_dim, n_events, 1)
            self.register_buffer("event_mask", mask.float(), persistent=False)

    @property
    def noise_dim(self) -> int:
        """Noise channels per frame: the feature noise, then one per event."""
        return self.local[0].out_channels + self.n_events

    @property
    def context(self) -> int:
        """Causal mode: frames before t that output frame t depends on (convs 2 + 2, squeeze
        span - 1, attention span, output conv 2; events: convs 4 + hazard 20 + refractory - 1 +
        template - 1, the larger of the two). Whole mode: unbounded (-1)."""
        if not self.causal:
            return -1
        events = 4 + HAZARD_SPAN + max(self.refractory - 1, 0) + self.event_k - 1 if self.n_events else 0
        return max(4 + (self.span - 1) + self.span + 2, events)

    def squeeze(self, f: torch.Tensor, past: torch.Tensor | None = None) -> torch.Tensor:
        """Channel descriptor of f (B, h, T): whole: the mean over time (B, h, 1); causal: the mean
        over the last ``span`` frames (B, h, T), reading ``past`` (B, h, span - 1) before the
        sequence (zeros when None: its start)."""
        if not self.causal:
            return f.mean(dim=2, keepdim=True)
        return F.avg_pool1d(_after(past, f, self.span - 1), self.span, stride=1)

    def _before(self, x: torch.Tensor, how: str, past: torch.Tensor | None = None) -> torch.Tensor:
        """(B, K, T): the sum or max of x over the ``refractory - 1`` frames before each frame,
        reading ``past`` (B, K, refractory - 1) before the sequence (zeros when None: its start)."""
        n = self.refractory - 1
        if n < 1:
            return torch.zeros_like(x)
        prev = _after(past, x, n)[..., :-1]  # frame t reads frames [t - n, t - 1]
        return F.avg_pool1d(prev, n, stride=1) * n if how == "sum" else F.max_pool1d(prev, n, stride=1)

    def detail(self, f: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: torch.Tensor,
               keep: int | None = None) -> torch.Tensor:  # fmt: skip
        # f, gamma, beta, eps (B, h, T) -> N(eps) (B, E, T): audio-modulated noise, channel attention,
        #   temporal self-attention, output convolution [only the last ``keep`` frames: (B, E, keep)]
        g = f + gamma * eps + beta
        g = g * self.se(self.squeeze(g))  # squeeze-excitation channel attention
        T = g.shape[2]
        if (keep is not None and self.causal and keep + 2 < T and not self.training and len(self.temporal.layers) == 1
                and self.temporal.norm is None):  # fmt: skip
            # a streamer keeps only the last frames: attention queries for those (and the 2 frames the
            #   output convolution reads before them), keys over their span; the same maths
            q = keep + 2
            x = self._attend_tail(g[..., max(0, T - q - self.span) :].transpose(1, 2), q)  # (B, q, h)
            return self.out(x.transpose(1, 2))[..., 2:]  # (B, E, keep)
        mask = banded_causal_mask(T, self.span, g.device) if self.causal else None
        g = self.temporal(g.transpose(1, 2), mask=mask).transpose(1, 2)
        out = self.out(g)
        return out if keep is None else out[..., T - keep :]

    def _attend_tail(self, x: torch.Tensor, q: int) -> torch.Tensor:
        """The temporal layer (one post-norm GELU encoder layer, banded causal attention; eval mode) for
        the last ``q`` of the (B, Tk, h) frames ``x`` only: (B, q, h), what the whole sequence gives them."""
        layer = self.temporal.layers[0]
        xq = x[:, x.shape[1] - q :]
        mask = banded_causal_mask(x.shape[1], self.span, x.device, last=q)
        y = layer.norm1(xq + attention(layer.self_attn, xq, x, mask))
        return layer.norm2(y + layer.linear2(F.gelu(layer.linear1(y))))

    # -- incremental form (causal mode, generation): each frame computed once
    @property
    def steppable(self) -> bool:
        """Whether :meth:`step` applies: causal mode, eval, one post-norm temporal layer (the layer
        :meth:`_attend_tail` computes)."""
        return self.causal and not self.training and len(self.temporal.layers) == 1 and self.temporal.norm is None

    def step(self, exp: torch.Tensor, audio: torch.Tensor, eps: torch.Tensor, cache: dict | None) -> tuple[torch.Tensor, dict]:
        """The next frames of a causal refinement, each frame computed once: exp (B, L, E), audio
        (B, L, A), eps (B, noise_dim, L) -> refined exp (B, L, E) and the cache for the next call.

        ``cache`` (None at the start) holds what the next frames read of the frames before them:
        each causal convolution's last ``(k - 1) d`` inputs, the squeeze's last ``span - 1``
        frames, the attention's last ``span`` keys, the hazard's last refractory frames and the
        template's last ``event_k - 1`` innovations; zeros (no keys) at the start, which is what
        :meth:`forward` pads with. So frames pushed in any chunks give what :meth:`forward` gives for
        the whole sequence (float rounding aside), at the cost of the new frames only.
        """
        c = {} if cache is None else cache
        x = exp.transpose(1, 2)  # (B, E, L)
        B, h, L = x.shape[0], self.local[0].out_channels, x.shape[2]

        def past(name: str, v: torch.Tensor, n: int) -> torch.Tensor | None:
            """The ``n`` frames before ``v`` (None at the start); keeps the last ``n`` of both for the next call."""
            before = c.get(name)
            if n > 0:
                c[name] = _after(before, v, n)[..., -n:]
            return before

        def conv(name: str, weight: torch.Tensor, bias, inp: torch.Tensor, dilation: int = 1) -> torch.Tensor:
            n = (weight.shape[2] - 1) * dilation
            return causal_conv(_after(past(name, inp, n), inp, n), weight, bias, dilation)

        def layer(name: str, m: nn.Conv1d, inp: torch.Tensor) -> torch.Tensor:
            return conv(name, m.weight, m.bias, inp, m.dilation[0])

        def before(name: str, v: torch.Tensor, how: str) -> torch.Tensor:  # sum / max of the refractory frames before
            return self._before(v, how, past(name, v, max(self.refractory - 1, 0)))

        f = F.gelu(layer("local1", self.local[2], F.gelu(layer("local0", self.local[0], x))))  # (B, h, L)
        gamma, beta = self.modulator[2](F.gelu(layer("mod0", self.modulator[0], audio.transpose(1, 2)))).chunk(2, dim=1)
        e = eps[:, :h]
        if self.odd:  # the +eps and -eps halves as one batch, as in forward
            g = torch.cat([f, f]) + torch.cat([gamma, gamma]) * torch.cat([e, -e]) + torch.cat([beta, beta])
        else:
            g = f + gamma * e + beta  # (B', h, L)
        span = self.span
        g = g * self.se(self.squeeze(g, past("squeeze", g, span - 1)))  # squeeze-excitation over the last span frames
        keys = torch.cat([c.get("keys", g.new_zeros(g.shape[0], 0, h)), g.transpose(1, 2)], dim=1)  # (B', n + L, h)
        c["keys"] = keys[:, max(0, keys.shape[1] - span) :]
        y = self._attend_tail(keys, L).transpose(1, 2)  # (B', h, L)
        detail = layer("out", self.out, y)  # (B', E, L)
        out = x + (0.5 * (detail[:B] - detail[B:]) if self.odd else detail)
        if self.n_events:
            hz = self.hazard
            logit = hz[4](F.gelu(layer("hazard2", hz[2], F.gelu(layer("hazard0", hz[0], torch.cat([f, beta], dim=1))))))
            p = torch.sigmoid(logit)  # (B, K, L)
            q = (F.logsigmoid(logit) + before("neg", F.logsigmoid(-logit), "sum")).exp()
            cand = (0.5 * (1 + torch.erf(eps[:, h:] / math.sqrt(2))) < p).float()
            z = cand * (1 - before("cand", cand, "max"))
            out = out + conv("template", self.template.weight * self.event_mask, None, z - q)
        return out.transpose(1, 2), c

    def forward(self, exp: torch.Tensor, audio: torch.Tensor, noise: torch.Tensor | None = None,
                events: torch.Tensor | None = None, parts: bool = False, keep: int | None = None):  # fmt: skip
        # exp (B, T, E), audio (B, T, A), noise (B, noise_dim, T) or None (drawn), events (B, T, K)
        #   given onsets (training) or None (drawn from the noise) -> refined exp (B, T, E)
        #   [, {"onset_logit": (B, T, K) logit of q, "hazard": (B, T, K) p, "events": (B, T, E) the
        #   event term} with parts=True]; ``keep``: only the last ``keep`` frames (T -> keep), the
        #   frames before them context (a streamer's)
        x = exp.transpose(1, 2)
        f = self.local(x)  # (B, h, T)
        h = f.shape[1]
        gamma, beta = self.modulator(audio.transpose(1, 2)).chunk(2, dim=1)
        eps = torch.randn(f.shape[0], self.noise_dim, f.shape[2], device=f.device) if noise is None else noise
        T = x.shape[2]
        keep = T if keep is None else min(keep, T)
        if self.odd:  # detail (N(eps) - N(-eps)) / 2: the +eps and -eps halves as one batch
            B = f.shape[0]
            detail = self.detail(torch.cat([f, f]), torch.cat([gamma, gamma]), torch.cat([beta, beta]),
                                 torch.cat([eps[:, :h], -eps[:, :h]]), keep=keep)  # fmt: skip
            out = x[..., T - keep :] + 0.5 * (detail[:B] - detail[B:])
        else:
            out = x[..., T - keep :] + self.detail(f, gamma, beta, eps[:, :h], keep=keep)
        logit = term = p = None
        if self.n_events:
            # with ``keep``, only the frames the kept ones read: template, refractory and hazard spans
            e0 = 0 if keep == T else max(0, T - keep - (self.event_k - 1) - max(self.refractory - 1, 0) - HAZARD_SPAN)
            f, beta, eps, T = f[..., e0:], beta[..., e0:], eps[..., e0:], T - e0
            events = None if events is None else events[:, e0:]
            logit = self.hazard(torch.cat([f, beta], dim=1))  # (B, K, T)
            p = torch.sigmoid(logit)
            # q_t: the chance of an onset at t, a candidate (prob. p_t) with none in the R - 1 frames
            #   before it (candidates are independent: q_t = p_t * prod_k (1 - p_{t-k}))
            log_q = F.logsigmoid(logit) + self._before(F.logsigmoid(-logit), "sum")
            q = log_q.exp()
            logit = log_q - torch.log1p(-q.clamp(max=1 - 1e-6))  # logit of q, what training fits
            if events is None:  # a candidate where the event's uniform noise falls under the hazard
                cand = (0.5 * (1 + torch.erf(eps[:, h:] / math.sqrt(2))) < p).float()
                z = cand * (1 - self._before(cand, "max"))  # no candidate in the refractory frames
            else:
                z = events.transpose(1, 2).to(p.dtype)
            innovation = F.pad(z - q.detach(), (self.event_k - 1, 0))  # zero mean over the noise
            term = F.conv1d(innovation, self.template.weight * self.event_mask)
            out = out + term[..., T - keep :]
        out = out.transpose(1, 2)
        if parts:
            logit, p, term = (None if v is None else v[..., T - keep :].transpose(1, 2) for v in (logit, p, term))
            return out, {"onset_logit": logit, "hazard": p, "events": term}
        return out


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
    Config = REALMConfig  # what a run's config.json "model" entry builds (realm.checkpoint.load)

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
        if c.rest_leak:  # logit of each channel's leak per frame toward the start frame
            self.leak_logit = nn.Parameter(torch.full((spec.dim,), math.log(c.rest_leak_init / (1 - c.rest_leak_init))))
        if c.branch_into == "offset":  # logit of each channel's decay per frame of the branch's offset
            mu = c.offset_decay_init
            self.offset_logit = nn.Parameter(torch.full((spec.dim,), math.log(mu / (1 - mu))))
            if c.offset_bounds:  # (2, D): each channel's defined range in normalised units (set_out_bounds);
                #   unbounded until set
                self.register_buffer("out_bounds", torch.tensor([-self.UNBOUNDED, self.UNBOUNDED]).repeat(spec.dim, 1).T.contiguous())
                rest = torch.zeros(spec.dim, dtype=torch.bool)  # offset_floor="rest": channels whose range starts
                for cols, a, _ in spec.range_columns():  # at 0 (blendshapes, activations above a rest); head
                    rest[cols] = a == 0  # rotation goes both ways from its rest and keeps the range's floor
                self.register_buffer("rest_floor", rest, persistent=False)
        self.exp = spec.block(c.refine_block).slice
        self.events = events_in_spec(spec, c.refine_events) if c.use_refinement else []  # fast events sampled
        self.refinement = None
        if c.use_refinement:
            block = spec.block(c.refine_block)
            mask = torch.zeros(block.size, len(self.events))
            for k, name in enumerate(self.events):
                for ch in FAST_EVENTS[name]:
                    mask[spec.channel(ch) - block.start, k] = 1.0
            self.refinement = Refinement(c, block.size, len(self.events), mask)

    #: A bound of the offset's (offset_bounds) where the spec defines no range: finite, since a
    #: checkpoint's weights must be.
    UNBOUNDED = 1e6

    #: Windows encoded at once without gradients (generation): bounds the encoder's memory.
    ENCODE_CHUNK = 256

    # -- one autoregressive step ------------------------------------------------
    def encode_window(self, audio: torch.Tensor) -> torch.Tensor:
        """Encode one window with its context: audio (B, C + W, A) -> (B, W, d), the last W frames."""
        if not self.config.use_audio:
            audio = torch.zeros_like(audio)
        return self.audio_encoder(audio, keep=self.config.window)  # (B, W, d)

    def encode_audio(self, audio: torch.Tensor) -> torch.Tensor:
        """Encode every W-frame window of ``audio`` (B, n*W, A) at once -> (B, n, W, d).

        Window w reads frames [w W - C, (w + 1) W) (zeros before the start). Windows are encoded
        independently, so batching them changes nothing but the speed. Without gradients they go
        through the encoder ``ENCODE_CHUNK`` windows at a time: an hour of audio is 6,750 windows,
        whose activations at once took 630 MB.
        """
        B, T, A = audio.shape
        W, C = self.config.window, self.config.audio_context
        ctx = F.pad(audio, (0, 0, C, 0)).unfold(1, C + W, W)  # (B, n, A, C + W)
        ctx = ctx.permute(0, 1, 3, 2).reshape(B * (T // W), C + W, A)
        if torch.is_grad_enabled() or len(ctx) <= self.ENCODE_CHUNK:
            return self.encode_window(ctx).reshape(B, T // W, W, -1)
        n = self.ENCODE_CHUNK
        return torch.cat([self.encode_window(ctx[k : k + n]) for k in range(0, len(ctx), n)]).reshape(B, T // W, W, -1)

    def step(self, audio: torch.Tensor, history: torch.Tensor, audio_enc: torch.Tensor | None = None,
             anchor: torch.Tensor | None = None, base: torch.Tensor | None = None,
             latent: torch.Tensor | None = None, extras: dict | None = None,
             carry: dict | None = None, kind: torch.Tensor | None = None):  # fmt: skip
        """Predict one window. audio (B, W, A), history (B, K, D) -> motion (B, W, D), alpha (B, K, 1).

        The window's motion is ``base`` (B, D; default the last history frame) plus the cumulative
        sum of the deltas.
        ``audio_enc`` (B, W, d) may hold the window's precomputed encoding (it must, when the
        model reads audio context before the window). ``anchor`` (B, D): the frame the rollout
        started from (:meth:`anchor_frame`), read only by models with ``identity_anchor`` or
        ``rest_leak``. ``latent`` (B, latent_width): the window's latent (models with ``latent_dim`` > 0 or
        ``react_condition``; drawn from N(0, I) when None). ``extras``: a dict the decoder fills
        (``react_logit`` (B,) with ``react_gate``, ``kind_logit`` (B, n) with ``react_condition``). ``kind``
        (B, n): with ``react_condition``, which kinds start in the window (training); drawn when None.
        ``carry``: what the previous window left for this one (its ``extras["carry"]``; None for the
        first window): with ``branch_into="offset"`` the branch's offset (B, D), with ``react_shift``
        the previous window's latent (and kinds' embedding). With ``branch_into="offset"`` the motion is the integrated
        deltas plus the offset, and ``extras["history"]`` (B, W, D) holds the integrated deltas alone
        (what the next window's history holds).
        """
        c = self.config
        if audio_enc is None:
            if c.audio_context:
                raise ValueError("with audio_context > 0, pass the window's encoding (encode_window)")
            audio_enc = self.encode_window(audio)
        seen = history if c.use_history else torch.zeros_like(history)
        fused = self.fusion(audio_enc, seen)  # (B, K, d)
        if c.latent_width and latent is None:
            latent = torch.randn(history.shape[0], c.latent_width, device=history.device)
        carry = carry or {}
        inner = {} if extras is None else extras
        deltas, alpha, term = self.decoder(fused, seen, anchor, latent, inner, carry.get("latent"), kind,
                                           carry.get("kind"))  # (B, W, D)  # fmt: skip
        inner["carry"] = {"latent": inner.pop("latent", None), "kind": inner.pop("kind", None)}
        start = history[:, -1:] if base is None else base.unsqueeze(1)  # (B, 1, D)
        if c.rest_leak:
            if anchor is None:
                raise ValueError("a model with rest_leak needs the anchor frame (the frame generation starts from)")
            motion = self.leaky_sum(start, deltas, anchor)
        else:
            motion = start + torch.cumsum(deltas, dim=1)  # (B, W, D)
        if term is None:
            return motion, alpha
        # the branch's offset: o_k = (1 - mu) o_{k-1} + term_k, a pulse on top of the motion
        o0 = carry["offset"].unsqueeze(1) if "offset" in carry else torch.zeros_like(start)  # (B, 1, D)
        o = self.leaky_sum(o0, term, torch.zeros_like(o0[:, 0]), F.logsigmoid(-self.offset_logit))  # (B, W, D)
        inner["history"], inner["carry"]["offset"] = motion, o[:, -1]
        out = motion + o
        if c.offset_bounds:  # not past a channel's range, nor further past it than the motion itself
            lo, hi = self.out_bounds
            if c.offset_floor == "rest":  # nor below the resting face (channels whose range starts at 0)
                if anchor is None:
                    raise ValueError('offset_floor="rest" needs the anchor frame (the frame generation starts from)')
                lo = torch.where(self.rest_floor, torch.maximum(lo, anchor), lo).unsqueeze(1)  # (B, 1, D)
            out = torch.minimum(torch.maximum(out, torch.minimum(motion, lo)), torch.maximum(motion, hi))
        return out, alpha

    def set_out_bounds(self, stats) -> None:
        """The offset's bounds (``offset_bounds``) from the motion's :class:`realm.motion.NormStats`:
        each range of the spec (``MotionSpec.ranges``) in normalised units; unbounded elsewhere."""
        lo, hi = torch.full((self.spec.dim,), -self.UNBOUNDED), torch.full((self.spec.dim,), self.UNBOUNDED)
        for cols, a, b in self.spec.range_columns():
            mean, std = torch.as_tensor(stats.mean[cols]), torch.as_tensor(stats.std[cols])
            lo[cols], hi[cols] = (a - mean) / std, (b - mean) / std
        self.out_bounds.copy_(torch.stack([lo, hi]))

    def leaky_sum(self, start: torch.Tensor, deltas: torch.Tensor, anchor: torch.Tensor,
                  log_r: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """x_k = a + r^k (start - a) + sum_{j <= k} r^(k - j) delta_j, k = 1..W, with log r per
        channel (D,; default the rest leak's log(1 - lambda)): the recursion x_k = a + r (x_{k-1} - a)
        + delta_k in closed form. start (B, 1, D), deltas (B, W, D), anchor a (B, D) -> (B, W, D)."""
        if log_r is None:
            log_r = F.logsigmoid(-self.leak_logit)  # log(1 - lambda), (D,)
        W = deltas.shape[1]
        k = torch.arange(W, device=deltas.device, dtype=deltas.dtype)
        lag = k[:, None] - k[None, :]  # (W, W): k - j
        P = torch.exp(lag.clamp(min=0)[..., None] * log_r) * (lag >= 0)[..., None]  # (W, W, D): r^(k - j), j <= k
        decay = torch.exp((k[:, None] + 1) * log_r)  # (W, D): r^k
        a = anchor.unsqueeze(1)
        return a + decay * (start - a) + torch.einsum("kjd,bjd->bkd", P, deltas)

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

    def first_base(self, frame0: torch.Tensor | None, history: torch.Tensor | None) -> torch.Tensor | None:
        """The frame the first window's deltas are integrated from: frame 0 after a bootstrap with
        ``first_window="frame0"`` (the authors'), else None (the last history frame)."""
        return frame0 if history is None and self.config.first_window == "frame0" else None

    def start(self, audio0: torch.Tensor, frame0: torch.Tensor | None = None, history: torch.Tensor | None = None):
        """History for the first window: the bootstrap guide from ``frame0`` (B, D), or the last K
        frames of a real ``history`` (B, K', D). Returns (history (B, K, D), waypoint or None)."""
        if history is not None:
            return _left_pad(history, self.config.history), None
        if frame0 is None:
            raise ValueError("generation needs frame0 or history")
        guide, waypoint = self.bootstrap(frame0, audio0)  # (B, W, D)
        return _left_pad(guide, self.config.history), waypoint  # (B, K, D): frame 0 before it when W < K

    def rollout(self, audio: torch.Tensor, frame0: torch.Tensor | None = None, history: torch.Tensor | None = None,
                latents: torch.Tensor | None = None, samples: int = 1, on_window=None,
                kinds: torch.Tensor | None = None):  # fmt: skip
        """Coarse motion for all T frames of ``audio`` (B, T, A), autoregressively in W-frame windows.

        Start from ``frame0`` (B, D) through the bootstrap (frame 0 is then kept exactly), or from a
        real ``history`` (B, K', D) of the listener's last frames. ``latents`` (S B, n_windows,
        latent_width): each window's latent (models with ``latent_dim`` > 0; drawn when None; see
        :class:`WindowLatents` for seeded ones). ``samples`` S: rollouts of each clip, sample-major
        (row s B + b is sample s of clip b), sharing one encoding of the audio and one bootstrap
        (both deterministic). ``on_window(done, n_windows)`` is called after each window (progress).
        ``kinds`` (S B, n_windows, n): with ``react_condition``, which kinds start in each window
        (training: the ground truth's); drawn from each window's latent when None.
        Returns (motion (S B, T, D), aux) where aux holds the gate values, the per-window boundary
        frames, the waypoint (B, 3), with ``react_gate`` each window's reaction logit (S B, n_windows)
        and with ``react_condition`` each window's kind logits (S B, n_windows, n).
        """
        c = self.config
        B, T, _ = audio.shape
        W, K = c.window, c.history
        n_win = max(1, math.ceil(T / W))
        audio = F.pad(audio, (0, 0, 0, n_win * W - T))  # zero-pad the last window
        hist, waypoint = self.start(audio[:, :W], frame0, history)
        anchor = self.anchor_frame(frame0, history)
        enc = self.encode_audio(audio)  # (B, n_win, W, d)
        if latents is not None and latents.shape[0] != samples * B:
            raise ValueError(f"latents for {latents.shape[0]} rollouts, but {samples} samples of {B} clips")
        if samples > 1:  # (B, ...) -> (S B, ...): the samples differ by their latents only
            rep = lambda x: None if x is None else x.repeat(samples, *[1] * (x.dim() - 1))  # noqa: E731
            audio, hist, anchor, enc, frame0, history = map(rep, (audio, hist, anchor, enc, frame0, history))
        if kinds is not None and kinds.shape[:2] != (samples * B, n_win):
            raise ValueError(f"kinds for {tuple(kinds.shape[:2])} (rollouts, windows), need {(samples * B, n_win)}")
        frames, alphas, bounds, react, kind_logits = [], [], [], [], []
        carry = None  # what a window leaves the next: the branch's offset, the shifted latent
        for w in range(n_win):
            base = self.first_base(frame0, history) if w == 0 else None
            z = None if latents is None else latents[:, w]
            extras: dict = {}
            k = None if kinds is None else kinds[:, w]
            window, alpha = self.step(audio[:, w * W : (w + 1) * W], hist, enc[:, w], anchor, base, z, extras, carry, k)
            if "react_logit" in extras:
                react.append(extras["react_logit"])
            if "kind_logit" in extras:
                kind_logits.append(extras["kind_logit"])
            seen = extras.get("history", window)  # what the next window's history holds
            carry = extras["carry"]
            if w == 0 and history is None:
                window = torch.cat([frame0.unsqueeze(1), window[:, 1:]], dim=1)  # anchor frame 0
                seen = torch.cat([frame0.unsqueeze(1), seen[:, 1:]], dim=1)
            bounds.append((hist[:, -2:], seen[:, :2]))
            frames.append(window)
            alphas.append(alpha)
            hist = torch.cat([hist, seen], dim=1)[:, -K:]
            if on_window is not None:
                on_window(w + 1, n_win)
        padded = torch.cat(frames, dim=1)  # (B, n_win * W, D): whole windows, before truncation to T
        aux = {"alpha": torch.cat(alphas, dim=1)[:, :T], "bounds": bounds, "waypoint": waypoint,
               "padded": padded, "padded_audio": audio}  # fmt: skip
        if react:  # (S B, n_win): each window's logit of "a reaction starts here" (react_gate)
            aux["react_logit"] = torch.stack(react, dim=1)
        if kind_logits:  # (S B, n_win, n): each window's logit of "kind k starts here" (react_condition)
            aux["kind_logit"] = torch.stack(kind_logits, dim=1)
        return padded[:, :T], aux

    def teacher_rollout(self, audio: torch.Tensor, motion: torch.Tensor, latents: torch.Tensor | None = None,
                        samples: int = 1, kinds: torch.Tensor | None = None):  # fmt: skip
        """:meth:`rollout` with the ground truth as each window's history (teacher forcing; training only,
        ``TrainConfig.teacher_forcing``): window w reads the listener's real frames before it, not the
        model's own, so no window waits for another and all n of them run as one batch of B n.

        audio (B, T, A), motion (B, T, D) the ground truth (frame 0 starts the bootstrap, which is window
        0's history, as in :meth:`rollout`). ``latents``, ``samples`` and ``kinds`` as in :meth:`rollout`,
        and the same outputs (the gate values, each window's boundary frames, the waypoint, the logits).
        A window that carries state to the next (``branch_into="offset"``; the latent's ``react_shift``
        with ``latent_branch``) needs the windows in order, and is refused; so is ``react_shift`` with
        ``react_condition`` when ``kinds`` are not given (the previous window's kinds come from them).
        """
        c = self.config
        if windows_carry_state(c):
            raise ValueError("teacher forcing runs the windows at once: a model whose windows carry state to the "
                             "next (branch_into='offset', or latent_branch with react_shift) needs rollout")  # fmt: skip
        if c.react_condition and c.react_shift and kinds is None:
            raise ValueError("teacher forcing with react_condition and react_shift needs each window's kinds")
        B, T, A = audio.shape
        W, K, S = c.window, c.history, samples
        n = max(1, math.ceil(T / W))
        audio = F.pad(audio, (0, 0, 0, n * W - T))  # zero-pad the last window
        frame0 = motion[:, 0]
        hist0, waypoint = self.start(audio[:, :W], frame0)  # (B, K, D): the bootstrap guide
        seq = torch.cat([hist0, motion[:, : (n - 1) * W]], dim=1)  # (B, K + (n - 1) W, D)
        hist = seq.unfold(1, K, W).permute(0, 1, 3, 2)  # (B, n, K, D): window w reads seq[w W : w W + K]
        base = hist[:, :, -1]  # (B, n, D): each window integrates from its last history frame,
        if self.first_base(frame0, None) is not None:  # the first from frame 0 (first_window="frame0")
            base = torch.cat([frame0.unsqueeze(1), base[:, 1:]], dim=1)
        enc = self.encode_audio(audio)  # (B, n, W, d)
        rep = lambda x: x.repeat(S, *[1] * (x.dim() - 1))  # noqa: E731  (B, ...) -> (S B, ...), sample-major
        flat = lambda x: x.reshape(S * B * n, *x.shape[2:])  # noqa: E731  (S B, n, ...) -> (S B n, ...)
        hist, base, enc, audio, f0 = rep(hist), rep(base), rep(enc), rep(audio), rep(frame0)
        anchor = f0.repeat_interleave(n, dim=0)  # (S B n, D)
        if latents is not None and latents.shape[:2] != (S * B, n):
            raise ValueError(f"latents for {tuple(latents.shape[:2])} (rollouts, windows), need {(S * B, n)}")
        if kinds is not None and kinds.shape[:2] != (S * B, n):
            raise ValueError(f"kinds for {tuple(kinds.shape[:2])} (rollouts, windows), need {(S * B, n)}")
        carry = None
        if c.react_condition and c.react_shift:  # the previous window's kinds' embedding (0 before the first)
            prev = F.pad(kinds[:, :-1], (0, 0, 1, 0))  # (S B, n, k)
            carry = {"kind": self.decoder.kind_embed(flat(prev).to(self.decoder.kind_embed.weight.dtype))}
        extras: dict = {}
        z = None if latents is None else flat(latents)
        k = None if kinds is None else flat(kinds)
        audio_w = audio.view(S * B * n, W, A)  # (read by step only without an encoding)
        out, alpha = self.step(audio_w, flat(hist), flat(enc), anchor, flat(base), z, extras, carry, k)
        out = out.reshape(S * B, n, W, -1)  # (S B, n, W, D)
        first = torch.cat([f0.unsqueeze(1), out[:, 0, 1:]], dim=1)  # anchor frame 0
        out = torch.cat([first.unsqueeze(1), out[:, 1:]], dim=1)
        padded = out.reshape(S * B, n * W, -1)
        aux = {"alpha": alpha.reshape(S * B, n * K, 1)[:, :T], "waypoint": waypoint, "padded": padded,
               "bounds": [(hist[:, w, -2:], out[:, w, :2]) for w in range(n)], "padded_audio": audio}  # fmt: skip
        if "react_logit" in extras:
            aux["react_logit"] = extras["react_logit"].reshape(S * B, n)
        if "kind_logit" in extras:
            aux["kind_logit"] = extras["kind_logit"].reshape(S * B, n, -1)
        return padded[:, :T], aux

    # -- refinement ----------------------------------------------------------------
    def refine(self, motion: torch.Tensor, audio: torch.Tensor, noise: torch.Tensor | None = None,
               events: torch.Tensor | None = None, parts: bool = False, keep: int | None = None):  # fmt: skip
        """Replace the refined block of ``motion`` (B, T, D) by its refinement given ``audio`` (B, T, A).

        ``noise`` (B, refinement.noise_dim, T): drawn when None. ``events`` (B, T, K): onsets of the
        fast events (training: the ground truth's); drawn from the noise when None. ``parts``: also
        ``{"onset_logit": (B, T, K), "hazard": (B, T, K), "events": (B, T, E)}`` (the logit of an
        onset's probability q, the candidates' hazard p, and the events' term of the refined block;
        None without events). ``keep``: return only the last ``keep`` frames (B, keep, D), the frames
        before them read as context (what a streamer does: cheaper than refining them all).
        """
        empty = {"onset_logit": None, "hazard": None, "events": None}
        keep = motion.shape[1] if keep is None else min(keep, motion.shape[1])
        if self.refinement is None:
            out = motion[:, motion.shape[1] - keep :]
            return (out, empty) if parts else out
        a = audio if self.config.use_audio else torch.zeros_like(audio)
        out = motion[:, motion.shape[1] - keep :].clone()
        refined, got = self.refinement(motion[:, :, self.exp], a, noise, events, parts=True, keep=keep)
        out[:, :, self.exp] = refined
        return (out, got) if parts else out

    def refine_step(self, motion: torch.Tensor, audio: torch.Tensor, noise: torch.Tensor, cache: dict | None):
        """The next frames of a causal refinement (:meth:`Refinement.step`): motion (B, L, D), audio
        (B, L, A), noise (B, noise_dim, L) -> (B, L, D) with the refined block replaced, and the cache."""
        a = audio if self.config.use_audio else torch.zeros_like(audio)
        out = motion.clone()
        out[:, :, self.exp], cache = self.refinement.step(motion[:, :, self.exp], a, noise, cache)
        return out, cache

    @property
    def refine_context(self) -> int:
        """Frames before a refined frame that it depends on: causal mode R (then frames before the
        sequence are a held first frame with silent audio, :func:`refine_prefix`); whole mode 0."""
        return self.refinement.context if self.refinement is not None and self.refinement.causal else 0

    def forward(self, audio, frame0=None, history=None, refine: bool = True):
        """Coarse rollout, then the refinement over the whole sequence with fresh noise (training
        and tests; generation refines through ``realm.generate.RefineStream``)."""
        motion, aux = self.rollout(audio, frame0, history)
        if refine and self.refinement is not None:
            R = self.refine_context
            m, a = refine_prefix(aux["padded"], aux["padded_audio"], R)
            motion = self.refine(m, a)[:, R : R + motion.shape[1]]
        return motion, aux

    # -- introspection -------------------------------------------------------------
    @contextmanager
    def record_internals(self) -> Iterator[dict[str, list[torch.Tensor]]]:
        """Record the gate and the fusion's cross-attention of every window run inside the block.

            with model.record_internals() as rec:
                model.rollout(audio, frame0)
            rec["alpha"]      # one (B, K, 1) tensor per window: the reactive gate's values
            rec["attention"]  # one (B, heads, K, W) tensor per window: shifted-ALiBi cross-attention

        Outputs are unchanged. The layers of realm.models.layers (generation, and training with
        ``fast_train``) append the attention probabilities as they compute them; with ``fast_train`` off and
        autograd on, a forward hook on the nn module recomputes them with ``need_weights=True``.
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
        self.fusion.watch = rec["attention"]  # the generation path appends them itself (the hook: with autograd)
        try:
            yield rec
        finally:
            self.fusion.watch = None
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
            "rest_leak": self.leak_logit.numel() if self.config.rest_leak else 0,
        }
        counts["coarse"] = (counts["audio_encoder"] + counts["fusion"] + counts["decoder"] + counts["waypoint"]
                            + counts["rest_leak"])  # fmt: skip
        counts["total"] = counts["coarse"] + counts["refinement"]
        return counts


# ---------------------------------------------------------------- refining a sequence (generation)


class SequenceNoise:
    """The refinement's noise as a function of the absolute frame: frames [16 b, 16 b + 16) of
    sample ``sample`` draw their (h, 16) block from the seed ``(seed, sample, b)`` (blocks before
    frame 0, which a causal refinement reads as context, from ``(seed, sample, -1, -b)``). So a
    frame's noise does not depend on how the audio arrived or how generation was chunked."""

    BLOCK = 16

    def __init__(self, dim: int, seed: int = 0, sample: int = 0, stream: int = 0):
        self.dim, self.seed, self.sample, self.stream = dim, int(seed), int(sample), int(stream)
        self._cache: dict[int, torch.Tensor] = {}

    def _block(self, b: int) -> torch.Tensor:
        if b not in self._cache:
            key = [self.seed, self.sample, b] if b >= 0 else [self.seed, self.sample, 2**31 - 1, -b]
            if self.stream:  # another noise of the same seed (the coarse latents), independent of this one
                key = [*key[:2], 2**31 - 1 - self.stream, *key[2:]]
            g = torch.Generator()
            g.manual_seed(int(np.random.SeedSequence(key).generate_state(1)[0]))
            if len(self._cache) > 64:  # streaming reads a few recent blocks again and again
                self._cache.pop(next(iter(self._cache)))
            self._cache[b] = torch.randn(self.dim, self.BLOCK, generator=g)
        return self._cache[b]

    def __call__(self, start: int, stop: int) -> torch.Tensor:
        """Noise of frames [start, stop): (1, dim, stop - start)."""
        if stop <= start:
            return torch.zeros(1, self.dim, 0)
        B = self.BLOCK
        first, last = start // B, (stop - 1) // B
        blocks = torch.cat([self._block(b) for b in range(first, last + 1)], dim=1)
        return blocks[:, start - first * B : stop - first * B].unsqueeze(0)


class WindowLatents:
    """The coarse generator's latents as a function of the window index: window w of sample
    ``sample`` draws its (latent_width,) latent from the seed ``(seed, sample)`` through a noise
    stream of its own (independent of the refinement's), so offline and streaming generation of
    the same seed and sample draw the same latents, times ``temperature`` (a float, or one per dim:
    ``REALMConfig.latent_temperatures()``)."""

    STREAM = 1

    def __init__(self, dim: int, seed: int = 0, sample: int = 0, temperature: float | torch.Tensor = 1.0):
        self.noise = SequenceNoise(dim, seed, sample, stream=self.STREAM)
        self.temperature = temperature

    def __call__(self, start: int, stop: int) -> torch.Tensor:
        """Latents of windows [start, stop): (1, stop - start, dim)."""
        return self.temperature * self.noise(start, stop).transpose(1, 2)


class RefineStream:
    """The one refinement computation of generation, offline and streaming alike.

    ``push(coarse, audio)`` takes the next frames of the (normalised) coarse motion (1, n, D) and
    their features (1, n, A) and returns them refined (1, n, D).

    * ``refine_mode="causal"`` (default): a frame is refined from the ``R = model.refine_context``
      frames before it (before frame 0: the first frame held, silent audio), kept here between
      pushes. The result does not depend on how the frames are split into pushes: streaming
      equals offline exactly, and window edges leave no seam.
    * ``refine_mode="whole"`` (the authors'): offline generation refines the whole sequence at once
      (:func:`refine_sequence`); pushed frames are refined with up to ``refine_context`` frames of
      left context only, an approximation that differs from offline by design.
    """

    def __init__(self, model: REALM, seed: int = 0, sample: int = 0):
        self.model = model
        self.noise = SequenceNoise(model.refinement.noise_dim if model.refinement is not None else 0, seed, sample)
        self.causal = model.refinement is not None and model.refinement.causal
        self.R = model.refine_context if self.causal else model.config.refine_context
        self.done = 0  # frames refined so far
        self.ctx: tuple[torch.Tensor, torch.Tensor] | None = None  # the last R coarse and audio frames
        self.cache: dict | None = None  # causal mode: the refinement's incremental state (Refinement.step)

    def push(self, coarse: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        n = coarse.shape[1]
        if self.model.refinement is None or n == 0:
            return coarse
        if self.causal and self.model.refinement.steppable:  # each frame once, the state carried
            if self.cache is None:  # the frames before 0: the first frame held, with silence
                m, a = refine_prefix(coarse, audio, self.R)
            else:
                m, a = coarse, audio
            c = m.shape[1] - n
            out, self.cache = self.model.refine_step(m, a, self.noise(self.done - c, self.done + n).to(m.device), self.cache)
            self.done += n
            return out[:, c:]
        if self.ctx is None:  # causal: the frames before 0 are the first frame held, with silence
            m, a = refine_prefix(coarse, audio, self.R if self.causal else 0)
        else:
            m, a = torch.cat([self.ctx[0], coarse], dim=1), torch.cat([self.ctx[1], audio], dim=1)
        c = m.shape[1] - n  # context frames in front
        out = self.model.refine(m, a, self.noise(self.done - c, self.done + n).to(m.device), keep=n)
        self.ctx = (m[:, -self.R :], a[:, -self.R :]) if self.R > 0 else (m[:, :0], a[:, :0])
        self.done += n
        return out


def refine_sequence(model: REALM, coarse: torch.Tensor, audio: torch.Tensor, seed: int = 0, sample: int = 0,
                    chunk: int = 512) -> torch.Tensor:  # fmt: skip
    """Refine a whole (1, T, D) coarse sequence with the noise of ``(seed, sample)``.

    Causal mode: :class:`RefineStream` fed ``chunk`` frames at a time (the chunking changes
    nothing but memory). Whole mode (the authors' ``inference.py``): the whole sequence at once,
    or independent chunks of ``refine_chunk`` frames beyond that length.
    """
    if model.refinement is None:
        return coarse
    T = coarse.shape[1]
    if model.refinement.causal:
        rs = RefineStream(model, seed, sample)
        return torch.cat([rs.push(coarse[:, a : a + chunk], audio[:, a : a + chunk]) for a in range(0, T, chunk)], dim=1)
    noise, L = SequenceNoise(model.refinement.noise_dim, seed, sample), model.config.refine_chunk
    return torch.cat([model.refine(coarse[:, a : a + L], audio[:, a : a + L], noise(a, min(T, a + L)).to(coarse.device))
                      for a in range(0, T, L)], dim=1)  # fmt: skip


def refine_prefix(motion: torch.Tensor, audio: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``motion`` (B, T, D) and ``audio`` (B, T, A) with ``n`` frames put before the start: the first
    frame held, silence (zero features). A causal refinement reads them as the frames before 0."""
    if n <= 0:
        return motion, audio
    return (torch.cat([motion[:, :1].expand(-1, n, -1), motion], dim=1),
            torch.cat([audio.new_zeros(audio.shape[0], n, audio.shape[2]), audio], dim=1))  # fmt: skip


def windows_carry_state(c: REALMConfig) -> bool:
    """Whether a window of this model leaves the next one state besides its frames (the branch's offset;
    the latent's react_shift with latent_branch), so its windows cannot run at once (teacher_rollout)."""
    return c.branch_into == "offset" or (c.latent_branch and bool(c.react_shift))


def _left_pad(history: torch.Tensor, K: int) -> torch.Tensor:
    """The last K frames of ``history`` (B, K', D); shorter histories repeat their first frame."""
    if history.shape[1] >= K:
        return history[:, -K:]
    return torch.cat([history[:, :1].expand(-1, K - history.shape[1], -1), history], dim=1)
