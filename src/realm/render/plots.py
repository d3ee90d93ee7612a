"""Static plots: per-block trajectories (ground truth vs models), REALM's gate and cross-attention.

    from realm.render.plots import plot_trajectories, realm_internals, plot_gate, plot_attention
    plot_trajectories("traj.png", {"realm": pred}, spec, fps=30, gt=clip.listener, words=clip.words)
    inside = realm_internals(listener, clip.audio_path, first_frame=clip.listener[0])
    plot_gate("gate.png", inside.alpha, inside.fps, words=clip.words)
    plot_attention("attention.png", inside.attention[3], tau=inside.tau, window=3)

Every function writes one PNG atomically (``force=False`` refuses to replace an existing file).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from realm.io import atomic_path
from realm.motion import MotionSpec, get_spec


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: str | Path, force: bool, dpi: int = 100) -> Path:
    out = Path(out)
    plt = _pyplot()
    try:
        with atomic_path(out, force=force) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    return out


def _words_axis(ax, words, t0: float, t1: float) -> None:
    """Shade the speaker's words on ``ax`` and write them along its top edge."""
    for w in words or []:
        start, end, text = (w.start, w.end, w.word) if hasattr(w, "start") else (w["start"], w["end"], w["word"])
        if end < t0 or start > t1:
            continue
        ax.axvspan(start, end, color="tab:orange", alpha=0.08, lw=0)
        ax.text(start, 1.01, text, transform=ax.get_xaxis_transform(), rotation=60, fontsize=6, ha="left", va="bottom")


def block_channels(spec: MotionSpec, motions: Sequence[np.ndarray], per_block: int = 3) -> list[tuple[str, str, int]]:
    """(block, label, column) of the channels drawn per block: the ``per_block`` most variable ones.

    Variance is taken over all ``motions``; rotation and translation show all their axes.
    """
    stacked = np.concatenate([np.asarray(m) for m in motions], axis=0)
    var = stacked.var(axis=0)
    axes = {"rotation": ("pitch", "yaw", "roll"), "translation": ("x", "y", "z")}
    out = []
    for name, _ in spec.blocks:
        b = spec.block(name)
        cols = np.arange(b.start, b.stop)
        if name not in axes:
            cols = cols[np.argsort(-var[cols], kind="stable")[:per_block]]
            cols.sort()
        for c in cols:
            if spec.channel_names is not None:
                label = spec.channel_names[c]
            elif name in axes and b.size == 3:
                label = f"{name}.{axes[name][c - b.start]}"
            else:
                label = f"{name}[{c - b.start}]"
            out.append((name, label, int(c)))
    return out


def plot_trajectories(
    out: str | Path,
    motions: dict[str, np.ndarray],
    spec: str | MotionSpec,
    fps: float = 30.0,
    gt: np.ndarray | None = None,
    words=None,
    per_block: int = 3,
    title: str = "",
    force: bool = False,
) -> Path:
    """Per-block trajectories: one row per channel (the most variable of each block), GT in black."""
    spec = get_spec(spec)
    plt = _pyplot()
    series = ({"ground truth": gt} if gt is not None else {}) | dict(motions)
    if not series:
        raise ValueError("plot_trajectories needs at least one motion")
    for name, m in series.items():
        spec.validate(np.asarray(m), name)
    chans = block_channels(spec, list(series.values()), per_block)
    fig, axes = plt.subplots(len(chans), 1, figsize=(11, 1.35 * len(chans) + 0.8), sharex=True, squeeze=False)
    t_end = max(len(m) for m in series.values()) / fps
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (block, label, col) in zip(axes[:, 0], chans, strict=True):
        for j, (name, m) in enumerate(series.items()):
            t = np.arange(len(m)) / fps
            style = {"color": "k", "lw": 1.5} if name == "ground truth" else {"color": colours[j % len(colours)], "lw": 1.1}
            ax.plot(t, np.asarray(m)[:, col], label=name, **style)
        ax.set_ylabel(f"{block}\n{label}", fontsize=7, rotation=0, ha="right", va="center")
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.25)
    _words_axis(axes[0, 0], words, 0.0, t_end)
    axes[0, 0].legend(fontsize=7, ncol=max(1, len(series)), loc="upper right", bbox_to_anchor=(1.0, 1.9 if words else 1.45))
    axes[-1, 0].set_xlabel("time (s)")
    axes[-1, 0].set_xlim(0, t_end)
    fig.suptitle(title or f"{spec.name}: per-block trajectories (the {per_block} most variable channels per block)",
                 fontsize=9)  # fmt: skip
    fig.tight_layout()
    return _save(fig, out, force)


