"""Retargeting: listener motion -> robot controls.

ARKit (``arkit58``) frames map onto a profile's controls by the pose-per-blendshape method
robot makers use (DESIGN section 11)::

    controls = neutral + gain * (blendshapes @ R + degrees(pitch, yaw, roll) @ P)

``R`` (52 x n) is the profile's ``retarget`` table (what a full activation of each blendshape
adds to each control), ``P`` (3 x n) its ``pose`` table (how head rotation is shared between
head and neck joints, e.g. pitch 75/25). Head translation has no robot joint and is dropped.
The result is not clamped: the safety layer (:mod:`realm.embodiment.safety`) does that.

Other motion spaces (``vico70``, ``flame56``, ...) first go through a :class:`LinearMap` to
``arkit58``, fitted by ridge-regularised least squares on paired frames (:func:`fit_linear_map`)
or supplied by the user as a ``.npz`` file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from realm.embodiment.profile import RobotProfile, load_profile
from realm.errors import RealmInputError
from realm.io import atomic_path
from realm.motion import SPECS, get_spec

ARKIT = "arkit58"


def retarget_arkit(motion: np.ndarray, profile: RobotProfile | str) -> np.ndarray:
    """(T, 58) ``arkit58`` motion -> (T, n_controls) controls in the profile's units.

    Blendshapes are clipped to 0..1 first; head rotation goes from radians to degrees.
    Non-finite input stays non-finite (the safety layer holds or falls back on it).
    """
    profile = load_profile(profile)
    spec = SPECS[ARKIT]
    x = np.asarray(motion, dtype=np.float64)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[1] != spec.dim:
        raise ValueError(f"retarget_arkit expects (T, {spec.dim}) arkit58 motion, got shape {x.shape}")
    shapes = np.clip(spec.take(x, "expression"), 0.0, 1.0)
    angles = np.degrees(spec.take(x, "rotation"))  # pitch, yaw, roll
    with np.errstate(invalid="ignore", over="ignore"):
        delta = shapes @ profile.retarget_matrix() + angles @ profile.pose_matrix()
        return profile.neutral_vector() + profile.gain_vector() * delta


NEEDS_MAP = ("motion spec {spec} needs a linear map to arkit58 for robot controls: fit one with `realm embody fit-map`; "
             "the command needs --map FILE")


def check_map(spec: str, linear_map: LinearMap | None) -> None:
    """The one check that a non-arkit58 spec comes with a map to arkit58 (a ValueError otherwise)."""
    if spec != ARKIT and linear_map is None:
        raise ValueError(NEEDS_MAP.format(spec=spec))


def retarget(
    motion: np.ndarray, profile: RobotProfile | str, spec: str = ARKIT, linear_map: LinearMap | None = None
) -> np.ndarray:
    """(T, D) motion of ``spec`` -> (T, n_controls); non-ARKit specs need ``linear_map`` to arkit58."""
    check_map(spec, linear_map)
    if spec != ARKIT:
        motion = linear_map.apply(motion, source=spec)
    return retarget_arkit(motion, profile)


# ---------------------------------------------------------------- linear maps between motion spaces


@dataclass(frozen=True)
class LinearMap:
    """``y = x @ W + b``: frames of motion space ``source`` to ``target`` (normally arkit58)."""

    W: np.ndarray  # (D_source, D_target)
    b: np.ndarray  # (D_target,)
    source: str = ""
    target: str = ARKIT
    ridge: float = 0.0

    def apply(self, x: np.ndarray, source: str | None = None) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if source and self.source and source != self.source:
            raise ValueError(f"linear map is from {self.source}, motion is {source}")
        if x.shape[-1] != self.W.shape[0]:
            raise ValueError(f"linear map expects {self.W.shape[0]} input dims, motion has {x.shape[-1]}")
        y = x @ self.W + self.b
        return get_spec(self.target).clamp(y) if self.target in SPECS else y

    def save(self, path: str | Path, force: bool = False) -> None:
        with atomic_path(path, force=force) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, W=self.W, b=self.b, source=np.array(self.source), target=np.array(self.target),
                         ridge=np.array(self.ridge))  # fmt: skip

    @classmethod
    def load(cls, path: str | Path) -> LinearMap:
        path = Path(path)
        if not path.exists():
            raise RealmInputError(path, "linear map file not found")
        try:
            with np.load(path) as d:
                missing = [k for k in ("W", "b") if k not in d.files]
                if missing:
                    raise RealmInputError(
                        path, f"not a linear map: missing array {missing[0]!r} (needs W and b)"
                    )
                W, b = np.asarray(d["W"], np.float64), np.asarray(d["b"], np.float64)
                source = str(d["source"]) if "source" in d else ""
                target = str(d["target"]) if "target" in d else ARKIT
                ridge = float(d["ridge"]) if "ridge" in d else 0.0
        except RealmInputError:
            raise
        except Exception as e:
            raise RealmInputError(path, f"unreadable linear map ({type(e).__name__})") from None
        if W.ndim != 2 or b.shape != (W.shape[1],) or not (np.all(np.isfinite(W)) and np.all(np.isfinite(b))):
            raise RealmInputError(
                path, f"bad linear map shapes W {W.shape}, b {b.shape} (or non-finite values)"
            )
        return cls(W, b, source, target, ridge)


def fit_linear_map(
    x: np.ndarray, y: np.ndarray, ridge: float = 1e-3, source: str = "", target: str = ARKIT
) -> LinearMap:
    """Least-squares ``y ~ x @ W + b`` from paired frames, ridge-regularised.

    The penalty is ``ridge * mean(diag(Xc^T Xc))`` times the identity on centred data, so
    ``ridge`` is scale-free; the bias is not penalised.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
        raise ValueError(f"paired frames must be (T, D) arrays of equal length, got {x.shape} and {y.shape}")
    if len(x) < 2:
        raise ValueError("need at least two paired frames to fit a linear map")
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    gram = xc.T @ xc
    lam = ridge * max(float(np.trace(gram)) / gram.shape[0], 1e-12)
    W = np.linalg.solve(gram + lam * np.eye(gram.shape[0]), xc.T @ yc)
    return LinearMap(W, my - mx @ W, source, target, ridge)
