"""Training windows shared by every model: fixed-length slices of clips with history.

``WindowDataset(clips, features, stats, length=128, stride=4, history=16)`` yields, for a
window starting at frame ``s`` of a clip of T frames:

=============  ===============  =====================================================
key            shape            what
=============  ===============  =====================================================
audio          (L, F)           speaker features of frames s .. s+L-1 (normalised if
                                ``feature_stats`` is given), zero-padded past the end
motion         (L, D)           listener motion, z-scored with ``stats``
history        (H, D)           listener frames s-H .. s-1 (frame 0 repeated before
                                the clip starts)
speaker        (L, Ds)          speaker motion, when every clip has it
mask           (L,)             True on real frames, False on padding
clip, start    ()               clip index and start frame (for evaluation)
=============  ===============  =====================================================

Windows start at 0, stride, 2 stride, ... while they fit; a clip shorter than L gives one
padded window. With several listener realisations per clip, ``sample="random"`` draws one
per item (a new draw each epoch), ``"first"`` always takes the first, ``"all"`` enumerates them.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch.utils.data import Dataset

from realm.audio import extract
from realm.data.clip import LENGTH_TOLERANCE_FRAMES, Clip
from realm.errors import RealmInputError
from realm.motion import NormStats

log = logging.getLogger(__name__)


def clip_features(clips: list[Clip], extractor: str = "logmel", cache: bool = True, progress=None) -> list[np.ndarray]:
    """Per-clip speaker features (T, F), frame-aligned with each clip's listener motion.

    Features shipped with the data (``clip.features[extractor]``) are used as they are;
    otherwise they are extracted from ``clip.audio_path`` (through the cache). A length
    mismatch beyond ``LENGTH_TOLERANCE_FRAMES`` is an error; within it, the features are
    trimmed or edge-padded to the motion length.
    """
    out = []
    for i, c in enumerate(clips):
        if extractor in c.features:
            f = c.features[extractor]
        elif c.audio_path is not None:
            f = extract(c.audio_path, extractor, cache=cache)
        else:
            raise RealmInputError(c.source or c.clip_id, f"clip {c.clip_id} has no audio and no {extractor!r} features")
        if abs(len(f) - c.n_frames) > LENGTH_TOLERANCE_FRAMES:
            raise RealmInputError(
                c.audio_path or c.source,
                f"audio gives {len(f)} frames but the motion has {c.n_frames} "
                f"(tolerance {LENGTH_TOLERANCE_FRAMES} frames)",
            )
        if len(f) < c.n_frames:
            f = np.concatenate([f, np.repeat(f[-1:], c.n_frames - len(f), axis=0)])
        out.append(np.asarray(f[: c.n_frames], dtype=np.float32))
        if progress:
            progress(i + 1, len(clips))
    return out


class WindowDataset(Dataset):
    def __init__(
        self,
        clips: list[Clip],
        features: list[np.ndarray],
        stats: NormStats,
        length: int = 128,
        stride: int = 4,
        history: int = 16,
        feature_stats: NormStats | None = None,
        sample: str = "random",
        seed: int = 0,
    ):
        if len(clips) != len(features):
            raise ValueError("one feature array per clip")
        if not clips:
            raise ValueError("no clips to make windows from")
        self.clips, self.features, self.stats = clips, features, stats
        self.length, self.stride, self.history = length, stride, history
        self.feature_stats, self.sample = feature_stats, sample
        self.rng = np.random.default_rng(seed)
        self.with_speaker = all(c.speaker is not None for c in clips)
        self.index: list[tuple[int, int, int]] = []  # (clip, start, realisation or -1)
        for ci, c in enumerate(clips):
            starts = range(0, max(1, c.n_frames - length + 1), stride)
            ks = range(c.samples().shape[0]) if sample == "all" else [-1]
            self.index += [(ci, s, k) for s in starts for k in ks]

    def __len__(self) -> int:
        return len(self.index)

    @property
    def n_clips(self) -> int:
        return len(self.clips)

    @property
    def frames_total(self) -> int:
        """Training frames of every realisation of every clip."""
        return sum(c.n_frames * c.samples().shape[0] for c in self.clips)

    def clip_arrays(self, ci: int) -> tuple[np.ndarray, np.ndarray]:
        """Clip ``ci``'s features (T, F) and listener realisations (S, T, D) (raw, not normalised)."""
        return self.features[ci], self.clips[ci].samples()

    def __getitem__(self, i: int) -> dict:
        ci, s, k = self.index[i]
        c, L, H = self.clips[ci], self.length, self.history
        samples = c.samples()
        if k < 0:
            k = int(self.rng.integers(samples.shape[0])) if self.sample == "random" else 0
        motion = samples[k]
        T = c.n_frames
        e = min(s + L, T)
        hist_idx = np.clip(np.arange(s - H, s), 0, T - 1)  # frame 0 repeated before the clip starts
        speaker = c.speaker[s:e] if self.with_speaker else None
        return window_item(self, motion[s:e], motion[hist_idx], self.features[ci][s:e], speaker, ci, s)


def window_item(ds, motion: np.ndarray, history: np.ndarray, feats: np.ndarray, speaker: np.ndarray | None,
                ci: int, s: int) -> dict:  # fmt: skip
    """One training item from a window's raw rows (n <= L of them; the rest is padding): motion (n, D),
    history (H, D), features (n, F), speaker motion (n, Ds) or None; ``ds`` gives ``length``,
    ``stats`` and ``feature_stats``. Motion holds its last frame on the padding (masked out of losses)."""
    L, n = ds.length, len(motion)
    mot = np.zeros((L, motion.shape[1]), np.float32)
    mot[:n] = ds.stats.apply(motion)
    mot[n:] = mot[n - 1]
    hist = ds.stats.apply(history).astype(np.float32)
    if ds.feature_stats is not None:
        feats = ds.feature_stats.apply(feats)
    aud = np.zeros((L, feats.shape[1]), np.float32)
    aud[:n] = feats
    mask = np.zeros(L, bool)
    mask[:n] = True
    item = {"audio": torch.from_numpy(aud), "motion": torch.from_numpy(mot), "history": torch.from_numpy(hist),
            "mask": torch.from_numpy(mask), "clip": ci, "start": s}  # fmt: skip
    if speaker is not None:
        spk = np.zeros((L, speaker.shape[1]), np.float32)
        spk[:n] = speaker
        item["speaker"] = torch.from_numpy(spk)
    return item
