"""Exports of listener motion for robots and avatars, each with a parser for round trips.

==================  ===================================================================
format              what is written
==================  ===================================================================
``ameca-jsonl``     one JSON object per line: ``{"time": s, <control>: value, ...}`` with
                    every control of the profile (30 on ``ameca``), 20-60 Hz
``ros2-trajectory`` ``trajectory_msgs/JointTrajectory`` as YAML (``.yaml``/``.yml``) or
                    JSON (``.json``): header, joint_names, points with positions,
                    velocities and time_from_start {sec, nanosec}; hinge joints in
                    radians, face controls normalised 0..1
``livelink-csv``    Live Link Face CSV: Timecode, BlendShapeCount, the 52 blendshapes
                    (Live Link spelling and order) and HeadYaw, HeadPitch, HeadRoll,
                    Left/RightEye Yaw/Pitch/Roll (radians)
``bvh``             a Neck -> Head rotation hierarchy (degrees) from the head and neck
                    controls of the profile
==================  ===================================================================

Robot formats (``ameca-jsonl``, ``ros2-trajectory``, ``bvh``) go motion -> resample to the
export rate -> retarget -> safety layer, so the file already respects every limit.
``livelink-csv`` is for avatars: ARKit values straight from the motion (resampled).
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from realm.embodiment.controls import ControlPipeline, resample
from realm.embodiment.profile import RobotProfile, load_profile
from realm.embodiment.retarget import ARKIT, LinearMap
from realm.errors import RealmInputError
from realm.io import atomic_path
from realm.motion import ARKIT_BLENDSHAPES, SPECS

AMECA_RATE = (20.0, 60.0)

#: Live Link Face's CSV column order of the 52 blendshapes (capitalised ARKit names; note
#: JawRight before JawLeft and MouthRight before MouthLeft, as the app writes them).
LIVELINK_BLENDSHAPES: tuple[str, ...] = (
    "EyeBlinkLeft", "EyeLookDownLeft", "EyeLookInLeft", "EyeLookOutLeft", "EyeLookUpLeft",
    "EyeSquintLeft", "EyeWideLeft",
    "EyeBlinkRight", "EyeLookDownRight", "EyeLookInRight", "EyeLookOutRight", "EyeLookUpRight",
    "EyeSquintRight", "EyeWideRight",
    "JawForward", "JawRight", "JawLeft", "JawOpen",
    "MouthClose", "MouthFunnel", "MouthPucker", "MouthRight", "MouthLeft",
    "MouthSmileLeft", "MouthSmileRight", "MouthFrownLeft", "MouthFrownRight",
    "MouthDimpleLeft", "MouthDimpleRight", "MouthStretchLeft", "MouthStretchRight",
    "MouthRollLower", "MouthRollUpper", "MouthShrugLower", "MouthShrugUpper",
    "MouthPressLeft", "MouthPressRight", "MouthLowerDownLeft", "MouthLowerDownRight",
    "MouthUpperUpLeft", "MouthUpperUpRight",
    "BrowDownLeft", "BrowDownRight", "BrowInnerUp", "BrowOuterUpLeft", "BrowOuterUpRight",
    "CheekPuff", "CheekSquintLeft", "CheekSquintRight",
    "NoseSneerLeft", "NoseSneerRight",
    "TongueOut",
)  # fmt: skip
LIVELINK_ANGLES = ("HeadYaw", "HeadPitch", "HeadRoll", "LeftEyeYaw", "LeftEyePitch", "LeftEyeRoll",
                   "RightEyeYaw", "RightEyePitch", "RightEyeRoll")  # fmt: skip
LIVELINK_HEADER = ("Timecode", "BlendShapeCount", *LIVELINK_BLENDSHAPES, *LIVELINK_ANGLES)


def livelink_name(arkit: str) -> str:
    """ARKit ``eyeBlinkLeft`` -> Live Link ``EyeBlinkLeft``."""
    return arkit[0].upper() + arkit[1:]


# ---------------------------------------------------------------- resampling and the pipeline


@dataclass
class Prepared:
    """Motion ready for export: times at the export rate and what each format needs."""

    times: np.ndarray  # (T,) seconds from 0
    rate: float
    arkit: np.ndarray | None  # (T, 58) arkit58 frames (livelink-csv)
    controls: np.ndarray | None  # (T, n) safe controls (robot formats)
    profile: RobotProfile | None
    spec: str


def prepare(
    motion: np.ndarray, fps: float, rate: float, profile: RobotProfile | str | None = "ameca",
    spec: str = ARKIT, linear_map: LinearMap | None = None, safety: bool = True, safety_kw: dict | None = None,
) -> Prepared:  # fmt: skip
    """Resample ``motion`` to ``rate``, then the :class:`~realm.embodiment.controls.ControlPipeline`:
    arkit58 (through ``linear_map`` for other specs), clamped, retargeted and made safe for ``profile``."""
    pipe = ControlPipeline(profile, spec, linear_map, rate, safety=safety, safety_kw=safety_kw)
    times, x = resample(motion, fps, rate)
    controls = None if profile is None else pipe.run(x)
    return Prepared(times, float(rate), pipe.arkit(x), controls, pipe.profile, ARKIT)


# ---------------------------------------------------------------- ameca-jsonl


def write_ameca_jsonl(path: str | Path, times: np.ndarray, profile: RobotProfile, controls: np.ndarray,
                      force: bool = False) -> None:  # fmt: skip
    """One JSON object per line: ``{"time": t, "<control>": value, ...}`` (profile order)."""
    names = profile.names
    with atomic_path(path, force=force) as tmp, open(tmp, "w") as f:
        for t, row in zip(times, controls, strict=True):
            obj = {"time": round(float(t), 6)}
            obj.update({n: round(float(v), 6) for n, v in zip(names, row, strict=True)})
            f.write(json.dumps(obj) + "\n")


def read_ameca_jsonl(path: str | Path) -> tuple[np.ndarray, list[str], np.ndarray]:
    """``(times, control names, values (T, n))`` from an ameca-jsonl file."""
    path = Path(path)
    times, rows, names = [], [], None
    for k, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            t = float(obj.pop("time"))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            raise RealmInputError(path, f"line {k}: not a JSON object with a 'time'") from None
        if names is None:
            names = list(obj)
        elif list(obj) != names:
            raise RealmInputError(path, f"line {k}: controls differ from the first line")
        times.append(t)
        rows.append([float(obj[n]) for n in names])
    if names is None:
        raise RealmInputError(path, "no frames")
    return np.array(times), names, np.array(rows)


# ---------------------------------------------------------------- ros2 JointTrajectory


def _duration(t: float) -> dict:
    sec = int(math.floor(t))
    nanosec = int(round((t - sec) * 1e9))
    if nanosec >= 1_000_000_000:
        sec, nanosec = sec + 1, nanosec - 1_000_000_000
    return {"sec": sec, "nanosec": nanosec}


def to_ros_units(profile: RobotProfile, values: np.ndarray) -> np.ndarray:
    """Hinge joints degrees -> radians; face controls unchanged."""
    return np.where(profile.joint_mask(), np.radians(values), values)


def from_ros_units(profile: RobotProfile, values: np.ndarray) -> np.ndarray:
    return np.where(profile.joint_mask(), np.degrees(values), values)


def joint_trajectory(
    times: np.ndarray, profile: RobotProfile, controls: np.ndarray, frame_id: str = ""
) -> dict:
    """A ``trajectory_msgs/msg/JointTrajectory`` as a plain dict (ROS 2 field names)."""
    pos = to_ros_units(profile, np.asarray(controls, dtype=np.float64))
    vel = np.gradient(pos, times, axis=0) if len(times) > 1 else np.zeros_like(pos)
    points = [
        {"positions": [round(float(v), 9) for v in p], "velocities": [round(float(v), 9) for v in w],
         "accelerations": [], "effort": [], "time_from_start": _duration(float(t))}
        for t, p, w in zip(times, pos, vel, strict=True)
    ]  # fmt: skip
    return {"header": {"stamp": {"sec": 0, "nanosec": 0}, "frame_id": frame_id},
            "joint_names": profile.names, "points": points}  # fmt: skip


def write_ros2_trajectory(path: str | Path, times: np.ndarray, profile: RobotProfile, controls: np.ndarray,
                          force: bool = False) -> None:  # fmt: skip
    """JointTrajectory as JSON (``.json``) or YAML (anything else, e.g. ``.yaml``)."""
    msg = joint_trajectory(times, profile, controls)
    with atomic_path(path, force=force) as tmp:
        if Path(path).suffix.lower() == ".json":
            tmp.write_text(json.dumps(msg, indent=1))
        else:
            import yaml

            dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml when present: ~10x faster
            tmp.write_text(
                yaml.dump(msg, Dumper=dumper, sort_keys=False, default_flow_style=None, width=1 << 16)
            )


def read_ros2_trajectory(path: str | Path, profile: RobotProfile | str | None = None) -> dict:
    """``{"times", "joint_names", "positions", "velocities"}`` from a JointTrajectory YAML/JSON file.

    With ``profile`` the hinge joints come back in degrees (the profile's units).
    """
    path = Path(path)
    text = _read_text(path)
    try:
        if path.suffix.lower() == ".json":
            msg = json.loads(text)
        else:
            import yaml

            msg = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        names = list(msg["joint_names"])
        pts = msg["points"]
        times = np.array([p["time_from_start"]["sec"] + p["time_from_start"]["nanosec"] * 1e-9 for p in pts])
        pos = np.array([p["positions"] for p in pts], dtype=np.float64)
        vel = np.array([p["velocities"] for p in pts], dtype=np.float64)
    except Exception as e:
        raise RealmInputError(path, f"not a JointTrajectory ({type(e).__name__}: {e})") from None
    if pos.ndim != 2 or pos.shape[1] != len(names):
        raise RealmInputError(path, f"points do not have one position per joint ({len(names)} joints)")
    if profile is not None:
        profile = load_profile(profile)
        if names != profile.names:
            raise RealmInputError(path, f"joint names do not match profile {profile.name}")
        pos, vel = from_ros_units(profile, pos), from_ros_units(profile, vel)
    return {"times": times, "joint_names": names, "positions": pos, "velocities": vel}


# ---------------------------------------------------------------- Live Link Face CSV


def timecode(t: float, fps: float) -> str:
    """``HH:MM:SS:FF.mmm``: frame FF within the second at ``fps``, then the sub-frame in thousandths."""
    frames = round(t * fps * 1000) / 1000  # in frames, to the thousandth
    whole_s = int(frames // fps)
    ff = frames - whole_s * fps
    h, rem = divmod(whole_s, 3600)
    m, s = divmod(rem, 60)
    return f"{h:02d}:{m:02d}:{s:02d}:{int(ff):02d}.{int(round((ff - int(ff)) * 1000)):03d}"


_TC = re.compile(r"^(\d+):(\d{2}):(\d{2}):(\d+)(?:\.(\d+))?$")


def parse_timecode(tc: str, fps: float) -> float:
    m = _TC.match(tc.strip())
    if not m:
        raise ValueError(f"bad timecode {tc!r} (expected HH:MM:SS:FF.mmm)")
    h, mi, s, ff = (int(g) for g in m.groups()[:4])
    sub = float("0." + m.group(5)) if m.group(5) else 0.0
    return h * 3600 + mi * 60 + s + (ff + sub) / fps


def write_livelink_csv(path: str | Path, times: np.ndarray, arkit: np.ndarray, fps: float,
                       force: bool = False) -> None:  # fmt: skip
    """Live Link Face CSV from (T, 58) arkit58 frames; eye angles are written as 0 (gaze is in eyeLook*)."""
    spec = SPECS[ARKIT]
    shapes = np.clip(spec.take(arkit, "expression"), 0, 1)
    pitch, yaw, roll = spec.take(arkit, "rotation").T
    order = [ARKIT_BLENDSHAPES.index(n[0].lower() + n[1:]) for n in LIVELINK_BLENDSHAPES]
    with atomic_path(path, force=force) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(LIVELINK_HEADER)
        for i, t in enumerate(times):
            angles = (yaw[i], pitch[i], roll[i], 0, 0, 0, 0, 0, 0)
            w.writerow([timecode(float(t), fps), len(LIVELINK_BLENDSHAPES) + len(LIVELINK_ANGLES)]
                       + [f"{shapes[i, j]:.6f}" for j in order] + [f"{a:.6f}" for a in angles])  # fmt: skip


def read_livelink_csv(path: str | Path, fps: float | None = None) -> dict:
    """``{"times", "arkit" (T, 58), "eyes" (T, 6), "fps"}`` from a Live Link Face CSV.

    Columns are matched by name, case-insensitively; times are relative to the first row.
    ``fps`` is the timecode's frame rate; by default the smallest common rate (24, 25, 30,
    50, 60) above the largest frame number seen.
    """
    path = Path(path)
    rows = list(csv.reader(_read_text(path).splitlines()))
    if len(rows) < 2:
        raise RealmInputError(path, "no frames (a header and at least one row expected)")
    col = {name.strip().lower(): j for j, name in enumerate(rows[0])}
    need = ("timecode", *(n.lower() for n in LIVELINK_BLENDSHAPES), "headyaw", "headpitch", "headroll")
    missing = [n for n in need if n not in col]
    if missing:
        raise RealmInputError(path, f"not a Live Link Face CSV: missing columns {', '.join(missing[:5])}")
    body = rows[1:]
    try:
        tcs = [r[col["timecode"]] for r in body]
        if fps is None:
            top = max(int(_TC.match(tc.strip()).group(4)) for tc in tcs)
            fps = next((r for r in (24.0, 25.0, 30.0, 50.0, 60.0) if r > top), float(top + 1))
        times = np.array([parse_timecode(tc, fps) for tc in tcs])

        def values(name: str) -> np.ndarray:
            j = col.get(name.lower())
            return np.zeros(len(body)) if j is None else np.array([float(r[j]) for r in body])

        arkit = np.zeros((len(body), SPECS[ARKIT].dim))
        for k, n in enumerate(ARKIT_BLENDSHAPES):
            arkit[:, k] = values(livelink_name(n))
        arkit[:, 52], arkit[:, 53], arkit[:, 54] = values("HeadPitch"), values("HeadYaw"), values("HeadRoll")
        eyes = np.stack([values(n) for n in LIVELINK_ANGLES[3:]], axis=1)
    except (ValueError, IndexError, AttributeError) as e:
        raise RealmInputError(path, f"bad Live Link Face row ({e})") from None
    return {"times": times - times[0], "arkit": arkit, "eyes": eyes, "fps": fps}


# ---------------------------------------------------------------- BVH


BVH_JOINTS = ("Neck", "Head")
BVH_CHANNELS = ("Zrotation", "Xrotation", "Yrotation")  # roll, pitch, yaw (Y up, Z forward)
_AXIS_OF = {"Zrotation": "roll", "Xrotation": "pitch", "Yrotation": "yaw"}


def bvh_angles(profile: RobotProfile, controls: np.ndarray) -> np.ndarray:
    """(T, 6) Neck then Head rotations (Z, X, Y; degrees) from ``neck_*``/``head_*`` controls (0 if absent)."""
    cols = []
    for joint in BVH_JOINTS:
        for ch in BVH_CHANNELS:
            name = f"{joint.lower()}_{_AXIS_OF[ch]}"
            cols.append(
                controls[:, profile.index(name)] if name in profile.names else np.zeros(len(controls))
            )
    if not any(f"{j.lower()}_{a}" in profile.names for j in BVH_JOINTS for a in ("pitch", "yaw", "roll")):
        raise ValueError(f"profile {profile.name} has no head_* or neck_* controls for a BVH")
    return np.stack(cols, axis=1)


def write_bvh(path: str | Path, angles: np.ndarray, rate: float, force: bool = False) -> None:
    """A two-joint (Neck -> Head) BVH; ``angles`` (T, 6) in degrees, channel order Z X Y per joint."""
    chans = " ".join(BVH_CHANNELS)
    lines = [
        "HIERARCHY", "ROOT Neck", "{", "  OFFSET 0.000000 0.000000 0.000000", f"  CHANNELS 3 {chans}",
        "  JOINT Head", "  {", "    OFFSET 0.000000 10.000000 0.000000", f"    CHANNELS 3 {chans}",
        "    End Site", "    {", "      OFFSET 0.000000 15.000000 0.000000", "    }", "  }", "}",
        "MOTION", f"Frames: {len(angles)}", f"Frame Time: {1.0 / rate:.8f}",
    ]  # fmt: skip
    lines += [" ".join(f"{v:.6f}" for v in row) for row in angles]
    with atomic_path(path, force=force) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def read_bvh(path: str | Path) -> dict:
    """``{"channels": ["Neck.Zrotation", ...], "frame_time", "angles" (T, C)}`` from a BVH file."""
    path = Path(path)
    text = _read_text(path)
    head, sep, motion = text.partition("MOTION")
    if not sep or "HIERARCHY" not in head:
        raise RealmInputError(path, "not a BVH file (needs HIERARCHY and MOTION sections)")
    channels, joint = [], None
    for line in head.splitlines():
        tok = line.split()
        if tok and tok[0] in ("ROOT", "JOINT"):
            joint = tok[1]
        elif tok and tok[0] == "CHANNELS":
            channels += [f"{joint}.{c}" for c in tok[2:]]
    lines = [ln for ln in motion.strip().splitlines() if ln.strip()]
    try:
        n = int(lines[0].split(":")[1])
        frame_time = float(lines[1].split(":")[1])
        angles = np.array([[float(v) for v in ln.split()] for ln in lines[2:]], dtype=np.float64).reshape(
            n, -1
        )
    except (IndexError, ValueError) as e:
        raise RealmInputError(path, f"bad BVH MOTION section ({e})") from None
    if angles.shape[1] != len(channels):
        raise RealmInputError(path, f"{angles.shape[1]} values per frame for {len(channels)} channels")
    return {"channels": channels, "frame_time": frame_time, "angles": angles}


# ---------------------------------------------------------------- the format registry


@dataclass(frozen=True)
class Format:
    """One export format: how a :class:`Prepared` motion is written, and read back for round trips.

    ``robot``: the format holds a profile's controls (motion goes through retargeting and the
    safety layer); else arkit58 values. ``rates``: the export rates (Hz) it accepts, or None.
    """

    name: str
    robot: bool
    write: Callable[[Path, Prepared, bool], None]  # (path, prepared, force)
    read: Callable[..., object]
    rates: tuple[float, float] | None = None


#: Every export format by name; a new format is its writer and reader plus one entry here.
WRITERS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("ameca-jsonl", True, lambda path, p, force: write_ameca_jsonl(path, p.times, p.profile, p.controls, force=force),
               read_ameca_jsonl, AMECA_RATE),
        Format("ros2-trajectory", True, lambda path, p, force: write_ros2_trajectory(path, p.times, p.profile, p.controls, force=force),
               read_ros2_trajectory),
        Format("livelink-csv", False, lambda path, p, force: write_livelink_csv(path, p.times, p.arkit, p.rate, force=force),
               read_livelink_csv),
        Format("bvh", True, lambda path, p, force: write_bvh(path, bvh_angles(p.profile, p.controls), p.rate, force=force),
               read_bvh),
    )
}  # fmt: skip
FORMATS = tuple(WRITERS)


# ---------------------------------------------------------------- one call for the CLI


def export_motion(
    motion_path: str | Path, fmt: str, out: str | Path, profile: str | Path = "ameca", rate: float = 30.0,
    map_path: str | Path | None = None, force: bool = False, sample: int | None = None,
) -> dict:  # fmt: skip
    """Read a motion file, export realisation ``sample`` of it as ``fmt`` to ``out``; returns a
    short summary. ``sample`` may be None only for a file with one realisation."""
    from realm.motion import load_motion_file

    if fmt not in WRITERS:
        raise ValueError(f"unknown export format {fmt!r}; formats: {', '.join(FORMATS)}")
    writer = WRITERS[fmt]
    if not (np.isfinite(rate) and 0 < rate <= 1000):
        raise ValueError(f"--rate must be in (0, 1000] Hz, got {rate}")
    if writer.rates is not None and not writer.rates[0] <= rate <= writer.rates[1]:
        raise ValueError(f"{fmt} needs a rate of {writer.rates[0]:g}-{writer.rates[1]:g} Hz, got {rate:g}")
    out = Path(out)
    if out.exists() and not force:
        raise FileExistsError(f"{out}: exists (use --force to overwrite)")
    mf = load_motion_file(motion_path)
    x, spec, fps = mf.realisation(sample), mf.spec.name, mf.fps
    lmap = LinearMap.load(map_path) if map_path is not None else None
    p = prepare(x, fps, rate, profile if writer.robot else None, spec=spec, linear_map=lmap)
    writer.write(out, p, force)
    return {"format": fmt, "out": str(out), "frames": len(p.times), "rate": rate, "spec": spec, "sample": sample or 0,
            "profile": p.profile.name if p.profile else None, "duration_s": float(p.times[-1])}  # fmt: skip


def _read_text(path: Path) -> str:
    if not path.exists():
        raise RealmInputError(path, "file not found")
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise RealmInputError(path, f"unreadable ({type(e).__name__})") from None
