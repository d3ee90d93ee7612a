"""Physical simulation of a robot face: does the robot track the commands it is sent?

A MuJoCo model is generated from a :class:`~realm.embodiment.profile.RobotProfile`:

* every ``joint`` control (head, neck, jaw, gaze; degrees) is a hinge joint, every ``face``
  control (0..1) a slide joint carrying a small mass; the joint range is the control's limits;
* the bodies form a head: ``neck_*`` joints chained from a fixed base, then ``head_*``, then
  the head itself carrying the jaw, the eyes (``gaze_*``) and the face slides;
* each joint has a position actuator whose ``gear`` makes its control and its length the
  control's own unit (degrees for hinges; 1 unit = 1 cm of slide for face controls), so
  ``ctrlrange`` is exactly the control's limits;
* actuator stiffness ``kp``, damping ``kv`` and joint damping are chosen from the effective
  inertia of each joint (measured on the compiled model at the neutral pose) so that the
  command-to-position response is second order with poles at ``1/tau1`` and ``1/tau2``,
  ``tau2 = tau1 / POLE_RATIO`` and ``tau1 + tau2 = lag_s``: a first-order lag of ``lag_s``
  (its mean delay is exactly ``lag_s``) without an instantaneous jump;
* gravity and contacts are off (a real robot's controllers compensate gravity; its parts do
  not collide in the ranges of its profile);
* the transport delay is a command buffer: the command applied at physics time ``t`` is the
  one issued at ``t - delay_s``, held between frames (zero-order hold).

Physics needs no GL. :func:`simulate` follows a ``(T, n_controls)`` command trajectory at its
fps and :func:`sim_metrics` reports, per control and overall:

* ``rmse``: tracking RMSE between command (clamped to the limits, which is all the robot can
  reach) and simulated position, in the control's unit, and ``rmse_norm`` divided by the range;
* ``lag_ms``: the peak of the cross-correlation between commanded and simulated velocity;
* ``limit_saturation_pct``: frames whose command is at or beyond a limit (within 0.1 % of the
  range); a limit that is also the control's neutral (a face control resting at 0) is not
  counted, resting there is not saturation;
* ``rate_saturation_pct``: frame steps whose commanded speed is at or over ``max_vel``
  (0.1 % tolerance: a velocity limiter holding the speed at the limit counts);
* ``jerk_ms``: mean squared jerk (third difference at the frame rate) of the simulated and of
  the commanded trajectory, in ``unit^2/s^6``, and ``jerk_ms_norm`` divided by the range squared.

Overall values: RMSE in degrees over joint controls, in 0..1 units over face controls, and
range-normalised over all; lag from the summed cross-correlation of all moving controls;
saturation over all control-frames; jerk range-normalised averaged over controls.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from realm.embodiment.profile import RobotProfile, load_profile

POLE_RATIO = 8.0  # fast pole / slow pole of each joint's response
PHYSICS_DT = 0.001  # s
FACE_GEAR = 100.0  # face control units per metre of slide (1.0 = 1 cm)
HINGE_GEAR = 180.0 / math.pi  # degrees per radian
HINGE_ARMATURE = 0.02  # kg m^2, reflected motor inertia of a hinge
SLIDE_ARMATURE = 0.02  # kg, reflected inertia of a face slide
FACE_MASS = 0.005  # kg per face slide body
METRIC_KEYS = ("rmse_deg", "rmse_face", "rmse_norm", "lag_ms", "limit_saturation_pct",
               "rate_saturation_pct", "jerk_ms_norm", "jerk_ms_norm_command")  # fmt: skip
CONTROL_KEYS = ("unit", "rmse", "rmse_norm", "lag_ms", "limit_saturation_pct", "rate_saturation_pct",
                "jerk_ms", "jerk_ms_norm", "jerk_ms_command")  # fmt: skip


# ---------------------------------------------------------------- model


def _hinge_axis(name: str) -> str:
    if "yaw" in name or "phi" in name:
        return "0 0 1"
    if "roll" in name:
        return "1 0 0"
    return "0 1 0"  # pitch, theta, anything else


def _slide_axis(name: str) -> str:
    if "stretch" in name:
        return "0 1 0"
    if "curl" in name or "wrinkle" in name:
        return "1 0 0"
    if "depress" in name or "lower" in name:
        return "0 0 -1"
    return "0 0 1"  # raise, brow, upper eyelid


def _time_constants(lag_s: float, dt: float) -> tuple[float, float]:
    """(tau1, tau2) with tau1 + tau2 = lag_s and tau1 = POLE_RATIO * tau2 (lag_s floored at 10 dt)."""
    lag = max(lag_s, 10 * dt)
    tau2 = lag / (POLE_RATIO + 1)
    return lag - tau2, tau2


def build_mjcf(profile: RobotProfile | str, dt: float = PHYSICS_DT, inertia: dict[str, float] | None = None) -> str:
    """The MJCF (XML text) of ``profile``'s head; see the module docstring for its structure.

    ``inertia`` (joint-space effective inertia per control) sets the gains; without it the model
    is compiled once to measure it at the neutral pose, then generated again.
    """
    profile = load_profile(profile)
    if inertia is None:
        import mujoco

        draft = mujoco.MjModel.from_xml_string(build_mjcf(profile, dt, inertia={}))
        data = mujoco.MjData(draft)
        _set_state(draft, data, profile, profile.neutral_vector())
        mujoco.mj_forward(draft, data)
        full = np.zeros((draft.nv, draft.nv))
        mujoco.mj_fullM(draft, data, full)  # MuJoCo 4 signature (m, d, dst)
        inertia = {c.name: float(full[d, d]) for c in profile.controls for d in [draft.joint(c.name).dofadr[0]]}
    tau1, tau2 = _time_constants(profile.lag_s, dt)
    a, b = 1.0 / tau1, 1.0 / tau2

    neck = [c for c in profile.controls if c.kind == "joint" and c.name.startswith("neck")]
    head = [c for c in profile.controls if c.kind == "joint" and c.name.startswith("head")]
    gaze = [c for c in profile.controls if c.kind == "joint" and c.name.startswith(("gaze", "eye"))]
    jaw = [c for c in profile.controls if c.kind == "joint" and c.name.startswith("jaw")]
    other = [c for c in profile.controls if c.kind == "joint" and c not in neck + head + gaze + jaw]
    face = [c for c in profile.controls if c.kind == "face"]

    def joint_xml(c, indent: str) -> str:
        hinge = c.kind == "joint"
        gear = HINGE_GEAR if hinge else FACE_GEAR
        armature = HINGE_ARMATURE if hinge else SLIDE_ARMATURE
        # joint-space m q'' + B q' + K q = K u with poles a, b; 10 % of B is joint damping
        m = inertia.get(c.name, armature)
        damping = 0.1 * m * (a + b)
        lo, hi = c.lo / gear, c.hi / gear
        rng = f"{math.degrees(lo):.6g} {math.degrees(hi):.6g}" if hinge else f"{lo:.6g} {hi:.6g}"
        kind = "hinge" if hinge else "slide"
        axis = _hinge_axis(c.name) if hinge else _slide_axis(c.name)
        return (f'{indent}<joint name="{c.name}" type="{kind}" axis="{axis}" range="{rng}" limited="true" '
                f'armature="{armature:g}" damping="{damping:.6g}"/>\n')  # fmt: skip

    actuators = []
    for c in profile.controls:
        hinge = c.kind == "joint"
        gear = HINGE_GEAR if hinge else FACE_GEAR
        m = inertia.get(c.name, HINGE_ARMATURE if hinge else SLIDE_ARMATURE)
        kp = m * a * b / gear**2  # in actuator (control) units
        kv = 0.9 * m * (a + b) / gear**2
        actuators.append(f'    <position name="{c.name}" joint="{c.name}" gear="{gear:.9g}" kp="{kp:.6g}" '
                         f'kv="{kv:.6g}" ctrlrange="{c.lo:g} {c.hi:g}" ctrllimited="true"/>')  # fmt: skip

    lines = [
        f'<mujoco model="{profile.name}">',
        f"  <!-- generated by realm.embodiment.sim from profile {profile.name}: lag {profile.lag_s} s "
        f"(poles {tau1 * 1000:.1f} + {tau2 * 1000:.1f} ms), transport delay {profile.delay_s} s "
        "(applied by the simulator's command buffer). Hinge ranges in degrees; actuator ctrl in the "
        "control's unit (degrees, or 0..1 for face slides at 1 cm per unit). -->",
        '  <compiler angle="degree"/>',
        f'  <option timestep="{dt:.9g}" integrator="implicitfast" gravity="0 0 0">',
        '    <flag contact="disable"/>',  # self-collision is the robot maker's business, not ours
        "  </option>",
        "  <visual><global offwidth=\"640\" offheight=\"480\"/></visual>",
        "  <asset>",
        '    <material name="skin" rgba="0.85 0.75 0.68 1"/>',
        '    <material name="metal" rgba="0.55 0.57 0.6 1"/>',
        '    <material name="eye" rgba="0.95 0.95 0.95 1"/>',
        '    <material name="face" rgba="0.8 0.3 0.3 1"/>',
        "  </asset>",
        "  <worldbody>",
        '    <light pos="0.6 0 0.8" dir="-0.6 0 -0.5"/>',
        '    <camera name="front" pos="0.55 0 0.3" xyaxes="0 1 0 -0.05 0 1" fovy="40"/>',
        '    <body name="base" pos="0 0 0">',
        '      <geom type="cylinder" size="0.07 0.03" material="metal" mass="2"/>',
    ]
    depth = 3
    z = 0.05
    for c in neck:  # neck links, 4 cm apart
        ind = "  " * depth
        lines.append(f'{ind}<body name="link_{c.name}" pos="0 0 {z:g}">')
        lines.append(joint_xml(c, ind + "  ").rstrip("\n"))
        lines.append(f'{ind}  <geom type="capsule" fromto="0 0 0 0 0 0.04" size="0.025" material="metal" mass="0.2"/>')
        depth += 1
        z = 0.04
    for c in head:  # head joints share one point, the head's pivot
        ind = "  " * depth
        lines.append(f'{ind}<body name="link_{c.name}" pos="0 0 {z:g}">')
        lines.append(joint_xml(c, ind + "  ").rstrip("\n"))
        lines.append(f'{ind}  <geom type="sphere" size="0.02" material="metal" mass="0.05"/>')
        depth += 1
        z = 0.0
    ind = "  " * depth
    lines.append(f'{ind}<body name="head" pos="0 0 {z + 0.02:g}">')
    lines.append(f'{ind}  <geom type="ellipsoid" pos="0.01 0 0.11" size="0.085 0.075 0.11" material="skin" mass="1.5"/>')
    hd = ind + "  "
    if jaw:
        lines.append(f'{hd}<body name="jaw" pos="0.02 0 0.05">')
        for c in jaw:
            lines.append(joint_xml(c, hd + "  ").rstrip("\n"))
        lines.append(f'{hd}  <geom type="box" pos="0.05 0 -0.02" size="0.04 0.05 0.012" material="skin" mass="0.2"/>')
        lines.append(f"{hd}</body>")
    if gaze:
        lines.append(f'{hd}<body name="eyes" pos="0.075 0 0.14">')
        for c in gaze:
            lines.append(joint_xml(c, hd + "  ").rstrip("\n"))
        for side in (0.032, -0.032):
            lines.append(f'{hd}  <geom type="sphere" pos="0 {side:g} 0" size="0.014" material="eye" mass="0.01"/>')
            lines.append(f'{hd}  <geom type="sphere" pos="0.012 {side:g} 0" size="0.006" rgba="0.1 0.1 0.1 1" '
                         'mass="0.001"/>')  # fmt: skip
        lines.append(f"{hd}</body>")
    for k, c in enumerate(other):
        lines.append(f'{hd}<body name="link_{c.name}" pos="0.06 0 {0.2 + 0.01 * k:g}">')
        lines.append(joint_xml(c, hd + "  ").rstrip("\n"))
        lines.append(f'{hd}  <geom type="box" size="0.01 0.01 0.005" material="metal" mass="0.01"/>')
        lines.append(f"{hd}</body>")
    for k, c in enumerate(face):  # face slides on a grid over the front of the head
        row, col = divmod(k, 6)
        y = (col - 2.5) * 0.022
        zf = 0.19 - row * 0.03
        lines.append(f'{hd}<body name="slide_{c.name}" pos="0.095 {y:.4g} {zf:.4g}">')
        lines.append(joint_xml(c, hd + "  ").rstrip("\n"))
        lines.append(f'{hd}  <geom type="sphere" size="0.006" material="face" mass="{FACE_MASS:g}" '
                     'contype="0" conaffinity="0"/>')  # fmt: skip
        lines.append(f"{hd}</body>")
    lines.append(f"{ind}</body>")
    for d in range(depth - 1, 2, -1):
        lines.append("  " * d + "</body>")
    lines.append("    </body>")
    lines += ["  </worldbody>", "  <actuator>",
              *actuators, "  </actuator>", "</mujoco>"]  # fmt: skip
    return "\n".join(lines) + "\n"


def build_model(profile: RobotProfile | str, dt: float = PHYSICS_DT):
    """The compiled ``mujoco.MjModel`` of :func:`build_mjcf`."""
    import mujoco

    return mujoco.MjModel.from_xml_string(build_mjcf(profile, dt))


def _set_state(model, data, profile: RobotProfile, values: np.ndarray) -> None:
    """Put every joint at ``values`` (control units), at rest."""
    for c, v in zip(profile.controls, values, strict=True):
        gear = HINGE_GEAR if c.kind == "joint" else FACE_GEAR
        j = model.joint(c.name)
        data.qpos[j.qposadr[0]] = v / gear
    data.qvel[:] = 0.0
    data.ctrl[:] = values


# ---------------------------------------------------------------- simulation


@dataclass
class SimRun:
    """The commands sent (T, n) and the positions the simulated robot reached (T, n) at ``fps``."""

    profile: RobotProfile
    commands: np.ndarray
    simulated: np.ndarray
    fps: float
    dt: float  # physics time step (s), a whole fraction of the frame period
    delay: float  # transport delay applied (s): the profile's, rounded to a physics step
    nonfinite: int = 0  # non-finite command values replaced by the previous command


def simulate(profile: RobotProfile | str, commands: np.ndarray, fps: float, dt: float = PHYSICS_DT) -> SimRun:
    """Follow ``commands`` (T, n_controls), issued at ``fps``, with the physical model.

    The robot starts at rest at the first command (clamped to the limits). Non-finite values
    hold the previous command (the neutral for the first frame) and are counted. Returns the
    simulated position of every control at every frame time, in the control's unit.
    """
    import mujoco

    profile = load_profile(profile)
    cmd = np.array(commands, dtype=np.float64)
    if cmd.ndim != 2 or cmd.shape[1] != profile.n:
        raise ValueError(f"commands must be (T, {profile.n}) for profile {profile.name}, got {cmd.shape}")
    if len(cmd) < 2:
        raise ValueError("need at least two command frames to simulate")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    bad = ~np.isfinite(cmd)
    nonfinite = int(bad.sum())
    if nonfinite:
        prev = profile.neutral_vector()
        for t in range(len(cmd)):
            cmd[t] = np.where(bad[t], prev, cmd[t])
            prev = cmd[t]
    substeps = max(1, int(round(1.0 / (fps * dt))))
    dt = 1.0 / (fps * substeps)  # a whole number of physics steps per frame: samples without jitter
    model = build_model(profile, dt)
    data = mujoco.MjData(model)
    lo, hi = profile.lo_hi()
    _set_state(model, data, profile, np.clip(cmd[0], lo, hi))
    mujoco.mj_forward(model, data)

    T = len(cmd)
    frame_step = np.arange(T, dtype=np.int64) * substeps  # physics step of frame k's time
    # Command buffer: the command applied at step i is frame floor((i*dt - delay) * fps), the first
    # before that. It changes at these steps:
    delay_steps = int(round(profile.delay_s / dt))
    change = frame_step[1:] + delay_steps
    events = np.unique(np.concatenate([frame_step, change]))
    sim = np.empty_like(cmd)
    applied = 0  # index of the command in the actuators
    step = 0
    k_out = 0
    change_list = change.tolist()
    for ev in events.tolist():
        if ev > step:
            mujoco.mj_step(model, data, nstep=ev - step)
            step = ev
        while k_out < T and frame_step[k_out] == step:
            sim[k_out] = data.actuator_length
            k_out += 1
        while applied + 1 < T and change_list[applied] <= step:
            applied += 1
            data.ctrl[:] = cmd[applied]  # MuJoCo clamps ctrl to ctrlrange (the limits)
        if k_out >= T:
            break
    return SimRun(profile, cmd, sim, float(fps), dt, delay_steps * dt, nonfinite)


# ---------------------------------------------------------------- metrics


def _xcorr_lag(cmd: np.ndarray, sim: np.ndarray, fps: float, max_lag_s: float) -> float | None:
    """Lag (s) maximising the cross-correlation of commanded and simulated velocities, summed over columns.

    ``cmd`` and ``sim`` are (T, k) (range-normalised when columns have different units, so each
    column weighs by how much it moves); lags 0..``max_lag_s``, refined by a parabola through the
    peak. None when nothing moves.
    """
    vc, vs = np.diff(cmd, axis=0), np.diff(sim, axis=0)
    vc = vc - vc.mean(0)
    vs = vs - vs.mean(0)
    if not (np.abs(vc).max(initial=0) > 1e-12 and np.abs(vs).max(initial=0) > 1e-12):
        return None
    max_lag = min(int(math.ceil(max_lag_s * fps)), len(vc) - 2)
    if max_lag < 1:
        return None
    score = np.array([(vc[: len(vc) - L] * vs[L:]).sum() / (len(vc) - L) for L in range(max_lag + 1)])
    k = int(np.argmax(score))
    shift = 0.0
    if 0 < k < max_lag:
        y0, y1, y2 = score[k - 1], score[k], score[k + 1]
        den = y0 - 2 * y1 + y2
        shift = 0.5 * (y0 - y2) / den if den < 0 else 0.0
    return (k + shift) / fps


def sim_metrics(run: SimRun, max_lag_s: float = 0.5) -> dict:
    """Tracking, lag, saturation and jerk metrics of a :class:`SimRun` (see the module docstring)."""
    p = run.profile
    lo, hi = p.lo_hi()
    rng = np.maximum(hi - lo, 1e-9)
    neutral = p.neutral_vector()
    cmd, sim, fps = run.commands, run.simulated, run.fps
    target = np.clip(cmd, lo, hi)
    err = sim - target
    tol = 1e-3 * rng
    at_lo = (cmd <= lo + tol) & ~np.isclose(neutral, lo)
    at_hi = (cmd >= hi - tol) & ~np.isclose(neutral, hi)
    limit_sat = at_lo | at_hi
    speed = np.abs(np.diff(cmd, axis=0)) * fps
    rate_sat = speed >= p.max_vel_vector() * (1 - 1e-3)
    jerk = np.diff(sim, n=3, axis=0) * fps**3 if len(sim) > 3 else np.zeros((0, p.n))
    jerk_cmd = np.diff(target, n=3, axis=0) * fps**3 if len(sim) > 3 else np.zeros((0, p.n))

    def ms(x):
        return (x**2).mean(0) if len(x) else np.zeros(p.n)

    rmse = np.sqrt((err**2).mean(0))
    jms, jms_cmd = ms(jerk), ms(jerk_cmd)
    controls = {}
    for i, c in enumerate(p.controls):
        lag = _xcorr_lag(target[:, i : i + 1], sim[:, i : i + 1], fps, max_lag_s)
        controls[c.name] = {
            "unit": c.unit,
            "rmse": float(rmse[i]),
            "rmse_norm": float(rmse[i] / rng[i]),
            "lag_ms": None if lag is None else float(1000 * lag),
            "limit_saturation_pct": 100 * float(limit_sat[:, i].mean()),
            "rate_saturation_pct": 100 * float(rate_sat[:, i].mean()) if len(speed) else 0.0,
            "jerk_ms": float(jms[i]),
            "jerk_ms_norm": float(jms[i] / rng[i] ** 2),
            "jerk_ms_command": float(jms_cmd[i]),
        }
    joint = p.joint_mask()
    lag = _xcorr_lag(target / rng, sim / rng, fps, max_lag_s)

    def rms(mask) -> float | None:
        return float(np.sqrt((err[:, mask] ** 2).mean())) if mask.any() else None

    overall = {
        "rmse_deg": rms(joint),
        "rmse_face": rms(~joint),
        "rmse_norm": float(np.sqrt(((err / rng) ** 2).mean())),
        "lag_ms": None if lag is None else float(1000 * lag),
        "limit_saturation_pct": 100 * float(limit_sat.mean()),
        "rate_saturation_pct": 100 * float(rate_sat.mean()) if len(speed) else 0.0,
        "jerk_ms_norm": float((jms / rng**2).mean()),
        "jerk_ms_norm_command": float((jms_cmd / rng**2).mean()),
    }
    return {
        "profile": p.name,
        "fps": fps,
        "frames": int(len(cmd)),
        "duration_s": len(cmd) / fps,
        "physics_dt_s": run.dt,
        "applied_delay_s": run.delay,
        "profile_lag_s": p.lag_s,
        "profile_delay_s": p.delay_s,
        "nonfinite_commands": run.nonfinite,
        "overall": overall,
        "controls": controls,
    }


# ---------------------------------------------------------------- outputs


def plot_tracking(run: SimRun, path: str | Path, n: int = 4, names: list[str] | None = None) -> list[str]:
    """Command vs simulated position for ``names`` (default: the ``n`` most active controls) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = run.profile
    lo, hi = p.lo_hi()
    if names is None:  # the most active joint and face controls, half and half where both exist
        activity = np.std(run.commands, axis=0) / np.maximum(hi - lo, 1e-9)
        order = np.argsort(-activity, kind="stable")
        joint = p.joint_mask()
        picked = [i for i in order if joint[i]][: (n + 1) // 2] + [i for i in order if not joint[i]][: n // 2]
        picked += [i for i in order if i not in picked][: max(0, n - len(picked))]
        names = [p.names[i] for i in order if i in picked]
    t = np.arange(len(run.commands)) / run.fps
    fig, axes = plt.subplots(len(names), 1, figsize=(9, 1.9 * len(names) + 0.6), sharex=True, squeeze=False)
    for ax, name in zip(axes[:, 0], names, strict=True):
        i = p.index(name)
        ax.plot(t, run.commands[:, i], lw=1.0, label="command")
        ax.plot(t, run.simulated[:, i], lw=1.0, label="simulated")
        for lim in (lo[i], hi[i]):
            ax.axhline(lim, color="0.6", lw=0.6, ls="--")
        ax.set_ylabel(f"{name}\n({p.controls[i].unit})", fontsize=8)
    axes[0, 0].legend(loc="upper right", fontsize=8)
    axes[-1, 0].set_xlabel("time (s)")
    fig.suptitle(f"{p.name}: command vs simulated (lag {p.lag_s * 1000:.0f} ms, delay {p.delay_s * 1000:.0f} ms)",
                 fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return names


def write_sim(run: SimRun, out_dir: str | Path, extra: dict | None = None, force: bool = False) -> dict:
    """Write ``metrics.json``, ``tracking.png``, ``model.xml`` and ``trajectories.npz`` to ``out_dir``.

    ``extra`` entries (e.g. the motion file, whether the safety layer was applied) are added to the
    metrics. The directory appears complete or not at all; an existing one needs ``force``.
    """
    import json

    from realm.io import atomic_dir

    metrics = {**(extra or {}), **sim_metrics(run)}
    with atomic_dir(out_dir, force=force) as tmp:
        metrics["plotted"] = plot_tracking(run, tmp / "tracking.png")
        (tmp / "model.xml").write_text(build_mjcf(run.profile, run.dt))
        with open(tmp / "trajectories.npz", "wb") as f:
            np.savez_compressed(f, commands=run.commands, simulated=run.simulated, fps=np.array(run.fps),
                                names=np.array(run.profile.names))  # fmt: skip
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


# ---------------------------------------------------------------- from a motion file

SAFETY_DESCRIPTION = ("realm.embodiment.safety.SafetyLayer: One-Euro filter, ramp-in, position and coupled "
                      "limits, velocity/acceleration limits")  # fmt: skip


def commands_from_motion(
    motion: np.ndarray, fps: float, profile: RobotProfile | str, rate: float | None = None, spec: str = "arkit58",
    linear_map=None, safety: bool = True,
) -> tuple[np.ndarray, float]:  # fmt: skip
    """Motion (T, D) at ``fps`` -> (commands (T', n), rate): resampled to ``rate`` (default the profile's),
    retargeted, and passed through the safety layer unless ``safety=False`` (raw retargeted commands)."""
    from realm.embodiment.controls import ControlPipeline, resample

    profile = load_profile(profile)
    rate = float(rate or profile.rate_hz)
    pipe = ControlPipeline(profile, spec, linear_map, rate, safety=safety)
    return pipe.run(resample(motion, fps, rate)[1]), rate


def simulate_motion_file(
    motion_path: str | Path, out_dir: str | Path, profile: RobotProfile | str = "ameca", rate: float | None = None,
    safety: bool = True, map_path: str | Path | None = None, force: bool = False, sample: int | None = None,
) -> dict:  # fmt: skip
    """Read a motion file, retarget realisation ``sample`` of it (through the safety layer unless
    ``safety=False``; None only for a one-sample file), simulate it and write the outputs of
    :func:`write_sim` to ``out_dir``; returns the metrics."""
    from realm.embodiment.retarget import LinearMap
    from realm.motion import load_motion_file

    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise FileExistsError(f"{out_dir}: exists (use --force to overwrite)")
    profile = load_profile(profile)
    mf = load_motion_file(motion_path)
    x, spec, fps = mf.realisation(sample), mf.spec.name, mf.fps
    lmap = LinearMap.load(map_path) if map_path is not None else None
    cmd, rate = commands_from_motion(x, fps, profile, rate, spec=spec, linear_map=lmap, safety=safety)
    run = simulate(profile, cmd, rate)
    extra = {
        "motion": str(motion_path),
        "spec": spec,
        "motion_fps": fps,
        "safety_applied": bool(safety),
        "safety": SAFETY_DESCRIPTION if safety else "none: raw retargeted commands (clamped by the actuators only)",
    }
    return write_sim(run, out_dir, extra=extra, force=force)


# ---------------------------------------------------------------- optional rendering


_RENDER_SCRIPT = """
import sys, numpy as np, mujoco
from realm.embodiment.sim import build_model, _set_state
from realm.embodiment.profile import load_profile
profile = load_profile(sys.argv[1])
traj = np.load(sys.argv[2])
model = build_model(profile)
data = mujoco.MjData(model)
r = mujoco.Renderer(model, 240, 320)
fps, sim = float(traj["fps"]), traj["simulated"]
every = max(1, int(round(fps / 10)))
frames = []
for k in range(0, len(sim), every):
    _set_state(model, data, profile, sim[k])
    mujoco.mj_forward(model, data)
    r.update_scene(data, camera="front")
    frames.append(r.render().copy())
frames = np.stack(frames)
np.save(sys.argv[3], frames)
import matplotlib.image
pick = np.linspace(0, len(frames) - 1, min(6, len(frames))).round().astype(int)
matplotlib.image.imsave(sys.argv[3].rsplit(".", 1)[0] + ".png", np.concatenate(list(frames[pick]), axis=1))
"""


def render_frames(profile: RobotProfile | str, trajectories: str | Path, out_npy: str | Path,
                  timeout_s: float = 120.0) -> str | None:  # fmt: skip
    """Render the simulated head (10 fps, front camera, 320x240) into ``out_npy`` (frames, H, W, 3) and a
    strip of six frames beside it (same name, ``.png``); None on success, else why not.

    Tries ``MUJOCO_GL=egl`` then ``osmesa`` (unless ``MUJOCO_GL`` is set), each in a subprocess so
    a GL failure cannot take this process down.
    """
    profile = load_profile(profile)
    source = profile.source or profile.name
    backends = [os.environ["MUJOCO_GL"]] if os.environ.get("MUJOCO_GL") else ["egl", "osmesa"]
    why = []
    for gl in backends:
        env = {**os.environ, "MUJOCO_GL": gl, "PYOPENGL_PLATFORM": gl}
        try:
            r = subprocess.run([sys.executable, "-c", _RENDER_SCRIPT, source, str(trajectories), str(out_npy)],
                               env=env, capture_output=True, text=True, timeout=timeout_s)  # fmt: skip
        except subprocess.TimeoutExpired:
            why.append(f"{gl}: timed out")
            continue
        if r.returncode == 0 and Path(out_npy).exists():
            return None
        last = (r.stderr.strip().splitlines() or ["failed"])[-1]
        why.append(f"{gl}: {last[:160]}")
    return "; ".join(why)
