"""Metrics (DESIGN section 9). Each function states its formula, variant, direction and blocks.

This module starts with what training needs (checkpoint selection); the evaluation issue adds
the rest of section 9.
"""

from __future__ import annotations

import numpy as np


def sqrtm_psd_trace(s1: np.ndarray, s2: np.ndarray) -> float:
    """tr((S1 S2)^(1/2)) for symmetric PSD S1, S2, computed stably.

    (S1 S2)^(1/2) has the same eigenvalues as (S1^(1/2) S2 S1^(1/2))^(1/2), which is symmetric
    PSD: so the trace is the sum of square roots of the (clipped) eigenvalues of
    S1^(1/2) S2 S1^(1/2). No complex parts, no NaN for singular or rank-deficient covariances.
    """
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root1 @ s2 @ root1
    ev = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(ev, 0, None)).sum())


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to samples x (N, D) and y (M, D).

    FD = |mu_x - mu_y|^2 + tr(S_x + S_y - 2 (S_x S_y)^(1/2)); lower is better. Covariances use
    the biased (1/N) estimate, so one-frame inputs give a zero covariance instead of NaN.
    """
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    y = np.asarray(y, np.float64).reshape(len(y), -1)
    mx, my = x.mean(0), y.mean(0)
    sx = np.cov(x, rowvar=False, bias=True).reshape(x.shape[1], x.shape[1])
    sy = np.cov(y, rowvar=False, bias=True).reshape(y.shape[1], y.shape[1])
    fd = float(((mx - my) ** 2).sum() + np.trace(sx) + np.trace(sy) - 2 * sqrtm_psd_trace(sx, sy))
    return max(fd, 0.0)


def l1(gt: np.ndarray, pred: np.ndarray) -> float:
    """Mean absolute error over frames and dimensions of one clip (T, D); lower is better."""
    n = min(len(gt), len(pred))
    return float(np.abs(np.asarray(gt[:n], np.float64) - np.asarray(pred[:n], np.float64)).mean())


def fd_delta(gt: np.ndarray, pred: np.ndarray) -> float:
    """FD on first temporal differences of whole sequences (catches over-smoothing); lower is better."""
    return frechet_distance(np.diff(gt, axis=0), np.diff(pred, axis=0))
