import numpy as np
import pytest
import soundfile as sf

from realm.audio import (
    EXTRACTORS,
    SAMPLE_RATE,
    cache_dir,
    extract,
    load_audio,
    n_frames,
    pool_to_frames,
    yin,
)
from realm.errors import RealmInputError
from tests.conftest import JFK


def test_frame_rule_is_floor_of_complete_frames():
    assert n_frames(176000) == 330  # 11.0 s
    assert n_frames(534) == 1 and n_frames(533) == 0  # 16000 / 30 = 533.33 samples per frame
    assert n_frames(1600) == 3 and n_frames(1599) == 2


def test_jfk_loads_as_16k_mono_of_the_right_duration():
    info = sf.info(str(JFK))
    assert info.samplerate == 44100 and info.channels == 2
    y = load_audio(JFK)
    assert y.ndim == 1 and y.dtype == np.float32
    assert len(y) == pytest.approx(info.frames * SAMPLE_RATE / 44100, abs=2)
    assert len(y) / SAMPLE_RATE == pytest.approx(11.0, abs=0.01)


@pytest.mark.parametrize("name", sorted(EXTRACTORS))
def test_every_extractor_gives_the_documented_frame_count_on_jfk(name):
    y = load_audio(JFK)
    f = extract(y, name, cache=False)
    assert f.shape == (n_frames(len(y)), EXTRACTORS[name].dim) == (330, EXTRACTORS[name].dim)
    assert np.all(np.isfinite(f))
    assert f.std(axis=0).max() > 0  # not a constant


@pytest.mark.parametrize("name", ["logmel", "vico45", "prosody"])
@pytest.mark.parametrize("n", [534, 1600, 16001, 16000 * 3 + 7])
def test_same_length_for_any_duration(name, n):
    y = np.random.default_rng(0).standard_normal(n).astype(np.float32) * 0.1
    assert extract(y, name, cache=False).shape[0] == n_frames(n)


def test_any_format_rate_and_channel(tmp_path):
    rng = np.random.default_rng(0)
    t = np.arange(22050) / 22050
    left = 0.5 * np.sin(2 * np.pi * 220 * t)
    right = 0.1 * rng.standard_normal(len(t))
    stereo = np.stack([left, right], 1).astype(np.float32)
    for ext in ("wav", "flac", "ogg", "mp3"):
        p = tmp_path / f"a.{ext}"
        sf.write(str(p), stereo, 22050)
        y = load_audio(p)
        assert abs(len(y) - SAMPLE_RATE) < 0.02 * SAMPLE_RATE, ext  # 1 s (mp3 adds codec padding)
    p = tmp_path / "a.wav"
    y0, y1 = load_audio(p, channel=0), load_audio(p, channel=1)
    assert np.corrcoef(y0[100:-100], np.sin(2 * np.pi * 220 * np.arange(len(y0)) / 16000)[100:-100])[0, 1] > 0.99
    assert y1.std() < y0.std()
    with pytest.raises(RealmInputError, match="channel 2 requested but the file has 2"):
        load_audio(p, channel=2)


def test_bad_audio_gives_one_clear_error(tmp_path):
    with pytest.raises(RealmInputError, match="nope.wav: audio file not found"):
        load_audio(tmp_path / "nope.wav")
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(RealmInputError, match="empty"):
        load_audio(empty)
    junk = tmp_path / "junk.flac"
    junk.write_bytes(b"this is not audio at all" * 10)
    with pytest.raises(RealmInputError, match="junk.flac: unreadable audio"):
        load_audio(junk)
    short = tmp_path / "short.wav"
    sf.write(str(short), np.zeros(500, np.float32), 16000)  # 31 ms < one 33 ms frame
    with pytest.raises(RealmInputError, match="shorter than one motion frame"):
        load_audio(short)


def test_cache_is_keyed_by_content_and_config(tmp_path, monkeypatch):
    monkeypatch.setenv("REALM_CACHE", str(tmp_path / "cache"))  # this test's entries only
    y = np.random.default_rng(1).standard_normal(16000).astype(np.float32)
    a = extract(y, "logmel")
    files = list((cache_dir() / "logmel").glob("*.npy"))
    assert len(files) == 1
    np.save(files[0], np.zeros_like(a))  # the cache is read back, not recomputed
    assert np.all(extract(y, "logmel") == 0)
    extract(y * 0.5, "logmel")  # other content, other entry
    extract(y, "vico45")
    assert len(list((cache_dir() / "logmel").glob("*.npy"))) == 2
    assert len(list((cache_dir() / "vico45").glob("*.npy"))) == 1
    files[0].write_bytes(b"corrupt")  # a corrupt entry is recomputed
    np.testing.assert_allclose(extract(y, "logmel"), a)


def test_pool_to_frames_hand_computed():
    feats = np.arange(10, dtype=np.float64)[:, None]  # 100 Hz frames 0..9 over 0.1 s
    out = pool_to_frames(feats, 0.01, 3)  # 30 fps intervals hold frames {0..3}, {4..6}, {7..9}
    np.testing.assert_allclose(out[:, 0], [1.5, 5.0, 8.0])


def test_yin_finds_the_pitch_of_a_harmonic_tone():
    t = np.arange(16000) / 16000
    for f0 in (110.0, 200.0, 310.0):
        y = np.sin(2 * np.pi * f0 * t) + 0.4 * np.sin(4 * np.pi * f0 * t) + 0.2 * np.sin(6 * np.pi * f0 * t)
        est, aper, _ = yin(y, 16000, 60, 500, 1024, 160)
        assert np.median(est[5:-5]) == pytest.approx(f0, rel=0.01)
        assert np.median(aper) < 0.05
    noise = np.random.default_rng(0).standard_normal(16000)
    _, aper, _ = yin(noise, 16000, 60, 500, 1024, 160)
    assert np.median(aper) > 0.35  # unvoiced


def test_prosody_marks_a_tone_voiced_and_silence_unvoiced():
    t = np.arange(16000) / 16000
    y = np.concatenate([0.5 * np.sin(2 * np.pi * 150 * t), np.zeros(16000)]).astype(np.float32)
    f = extract(y, "prosody", cache=False)
    assert f[:25, 1].mean() == 1.0 and f[35:, 1].mean() == 0.0
    assert np.exp(np.median(f[5:25, 0])) == pytest.approx(150, rel=0.02)


def test_the_streams_running_extremes_and_weighted_mean_equal_their_sliding_window_definitions():
    """LogMelNormStream's O(n + K) running min/max and banded-matrix running mean (realm.audio) against
    the sliding windows they replace, for a history of at most n - 1 rows (as the stream keeps)."""
    from realm.audio import _trailing_extreme, _trailing_weighted_sum, _trailing_windows

    rng = np.random.default_rng(0)
    for hl, K, n in [(0, 5, 8), (3, 5, 8), (7, 5, 8), (7, 12, 8), (7, 1, 8), (0, 1, 1), (7, 7, 8), (7, 8, 8)]:
        hist, new = rng.normal(size=(hl, 4)), rng.normal(size=(K, 4))
        for op, fill in ((np.minimum, np.inf), (np.maximum, -np.inf)):
            want = op.reduce(_trailing_windows(hist, new, n, fill), axis=1)
            np.testing.assert_array_equal(_trailing_extreme(hist, new, n, fill, op), want)
        w = rng.uniform(size=n)
        want = np.einsum("knf,n->kf", _trailing_windows(hist, new, n, 0.0), w[::-1])
        np.testing.assert_allclose(_trailing_weighted_sum(hist, new, w), want, atol=1e-12)
