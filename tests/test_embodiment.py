"""Robot profiles and retargeting (DESIGN section 11)."""

import re

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from realm.cli import app
from realm.embodiment.profile import builtin_path, load_profile
from realm.embodiment.retarget import LinearMap, fit_linear_map, retarget, retarget_arkit
from realm.errors import RealmInputError
from realm.motion import ARKIT_BLENDSHAPES, SPECS

AMECA_CONTROLS = [
    "brow_inner_left", "brow_inner_right", "brow_outer_left", "brow_outer_right",
    "eyelid_lower_left", "eyelid_lower_right", "eyelid_upper_left", "eyelid_upper_right",
    "gaze_target_phi", "gaze_target_theta", "head_pitch", "head_roll", "head_yaw", "jaw_pitch", "jaw_yaw",
    "lip_bottom_curl", "lip_bottom_depress_left", "lip_bottom_depress_middle", "lip_bottom_depress_right",
    "lip_corner_raise_left", "lip_corner_raise_right", "lip_corner_stretch_left", "lip_corner_stretch_right",
    "lip_top_curl", "lip_top_raise_left", "lip_top_raise_middle", "lip_top_raise_right",
    "neck_pitch", "neck_roll", "nose_wrinkle",
]  # fmt: skip


def arkit(T: int = 1, **channels) -> np.ndarray:
    """(T, 58) arkit58 frames, zero except the named channels (blendshapes or headPitch/Yaw/Roll)."""
    x = np.zeros((T, 58))
    for name, v in channels.items():
        x[:, SPECS["arkit58"].channel(name)] = v
    return x


def write_profile(tmp_path, mutate) -> str:
    data = yaml.safe_load(builtin_path("ameca").read_text())
    mutate(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


# ---------------------------------------------------------------- profiles


def test_ameca_profile_has_the_30_documented_controls_and_ranges():
    p = load_profile("ameca")
    assert sorted(p.names) == sorted(AMECA_CONTROLS) and p.n == 30
    for name, lo, hi in [("head_pitch", -30, 20), ("head_yaw", -30, 30), ("head_roll", -20, 20),
                         ("neck_pitch", -20, 30), ("neck_roll", -24, 24)]:  # fmt: skip
        c = p.control(name)
        assert (c.lo, c.hi, c.kind, c.unit) == (lo, hi, "joint", "deg")
    for c in p.controls:
        assert c.lo <= c.neutral <= c.hi and c.max_vel > 0 and c.max_acc > 0
        if c.kind == "face":
            assert (c.lo, c.hi, c.unit) == (0.0, 1.0, "norm")
    assert p.lag_s > 0 and p.delay_s > 0 and p.rate_hz == 30
    assert p.coupled_limits and all(c.by == "jaw_pitch" for c in p.coupled_limits)
    lo, hi = p.lo_hi()
    assert lo.shape == hi.shape == p.neutral_vector().shape == (30,)
    assert p.index("head_pitch") == p.names.index("head_pitch")
    with pytest.raises(KeyError, match="no control"):
        p.index("tail_wag")


def test_neck3_profile_and_profiles_are_frozen():
    p = load_profile("neck3")
    assert p.names == ["neck_pitch", "neck_yaw", "neck_roll"]
    assert np.allclose(p.pose_matrix(), np.eye(3))
    with pytest.raises(AttributeError):
        p.lag_s = 1.0  # frozen


def test_coupled_limit_narrows_the_lip_range_with_the_jaw():
    p = load_profile("ameca")
    x = p.neutral_vector()
    x[p.index("lip_corner_stretch_left")] = 1.0
    x[p.index("jaw_pitch")] = 20.0
    y = p.apply_coupled(x.copy())
    assert y[p.index("lip_corner_stretch_left")] == pytest.approx(0.6)
    x[p.index("jaw_pitch")] = 10.0
    assert p.apply_coupled(x.copy())[p.index("lip_corner_stretch_left")] == pytest.approx(0.85)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.pop("lag_s"), "missing field 'lag_s'"),
        (lambda d: d["controls"]["jaw_pitch"].pop("lo"), "control 'jaw_pitch': missing field 'lo'"),
        (lambda d: d["controls"]["jaw_pitch"].update(lo=30.0), "control 'jaw_pitch': lo 30 > hi 20"),
        (lambda d: d["controls"]["head_yaw"].update(neutral=45.0), "neutral 45 outside"),
        (lambda d: d["controls"]["head_yaw"].update(kind="servo"), "kind must be one of"),
        (lambda d: d["controls"]["head_yaw"].update(max_vel="fast"), "'max_vel' must be a finite number"),
        (lambda d: d["coupled_limits"][0].update(by="tongue"), "coupled_limits[0]: unknown control 'tongue'"),
        (lambda d: d["coupled_limits"][0].update(table=[[10, 0, 1], [0, 0, 1]]), "strictly increasing"),
        (lambda d: d["retarget"]["mouthSmileLeft"].update(lip_grin=1.0), "unknown control 'lip_grin'"),
        (lambda d: d["retarget"].update(smile={"nose_wrinkle": 1}), "unknown ARKit blendshape 'smile'"),
        (lambda d: d["pose"]["pitch"].update(spine=0.1), "pose.pitch: unknown control 'spine'"),
        (lambda d: d["gains"].update(ears=2.0), "gains: unknown control 'ears'"),
    ],
)
def test_profile_validation_errors_name_the_file_and_the_problem(tmp_path, mutate, message):
    path = write_profile(tmp_path, mutate)
    with pytest.raises(RealmInputError) as e:
        load_profile(path)
    assert e.value.source == path and message in str(e.value)


