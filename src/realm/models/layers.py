"""REALM's transformer layers as plain functions of ``nn.Transformer*Layer`` modules' own parameters.

The same maths as calling the modules (post-norm, GELU; tested to float rounding), with less
work per call, for the many small calls of a rollout (16-32 tokens, d 128):

- generation (eval, no autograd) skips the modules' per-call checks and mask conversions;
- training draws dropout's keep-masks from NumPy's SFC64 generator (:func:`keep_mask`),
  seeded from torch's generator, instead of ``torch.bernoulli_`` (mt19937 on a CPU), which took
  a quarter of a REALM training step on one thread (benchmarks/bench_train.py); the attention
  probabilities' dropout goes through the same masks (the attention is written out: softmax,
  mask, product, as PyTorch's plain "math" kernel computes it).

A dropout probability p keeps a value when a uniform 16-bit integer is at least round(p 65536):
p is exact to 1/65536 (0.1 -> 0.100006), and the kept values are scaled by 1 / (1 - p') for that p'.
Seeded runs repeat exactly (``torch.manual_seed`` decides every mask).
On a GPU, dropout is ``F.dropout`` (the masks would otherwise cross the bus).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LEVELS = 1 << 16  # a keep-mask compares uniform 16-bit integers to a threshold


def keep_mask(shape: tuple[int, ...], p: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A CPU tensor of ``shape``: 1 / (1 - p') with probability 1 - p', else 0, where
    p' = round(p 65536) / 65536 (the kept values scaled, as dropout does). The seed comes from torch's generator.
    ``dtype`` float32, or bfloat16 (written as its bit patterns by NumPy: the float32 mask's values
    rounded to bfloat16, without a float32 mask and its conversion, for bf16-mixed training)."""
    threshold = round(p * LEVELS)
    n = math.prod(shape)
    gen = np.random.SFC64(int(torch.randint(0, 2**62, (1,))))
    r = gen.random_raw(-(-n // 4)).view(np.uint16)[:n]  # four 16-bit integers a 64-bit draw
    if dtype == torch.bfloat16:
        mask = np.multiply(r >= threshold, _bf16_scale_bits(threshold), dtype=np.int16)
        return torch.from_numpy(mask).view(torch.bfloat16).view(shape)
    mask = np.multiply(r >= threshold, LEVELS / (LEVELS - threshold), dtype=np.float32)
    return torch.from_numpy(mask).view(shape).to(dtype)


@functools.lru_cache(maxsize=64)
def _bf16_scale_bits(threshold: int) -> int:
    """The bfloat16 bit pattern (as an int16) of a keep-mask's scale, float32 rounded to bfloat16
    by torch; once per dropout rate, not once per mask."""
    scale = torch.tensor(LEVELS / (LEVELS - threshold), dtype=torch.float32)
    return int(scale.to(torch.bfloat16).view(torch.int16))


class _Mask(torch.autograd.Function):
    """x * mask, the mask saved for the backward pass (its gradient: grad * mask)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(mask)
        return x * mask

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (mask,) = ctx.saved_tensors
        return grad * mask, None


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout(x, p, training)`` with the keep-mask of :func:`keep_mask` on a CPU."""
    if not training or p <= 0.0:
        return x
    if x.device.type != "cpu" or round(p * LEVELS) >= LEVELS:
        return F.dropout(x, p, training=True)
    return _Mask.apply(x, keep_mask(tuple(x.shape), p, x.dtype))


class Dropout(nn.Module):
    """:func:`dropout` as a module (an ``nn.Dropout`` with the faster CPU masks; no parameters)."""

    def __init__(self, p: float = 0.1):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def attention(attn: nn.MultiheadAttention, x: torch.Tensor, mem: torch.Tensor | None, mask: torch.Tensor | None,
              weights: list | None = None) -> torch.Tensor:  # fmt: skip
    """``attn(x, kv, kv, attn_mask=mask)[0]`` (kv = ``mem``, or ``x`` when None), in the module's mode:
    attention dropout while it trains. x (B, Tq, d), mem (B, Tk, d); mask (Tq, Tk), (heads, Tq, Tk) or
    (B * heads, Tq, Tk), added to the logits. ``weights``: a list to append the attention probabilities
    (B, heads, Tq, Tk) to (before dropout)."""
    d, h = attn.embed_dim, attn.num_heads
    w, b = attn.in_proj_weight, attn.in_proj_bias
    if mem is None:
        q, k, v = F.linear(x, w, b).chunk(3, dim=-1)
    else:
        q = F.linear(x, w[:d], b[:d])
        k, v = F.linear(mem, w[d:], b[d:]).chunk(2, dim=-1)
    B, Tq, Tk = x.shape[0], x.shape[1], k.shape[1]
    q, k, v = (t.reshape(B, -1, h, d // h).transpose(1, 2) for t in (q, k, v))  # (B, h, T, d / h)
    if mask is not None and tuple(mask.shape[-2:]) != (Tq, Tk):
        raise ValueError(f"attention mask {tuple(mask.shape)} for {Tq} queries and {Tk} keys")
    if mask is not None and mask.dim() == 3:
        mask = mask.reshape(-1, h, Tq, Tk)  # (B or 1, h, Tq, Tk)
    p = attn.dropout if attn.training else 0.0
    if p > 0.0 and x.device.type != "cpu":  # a GPU's fused kernel, with its own dropout
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        p = 0.0
    elif p == 0.0:
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, h, Tq, d / h)
    if p > 0.0 or weights is not None:
        logits = (q * (1.0 / math.sqrt(d // h))) @ k.transpose(-2, -1)  # (B, h, Tq, Tk)
        probs = torch.softmax(logits if mask is None else logits + mask, dim=-1)
        if weights is not None:  # inspection; the output stays the kernel's (recording changes nothing)
            weights.append(probs.detach())
        if p > 0.0:
            o = dropout(probs, p) @ v
    return attn.out_proj(o.transpose(1, 2).reshape(B, Tq, d))


def _p(layer: nn.Module) -> float:
    return layer.dropout.p if layer.training else 0.0


def decoder_layer(layer: nn.TransformerDecoderLayer, x: torch.Tensor, mem: torch.Tensor,
                  self_mask: torch.Tensor | None = None, mem_mask: torch.Tensor | None = None,
                  cross_weights: list | None = None) -> torch.Tensor:  # fmt: skip
    """A post-norm GELU ``nn.TransformerDecoderLayer``: ``layer(x, mem, tgt_mask=self_mask,
    memory_mask=mem_mask)``. ``cross_weights``: a list to append the cross-attention's probabilities to."""
    p = _p(layer)
    x = layer.norm1(x + dropout(attention(layer.self_attn, x, None, self_mask), p))
    x = layer.norm2(x + dropout(attention(layer.multihead_attn, x, mem, mem_mask, cross_weights), p))
    return layer.norm3(x + dropout(layer.linear2(dropout(F.gelu(layer.linear1(x)), p)), p))


def encoder_layer(layer: nn.TransformerEncoderLayer, x: torch.Tensor, keep: int | None = None,
                  mask: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """A post-norm GELU ``nn.TransformerEncoderLayer`` on x (B, T, d): ``layer(x, src_mask=mask)``, or
    its last ``keep`` frames only (B, keep, d), which attend to all T frames (the frames before them
    get no queries, feed-forward or norms: the same maths, less work)."""
    p = _p(layer)
    q = x if keep is None or keep >= x.shape[1] else x[:, -keep:]
    if mask is not None and q is not x:
        raise ValueError("encoder_layer: a mask with keep is not supported")
    q = layer.norm1(q + dropout(attention(layer.self_attn, q, None if q is x else x, mask), p))
    return layer.norm2(q + dropout(layer.linear2(dropout(F.gelu(layer.linear1(q)), p)), p))
