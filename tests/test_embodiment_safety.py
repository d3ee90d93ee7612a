"""Safety layer: whatever the input and the clock, the command stays inside position, velocity and acceleration
limits and falls back to neutral when frames stop; profile validation refuses what it could not survive."""

import dataclasses

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from realm.embodiment.profile import builtin_path, load_profile, profile_from_dict
from realm.embodiment.safety import OneEuroParams, SafetyLayer, check_limits, make_safe, stop_step
from realm.errors import RealmInputError

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


def _wild_input(name, palette, seed, T, rate, filtered):
    """A profile, an rng, (T, n) frames mixing arbitrary floats (the palette: NaN, inf, 1e308, ...)
    with plausible values, and a safety layer at ``rate`` with a random ramp."""
    p = PROFILES[name]
    rng = np.random.default_rng(seed)
    lo, hi = p.lo_hi()
    x = rng.uniform(lo - (hi - lo), hi + (hi - lo), (T, p.n))
    wild_cells = rng.random((T, p.n)) < rng.random()
    x[wild_cells] = rng.choice(np.array(palette, dtype=np.float64), wild_cells.sum())
    layer = SafetyLayer(p, rate, one_euro=OneEuroParams() if filtered else NO_FILTER, ramp_s=rng.uniform(0, 1))
    return p, rng, x, layer


#: what a hostile input draws: a profile, its wild values, a seed, a length, a rate, missing frames, the filter
WILD = dict(
    name=st.sampled_from(sorted(PROFILES)),
    palette=st.lists(wild, min_size=1, max_size=24),
    seed=st.integers(0, 2**32 - 1),
    T=st.integers(1, 90),
    rate=st.sampled_from([20.0, 30.0, 60.0, 100.0]),
    p_missing=st.floats(0, 0.5),
    filtered=st.booleans(),
)


@settings(max_examples=60, derandomize=True, deadline=None)
@given(**WILD)
def test_output_never_leaves_the_limits_whatever_the_input(name, palette, seed, T, rate, p_missing, filtered):
    """Frames mix arbitrary floats (NaN, inf, 1e308, ...) with plausible values; some frames go missing."""
    p, rng, x, layer = _wild_input(name, palette, seed, T, rate, filtered)
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


# ---------------------------------------------------------------- the clock: the layer keeps its own

# A clock is a list of events: ("add", d) advances the caller's time by d, ("set", v) jumps it to v.
# Both draw from NaN, inf, 0 (a stuck clock), negatives (backwards), 1e308 (huge jumps), tiny and plausible steps.
clock_value = st.one_of(any_float, st.sampled_from([np.nan, np.inf, -np.inf, 0.0, -1.0, 1e308, -1e308, 1e-12]),
                        st.floats(0, 0.1))  # fmt: skip
clock_event = st.tuples(st.sampled_from(["add", "add", "set"]), clock_value)


