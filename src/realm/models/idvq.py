"""Identity-disentangled motion VQ-VAE (seed 2, DESIGN section 8): content tokens + identity by AdaIN.

The seed paper (a multimodal-LM listener extending LM-Listener) separates *who* listens from *how
they react*: "an identity disentanglement strategy using instance normalization and adaptive
instance normalization in a VQ-VAE framework, enabling ... flexible identity control". Its full text
is not public; this module is our implementation of that sentence on top of the T2M-GPT style motion
VQ-VAE of LM-Listener (:mod:`realm.models.baselines.lmlistener`, whose residual stack and EMA codebook
with dead-code reset it imports)::

    motion x (B, T, D), normalised space (the caller applies NormStats)
      │ instance norm, no affine: x_n = (x - mean_t x) / max(std_t x, in_floor)    per clip, per channel
      │ pad the end (repeat the last frame) to a multiple of 8 frames
      ▼
    encoder  Conv1d(D, w, 3) - ReLU ──► 3 x [Conv1d(w, w, 4, stride 2) ──► ResStack(9, 3, 1)] ──► Conv1d(w, c, 3)
      ▼ z (B, T/8, c)
    EMA codebook (K codes, decay 0.99, dead-code reset)  ──► tokens (B, T/8)   content only
      ▼ q (B, T/8, c)
    decoder  Conv1d(c, w, 3) - AdaIN - ReLU ──► 3 x [AdaResStack ──► upsample x2 ──► Conv1d(w, w, 3)]
             ──► Conv1d(w, w, 3) - AdaIN - ReLU ──► Conv1d(w, D, 3)  ──► y (B, T, D)
      ▼
    output = mean_t(ref) + max(std_t(ref), in_floor) * y     (``ref_stats``: the reference's per-channel statistics)

    reference clip of the target listener r (B, Tr >= 60, D)
      ──► identity encoder: Conv1d - ReLU - Conv1d(stride 2) - ReLU - Conv1d - ReLU ──► mean over time
          ++ [per-channel mean_t(r), log std_t(r)] ──► MLP ──► identity code (B, id_dim)
      ──► each AdaIN layer: gamma, beta = Linear(id_dim, 2 w)(code);  AdaIN(h) = (1 + gamma) * IN(h) + beta

Choices (ours):

- **Where the instance norm sits.** Once, on the input motion, per clip and per channel over time,
  without affine parameters. Everything after it is a function of ``x_n`` only, so two clips that differ
  by a per-channel offset and a positive per-channel scale (``x2 = a * x1 + b``, ``a > 0``) give the
  same tokens, exactly (up to float rounding, while ``a * std`` stays above ``in_floor``). A negative
  scale flips the sign of the channel and is *not* removed. No further IN inside the encoder blocks:
  it would add nothing to this invariance and would make short clips (few tokens) lose content.
- **AdaIN** in the decoder: every normalisation layer is an instance norm over time followed by a
  scale ``1 + gamma`` and shift ``beta`` predicted from the identity code (one AdaIN before each
  residual block's convolution, one after the first and one before the last convolution).
- **Reference statistics** (``ref_stats``, on by default): the decoder predicts motion in the
  reference's per-channel standardised space and the output is de-standardised with the reference's
  per-clip mean and std floored at ``in_floor``, the exact inverse of the input instance norm. The output's per-channel
  mean/std thus follow the reference, while the decoder may still deviate where content asks
  (a clip with a big smile is not forced to the variance of a quiet reference).
- **Identity encoder input**: the pooled conv features plus the reference's per-channel mean and log
  std (the style IN removed), so the identity code sees the statistics it must restore directly.
- **The floor** (``in_floor``, normalised units): variation smaller than it is not scaled up by the
  input norm, and a reference channel that hardly moves is not taken as the output's scale (the
  reference's std is floored too, since 2026-11-29: the exact inverse; at 1e-3 this changes no
  decoding, measured). The default 1e-3 scales a channel that does not move in a clip (mouthFrown
  where the listener shows no concern) up to the size of a reaction. 1.0 (a channel is scaled only
  where it moves as much as over the whole data) was measured on the 2 h language set (one run each,
  docs/mmlm.md "The tokenizer's floor"): brow raises kept (decoded F1 0 -> 0.81; generated 0 ->
  0.56-0.64), the listener's expressivity better restored and SmolLM2's reactions to unseen words
  better (uncued F1 0.431 -> 0.486), at the price of more false smile and concern rises in the
  decoded ground truth (86 -> 139). New runs use it (``realm.models.mmlm.RUN_VQ``); the class
  default stays 1e-3, so runs saved without the field decode as they were trained.
- **Training reference**: another clip of the same listener when identities are known (as the
  training run picks it), else the clip itself; :meth:`IDVQ.forward` defaults to the clip itself.
- ``use_in_adain=False`` is the plain VQ-VAE of the ablation: no input IN, no AdaIN, no reference
  statistics; the reference is ignored and the tokens carry identity and content together.
- **Length**: ``T`` not a multiple of 8 is padded at the end by repeating the last frame (after the
  input IN, whose statistics use the real frames only); ``encode`` gives ``ceil(T / 8)`` tokens,
  ``decode`` gives ``8 n`` frames or ``length`` frames when given; ``forward`` and ``restyle`` crop to
  ``T``. With IN/AdaIN the decoder needs at least 2 tokens (the instance norm of one token is zero).
- **Edges** (``edge_tokens``, 2): the decoder reads copies of the first and last quantised vector
  beyond each end and their frames are cut, instead of its convolutions' zero padding, which made
  every decoded clip begin with a dip (0 = the decoding before 2026-11-29).
- Loss: SmoothL1(recon) + 0.5 SmoothL1(velocity) + 0.02 commitment, over all channels (T2M-GPT,
  LM-Listener).

Training runs through the model harness as ``realm train idvq`` (:class:`realm.models.mmlm.IDVQRun`:
Lightning, references from other clips of the same listener id, checkpoint selected on val); the
multimodal-LM listener (:mod:`realm.models.mmlm`) decodes its tokens with it (``realm generate
--identity-ref``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from realm.models.baselines.lmlistener import EMAQuantizer, ResStack
from realm.motion import get_spec

MIN_REF_FRAMES = 60  # 2 s at 30 fps


@dataclass
class IDVQConfig:
    spec: str = "arkit58"
    frames_per_token: int = 8  # 2 ** (stride-2 downsamplings)
    width: int = 512
    depth: int = 3  # residual blocks per stage, dilations 9, 3, 1
    codes: int = 256
    code_dim: int = 512
    ema: float = 0.99  # EMA decay of the codebook; dead codes (EMA count < 1) reset to encoder outputs
    commit: float = 0.02
    w_vel: float = 0.5
    use_in_adain: bool = True  # False: plain VQ-VAE (ablation)
    ref_stats: bool = True  # output = mean(ref) + std(ref) * decoder(...)
    id_width: int = 128  # identity encoder conv width
    id_dim: int = 128  # identity code
    in_floor: float = 1e-3  # std floor of the input instance norm and of the reference's std (normalised
    #   units; see "The floor" above)
    min_ref_frames: int = MIN_REF_FRAMES
    edge_tokens: int = 2  # ours: the decoder reads this many copies of the first and of the last
    #   quantised vector beyond each end, and the frames they give are cut. With zero padding (0, the
    #   runs before 2026-11-29) every decoded clip began with a dip its convolutions made (mouthSmile
    #   -0.2 to -0.5 below the data in the first frames), which the event detectors count as a smile
    #   onset at frame 1 (docs/mmlm.md, measured)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def stages(self) -> int:
        s = int(math.log2(self.frames_per_token))
        if 2**s != self.frames_per_token:
            raise ValueError(f"frames_per_token must be a power of 2, got {self.frames_per_token}")
        return s


def channel_stats(x: torch.Tensor, floor: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-clip, per-channel mean and std over time: (B, T, D) -> (B, 1, D), (B, 1, D) (population std)."""
    mean = x.mean(1, keepdim=True)
    std = (x - mean).pow(2).mean(1, keepdim=True).sqrt()
    return mean, std.clamp(min=floor) if floor > 0 else std


