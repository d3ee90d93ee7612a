"""Motion representation: named coefficient blocks, built-in specs, z-score statistics.

A frame of listener motion is one vector; a :class:`MotionSpec` says which slice of it is
what (``expression``, ``rotation``, ``translation``, ``jaw``, ``crop``) and whether a block
is *expression* (fast, facial) or *pose* (head). Models take their block sizes from the spec
and metrics report per block, so the same code runs on every motion space below.

==========  ====  ======================================================================
spec        dims  layout
==========  ====  ======================================================================
vico70      70    expression 64, rotation 3 (pitch, yaw, roll), translation 3   (REALM)
vico73      73    rotation 3, expression 64, translation 3, crop 3  (ViCo challenge)
flame56     56    expression 50, rotation 3, jaw 3            (Learning2Listen, LM-Listener,
                  DualTalk, UniLS-Talk)
arkit58     58    52 ARKit blendshapes (0..1), rotation 3 (rad), translation 3
imitator160 160   Seamless Interaction's Imitator movement features, blocks named by their
                  fields: expression 128, FAUValue 24, gaze_encodings 2, head_encodings 3,
                  rotation 3 (``movement:alignment_head_rotation``)
==========  ====  ======================================================================

:func:`resample_motion` changes a sequence's frame rate (DualTalk and UniLS-Talk are 25 fps).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from realm.errors import RealmInputError
from realm.io import atomic_path

#: Apple's 52 ARKit blendshape names, in ``ARFaceAnchor.BlendShapeLocation`` order.
ARKIT_BLENDSHAPES: tuple[str, ...] = (
    "eyeBlinkLeft", "eyeLookDownLeft", "eyeLookInLeft", "eyeLookOutLeft", "eyeLookUpLeft",
    "eyeSquintLeft", "eyeWideLeft",
    "eyeBlinkRight", "eyeLookDownRight", "eyeLookInRight", "eyeLookOutRight", "eyeLookUpRight",
    "eyeSquintRight", "eyeWideRight",
    "jawForward", "jawLeft", "jawRight", "jawOpen",
    "mouthClose", "mouthFunnel", "mouthPucker", "mouthLeft", "mouthRight",
    "mouthSmileLeft", "mouthSmileRight", "mouthFrownLeft", "mouthFrownRight",
    "mouthDimpleLeft", "mouthDimpleRight", "mouthStretchLeft", "mouthStretchRight",
    "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper",
    "mouthPressLeft", "mouthPressRight", "mouthLowerDownLeft", "mouthLowerDownRight",
    "mouthUpperUpLeft", "mouthUpperUpRight",
    "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight",
    "noseSneerLeft", "noseSneerRight",
    "tongueOut",
)  # fmt: skip

POSE_BLOCKS = frozenset({"rotation", "translation", "crop"})


@dataclass(frozen=True)
class Block:
    name: str
    start: int
    stop: int
    kind: str  # "expression" or "pose"

    @property
    def size(self) -> int:
        return self.stop - self.start

    @property
    def slice(self) -> slice:
        return slice(self.start, self.stop)


@dataclass(frozen=True)
class MotionSpec:
    """Layout of a motion frame vector.

    ``blocks`` is an ordered tuple of ``(name, size)``; ``channel_names`` optionally names
    every dimension (arkit58 does). ``rotation`` is (pitch, yaw, roll) wherever it occurs.
    """

    name: str
    blocks: tuple[tuple[str, int], ...]
    fps: float = 30.0
    channel_names: tuple[str, ...] | None = None
    description: str = ""
    ranges: tuple[tuple[str, float, float], ...] = ()  # (block or channel, lo, hi): values defined only inside
    _index: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        start = 0
        for name, size in self.blocks:
            kind = "pose" if name in POSE_BLOCKS else "expression"
            self._index[name] = Block(name, start, start + size, kind)
            start += size
        if self.channel_names is not None and len(self.channel_names) != start:
            raise ValueError(f"spec {self.name}: {len(self.channel_names)} channel names for {start} dims")

    @property
    def dim(self) -> int:
        return sum(size for _, size in self.blocks)

    @property
    def block_names(self) -> list[str]:
        return [name for name, _ in self.blocks]

    def block(self, name: str) -> Block:
        if name not in self._index:
            raise KeyError(f"spec {self.name} has no block {name!r}; blocks: {self.block_names}")
        return self._index[name]

    def has(self, name: str) -> bool:
        return name in self._index

    @property
    def names(self) -> list[str]:
        """A name per dimension: ``channel_names`` when the spec has them, else ``block.axis`` for
        rotation/translation and ``block.k`` for the rest (e.g. ``expression.0``)."""
        if self.channel_names is not None:
            return list(self.channel_names)
        axes = {"rotation": ("pitch", "yaw", "roll"), "translation": ("x", "y", "z")}
        out = []
        for name, size in self.blocks:
            ax = axes.get(name, ())
            out += [f"{name}.{ax[k]}" if len(ax) == size else f"{name}.{k}" for k in range(size)]
        return out

    def take(self, x: np.ndarray, name: str) -> np.ndarray:
        """The columns of block ``name`` from ``x`` (..., dim)."""
        return x[..., self.block(name).slice]

    def indices(self, kind: str) -> np.ndarray:
        """Column indices of every block of ``kind`` ("expression" or "pose")."""
        idx = [np.arange(b.start, b.stop) for b in self._index.values() if b.kind == kind]
        return np.concatenate(idx) if idx else np.zeros(0, dtype=int)

    def channel(self, name: str) -> int:
        """Column index of a named channel (arkit58: a blendshape name; any spec: ``rotation.pitch``)."""
        if self.channel_names is not None and name in self.channel_names:
            return self.channel_names.index(name)
        block, _, axis = name.partition(".")
        if block in self._index and axis:
            axes = {"rotation": ("pitch", "yaw", "roll"), "translation": ("x", "y", "z")}.get(block, ())
            if axis in axes:
                return self._index[block].start + axes.index(axis)
        raise KeyError(f"spec {self.name} has no channel {name!r}")

    def range_columns(self) -> list[tuple[slice | int, float, float]]:
        """``ranges`` as (columns, lo, hi): a block's slice or a channel's index."""
        return [(self.block(name).slice if self.has(name) else self.channel(name), lo, hi) for name, lo, hi in self.ranges]

    def clamp(self, x):
        """``x`` (..., dim) with every block or channel that has a defined range clipped into it (numpy)."""
        if not self.ranges:
            return x
        x = np.array(x, copy=True)
        for cols, lo, hi in self.range_columns():
            x[..., cols] = np.clip(x[..., cols], lo, hi)
        return x

    def validate(self, x: np.ndarray, source: str | Path = "<array>") -> np.ndarray:
        """Check a (T, dim) motion array; raise a clear :class:`RealmInputError` otherwise."""
        x = np.asarray(x)
        if x.ndim != 2:
            raise RealmInputError(source, f"motion must be 2-D (frames, {self.dim}), got shape {x.shape}")
        if x.shape[1] != self.dim:
            raise RealmInputError(
                source, f"wrong coefficient width {x.shape[1]} for spec {self.name} (expects {self.dim})"
            )
        if x.shape[0] == 0:
            raise RealmInputError(source, "motion has no frames")
        if not np.all(np.isfinite(x)):
            bad = np.argwhere(~np.isfinite(x))[0]
            raise RealmInputError(source, f"NaN/inf in coefficients (first at frame {bad[0]}, dim {bad[1]})")
        return x.astype(np.float32, copy=False)


#: Seamless Interaction's Imitator features in ``imitator160``: (block, ``movement:<field>`` of the
#: release's .npz, width). The encodings are the Imitator model's own learned codes (the release
#: documents no units): neither FLAME nor ARKit; a map to arkit58 is fitted on paired frames
#: (``realm embody fit-map``). ``alignment_head_rotation`` is the one head rotation of the release and
#: fills the ``rotation`` (pose) block; its axis order and units are not documented.
IMITATOR_FIELDS: tuple[tuple[str, str, int], ...] = (
    ("expression", "expression", 128),
    ("FAUValue", "FAUValue", 24),
    ("gaze_encodings", "gaze_encodings", 2),
    ("head_encodings", "head_encodings", 3),
    ("rotation", "alignment_head_rotation", 3),
)

#: arkit58's head rotation ranges (rad): +-30 deg pitch and yaw, +-20 deg roll.
HEAD_PITCH_YAW = float(np.deg2rad(30.0))
HEAD_ROLL = float(np.deg2rad(20.0))

SPECS: dict[str, MotionSpec] = {
    "vico70": MotionSpec(
        "vico70", (("expression", 64), ("rotation", 3), ("translation", 3)),
        description="Deep3DFaceRecon BFM: exp 64, angles 3 (pitch, yaw, roll), trans 3 (REALM on ViCo)",
    ),
    "vico73": MotionSpec(
        "vico73", (("rotation", 3), ("expression", 64), ("translation", 3), ("crop", 3)),
        description="ViCo challenge dynamic vector: angle 3 | exp 64 | trans 3 | crop 3",
    ),
    "flame56": MotionSpec(
        "flame56", (("expression", 50), ("rotation", 3), ("jaw", 3)),
        description="FLAME/DECA: exp 50, global rotation 3, jaw 3 (Learning2Listen, LM-Listener)",
    ),
    "arkit58": MotionSpec(
        "arkit58", (("expression", 52), ("rotation", 3), ("translation", 3)),
        channel_names=ARKIT_BLENDSHAPES
        + ("headPitch", "headYaw", "headRoll", "headX", "headY", "headZ"),
        description="52 ARKit blendshapes (0..1), head rotation pitch/yaw/roll (rad), translation (m)",
        # a seated listener's head: pitch and yaw within +-30 deg, roll within +-20 deg (robot
        # profiles then clip to their own joint limits); generation clamps to these as a last
        # line behind the model's own restoring force
        ranges=(("expression", 0.0, 1.0), ("headPitch", -HEAD_PITCH_YAW, HEAD_PITCH_YAW),
                ("headYaw", -HEAD_PITCH_YAW, HEAD_PITCH_YAW), ("headRoll", -HEAD_ROLL, HEAD_ROLL)),
    ),
    "imitator160": MotionSpec(
        "imitator160", tuple((block, size) for block, _, size in IMITATOR_FIELDS),
        channel_names=tuple(f"{field}.{k}" for _, field, size in IMITATOR_FIELDS for k in range(size)),
        description="Seamless Interaction Imitator movement features: expression 128 | FAUValue 24 | "
                    "gaze_encodings 2 | head_encodings 3 | alignment_head_rotation 3 (neither FLAME nor ARKit)",
    ),
}  # fmt: skip


def get_spec(name: str | MotionSpec) -> MotionSpec:
    if isinstance(name, MotionSpec):
        return name
    if name not in SPECS:
        raise KeyError(f"unknown motion spec {name!r}; known: {sorted(SPECS)}")
    return SPECS[name]


# ---------------------------------------------------------------- conversions


#: Fast listener events a model can sample as discrete events, and the channels that show them.
#: The detectors that find them in motion are in :mod:`realm.metrics` (one definition each).
FAST_EVENTS: dict[str, tuple[str, ...]] = {"blink": ("eyeBlinkLeft", "eyeBlinkRight")}


def events_in_spec(spec: MotionSpec, events) -> list[str]:
    """The events of ``events`` whose channels ``spec`` has (arkit58: blink; vico70: none)."""
    out = []
    for name in events:
        if name not in FAST_EVENTS:
            raise ValueError(f"unknown fast event {name!r}; known: {sorted(FAST_EVENTS)}")
        try:
            [spec.channel(ch) for ch in FAST_EVENTS[name]]
        except KeyError:
            continue
        out.append(name)
    return out


def vico73_to_vico70(x: np.ndarray) -> np.ndarray:
    """(…, 73) angle|exp|trans|crop -> (…, 70) exp|angle|trans. The crop block is dropped."""
    s73 = SPECS["vico73"]
    return np.concatenate(
        [s73.take(x, "expression"), s73.take(x, "rotation"), s73.take(x, "translation")], axis=-1
    )


def vico70_to_vico73(x: np.ndarray, crop: np.ndarray | None = None) -> np.ndarray:
    """(…, 70) -> (…, 73). ``crop`` (…, 3) fills the crop block (zeros when not given)."""
    s70 = SPECS["vico70"]
    if crop is None:
        crop = np.zeros(x.shape[:-1] + (3,), dtype=x.dtype)
    return np.concatenate(
        [s70.take(x, "rotation"), s70.take(x, "expression"), s70.take(x, "translation"), crop], axis=-1
    )


def resample_motion(x: np.ndarray, fps: float, rate: float) -> np.ndarray:
    """(T, D) frames at ``fps`` -> (T', D) at ``rate`` covering the same time, by the frame rule.

    Frame ``t`` starts at ``t / fps``; the output has ``T' = floor(T * rate / fps)`` frames (25 fps ->
    30 fps: 750 frames -> 900), frame ``u`` interpolated linearly at ``u / rate`` between its two
    neighbours in time, the last input frame held past the end. Linear interpolation keeps values in
    their ranges (blendshapes in 0..1); rotation vectors and Euler angles are interpolated per
    component, which is exact enough between frames 33-40 ms apart.
    """
    x = np.asarray(x)
    if fps <= 0 or rate <= 0:
        raise ValueError(f"frame rates must be > 0 (fps {fps}, rate {rate})")
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"resample_motion expects (T, D) frames, got shape {x.shape}")
    if fps == rate:
        return x
    n = int(np.floor(len(x) * rate / fps + 1e-9))
    pos = np.arange(n) * (fps / rate)  # (T',) position of each output frame in input frames
    i0 = np.minimum(np.floor(pos).astype(np.int64), len(x) - 1)
    i1 = np.minimum(i0 + 1, len(x) - 1)
    w = (pos - i0)[:, None]
    return ((1.0 - w) * x[i0] + w * x[i1]).astype(x.dtype if x.dtype.kind == "f" else np.float32)


def convert(x: np.ndarray, src: str, dst: str) -> np.ndarray:
    """Convert between specs where an exact conversion exists (identity, vico73 <-> vico70)."""
    if src == dst:
        return x
    table = {("vico73", "vico70"): vico73_to_vico70, ("vico70", "vico73"): vico70_to_vico73}
    if (src, dst) not in table:
        raise ValueError(f"no exact conversion {src} -> {dst}; use a fitted linear map (realm embody fit-map)")
    return table[(src, dst)](x)


# ---------------------------------------------------------------- normalisation


@dataclass
class NormStats:
    """Per-dimension z-score statistics: ``apply`` is (x - mean) / std, ``invert`` undoes it."""

    mean: np.ndarray
    std: np.ndarray
    spec: str = ""
    lo: np.ndarray | None = None  # per-channel RANGE_QUANTILES of the data (motion stats; None if unknown)
    hi: np.ndarray | None = None

    #: std floor, so constant channels (a blendshape the data never moves) do not explode.
    EPS = 1e-4
    #: For motion specs, each channel's std is also floored at this fraction of the largest std
    #: in its block. Plain z-scores blow a channel that only carries sensor noise (std 0.004)
    #: up to unit variance, and a loss averaged over channels then spends itself on that
    #: unpredictable noise instead of on the few channels that react (found on the synthetic
    #: benchmark: 45 of 52 listener blendshapes are noise-only).
    BLOCK_FLOOR = 0.1
    #: The quantiles ``lo`` and ``hi`` hold: the range the data occupies, per channel (the
    #: long-input checks test generated motion against it, widened by a margin).
    RANGE_QUANTILES = (0.005, 0.995)
    #: Frames kept for the quantiles (every k-th frame beyond this; the moments use all frames).
    RANGE_FRAMES = 1_000_000

    @classmethod
    def fit(cls, arrays, spec: str = "", block_floor: float | None = None) -> NormStats:
        """Fit on a (T, D) array or an iterable of them (frames pooled, each clip weighted by length).

        When ``spec`` names a motion spec, stds are floored per block at ``block_floor`` (default
        :attr:`BLOCK_FLOOR`; 0 gives plain per-channel z-scores) times the block's largest std, and
        ``lo``/``hi`` hold each channel's :attr:`RANGE_QUANTILES`.
        """
        if isinstance(arrays, np.ndarray):
            arrays = [arrays]
        n, s, ss = 0, 0.0, 0.0
        keep = []
        for a in arrays:
            a = np.asarray(a, dtype=np.float64).reshape(-1, np.shape(a)[-1])
            n += a.shape[0]
            s = s + a.sum(0)
            ss = ss + (a**2).sum(0)
            if spec in SPECS:  # every k-th frame is enough for the quantiles
                keep.append(a[:: max(1, n // cls.RANGE_FRAMES)].astype(np.float32))
        if n == 0:
            raise ValueError("cannot fit normalisation statistics on no frames")
        mean = s / n
        var = np.maximum(ss / n - mean**2, 0.0)
        std = np.maximum(np.sqrt(var), cls.EPS)
        floor = cls.BLOCK_FLOOR if block_floor is None else block_floor
        if spec in SPECS and floor > 0 and SPECS[spec].dim == len(std):
            for name, _ in SPECS[spec].blocks:
                b = SPECS[spec].block(name).slice
                std[b] = np.maximum(std[b], floor * std[b].max())
        lo = hi = None
        if keep:
            frames = np.concatenate(keep)
            frames = frames[:: max(1, len(frames) // cls.RANGE_FRAMES)]
            lo, hi = (q.astype(np.float32) for q in np.quantile(frames, cls.RANGE_QUANTILES, axis=0))
        return cls(mean.astype(np.float32), std.astype(np.float32), spec, lo, hi)

    def apply(self, x):
        return (x - _like(self.mean, x)) / _like(self.std, x)

    def invert(self, z):
        return z * _like(self.std, z) + _like(self.mean, z)

    def save(self, path: str | Path) -> None:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                extra = {} if self.lo is None else {"lo": self.lo, "hi": self.hi}
                np.savez(f, mean=self.mean, std=self.std, spec=np.array(self.spec), **extra)

    @classmethod
    def load(cls, path: str | Path) -> NormStats:
        path = Path(path)
        if not path.exists():
            raise RealmInputError(path, "normalisation stats file not found")
        try:
            with np.load(path) as d:
                mean, std = d["mean"].astype(np.float32), d["std"].astype(np.float32)
                spec = str(d["spec"]) if "spec" in d else ""
                lo, hi = (d[k].astype(np.float32) if k in d else None for k in ("lo", "hi"))
        except Exception as e:  # not an npz, missing keys, pickled entries (never unpickled)
            raise RealmInputError(path, f"unreadable normalisation stats ({type(e).__name__}: {e})") from None
        if mean.shape != std.shape or not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
            raise RealmInputError(path, "normalisation stats must be finite, same-shaped, with std > 0")
        if (lo is None) != (hi is None) or (lo is not None and not (lo.shape == hi.shape == mean.shape and (lo <= hi).all())):
            raise RealmInputError(path, "the data range (lo, hi) must come as a pair, one value per channel, lo <= hi")
        return cls(mean, std, spec, lo, hi)

    def to_dict(self) -> dict:
        out = {"mean": self.mean.tolist(), "std": self.std.tolist(), "spec": self.spec}
        return out if self.lo is None else {**out, "lo": self.lo.tolist(), "hi": self.hi.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> NormStats:
        rng = [np.asarray(d[k], np.float32) if k in d else None for k in ("lo", "hi")]
        return cls(np.asarray(d["mean"], np.float32), np.asarray(d["std"], np.float32), d.get("spec", ""), *rng)

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        return f"NormStats(spec={self.spec!r}, dim={len(self.mean)})"


def _like(a: np.ndarray, x):
    """Broadcast a numpy stats vector to ``x``'s array type (numpy or torch) and device."""
    if isinstance(x, np.ndarray):
        return a.astype(x.dtype, copy=False)
    import torch

    return torch.as_tensor(a, dtype=x.dtype, device=x.device)


