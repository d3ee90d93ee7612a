"""Exports (Ameca JSONL, ROS 2 JointTrajectory, Live Link Face CSV, BVH): round trips and headers."""

import csv
import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from realm.cli import app
from realm.embodiment.export import (
    LIVELINK_HEADER,
    bvh_angles,
    parse_timecode,
    prepare,
    read_ameca_jsonl,
    read_bvh,
    read_livelink_csv,
    read_ros2_trajectory,
    resample,
    timecode,
    write_ameca_jsonl,
    write_bvh,
    write_livelink_csv,
    write_ros2_trajectory,
)
from realm.embodiment.safety import check_limits
from realm.errors import RealmInputError
from realm.motion import SPECS

runner = CliRunner()

#: Live Link Face's CSV header as the app writes it (public importers of its CSV files agree on it).
DOCUMENTED_LIVELINK_HEADER = (
    "Timecode,BlendShapeCount,EyeBlinkLeft,EyeLookDownLeft,EyeLookInLeft,EyeLookOutLeft,EyeLookUpLeft,"
    "EyeSquintLeft,EyeWideLeft,EyeBlinkRight,EyeLookDownRight,EyeLookInRight,EyeLookOutRight,EyeLookUpRight,"
    "EyeSquintRight,EyeWideRight,JawForward,JawRight,JawLeft,JawOpen,MouthClose,MouthFunnel,MouthPucker,"
    "MouthRight,MouthLeft,MouthSmileLeft,MouthSmileRight,MouthFrownLeft,MouthFrownRight,MouthDimpleLeft,"
    "MouthDimpleRight,MouthStretchLeft,MouthStretchRight,MouthRollLower,MouthRollUpper,MouthShrugLower,"
    "MouthShrugUpper,MouthPressLeft,MouthPressRight,MouthLowerDownLeft,MouthLowerDownRight,MouthUpperUpLeft,"
    "MouthUpperUpRight,BrowDownLeft,BrowDownRight,BrowInnerUp,BrowOuterUpLeft,BrowOuterUpRight,CheekPuff,"
    "CheekSquintLeft,CheekSquintRight,NoseSneerLeft,NoseSneerRight,TongueOut,HeadYaw,HeadPitch,HeadRoll,"
    "LeftEyeYaw,LeftEyePitch,LeftEyeRoll,RightEyeYaw,RightEyePitch,RightEyeRoll"
).split(",")


def listener_motion(T: int = 120, seed: int = 0) -> np.ndarray:
    """Plausible arkit58 listener motion: slow blendshape drifts and a nodding head."""
    rng = np.random.default_rng(seed)
    t = np.arange(T) / 30.0
    x = np.zeros((T, 58))
    x[:, :52] = np.clip(
        0.3 + 0.3 * np.sin(t[:, None] * rng.uniform(0.5, 3, 52) + rng.uniform(0, 6, 52)), 0, 1
    )
    x[:, 52] = 0.25 * np.sin(2 * np.pi * 0.8 * t)  # pitch (rad)
    x[:, 53] = 0.3 * np.sin(2 * np.pi * 0.3 * t)  # yaw
    x[:, 54] = 0.1 * np.sin(2 * np.pi * 0.5 * t)  # roll
    x[:, 55:] = rng.normal(0, 0.01, (T, 3))  # translation: no robot joint
    return x


@pytest.fixture
def motion_file(tmp_path):
    path = tmp_path / "listener.npz"
    np.savez(
        path,
        listener=listener_motion()[None].astype(np.float32),
        spec=np.array("arkit58"),
        fps=np.array(30.0),
    )
    return path


