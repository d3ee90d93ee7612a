"""The shipped checkpoint stays bounded over long inputs: 10 minutes of silence and of pink noise
(the hour-long version of every input is benchmarks/long_input.py)."""

from pathlib import Path

import numpy as np
import pytest

import realm
from realm.data.channel import pink_noise
from realm.metrics import out_of_range, rest_drift
from realm.motion import HEAD_PITCH_YAW, HEAD_ROLL

CKPT = Path(__file__).resolve().parents[1] / "checkpoints" / "realm-demo"
MINUTES = 10


@pytest.fixture(scope="module")
def listener():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield realm.load(CKPT)
    torch.set_num_threads(n)


@pytest.mark.parametrize("kind", ["silence", "pink"])
def test_ten_minutes_stay_in_the_datas_range_without_a_trend(listener, kind):
    n = MINUTES * 60 * 16000
    y = np.zeros(n, np.float32) if kind == "silence" else (0.05 * pink_noise(n, np.random.default_rng(0))).astype(np.float32)
    m = listener.generate(y, seed=0, clamp=False)[0]  # the model's own output, not the clamp's
    spec, st = listener.spec, listener.stats
    assert np.isfinite(m).all()
    r = out_of_range(m, st.lo, st.hi)
    assert r["frames"] < 0.05, r
    ex = spec.block("expression").slice
    seg = int(MINUTES / 6 * 60 * listener.fps)  # first vs last sixth
    first = np.median(m[:seg, ex], axis=0)
    assert rest_drift(m[-seg:, ex], first, segments=((0.0, None),))[0] < 0.02
    head = np.abs(m[:, spec.block("rotation").slice]).max(0)
    assert (head <= [HEAD_PITCH_YAW, HEAD_PITCH_YAW, HEAD_ROLL]).all(), np.degrees(head)
