"""The randomised speaker channel of the synthetic benchmark (realm.data.channel) and
benchmarks/real_speech.py."""

import dataclasses
import filecmp
import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

import realm.data.synth as synth
from realm.data.channel import (
    BANDS,
    ChannelConfig,
    _cepstral_envelope,
    active_power,
    band_limit,
    channel_rng,
    codec,
    draw,
    reverb_ir,
    shift_voice,
)
from realm.data.speech import VOICES, EspeakBackend, FormantBackend, Prosody, espeak_available
from realm.data.synth import SynthConfig, generate, make_clip

ROOT = Path(__file__).resolve().parents[1]
SR = 16000
CFG = SynthConfig(hours=0.01, seed=3, backend="formant", clip_seconds=(6.0, 8.0))
POST = dict(noise=1.0, reverb=1.0, band=1.0, codec=1.0, level_db=(-9.0, -3.0))  # knobs after the motion


def db(x: float) -> float:
    return 10 * np.log10(x)


def clip_and_audio(channel=None, index=0, cfg=CFG):
    clip, audio, _ = make_clip(index, "train", cfg, channel)
    return clip, audio


@pytest.fixture(scope="module")
def clean():
    return clip_and_audio()


# ---------------------------------------------------------------- off by default


def test_defaults_leave_the_benchmark_bit_identical(tmp_path):
    assert not ChannelConfig().active() and ChannelConfig.preset("off") == ChannelConfig()
    generate(CFG, tmp_path / "none")
    generate(CFG, tmp_path / "off", channel=ChannelConfig())
    files = sorted(str(p.relative_to(tmp_path / "none")) for p in (tmp_path / "none").rglob("*") if p.is_file())
    _, mismatch, errors = filecmp.cmpfiles(tmp_path / "none", tmp_path / "off", files, shallow=False)
    assert len(files) > 10 and mismatch == [] and errors == []
    assert "channel" not in json.loads((tmp_path / "off/meta.json").read_text())["config"]
    # the words and event log of this clip as the benchmark made them before the channel existed
    digest = {f: hashlib.sha256((tmp_path / "off" / f).read_bytes()).hexdigest() for f in
              ("words/train_00000.json", "events/train_00000.json")}  # fmt: skip
    assert digest == {
        "words/train_00000.json": "ba12657a09e46e89872152c653d82385efab226ac608e2b9ac3efd6ae22ad282",
        "events/train_00000.json": "ffc23a2b5c79ab059a0e156e7d6f026904574082576f08a75aff3a3966b442f2",
    }, "the default synthetic benchmark changed: existing numbers would no longer be comparable"


def test_knobs_after_the_motion_change_only_the_audio(clean):
    c0, a0 = clean
    for knobs in (POST, dict(pitch_semitones=4.0)):
        c, a = clip_and_audio(ChannelConfig(**knobs))
        assert [(w.word, w.start, w.end) for w in c.words] == [(w.word, w.start, w.end) for w in c0.words]
        assert c.events["triggers"] == c0.events["triggers"]
        assert c.events["reactions_per_sample"] == c0.events["reactions_per_sample"]
        np.testing.assert_array_equal(c.listener_samples, c0.listener_samples)
        assert len(a) == len(a0) and not np.array_equal(a, a0)
        assert "channel" in c.events and "channel" not in c0.events
    np.testing.assert_array_equal(clip_and_audio(ChannelConfig(**POST))[0].speaker, c0.speaker)  # the clean speech's face


def test_each_knob_draws_from_its_own_stream():
    alone = draw(ChannelConfig(noise=1.0), 3, 5)
    together = draw(ChannelConfig(noise=1.0, reverb=1.0, band=1.0, codec=1.0, rate=(0.8, 1.2), pitch_semitones=2.0), 3, 5)
    assert (alone.noise, alone.snr_db) == (together.noise, together.snr_db)
    assert draw(ChannelConfig(noise=1.0), 3, 6).snr_db != alone.snr_db  # per clip
    assert draw(ChannelConfig(noise=1.0), 4, 5).snr_db != alone.snr_db  # per seed
    a, b = channel_rng(3, 5, "noise").random(), np.random.default_rng([3, 0, 5]).random()
    assert a != b  # not the conversation's stream


def test_invalid_settings_are_refused():
    for bad in (dict(noise=1.5), dict(rate=(1.2, 0.8)), dict(bands=("radio",)), dict(codecs=()), dict(rt60=(0.0, 1.0))):
        with pytest.raises(ValueError, match="channel"):
            ChannelConfig(**bad)
    with pytest.raises(ValueError, match="preset"):
        ChannelConfig.preset("loud")