@pytest.mark.parametrize("profile", ["ameca", "neck3"])
def test_ameca_jsonl_round_trip(tmp_path, profile):
    p = prepare(listener_motion(), 30.0, 50.0, profile)
    write_ameca_jsonl(tmp_path / "a.jsonl", p.times, p.profile, p.controls)
    times, names, values = read_ameca_jsonl(tmp_path / "a.jsonl")
    assert names == p.profile.names
    assert np.allclose(times, p.times, atol=1e-6) and np.allclose(values, p.controls, atol=1e-6)
    first = json.loads((tmp_path / "a.jsonl").read_text().splitlines()[0])
    assert list(first) == ["time", *p.profile.names]
    v = check_limits(p.profile, values, 50.0)  # the file itself respects the limits (up to 1e-6 rounding)
    assert v["position"] <= 1e-6 and v["velocity"] <= 1e-3 and v["acceleration"] <= 0.05


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_ros2_trajectory_round_trip(tmp_path, suffix):
    p = prepare(listener_motion(), 30.0, 30.0, "ameca")
    path = tmp_path / f"traj{suffix}"
    write_ros2_trajectory(path, p.times, p.profile, p.controls)
    msg = json.loads(path.read_text()) if suffix == ".json" else yaml.safe_load(path.read_text())
    assert set(msg) == {"header", "joint_names", "points"}
    assert set(msg["header"]) == {"stamp", "frame_id"}
    pt = msg["points"][1]
    assert set(pt) == {"positions", "velocities", "accelerations", "effort", "time_from_start"}
    assert pt["time_from_start"] == {"sec": 0, "nanosec": 33333333}
    assert msg["points"][45]["time_from_start"] == {"sec": 1, "nanosec": 500000000}
    i = p.profile.index("head_pitch")
    assert pt["positions"][i] == pytest.approx(np.radians(p.controls[1, i]), abs=1e-9)  # radians for joints
    k = p.profile.index("lip_corner_raise_left")
    assert pt["positions"][k] == pytest.approx(p.controls[1, k], abs=1e-9)  # face controls stay 0..1
    back = read_ros2_trajectory(path, profile="ameca")
    assert back["joint_names"] == p.profile.names
    assert np.allclose(back["times"], p.times, atol=1e-9)
    assert np.allclose(back["positions"], p.controls, atol=1e-6)
    assert np.allclose(back["velocities"], np.gradient(p.controls, p.times, axis=0), atol=1e-5)


def test_livelink_csv_header_is_the_documented_one(tmp_path):
    assert list(LIVELINK_HEADER) == DOCUMENTED_LIVELINK_HEADER and len(LIVELINK_HEADER) == 2 + 52 + 9
    p = prepare(listener_motion(), 30.0, 60.0, None)
    write_livelink_csv(tmp_path / "f.csv", p.times, p.arkit, 60.0)
    rows = list(csv.reader((tmp_path / "f.csv").read_text().splitlines()))
    assert rows[0] == DOCUMENTED_LIVELINK_HEADER
    assert rows[1][:2] == ["00:00:00:00.000", "61"] and rows[61][0] == "00:00:01:00.000"
    assert rows[2][0] == "00:00:00:01.000"


def test_livelink_csv_round_trip_matches_columns_by_name(tmp_path):
    x = listener_motion()
    times, arkit = resample(x, 30.0, 30.0)
    write_livelink_csv(tmp_path / "f.csv", times, arkit, 30.0)
    back = read_livelink_csv(tmp_path / "f.csv")
    assert back["fps"] == 30.0
    assert np.allclose(back["times"], times, atol=1e-6)
    assert np.allclose(back["arkit"][:, :55], x[:, :55], atol=1e-6)  # blendshapes and head angles (rad)
    assert np.all(back["eyes"] == 0)
    # shuffle the columns: still read by name
    rows = list(csv.reader((tmp_path / "f.csv").read_text().splitlines()))
    order = list(range(len(rows[0])))[::-1]
    with open(tmp_path / "g.csv", "w", newline="") as f:
        csv.writer(f).writerows([[r[j] for j in order] for r in rows])
    again = read_livelink_csv(tmp_path / "g.csv", fps=30.0)
    assert np.allclose(again["arkit"], back["arkit"])


def test_livelink_csv_missing_columns_is_a_clear_error(tmp_path):
    (tmp_path / "x.csv").write_text("Timecode,BlendShapeCount,EyeBlinkLeft\n00:00:00:00.000,1,0.5\n")
    with pytest.raises(RealmInputError, match="x.csv: not a Live Link Face CSV: missing columns"):
        read_livelink_csv(tmp_path / "x.csv")


