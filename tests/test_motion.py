import numpy as np
import pytest

from realm.errors import RealmInputError
from realm.motion import (
    ARKIT_BLENDSHAPES,
    SPECS,
    NormStats,
    convert,
    get_spec,
    resample_motion,
    vico70_to_vico73,
    vico73_to_vico70,
)


def test_builtin_specs_have_the_documented_layouts():
    assert {k: v.dim for k, v in SPECS.items()} == {"vico70": 70, "vico73": 73, "flame56": 56, "arkit58": 58,
                                                     "imitator160": 160}  # fmt: skip
    v70 = get_spec("vico70")
    assert (v70.block("expression").slice, v70.block("rotation").slice, v70.block("translation").slice) == (
        slice(0, 64), slice(64, 67), slice(67, 70))
    v73 = get_spec("vico73")
    assert [b for b, _ in v73.blocks] == ["rotation", "expression", "translation", "crop"]
    f56 = get_spec("flame56")
    assert f56.block("jaw").slice == slice(53, 56) and f56.block("jaw").kind == "expression"
    a58 = get_spec("arkit58")
    assert a58.block("rotation").kind == "pose" and a58.block("expression").size == 52
    assert list(a58.indices("pose")) == list(range(52, 58))


def test_imitator160_blocks_are_named_by_the_release_fields():
    im = get_spec("imitator160")
    assert [(b, n) for b, n in im.blocks] == [("expression", 128), ("FAUValue", 24), ("gaze_encodings", 2),
                                              ("head_encodings", 3), ("rotation", 3)]  # fmt: skip
    assert im.block("rotation").kind == "pose" and im.names[0] == "expression.0" and im.channel("rotation.yaw") == 158


def test_resample_motion_keeps_the_duration_by_the_frame_rule():
    x = np.arange(50, dtype=np.float32)[:, None] * np.array([1.0, -2.0], np.float32)  # 2 s at 25 fps
    y = resample_motion(x, 25, 30)
    assert y.shape == (60, 2) and y.dtype == np.float32
    np.testing.assert_allclose(y[::6], x[::5])  # the instants both rates sample
    np.testing.assert_allclose(y[1], x[0] + (x[1] - x[0]) * 25 / 30)  # 1/30 s is 0.833 of a 25 fps frame
    np.testing.assert_array_equal(y[-1], x[-1])  # past the last input frame it is held
    assert resample_motion(x, 25, 25) is x and resample_motion(x, 30, 25).shape == (41, 2)
    with pytest.raises(ValueError):
        resample_motion(x, 0, 30)


def test_arkit_names_are_apples_52_in_order():
    assert len(ARKIT_BLENDSHAPES) == 52 and len(set(ARKIT_BLENDSHAPES)) == 52
    assert ARKIT_BLENDSHAPES[:3] == ("eyeBlinkLeft", "eyeLookDownLeft", "eyeLookInLeft")
    assert ARKIT_BLENDSHAPES[14:18] == ("jawForward", "jawLeft", "jawRight", "jawOpen")
    assert ARKIT_BLENDSHAPES[-1] == "tongueOut"
    spec = get_spec("arkit58")
    assert spec.channel("mouthSmileLeft") == 23
    assert spec.channel("rotation.pitch") == 52 and spec.channel("headYaw") == 53


def test_vico73_vico70_round_trip_moves_the_right_columns():
    x73 = np.arange(2 * 73, dtype=np.float32).reshape(2, 73)
    x70 = vico73_to_vico70(x73)
    assert x70.shape == (2, 70)
    np.testing.assert_array_equal(x70[:, :64], x73[:, 3:67])  # expression
    np.testing.assert_array_equal(x70[:, 64:67], x73[:, 0:3])  # angles
    np.testing.assert_array_equal(x70[:, 67:70], x73[:, 67:70])  # translation
    back = vico70_to_vico73(x70, crop=x73[:, 70:])
    np.testing.assert_array_equal(back, x73)
    assert np.all(vico70_to_vico73(x70)[:, 70:] == 0)
    with pytest.raises(ValueError, match="no exact conversion"):
        convert(x70, "vico70", "arkit58")


def test_norm_stats_fit_apply_invert_and_save(tmp_path):
    a = np.array([[1.0, 5.0], [3.0, 5.0]])
    b = np.array([[5.0, 5.0]])
    st = NormStats.fit([a, b], spec="test")
    np.testing.assert_allclose(st.mean, [3.0, 5.0])
    np.testing.assert_allclose(st.std[0], np.sqrt(8 / 3), rtol=1e-6)
    assert st.std[1] == pytest.approx(NormStats.EPS)  # constant channel: floored, not zero
    z = st.apply(a)
    np.testing.assert_allclose(z[:, 0], [-2 / np.sqrt(8 / 3), 0.0], rtol=1e-6)
    np.testing.assert_allclose(st.invert(z), a, rtol=1e-6)
    st.save(tmp_path / "s.npz")
    st2 = NormStats.load(tmp_path / "s.npz")
    np.testing.assert_array_equal(st2.mean, st.mean) and np.testing.assert_array_equal(st2.std, st.std)
    assert st2.spec == "test"
    import torch

    zt = st.apply(torch.tensor(a, dtype=torch.float32))
    np.testing.assert_allclose(zt.numpy(), z, rtol=1e-5)


