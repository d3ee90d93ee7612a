"""Baselines (DESIGN section 10): each trains or fits, exports, loads through realm.load, generates."""

import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import realm
from realm.cli import app
from realm.data import load_any
from realm.errors import RealmInputError
from realm.motion import NormStats
from realm.registry import BASELINES
from realm.train.baselines import baseline_train_config, train_baseline

#: tiny model sizes so the whole file trains every baseline in seconds on 2 CPU cores
TINY = {
    "random_clip": dict(max_clips=3, max_frames=120, crossfade=4),
    "nearest_neighbour": dict(window=16, hop=12, stride=8),
    "lstm": dict(fusion_dim=24, hidden=16),
    "listenformer": dict(d_model=32, ff_dim=64, n_heads=2, fusion_heads=2, window=30, shift=24),
    "l2l": dict(hidden=32, vq_layers=1, vq_heads=2, vq_ff=64, codes=16, pred_hidden=32, pred_heads=2, pred_ff=64,
                pred_layers=1, speaker_layers=1),
    "lm_listener": dict(width=32, codes=16, depth=1, gpt_dim=32, gpt_layers=1, gpt_heads=2),
}  # fmt: skip


def tiny_cfg(data, name, **kw):
    base = dict(data=str(data), extractor="prosody", batch_size=8, epochs=1, max_steps=3, clip_len=32, clip_stride=16,
                val_stride=32, accelerator="cpu", devices="1")  # fmt: skip
    return baseline_train_config(name, **{**base, **kw})


@pytest.fixture(scope="module")
def ds(tiny_synth):
    return tiny_synth


