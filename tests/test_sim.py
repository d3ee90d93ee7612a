"""Physical simulation of robot profiles (realm.embodiment.sim) and `realm embody sim`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

mujoco = pytest.importorskip("mujoco")

from realm.cli import app  # noqa: E402
from realm.embodiment.profile import load_profile  # noqa: E402
from realm.embodiment.sim import (  # noqa: E402
    CONTROL_KEYS,
    METRIC_KEYS,
    build_mjcf,
    build_model,
    sim_metrics,
    simulate,
    simulate_motion_file,
)
from realm.motion import SPECS  # noqa: E402


@pytest.mark.parametrize("name", ["ameca", "neck3"])
def test_mjcf_builds_from_profile(name):
    p = load_profile(name)
    xml = build_mjcf(p)
    assert "<mujoco" in xml and "position" in xml
    m = build_model(p)
    assert m.njnt == p.n and m.nu == p.n
    for c in p.controls:
        j = m.joint(c.name)
        a = m.actuator(c.name)
        if c.kind == "joint":
            assert j.type[0] == mujoco.mjtJoint.mjJNT_HINGE
            np.testing.assert_allclose(np.degrees(j.range), [c.lo, c.hi], atol=1e-6)  # range in degrees
        else:
            assert j.type[0] == mujoco.mjtJoint.mjJNT_SLIDE
        np.testing.assert_allclose(a.ctrlrange, [c.lo, c.hi], atol=1e-9)  # ctrl in the control's unit
        assert a.gainprm[0] > 0 and j.damping[0] > 0


def test_tracks_slow_sine_on_head_yaw():
    """0.5 Hz, 20 deg sine on head yaw at 100 Hz: the tracking error is what a first-order lag of
    lag_s plus the transport delay plus half a frame of zero-order hold predicts (within 10 %),
    and every other control stays at its neutral."""
    p = load_profile("ameca")
    fps, f, amp = 100.0, 0.5, 20.0
    t = np.arange(int(5 * fps)) / fps
    cmd = np.tile(p.neutral_vector(), (len(t), 1))
    i = p.index("head_yaw")
    cmd[:, i] = amp * np.sin(2 * np.pi * f * t)
    run = simulate(p, cmd, fps)
    steady = slice(int(fps), None)  # after the start-up transient
    rmse = float(np.sqrt(np.mean((run.simulated[steady, i] - cmd[steady, i]) ** 2)))
    w = 2 * np.pi * f
    H = np.exp(-1j * w * (p.delay_s + 0.5 / fps)) / (1 + 1j * w * p.lag_s)
    expected = amp * abs(1 - H) / math.sqrt(2)  # 5.0 deg for lag 60 ms, delay 50 ms
    assert abs(rmse - expected) < 0.1 * expected, (rmse, expected)
    # shifted by the total delay the simulated head is the sine again, to within 0.5 deg
    shift = int(round((p.delay_s + p.lag_s + 0.5 / fps) * fps))
    assert np.sqrt(np.mean((run.simulated[steady, i][shift:] - cmd[steady, i][:-shift]) ** 2)) < 0.5
    others = np.delete(np.arange(p.n), i)
    assert np.abs(run.simulated[:, others] - cmd[:, others]).max() < 0.05


@pytest.mark.parametrize(("name", "control"), [("ameca", "head_yaw"), ("ameca", "neck_pitch"),
                                               ("ameca", "jaw_pitch"), ("neck3", "neck_roll")])  # fmt: skip
def test_step_response_lags_by_delay_plus_lag(name, control):
    """A step reaches 63.2 % after delay_s + lag_s (to within 5 ms), without overshoot."""
    p = load_profile(name)
    fps = 1000.0
    i = p.index(control)
    c = p.controls[i]
    cmd = np.tile(p.neutral_vector(), (600, 1))
    amp = 0.3 * (c.hi - c.lo) * (1 if c.neutral + 0.3 * (c.hi - c.lo) <= c.hi else -1)
    cmd[100:, i] += amp
    run = simulate(p, cmd, fps)
    y = (run.simulated[:, i] - c.neutral) / amp
    t63 = (np.argmax(y >= 1 - math.exp(-1)) - 100) / fps
    assert abs(t63 - (p.delay_s + p.lag_s)) < 0.005, t63
    assert y[: 100 + int(p.delay_s * fps) - 1].max() < 1e-3  # nothing moves before the delay
    assert y.max() < 1.01 and abs(y[-1] - 1) < 0.01


def test_metrics_saturation_and_lag():
    p = load_profile("neck3")
    fps = 30.0
    T = 300
    t = np.arange(T) / fps
    cmd = np.zeros((T, 3))
    cmd[:, 0] = 40.0  # far over neck_pitch's hi of 25: saturated all the time
    cmd[:, 1] = 30 * np.sin(2 * np.pi * 0.4 * t)  # peak speed 75 deg/s < 120: never rate-saturated
    cmd[:, 2] = np.where(np.arange(T) % 20 < 10, -10.0, 10.0)  # square wave: 20 deg jumps = 600 deg/s > 60
    run = simulate(p, cmd, fps)
    m = sim_metrics(run)
    c = m["controls"]
    assert c["neck_pitch"]["limit_saturation_pct"] == 100.0
    assert c["neck_pitch"]["rmse"] < 0.5  # tracked against the clamped command: it sits at the limit
    assert c["neck_yaw"]["limit_saturation_pct"] == 0.0 and c["neck_yaw"]["rate_saturation_pct"] == 0.0
    assert c["neck_roll"]["rate_saturation_pct"] == pytest.approx(100 * (T // 10 - 1) / (T - 1))
    assert c["neck_pitch"]["lag_ms"] is None  # it never moves
    # the sine's lag: the low-frequency group delay, delay + lag + half a frame (127 ms)
    assert abs(c["neck_yaw"]["lag_ms"] - 1000 * (p.delay_s + p.lag_s + 0.5 / fps)) < 15
    assert m["overall"]["limit_saturation_pct"] == pytest.approx(100 / 3)
    assert c["neck_roll"]["jerk_ms"] > 100 * c["neck_yaw"]["jerk_ms"]


def test_nonfinite_commands_hold_previous():
    p = load_profile("neck3")
    cmd = np.zeros((60, 3))
    cmd[20:, 1] = 10.0
    cmd[30:35, 1] = np.nan
    run = simulate(p, cmd, 30.0)
    assert run.nonfinite == 5 and np.all(np.isfinite(run.simulated))
    assert np.all(run.commands[30:35, 1] == 10.0)


def _arkit_motion(path, T=90, fps=30.0):
    """A small arkit58 .npz like `realm generate` writes: a nod, a smile and a jaw opening."""
    spec = SPECS["arkit58"]
    t = np.arange(T) / fps
    x = np.zeros((T, spec.dim), np.float32)
    x[:, spec.channel("rotation.pitch")] = 0.15 * np.sin(2 * np.pi * 0.7 * t)
    x[:, spec.channel("mouthSmileLeft")] = 0.5 + 0.4 * np.sin(2 * np.pi * 0.5 * t)
    x[:, spec.channel("jawOpen")] = 0.9 * (t > 1.5)  # a jump: safety layer rate-limits it
    np.savez(path, listener=x[None], spec=np.array("arkit58"), fps=np.array(fps))
    return path


def test_metrics_json_has_documented_keys(tmp_path):
    motion = _arkit_motion(tmp_path / "m.npz")
    m = simulate_motion_file(motion, tmp_path / "sim", profile="ameca")
    on_disk = json.loads((tmp_path / "sim" / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(m))
    for k in ("profile", "fps", "frames", "duration_s", "physics_dt_s", "applied_delay_s", "profile_lag_s",
              "profile_delay_s", "safety_applied", "safety", "motion", "spec", "overall", "controls", "plotted"):
        assert k in on_disk, k
    assert set(on_disk["overall"]) == set(METRIC_KEYS)
    assert set(on_disk["controls"]) == set(load_profile("ameca").names)
    assert all(set(v) == set(CONTROL_KEYS) for v in on_disk["controls"].values())
    assert on_disk["safety_applied"] is True and on_disk["frames"] == 90
    for f in ("tracking.png", "model.xml", "trajectories.npz"):
        assert (tmp_path / "sim" / f).stat().st_size > 0
    assert on_disk["overall"]["rate_saturation_pct"] <= 5.0
    raw = simulate_motion_file(motion, tmp_path / "raw", profile="ameca", safety=False)
    assert raw["safety_applied"] is False and "none" in raw["safety"]
    # the unfiltered jaw jump: rate-saturated and much jerkier than through the safety layer
    assert raw["controls"]["jaw_pitch"]["rate_saturation_pct"] > 0
    assert raw["controls"]["jaw_pitch"]["jerk_ms_command"] > 10 * m["controls"]["jaw_pitch"]["jerk_ms_command"]
    with pytest.raises(FileExistsError):
        simulate_motion_file(motion, tmp_path / "sim", profile="ameca")


def test_cli_embody_sim(tmp_path):
    motion = _arkit_motion(tmp_path / "m.npz", T=45)
    runner = CliRunner()
    args = ["embody", "sim", "--motion", str(motion), "--profile", "neck3", "--out", str(tmp_path / "s")]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "safety on" in r.output and "lag" in r.output
    assert json.loads((tmp_path / "s" / "metrics.json").read_text())["profile"] == "neck3"
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and "exists" in r.output
    r = runner.invoke(app, [*args, "--force", "--no-safety"])
    assert r.exit_code == 0 and "safety OFF" in r.output
    r = runner.invoke(app, ["embody", "sim", "--motion", str(tmp_path / "nope.npz"), "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "not found" in r.output


def test_bench_embodiment_scores_and_tabulates(tmp_path):
    """benchmarks/bench_embodiment.py: per-motion scoring (raw and safe) and the markdown table."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_embodiment.py"
    spec = importlib.util.spec_from_file_location("bench_embodiment", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    with np.load(_arkit_motion(tmp_path / "m.npz", T=60)) as d:
        x = d["listener"][0]
    still = np.zeros_like(x)
    rows = {"moving": bench.mean_metrics([bench.score_motion(x, 30.0, load_profile("neck3"))]),
            "still": bench.mean_metrics([bench.score_motion(still, 30.0, load_profile("neck3"))])}  # fmt: skip
    assert set(rows["moving"]) == {"raw", "safe"} and set(rows["moving"]["safe"]) == set(METRIC_KEYS)
    assert rows["still"]["safe"]["rmse_deg"] < 1e-6 and rows["still"]["safe"]["lag_ms"] is None
    assert rows["moving"]["raw"]["jerk_ms_norm"] > rows["moving"]["safe"]["jerk_ms_norm"] > 0
    md = bench.table(rows).splitlines()
    assert md[0].startswith("| motion | RMSE deg") and len(md) == 4 and "| still |" in md[3] and "n/a" in md[3]


def test_render_or_one_line_reason(tmp_path):
    """Rendering works where EGL/OSMesa does (frames + strip); elsewhere it says why in one line."""
    from realm.embodiment.sim import render_frames, write_sim

    p = load_profile("neck3")
    cmd = np.zeros((6, 3))
    cmd[:, 1] = np.linspace(0, 20, 6)
    write_sim(simulate(p, cmd, 30.0), tmp_path / "s")
    why = render_frames(p, tmp_path / "s" / "trajectories.npz", tmp_path / "frames.npy", timeout_s=60)
    if why is None:
        frames = np.load(tmp_path / "frames.npy")
        assert frames.shape == (2, 240, 320, 3) and frames.std() > 0
        assert (tmp_path / "frames.png").stat().st_size > 0
    else:
        assert isinstance(why, str) and "\n" not in why and why
