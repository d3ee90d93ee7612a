"""Attention with Linear Biases, shifted by a reaction delay (REALM's Reactive Gated Fusion).

For query i and key j (both 0..W-1), head h = 1..H and delay tau::

    bias[h, i, j] = -m_h * |(i - j) - tau|   for j <= i
                  = -inf                      for j > i   (causal: no future audio)
    m_h = 2^-h  (0.5, 0.25, 0.125, 0.0625 for 4 heads)

The bias peaks (is 0) at j = i - tau: a listener frame attends most to the audio tau frames
before it. Standard one-sided ALiBi is the special case tau = 0.
"""

from __future__ import annotations

import torch


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """m_h = 2^-h for h = 1..n_heads, shape (n_heads,)."""
    return torch.tensor([2.0 ** -(h + 1) for h in range(n_heads)])


def shifted_alibi_bias(n_queries: int, n_keys: int, n_heads: int, tau: int = 8, causal: bool = True) -> torch.Tensor:
    """Additive attention bias of shape (n_heads, n_queries, n_keys)."""
    i = torch.arange(n_queries).view(-1, 1)
    j = torch.arange(n_keys).view(1, -1)
    dist = (i - j - tau).abs().float()  # |(i - j) - tau|
    bias = -alibi_slopes(n_heads).view(-1, 1, 1) * dist
    if causal:
        bias = bias.masked_fill((j > i).unsqueeze(0), float("-inf"))
    return bias