def instance_norm(x: torch.Tensor, floor: float) -> torch.Tensor:
    """Non-affine instance norm of (B, T, D) over time, per clip and channel."""
    mean, std = channel_stats(x, floor)
    return (x - mean) / std


class AdaIN(nn.Module):
    """(B, w, n) features, (B, id_dim) code -> (1 + gamma) * IN(h) + beta, gamma/beta from the code."""

    def __init__(self, w: int, id_dim: int):
        super().__init__()
        self.affine = nn.Linear(id_dim, 2 * w)
        nn.init.zeros_(self.affine.weight)  # start as plain IN
        nn.init.zeros_(self.affine.bias)

    def forward(self, h: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        h = F.instance_norm(h, eps=1e-5)
        gamma, beta = self.affine(code)[..., None].chunk(2, dim=1)  # (B, w, 1) each
        return (1 + gamma) * h + beta


class AdaResStack(nn.Module):
    """ResStack with AdaIN: x + Conv1(ReLU(Conv3_d(ReLU(AdaIN(x))))), dilations 9, 3, 1."""

    def __init__(self, w: int, depth: int, id_dim: int):
        super().__init__()
        dil = [3**i for i in range(depth)][::-1]
        self.norms = nn.ModuleList(AdaIN(w, id_dim) for _ in dil)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.ReLU(), nn.Conv1d(w, w, 3, padding=d, dilation=d), nn.ReLU(), nn.Conv1d(w, w, 1))
            for d in dil
        )

    def forward(self, x, code):
        for n, b in zip(self.norms, self.blocks, strict=True):
            x = x + b(n(x, code))
        return x


