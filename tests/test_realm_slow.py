"""Long REALM checks, run with ``pytest -m slow`` (benchmarks, not CI)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import realm
from realm.data import load_dataset
from realm.data.synth import SynthConfig, generate
from realm.models.realm import REALMConfig
from realm.motion import get_spec
from realm.train import TrainConfig, train_realm


def click_dataset(root: Path, tau: int = 8, n_clips: int = 14, seconds: float = 16.0, seed: int = 0) -> list:
    """A synthetic set with a known delayed reaction: the speaker's audio holds short noise
    bursts ("clicks"); the listener smiles (fast rise, hold, decay) starting ``tau`` frames after
    each click. Returns the click frames per clip."""
    import soundfile as sf

    from realm.audio import n_samples_for
    from realm.data.clip import Clip, write_clip, write_index
    from realm.data.synth import ease_envelope
    from realm.motion import NormStats

    rng = np.random.default_rng(seed)
    T = int(seconds * 30)
    smile = get_spec("arkit58").channel("mouthSmileLeft")
    rows, clicks_per_clip, motions = [], [], []
    (root / "audio").mkdir(parents=True)
    for i in range(n_clips):
        clicks = 20 + np.cumsum(rng.integers(30, 70, size=12))  # irregular: history cannot predict the next one
        clicks = clicks[clicks < T - 40]
        y = 0.001 * rng.standard_normal(n_samples_for(T)).astype(np.float32)
        m = np.zeros((T, 58), np.float32)  # only the smile moves, so the loss is about the reaction
        m[:, smile] = 0.01 * rng.standard_normal(T)
        for c in clicks:
            a = int(c * 16000 / 30)
            y[a : a + 800] += 0.5 * rng.standard_normal(800)
            m[:, smile] += 0.6 * ease_envelope(T, c + tau, 3, 6, 6)
        split = "val" if i >= n_clips - 2 else "train"
        sf.write(str(root / f"audio/c{i}.wav"), y, 16000)
        clip = Clip(f"c{i}", split, m, "arkit58", audio_path=root / f"audio/c{i}.wav", listener_id="l", speaker_id="s")
        rows.append(write_clip(root, clip))
        clicks_per_clip.append(clicks)
        motions.append(m)
    write_index(root, rows, {"generator": "click_dataset", "tau": tau})
    NormStats.fit(motions, "arkit58").save(root / "stats.npz")
    return clicks_per_clip


def click_xcorr(clicks_per_clip, motions, max_lag=24) -> np.ndarray:
    """Cross-correlation (lags 0..max_lag) of click impulses with the listener's smile velocity."""
    smile = get_spec("arkit58").channel("mouthSmileLeft")
    xc = np.zeros(max_lag + 1)
    for clicks, m in zip(clicks_per_clip, motions, strict=True):
        v = np.diff(m[:, smile])
        v = (v - v.mean()) / (v.std() + 1e-9)
        for c in clicks:
            if c + max_lag < len(v):
                xc += v[c : c + max_lag + 1]
    return xc / sum(len(c) for c in clicks_per_clip)


@pytest.mark.slow
def test_tiny_realm_learns_the_reaction_delay(tmp_path):
    clicks = click_dataset(tmp_path / "d", tau=8)
    clips = load_dataset(tmp_path / "d")
    assert abs(int(click_xcorr(clicks, [c.listener for c in clips]).argmax()) - 8) <= 1  # the data's own delay
    kw = dict(d_model=32, ff_dim=64, use_refinement=False, audio_context=16)  # logmel is local: give it context
    train = dict(data=str(tmp_path / "d"), extractor="logmel", batch_size=16, epochs=100, max_steps=600, lr=2e-3,
                 clip_len=64, clip_stride=8, accelerator="cpu", devices="1", stages=(1,))  # fmt: skip
    peaks = {}
    for name, extra in {"audio": {}, "deaf": {"use_audio": False}}.items():
        train_realm(TrainConfig(**train), REALMConfig(**kw, **extra), tmp_path / name, progress=False)
        lis = realm.load(tmp_path / name)
        motions = [lis.generate(c.audio_path, first_frame=c.listener[0], refine=False)[0] for c in clips]
        xc = click_xcorr(clicks, motions)
        peaks[name] = (int(xc.argmax()), float(xc.max()))
    assert abs(peaks["audio"][0] - 8) <= 2, peaks  # reacts tau frames after the click
    assert peaks["audio"][1] > 0.3, peaks  # and clearly
    assert abs(peaks["deaf"][0] - 8) > 2 or peaks["deaf"][1] < 0.3 * peaks["audio"][1], peaks  # deaf cannot


@pytest.mark.slow
def test_ddp_on_cpu_with_two_processes(tmp_path):
    generate(SynthConfig(hours=0.03, seed=0, backend="formant"), tmp_path / "d")
    realm_bin = Path(sys.executable).parent / "realm"
    cmd = [str(realm_bin), "train", "realm", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "run"),
           "--extractor", "prosody", "--batch-size", "4", "--max-steps", "2", "--epochs", "1", "--stage2-epochs", "1",
           "--clip-stride", "64", "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    lis = realm.load(tmp_path / "run")
    assert lis.config["stage"] == 2
    assert lis.config["results"]["stage1"]["world_size"] == 2


@pytest.mark.slow
def test_ddp_on_cpu_with_two_processes_reading_a_store(tmp_path):
    from realm.data.store import build_store

    generate(SynthConfig(hours=0.03, seed=0, backend="formant"), tmp_path / "d")
    build_store(tmp_path / "d", tmp_path / "store", "prosody")
    realm_bin = Path(sys.executable).parent / "realm"
    cmd = [str(realm_bin), "train", "realm", "--data", str(tmp_path / "d"), "--store", str(tmp_path / "store"),
           "--out", str(tmp_path / "run"), "--extractor", "prosody", "--batch-size", "4", "--max-steps", "2",
           "--epochs", "1", "--stage2-epochs", "1", "--clip-stride", "64", "--accelerator", "cpu", "--devices", "2",
           "--strategy", "ddp"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    lis = realm.load(tmp_path / "run")
    assert lis.config["stage"] == 2 and lis.config["results"]["stage1"]["world_size"] == 2
    assert lis.config["train"]["store"] == str(tmp_path / "store")