@pytest.fixture(scope="module")
def runs(ds, tmp_path_factory):
    """Every baseline trained (3 steps) or fitted on ``ds``, keyed by name."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name in BASELINES:
        train_baseline(name, tiny_cfg(ds, name), root / name, model_cfg=TINY.get(name), progress=False)
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def test_clip(ds):
    return load_any(ds, splits="test")[0]


@pytest.mark.parametrize("name", list(BASELINES))
def test_every_baseline_exports_loads_and_generates(name, runs, test_clip):
    conf = json.loads((runs[name] / "config.json").read_text())
    assert conf["model_type"] == name and conf["spec"] == "arkit58" and conf["feature_extractor"] == "prosody"
    assert conf["selected_on"] == "val" and "command" in conf and conf["model"]["audio_dim"] == 4
    lis = realm.load(runs[name])
    assert lis.name == name and lis.spec.name == "arkit58" and lis.fps == 30.0 and lis.extractor == "prosody"
    words = test_clip.words
    m = lis.generate(test_clip.audio_path, samples=2, seed=1, speaker=test_clip.speaker, words=words, refine=True)
    T = len(lis.features(test_clip.audio_path))
    assert m.shape == (2, T, 58) and m.dtype == np.float32 and np.isfinite(m).all()
    assert m[..., :52].min() >= 0 and m[..., :52].max() <= 1  # clamped to the blendshape range
    again = lis.generate(test_clip.audio_path, samples=2, seed=1, speaker=test_clip.speaker, words=words)
    np.testing.assert_array_equal(m, again)  # seeded: reproducible
    assert np.array_equal(m[0], m[1]) != lis.stochastic  # only stochastic baselines give different samples


def test_static_mean_is_the_training_mean(ds, runs, test_clip):
    lis = realm.load(runs["static_mean"])
    train = load_any(ds, splits="train")
    mean = np.concatenate([c.samples().reshape(-1, 58) for c in train]).astype(np.float64).mean(0)
    m = lis.generate(test_clip.audio_path, clamp=False)
    np.testing.assert_allclose(m[0], np.broadcast_to(mean, m[0].shape), atol=1e-5)


def test_mirror_is_the_speaker_motion_in_listener_statistics(ds, runs, test_clip):
    lis = realm.load(runs["mirror"])
    train = load_any(ds, splits="train")
    spk = NormStats.fit([c.speaker for c in train])
    feats = lis.features(test_clip.audio_path)
    T = len(feats)
    m = lis.generate(None, features=feats, speaker=test_clip.speaker[:T], clamp=False)
    expected = lis.stats.mean + lis.stats.std * (test_clip.speaker[:T] - spk.mean) / spk.std
    np.testing.assert_allclose(m[0], expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(RealmInputError, match="speaker"):
        lis.generate(None, features=feats)  # audio only: the mirror has nothing to copy
    with pytest.raises(RealmInputError, match="frames"):
        lis.generate(None, features=feats, speaker=test_clip.speaker[: T - 10])


def test_nearest_neighbour_returns_the_training_window_for_its_own_audio(ds, runs):
    lis = realm.load(runs["nearest_neighbour"])
    train = load_any(ds, splits="train")
    W = lis.model.config.window
    ci, s = (int(v) for v in lis.model.index[5])
    clip = train[ci]
    from realm.data.windows import clip_features

    feats = lis.feature_stats.apply(clip_features([clip], "prosody")[0][s : s + W])
    m = lis.generate(None, features=feats, clamp=False)
    np.testing.assert_allclose(m[0], clip.listener[s : s + W], atol=1e-5)


def test_random_clip_gives_stretches_of_training_clips(ds, runs):
    lis = realm.load(runs["random_clip"])
    feats = np.zeros((50, 4), np.float32)
    m = lis.generate(None, features=feats, samples=3, seed=0, clamp=False)
    assert not np.array_equal(m[0], m[1])
    train = {c.clip_id: c.listener for c in load_any(ds, splits="train")}
    for k in range(3):  # 50 frames < every bank clip: each sample is one contiguous training stretch
        found = any(
            np.allclose(m[k], x[s : s + 50], atol=1e-5) for x in train.values() for s in range(min(120, len(x)) - 49)
        )
        assert found


def test_lstm_learns_a_tiny_task():
    """The listener's expression follows the speaker's audio one frame later: the LSTM must learn it."""
    from realm.models.baselines.lstm import LSTMConfig, LSTMListener

    torch.manual_seed(0)
    model = LSTMListener(LSTMConfig(spec="arkit58", audio_dim=4, speaker_dim=58, speaker_spec="arkit58", fusion_dim=32, hidden=32))
    g = torch.Generator().manual_seed(0)
    audio = torch.randn(8, 24, 4, generator=g)
    motion = torch.zeros(8, 24, 58)
    motion[:, 1:, :4] = audio[:, :-1]  # expression dims 0..3 copy the previous frame's audio
    batch = {"audio": audio, "motion": motion, "speaker": torch.zeros(8, 24, 58), "mask": torch.ones(8, 24, dtype=torch.bool)}
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    losses = []
    for _ in range(40):
        out = model.loss(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["expression"].detach()))
    assert losses[-1] < 0.35 * losses[0]


def test_lstm_output_starts_at_the_given_first_frame(runs, test_clip):
    lis = realm.load(runs["lstm"])
    first = np.full(58, 0.3, np.float32)
    m = lis.generate(test_clip.audio_path, first_frame=first, speaker=test_clip.speaker, clamp=False)
    np.testing.assert_allclose(m[0, 0], first, atol=1e-5)
    hist = np.stack([first * 0.5, first])  # history: its last frame starts the listener
    np.testing.assert_allclose(lis.generate(test_clip.audio_path, history=hist, speaker=test_clip.speaker, clamp=False), m)


def test_listenformer_stage1_is_teacher_forced_and_causal_stage2_is_not():
    from realm.models.baselines.listenformer import ListenFormer, ListenFormerConfig

    torch.manual_seed(0)
    model = ListenFormer(ListenFormerConfig(spec="arkit58", audio_dim=4, speaker_dim=58, speaker_spec="arkit58",
                                            d_model=32, ff_dim=64, n_heads=2, fusion_heads=2)).eval()  # fmt: skip
    audio, spk, gt = torch.randn(1, 20, 4), torch.randn(1, 20, 58), torch.randn(1, 20, 58)
    a = model.window(audio, spk, gt, causal=True)
    changed = gt.clone()
    changed[:, 12:] += 1.0
    b = model.window(audio, spk, changed, causal=True)
    torch.testing.assert_close(a[:, :13], b[:, :13])  # frame t+1 reads ground truth up to t only
    assert not torch.allclose(a[:, 13:], b[:, 13:])
    torch.testing.assert_close(a[:, 0], gt[:, 0])
    # inference: windows of `window` frames shifted by `shift` cover any length, frame 0 is the given one
    model.config.window, model.config.shift = 12, 8
    first = torch.randn(1, 58)
    out = model.sample(torch.randn(1, 47, 4), first, torch.randn(1, 47, 58), samples=2)
    assert out.shape == (2, 47, 58) and torch.isfinite(out).all()
    torch.testing.assert_close(out[:, 0], first.expand(2, -1))



def test_nucleus_sampling_keeps_the_top_p_mass_and_greedy_at_zero_temperature():
    from realm.models.baselines.base import seeded, top_p_sample

    logits = torch.log(torch.tensor([[0.6, 0.25, 0.1, 0.05]]))
    g = seeded(0, 0)
    drawn = {int(top_p_sample(logits, 1.0, 0.8, g)) for _ in range(200)}
    assert drawn == {0, 1}  # 0.6 + 0.25 reaches 0.8: tokens 2 and 3 are never drawn
    assert {int(top_p_sample(logits, 1.0, 0.5, g)) for _ in range(50)} == {0}
    assert int(top_p_sample(logits, 0.0, 0.9, g)) == 0


def test_l2l_tokens_cover_8_frames_and_the_predictor_sees_only_the_past():
    from realm.models.baselines.l2l import L2LConfig, Learning2Listen

    torch.manual_seed(0)
    m = Learning2Listen(L2LConfig(spec="arkit58", audio_dim=4, speaker_dim=58, speaker_spec="arkit58", **TINY["l2l"])).eval()
    motion = torch.randn(2, 64, 58)
    tokens = m.tokenize(motion)
    assert tokens.shape == (2, 8) and m.detokenize(tokens).shape == (2, 64, 58)
    assert m.detokenize(tokens[:, :5]).shape == (2, 40, 58)  # a partial chunk decodes too
    audio, spk = torch.randn(2, 64, 4), torch.randn(2, 64, 58)
    j = torch.arange(8)
    past, visible, a, s = m.contexts(audio, spk, tokens, j)
    assert past.shape == (16, 4) and a.shape == (16, 40, 4) and s.shape == (16, 40, 58)
    assert not visible[0].any() and visible[7].all()  # token 0 has no past, token 7 sees tokens 3..6
    assert past[7].tolist() == tokens[0, 3:7].tolist()
    torch.testing.assert_close(a[7], audio[0, 24:64])  # the 32 past frames and the token's own 8
    torch.testing.assert_close(a[0, -8:], audio[0, :8])
    assert (a[0, :32] == 0).all()  # before the clip: zeros


def test_lm_listener_interleaves_words_at_their_end_frames(ds):
    from realm.models.baselines.lmlistener import LMListener, LMListenerConfig
    from realm.train import TrainConfig, prepare_data

    m = LMListener(LMListenerConfig(spec="arkit58", audio_dim=4, vocab=["hi", "there"], **TINY["lm_listener"]))
    ids, pos = m.sequence([5, 6, 7], word_ids=[1, 2, 0], word_end=[-10, 5, 8])
    bos, w = m.bos, m.word0
    # word ending at frame -10 (before the window) -> prefix; end 5 < 8 -> before token 1; end 8 < 16 -> before token 2
    assert ids == [bos, w + 1, 5, w + 2, 6, w + 0, 7] and pos == [2, 4, 6]
    prep = prepare_data(TrainConfig(data=str(ds), extractor="prosody", clip_len=64, clip_stride=64, val_stride=64))
    LMListener.configure(m.config, prep)
    assert m.config.vocab and all(v == v.lower() for v in m.config.vocab)
    m = LMListener(m.config)
    item = m.wrap_dataset(prep.train)[3]
    clip, start = prep.train.clips[int(item["clip"])], int(item["start"])
    ends = item["word_end"][item["word_ids"] >= 0]
    expected = [w for w in clip.words if -90 <= int(np.floor(w.end * 30)) - start < 64]
    assert len(ends) == len(expected) and ends.min() >= -90 and ends.max() < 64  # 3 s before + the window

def test_neural_baseline_resumes_from_its_last_checkpoint(ds, tmp_path):
    run = tmp_path / "lstm"
    train_baseline("lstm", tiny_cfg(ds, "lstm", max_steps=2), run, model_cfg=TINY["lstm"], progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        train_baseline("lstm", tiny_cfg(ds, "lstm", max_steps=2), run, model_cfg=TINY["lstm"], progress=False)
    res = train_baseline("lstm", tiny_cfg(ds, "lstm", max_steps=4), run, resume=True, progress=False)
    assert res["train"]["steps"] == 4  # continued from step 2
    assert (run / "logs/lstm/metrics.csv").exists() and (run / "lightning/last.ckpt").exists()
    assert json.loads((run / "config.json").read_text())["model"]["hidden"] == TINY["lstm"]["hidden"]


def test_without_speaker_motion_lstm_reads_zeros_and_mirror_refuses(ds, tmp_path, caplog):
    nospk = tmp_path / "nospk"
    shutil.copytree(ds, nospk)
    for f in (nospk / "motion").glob("*.npz"):
        with np.load(f) as d:
            arrays = {k: d[k] for k in d.files if not k.startswith("speaker")}
        np.savez(f, **arrays)
    with caplog.at_level("WARNING"):
        train_baseline("lstm", tiny_cfg(nospk, "lstm", max_steps=1), tmp_path / "lstm", model_cfg=TINY["lstm"], progress=False)
    assert "no speaker motion" in caplog.text
    lis = realm.load(tmp_path / "lstm")
    assert lis.model.config.speaker_spec == "" and lis.generate(None, features=np.zeros((20, 4), np.float32)).shape == (1, 20, 58)
    with pytest.raises(RealmInputError, match="speaker motion"):
        train_baseline("mirror", tiny_cfg(nospk, "mirror"), tmp_path / "mirror", progress=False)


def test_corrupt_or_foreign_configs_name_the_file(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["static_mean"], run)
    conf = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**conf, "model": {**conf["model"], "bogus": 1}}))
    with pytest.raises(RealmInputError, match=r"config\.json.*bogus"):
        realm.load(run)
    (run / "config.json").write_text(json.dumps({**conf, "model_type": "nonesuch"}))
    with pytest.raises(RealmInputError, match=r"config\.json.*nonesuch"):
        realm.load(run)
    (run / "config.json").write_text("{ not json")
    with pytest.raises(RealmInputError, match=r"config\.json"):
        realm.load(run)
    (run / "config.json").write_text(json.dumps(conf))
    (run / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(RealmInputError, match=r"model\.safetensors"):
        realm.load(run)


def test_cli_trains_a_baseline_and_generates_with_it(ds, runs, tmp_path):
    r = CliRunner().invoke(app, ["train", "static_mean", "--data", str(ds), "--out", str(tmp_path / "sm"), "-e", "prosody"])
    assert r.exit_code == 0, r.output
    audio = next((ds / "audio").glob("test_*.wav"))
    r = CliRunner().invoke(app, ["generate", "-c", str(tmp_path / "sm"), "-a", str(audio), "-o", str(tmp_path / "m.npz")])
    assert r.exit_code == 0, r.output
    with np.load(tmp_path / "m.npz") as d:
        assert d["listener"].shape[2] == 58
    r = CliRunner().invoke(app, ["generate", "-c", str(runs["mirror"]), "-a", str(audio), "-o", str(tmp_path / "x.npz")])
    assert r.exit_code == 2 and "speaker" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["train", "lstm", "--data", str(ds), "--out", str(tmp_path / "l"), "--set", "nonsense"])
    assert r.exit_code == 2 and "FIELD=VALUE" in r.output