def test_validate_names_the_file_and_the_problem():
    spec = get_spec("vico70")
    with pytest.raises(RealmInputError, match=r"f\.npz: wrong coefficient width 69"):
        spec.validate(np.zeros((4, 69)), "f.npz")
    bad = np.zeros((4, 70))
    bad[2, 5] = np.nan
    with pytest.raises(RealmInputError, match="NaN/inf in coefficients .first at frame 2, dim 5"):
        spec.validate(bad, "f.npz")


def test_norm_stats_floor_each_block_at_a_tenth_of_its_largest_std():
    spec = get_spec("arkit58")
    rng = np.random.default_rng(0)
    x = np.zeros((400, spec.dim))
    smile, blink = spec.channel("mouthSmileLeft"), spec.channel("eyeBlinkLeft")
    x[:, smile] = rng.normal(0.3, 0.2, 400)  # a reacting channel
    x[:, blink] = rng.normal(0.0, 0.004, 400)  # sensor noise only
    pitch = spec.block("rotation").slice.start
    x[:, pitch] = rng.normal(0.0, 0.05, 400)
    st = NormStats.fit(x, "arkit58")
    assert st.std[smile] == pytest.approx(x[:, smile].std(), rel=1e-5)
    assert st.std[blink] == pytest.approx(0.1 * x[:, smile].std(), rel=1e-5)  # floored within its block
    assert st.std[pitch] == pytest.approx(x[:, pitch].std(), rel=1e-5)  # pose is its own block
    assert st.std[pitch + 1] == pytest.approx(0.1 * x[:, pitch].std(), rel=1e-5)
    plain = NormStats.fit(x, "arkit58", block_floor=0)
    assert plain.std[blink] == pytest.approx(x[:, blink].std(), rel=1e-5)  # plain z-scores on request
    assert NormStats.fit(x).std[blink] == pytest.approx(x[:, blink].std(), rel=1e-5)  # no spec: no blocks


def test_every_spec_names_each_dimension_once():
    for name, spec in SPECS.items():
        names = spec.names
        assert len(names) == spec.dim == len(set(names)), name
    assert SPECS["arkit58"].names[:2] == ["eyeBlinkLeft", "eyeLookDownLeft"]
    v = SPECS["vico70"]
    assert v.names[v.channel("rotation.yaw")] == "rotation.yaw" and v.names[0] == "expression.0"


def test_arkit58_clamps_head_rotation_to_a_listeners_range():
    from realm.motion import HEAD_PITCH_YAW, HEAD_ROLL, get_spec

    spec = get_spec("arkit58")
    x = np.zeros((3, 58))
    x[:, spec.channel("headPitch")] = [-2.0, 0.1, 2.0]
    x[:, spec.channel("headRoll")] = [-1.0, -0.2, 1.0]
    x[:, 0] = [-0.5, 0.5, 1.5]
    y = spec.clamp(x)
    np.testing.assert_allclose(y[:, spec.channel("headPitch")], [-HEAD_PITCH_YAW, 0.1, HEAD_PITCH_YAW])
    np.testing.assert_allclose(y[:, spec.channel("headRoll")], [-HEAD_ROLL, -0.2, HEAD_ROLL])
    np.testing.assert_allclose(y[:, 0], [0.0, 0.5, 1.0])
    assert np.degrees(HEAD_PITCH_YAW) == pytest.approx(30) and np.degrees(HEAD_ROLL) == pytest.approx(20)
    np.testing.assert_array_equal(y[:, -3:], x[:, -3:])  # translation has no range


def test_motion_stats_keep_the_datas_range_through_save_and_load(tmp_path):
    from realm.motion import NormStats

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (20000, 58))
    st = NormStats.fit([x[:5000], x[5000:]], spec="arkit58")
    np.testing.assert_allclose(st.lo, 0.005, atol=0.01)
    np.testing.assert_allclose(st.hi, 0.995, atol=0.01)
    st.save(tmp_path / "s.npz")
    back = NormStats.load(tmp_path / "s.npz")
    np.testing.assert_array_equal(back.lo, st.lo)
    np.testing.assert_array_equal(back.hi, st.hi)
    assert NormStats.fit(x[:, :5]).lo is None  # features: no range
    np.savez(tmp_path / "bad.npz", mean=st.mean, std=st.std, lo=st.hi, hi=st.lo)
    with pytest.raises(RealmInputError, match="lo <= hi"):
        NormStats.load(tmp_path / "bad.npz")