def spec_to_json(spec: MotionSpec) -> str:
    return json.dumps({"name": spec.name, "blocks": [list(b) for b in spec.blocks], "fps": spec.fps})


# ---------------------------------------------------------------- motion files


def _read_motion_arrays(path: str | Path) -> tuple[np.ndarray, str | None, float | None]:
    """One read of a motion file: the raw float32 array (key ``listener`` of a .npz, or its first array;
    or a .npy) and the file's ``spec`` and ``fps`` entries (None when absent)."""
    path = Path(path)
    if not path.exists():
        raise RealmInputError(path, "motion file not found")
    spec = fps = None
    try:
        if path.suffix == ".npy":
            x = np.load(path)
        else:
            with np.load(path) as d:
                x = d["listener" if "listener" in d else d.files[0]]
                spec = str(d["spec"]) if "spec" in d.files else None
                fps = float(d["fps"]) if "fps" in d.files else None
    except Exception as e:
        raise RealmInputError(path, f"unreadable motion file ({type(e).__name__})") from None
    return np.asarray(x, np.float32), spec, fps


@dataclass
class MotionFile:
    """A motion file with its spec and frame rate: ``motion`` (N, T, D), one row per realisation."""

    motion: np.ndarray
    spec: MotionSpec
    fps: float
    path: Path

    def realisation(self, sample: int | None) -> np.ndarray:
        """Realisation ``sample`` (T, D). A robot or an avatar plays one trajectory: None is
        allowed only when the file holds one, so a sample is never picked silently."""
        n = self.motion.shape[0]
        if sample is None and n > 1:
            raise RealmInputError(self.path, f"the file holds {n} samples: choose one with --sample 0..{n - 1}")
        if not 0 <= (sample or 0) < n:
            raise RealmInputError(self.path, f"sample {sample} requested but the file holds {n}")
        return self.motion[sample or 0]