# ---------------------------------------------------------------- each knob, measured


def test_level_in_db(clean):
    _, a0 = clean
    for i in range(3):
        c, a = clip_and_audio(ChannelConfig(level_db=(-15.0, -2.0)), index=0 if i == 0 else i)
        ref = a0 if i == 0 else clip_and_audio(index=i)[1]
        level = c.events["channel"]["level_db"]
        assert -15 <= level <= -2
        assert abs(db(active_power(a) / active_power(ref)) - level) < 0.01


@pytest.mark.parametrize("kind", ["pink", "white", "babble"])
def test_noise_at_the_drawn_snr(clean, kind):
    _, a0 = clean
    c, a = clip_and_audio(ChannelConfig(noise=1.0, noise_kinds=(kind,), snr_db=(3.0, 25.0)))
    ch = c.events["channel"]
    assert ch["noise"] == kind and 3 <= ch["snr_db"] <= 25
    noise = a.astype(np.float64) - a0
    assert abs(db(active_power(a0) / np.mean(noise**2)) - ch["snr_db"]) < 1.0
    spec = np.abs(np.fft.rfft(noise)) ** 2
    f = np.fft.rfftfreq(len(noise), 1 / SR)
    tilt = db(spec[(f > 100) & (f < 500)].mean() / spec[(f > 4000) & (f < 7000)].mean())
    assert (tilt > 8) if kind == "pink" else (abs(tilt) < 3) if kind == "white" else True
    if kind == "babble":
        assert ch["babble_talkers"] >= 3


def _response_db(band: str) -> tuple[np.ndarray, np.ndarray]:
    from scipy.signal import welch

    x = np.random.default_rng(0).standard_normal(4 * SR)
    f, p0 = welch(x, SR, nperseg=1024)
    _, p1 = welch(band_limit(x, band), SR, nperseg=1024)
    return f, db(p1 / p0)


@pytest.mark.parametrize("band", list(BANDS))
def test_band_limits_attenuate_outside_the_band(band):
    lo, hi = BANDS[band]
    f, h = _response_db(band)
    inside = (f > (lo or 0) * 1.5) & (f < (hi or SR / 2) / 1.5) & (f > 100)
    assert np.all(np.abs(h[inside]) < 1.0)
    outside = (f < lo / 2) if lo else np.zeros_like(f, bool)
    outside |= (f > hi * 1.6) if hi else False
    assert outside.any() and np.all(h[outside] < -20)


def test_band_on_a_clip(clean):
    from scipy.signal import welch

    _, a0 = clean
    c, a = clip_and_audio(ChannelConfig(band=1.0, bands=("telephone",)))
    assert c.events["channel"]["band"] == "telephone"
    f, p0 = welch(a0, SR, nperseg=1024)
    _, p1 = welch(a, SR, nperseg=1024)
    assert db(p1[f > 5500].sum() / p0[f > 5500].sum()) < -20
    assert abs(db(p1[(f > 800) & (f < 2500)].sum() / p0[(f > 800) & (f < 2500)].sum())) < 1.5


@pytest.mark.parametrize("rt60", [0.3, 0.8])
def test_reverb_impulse_response_decays_60_db_in_rt60(rt60):
    h = reverb_ir(rt60, np.random.default_rng(1), drr_db=3.0)
    assert h[0] == 1.0 and abs(db(1.0 / np.sum(h[1:] ** 2)) - 3.0) < 1e-6
    edc = db(np.cumsum((h[1:] ** 2)[::-1])[::-1] / np.sum(h[1:] ** 2))  # Schroeder integration
    t = np.arange(len(edc)) / SR
    fit = (edc < -5) & (edc > -25)
    slope = np.polyfit(t[fit], edc[fit], 1)[0]  # dB per second
    assert abs(-60 / slope - rt60) < 0.1 * rt60


def test_reverb_leaves_a_decaying_tail_after_the_last_word(clean):
    c0, a0 = clean
    c, a = clip_and_audio(ChannelConfig(reverb=1.0, rt60=(0.6, 0.6)))
    assert c.events["channel"]["reverb_rt60"] == 0.6
    end = c0.words[-1].end
    assert len(a0) / SR - end > 0.3

    def energy(y, t0, t1):
        return np.mean(y[int((end + t0) * SR) : int((end + t1) * SR)].astype(np.float64) ** 2) + 1e-20

    speech = active_power(a0)
    assert db(energy(a0, 0.05, 0.15) / speech) < -60  # the clean clip is silent there
    early, late = db(energy(a, 0.02, 0.08) / speech), db(energy(a, 0.17, 0.23) / speech)
    assert early > -35  # a tail
    assert 0.5 * 15 < early - late < 1.6 * 15  # 60 dB per 0.6 s: 15 dB over 0.15 s


