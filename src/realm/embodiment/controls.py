"""Motion -> robot controls: the one pipeline that export, sim and serve share.

    frames (T, D) of a motion spec
      -> arkit58          (a fitted LinearMap for any other spec; refused without one)
      -> clamp            (the spec's ranges: blendshapes 0..1, head pitch/yaw +-30 deg, roll +-20 deg)
      -> retarget         (the profile's matrices: controls in the profile's units)
      -> safety layer     (One-Euro filter, ramp-in, position, coupled and rate limits; optional)

:meth:`ControlPipeline.run` takes a whole trajectory at the pipeline's rate (``realm export``,
``realm embody sim``); :meth:`ControlPipeline.step` takes frames as they come (``realm serve``),
with the caller's clock. Fed the same frames at the same rate, the two give the same controls
(tested), so a robot driven live moves as the exported file says.
"""

from __future__ import annotations

import math

import numpy as np

from realm.embodiment.profile import RobotProfile, load_profile
from realm.embodiment.retarget import ARKIT, LinearMap, check_map, retarget_arkit
from realm.embodiment.safety import SafetyLayer
from realm.motion import SPECS


def resample(x: np.ndarray, fps: float, rate: float) -> tuple[np.ndarray, np.ndarray]:
    """(T, D) frames at ``fps`` -> (times, frames) at ``rate`` over the same span, linearly."""
    x = np.asarray(x, dtype=np.float64)
    if fps <= 0 or rate <= 0:
        raise ValueError(f"frame rates must be > 0 (fps {fps}, rate {rate})")
    duration = (len(x) - 1) / fps
    times = np.arange(int(math.floor(duration * rate + 1e-9)) + 1) / rate
    src = np.arange(len(x)) / fps
    return times, np.stack([np.interp(times, src, x[:, j]) for j in range(x.shape[1])], axis=1)


class ControlPipeline:
    """Frames of ``spec`` -> safe controls of ``profile`` at ``rate_hz`` (see the module docstring).

    ``profile`` None: arkit58 only (avatars, Live Link). ``safety=False``: raw retargeted
    controls (the actuators' own limits only). ``safety_kw``: :class:`SafetyLayer` options.
    """

    def __init__(self, profile: RobotProfile | str | None, spec: str = ARKIT, linear_map: LinearMap | None = None,
                 rate_hz: float = 30.0, safety: bool = True, safety_kw: dict | None = None):  # fmt: skip
        check_map(spec, linear_map)
        self.spec, self.linear_map, self.rate_hz = spec, linear_map, float(rate_hz)
        self.profile = None if profile is None else load_profile(profile)
        self.safety = None
        if self.profile is not None and safety:
            self.safety = SafetyLayer(self.profile, self.rate_hz, **(safety_kw or {}))

    def arkit(self, frames: np.ndarray) -> np.ndarray:
        """(T, D) frames of the pipeline's spec -> (T, 58) arkit58, clamped to its ranges."""
        x = np.asarray(frames, np.float64)
        if self.spec != ARKIT:
            x = self.linear_map.apply(x, source=self.spec)
        return SPECS[ARKIT].clamp(x)

    def raw(self, frames: np.ndarray) -> np.ndarray:
        """(T, D) frames -> (T, n) retargeted controls, before the safety layer."""
        if self.profile is None:
            raise ValueError("this pipeline has no robot profile (arkit58 output only)")
        return retarget_arkit(self.arkit(frames), self.profile)

    def run(self, frames: np.ndarray) -> np.ndarray:
        """A whole trajectory (T, D) sampled at ``rate_hz`` -> (T, n) controls, from a fresh start."""
        raw = self.raw(frames)
        if self.safety is None:
            return raw
        self.safety.reset()
        return self.safety.run(raw)

    def step(self, frames: np.ndarray, t0: float | None = None) -> np.ndarray:
        """The next (k, D) frames of a stream -> (k, n) controls; the safety layer keeps its state
        between calls. ``t0``: the caller's time (s) of the first frame (None: one period after the
        previous frame); frames within a call are one period apart."""
        raw = self.raw(frames)
        if self.safety is None:
            return raw
        dt = 1.0 / self.rate_hz
        out = [self.safety.step(c, None if t0 is None else t0 + k * dt) for k, c in enumerate(raw)]
        return np.stack(out) if out else np.zeros((0, len(self.profile.names)))
