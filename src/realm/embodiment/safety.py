"""Safety layer: whatever comes in, what goes to the robot stays inside its limits.

:class:`SafetyLayer` runs frame by frame (``step(frame, t)``, once per control period) or on
a whole trajectory (:func:`make_safe`). Per step:

0. **Clock.** The layer keeps its own time: each step counts one period ``dt``, or the
   caller's ``t`` minus its previous ``t`` when that is finite and longer (steps were missed),
   at most ``max_gap``. A NaN, infinite, repeated, backward or barely moving ``t`` counts one
   period, so no clock can hold off the timeout or the ramp, or make them non-finite.
1. **Sanitise.** Non-finite entries hold the last good value of their control; huge values
   are clipped to the control's limits. ``None`` means no frame arrived this period.
2. **Timeout.** When no complete, finite frame has arrived for ``timeout_s``, the target
   becomes the neutral pose (reached at the rate limits below); control ramps in again when
   frames come back. Whatever the clock says, the fall-back begins within
   ``timeout_s * rate_hz + 2`` steps of the last good frame.
3. **One-Euro filter** (Casiez, Roussel and Vogel, "1 Euro Filter: A Simple Speed-based
   Low-pass Filter for Noisy Input in Interactive Systems", CHI 2012): an exponential
   smoother whose cutoff grows with speed, ``fc = min_cutoff + beta * |dx/dt|``, with the
   derivative smoothed at ``d_cutoff``. The paper's defaults are ``d_cutoff = 1 Hz`` and a
   ``min_cutoff``/``beta`` tuned per signal (first ``beta = 0`` and lower ``min_cutoff``
   until jitter goes, then raise ``beta`` until lag goes); ``beta`` is per unit, so it is set
   separately for degrees and for normalised face controls.
4. **Ramp-in.** For ``ramp_s`` after start the target is blended from neutral (smoothstep).
5. **Limits.** Clamp to each control's ``[lo, hi]``, then each coupled control into its
   range at the jaw (or other leader) value of the target.
6. **Velocity and acceleration limiting** with braking distance: each control's step is
   limited to ``|v| <= max_vel``, ``|dv/dt| <= max_acc`` and to what still lets it stop,
   decelerating at ``max_acc``, before its position limits. So the output never leaves the
   limits and never exceeds the rates, whatever the input (property-tested in
   ``tests/test_embodiment_safety.py``).

Guarantees, with ``dt = 1 / rate_hz`` and finite differences of consecutive outputs:
position inside ``[lo, hi]``; ``|dx|/dt <= max_vel``; ``|d2x|/dt^2 <= max_acc`` (the first
step starts from rest at neutral). Jerk is not hard-limited; the filter keeps it low.
Coupled limits hold for the *target*; the output follows it at the rate limits, so during a
fast jaw move a lip control can be outside its jaw-dependent range for the few periods it
needs to catch up (the box limits still hold on every step). These hold for every profile that
:func:`~realm.embodiment.profile.load_profile` accepts, at every rate the layer accepts (the
layer refuses a rate at which a control's limits are too fine to resolve,
:func:`~realm.embodiment.profile.rate_problem`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from realm.embodiment.profile import RATE_RANGE, RobotProfile, load_profile, rate_problem


@dataclass(frozen=True)
class OneEuroParams:
    """One-Euro filter parameters (Casiez et al. 2012); ``enabled=False`` passes input through."""

    min_cutoff: float = 3.0  # Hz; the cutoff at rest. Listener motion at 30 fps: keep nods and blinks.
    beta_joint: float = 0.02  # Hz per (deg/s): +2 Hz cutoff at 100 deg/s
    beta_face: float = 1.0  # Hz per (norm/s): +2 Hz cutoff at 2 /s
    d_cutoff: float = 1.0  # Hz, the paper's value for the derivative
    enabled: bool = True

    def __post_init__(self):
        for name in ("min_cutoff", "beta_joint", "beta_face", "d_cutoff"):
            v = getattr(self, name)
            positive = name.endswith("cutoff")  # a zero cutoff would freeze the filter
            if not (math.isfinite(v) and (v > 0 if positive else v >= 0)):
                bound = "> 0" if positive else ">= 0"
                raise ValueError(f"OneEuroParams.{name} must be finite and {bound}, got {v}")


def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray:
    tau = 1.0 / (2.0 * np.pi * np.asarray(cutoff, dtype=np.float64))
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """Vectorised One-Euro filter over the n controls of a profile."""

    def __init__(self, beta: np.ndarray, params: OneEuroParams = OneEuroParams()):
        self.beta = np.asarray(beta, dtype=np.float64)
        self.params = params
        self.reset()

    def reset(self) -> None:
        self.x: np.ndarray | None = None
        self.dx = np.zeros_like(self.beta)

    def __call__(self, value: np.ndarray, dt: float) -> np.ndarray:
        if not self.params.enabled:
            return value
        if self.x is None:
            self.x = np.array(value, dtype=np.float64)
            return self.x.copy()
        dx = (value - self.x) / dt
        a_d = _alpha(self.params.d_cutoff, dt)
        self.dx = a_d * dx + (1 - a_d) * self.dx
        cutoff = self.params.min_cutoff + self.beta * np.abs(self.dx)
        a = _alpha(cutoff, dt)
        self.x = a * value + (1 - a) * self.x
        return self.x.copy()


def stop_step(d: np.ndarray, h: np.ndarray) -> np.ndarray:
    """The largest step ``s`` (>= 0) after which braking by ``h`` per step stops within ``d``.

    With steps ``s, s - h, s - 2h, ...`` (down to zero) the distance covered is
    ``D(s) = (m + 1) s - h m (m + 1) / 2`` for ``m h <= s < (m + 1) h``; ``D`` increases,
    ``D(m h) = h m (m + 1) / 2``, so ``m = floor((sqrt(1 + 8 d / h) - 1) / 2)`` and
    ``s = (d + h m (m + 1) / 2) / (m + 1)``. Here ``h = max_acc * dt^2``.
    """
    d = np.maximum(d, 0.0)
    m = np.floor((np.sqrt(1.0 + 8.0 * d / h) - 1.0) / 2.0)
    m = np.maximum(m, 0.0)
    # float guard: step m back while the triangular number exceeds d
    m = np.where(h * m * (m + 1) / 2 > d, np.maximum(m - 1, 0.0), m)
    return (d + h * m * (m + 1) / 2) / (m + 1)


class SafetyLayer:
    """Streaming safety filter for one robot profile; call :meth:`step` once per control period."""

    def __init__(
        self,
        profile: RobotProfile | str,
        rate_hz: float | None = None,
        *,
        one_euro: OneEuroParams = OneEuroParams(),
        ramp_s: float = 1.0,
        timeout_s: float = 0.5,
    ):
        self.profile = load_profile(profile)
        self.rate_hz = float(self.profile.rate_hz if rate_hz is None else rate_hz)
        if not RATE_RANGE[0] <= self.rate_hz <= RATE_RANGE[1]:
            raise ValueError(f"rate must be in [{RATE_RANGE[0]:g}, {RATE_RANGE[1]:g}] Hz, got {rate_hz}")
        for c in self.profile.controls:
            if problem := rate_problem(c, self.rate_hz):
                raise ValueError(f"profile {self.profile.name}, control {c.name!r}: {problem}")
        if not (0 <= ramp_s < math.inf and 0 < timeout_s < math.inf):
            raise ValueError(f"need 0 <= ramp_s < inf and 0 < timeout_s < inf, got {ramp_s}, {timeout_s}")
        self.dt = 1.0 / self.rate_hz
        self.ramp_s, self.timeout_s = float(ramp_s), float(timeout_s)
        # a longer gap acts the same (timed out, ramp complete); capping keeps the time sums finite
        self.max_gap = 2.0 * (self.timeout_s + self.ramp_s)
        self.lo, self.hi = self.profile.lo_hi()
        self.neutral = self.profile.neutral_vector()
        self.vmax = self.profile.max_vel_vector()
        self.h = self.profile.max_acc_vector() * self.dt**2  # largest change of a step per step
        beta = np.where(self.profile.joint_mask(), one_euro.beta_joint, one_euro.beta_face)
        self.filter = OneEuroFilter(beta, one_euro)
        self.reset()

    def reset(self) -> None:
        """Back to the start: at neutral, at rest, ramping in on the first frame."""
        self.x = self.neutral.copy()
        self.step_prev = np.zeros_like(self.x)  # last output step (position change per period)
        self.hold = self.neutral.copy()  # last good value of each control
        self.since_good = 0.0  # layer time (s) since the last complete, finite frame (or the start)
        self.ramp_age: float | None = None  # layer time (s) since the ramp-in began; None: no frame yet
        self.timed_out = False
        self._t_prev: float | None = None  # the caller's last finite time
        self._started = False
        self.filter.reset()

    def _elapsed(self, t: float | None) -> float:
        """Seconds this period counts for on the layer's own clock (0 for the first step).

        One period ``dt``, or the caller's gap since its previous finite ``t`` when that is
        longer (steps were missed), capped at ``max_gap``. A non-finite, repeated, backward or
        barely moving ``t`` (or ``None``) counts one period.
        """
        prev = self._t_prev
        finite = t is not None and math.isfinite(t)
        if finite:
            self._t_prev = t
        if not self._started:
            self._started = True
            return 0.0
        gap = t - prev if finite and prev is not None else self.dt
        return min(max(gap, self.dt), self.max_gap)

    # ------------------------------------------------------------------ one period

    def target(self, frame: np.ndarray | None, t: float | None) -> np.ndarray:
        """The clamped, filtered, ramped target for this period (updates the layer's state and clock)."""
        dt = self._elapsed(t)
        self.since_good = min(self.since_good + dt, self.max_gap)
        if self.ramp_age is not None:
            self.ramp_age = min(self.ramp_age + dt, self.max_gap)
        if frame is not None:
            f = np.asarray(frame, dtype=np.float64).reshape(-1)
            if f.shape != self.x.shape:
                raise ValueError(
                    f"frame has {f.size} values, profile {self.profile.name} has {self.x.size} controls"
                )
            good = np.isfinite(f)
            self.hold = np.where(good, np.clip(np.where(good, f, 0.0), self.lo, self.hi), self.hold)
            if good.all():
                self.since_good = 0.0
                if self.timed_out or self.ramp_age is None:
                    self.ramp_age, self.timed_out = 0.0, False
        if self.timed_out or self.since_good > self.timeout_s:
            if not self.timed_out:
                self.timed_out = True
                self.filter.reset()
            self.hold = self.neutral.copy()
            return self.neutral.copy()
        u = self.filter(self.hold, self.dt)
        if self.ramp_age is None:  # no complete frame yet: stay at neutral
            r = 0.0
        elif self.ramp_s == 0:
            r = 1.0
        else:
            s = min(self.ramp_age / self.ramp_s, 1.0)
            r = s * s * (3 - 2 * s)
        u = self.neutral + r * (u - self.neutral)
        return self.profile.apply_coupled(u)

    def step(self, frame: np.ndarray | None, t: float | None = None) -> np.ndarray:
        """Take this period's frame (n,) (or ``None``: nothing arrived) and return the safe command.

        ``t`` is the caller's time (s) or ``None`` (one period after the previous step); it only
        has to be right when steps were missed (see the clock, above).
        """
        u = self.target(frame, None if t is None else float(t))
        u = np.where(np.isfinite(u), u, self.x)  # defence in depth: never follow a non-finite target
        return self._limit(u)

    def _limit(self, u: np.ndarray) -> np.ndarray:
        """Move toward ``u`` within velocity, acceleration and braking-distance limits."""
        x, s0, h, dt = self.x, self.step_prev, self.h, self.dt
        e = u - x
        desired = np.sign(e) * stop_step(np.abs(e), h)
        upper = np.minimum.reduce([s0 + h, self.vmax * dt, stop_step(self.hi - x, h)])
        lower = np.maximum.reduce([s0 - h, -self.vmax * dt, -stop_step(x - self.lo, h)])
        s = np.minimum(np.maximum(desired, lower), upper)
        x_new = np.clip(x + s, self.lo, self.hi)
        self.step_prev = x_new - x
        self.x = x_new
        return x_new.copy()

    def run(self, frames: np.ndarray, t0: float = 0.0) -> np.ndarray:
        """Step through (T, n) frames at this layer's rate; rows of NaN act as missing data."""
        frames = np.asarray(frames, dtype=np.float64)
        out = np.empty_like(frames)
        for i, f in enumerate(frames):
            out[i] = self.step(f, t0 + i * self.dt)
        return out


def make_safe(
    profile: RobotProfile | str, controls: np.ndarray, rate_hz: float | None = None, **kw
) -> np.ndarray:
    """Batch helper: (T, n) controls sampled at ``rate_hz`` -> the safe (T, n) command stream."""
    return SafetyLayer(profile, rate_hz, **kw).run(controls)


def check_limits(
    profile: RobotProfile | str, y: np.ndarray, rate_hz: float, start: np.ndarray | None = None
) -> dict:
    """Worst violations of a (T, n) command stream (0 everywhere for a safe one).

    ``start`` is the state before the first row (neutral and at rest by default), so the
    first step counts too. Velocity and acceleration excesses are in units/s and units/s^2.
    """
    profile = load_profile(profile)
    lo, hi = profile.lo_hi()
    y = np.asarray(y, dtype=np.float64)
    start = profile.neutral_vector() if start is None else start
    full = np.vstack([start, start, y])  # at rest before the first command
    v = np.diff(full, axis=0) * rate_hz
    a = np.diff(v, axis=0) * rate_hz
    return {
        "position": float(max(np.max(lo - y, initial=0), np.max(y - hi, initial=0))),
        "velocity": float(np.max(np.abs(v) - profile.max_vel_vector(), initial=0)),
        "acceleration": float(np.max(np.abs(a) - profile.max_acc_vector(), initial=0)),
        "finite": bool(np.all(np.isfinite(y))),
    }
