"""Safety layer: whatever the input, the command stays inside position, velocity and acceleration limits."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from realm.embodiment.profile import load_profile
from realm.embodiment.safety import OneEuroParams, SafetyLayer, check_limits, make_safe, stop_step

PROFILES = {name: load_profile(name) for name in ("ameca", "neck3")}
NO_FILTER = OneEuroParams(enabled=False)


def assert_safe(profile, y, rate, rel=1e-6):
    """No position, velocity or acceleration excess beyond a float tolerance (relative to the limit)."""
    v = check_limits(profile, y, rate)
    assert v["finite"]
    assert v["position"] <= 1e-9
    assert v["velocity"] <= rel * profile.max_vel_vector().max()
    assert v["acceleration"] <= rel * profile.max_acc_vector().max()


any_float = st.floats(allow_nan=True, allow_infinity=True, width=64)
wild = st.one_of(any_float, st.sampled_from([np.nan, np.inf, -np.inf, 1e308, -1e308, 0.0]),
                 st.floats(-200, 200))  # fmt: skip


@settings(max_examples=60, derandomize=True, deadline=None)
@given(
    name=st.sampled_from(sorted(PROFILES)),
    palette=st.lists(wild, min_size=1, max_size=24),
    seed=st.integers(0, 2**32 - 1),
    T=st.integers(1, 90),
    rate=st.sampled_from([20.0, 30.0, 60.0, 100.0]),
    p_missing=st.floats(0, 0.5),
    filtered=st.booleans(),
)
def test_output_never_leaves_the_limits_whatever_the_input(name, palette, seed, T, rate, p_missing, filtered):
    """Frames mix arbitrary floats (NaN, inf, 1e308, ...) with plausible values; some frames go missing."""
    p = PROFILES[name]
    rng = np.random.default_rng(seed)
    lo, hi = p.lo_hi()
    x = rng.uniform(lo - (hi - lo), hi + (hi - lo), (T, p.n))
    wild_cells = rng.random((T, p.n)) < rng.random()
    x[wild_cells] = rng.choice(np.array(palette, dtype=np.float64), wild_cells.sum())
    layer = SafetyLayer(
        p, rate, one_euro=OneEuroParams() if filtered else NO_FILTER, ramp_s=rng.uniform(0, 1)
    )
    # an irregular clock: t only drives timeout, ramp and filter, never the rate limits
    t = np.cumsum(rng.uniform(0.2, 3.0, T)) / rate
    y = np.array(
        [layer.step(None if rng.random() < p_missing else f, ti) for f, ti in zip(x, t, strict=True)]
    )
    assert_safe(p, y, rate)


@settings(max_examples=40, derandomize=True, deadline=None)
@given(x=hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=60).map(
    lambda s: (s[0], 3)), elements=any_float))  # fmt: skip
def test_neck3_arbitrary_arrays(x):
    p = PROFILES["neck3"]
    assert_safe(p, make_safe(p, x, 30.0), 30.0)


@settings(max_examples=40, derandomize=True, deadline=None)
@given(d=st.floats(0, 1e4), h=st.floats(1e-4, 10))
def test_stop_step_is_the_largest_step_that_can_still_brake_in_time(d, h):
    def dist(s):  # distance covered by steps s, s - h, s - 2h, ... while positive
        k = np.arange(0, int(s / h) + 2)
        return float(np.clip(s - k * h, 0, None).sum())

    s = float(stop_step(np.array(d), np.array(h)))
    assert 0 <= s and dist(s) <= d * (1 + 1e-9) + 1e-9
    assert dist(s * (1 + 1e-6) + 1e-9) > d * (1 - 1e-9) or s == 0 and d == 0


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_a_step_to_the_limits_is_reached_without_overshoot(name):
    p = PROFILES[name]
    lo, hi = p.lo_hi()
    for target in (lo, hi):
        y = make_safe(p, np.tile(target, (240, 1)), 30.0, one_euro=NO_FILTER, ramp_s=0.0)
        assert_safe(p, y, 30.0)
        assert np.allclose(y[-1], p.apply_coupled(target.copy()), atol=1e-9)
        assert np.all((y - lo >= -1e-12) & (hi - y >= -1e-12))


def test_ramp_in_starts_at_neutral_and_blends_in():
    p = PROFILES["ameca"]
    i = p.index("head_yaw")
    target = p.neutral_vector()
    target[i] = 20.0
    frames = np.tile(target, (120, 1))
    ramped = make_safe(p, frames, 30.0, one_euro=NO_FILTER, ramp_s=2.0)[:, i]
    direct = make_safe(p, frames, 30.0, one_euro=NO_FILTER, ramp_s=0.0)[:, i]
    assert abs(ramped[0]) < 0.1  # first command: next to neutral, from rest
    assert np.all(np.diff(ramped) >= -1e-12)  # a monotone approach
    assert ramped[15] < 0.5 * direct[15]  # half a second in, the ramp holds it back
    assert ramped[-1] == pytest.approx(20.0, abs=1e-6)  # after the ramp it reaches the target


def test_timeout_falls_back_to_neutral_at_the_rate_limits():
    p = PROFILES["ameca"]
    i = p.index("head_pitch")
    target = p.neutral_vector()
    target[i] = -25.0
    layer = SafetyLayer(p, 30.0, one_euro=NO_FILTER, ramp_s=0.0, timeout_s=0.5)
    y = [layer.step(target, k / 30) for k in range(60)]  # 2 s of frames
    assert y[-1][i] == pytest.approx(-25.0)
    y += [layer.step(None, k / 30) for k in range(60, 150)]  # then nothing arrives
    y = np.array(y)
    assert np.all(y[60:74, i] == pytest.approx(-25.0))  # held during the timeout (0.5 s)
    assert y[-1][i] == pytest.approx(0.0, abs=1e-9)  # back at neutral
    assert np.all(np.diff(y[75:, i]) >= -1e-12)  # moving only toward neutral
    assert_safe(p, y, 30.0)
    # frames come back: it ramps in again from neutral
    z = np.array([layer.step(target, k / 30) for k in range(150, 250)])
    assert z[-1][i] == pytest.approx(-25.0) and abs(z[0][i]) < 1.0


def test_nan_holds_the_control_and_a_stream_of_nans_falls_back_to_neutral():
    p = PROFILES["ameca"]
    i, j = p.index("head_yaw"), p.index("jaw_pitch")
    target = p.neutral_vector()
    target[i], target[j] = 15.0, 10.0
    layer = SafetyLayer(p, 30.0, one_euro=NO_FILTER, ramp_s=0.0, timeout_s=0.5)
    for k in range(60):
        layer.step(target, k / 30)
    partial = target.copy()
    partial[i] = np.nan
    partial[j] = 5.0
    for k in range(60, 70):  # yaw is NaN: held; jaw still follows its frames
        y = layer.step(partial, k / 30)
    assert y[i] == pytest.approx(15.0) and y[j] < 10.0
    bad = np.full(p.n, np.nan)
    out = np.array([layer.step(bad, k / 30) for k in range(70, 200)])
    assert np.allclose(out[-1], p.neutral_vector(), atol=1e-9)


def test_coupled_limits_hold_on_the_target_and_once_settled():
    p = PROFILES["ameca"]
    i, j = p.index("lip_corner_stretch_left"), p.index("jaw_pitch")
    rng = np.random.default_rng(0)
    frames = np.tile(p.neutral_vector(), (300, 1))
    frames[:, i] = 1.0
    frames[:, j] = np.repeat(rng.uniform(0, 20, 10), 30)  # jaw jumps every second
    layer = SafetyLayer(p, 30.0, one_euro=NO_FILTER, ramp_s=0.0)
    for k, f in enumerate(frames):
        u = layer.target(f, k / 30)
        lo, hi = p.coupled_bounds(u)
        assert lo[i] - 1e-12 <= u[i] <= hi[i] + 1e-12
        y = layer._limit(u)
        if k % 30 == 29:  # end of each second: settled
            lo, hi = p.coupled_bounds(y)
            assert y[i] <= hi[i] + 1e-9


def test_one_euro_filter_removes_jitter_but_follows_a_move():
    p = PROFILES["neck3"]
    rng = np.random.default_rng(0)
    rate = 30.0
    x = np.zeros((300, 3))
    x[150:, 1] = 30.0  # a yaw move at 5 s
    noisy = x + rng.normal(0, 0.5, x.shape)
    kw = dict(ramp_s=0.0)
    filt = make_safe(p, noisy, rate, **kw)
    raw = make_safe(p, noisy, rate, one_euro=NO_FILTER, **kw)
    jitter = lambda y: np.std(np.diff(y[60:150], axis=0))  # noqa: E731
    assert jitter(filt) < 0.7 * jitter(raw)  # min_cutoff 3 Hz at 30 fps: alpha 0.39
    assert filt[-1, 1] == pytest.approx(30.0, abs=0.5)


def test_wrong_frame_width_is_an_error():
    layer = SafetyLayer("neck3")
    with pytest.raises(ValueError, match="3 controls"):
        layer.step(np.zeros(4), 0.0)


def test_limit_braking_alone_keeps_a_runaway_target_inside():
    """Defence in depth: even a target beyond the limits (never produced by ``target``) is not followed out."""
    p = PROFILES["neck3"]
    layer = SafetyLayer(p, 30.0)
    lo, hi = p.lo_hi()
    y = np.array([layer._limit(hi + 1e6) for _ in range(120)] + [layer._limit(lo - 1e6) for _ in range(120)])
    assert_safe(p, y, 30.0)
    assert np.allclose(y[119], hi) and np.allclose(y[-1], lo)
