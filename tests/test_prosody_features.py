"""``logmel_prosody``: logmel_norm plus the speaker's pitch and level relative to their own recent
baseline (issue 15: the emotional prosody logmel_norm normalises away). Causal, streaming-exact,
gain-invariant, and it reads a raised phrase as raised. Through a checkpoint's Streamer:
tests/test_features_robust.py."""

import math

import numpy as np
import pytest

from realm.audio import EXTRACTORS, SAMPLE_RATE, LogMelProsody, get_extractor, load_audio, n_samples_for
from tests.conftest import JFK, assert_streamed_equals_offline

TOL = 1e-5


@pytest.fixture(scope="module")
def jfk():
    return load_audio(JFK)


def voice(f0: float, seconds: float, gain: float = 1.0, seed: int = 0) -> np.ndarray:
    """A voiced babble: 12 harmonics of ``f0`` (1/k amplitudes), syllables at 4 Hz (a raised-cosine
    envelope with 40 ms gaps), a little noise."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    y = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 13))
    env = np.clip(np.sin(np.pi * (t * 4 % 1.0)) * 1.2, 0.0, 1.0)
    noise = np.random.default_rng(seed).standard_normal(len(t)) * 0.002
    return (0.1 * gain * y * env + noise).astype(np.float32)


def test_the_prosody_dims_of_a_raised_phrase():
    """8 s at 120 Hz, then 2 s at 130 Hz (+1.39 semitones) and +4 dB: at the end of the raised part
    the last second's pitch (dim 84) and level (dim 85) stand over the 10 s baseline by what the
    baseline (8 s habit, 2 s raised) predicts: 0.8 x 1.39 semitones and 0.8 x 4 dB / 6 dB."""
    assert EXTRACTORS["logmel_prosody"] is LogMelProsody
    ex = get_extractor("logmel_prosody")
    y = np.concatenate([voice(120.0, 8.0), voice(130.0, 2.0, gain=10 ** (4 / 20), seed=1)])
    F = ex(y)
    assert F.shape == (300, 86)
    habit, raised = F[150:235], F[270:300]
    assert habit[:, 82].mean() > 0.7 and raised[:, 82].mean() > 0.7  # voiced most of the time
    st = 12 * math.log2(130 / 120)
    assert abs(habit[:, 84]).max() < 0.2 and abs(habit[:, 85]).max() < 0.2  # the habit is the baseline
    np.testing.assert_allclose(raised[-1, 84], 0.8 * st, atol=0.15)
    np.testing.assert_allclose(raised[-1, 85], 0.8 * 4 / 6, atol=0.1)
    voiced = raised[:, 82] > 0
    assert np.median(raised[voiced, 83]) > 0.6 * st  # frame pitch over the baseline
    # the same phrase lowered and softer reads the other way
    z = np.concatenate([voice(120.0, 8.0), voice(111.0, 2.0, gain=10 ** (-4 / 20), seed=1)])
    low = ex(z)[-1]
    assert low[84] < -0.8 and low[85] < -0.35


def test_gain_does_not_move_the_prosody_dims(jfk):
    ex = get_extractor("logmel_prosody")
    clean = ex(jfk)
    for g in (-20, 6):
        moved = ex(jfk * 10 ** (g / 20))
        np.testing.assert_allclose(moved[:, 82:], clean[:, 82:], rtol=0, atol=1e-4)
    np.testing.assert_allclose(clean[:, :82], get_extractor("logmel_norm")(jfk), rtol=0, atol=1e-6)


@pytest.mark.parametrize("chunk", [1234, 48000])
def test_streamed_in_chunks_equals_offline(chunk, jfk):
    ex = get_extractor("logmel_prosody")
    y = np.concatenate([jfk, np.zeros(8000, np.float32), jfk[: 3 * SAMPLE_RATE + 1]])  # > the 10 s baseline
    offline = assert_streamed_equals_offline(ex, y, chunk, TOL)
    st = ex.stream()
    st.feed(y[:16000])
    n = st.available()
    assert n_samples_for(n) + ex.lookahead <= 16000 < n_samples_for(n + 1) + ex.lookahead
    np.testing.assert_allclose(st.take(n), offline[:n], rtol=0, atol=TOL)
    with pytest.raises(ValueError, match="needs more audio"):
        st.take(n + 1)


def test_a_frame_reads_neither_later_audio_nor_audio_older_than_its_context(jfk):
    ex = get_extractor("logmel_prosody")
    y = np.concatenate([jfk, jfk])
    base = ex(y)
    t = 90
    cut = n_samples_for(t + 1) + ex.lookahead
    z = y.copy()
    z[cut:] = np.random.default_rng(0).standard_normal(len(z) - cut).astype(np.float32)
    np.testing.assert_allclose(ex(z)[: t + 1], base[: t + 1], rtol=0, atol=TOL)
    t = 560  # 18.7 s: the context (11.7 s) starts after 7 s
    old = n_samples_for(t) - ex.context
    assert old > 0
    z = y.copy()
    z[:old] = np.random.default_rng(1).standard_normal(old).astype(np.float32)
    np.testing.assert_allclose(ex(z)[t:], base[t:], rtol=0, atol=TOL)
    assert np.abs(ex(z)[: t // 2] - base[: t // 2]).max() > 0.1  # (the noise does change what it covers)