def load_motion_file(path: str | Path, spec: str | None = None) -> MotionFile:
    """Read a motion .npz/.npy once. The spec is ``spec``, else the file's ``spec`` entry, else the one
    built-in spec of the frames' width; every realisation is validated against it; ``fps`` is the file's
    entry when it is a positive number, else the spec's."""
    path = Path(path)
    x, file_spec, fps = _read_motion_arrays(path)
    if x.ndim == 1:
        x = x[None]
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise RealmInputError(path, f"motion must be (T, D) or (N, T, D), got shape {x.shape}")
    chosen = spec or file_spec
    if chosen and chosen not in SPECS:
        raise RealmInputError(path, f"unknown motion spec {chosen!r}; known: {sorted(SPECS)}")
    if not chosen:
        widths = [name for name, sp in SPECS.items() if sp.dim == x.shape[-1]]
        if len(widths) != 1:
            known = ", ".join(f"{n} ({sp.dim})" for n, sp in SPECS.items())
            raise RealmInputError(path, f"cannot tell the motion spec of {x.shape[-1]}-wide frames (known: {known}); pass a spec")
        chosen = widths[0]
    sp = get_spec(chosen)
    for k in range(x.shape[0]):
        sp.validate(x[k], path)
    ok = fps is not None and np.isfinite(fps) and fps > 0
    return MotionFile(x, sp, float(fps) if ok else float(sp.fps), path)


def read_motion(path: str | Path, spec: str | None = None) -> np.ndarray:
    """A (T, D) motion array from a .npz (key ``listener``, first realisation) or .npy file."""
    x, _, _ = _read_motion_arrays(path)
    while x.ndim > 2:
        x = x[0]
    if x.ndim == 1:
        x = x[None]
    if spec is not None:
        get_spec(spec).validate(x, path)
    return x
