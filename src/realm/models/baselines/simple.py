"""Non-parametric baselines: static mean, random training clip, mirror, nearest neighbour by audio.

None of them learns by gradient descent; ``fit_data`` remembers what they need (as buffers, so
it is saved in ``model.safetensors`` like weights) and ``sample`` works in normalised space.

==================  ===========================================================================
static_mean         the mean training frame, held for the whole clip (the floor every model must beat)
random_clip         a random stretch of a random training clip (a bank of up to 64 clips x 600
                    frames); longer outputs chain clips with a linear crossfade. Stochastic.
mirror              the speaker's own motion, moved to the listener's statistics:
                    ``z_listener(t) = gain * z_speaker(t - delay)`` per dimension
nearest_neighbour   per window of 32 frames (hop 24), the training motion window whose mean
                    audio feature vector is nearest (Euclidean, normalised features);
                    windows are crossfaded over their 8-frame overlap
==================  ===========================================================================
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from realm.errors import RealmInputError
from realm.models.baselines.base import Baseline, BaselineConfig, crossfade_into, seeded
from realm.motion import convert

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- static mean


class StaticMean(Baseline):
    """The mean training frame (all listener realisations of all train clips), held."""

    name = "static_mean"

    def __init__(self, config: BaselineConfig):
        super().__init__(config)
        self.register_buffer("mean", torch.zeros(self.spec.dim))  # normalised mean frame (D,)

    def fit_data(self, data) -> None:
        frames = [c.samples().reshape(-1, self.spec.dim) for c in data.train.clips]
        raw = np.concatenate(frames).astype(np.float64).mean(0)
        self.mean.copy_(torch.from_numpy(data.stats.apply(raw.astype(np.float32))))

    def sample(self, audio, first, speaker=None, words=None, samples=1, seed=0):
        T = audio.shape[1]
        return self.mean.expand(samples, T, -1).clone()  # (S, T, D)


# ---------------------------------------------------------------- random clip


@dataclass
class RandomClipConfig(BaselineConfig):
    max_clips: int = 64  # bank size cap
    max_frames: int = 600  # frames kept per bank clip (20 s at 30 fps)
    crossfade: int = 8  # frames blended where two clips are chained
    bank_clips: int = 0  # actual bank shape, set by fit
    bank_frames: int = 0


class RandomClip(Baseline):
    """A random stretch of a random training clip (chained with crossfades when too short)."""

    name = "random_clip"
    Config = RandomClipConfig
    stochastic = True

    def __init__(self, config: RandomClipConfig):
        super().__init__(config)
        n, f = max(1, config.bank_clips), max(1, config.bank_frames)
        self.register_buffer("bank", torch.zeros(n, f, self.spec.dim))  # (N, F, D) normalised motion
        self.register_buffer("lengths", torch.ones(n, dtype=torch.long))  # (N,) valid frames per clip

    def fit_data(self, data) -> None:
        c = self.config
        clips = data.train.clips
        rng = np.random.default_rng(0)
        pick = np.sort(rng.choice(len(clips), size=min(c.max_clips, len(clips)), replace=False))
        motions = [data.stats.apply(clips[i].listener[: c.max_frames]) for i in pick]
        motions = [m for m in motions if len(m) > 2 * c.crossfade] or motions
        c.bank_clips, c.bank_frames = len(motions), max(len(m) for m in motions)
        self.bank = torch.zeros(c.bank_clips, c.bank_frames, self.spec.dim)
        self.lengths = torch.tensor([len(m) for m in motions], dtype=torch.long)
        for i, m in enumerate(motions):
            self.bank[i, : len(m)] = torch.from_numpy(np.asarray(m, np.float32))

    def _clip(self, g: torch.Generator, need: int) -> torch.Tensor:
        """A random stretch (n, D) of a random bank clip, n = min(need, clip length)."""
        i = int(torch.randint(len(self.lengths), (1,), generator=g))
        n = int(self.lengths[i])
        take = min(need, n)
        s = int(torch.randint(n - take + 1, (1,), generator=g))
        return self.bank[i, s : s + take]

    def sample(self, audio, first, speaker=None, words=None, samples=1, seed=0):
        T, xf = audio.shape[1], self.config.crossfade
        out = torch.zeros(samples, T, self.spec.dim)
        for k in range(samples):
            g = seeded(seed, k)
            filled = crossfade_into(out[k : k + 1], 0, 0, self._clip(g, T)[None])
            while filled < T:  # chain another clip, overlapping the last `xf` frames
                seg = self._clip(g, T - filled + xf)
                start = filled - min(xf, len(seg) - 1)
                filled = crossfade_into(out[k : k + 1], filled, start, seg[None])
        return out


# ---------------------------------------------------------------- mirror


@dataclass
class MirrorConfig(BaselineConfig):
    gain: float = 1.0  # z_listener = gain * z_speaker
    delay: int = 0  # frames the copy lags the speaker (0: a simultaneous mirror)


class Mirror(Baseline):
    """The speaker's motion, per dimension moved to the listener's statistics (and scaled)."""

    name = "mirror"
    Config = MirrorConfig
    uses_speaker = True

    def speaker_width(self) -> int:
        return self.spec.dim  # statistics of the speaker converted to the listener's spec

    def speaker_input(self, speaker: np.ndarray) -> np.ndarray:
        src = self.config.speaker_spec or self.spec.name
        try:
            return np.asarray(convert(np.asarray(speaker, np.float32), src, self.spec.name), np.float32)
        except ValueError as e:
            raise RealmInputError("speaker", f"the mirror cannot map {src} speaker motion to {self.spec.name} ({e})") from None

    def fit_data(self, data) -> None:
        if not self.has_speaker:
            raise RealmInputError(data.train.clips[0].source or "data", "the mirror baseline needs speaker motion; this dataset has none")

    def sample(self, audio, first, speaker=None, words=None, samples=1, seed=0):
        z = self.config.gain * self.speaker_z(speaker, audio)  # (1, T, D)
        d = self.config.delay
        if d > 0:
            z = torch.cat([z[:, :1].expand(-1, d, -1), z[:, :-d]], dim=1)[:, : audio.shape[1]]
        return z.expand(samples, -1, -1).clone()


# ---------------------------------------------------------------- nearest neighbour


@dataclass
class NearestNeighbourConfig(BaselineConfig):
    window: int = 32  # frames per retrieved window
    hop: int = 24  # query windows start every `hop` frames (window - hop frames are crossfaded)
    stride: int = 16  # bank windows start every `stride` frames of each training clip
    max_windows: int = 2048  # bank size cap (a seeded random subset beyond it)
    bank_windows: int = 0  # actual bank size, set by fit


class NearestNeighbour(Baseline):
    """Per window, the training motion window whose mean audio features are nearest."""

    name = "nearest_neighbour"
    Config = NearestNeighbourConfig

    def __init__(self, config: NearestNeighbourConfig):
        super().__init__(config)
        n = max(1, config.bank_windows)
        self.register_buffer("keys", torch.zeros(n, config.audio_dim))  # (N, A) mean normalised features
        self.register_buffer("values", torch.zeros(n, config.window, self.spec.dim))  # (N, W, D) normalised motion
        self.register_buffer("index", torch.zeros(n, 2, dtype=torch.long))  # (N, 2): train clip, start frame

    def fit_data(self, data) -> None:
        c, W = self.config, self.config.window
        keys, values, index = [], [], []
        for ci, (clip, feats) in enumerate(zip(data.train.clips, data.train.features, strict=True)):
            f = data.feature_stats.apply(feats)
            m = data.stats.apply(clip.listener)
            for s in range(0, clip.n_frames - W + 1, c.stride):
                keys.append(f[s : s + W].mean(0))
                values.append(m[s : s + W])
                index.append((ci, s))
        if not keys:
            raise RealmInputError(data.train.clips[0].source or "data", f"no training clip has {W} frames")
        if len(keys) > c.max_windows:
            keep = np.sort(np.random.default_rng(0).choice(len(keys), c.max_windows, replace=False))
            keys, values, index = [keys[i] for i in keep], [values[i] for i in keep], [index[i] for i in keep]
        c.bank_windows = len(keys)
        self.keys = torch.from_numpy(np.stack(keys).astype(np.float32))
        self.values = torch.from_numpy(np.stack(values).astype(np.float32))
        self.index = torch.tensor(index, dtype=torch.long)

    def nearest(self, audio: torch.Tensor) -> int:
        """Bank index of the window nearest to ``audio`` (n, A) normalised features."""
        return int(torch.cdist(audio.mean(0, keepdim=True), self.keys).argmin())

    def sample(self, audio, first, speaker=None, words=None, samples=1, seed=0):
        T, W, hop = audio.shape[1], self.config.window, self.config.hop
        out = torch.zeros(1, T, self.spec.dim)
        filled = 0
        for s in range(0, max(1, T - W + hop), hop):  # windows until the end is covered
            seg = audio[0, s : s + W]
            if len(seg) == 0:
                break
            match = self.values[self.nearest(seg), : len(seg)]
            filled = crossfade_into(out, filled, s, match[None])
        return out.expand(samples, -1, -1).clone()