def caller_clock(events, n: int) -> list[float]:
    t, out = 0.0, []
    for kind, v in (events * (n // max(len(events), 1) + 1))[:n]:
        with np.errstate(all="ignore"):
            t = v if kind == "set" else t + v
        out.append(t)
    return out


@settings(max_examples=60, derandomize=True, deadline=None)
@given(events=st.lists(clock_event, min_size=1, max_size=40), **WILD)
def test_output_never_leaves_the_limits_whatever_the_clock(
    name, palette, events, seed, T, rate, p_missing, filtered
):
    """As above, with the caller's time NaN, infinite, stuck, running backwards or jumping by 1e308."""
    p, rng, x, layer = _wild_input(name, palette, seed, T, rate, filtered)
    t = caller_clock(events, T)
    y = np.array(
        [layer.step(None if rng.random() < p_missing else f, ti) for f, ti in zip(x, t, strict=True)]
    )
    assert_safe(p, y, rate)
    assert np.isfinite([layer.since_good, layer.ramp_age or 0.0]).all()


@settings(max_examples=60, derandomize=True, deadline=None)
@given(
    name=st.sampled_from(sorted(PROFILES)),
    events=st.lists(clock_event, min_size=1, max_size=40),
    rate=st.sampled_from([20.0, 30.0, 60.0, 100.0]),
    timeout=st.sampled_from([0.1, 0.5, 1.0]),
    filtered=st.booleans(),
)
def test_frames_stop_and_it_falls_back_to_neutral_whatever_the_clock(name, events, rate, timeout, filtered):
    """The issue's case: one NaN time or a stuck clock must not keep the robot off neutral."""
    p = PROFILES[name]
    lo, neutral = p.lo_hi()[0], p.neutral_vector()
    target = neutral + 0.8 * (lo - neutral)  # near the low limits, far from neutral
    layer = SafetyLayer(p, rate, one_euro=OneEuroParams() if filtered else NO_FILTER, timeout_s=timeout)
    good, deadline = 30, int(timeout * rate) + 2  # the documented bound, in steps after the last good frame
    n = good + deadline + int(1.5 * rate)  # then 1.5 s: enough to reach neutral at the rate limits
    y, timed_out = [], []
    for k, t in enumerate(caller_clock(events, n)):
        y.append(layer.step(target if k < good else None, t))
        timed_out.append(layer.timed_out)
    assert timed_out[good - 1 + deadline]
    assert np.allclose(y[-1], neutral, atol=1e-9)
    assert_safe(p, np.array(y), rate)


def test_a_nan_time_changes_nothing_and_a_stuck_clock_still_falls_back():
    p = PROFILES["ameca"]
    i = p.index("head_pitch")
    target = p.neutral_vector()
    target[i] = -25.0
    kw = dict(one_euro=NO_FILTER, ramp_s=0.0, timeout_s=0.5)
    clean, poisoned = SafetyLayer(p, 30.0, **kw), SafetyLayer(p, 30.0, **kw)
    times = [k / 30 for k in range(60)]
    times[10] = np.nan  # one NaN time: before, NaN commands from then on
    for k, t in enumerate(times):
        np.testing.assert_array_equal(poisoned.step(target, t), clean.step(target, k / 30))
    for clock in ([5.0] * 90, [5.0 - k for k in range(90)], [1e308] * 90):  # stuck, backwards, stuck at 1e308
        layer = SafetyLayer(p, 30.0, **kw)
        y, timed_out = [], []
        for k, t in enumerate(clock):
            y.append(layer.step(target if k < 30 else None, t))
            timed_out.append(layer.timed_out)
        y = np.array(y)
        assert np.all(y[29 : 29 + 15, i] == pytest.approx(-25.0))  # held for 0.5 s of steps
        assert not timed_out[29 + 14] and timed_out[29 + 17]  # then falls back (0.5 * 30 + 2 steps at most)
        assert y[-1, i] == pytest.approx(0.0, abs=1e-9)  # back at neutral (before: never, with a stuck clock)
        assert_safe(p, y, 30.0)


def test_missed_steps_count_from_the_callers_clock():
    """A finite gap longer than a period (the caller skipped steps) counts in full: a long pause times out."""
    p = PROFILES["neck3"]
    layer = SafetyLayer(p, 30.0, one_euro=NO_FILTER, ramp_s=0.0, timeout_s=0.5)
    target = np.array([10.0, 0.0, 0.0])
    for k in range(30):
        layer.step(target, k / 30)
    layer.step(None, 2.0)  # 1 s without a frame, in one step
    assert layer.timed_out


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(rate_hz=0.0), "rate must be in"),
        (dict(rate_hz=np.nan), "rate must be in"),
        (dict(rate_hz=1e300), "rate must be in"),
        (dict(timeout_s=np.nan), "timeout_s"),
        (dict(timeout_s=np.inf), "timeout_s"),
        (dict(ramp_s=-1.0), "ramp_s"),
        (dict(ramp_s=np.nan), "ramp_s"),
    ],
)
def test_the_layer_refuses_settings_that_could_stop_the_fallback(kw, message):
    with pytest.raises(ValueError, match=message):
        SafetyLayer("neck3", **kw)


def test_the_layer_refuses_a_rate_at_which_the_limits_cannot_be_resolved():
    fine = profile_from_dict({**yaml.safe_load(builtin_path("neck3").read_text()), "rate_hz": 30})
    fine = dataclasses.replace(
        fine, controls=(dataclasses.replace(fine.controls[0], max_acc=1e-4),) + fine.controls[1:]
    )
    SafetyLayer(fine, 30.0)  # 1e-4 deg/s^2 at 30 Hz: a step change of 1.1e-7 deg, resolvable
    with pytest.raises(
        ValueError, match="control 'neck_pitch': max_acc 0.0001 is too small to enforce at 10000 Hz"
    ):
        SafetyLayer(fine, 10_000.0)


@pytest.mark.parametrize("field", ["min_cutoff", "d_cutoff", "beta_joint", "beta_face"])
def test_one_euro_parameters_must_be_finite(field):
    for bad in (np.nan, np.inf, -1.0):
        with pytest.raises(ValueError, match=f"OneEuroParams.{field}"):
            OneEuroParams(**{field: bad})
    if field.endswith("cutoff"):
        with pytest.raises(ValueError, match="> 0"):
            OneEuroParams(**{field: 0.0})


# ---------------------------------------------------------------- profile validation: what the layer cannot survive


def profile_file(tmp_path, mutate, base: str = "ameca") -> str:
    data = yaml.safe_load(builtin_path(base).read_text())
    mutate(data)
    path = tmp_path / "robot.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def control(name, **fields):
    return lambda d: d["controls"][name].update(fields)


