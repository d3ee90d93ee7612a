"""The speaker-emotion classifier (realm.models.emotion, realm.train.emotion): labels, learning, causality, checkpoints, CLI."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from realm.audio import SAMPLE_RATE, extract
from realm.data import load_dataset
from realm.data.clip import Clip
from realm.errors import RealmInputError
from realm.models.emotion import IGNORE, EmotionConfig, EmotionNet, clip_labels, frame_metrics, load_emotion
from realm.train.emotion import EmotionTrainConfig, fit

FPS = 30


def _tone_clip(rng: np.random.Generator, seconds: float = 8.0):
    """A clip of tone segments (0.4-1.2 s); class 1 segments are 12 dB louder and an octave higher."""
    n = int(seconds * SAMPLE_RATE)
    y = np.zeros(n, np.float32)
    labels = np.zeros(int(seconds * FPS), np.int64)
    t = 0.0
    while t < seconds:
        dur = float(rng.uniform(0.4, 1.2))
        c = int(rng.integers(2))
        a, b = int(t * SAMPLE_RATE), min(n, int((t + dur) * SAMPLE_RATE))
        f0, amp = (300.0, 0.4) if c else (150.0, 0.1)
        ts = np.arange(b - a) / SAMPLE_RATE
        y[a:b] = amp * np.sin(2 * np.pi * f0 * ts) + 0.01 * rng.standard_normal(b - a)
        labels[int(round(t * FPS)) : int(round((t + dur) * FPS))] = c
        t += dur
    feats = extract(y, "logmel", cache=False)
    return feats, labels[: len(feats)]


@pytest.fixture(scope="module")
def tones():
    rng = np.random.default_rng(0)
    return [_tone_clip(rng) for _ in range(8)]


@pytest.fixture(scope="module")
def trained(tones):
    cfg = EmotionTrainConfig(
        extractor="logmel", epochs=8, batch_size=4, window=120, seed=0, model={"hidden": 32}
    )
    train, val = tones[:6], tones[6:]
    return fit([f for f, _ in train], [y for _, y in train], [f for f, _ in val], [y for _, y in val],
               ["low", "high"], "logmel", cfg)  # fmt: skip


def test_learns_a_simple_acoustic_property(trained, tones):
    clf, history = trained
    assert history["seconds"] < 30  # a few seconds on one CPU core
    f, y = tones[7]
    prob = clf.predict(f)
    assert prob.shape == (len(f), 2) and np.allclose(prob.sum(1), 1, atol=1e-5)
    m = frame_metrics(prob.argmax(1), y, 2)
    assert m["accuracy"] > 0.9, m  # held-out clip; errors only at the segment boundaries
    assert history["epochs"][history["best_epoch"] - 1]["val_macro_f1"] > 0.9


def test_causal_no_look_ahead():
    torch.manual_seed(0)
    net = EmotionNet(EmotionConfig(in_dim=5, n_classes=3, running_norm=True)).eval()
    x = torch.randn(1, 100, 5)
    x2 = x.clone()
    x2[:, 60:] = torch.randn(1, 40, 5)
    with torch.no_grad():
        a, b = net(x), net(x2)
    assert a.shape == (1, 100, 3)
    assert torch.allclose(a[:, :60], b[:, :60]) and not torch.allclose(a[:, 60:], b[:, 60:])
    assert EmotionConfig(in_dim=5, n_classes=3).lookback == 62  # 2.1 s of look-back at 30 fps


def test_save_load_round_trip(trained, tones, tmp_path):
    clf, _ = trained
    clf.save(tmp_path / "run")
    again = load_emotion(tmp_path / "run")
    f, _ = tones[6]
    assert again.classes == ["low", "high"] and again.extractor == "logmel"
    np.testing.assert_array_equal(clf.predict(f), again.predict(f))
    with pytest.raises(ValueError, match="expected features of shape"):
        clf.predict(f[:, :10])


def test_load_errors(trained, tmp_path):
    clf, _ = trained
    with pytest.raises(RealmInputError, match="not found"):
        load_emotion(tmp_path / "missing")
    run = tmp_path / "run"
    clf.save(run)
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "model_type": "realm"}))
    with pytest.raises(RealmInputError, match="config.json.*not 'emotion'"):
        load_emotion(run)
    (run / "config.json").write_text(json.dumps(cfg))
    (run / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(RealmInputError, match="model.safetensors.*corrupt weights file"):
        load_emotion(run)
    (run / "feature_stats.npz").unlink()
    with pytest.raises(RealmInputError, match="feature_stats.npz.*missing"):
        load_emotion(run)


def test_frame_metrics():
    y = np.array([0, 0, 1, 1, 2, IGNORE])
    p = np.array([0, 1, 1, 1, 0, 2])
    m = frame_metrics(p, y, 3)
    assert m["frames"] == 5 and m["accuracy"] == pytest.approx(3 / 5)
    # F1: class 0 = 2*1/(2+1+1) = 0.5, class 1 = 2*2/(4+1) = 0.8, class 2 = 0
    assert m["f1"] == [0.5, 0.8, 0.0] and m["macro_f1"] == pytest.approx(1.3 / 3)


def test_labels_from_synthetic_phrases_and_per_clip_labels():
    classes = ["negative", "neutral", "positive"]
    events = {"phrases": [{"start": 1.0, "end": 2.0, "emotion": "positive", "cue": True},
                          {"start": 3.0, "end": 4.0, "emotion": "negative", "cue": False}]}  # fmt: skip
    clip = Clip("c", "train", np.zeros((150, 58), np.float32), "arkit58", events=events)
    lab = clip_labels(clip, classes)
    assert (lab[:30] == 1).all() and (lab[30:60] == 2).all() and (lab[60:90] == 1).all()
    assert (lab[90:120] == IGNORE).all() and (lab[120:] == 1).all()  # the no-cue phrase is left out
    assert (clip_labels(clip, classes, cue_only=False)[90:120] == 0).all()
    vico = Clip("v", "train", np.zeros((40, 58), np.float32), "arkit58", emotion="positive")
    assert (clip_labels(vico, classes) == 2).all()
    assert (
        clip_labels(Clip("u", "train", np.zeros((5, 58), np.float32), "arkit58"), classes) == IGNORE
    ).all()


def test_train_emotion_cli_on_synthetic_data(synth_dir, tmp_path):
    from realm.cli import app

    run = tmp_path / "emo"
    args = [
        "train",
        "emotion",
        "--data",
        str(synth_dir),
        "--out",
        str(run),
        "--epochs",
        "2",
        "--window",
        "150",
    ]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "test" in r.output and "majority class" in r.output
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model_type"] == "emotion" and cfg["classes"] == ["negative", "neutral", "positive"]
    for split in ("val", "test", "ood"):
        res = cfg["results"][split]
        assert {"cue", "all", "majority_cue", "majority_all"} <= set(res)
        assert 0 <= res["cue"]["accuracy"] <= 1 and res["cue"]["frames"] > 0
    clf = load_emotion(run)
    clip = load_dataset(synth_dir, "test")[0]
    prob = clf.predict_audio(clip.audio_path)
    assert prob.shape == (clip.n_frames, 3)
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2 and "exists" in r.output


def test_the_checkpoint_module_loads_it_and_realm_load_refuses_it_in_one_line(trained, tmp_path):
    import realm
    from realm.checkpoint import load_any
    from realm.models.emotion import EmotionClassifier

    clf, _ = trained
    clf.save(tmp_path / "run")
    assert isinstance(load_any(tmp_path / "run"), EmotionClassifier)
    with pytest.raises(RealmInputError, match="'emotion' run is not a listener: load it with realm.models.emotion"):
        realm.load(tmp_path / "run")


def test_training_is_a_harness_task_that_resumes_from_ctrl_c_bit_exact(tones, tmp_path, monkeypatch):
    """The classifier trains in the one Lightning harness: Ctrl-C mid-epoch saves, and the resumed
    run ends with the weights and the per-epoch history of an uninterrupted one."""
    import os
    import signal

    from realm.train.emotion import EmotionTask
    from realm.train.harness import TrainingInterrupted

    cfg = EmotionTrainConfig(extractor="logmel", epochs=4, batch_size=4, window=120, seed=3, model={"hidden": 16},
                             accelerator="cpu", devices="1")  # fmt: skip
    train, val = tones[:6], tones[6:]
    args = ([f for f, _ in train], [y for _, y in train], [f for f, _ in val], [y for _, y in val], ["low", "high"],
            "logmel", cfg)  # fmt: skip
    ref, ref_hist = fit(*args, out=tmp_path / "ref")
    assert len(ref_hist["epochs"]) == 4 and (tmp_path / "ref" / "lightning" / "best.ckpt").is_file()
    n, step = [0], EmotionTask.training_step

    def training_step(self, batch, i):
        n[0] += 1
        if n[0] == 5:  # the second epoch's second batch (3 batches an epoch)
            os.kill(os.getpid(), signal.SIGINT)
        return step(self, batch, i)

    monkeypatch.setattr(EmotionTask, "training_step", training_step)
    with pytest.raises(TrainingInterrupted, match="emotion saved after 5 batches"):
        fit(*args, out=tmp_path / "run")
    clf, hist = fit(*args, out=tmp_path / "run", resume=True)
    assert n[0] == 12  # the 5 batches before the interrupt, then the other 7
    assert [h["val_macro_f1"] for h in hist["epochs"]] == [h["val_macro_f1"] for h in ref_hist["epochs"]]
    assert hist["best_epoch"] == ref_hist["best_epoch"]
    for k, v in ref.net.state_dict().items():
        assert torch.equal(v, clf.net.state_dict()[k]), k
