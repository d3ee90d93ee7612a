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

EXPR = get_spec("arkit58").indices("expression")


def reaction_xcorr(clips, motions, max_lag=24) -> np.ndarray:
    """Cross-correlation (lags 0..max_lag) of trigger impulses with listener expression energy,
    pooled over clips; energy = summed |frame-to-frame change| of the expression block."""
    xc = np.zeros(max_lag + 1)
    for c, m in zip(clips, motions, strict=True):
        energy = np.abs(np.diff(m[:, EXPR], axis=0)).sum(1)
        energy = (energy - energy.mean()) / (energy.std() + 1e-9)
        for tr in c.events["triggers"]:
            f = tr["frame"]
            if tr["kind"] in ("positive", "negative", "question") and f + max_lag < len(energy):
                xc += energy[f : f + max_lag + 1]
    return xc


@pytest.mark.slow
def test_tiny_realm_learns_the_reaction_delay(tmp_path):
    data = tmp_path / "d"
    generate(SynthConfig(hours=0.25, seed=0, backend="formant", tau=8, listener_samples=1), data)
    kw = dict(d_model=64, ff_dim=128, use_refinement=False, audio_context=16)  # logmel is local: give it context
    train = dict(data=str(data), extractor="logmel", batch_size=32, epochs=50, max_steps=400, lr=3e-3,
                 clip_len=64, clip_stride=8, accelerator="cpu", devices="1", stages=(1,))  # fmt: skip
    clips = load_dataset(data, ("val", "test", "train"))[:12]
    lags = {}
    for name, extra in {"audio": {}, "deaf": {"use_audio": False}}.items():
        train_realm(TrainConfig(**train), REALMConfig(**kw, **extra), tmp_path / name, progress=False)
        lis = realm.load(tmp_path / name)
        motions = [lis.generate(c.audio_path, first_frame=c.listener[0], refine=False)[0] for c in clips]
        xc = reaction_xcorr(clips, motions)
        lags[name] = (int(xc.argmax()), float(xc.max()))
    gt_lag = int(reaction_xcorr(clips, [c.listener for c in clips]).argmax())
    assert abs(gt_lag - 8) <= 2
    assert abs(lags["audio"][0] - 8) <= 2, lags
    assert abs(lags["deaf"][0] - 8) > 2 or lags["deaf"][1] < 0.3 * lags["audio"][1], lags


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