@pytest.mark.parametrize(
    "mutate, message",
    [
        # values with which the layer would emit NaN or leave its limits
        (
            control("head_yaw", max_acc=1e-320),
            "control 'head_yaw': max_acc 1e-320 is too small to enforce at 30 Hz",
        ),
        (control("head_yaw", max_vel=1e-300), "control 'head_yaw': max_vel 1e-300 is too small"),
        (control("head_yaw", max_acc=0.0), "control 'head_yaw': max_vel and max_acc must be > 0"),
        (control("head_yaw", lo=-1e308), "control 'head_yaw': field 'lo' -1e+308 is beyond +-1e+06"),
        (control("head_yaw", hi=1e308), "control 'head_yaw': field 'hi' 1e+308 is beyond +-1e+06"),
        (control("head_yaw", lo=-2e6, hi=2e6), "field 'lo' -2e+06 is beyond"),
        (
            control("head_yaw", max_acc=float("inf")),
            "control 'head_yaw': field 'max_acc' must be a finite number, got inf",
        ),
        (
            control("head_yaw", max_vel=float("nan")),
            "control 'head_yaw': field 'max_vel' must be a finite number, got nan",
        ),
        (control("head_yaw", max_acc=10**400), "field 'max_acc' must be a finite number, got 1000"),
        (
            control("head_yaw", max_acc="1e3"),
            "field 'max_acc' must be a finite number, got '1e3' (YAML reads 1e3 as text",
        ),
        (control("head_yaw", max_vel=True), "field 'max_vel' must be a finite number, got True"),
        (lambda d: d.update(rate_hz=1e300), "field 'rate_hz' must be in [1, 10000] Hz, got 1e+300"),
        (lambda d: d.update(rate_hz=0), "field 'rate_hz' must be in [1, 10000] Hz, got 0"),
        (lambda d: d.update(rate_hz=-30.0), "field 'rate_hz' must be in"),
        (lambda d: d.update(lag_s=1e300), "field 'lag_s' must be in [0, 10] s"),
        (lambda d: d.update(delay_s=-0.1), "field 'delay_s' must be in [0, 10] s"),
        (
            lambda d: d["coupled_limits"][0].update(table=[[0, 0, 1], [1e308, 0, 1]]),
            "coupled_limits[0]: table must be rows of three finite numbers [by value, lo, hi], |x| <= 1e+06",
        ),
        (
            lambda d: d["coupled_limits"][0].update(table=[[0, 0, 10**400]]),
            "coupled_limits[0]: table must be rows of three numbers",
        ),
        # malformed types: one line, never a raw AttributeError or TypeError
        (
            lambda d: d.update(defaults=[1]),
            "defaults: expected a mapping of kind (joint, face) -> fields, got [1]",
        ),
        (lambda d: d["defaults"].update(servo={"lo": 0}), "defaults: unknown kind 'servo'"),
        (lambda d: d["defaults"].update(face=[1]), "defaults.face: expected a mapping of fields, got [1]"),
        (
            lambda d: d["defaults"]["face"].update(max_velocity=3.0),
            "defaults.face: unknown field 'max_velocity'",
        ),
        (control("head_yaw", max_velocity=3.0), "control 'head_yaw': unknown field 'max_velocity'"),
        (
            control("head_yaw", kind=["joint"]),
            "control 'head_yaw': kind must be one of ['face', 'joint'], got ['joint']",
        ),
        (control("head_yaw", unit=["deg"]), "control 'head_yaw': a joint control is in 'deg', not ['deg']"),
        (
            lambda d: d["controls"].update({5: {"kind": "face", "neutral": 0.5}}),
            "controls: a control name must be a non-empty string, got 5",
        ),
        (
            lambda d: d["controls"].update(head_yaw=[1]),
            "control 'head_yaw': expected a mapping of fields, got [1]",
        ),
        (lambda d: d.update(name=["ameca"]), "field 'name' must be a non-empty string, got ['ameca']"),
        (lambda d: d.update(description={"a": 1}), "description: expected a string"),
        (lambda d: d.update(coupled_limit=[]), "profile: unknown field 'coupled_limit'"),
        (
            lambda d: d.update(coupled_limits=5),
            "coupled_limits: expected a list of {control, by, table}, got 5",
        ),
        (
            lambda d: d["coupled_limits"][0].update(control=["jaw_pitch"]),
            "coupled_limits[0]: unknown control ['jaw_pitch']",
        ),
        (lambda d: d["coupled_limits"][0].update(extra=1), "coupled_limits[0]: unknown field 'extra'"),
        (lambda d: d.update(pose=[1]), "pose: expected a mapping head axis -> {control: weight}, got [1]"),
        (lambda d: d["pose"].update(pitch=[1]), "pose.pitch: expected a mapping control -> weight"),
        (lambda d: d.update(retarget=[1]), "retarget: expected a mapping blendshape -> {control: offset}"),
        (lambda d: d["retarget"].update(jawOpen=3), "retarget.jawOpen: expected a mapping control -> offset"),
        (
            lambda d: d.update(gains=["head_yaw"]),
            "gains: expected a mapping control -> gain, got ['head_yaw']",
        ),
        (
            lambda d: d["gains"].update(head_yaw="2"),
            "gains: field 'head_yaw' must be a finite number, got '2'",
        ),
    ],
)
def test_profile_validation_refuses_what_the_layer_cannot_survive(tmp_path, mutate, message):
    path = profile_file(tmp_path, mutate)
    with pytest.raises(RealmInputError) as e:
        load_profile(path)
    assert e.value.source == path and message in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "text, message",
    [
        ("name: a\nname: b\n", "invalid YAML at line 2: duplicate key 'name'"),
        (
            "controls:\n  neck_yaw: {kind: joint}\n  neck_yaw: {kind: face}\n",
            "invalid YAML at line 3: duplicate key 'neck_yaw'",
        ),
        (
            "controls:\n  neck_yaw: {kind: joint, lo: 0, lo: -90}\n",
            "invalid YAML at line 2: duplicate key 'lo'",
        ),
    ],
)
def test_duplicate_keys_are_refused_not_silently_won(tmp_path, text, message):
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    with pytest.raises(RealmInputError) as e:
        load_profile(path)
    assert str(e.value) == f"{path}: {message}"