@pytest.mark.parametrize("fps", [24.0, 30.0, 60.0])
def test_timecode_round_trip(fps):
    for t in (0.0, 1 / fps, 0.5, 59.99, 3600 + 61.25, 7 / fps + 0.0004):
        tc = timecode(t, fps)
        assert len(tc.split(":")) == 4 and "." in tc
        assert parse_timecode(tc, fps) == pytest.approx(t, abs=1e-3 / fps + 1e-9)
    assert timecode(3723.5, 30.0) == "01:02:03:15.000"


@pytest.mark.parametrize("profile", ["ameca", "neck3"])
def test_bvh_round_trip(tmp_path, profile):
    p = prepare(listener_motion(), 30.0, 25.0, profile)
    angles = bvh_angles(p.profile, p.controls)
    write_bvh(tmp_path / "h.bvh", angles, 25.0)
    back = read_bvh(tmp_path / "h.bvh")
    assert back["channels"] == ["Neck.Zrotation", "Neck.Xrotation", "Neck.Yrotation",
                                "Head.Zrotation", "Head.Xrotation", "Head.Yrotation"]  # fmt: skip
    assert back["frame_time"] == pytest.approx(0.04)
    assert np.allclose(back["angles"], angles, atol=1e-6)
    pr = p.profile
    assert np.allclose(back["angles"][:, 1], p.controls[:, pr.index("neck_pitch")], atol=1e-6)  # degrees
    if profile == "ameca":
        assert np.allclose(back["angles"][:, 4], p.controls[:, pr.index("head_pitch")], atol=1e-6)


def test_resample_keeps_the_span_and_interpolates():
    x = np.arange(31, dtype=float)[:, None]  # 1 s at 30 fps
    t, y = resample(x, 30.0, 60.0)
    assert len(t) == 61 and t[-1] == pytest.approx(1.0)
    assert np.allclose(y[:, 0], t * 30)


def test_cli_export_every_format(tmp_path, motion_file):
    for fmt, name in [("ameca-jsonl", "a.jsonl"), ("ros2-trajectory", "r.yaml"), ("ros2-trajectory", "r.json"),
                      ("livelink-csv", "l.csv"), ("bvh", "h.bvh")]:  # fmt: skip
        out = tmp_path / name
        r = runner.invoke(app, ["export", "--motion", str(motion_file), "--format", fmt, "--out", str(out)])
        assert r.exit_code == 0, r.output
        assert out.exists() and "wrote 120 frames" in r.output
    r = runner.invoke(
        app, ["export", "--motion", str(motion_file), "--format", "bvh", "--out", str(tmp_path / "h.bvh")]
    )
    assert r.exit_code == 2 and "exists (use --force" in r.output
    r = runner.invoke(app, ["export", "--motion", str(motion_file), "--format", "bvh", "--out", str(tmp_path / "h.bvh"),
                            "--profile", "neck3", "--rate", "60", "--force"])  # fmt: skip
    assert r.exit_code == 0 and read_bvh(tmp_path / "h.bvh")["angles"].shape == (239, 6)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--format", "ameca-jsonl", "--rate", "100"], "needs a rate of 20-60 Hz"),
        (["--format", "fbx"], "unknown export format 'fbx'"),
        (["--format", "bvh", "--profile", "nope.yaml"], "nope.yaml: robot profile not found"),
    ],
)
def test_cli_export_errors_are_one_line(tmp_path, motion_file, args, message):
    r = runner.invoke(app, ["export", "--motion", str(motion_file), "--out", str(tmp_path / "o"), *args])
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output


def test_cli_export_rejects_bad_motion(tmp_path):
    bad = tmp_path / "bad.npz"
    x = listener_motion()
    x[3, 7] = np.nan
    np.savez(bad, listener=x, spec=np.array("arkit58"))
    r = runner.invoke(
        app, ["export", "--motion", str(bad), "--format", "bvh", "--out", str(tmp_path / "o.bvh")]
    )
    assert r.exit_code == 2 and "bad.npz: NaN/inf" in r.output
    r = runner.invoke(app, ["export", "--motion", str(tmp_path / "none.npz"), "--format", "bvh",
                            "--out", str(tmp_path / "o.bvh")])  # fmt: skip
    assert r.exit_code == 2 and "none.npz: motion file not found" in r.output
    assert not (tmp_path / "o.bvh").exists()


