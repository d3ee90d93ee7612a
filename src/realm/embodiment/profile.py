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
and the field, e.g. ``ameca.yaml: control 'jaw_pitch': lo 30 > hi 20``. Validation refuses
anything with which the safety layer could emit a non-finite or out-of-limit command: values
out of the ranges below, rate limits too fine to resolve in float64 at ``rate_hz``
(:func:`rate_problem`), unknown fields, wrong types and duplicate YAML keys.
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
TOP_FIELDS = ("name", "description", "rate_hz", "lag_s", "delay_s", "defaults", "controls",
              "coupled_limits", "pose", "retarget", "gains")  # fmt: skip
CONTROL_FIELDS = ("kind", "unit", "lo", "hi", "neutral", "max_vel", "max_acc")
#: Largest magnitude of a limit, neutral or coupled-table value, in the control's unit.
LIMIT_MAX = 1e6
#: Control rates (Hz) a profile or a safety layer may run at.
RATE_RANGE = (1.0, 10_000.0)
#: Largest actuator lag or transport delay (s).
DELAY_MAX = 10.0
#: The smallest change per control period the rate limits may ask for (``max_vel / rate`` and
#: ``max_acc / rate^2``), relative to the control's magnitude ``max(1, |lo|, |hi|)``: finer
#: steps are lost to float64 rounding, and the limits would no longer hold.
RESOLUTION = 1e-9


def rate_problem(c: Control, rate_hz: float) -> str | None:
    """Why the rate limits of ``c`` cannot be enforced at ``rate_hz`` (``None`` when they can)."""
    scale = max(1.0, abs(c.lo), abs(c.hi))
    for key, value, power in (("max_vel", c.max_vel, 1), ("max_acc", c.max_acc, 2)):
        need = RESOLUTION * scale * rate_hz**power
        if not value >= need:
            return (f"{key} {value!r} is too small to enforce at {rate_hz:g} Hz with limits up to "
                    f"{scale:g} (at least {need:.3g})")  # fmt: skip
    return None


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
        data = yaml.load(path.read_text(), Loader=_unique_key_loader())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise RealmInputError(path, f"invalid YAML{where}: {getattr(e, 'problem', e)}") from None
    except RecursionError:
        raise RealmInputError(path, "invalid YAML: nested too deeply") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RealmInputError(path, f"unreadable profile ({type(e).__name__})") from None
    return profile_from_dict(data, source=path)


