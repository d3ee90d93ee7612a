"""Checkpoints, offline generation, streaming, and the generate command."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import realm
from realm.audio import load_audio
from realm.checkpoint import save
from realm.cli import app
from realm.errors import RealmInputError
from realm.models.realm import REALM, REALMConfig
from realm.motion import NormStats
from tests.conftest import JFK

SMALL = dict(spec="arkit58", audio_dim=80, d_model=32, ff_dim=64, refine_dim=32, refine_ff=64)


def make_run(root, **extra):
    """A small random REALM checkpoint whose refinement is not the identity."""
    torch.manual_seed(0)
    model = REALM(REALMConfig(**SMALL, **extra))
    torch.nn.init.normal_(model.refinement.out.weight, std=0.05)
    rng = np.random.default_rng(0)
    stats = NormStats(rng.uniform(0, 0.3, 58).astype(np.float32), rng.uniform(0.01, 0.1, 58).astype(np.float32), "arkit58")
    fstats = NormStats(rng.normal(-5, 1, 80).astype(np.float32), rng.uniform(1, 3, 80).astype(np.float32), "logmel")
    if hasattr(model, "out_bounds"):  # branch_into="offset": the bounds as training sets them
        model.set_out_bounds(stats)
    save(root, model, stats, fstats, "logmel", {"stage": 2})
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("ckpt") / "run")


@pytest.fixture(scope="module")
def context_run_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("ckpt") / "ctx", audio_context=16)


def test_round_trip_is_bit_identical(run_dir, tmp_path):
    a = realm.load(run_dir)
    y = load_audio(JFK)[: 16000 * 3]
    m1 = a.generate(y, samples=2, seed=5)
    assert m1.shape == (2, 90, 58) and not np.array_equal(m1[0], m1[1])
    save(tmp_path / "again", a.model, a.stats, a.feature_stats, a.extractor, {})
    b = realm.load(tmp_path / "again")
    assert np.array_equal(m1, b.generate(y, samples=2, seed=5))
    assert np.array_equal(m1, a.generate(y, samples=2, seed=5))  # same seed, same output
    assert not np.array_equal(m1, a.generate(y, samples=2, seed=6))
    coarse = a.generate(y, refine=False)
    np.testing.assert_array_equal(coarse[0, 0], a.stats.mean)  # starts at the training mean frame


def test_corrupt_or_mismatched_checkpoints_give_clear_errors(run_dir, tmp_path):
    import shutil

    with pytest.raises(RealmInputError, match="checkpoint directory not found"):
        realm.load(tmp_path / "nothing")
    bad = tmp_path / "bad"
    shutil.copytree(run_dir, bad)
    (bad / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(RealmInputError, match="model.safetensors: corrupt weights file"):
        realm.load(bad)
    shutil.copytree(run_dir, tmp_path / "mis")
    cfg = json.loads((tmp_path / "mis/config.json").read_text())
    cfg["model"]["d_model"] = 64
    (tmp_path / "mis/config.json").write_text(json.dumps(cfg))
    with pytest.raises(RealmInputError, match="weights do not match config.json"):
        realm.load(tmp_path / "mis")
    shutil.copytree(run_dir, tmp_path / "nostats")
    (tmp_path / "nostats/stats.npz").unlink()
    with pytest.raises(RealmInputError, match="stats.npz: missing checkpoint file"):
        realm.load(tmp_path / "nostats")
    # a diverged run's NaN weights are refused at load, naming the tensor, not streamed as NaN frames
    from safetensors.torch import load_file, save_file

    shutil.copytree(run_dir, tmp_path / "nan")
    state = load_file(str(tmp_path / "nan/model.safetensors"))
    name = next(k for k, v in state.items() if v.dim() == 2)
    state[name][0, 0] = float("nan")
    save_file(state, str(tmp_path / "nan/model.safetensors"))
    with pytest.raises(RealmInputError, match=r"model.safetensors: non-finite \(NaN or inf\) weights in "):
        realm.load(tmp_path / "nan")
    shutil.copytree(run_dir, tmp_path / "infstats")
    st = NormStats.load(tmp_path / "infstats/stats.npz")
    st.std[3] = np.inf
    st.save(tmp_path / "infstats/stats.npz")
    with pytest.raises(RealmInputError, match="stats.npz: normalisation stats must be finite"):
        realm.load(tmp_path / "infstats")


def test_writers_refuse_non_finite_values(tmp_path):
    from realm.io import save_npy, save_npz

    with pytest.raises(ValueError, match="refusing to write listener with 1 non-finite"):
        save_npz(tmp_path / "m.npz", listener=np.array([0.0, np.nan]), spec=np.array("arkit58"))
    with pytest.raises(ValueError, match="non-finite"):
        save_npy(tmp_path / "f.npy", np.array([np.inf], np.float32))
    assert not (tmp_path / "m.npz").exists() and not (tmp_path / "f.npy").exists()


@pytest.mark.parametrize("chunk", [160, 1234, 16000])
def test_streaming_gives_the_offline_frames(run_dir, chunk):
    lis = realm.load(run_dir)
    y = load_audio(JFK)[: int(16000 * 4.3)]
    offline = lis.generate(y, seed=3)[0]
    s = lis.streamer(seed=3)
    got = [s.push(y[i : i + chunk]) for i in range(0, len(y), chunk)]
    got.append(s.flush())
    streamed = np.concatenate(got)
    assert streamed.shape == offline.shape
    np.testing.assert_allclose(streamed, offline, atol=1e-5)
    assert s.latency_s == pytest.approx(16 / 30 + 400 / 16000)


def test_streaming_with_audio_context_gives_the_offline_frames(context_run_dir):
    lis = realm.load(context_run_dir)
    y = load_audio(JFK)[: int(16000 * 3.1)]
    offline = lis.generate(y, seed=2)[0]
    s = lis.streamer(seed=2)
    streamed = np.concatenate([s.push(y[i : i + 2000]) for i in range(0, len(y), 2000)] + [s.flush()])
    np.testing.assert_allclose(streamed, offline, atol=1e-5)


def test_a_model_with_the_branch_offset_streams_its_offline_frames(tmp_path):
    """branch_into="offset" and react_shift: the streamer carries the offset, the offset-free history
    and the previous window's latent from window to window as the offline rollout does (with the
    latent in the queries too, and a channel left to the decoder)."""
    lis = realm.load(make_run(tmp_path / "off", audio_context=16, latent_dim=4, latent_branch=True,
                              branch_into="offset", react_shift=8, offset_floor="rest", zero_init_heads=False,
                              branch_queries=True, branch_exclude=("mouthFrownLeft",)))  # fmt: skip
    with torch.no_grad():
        lis.model.decoder.branch[2].weight.mul_(30.0)  # offsets that reach the bounds and the rest floor
    y = load_audio(JFK)[: int(16000 * 3.1)]
    raw = lis.generate(y, seed=2, refine=False, clamp=False)[0]
    ex = lis.spec.block("expression").slice
    assert (np.abs(raw[16:, ex] - lis.stats.mean[ex]) < 1e-5).mean() > 0.05  # held at the rest (the mean frame)
    offline = lis.generate(y, seed=2)[0]
    assert np.abs(offline - lis.generate(y, seed=3)[0]).max() > 1e-3  # the latents show (through the offset)
    s = lis.streamer(seed=2)
    streamed = np.concatenate([s.push(y[i : i + 1500]) for i in range(0, len(y), 1500)] + [s.flush()])
    np.testing.assert_allclose(streamed, offline, atol=1e-5)


def test_a_model_told_its_reaction_kinds_draws_them_and_streams_its_offline_frames(tmp_path):
    """react_condition (here without a latent for the queries): each window's kinds are drawn from the
    seeded latent, so seeds differ, offline and streaming draw the same kinds (the shifted embedding
    carried from window to window), and at kind_temperature 0 (not latent_temperature, which scales the
    queries' latent) every seed plays the same kinds."""
    lis = realm.load(make_run(tmp_path / "kinds", audio_context=16, react_condition=("smile", "concern"),
                              react_shift=8, zero_init_heads=False))  # fmt: skip
    with torch.no_grad():
        lis.model.decoder.kind_embed.weight.normal_(0, 3.0)
        lis.model.decoder.kind_head[-1].bias.zero_()  # p about 0.5: the drawn kinds differ between seeds
    y = load_audio(JFK)[: int(16000 * 3.1)]
    offline = lis.generate(y, seed=2)[0]
    assert np.abs(offline - lis.generate(y, seed=3)[0]).max() > 1e-3
    s = lis.streamer(seed=2)
    streamed = np.concatenate([s.push(y[i : i + 1500]) for i in range(0, len(y), 1500)] + [s.flush()])
    np.testing.assert_allclose(streamed, offline, atol=1e-5)
    lis.model.config.latent_temperature = 0.0
    a, b = (lis.generate(y, seed=k, refine=False)[0] for k in (2, 3))
    assert np.abs(a - b).max() > 1e-3
    lis.model.config.kind_temperature = 0.0
    a, b = (lis.generate(y, seed=k, refine=False)[0] for k in (2, 3))
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_a_window_8_model_streams_its_offline_frames_half_a_window_sooner(tmp_path):
    """window 8 (the first frame of a window waits 8 frames of audio, not 16): streaming equals
    offline, and the algorithmic latency is 8 frames + the feature lookahead."""
    lis = realm.load(make_run(tmp_path / "w8", window=8, audio_context=16))
    y = load_audio(JFK)[: int(16000 * 3.1)]
    offline = lis.generate(y, seed=2)[0]
    s = lis.streamer(seed=2)
    streamed = np.concatenate([s.push(y[i : i + 1500]) for i in range(0, len(y), 1500)] + [s.flush()])
    np.testing.assert_allclose(streamed, offline, atol=1e-5)
    assert s.latency_s == pytest.approx(8 / 30 + 400 / 16000)


def test_streaming_emits_frames_before_the_audio_ends(run_dir):
    lis = realm.load(run_dir)
    s = lis.streamer()
    y = load_audio(JFK)[:16000]
    first = s.push(y[:9000])  # 0.56 s: the first 16-frame window (0.533 s + 25 ms context) is ready
    assert first.shape == (16, 58)
    assert s.push(np.zeros(10, np.float32)).shape == (0, 58)


def test_generate_command(run_dir, tmp_path):
    r = CliRunner().invoke(app, ["generate", "-c", str(run_dir), "-a", str(JFK), "-o", str(tmp_path / "l.npz"),
                                 "--samples", "2", "--seed", "1"])  # fmt: skip
    assert r.exit_code == 0, r.output
    with np.load(tmp_path / "l.npz") as d:
        assert d["listener"].shape == (2, 330, 58) and str(d["spec"]) == "arkit58" and float(d["fps"]) == 30
        first = d["listener"][0]
    np.savez(tmp_path / "h.npz", listener=first[:20])
    r = CliRunner().invoke(app, ["generate", "-c", str(run_dir), "-a", str(JFK), "-o", str(tmp_path / "h_out.npz"),
                                 "--history", str(tmp_path / "h.npz")])  # fmt: skip
    assert r.exit_code == 0, r.output
    np.save(tmp_path / "w.npy", np.zeros((5, 57)))
    r = CliRunner().invoke(app, ["generate", "-c", str(run_dir), "-a", str(JFK), "-o", str(tmp_path / "x.npz"),
                                 "--first-frame", str(tmp_path / "w.npy")])  # fmt: skip
    assert r.exit_code == 2 and "wrong coefficient width 57" in r.output


@pytest.fixture(scope="module")
def anchor_run_dir(tmp_path_factory):
    extra = dict(audio_context=16, identity_anchor=True, zero_init_heads=False)  # random heads: the anchor matters
    return make_run(tmp_path_factory.mktemp("ckpt") / "anchor", **extra)


def test_identity_anchor_is_saved_and_streams_like_offline(anchor_run_dir):
    lis = realm.load(anchor_run_dir)
    assert lis.model.config.identity_anchor
    y = load_audio(JFK)[: int(16000 * 3.1)]
    f0 = lis.stats.mean + 0.05
    offline = lis.generate(y, first_frame=f0, seed=2)[0]
    s = lis.streamer(first_frame=f0, seed=2)
    streamed = np.concatenate([s.push(y[i : i + 3000]) for i in range(0, len(y), 3000)] + [s.flush()])
    np.testing.assert_allclose(streamed, offline, atol=1e-5)
    hist = np.tile(f0, (20, 1))
    via_history = lis.generate(y, history=hist, seed=2)[0]
    s = lis.streamer(history=hist, seed=2)
    streamed = np.concatenate([s.push(y[i : i + 3000]) for i in range(0, len(y), 3000)] + [s.flush()])
    np.testing.assert_allclose(streamed, via_history, atol=1e-5)


@pytest.fixture(scope="module")
def latent_run_dir(tmp_path_factory):
    extra = dict(audio_context=16, latent_dim=8, zero_init_heads=False)  # random heads: the latent matters
    root = make_run(tmp_path_factory.mktemp("ckpt") / "latent", **extra)
    return root


def test_stochastic_coarse_samples_differ_reproducibly_and_stream_like_offline(latent_run_dir):
    lis = realm.load(latent_run_dir)
    assert lis.model.config.latent_dim == 8 and lis.stochastic
    y = load_audio(JFK)[: int(16000 * 3.1)]
    coarse = lis.generate(y, samples=3, seed=4, refine=False)
    assert coarse.shape == (3, 93, 58)
    np.testing.assert_array_equal(coarse[:, 0], np.broadcast_to(lis.stats.mean, (3, 58)))  # frame 0 is given
    for i, j in [(0, 1), (0, 2), (1, 2)]:  # each sample its own latents: different motion after frame 0
        assert np.abs(coarse[i, 1:] - coarse[j, 1:]).max() > 1e-3
    np.testing.assert_array_equal(coarse, lis.generate(y, samples=3, seed=4, refine=False))  # same seed, same samples
    assert not np.array_equal(coarse[0], lis.generate(y, samples=1, seed=5, refine=False)[0])
    # sample s is the same whether drawn alone or among others, and streams to the same frames
    offline = lis.generate(y, samples=2, seed=4)
    for k in (0, 1):
        s = lis.streamer(seed=4, sample=k)
        streamed = np.concatenate([s.push(y[i : i + 2500]) for i in range(0, len(y), 2500)] + [s.flush()])
        np.testing.assert_allclose(streamed, offline[k], atol=1e-5)


def test_generation_reports_progress_to_the_end(run_dir):
    lis = realm.load(run_dir)
    y = load_audio(JFK)[: 16000 * 3]
    seen = []
    plain = lis.generate(y, seed=1, samples=2)
    got = lis.generate(y, seed=1, samples=2, progress=seen.append)
    np.testing.assert_array_equal(got, plain)  # progress changes nothing
    assert len(seen) > 5 and seen == sorted(seen) and seen[-1] == pytest.approx(1.0) and seen[0] < 0.2


def test_latent_temperature_scales_the_samples_spread_around_the_mean(latent_run_dir, tmp_path):
    import shutil

    y = load_audio(JFK)[: int(16000 * 3.1)]
    runs = {}
    for t in (0.0, 0.5, 1.0):
        run = tmp_path / f"t{t}"
        shutil.copytree(latent_run_dir, run)
        cfg = json.loads((run / "config.json").read_text())
        cfg["model"]["latent_temperature"] = t
        (run / "config.json").write_text(json.dumps(cfg))
        runs[t] = realm.load(run).generate(y, samples=2, seed=4, refine=False)
    np.testing.assert_array_equal(runs[0.0][0], runs[0.0][1])  # temperature 0: every sample is the mean path
    spread = {t: np.abs(m[0] - m[1]).mean() for t, m in runs.items()}
    assert 0 < spread[0.5] < spread[1.0]
    s = realm.load(tmp_path / "t0.5").streamer(seed=4, sample=1)  # streaming draws the same scaled latents
    streamed = np.concatenate([s.push(y[i : i + 2500]) for i in range(0, len(y), 2500)] + [s.flush()])
    np.testing.assert_allclose(streamed, realm.load(tmp_path / "t0.5").generate(y, samples=2, seed=4)[1], atol=1e-5)


@pytest.mark.parametrize("extractor", ["logmel", "prosody"])
def test_a_long_file_is_featurised_a_block_at_a_time_as_if_whole(tmp_path, extractor):
    """realm.audio.file_features (long files: the waveform is never held whole) gives the
    whole-file features, also for a stereo file and a last block shorter than the others."""
    import soundfile as sf

    from realm.audio import extract, file_features, load_audio

    y = load_audio(JFK)
    mono, stereo = tmp_path / "mono.flac", tmp_path / "stereo.wav"
    sf.write(mono, y, 16000)
    sf.write(stereo, np.stack([y, 0.5 * y[::-1]], axis=1), 16000, subtype="FLOAT")
    for path in (mono, stereo):
        whole = extract(path, extractor, cache=False)
        blocks = file_features(extractor, path, block_s=2.3, min_s=0)
        assert blocks.shape == whole.shape
        np.testing.assert_allclose(blocks, whole, atol=1e-4, rtol=1e-4)
    assert file_features(extractor, mono) is None  # 11 s: read whole, through the cache
    assert file_features(extractor, JFK, min_s=0) is None  # 44.1 kHz: read whole and resampled
