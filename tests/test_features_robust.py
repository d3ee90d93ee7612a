"""Level- and channel-invariant extractors (``pcen``, ``logmel_norm``; issue 16, point 2):
causal and streaming-exact, level-invariant, pauses that stay pauses under noise."""

import numpy as np
import pytest

from realm.audio import (
    EXTRACTORS,
    PCEN,
    SAMPLE_RATE,
    LogMelNorm,
    causal_max,
    causal_mean,
    causal_min,
    extract,
    get_extractor,
    load_audio,
    n_frames,
    n_samples_for,
    pool_to_frames,
)
from tests.conftest import JFK, assert_streamed_equals_offline

NEW = ("pcen", "logmel_norm")
#: offline vs recomputed from ``context`` samples of left audio: float64 rounding, then float32
STREAM_TOL = 1e-5


@pytest.fixture(scope="module")
def jfk():
    return load_audio(JFK)


@pytest.fixture(scope="module")
def noisy(jfk):
    from realm.data.channel import add_noise, pink_noise

    return {snr: add_noise(jfk, pink_noise(len(jfk), np.random.default_rng([0, 16, snr])), snr) for snr in (30, 20, 10)}


def speech_pause(y):
    """Speech and pause frame masks of clean audio (the energy rule of realm.metrics.speech_offsets)."""
    from scipy.ndimage import binary_dilation, uniform_filter1d

    from realm.metrics import frame_rms

    rms = uniform_filter1d(frame_rms(y), 3)
    speech = rms > 0.1 * np.percentile(rms, 95)
    return speech, ~binary_dilation(speech, iterations=2)


def auc(score, label):
    from scipy.stats import rankdata

    r = rankdata(score)
    n1, n0 = label.sum(), (~label).sum()
    return (r[label].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)


# ---------------------------------------------------------------- building blocks


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 8])
def test_causal_min_max_mean_look_back_exactly_n_rows(n):
    x = np.random.default_rng(n).standard_normal((40, 3))
    w = np.random.default_rng(n + 1).uniform(0.1, 1.0, n)
    for t in range(40):
        lo = max(0, t - n + 1)
        np.testing.assert_array_equal(causal_min(x, n)[t], x[lo : t + 1].min(0))
        np.testing.assert_array_equal(causal_max(x, n)[t], x[lo : t + 1].max(0))
        ww = w[: t - lo + 1][::-1]  # weight w[j] for row t - j
        np.testing.assert_allclose(causal_mean(x, w)[t], ww @ x[lo : t + 1] / ww.sum(), rtol=1e-12, atol=1e-12)


def test_registered_with_dims_contexts_and_stable_cache_keys():
    assert EXTRACTORS["pcen"] is PCEN and EXTRACTORS["logmel_norm"] is LogMelNorm
    p, m = get_extractor("pcen"), get_extractor("logmel_norm")
    assert (p.dim, m.dim) == (80, 82)
    assert (p.context, p.lookahead) == (160 * (99 + 3), 400)  # 1 s smoother memory
    assert (m.context, m.lookahead) == (160 * (2 * 149 + 7 + 3), 400)  # mean over floored logs: 2 windows
    # cache keys: a change here re-extracts every cached feature and breaks trained checkpoints
    assert (p.key(), m.key()) == ("dc366c328dc6", "1f0fcd4d0a23")
    assert get_extractor("logmel").key() == "e6e360ca9146" and get_extractor("logmel").lookahead is None
    assert LogMelNorm(memory=100).key() != m.key() and LogMelNorm(memory=100).context < m.context


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("n", [534, 1600, 16001, 16000 * 3 + 7])
def test_frame_rule_for_any_duration(name, n):
    y = np.random.default_rng(0).standard_normal(n).astype(np.float32) * 0.1
    f = extract(y, name, cache=False)
    assert f.shape == (n_frames(n), EXTRACTORS[name].dim) and np.all(np.isfinite(f))


def test_aligned_with_logmel():
    """A tone starting inside frame 41 (after the reach of frame 40's last STFT window): the first
    frame it changes is 41 for logmel and the new extractors alike, and it changes them a lot."""
    quiet = (1e-4 * np.random.default_rng(0).standard_normal(3 * SAMPLE_RATE)).astype(np.float32)
    start = 22000  # frame 41 covers samples [21866.7, 22400); frame 40's last window ends at 21960
    tone = quiet.copy()
    tone[start:] += 0.3 * np.sin(2 * np.pi * 440 * np.arange(len(tone) - start) / SAMPLE_RATE).astype(np.float32)
    for name in ("logmel", *NEW):
        a, b = extract(quiet, name, cache=False), extract(tone, name, cache=False)
        changed = np.flatnonzero(np.abs(b - a).max(1) > 1e-5)
        assert changed[0] == 41 == n_frames(start) - 1 + 1, (name, changed[:3])
        assert np.abs(b - a)[41].max() > 0.5 * a.std(), name