def _unique_key_loader():
    """PyYAML's safe loader, refusing a key that appears twice in one mapping (which would
    otherwise silently win); ``<<`` merges may still override."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value if isinstance(node, yaml.MappingNode) else ():
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                except TypeError:  # an unhashable key: the base class says so
                    continue
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"duplicate key {key!r}",
                        key_node.start_mark,
                    )
                seen.add(key)
            return super().construct_mapping(node, deep)

    return UniqueKeyLoader


def profile_from_dict(data, source: str | Path = "<profile>") -> RobotProfile:
    """Validate a parsed profile mapping into a :class:`RobotProfile` (errors name ``source``)."""

    def fail(msg: str):
        raise RealmInputError(source, msg)

    def number(d: dict, key: str, where: str) -> float:
        if key not in d:
            fail(f"{where}: missing field {key!r}")
        v = d[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            as_text = isinstance(v, str) and "e" in v.lower() and _is_float(v)
            hint = " (YAML reads 1e3 as text: write 1.0e3)" if as_text else ""
            fail(f"{where}: field {key!r} must be a finite number, got {_short(v)}{hint}")
        try:
            f = float(v)
        except OverflowError:  # an integer beyond float range
            f = float("inf")
        if not np.isfinite(f):
            fail(f"{where}: field {key!r} must be a finite number, got {_short(v)}")
        return f

    def in_range(key: str, v: float, lo: float, hi: float, unit: str = "") -> float:
        if not lo <= v <= hi:
            fail(f"field {key!r} must be in [{lo:g}, {hi:g}]{unit}, got {v:g}")
        return v

    def optional(key: str, kind: type, what: str):
        value = data.get(key)
        if value is None:
            return kind()
        if not isinstance(value, kind):
            fail(f"{key}: expected {what}, got {_short(value)}")
        return value

    def fields_known(fields: dict, allowed: tuple, where: str) -> None:
        for key in fields:
            if key not in allowed:
                fail(f"{where}: unknown field {_short(key)} (fields: {', '.join(allowed)})")

    if not isinstance(data, dict):
        fail("a profile must be a YAML mapping with 'name' and 'controls'")
    fields_known(data, TOP_FIELDS, "profile")
    for key in ("name", "controls", "lag_s", "delay_s", "rate_hz"):
        if key not in data:
            fail(f"missing field {key!r}")
    if not isinstance(data["name"], str) or not data["name"]:
        fail(f"field 'name' must be a non-empty string, got {_short(data['name'])}")
    description = optional("description", str, "a string")
    lag = in_range("lag_s", number(data, "lag_s", "profile"), 0.0, DELAY_MAX, " s")
    delay = in_range("delay_s", number(data, "delay_s", "profile"), 0.0, DELAY_MAX, " s")
    rate = in_range("rate_hz", number(data, "rate_hz", "profile"), *RATE_RANGE, " Hz")

    defaults = optional("defaults", dict, "a mapping of kind (joint, face) -> fields")
    for kind, fields in defaults.items():
        if kind not in KINDS:
            fail(f"defaults: unknown kind {_short(kind)} (kinds: {', '.join(KINDS)})")
        if not isinstance(fields, dict):
            fail(f"defaults.{kind}: expected a mapping of fields, got {_short(fields)}")
        fields_known(fields, CONTROL_FIELDS[1:], f"defaults.{kind}")
    raw = data["controls"]
    if not isinstance(raw, dict) or not raw:
        fail("'controls' must be a non-empty mapping of control name -> fields")
    controls = []
    for name, fields in raw.items():
        if not isinstance(name, str) or not name:
            fail(f"controls: a control name must be a non-empty string, got {_short(name)}")
        where = f"control {name!r}"
        if not isinstance(fields, dict):
            fail(f"{where}: expected a mapping of fields, got {_short(fields)}")
        fields_known(fields, CONTROL_FIELDS, where)
        kind = fields.get("kind")
        if not isinstance(kind, str) or kind not in KINDS:
            fail(f"{where}: kind must be one of {sorted(KINDS)}, got {_short(kind)}")
        merged = {**defaults.get(kind, {}), **fields}
        vals = {k: number(merged, k, where) for k in ("lo", "hi", "neutral", "max_vel", "max_acc")}
        for k in ("lo", "hi", "neutral"):
            if abs(vals[k]) > LIMIT_MAX:
                fail(f"{where}: field {k!r} {vals[k]:g} is beyond +-{LIMIT_MAX:g}")
        if vals["lo"] > vals["hi"]:
            fail(f"{where}: lo {vals['lo']:g} > hi {vals['hi']:g}")
        if not vals["lo"] <= vals["neutral"] <= vals["hi"]:
            fail(f"{where}: neutral {vals['neutral']:g} outside [{vals['lo']:g}, {vals['hi']:g}]")
        if vals["max_vel"] <= 0 or vals["max_acc"] <= 0:
            fail(f"{where}: max_vel and max_acc must be > 0")
        unit = merged.get("unit", KINDS[kind])
        if unit != KINDS[kind]:
            fail(f"{where}: a {kind} control is in {KINDS[kind]!r}, not {_short(unit)}")
        control = Control(name, kind, unit, **vals)
        problem = rate_problem(control, rate)
        if problem:
            fail(f"{where}: {problem}")
        controls.append(control)
    names = {c.name for c in controls}
    by_name = {c.name: c for c in controls}

    def known(name, where: str) -> str:
        if not isinstance(name, str) or name not in names:
            fail(f"{where}: unknown control {_short(name)}")
        return name

    coupled = []
    for k, entry in enumerate(optional("coupled_limits", list, "a list of {control, by, table}")):
        where = f"coupled_limits[{k}]"
        if not isinstance(entry, dict) or not {"control", "by", "table"} <= set(entry):
            fail(f"{where}: needs 'control', 'by' and 'table' ([[by value, lo, hi], ...])")
        fields_known(entry, ("control", "by", "table"), where)
        control, by = known(entry["control"], where), known(entry["by"], where)
        if control == by:
            fail(f"{where}: a control cannot limit itself")
        try:
            t = np.asarray(entry["table"], dtype=float)
        except (TypeError, ValueError, OverflowError):
            fail(f"{where}: table must be rows of three numbers [by value, lo, hi]")
        if t.ndim != 2 or t.shape[1] != 3 or len(t) < 1 or not np.all(np.abs(t) <= LIMIT_MAX):
            fail(
                f"{where}: table must be rows of three finite numbers [by value, lo, hi], |x| <= {LIMIT_MAX:g}"
            )
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
    for axis, split in optional("pose", dict, "a mapping head axis -> {control: weight}").items():
        if axis not in POSE_AXES:
            fail(f"pose: unknown head axis {_short(axis)} (use {', '.join(POSE_AXES)})")
        if not isinstance(split, dict):
            fail(f"pose.{axis}: expected a mapping control -> weight")
        for name in split:
            pose.append((axis, known(name, f"pose.{axis}"), number(split, name, f"pose.{axis}")))

    retarget = []
    for shape, offsets in optional("retarget", dict, "a mapping blendshape -> {control: offset}").items():
        if shape not in ARKIT_BLENDSHAPES:
            fail(f"retarget: unknown ARKit blendshape {_short(shape)}")
        if not isinstance(offsets, dict):
            fail(f"retarget.{shape}: expected a mapping control -> offset")
        for name in offsets:
            retarget.append(
                (shape, known(name, f"retarget.{shape}"), number(offsets, name, f"retarget.{shape}"))
            )

    table = optional("gains", dict, "a mapping control -> gain")
    gains = [(known(name, "gains"), number(table, name, "gains")) for name in table]

    return RobotProfile(
        name=data["name"], controls=tuple(controls), lag_s=lag, delay_s=delay, rate_hz=rate,
        description=description, coupled_limits=tuple(coupled), pose=tuple(pose),
        retarget=tuple(retarget), gains=tuple(gains), source=str(source),
    )  # fmt: skip


def _short(value, n: int = 40) -> str:
    """``repr(value)`` cut to ``n`` characters, so that an error stays one short line."""
    r = repr(value)
    return r if len(r) <= n else r[: n - 3] + "..."


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