def test_yaml_merge_keys_may_still_override(tmp_path):
    data = yaml.safe_load(builtin_path("neck3").read_text())
    path = tmp_path / "merge.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in data.items() if k != "controls"}) + (
        "controls:\n"
        "  neck_pitch: &j {kind: joint, lo: -20.0, hi: 20.0, neutral: 0.0, max_vel: 60.0, max_acc: 300.0}\n"
        "  neck_yaw: {<<: *j, lo: -45.0, hi: 45.0}\n"
        "  neck_roll: *j\n"
    ))  # fmt: skip
    assert load_profile(path).control("neck_yaw").hi == 45.0


profile_value = st.one_of(
    st.floats(-50, 50),
    st.sampled_from(
        [0.0, 1e-320, 1e-300, 1e-9, 1e-4, 1e6, 2e6, 1e308, -1e308, np.inf, -np.inf, np.nan, 10**400]
    ),
    st.sampled_from(["1.0", "fast", None, True, [1], {"a": 1}]),
)


@st.composite
def fuzzed_profiles(draw):
    """neck3 with plausible to extreme numbers, some of them replaced by hostile values."""
    data = yaml.safe_load(builtin_path("neck3").read_text())
    data["rate_hz"] = draw(
        profile_value if draw(st.integers(0, 3)) == 0 else st.sampled_from([1.0, 30.0, 1e3, 1e4])
    )
    for fields in data["controls"].values():
        lo, neutral, hi = sorted(draw(st.lists(st.floats(-1e6, 1e6), min_size=3, max_size=3)))
        fields.update(
            lo=lo,
            hi=hi,
            neutral=neutral,
            max_vel=draw(st.floats(1e-6, 1e6)),
            max_acc=draw(st.floats(1e-6, 1e9)),
        )
        for key in draw(st.sets(st.sampled_from(["lo", "hi", "neutral", "max_vel", "max_acc"]), max_size=2)):
            fields[key] = draw(profile_value)
    return data


@settings(max_examples=150, derandomize=True, deadline=None)
@given(data=fuzzed_profiles(), seed=st.integers(0, 2**32 - 1))
def test_a_profile_either_loads_and_stays_safe_or_is_refused_in_one_line(data, seed):
    try:
        p = profile_from_dict(data, source="fuzz.yaml")
    except RealmInputError as e:
        assert str(e).startswith("fuzz.yaml: ") and "\n" not in str(e)
        return
    rng = np.random.default_rng(seed)
    lo, hi = p.lo_hi()
    x = rng.uniform(lo - (hi - lo), hi + (hi - lo), (60, p.n))
    x[rng.random(x.shape) < 0.2] = rng.choice([np.nan, np.inf, -np.inf, 1e308, -1e308])
    layer = SafetyLayer(p)
    y = np.array([layer.step(None if rng.random() < 0.2 else f, rng.choice([np.nan, 0.0, k / p.rate_hz]))
                  for k, f in enumerate(x)])  # fmt: skip
    v = check_limits(p, y, p.rate_hz)
    assert v["finite"] and v["position"] <= 1e-9 * max(1.0, np.abs(lo).max(), np.abs(hi).max())
    assert (
        v["velocity"] <= 1e-6 * p.max_vel_vector().max()
        and v["acceleration"] <= 1e-6 * p.max_acc_vector().max()
    )