class IdentityEncoder(nn.Module):
    """Reference clip (B, Tr, D) -> identity code (B, id_dim): conv features averaged over time + channel stats."""

    def __init__(self, dim: int, c: IDVQConfig):
        super().__init__()
        w = c.id_width
        self.conv = nn.Sequential(
            nn.Conv1d(dim, w, 3, padding=1), nn.ReLU(),
            nn.Conv1d(w, w, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv1d(w, w, 3, padding=1), nn.ReLU(),
        )  # fmt: skip
        self.mlp = nn.Sequential(nn.Linear(w + 2 * dim, c.id_dim), nn.ReLU(), nn.Linear(c.id_dim, c.id_dim))

    def forward(self, ref: torch.Tensor) -> torch.Tensor:
        feat = self.conv(rearrange(ref, "b t d -> b d t")).mean(-1)  # (B, w)
        mean, std = channel_stats(ref)  # (B, 1, D)
        return self.mlp(torch.cat([feat, mean[:, 0], torch.log(std[:, 0] + 1e-3)], -1))  # (B, id_dim)


class Decoder(nn.Module):
    """q (B, c, n) [+ identity code] -> y (B, D, 8 n). AdaIN layers when ``adain``, else no normalisation."""

    def __init__(self, dim: int, c: IDVQConfig):
        super().__init__()
        w, self.adain = c.width, c.use_in_adain
        self.inp = nn.Conv1d(c.code_dim, w, 3, padding=1)
        self.stacks = nn.ModuleList(
            AdaResStack(w, c.depth, c.id_dim) if self.adain else ResStack(w, c.depth) for _ in range(c.stages)
        )
        self.ups = nn.ModuleList(nn.Conv1d(w, w, 3, padding=1) for _ in range(c.stages))
        self.pre = nn.Conv1d(w, w, 3, padding=1)
        self.out = nn.Conv1d(w, dim, 3, padding=1)
        if self.adain:
            self.norm_in, self.norm_out = AdaIN(w, c.id_dim), AdaIN(w, c.id_dim)

    def forward(self, q: torch.Tensor, code: torch.Tensor | None) -> torch.Tensor:
        h = self.inp(q)
        h = F.relu(self.norm_in(h, code) if self.adain else h)
        for stack, up in zip(self.stacks, self.ups, strict=True):
            h = stack(h, code) if self.adain else stack(h)
            h = up(F.interpolate(h, scale_factor=2, mode="nearest"))
        h = self.pre(h)
        return self.out(F.relu(self.norm_out(h, code) if self.adain else h))


class IDVQ(nn.Module):
    """Identity-disentangled motion VQ-VAE; everything in normalised space, motion (B, T, D)."""

    def __init__(self, config: IDVQConfig | None = None):
        super().__init__()
        self.config = c = config or IDVQConfig()
        self.spec = get_spec(c.spec)
        D, w = self.spec.dim, c.width
        self.encoder = nn.Sequential(
            nn.Conv1d(D, w, 3, padding=1), nn.ReLU(),
            *[m for _ in range(c.stages) for m in (nn.Conv1d(w, w, 4, stride=2, padding=1), ResStack(w, c.depth))],
            nn.Conv1d(w, c.code_dim, 3, padding=1),
        )  # fmt: skip
        self.quantizer = EMAQuantizer(c.codes, c.code_dim, c.ema)
        self.identity = IdentityEncoder(D, c) if c.use_in_adain else None
        self.decoder = Decoder(D, c)

    # -- pieces
    def _check(self, x: torch.Tensor, what: str) -> None:
        if x.ndim != 3 or x.shape[-1] != self.spec.dim:
            raise ValueError(f"idvq: {what} must be (B, T, {self.spec.dim}), got {tuple(x.shape)}")

    def encode_z(self, motion: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> continuous encoder output z (B, ceil(T / 8), code_dim)."""
        self._check(motion, "motion")
        f = self.config.frames_per_token
        x = instance_norm(motion, self.config.in_floor) if self.config.use_in_adain else motion
        pad = -x.shape[1] % f
        if pad:  # repeat the last frame: (B, T, D) -> (B, 8 n, D)
            x = torch.cat([x, x[:, -1:].expand(-1, pad, -1)], 1)
        return rearrange(self.encoder(rearrange(x, "b t d -> b d t")), "b c n -> b n c")

    def encode(self, motion: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> tokens (B, ceil(T / 8)). Never updates the codebook."""
        z = self.encode_z(motion)
        return self.quantizer.tokens(z.reshape(-1, z.shape[-1])).view(z.shape[:2])

    def identity_code(self, ref: torch.Tensor) -> torch.Tensor | None:
        """Reference clip (B, Tr >= min_ref_frames, D) -> (B, id_dim); None for the plain VQ-VAE."""
        if self.identity is None:
            return None
        self._check(ref, "ref")
        if ref.shape[1] < self.config.min_ref_frames:
            raise ValueError(
                f"idvq: the identity reference needs >= {self.config.min_ref_frames} frames, got {ref.shape[1]}"
            )
        return self.identity(ref)

    def decode_q(self, q: torch.Tensor, ref: torch.Tensor | None, length: int | None = None) -> torch.Tensor:
        """Quantised vectors (B, n, code_dim) + ref (B, Tr, D) -> motion (B, length or 8 n, D)."""
        if self.config.use_in_adain and q.shape[1] < 2:
            raise ValueError("idvq: decoding with AdaIN needs at least 2 tokens (16 frames)")
        if self.config.use_in_adain and ref is None:
            raise ValueError("idvq: decode needs a reference clip of the target listener")
        code = self.identity_code(ref) if ref is not None else None
        if code is not None and code.shape[0] != q.shape[0]:
            code = code.expand(q.shape[0], -1)  # one reference for the whole batch
        e, n = self.config.edge_tokens, q.shape[1]
        if e:  # (B, n, c) -> (B, e + n + e, c): the end vectors repeated beyond each end
            q = torch.cat([q[:, :1].expand(-1, e, -1), q, q[:, -1:].expand(-1, e, -1)], 1)
        y = rearrange(self.decoder(rearrange(q, "b n c -> b c n"), code), "b d t -> b t d")  # (B, 8 (e + n + e), D)
        f = self.config.frames_per_token
        y = y[:, e * f : (e + n) * f]  # (B, 8 n, D)
        if length is not None:
            y = y[:, :length]
        if self.config.use_in_adain and self.config.ref_stats:
            mean, std = channel_stats(ref, self.config.in_floor)  # (B or 1, 1, D), the input's floor: its inverse
            y = mean + std * y
        return y

    def decode(
        self, tokens: torch.Tensor, ref: torch.Tensor | None = None, length: int | None = None
    ) -> torch.Tensor:
        """tokens (B, n) + reference clip (B or 1, Tr, D) -> motion (B, length or 8 n, D)."""
        return self.decode_q(self.quantizer.codebook[tokens], ref, length)

    def restyle(self, motion: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """The content of ``motion`` (B, T, D) in the style of ``ref`` (B or 1, Tr, D) -> (B, T, D)."""
        return self.decode(self.encode(motion), ref, motion.shape[1])

    # -- training
    def forward(self, motion: torch.Tensor, ref: torch.Tensor | None = None):
        """motion (B, T, D), ref (B, Tr, D) (default: the clip itself) -> recon (B, T, D), losses.

        In training mode the codebook takes its EMA update (and dead-code reset) on this batch.
        """
        ref = motion if ref is None else ref
        z = self.encode_z(motion)  # (B, n, c)
        tokens, q, commit = self.quantizer(z)
        recon = self.decode_q(q, ref, motion.shape[1])
        rec = F.smooth_l1_loss(recon, motion)
        vel = F.smooth_l1_loss(torch.diff(recon, dim=1), torch.diff(motion, dim=1))
        loss = rec + self.config.w_vel * vel + self.config.commit * commit
        used = torch.tensor(float(tokens.unique().numel()))
        return recon, {"loss": loss, "recon": rec, "vel": vel, "commit": commit, "codes_used": used}