def test_codecs(clean):
    from scipy.signal import welch

    _, a0 = clean
    for kind in ("mulaw", "8bit"):
        assert len(np.unique(codec(a0, kind))) <= 256
    mu = codec(a0, "mulaw")
    small = np.abs(a0) < 0.01
    assert np.abs(mu - a0)[small].max() < np.abs(codec(a0, "8bit") - a0)[small].max()  # finer steps near 0
    assert np.abs(codec(a0, "clip", 0.3)).max() <= 0.3 * np.abs(a0).max() + 1e-7
    f, p0 = welch(a0, SR, nperseg=1024)
    _, p1 = welch(codec(a0, "downsample", 8000.0), SR, nperseg=1024)
    assert db(p1[f > 4300].sum() / p0[f > 4300].sum()) < -30
    c, a = clip_and_audio(ChannelConfig(codec=1.0))
    assert c.events["channel"]["codec"] in ("mulaw", "8bit", "clip", "downsample") and np.abs(a).max() <= 1.0


# ---------------------------------------------------------------- voices and rate: before the motion


def _f0(y):
    import librosa

    f = librosa.yin(y, fmin=50, fmax=500, sr=SR, frame_length=1024)
    e = librosa.feature.rms(y=y, frame_length=1024, hop_length=256)[0][: len(f)]
    return float(np.median(f[e > 0.3 * e.max()]))


def _formant_warp(y0, y):
    """The frequency scale that best maps y0's spectral envelope (300-3500 Hz) onto y's."""
    import librosa

    def logenv(z):
        S = np.abs(librosa.stft(z, n_fft=512, hop_length=128))
        keep = S.sum(0) > 0.3 * S.sum(0).max()
        return np.log(_cepstral_envelope(S[:, keep], 512, 24).mean(1))

    a, b, k = logenv(y0), logenv(y), np.arange(257)
    band = (k > 300 / 31.25) & (k < 3500 / 31.25)
    scores = {al: np.corrcoef(a[band], np.interp(k[band] * al, k, b))[0, 1] for al in np.arange(0.8, 1.25, 0.01)}
    return max(scores, key=scores.get)


def test_voice_moves_pitch_and_formants_independently():
    fb = FormantBackend()
    y = np.concatenate([fb.word(w, VOICES[1], Prosody(), np.random.default_rng(0)) for w in ("hello", "banana", "wonderful")])
    for st, formant in ((3.0, 1.0), (-3.0, 1.0), (0.0, 1.15), (0.0, 0.87), (4.0, 1.1)):
        z = shift_voice(y, st, formant)
        assert abs(len(z) - len(y) / formant) <= 2  # pitch keeps the duration; formants come with it
        assert abs(_f0(z) / _f0(y) / 2 ** (st / 12) - 1) < 0.03, (st, formant)
        assert abs(_formant_warp(y, z) - formant) <= 0.04, (st, formant)


class ToneBackend:
    """Words whose length is exactly proportional to the prosody's rate; draws no random numbers."""

    name = "tone"

    def word(self, text, voice, prosody, rng):
        n = int(round((0.12 + 0.03 * len(text)) * prosody.rate * SR))
        return (0.3 * np.sin(2 * np.pi * 200 * np.arange(n) / SR)).astype(np.float32) + 0.01