def test_pcen_is_librosas_formula_with_a_finite_memory(jfk):
    import librosa

    y = jfk[: 4 * SAMPLE_RATE]
    long_memory = PCEN(memory=2000)(y)  # no truncation within 4 s
    S = librosa.feature.melspectrogram(y=y, sr=SAMPLE_RATE, n_fft=400, hop_length=160, n_mels=80, power=1.0)
    ref = librosa.pcen(S * 2.0**31, sr=SAMPLE_RATE, hop_length=160).T  # IIR smoother, tau 0.4 s
    ref = pool_to_frames(ref, 0.01, len(long_memory))
    # the start-up differs (librosa starts its smoother at frame 0's energy); after 1.5 s it agrees
    np.testing.assert_allclose(long_memory[45:], ref[45:], rtol=0.02, atol=0.02)
    # the default 1 s memory is a different (truncated) smoother, but close: 0.11 std on jfk
    assert np.abs(PCEN()(y)[45:] - ref[45:]).mean() < 0.15 * ref[45:].std()


# ---------------------------------------------------------------- causal, streaming-exact


def blockwise(ex, y, W=16, C=16, right=None):
    """Features of every frame as realm.generate.Streamer computes them: window w of W frames from
    the segment [g0, end) with g0 the 1600-aligned start ``ex.context`` samples before frame
    w W - C and end ``right`` (default ``ex.context``) samples after the window's last frame."""
    right = ex.context if right is None else right
    T = n_frames(len(y))
    out = np.full((T, ex.dim), np.nan, np.float32)
    for w in range(-(-T // W)):
        first = max(0, w * W - C)
        g0 = max(0, (n_samples_for(first) - ex.context) // 1600 * 1600)
        end = min(len(y), n_samples_for((w + 1) * W) + right)
        feats = ex(y[g0:end])
        t0 = round(g0 * 30 / SAMPLE_RATE)
        last = min((w + 1) * W, T)
        if w:  # frames of earlier windows read again as audio context: the same values
            np.testing.assert_allclose(feats[first - t0 : w * W - t0], out[first : w * W], rtol=0, atol=STREAM_TOL)
        out[w * W : last] = feats[w * W - t0 : last - t0]
    return out


@pytest.mark.parametrize("name", NEW)
def test_offline_equals_blockwise_with_context_and_with_lookahead_only(name, jfk, noisy):
    ex = get_extractor(name)
    for y in (jfk, noisy[10]):
        offline = ex(y)
        np.testing.assert_allclose(blockwise(ex, y), offline, rtol=0, atol=STREAM_TOL)
        # a streamer needs only ``lookahead`` samples after a frame (left: ``context``)
        np.testing.assert_allclose(blockwise(ex, y, right=ex.lookahead), offline, rtol=0, atol=STREAM_TOL)


@pytest.mark.parametrize("name", NEW)
def test_a_frame_never_depends_on_later_audio(name, jfk):
    ex = get_extractor(name)
    y = jfk[: 5 * SAMPLE_RATE].copy()
    base = ex(y)
    t = 90  # change everything after frame t's interval plus the lookahead
    cut = n_samples_for(t + 1) + ex.lookahead
    y[cut:] = np.random.default_rng(0).standard_normal(len(y) - cut).astype(np.float32)
    np.testing.assert_allclose(ex(y)[: t + 1], base[: t + 1], rtol=0, atol=STREAM_TOL)
    # and audio older than ``context`` samples before a frame is forgotten
    t = 120
    z = jfk[: 5 * SAMPLE_RATE].copy()
    old = n_samples_for(t) - ex.context
    z[:old] = np.random.default_rng(1).standard_normal(old).astype(np.float32)
    np.testing.assert_allclose(ex(z)[t:], base[t:], rtol=0, atol=STREAM_TOL)
    assert np.abs(ex(z)[t - 1] - base[t - 1]).max() > 1e-6  # a frame earlier it is not (the bound is tight)


@pytest.mark.parametrize("chunk", [7, 320, 1234, 48000])
def test_logmel_norm_computed_hop_by_hop_equals_offline(chunk, jfk):
    """LogMelNormStream (each 10 ms hop once, running windows kept) gives the offline frames for any
    chunking, with feed/take as the streamer uses it, and refuses frames it has no audio for."""
    ex = get_extractor("logmel_norm")
    y = np.concatenate([jfk[: 3 * SAMPLE_RATE], np.zeros(8000, np.float32), jfk[: 30001]])  # a pause, an odd end
    offline = assert_streamed_equals_offline(ex, y, chunk, STREAM_TOL)
    st = ex.stream()
    st.feed(y[:16000])
    assert st.available() == 29  # hop 98's window ends at sample 15880; frame 29 needs hop 99 (ends at 16040)
    np.testing.assert_allclose(st.take(16), offline[:16], rtol=0, atol=STREAM_TOL)
    np.testing.assert_allclose(st.take(29), offline[16:29], rtol=0, atol=STREAM_TOL)
    with pytest.raises(ValueError, match="needs more audio"):
        st.take(30)


@pytest.mark.parametrize("name", ["logmel_norm", "logmel_prosody"])
def test_streamer_gives_the_offline_frames_for_a_checkpoint_with_an_incremental_stream(name, tmp_path, jfk):
    """Through realm.generate.Streamer (the extractor's own incremental stream), pushed in chunks."""
    import torch

    import realm
    from realm.checkpoint import save
    from realm.models.realm import REALM, REALMConfig
    from realm.motion import NormStats

    torch.manual_seed(0)
    dim = EXTRACTORS[name].dim
    model = REALM(REALMConfig(spec="arkit58", audio_dim=dim, d_model=32, ff_dim=64, refine_dim=32, refine_ff=64,
                              audio_context=16))  # fmt: skip
    rng = np.random.default_rng(0)
    stats = NormStats(rng.uniform(0, 0.3, 58).astype(np.float32), rng.uniform(0.01, 0.1, 58).astype(np.float32), "arkit58")
    fstats = NormStats(np.zeros(dim, np.float32), np.ones(dim, np.float32), name)
    save(tmp_path / "run", model, stats, fstats, name, {"stage": 2})
    lis = realm.load(tmp_path / "run")
    y = jfk[: int(SAMPLE_RATE * 6.1)]
    offline = lis.generate(y, seed=1)[0]
    s = lis.streamer(seed=1)
    streamed = np.concatenate([s.push(y[i : i + 3000]) for i in range(0, len(y), 3000)] + [s.flush()])
    np.testing.assert_allclose(streamed, offline, atol=1e-5)


# ---------------------------------------------------------------- invariance


@pytest.mark.parametrize("name,tol", [("logmel_norm", 0.04), ("pcen", 0.07), ("logmel", None)])
def test_level_invariance(name, tol, jfk):
    """jfk at -20, 0 and +6 dB: mean |feature change| in units of the clean features' std."""
    ex = get_extractor(name)
    clean = ex(jfk)
    sd = clean.std(0)
    shift = {g: float(np.mean(np.abs(ex(jfk * 10 ** (g / 20)) - clean) / sd)) for g in (-20, 6)}
    if tol is None:  # logmel moves by more than a std: what the new extractors fix
        assert shift[-20] > 1.0
    else:
        assert max(shift.values()) < tol, shift


def test_pauses_stay_pauses_under_pink_noise(jfk, noisy):
    """logmel_norm's broadband SNR cue (dim 80, nats over the running noise floor), pink noise at
    30/20/10 dB: pause frames stay near the clean pause value, speech frames stay well above it."""
    speech, pause = speech_pause(jfk)
    scored = speech | pause
    ex = get_extractor("logmel_norm")
    cue = ex(jfk)[:, 80]
    p0, s0 = cue[pause].mean(), cue[speech].mean()
    assert s0 - p0 > 3.0 and auc(cue[scored], speech[scored]) > 0.9
    lm = get_extractor("logmel")
    for snr, y in noisy.items():
        c = ex(y)[:, 80]
        assert c[pause].mean() < p0 + 0.25, snr  # a noisy pause reads like a clean pause
        assert c[speech].mean() - c[pause].mean() > 0.4 * (s0 - p0), snr  # the contrast stays
        assert auc(c[scored], speech[scored]) > 0.9, snr
        if snr == 10:  # logmel: a pause at 10 dB SNR is louder than clean speech on average
            assert lm(y).mean(1)[pause].mean() > lm(jfk).mean(1)[speech].mean()
