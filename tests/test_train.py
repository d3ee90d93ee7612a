"""Two-stage training through Lightning: export, selection on val, resume."""

import json

import numpy as np
import pytest

import realm
from realm.models.realm import REALMConfig
from realm.train import TrainConfig, train_realm

TINY = dict(d_model=32, ff_dim=64, refine_dim=32, refine_ff=64)


def cfg(data, **kw):
    base = dict(data=str(data), extractor="prosody", batch_size=8, epochs=1, stage2_epochs=1, max_steps=3,
                clip_stride=32, val_stride=64, accelerator="cpu", devices="1")  # fmt: skip
    return TrainConfig(**{**base, **kw})


def test_two_stages_export_a_loadable_model_selected_on_val(synth_dir, tmp_path):
    res = train_realm(cfg(synth_dir), REALMConfig(**TINY), tmp_path / "run", progress=False)
    assert set(res) == {"stage1", "stage2"}
    assert res["stage1"]["val/loss"] is not None and res["stage2"]["val/fd_delta"] is not None
    conf = json.loads((tmp_path / "run/config.json").read_text())
    assert conf["stage"] == 2 and conf["selected_on"] == "val" and conf["feature_extractor"] == "prosody"
    assert conf["spec"] == "arkit58" and conf["model"]["audio_dim"] == 4
    for f in ("model.safetensors", "stats.npz", "feature_stats.npz"):
        assert (tmp_path / "run" / f).exists()
    assert (tmp_path / "run/logs/stage1/metrics.csv").exists()
    assert list((tmp_path / "run/logs/stage1").glob("events.out.tfevents.*"))
    lis = realm.load(tmp_path / "run")
    clip_audio = next((synth_dir / "audio").glob("test_*.wav"))
    motion = lis.generate(clip_audio, samples=2)
    assert motion.shape[0] == 2 and motion.shape[2] == 58 and np.isfinite(motion).all()


def test_existing_run_needs_resume_and_resume_continues(synth_dir, tmp_path):
    run = tmp_path / "run"
    train_realm(cfg(synth_dir, stages=(1,)), REALMConfig(**TINY), run, progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        train_realm(cfg(synth_dir, stages=(1,)), REALMConfig(**TINY), run, progress=False)
    # resuming runs the stage not done yet, from stage 1's best checkpoint
    res = train_realm(cfg(synth_dir), REALMConfig(**TINY), run, resume=True, progress=False)
    assert set(res) == {"stage2"}
    assert json.loads((run / "config.json").read_text())["stage"] == 2


def test_resume_an_interrupted_stage_from_its_last_checkpoint(synth_dir, tmp_path):
    run = tmp_path / "run"
    train_realm(cfg(synth_dir, stages=(1,), max_steps=2), REALMConfig(**TINY), run, progress=False)
    state = json.loads((run / "train_state.json").read_text())
    state["done"] = []  # pretend stage 1 was interrupted after its last checkpoint
    (run / "train_state.json").write_text(json.dumps(state))
    res = train_realm(cfg(synth_dir, stages=(1,), max_steps=4), REALMConfig(**TINY), run, resume=True, progress=False)
    assert res["stage1"]["steps"] == 4  # continued from step 2, not from 0