def test_a_multi_sample_file_needs_sample_and_exports_the_chosen_one(tmp_path):
    x = listener_motion().astype(np.float32)
    y = x.copy()
    y[:, -6] += 0.2  # sample 1 turns its head further (pitch, rad)
    path = tmp_path / "two.npz"
    np.savez(path, listener=np.stack([x, y]), spec=np.array("arkit58"), fps=np.array(30.0))
    r = runner.invoke(app, ["export", "--motion", str(path), "--format", "livelink-csv", "--out", str(tmp_path / "a.csv")])
    assert r.exit_code == 2 and "holds 2 samples: choose one with --sample 0..1" in r.output
    assert not (tmp_path / "a.csv").exists()
    outs = []
    for k in (0, 1):
        out = tmp_path / f"s{k}.csv"
        r = runner.invoke(app, ["export", "--motion", str(path), "--format", "livelink-csv", "--out", str(out), "--sample", str(k)])
        assert r.exit_code == 0, r.output
        outs.append(out.read_text())
    assert outs[0] != outs[1]
    r = runner.invoke(app, ["export", "--motion", str(path), "--format", "bvh", "--out", str(tmp_path / "b.bvh"), "--sample", "2"])
    assert r.exit_code == 2 and "sample 2 requested but the file holds 2" in r.output


def test_one_control_pipeline_streams_what_export_and_sim_write():
    """Frame by frame (serve) and whole trajectory (export, sim) give the same safe controls."""
    from realm.embodiment.controls import ControlPipeline
    from realm.embodiment.sim import commands_from_motion

    rng = np.random.default_rng(3)
    spec = SPECS["arkit58"]
    x = np.zeros((150, spec.dim))
    x[:, :52] = np.clip(np.cumsum(rng.normal(0, 0.05, (150, 52)), axis=0), 0, 1)
    x[:, 52:55] = np.cumsum(rng.normal(0, 0.02, (150, 3)), axis=0)  # drifts past the head's range: clamped
    whole = ControlPipeline("ameca", rate_hz=30.0).run(x)
    live = ControlPipeline("ameca", rate_hz=30.0)
    cuts = [0, 1, 17, 33, 80, 81, 150]
    streamed = np.concatenate([live.step(x[a:b], a / 30.0) for a, b in zip(cuts[:-1], cuts[1:], strict=True)])
    np.testing.assert_allclose(streamed, whole, atol=1e-9)
    np.testing.assert_allclose(prepare(x, 30.0, 30.0, "ameca").controls, whole, atol=1e-9)
    np.testing.assert_allclose(commands_from_motion(x, 30.0, "ameca", 30.0)[0], whole, atol=1e-9)
    assert np.abs(ControlPipeline(None).arkit(x)[:, 52:55]).max() <= np.radians(30) + 1e-9
    with pytest.raises(ValueError, match="needs a linear map to arkit58.*--map"):
        ControlPipeline("ameca", spec="flame56")


@pytest.mark.parametrize("fmt", ["ameca-jsonl", "ros2-trajectory", "livelink-csv", "bvh"])
def test_every_registered_format_writes_and_reads_back(fmt, tmp_path):
    """Each WRITERS entry: its writer's file read back by its reader (a new format must bring both)."""
    from realm.embodiment.export import FORMATS, WRITERS

    assert FORMATS == tuple(WRITERS) and fmt in WRITERS
    x = np.zeros((45, 58))
    x[:, 52] = np.linspace(0, 0.3, 45)  # a nod down
    f = WRITERS[fmt]
    p = prepare(x, 30.0, 30.0, "ameca" if f.robot else None)
    out = tmp_path / ("m.yaml" if fmt == "ros2-trajectory" else "m.out")
    f.write(out, p, False)
    back = f.read(out)
    assert back is not None and out.stat().st_size > 0