def test_rate_moves_words_and_reactions_with_the_audio(monkeypatch):
    monkeypatch.setitem(synth._BACKENDS, "tone", ToneBackend())
    cfg = dataclasses.replace(CFG, backend="tone")
    c0, a0 = clip_and_audio(cfg=cfg)
    c, a = clip_and_audio(ChannelConfig(rate=(1.25, 1.25)), cfg=cfg)
    assert c.events["channel"]["speed"] == 1.25 and len(a) == len(a0)
    p0, p = c0.events["phrases"][0], c.events["phrases"][0]
    assert p["text"] == p0["text"] and p["start"] == p0["start"]
    n = len(p0["text"].rstrip("?").split())
    for w0, w in zip(c0.words[:n], c.words[:n], strict=True):  # words 1/1.25 as long, gaps too
        assert abs((w.end - w.start) - (w0.end - w0.start) / 1.25) < 2 / SR
    gaps = [(b.start - a_.end) for a_, b in zip(c.words[: n - 1], c.words[1:n], strict=True)]
    gaps0 = [(b.start - a_.end) for a_, b in zip(c0.words[: n - 1], c0.words[1:n], strict=True)]
    np.testing.assert_allclose(gaps, np.array(gaps0) / 1.25, atol=2 / SR)
    assert p["end"] < p0["end"]
    # the audio is where the words are, and the listener reacts to the words' new times
    inside = np.zeros(len(a), bool)
    for w in c.words:
        inside[int(round(w.start * SR)) : int(round(w.end * SR))] = True
    assert np.all(a[~inside] == 0) and np.all(a[inside] != 0)
    ends = {round(w.end, 4) for w in c.words}
    tau = c.events["tau"]
    for tr in c.events["triggers"]:
        assert tr["time"] in ends
    for r in c.events["reactions"]:
        if r["kind"] == "nod":
            assert abs(r["frame"] - c.events["triggers"][r["trigger"]]["frame"] - tau) <= 1


def test_piper_length_scale_follows_the_rate():
    from realm.data.speech import PiperBackend

    p = PiperBackend()
    slow = p.word("wonderful", VOICES[1], Prosody(rate=1.0), np.random.default_rng(0))
    fast = p.word("wonderful", VOICES[1], Prosody(rate=1 / 1.25), np.random.default_rng(0))
    assert 0.75 < len(fast) / len(slow) < 0.95  # Piper's length scale: phoneme durations (rounded), not exactly 0.8


@pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed")
def test_espeak_voices(clean):
    y = EspeakBackend("en-us").say("hello there")
    assert len(y) > 0.3 * SR and np.sqrt(np.mean(y**2)) > 0.01
    c, a = clip_and_audio(ChannelConfig(espeak=1.0))
    assert c.speaker_id == "espeak:" + c.events["channel"]["espeak_voice"]
    for w in c.words:
        seg = a[int(w.start * SR) : int(w.end * SR)]
        assert np.sqrt(np.mean(seg**2)) > 0.005


@pytest.mark.skipif(espeak_available(), reason="espeak-ng is installed")
def test_espeak_knob_without_the_binary_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="espeak-ng"):
        generate(CFG, tmp_path / "e", channel=ChannelConfig(espeak=0.5))
    assert not (tmp_path / "e").exists()


# ---------------------------------------------------------------- metadata and the command


def test_channel_settings_and_draws_are_recorded(tmp_path):
    from typer.testing import CliRunner

    from realm.cli import app

    out = tmp_path / "d"
    res = CliRunner().invoke(app, ["data", "synth", "--out", str(out), "--hours", "0.005", "--backend", "formant",
                                   "--channel", "robust", "--noise", "1", "--noise-kinds", "pink,white",
                                   "--rate", "0.9", "1.1"])  # fmt: skip
    assert res.exit_code == 0, res.output
    want = dataclasses.replace(ChannelConfig.preset("robust"), noise=1.0, noise_kinds=("pink", "white"), rate=(0.9, 1.1))
    meta = json.loads((out / "meta.json").read_text())
    assert ChannelConfig(**meta["config"]["channel"]) == want
    events = [json.loads(p.read_text()) for p in sorted((out / "events").glob("*.json"))]
    assert events and all(e["channel"]["noise"] in ("pink", "white") for e in events)
    assert all(0.9 <= e["channel"]["speed"] <= 1.1 for e in events)
    assert {e["channel"]["speed"] for e in events} <= {0.9, 0.95, 1.0, 1.05, 1.1}
    bad = CliRunner().invoke(app, ["data", "synth", "--out", str(tmp_path / "x"), "--backend", "formant", "--bands", "radio", "--band", "1"])
    assert bad.exit_code == 2 and "bands" in bad.output and not (tmp_path / "x").exists()


# ---------------------------------------------------------------- benchmarks/real_speech.py