def test_bad_yaml_and_missing_profile_are_clear_errors(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: x\ncontrols: [unclosed\n")
    with pytest.raises(RealmInputError, match="broken.yaml: invalid YAML"):
        load_profile(bad)
    with pytest.raises(RealmInputError, match="robot profile not found"):
        load_profile(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(RealmInputError, match="must be a YAML mapping"):
        load_profile(tmp_path / "list.yaml")


def test_profiles_are_package_data():
    """The YAML profiles ship in the wheel: pyproject's package-data glob matches both files."""
    from importlib import resources
    from pathlib import Path

    assert (resources.files("realm.embodiment") / "profiles" / "ameca.yaml").is_file()
    text = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    globs = re.search(r"\[tool\.setuptools\.package-data\]\s*realm = \[(.*?)\]", text, re.S).group(1)
    pattern = next(g.strip().strip('"') for g in globs.split(",") if "profiles" in g)
    pkg = Path(__file__).parents[1] / "src" / "realm"
    assert {f.name for f in pkg.glob(pattern)} >= {"ameca.yaml", "neck3.yaml"}


# ---------------------------------------------------------------- retargeting


@pytest.mark.parametrize("name", ["ameca", "neck3"])
def test_neutral_motion_gives_the_neutral_controls(name):
    p = load_profile(name)
    y = retarget_arkit(arkit(5), p)
    assert y.shape == (5, p.n)
    assert np.allclose(y, p.neutral_vector())


def test_a_full_smile_raises_the_lip_corners_and_nothing_else():
    p = load_profile("ameca")
    y = retarget_arkit(arkit(1, mouthSmileLeft=1.0, mouthSmileRight=1.0), p)[0]
    d = y - p.neutral_vector()
    for side in ("left", "right"):
        assert d[p.index(f"lip_corner_raise_{side}")] > 0.3
    others = [i for i, n in enumerate(p.names) if not n.startswith("lip_corner_raise")]
    assert np.abs(d[others]).max() < 1e-9


def test_head_pitch_splits_75_25_and_roll_85_15_in_degrees():
    p = load_profile("ameca")
    y = retarget_arkit(arkit(1, headPitch=np.radians(20.0), headRoll=np.radians(-10.0), headYaw=0.2), p)[0]
    assert y[p.index("head_pitch")] == pytest.approx(15.0)
    assert y[p.index("neck_pitch")] == pytest.approx(5.0)
    assert y[p.index("head_roll")] == pytest.approx(-8.5)
    assert y[p.index("neck_roll")] == pytest.approx(-1.5)
    assert y[p.index("head_yaw")] == pytest.approx(np.degrees(0.2))
    q = load_profile("neck3")
    z = retarget_arkit(arkit(1, headPitch=np.radians(20.0)), q)[0]
    assert z[q.index("neck_pitch")] == pytest.approx(20.0)


def test_gains_scale_the_deviation_from_neutral(tmp_path):
    path = write_profile(tmp_path, lambda d: d["gains"].update(lip_corner_raise_left=0.5))
    p, q = load_profile("ameca"), load_profile(path)
    frame = arkit(1, mouthSmileLeft=1.0)
    i = p.index("lip_corner_raise_left")
    d_p = retarget_arkit(frame, p)[0, i] - p.neutral_vector()[i]
    d_q = retarget_arkit(frame, q)[0, i] - q.neutral_vector()[i]
    assert d_q == pytest.approx(0.5 * d_p)


def test_every_blendshape_in_the_table_is_an_arkit_name():
    p = load_profile("ameca")
    assert {shape for shape, _, _ in p.retarget} <= set(ARKIT_BLENDSHAPES)
    assert p.retarget_matrix().shape == (52, 30)


# ---------------------------------------------------------------- linear maps


def test_fit_map_recovers_a_known_linear_map(tmp_path):
    rng = np.random.default_rng(0)
    W = rng.normal(0, 0.1, (70, 58))
    b = rng.normal(0, 0.1, 58)
    x = rng.normal(0, 1, (2000, 70))
    y = x @ W + b
    m = fit_linear_map(x, y, ridge=1e-8, source="vico70")
    assert np.abs(m.W - W).max() < 1e-5 and np.abs(m.b - b).max() < 1e-5
    m.save(tmp_path / "map.npz")
    m2 = LinearMap.load(tmp_path / "map.npz")
    assert np.allclose(m2.W, m.W) and m2.source == "vico70" and m2.target == "arkit58"
    with pytest.raises(FileExistsError):
        m.save(tmp_path / "map.npz")


def test_ridge_shrinks_the_map():
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (200, 10))
    y = x @ rng.normal(0, 1, (10, 58))
    small, big = fit_linear_map(x, y, ridge=1e-6), fit_linear_map(x, y, ridge=10.0)
    assert np.linalg.norm(big.W) < 0.5 * np.linalg.norm(small.W)


def test_retarget_other_specs_needs_a_map():
    p = load_profile("ameca")
    x = np.zeros((3, 70))
    with pytest.raises(ValueError, match="fit-map"):
        retarget(x, p, spec="vico70")
    m = LinearMap(np.zeros((70, 58)), np.zeros(58), "vico70")
    assert np.allclose(retarget(x, p, spec="vico70", linear_map=m), p.neutral_vector())


def test_bad_map_file_is_a_clear_error(tmp_path):
    np.savez(tmp_path / "m.npz", W=np.zeros((3, 4)))
    with pytest.raises(RealmInputError, match="missing array 'b'"):
        LinearMap.load(tmp_path / "m.npz")
    with pytest.raises(RealmInputError, match="not found"):
        LinearMap.load(tmp_path / "none.npz")


# ---------------------------------------------------------------- CLI


def test_cli_fit_map_then_export_vico70(tmp_path):
    runner = CliRunner()
    rng = np.random.default_rng(2)
    W = rng.normal(0, 0.02, (70, 58))
    x = rng.normal(0, 1, (300, 70)).astype(np.float32)
    y = np.clip(x @ W + 0.3, 0, 1).astype(np.float32)
    y[:, 52:] = 0
    np.savez(tmp_path / "a.npz", listener=x[None], spec=np.array("vico70"), fps=np.array(30.0))
    np.savez(tmp_path / "b.npz", listener=y[None], spec=np.array("arkit58"), fps=np.array(30.0))
    args = ["embody", "fit-map", "--source", str(tmp_path / "a.npz"), "--target", str(tmp_path / "b.npz"),
            "--out", str(tmp_path / "map.npz")]  # fmt: skip
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "vico70 -> arkit58 on 300 paired frames" in r.output
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and "--force" in r.output
    out = tmp_path / "a.jsonl"
    r = runner.invoke(app, ["export", "--motion", str(tmp_path / "a.npz"), "--format", "ameca-jsonl",
                            "--out", str(out), "--map", str(tmp_path / "map.npz")])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert len(out.read_text().splitlines()) == 300
    r = runner.invoke(app, ["export", "--motion", str(tmp_path / "a.npz"), "--format", "bvh",
                            "--out", str(tmp_path / "a.bvh")])  # fmt: skip
    assert r.exit_code == 2 and "needs a linear map" in r.output and "Traceback" not in r.output


def test_cli_fit_map_rejects_unpaired_frames(tmp_path):
    np.savez(tmp_path / "a.npz", listener=np.zeros((10, 70), np.float32))
    np.savez(tmp_path / "b.npz", listener=np.zeros((12, 58), np.float32))
    r = CliRunner().invoke(app, ["embody", "fit-map", "--source", str(tmp_path / "a.npz"), "--target",
                                 str(tmp_path / "b.npz"), "--out", str(tmp_path / "m.npz")])  # fmt: skip
    assert r.exit_code == 2 and "b.npz" in r.output and "paired" in r.output


def test_cli_profile_shows_and_validates(tmp_path):
    r = CliRunner().invoke(app, ["embody", "profile", "ameca"])
    assert r.exit_code == 0 and "lip_corner_raise_left" in r.output and "30 controls" in r.output
    path = write_profile(tmp_path, lambda d: d["controls"]["jaw_pitch"].update(lo=30.0))
    r = CliRunner().invoke(app, ["embody", "profile", path])
    assert r.exit_code == 2 and "lo 30 > hi 20" in r.output
