"""Robot profiles: the controls of a robot face, their limits, and how motion maps onto them.

A profile is a YAML file (two ship with the package: ``ameca`` and ``neck3``) loaded into a
frozen :class:`RobotProfile`. It holds

* ``controls``: name, kind (``joint``: a hinge in degrees, head/neck/jaw/gaze; ``face``: a
  normalised 0..1 slide), limits, neutral, velocity and acceleration limits;
* ``coupled_limits``: piecewise-linear tables giving the allowed range of one control as a
  function of another (the lips as a function of the jaw opening);
* ``pose``: how head pitch/yaw/roll (degrees) are shared between head and neck joints
  (pitch 75/25 and roll 85/15 on the Ameca-like profile);
* ``retarget``: per ARKit blendshape, the control offsets a full (1.0) activation adds to
  the neutral (the pose-per-blendshape method), and per-control ``gains``;
* actuator ``lag_s`` (first-order time constant), transport ``delay_s`` and ``rate_hz``.

Every problem in a profile file is a :class:`~realm.errors.RealmInputError` naming the file
and the field, e.g. ``ameca.yaml: control 'jaw_pitch': lo 30 > hi 20``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from realm.errors import RealmInputError
from realm.motion import ARKIT_BLENDSHAPES

KINDS = {"joint": "deg", "face": "norm"}
POSE_AXES = ("pitch", "yaw", "roll")
BUILTIN = ("ameca", "neck3")


@dataclass(frozen=True)
class Control:
    """One commanded degree of freedom, in its own unit (``deg`` or ``norm``)."""

    name: str  # e.g. "head_pitch", "lip_corner_raise_left"
    kind: str  # "joint" (hinge, degrees) or "face" (slide, normalised 0..1)
    unit: str  # "deg" or "norm"
    lo: float
    hi: float
    neutral: float
    max_vel: float  # units per second
    max_acc: float  # units per second^2


@dataclass(frozen=True)
class CoupledLimit:
    """The range of ``control`` as a piecewise-linear function of the value of control ``by``.

    ``x`` (strictly increasing) are values of ``by``; ``lo``/``hi`` the allowed range of
    ``control`` there. Between points the bounds are interpolated linearly, beyond the ends
    they are held (``numpy.interp``).
    """

    control: str
    by: str
    x: tuple[float, ...]
    lo: tuple[float, ...]
    hi: tuple[float, ...]

    def bounds(self, by_value):
        """``(lo, hi)`` of ``control`` at ``by_value`` (scalar or array)."""
        return np.interp(by_value, self.x, self.lo), np.interp(by_value, self.x, self.hi)


@dataclass(frozen=True)
class RobotProfile:
    """A robot's controls and how to drive them; build with :func:`load_profile`."""

    name: str
    controls: tuple[Control, ...]
    lag_s: float  # actuator first-order time constant (s)
    delay_s: float  # transport delay (s)
    rate_hz: float  # default control rate
    description: str = ""
    coupled_limits: tuple[CoupledLimit, ...] = ()
    #: (axis, control, weight): control += weight * head angle (degrees) of axis pitch/yaw/roll.
    pose: tuple[tuple[str, str, float], ...] = ()
    #: (blendshape, control, offset): control += offset * blendshape weight (0..1).
    retarget: tuple[tuple[str, str, float], ...] = ()
    #: (control, gain): scales the control's deviation from neutral after retargeting (default 1).
    gains: tuple[tuple[str, float], ...] = ()
    source: str = field(default="", compare=False)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.controls]

    @property
    def n(self) -> int:
        return len(self.controls)

    def index(self, name: str) -> int:
        for i, c in enumerate(self.controls):
            if c.name == name:
                return i
        raise KeyError(f"profile {self.name} has no control {name!r}; controls: {self.names}")

    def control(self, name: str) -> Control:
        return self.controls[self.index(name)]

    def lo_hi(self) -> tuple[np.ndarray, np.ndarray]:
        return (np.array([c.lo for c in self.controls], np.float64),
                np.array([c.hi for c in self.controls], np.float64))  # fmt: skip

    def neutral_vector(self) -> np.ndarray:
        return np.array([c.neutral for c in self.controls], np.float64)

    def max_vel_vector(self) -> np.ndarray:
        return np.array([c.max_vel for c in self.controls], np.float64)

    def max_acc_vector(self) -> np.ndarray:
        return np.array([c.max_acc for c in self.controls], np.float64)

    def joint_mask(self) -> np.ndarray:
        """True for hinge controls in degrees (head, neck, jaw, gaze)."""
        return np.array([c.kind == "joint" for c in self.controls])

    def gain_vector(self) -> np.ndarray:
        g = np.ones(self.n)
        for name, gain in self.gains:
            g[self.index(name)] = gain
        return g

    def retarget_matrix(self) -> np.ndarray:
        """(52, n) control offsets per unit ARKit blendshape, rows in Apple order."""
        m = np.zeros((len(ARKIT_BLENDSHAPES), self.n))
        for shape, name, offset in self.retarget:
            m[ARKIT_BLENDSHAPES.index(shape), self.index(name)] += offset
        return m

    def pose_matrix(self) -> np.ndarray:
        """(3, n): controls per degree of head pitch, yaw, roll."""
        m = np.zeros((3, self.n))
        for axis, name, weight in self.pose:
            m[POSE_AXES.index(axis), self.index(name)] += weight
        return m

    def coupled_bounds(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-control ``(lo, hi)`` given control vector ``x`` (n,): box limits narrowed by couplings."""
        lo, hi = self.lo_hi()
        for c in self.coupled_limits:
            i, j = self.index(c.control), self.index(c.by)
            clo, chi = c.bounds(x[j])
            lo[i], hi[i] = max(lo[i], clo), min(hi[i], chi)
        return lo, hi

    def apply_coupled(self, x: np.ndarray) -> np.ndarray:
        """``x`` (n,) clamped to its box limits, then each coupled control into its coupled range."""
        lo, hi = self.lo_hi()
        x = np.clip(x, lo, hi)
        for c in self.coupled_limits:
            i, j = self.index(c.control), self.index(c.by)
            clo, chi = c.bounds(x[j])
            x[i] = min(max(x[i], clo), chi)
        return x


# ---------------------------------------------------------------- loading and validation


def builtin_path(name: str) -> Path:
    return Path(str(resources.files("realm.embodiment") / "profiles" / f"{name}.yaml"))


def load_profile(name_or_path: str | Path) -> RobotProfile:
    """A built-in profile by name (``"ameca"``, ``"neck3"``) or a profile YAML file by path."""
    if isinstance(name_or_path, RobotProfile):
        return name_or_path
    key = str(name_or_path)
    path = builtin_path(key) if key in BUILTIN else Path(key)
    if not path.exists():
        raise RealmInputError(path, f"robot profile not found (built-in profiles: {', '.join(BUILTIN)})")
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise RealmInputError(path, f"invalid YAML{where}: {getattr(e, 'problem', e)}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RealmInputError(path, f"unreadable profile ({type(e).__name__})") from None
    return profile_from_dict(data, source=path)


def profile_from_dict(data, source: str | Path = "<profile>") -> RobotProfile:
    """Validate a parsed profile mapping into a :class:`RobotProfile` (errors name ``source``)."""

    def fail(msg: str):
        raise RealmInputError(source, msg)

    def number(d: dict, key: str, where: str, default=None) -> float:
        if key not in d:
            if default is not None:
                return float(default)
            fail(f"{where}: missing field {key!r}")
        v = d[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
            fail(f"{where}: field {key!r} must be a finite number, got {v!r}")
        return float(v)

    if not isinstance(data, dict):
        fail("a profile must be a YAML mapping with 'name' and 'controls'")
    for key in ("name", "controls", "lag_s", "delay_s", "rate_hz"):
        if key not in data:
            fail(f"missing field {key!r}")
    lag, delay, rate = (number(data, k, "profile") for k in ("lag_s", "delay_s", "rate_hz"))
    if lag < 0 or delay < 0 or rate <= 0:
        fail(f"lag_s and delay_s must be >= 0 and rate_hz > 0 (got {lag}, {delay}, {rate})")

    defaults = data.get("defaults") or {}
    raw = data["controls"]
    if not isinstance(raw, dict) or not raw:
        fail("'controls' must be a non-empty mapping of control name -> fields")
    controls = []
    for name, fields in raw.items():
        where = f"control {name!r}"
        if not isinstance(fields, dict):
            fail(f"{where}: expected a mapping of fields, got {fields!r}")
        kind = fields.get("kind")
        if kind not in KINDS:
            fail(f"{where}: kind must be one of {sorted(KINDS)}, got {kind!r}")
        merged = {**(defaults.get(kind) or {}), **fields}
        vals = {k: number(merged, k, where) for k in ("lo", "hi", "neutral", "max_vel", "max_acc")}
        if vals["lo"] > vals["hi"]:
            fail(f"{where}: lo {vals['lo']:g} > hi {vals['hi']:g}")
        if not vals["lo"] <= vals["neutral"] <= vals["hi"]:
            fail(f"{where}: neutral {vals['neutral']:g} outside [{vals['lo']:g}, {vals['hi']:g}]")
        if vals["max_vel"] <= 0 or vals["max_acc"] <= 0:
            fail(f"{where}: max_vel and max_acc must be > 0")
        unit = merged.get("unit", KINDS[kind])
        if unit != KINDS[kind]:
            fail(f"{where}: a {kind} control is in {KINDS[kind]!r}, not {unit!r}")
        controls.append(Control(str(name), kind, unit, **vals))
    names = {c.name for c in controls}
    by_name = {c.name: c for c in controls}

    def known(name, where: str) -> str:
        if name not in names:
            fail(f"{where}: unknown control {name!r}")
        return str(name)

    coupled = []
    for k, entry in enumerate(data.get("coupled_limits") or []):
        where = f"coupled_limits[{k}]"
        if not isinstance(entry, dict) or not {"control", "by", "table"} <= set(entry):
            fail(f"{where}: needs 'control', 'by' and 'table' ([[by value, lo, hi], ...])")
        control, by = known(entry["control"], where), known(entry["by"], where)
        if control == by:
            fail(f"{where}: a control cannot limit itself")
        table = entry["table"]
        try:
            t = np.asarray(table, dtype=float)
        except (TypeError, ValueError):
            fail(f"{where}: table must be rows of three numbers [by value, lo, hi]")
        if t.ndim != 2 or t.shape[1] != 3 or len(t) < 1 or not np.all(np.isfinite(t)):
            fail(f"{where}: table must be rows of three finite numbers [by value, lo, hi]")
        if np.any(np.diff(t[:, 0]) <= 0):
            fail(f"{where}: table values of {by!r} must be strictly increasing")
        if np.any(t[:, 1] > t[:, 2]):
            fail(f"{where}: table has a row with lo > hi")
        cl = CoupledLimit(control, by, tuple(t[:, 0]), tuple(t[:, 1]), tuple(t[:, 2]))
        lo, hi = cl.bounds(by_name[by].neutral)
        if not lo - 1e-9 <= by_name[control].neutral <= hi + 1e-9:
            fail(f"{where}: neutral of {control!r} is outside its coupled range at the neutral of {by!r}")
        if np.any(t[:, 2] < by_name[control].lo) or np.any(t[:, 1] > by_name[control].hi):
            fail(f"{where}: table range lies outside the limits of {control!r}")
        coupled.append(cl)
    if len({c.control for c in coupled}) != len(coupled):
        fail("coupled_limits: each control may be limited by one table only")
    if {c.control for c in coupled} & {c.by for c in coupled}:
        fail("coupled_limits: a limited control cannot itself limit another (keep couplings one level deep)")

    pose = []
    for axis, split in (data.get("pose") or {}).items():
        if axis not in POSE_AXES:
            fail(f"pose: unknown head axis {axis!r} (use {', '.join(POSE_AXES)})")
        if not isinstance(split, dict):
            fail(f"pose.{axis}: expected a mapping control -> weight")
        for name in split:
            pose.append((axis, known(name, f"pose.{axis}"), number(split, name, f"pose.{axis}")))

    retarget = []
    table = data.get("retarget") or {}
    if not isinstance(table, dict):
        fail("retarget: expected a mapping blendshape -> {control: offset}")
    for shape, offsets in table.items():
        if shape not in ARKIT_BLENDSHAPES:
            fail(f"retarget: unknown ARKit blendshape {shape!r}")
        if not isinstance(offsets, dict):
            fail(f"retarget.{shape}: expected a mapping control -> offset")
        for name in offsets:
            retarget.append(
                (shape, known(name, f"retarget.{shape}"), number(offsets, name, f"retarget.{shape}"))
            )

    gains = []
    for name in data.get("gains") or {}:
        gains.append((known(name, "gains"), number(data["gains"], name, "gains")))

    return RobotProfile(
        name=str(data["name"]), controls=tuple(controls), lag_s=lag, delay_s=delay, rate_hz=rate,
        description=str(data.get("description", "")), coupled_limits=tuple(coupled), pose=tuple(pose),
        retarget=tuple(retarget), gains=tuple(gains), source=str(source),
    )  # fmt: skip
