"""Two-stage training through Lightning: export, selection on val, resume."""

import json

import numpy as np
import pytest
import torch

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
    assert res["stage1"]["val/loss"] is not None and res["stage2"]["val/select"] is not None
    coarse = res["stage2"]["coarse_val"]
    assert set(coarse["coarse"]) == {"fd_exp", "fd_delta_exp", "blink_rate"} and coarse["gt_blink_rate"] >= 0
    assert {"val/fd_exp", "val/fd_delta", "val/select"} <= set(res["stage2"]["last_val"])
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


def test_stage2_retrains_the_refinement_of_another_run(synth_dir, tmp_path):
    """--init RUN --stages 2: the coarse model and stats of RUN, a new refinement (ours or the authors')."""
    first = tmp_path / "first"
    train_realm(cfg(synth_dir, stages=(1,)), REALMConfig(**TINY, tau=4), first, progress=False)
    old = realm.load(first)
    for kw, mode in ((dict(), "causal"), (dict(stage2_rollout="window", stage2_select="fd_delta", d_gate=0.0), "whole")):
        run = tmp_path / mode
        res = train_realm(cfg(synth_dir, stages=(2,), init=str(first), **kw),
                          REALMConfig(**TINY, refine_mode=mode), run, progress=False)  # fmt: skip
        assert set(res) == {"stage2"}
        new = realm.load(run)
        assert new.model.config.tau == 4 and new.model.config.refine_mode == mode  # coarse from --init
        init = json.loads((run / "config.json").read_text())["init"]  # provenance of the coarse model
        assert init["path"] == str(first) and set(init["results"]) == {"stage1"}
        np.testing.assert_array_equal(new.stats.mean, old.stats.mean)
        for k, v in old.model.state_dict().items():
            if not k.startswith("refinement."):
                assert torch.equal(v, new.model.state_dict()[k]), k
        clip_audio = next((synth_dir / "audio").glob("test_*.wav"))
        assert np.array_equal(old.generate(clip_audio, refine=False), new.generate(clip_audio, refine=False))
    with pytest.raises(ValueError, match="prosody"):
        train_realm(cfg(synth_dir, stages=(2,), init=str(first), extractor="logmel"), REALMConfig(**TINY),
                    tmp_path / "bad", progress=False)  # fmt: skip


def test_stage2_items_are_what_generation_refines():
    """A stage-2 training item: the refinement's context frames, then the scored frames."""
    from realm.train import CoarseClip, CoarseSegments

    T, D, A = 50, 58, 4
    c = CoarseClip(np.arange(T * D, dtype=np.float32).reshape(T, D), np.ones((T, A), np.float32),
                   -np.arange(T * D, dtype=np.float32).reshape(T, D))  # fmt: skip
    ds = CoarseSegments([c], length=20, context=7, stride=10)
    assert len(ds) == 4  # starts 0, 10, 20, 30
    first, last = ds[0], ds[3]
    assert first["coarse"].shape == (27, D) and first["audio"].shape == (27, A)
    assert torch.equal(first["coarse"][:7], torch.from_numpy(c.coarse[[0] * 7]))  # before frame 0: frame 0 held
    assert first["audio"][:7].abs().sum() == 0 and first["audio"][7:].min() == 1  # and silence
    assert first["mask"].tolist() == [False] * 8 + [True] * 19  # frame 0 is given, never scored
    assert torch.equal(last["coarse"], torch.from_numpy(c.coarse[23:50]))
    assert last["mask"].tolist() == [False] * 7 + [True] * 20


def test_energy_loss_needs_a_stochastic_coarse_model(tmp_path):
    with pytest.raises(ValueError, match="coarse_samples >= 2"):
        TrainConfig(coarse_loss="energy", coarse_samples=1)
    with pytest.raises(ValueError, match="latent_dim > 0"):  # before any data is read
        train_realm(cfg(tmp_path, coarse_loss="energy", stages=(1,)), REALMConfig(), tmp_path / "run", progress=False)