def _bench():
    spec = importlib.util.spec_from_file_location("real_speech", ROOT / "benchmarks" / "real_speech.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class ReplayListener:
    """Stands in for a checkpoint: 'generates' ground-truth listener realisations (K, T, D), sample s
    the realisation s mod K, cut or looped to the audio."""

    def __init__(self, realisations):
        from realm.motion import get_spec

        self.spec, self.fps, self.motion = get_spec("arkit58"), 30.0, realisations

    def generate(self, audio, samples=1, seed=0):
        from realm.audio import n_frames

        T, (K, _, D) = n_frames(len(audio)), self.motion.shape
        return np.stack([np.resize(self.motion[s % K], (T, D)) for s in range(samples)])


def test_real_speech_benchmark_core(clean):
    from realm.data.channel import add_noise, pink_noise
    from realm.metrics import behaviour_numbers, detect_events, speech_offsets

    bench = _bench()
    c0, a0 = clean
    gt = c0.samples()[0]
    n = behaviour_numbers(gt, speech_offsets(a0), "arkit58", 30.0)
    assert n["nods"] == sum(e["kind"] == "nod" for e in detect_events(gt, "arkit58", 30.0))
    assert 0 <= n["nods_after_pause"] <= n["nods"] and n["drift"] < 0.1 and n["pitch_range_deg"] > 0
    speech = bench.jfk(4.0)
    inputs = {"jfk": (speech, None, "real"), "jfk clean": (speech, None, "sweep")}
    inputs["jfk 10 dB"] = (add_noise(speech, pink_noise(len(speech), np.random.default_rng(0)), 10.0), speech, "sweep")
    inputs["silence"] = (np.zeros_like(speech), None, "silence")
    rows = bench.measure(ReplayListener(c0.samples()), inputs, [(a0, c0.samples())], samples=2, log=lambda *a: None)
    assert [r["input"] for r in rows] == ["ground truth (synthetic test)", "model on synthetic test", *inputs]
    for k in ("blinks_pm", "nods_after_pause_pm", "smiles_pm", "pitch_range_deg", "drift"):  # computed the same way
        assert rows[1][k] == pytest.approx(rows[0][k])
    assert rows[-2]["pauses"] == rows[-3]["pauses"]  # pauses of the clean audio
    goals = bench.targets(rows)
    assert len(goals) == 5 and all(isinstance(g["pass"], bool) for g in goals)
    # the silence target reads the silence row: a listener smiling 3 times a minute in silence fails it
    quiet = {g["target"]: g for g in goals}["in silence at most 1 smile and 1 concern event a minute"]
    rows[-1]["smiles_pm"], rows[-1]["concern_pm"] = 0.0, 0.0
    assert {g["target"]: g for g in bench.targets(rows)}[quiet["target"]]["pass"] is True
    rows[-1]["smiles_pm"] = 3.0
    assert {g["target"]: g for g in bench.targets(rows)}[quiet["target"]]["pass"] is False
    assert "| jfk 10 dB |" in bench.table(rows)


@pytest.mark.skipif(not (ROOT / "checkpoints/realm-demo/config.json").exists(), reason="no demo checkpoint")
def test_real_speech_benchmark_with_the_demo_checkpoint(clean):
    import realm

    bench = _bench()
    c0, a0 = clean
    lis = realm.load(ROOT / "checkpoints/realm-demo")
    rows = bench.measure(lis, {"jfk": (bench.jfk(3.0), None, "real")}, [(a0, c0.samples())], samples=1, log=lambda *a: None)
    assert rows[-1]["minutes"] == pytest.approx(3.0 / 60, abs=0.01) and np.isfinite(rows[-1]["drift"])


def test_react_gate_rest_offset_reads_a_drift_to_a_concerned_face(monkeypatch):
    """benchmarks/react_gate.py's rest offset: the second half's mean against the start frame."""
    from realm.motion import get_spec

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    spec_ = importlib.util.spec_from_file_location("react_gate", ROOT / "benchmarks" / "react_gate.py")
    mod = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(mod)
    spec = get_spec("arkit58")
    x0 = np.full(spec.dim, 0.05, np.float32)
    sad = np.tile(x0, (120, 1))
    sad[40:, [spec.channel("mouthFrownLeft"), spec.channel("mouthFrownRight")]] += 0.1  # settles frowning
    sad[40:, spec.channel("browInnerUp")] += 0.2
    calm = np.tile(x0, (120, 1))
    calm[10:30, spec.channel("mouthSmileLeft")] += 0.5  # a smile that ends: back at rest
    r = mod.rest_offset([sad], [x0], spec)
    assert r["frown"] == pytest.approx(0.1, abs=1e-6) and r["brow"] == pytest.approx(0.2, abs=1e-6)
    assert r["offset"] == pytest.approx(0.4 / 52, abs=1e-6)
    r = mod.rest_offset([calm, sad], [x0, x0], spec)
    assert r["frown"] == pytest.approx(0.05, abs=1e-6) and r["offset"] == pytest.approx(0.2 / 52, abs=1e-6)