# ---------------------------------------------------------------- REALM internals


@dataclass
class Internals:
    """REALM's gate and fusion attention over one clip (coarse stage, one rollout).

    ``alpha`` (T,): the reactive gate, window ``w``'s K values placed on frames ``w W .. w W + K``
    (as the model's ``aux["alpha"]``). ``attention`` (n_windows, heads, K, W): for each window,
    how much each of the K listener-history queries attends to each of the W speaker frames.
    """

    alpha: np.ndarray
    attention: np.ndarray
    fps: float
    window: int
    tau: int


def realm_internals(listener, audio, first_frame: np.ndarray | None = None) -> Internals:
    """Run a loaded REALM :class:`~realm.generate.Listener` on ``audio`` and record gate and attention."""
    import torch

    model = listener.model.eval()
    feats = listener.features(audio)
    a = torch.from_numpy(np.asarray(feats, np.float32))[None]
    f0, h = listener._start(first_frame, None)
    with torch.inference_mode(), model.record_internals() as rec:
        _, aux = model.rollout(a, frame0=f0, history=h)
    alpha = aux["alpha"][0, :, 0].numpy()
    attn = torch.cat(rec["attention"], dim=0).numpy() if rec["attention"] else np.zeros((0,))
    c = model.config
    return Internals(alpha, attn, listener.fps, c.window, c.tau)


def plot_gate(out: str | Path, alpha: np.ndarray, fps: float = 30.0, words=None, window: int | None = None,
              title: str = "", force: bool = False) -> Path:  # fmt: skip
    """The reactive gate alpha over time (1 = the memory is the fused audio, 0 = the listener's history)."""
    plt = _pyplot()
    alpha = np.asarray(alpha, float).reshape(-1)
    t = np.arange(len(alpha)) / fps
    fig, ax = plt.subplots(figsize=(11, 2.8))
    ax.plot(t, alpha, color="tab:blue", lw=1.3, label="gate alpha")
    if window:
        for w in range(0, len(alpha), window):
            ax.axvline(w / fps, color="0.85", lw=0.6, zorder=0)
    _words_axis(ax, words, 0.0, t[-1] if len(t) else 0.0)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlim(0, max(t[-1] if len(t) else 1.0, 1e-3))
    ax.set_xlabel("time (s)")
    ax.set_ylabel("alpha")
    ax.set_title(title or "REALM reactive gate (weight of the fused audio in the decoder's memory; "
                 "grey lines: window starts)", fontsize=9, pad=28 if words else 6)  # fmt: skip
    ax.grid(alpha=0.25)
    fig.tight_layout()
    return _save(fig, out, force)


def plot_attention(out: str | Path, attention: np.ndarray, tau: int | None = None, window: int | None = None,
                   fps: float = 30.0, title: str = "", force: bool = False) -> Path:  # fmt: skip
    """One window's shifted-ALiBi cross-attention: per head, history query k (rows) x speaker frame j (columns).

    With ``tau``, the dashed line marks j = k - tau, where the shifted ALiBi's bias peaks (a
    reaction tau frames after the audio).
    """
    plt = _pyplot()
    a = np.asarray(attention, float)
    if a.ndim == 4:  # (B, heads, K, W): first item
        a = a[0]
    if a.ndim != 3:
        raise ValueError(f"attention must be (heads, K, W), got shape {a.shape}")
    heads, K, W = a.shape
    fig, axes = plt.subplots(1, heads, figsize=(2.7 * heads + 0.8, 3.1), squeeze=False)
    for hd, ax in enumerate(axes[0]):
        im = ax.imshow(a[hd], origin="upper", aspect="auto", cmap="viridis", vmin=0, vmax=max(a.max(), 1e-6))
        if tau is not None:
            k = np.arange(K)
            ax.plot(k - tau, k, ls="--", color="w", lw=0.9)
            ax.set_xlim(-0.5, W - 0.5)
            ax.set_ylim(K - 0.5, -0.5)
        ax.set_title(f"head {hd}", fontsize=8)
        ax.set_xlabel("speaker frame j", fontsize=7)
        ax.tick_params(labelsize=6)
    axes[0, 0].set_ylabel("history query k", fontsize=7)
    fig.colorbar(im, ax=axes[0, -1], fraction=0.08)
    where = f" (window {window}, from {window * W / fps:.2f} s)" if window is not None else ""
    fig.suptitle(title or f"REALM fusion cross-attention{where}" + (f"; dashed: j = k - tau, tau = {tau}" if tau is not None else ""),
                 fontsize=9)  # fmt: skip
    fig.tight_layout()
    return _save(fig, out, force)
