"""Two-stage training through Lightning: export, selection on val, resume."""

import json
import math

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


def test_stage2_freeze_keeps_the_blink_template_and_refits_its_hazard(synth_dir, tmp_path):
    """freeze=["refinement.template"] in stage 2: the events' learned shape stays the init's, the
    hazard (when blinks come) and the detail train; without it the template moves too."""
    first = tmp_path / "first"
    train_realm(cfg(synth_dir, stages=(1,)), REALMConfig(**TINY), first, progress=False)
    init = realm.load(first).model.state_dict()
    moved = {}
    for name, freeze in (("frozen", ("refinement.template",)), ("free", ())):
        train_realm(cfg(synth_dir, stages=(2,), init=str(first), freeze=freeze), REALMConfig(**TINY),
                    tmp_path / name, progress=False)  # fmt: skip
        sd = realm.load(tmp_path / name).model.state_dict()
        moved[name] = {k for k, v in sd.items() if k.startswith("refinement.") and not torch.equal(v, init[k])}
    assert "refinement.template.weight" not in moved["frozen"] and "refinement.template.weight" in moved["free"]
    assert any(k.startswith("refinement.hazard.") for k in moved["frozen"])
    assert any(k.startswith("refinement.local.") for k in moved["frozen"])


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


def test_init_takes_the_coarse_additions_and_refuses_a_set_it_would_drop(synth_dir, tmp_path):
    """A stage-1 retrain from --init takes the stochastic additions from the command (react_floor,
    latent_branch and the rest, which a run once dropped without a word) and refuses a set field it
    would not take (the init's architecture stays), naming it."""
    first = tmp_path / "first"
    train_realm(cfg(synth_dir, stages=(1,)), REALMConfig(**TINY, spec="arkit58", tau=4), first, progress=False)
    run = tmp_path / "fine"
    add = dict(latent_dim=4, react_gate=True, react_floor=0.3, latent_branch=True, latent_temperature=0.5,
               branch_into="offset", offset_decay_init=0.1, branch_blocks=("expression",), react_shift=4,
               react_threshold=0.05, branch_queries=True, branch_exclude=("mouthFrownLeft",),
               react_condition=("smile", "nod"))  # fmt: skip
    train_realm(cfg(synth_dir, stages=(1,), init=str(first), coarse_loss="energy"), REALMConfig(**TINY, **add),
                run, progress=False)  # fmt: skip
    model = realm.load(run).model
    got = model.config
    assert {k: getattr(got, k) for k in add} == add and got.tau == 4  # additions from the command, tau from --init
    lo, hi = model.out_bounds[:, model.spec.block("expression").slice]  # the offset's bounds, set from the stats
    assert got.offset_bounds and (lo < 0).all() and (lo > -1e3).all() and (hi > lo).all() and (hi < 1e3).all()
    with pytest.raises(ValueError, match="d_model=48: a run started from"):
        train_realm(cfg(synth_dir, stages=(1,), init=str(first)), REALMConfig(**{**TINY, "d_model": 48}),
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


def test_mean_rollout_scores_the_zero_latent_rollout_by_the_papers_loss():
    # the samples share one encoding (samples=R); the last B rows are the zero-latent rollout, which
    # alone gets the full MSE, so the samples' expression is left to the energy score
    from realm.models.realm import REALM
    from realm.train import REALMLoss, TrainConfig

    torch.manual_seed(0)
    model = REALM(REALMConfig(**TINY, spec="arkit58", latent_dim=4, window=4, history=4, audio_dim=8)).eval()
    cfg = TrainConfig(coarse_loss="energy", coarse_samples=2, mean_rollout=True)
    loss = REALMLoss(model, cfg)
    B, T = 3, 12
    a, gt = torch.randn(B, T, 8), torch.randn(B, T, model.spec.dim)
    z = torch.randn(3 * B, T // 4, 4)
    z[2 * B :] = 0
    pred, aux = model.rollout(a, frame0=gt[:, 0], latents=z, samples=3)
    assert pred.shape == (3 * B, T, model.spec.dim) and aux["waypoint"].shape[0] == B
    # one shared encoding: sample s of clip b equals a rollout of clip b alone with its latents
    alone, _ = model.rollout(a[1:2], frame0=gt[1:2, 0], latents=z[B + 1 : B + 2])
    assert torch.allclose(pred[B + 1], alone[0], atol=1e-5)
    out = loss(pred, gt, torch.ones(B, T, dtype=torch.bool), aux)
    # moving the samples' expression changes only the energy term; moving the mean's changes the MSE
    e = model.spec.block("expression").slice
    bumped = pred.clone()
    bumped[: 2 * B, 1:, e] += 0.3
    out2 = loss(bumped, gt, torch.ones(B, T, dtype=torch.bool), aux)
    assert torch.isclose(out2["mse"], out["mse"]) and not torch.isclose(out2["energy"], out["energy"])
    bumped = pred.clone()
    bumped[2 * B :, 1:, e] += 0.3
    out3 = loss(bumped, gt, torch.ones(B, T, dtype=torch.bool), aux)
    assert out3["mse"] > out["mse"] + 0.01 and torch.isclose(out3["energy"], out["energy"])
    with pytest.raises(ValueError, match="mean_rollout"):
        TrainConfig(mean_rollout=True)


def test_presets_set_the_recipe_and_options_override_them(synth_dir, tmp_path):
    from typer.testing import CliRunner

    from realm.cli import app
    from realm.train import preset_fields

    assert preset_fields("cpu", "logmel")["audio_context"] == 16 and preset_fields("cpu", "whisper")["audio_context"] == 0
    assert preset_fields("paper", "logmel") == {"batch_size": 512, "epochs": 200, "stage2_epochs": 50, "audio_context": 0}
    with pytest.raises(ValueError, match="unknown preset 'fast'"):
        preset_fields("fast", "logmel")
    r = CliRunner().invoke(app, ["train", "realm", "--data", str(synth_dir), "--out", str(tmp_path / "run"),
                                 "--extractor", "prosody", "--stages", "1", "--max-steps", "1", "--batch-size", "16",
                                 "--set", "d_model=32", "--set", "ff_dim=64", "--accelerator", "cpu", "--devices", "1"])  # fmt: skip
    assert r.exit_code == 0, r.output
    cfg = json.loads((tmp_path / "run/config.json").read_text())
    assert cfg["train"]["batch_size"] == 16 and cfg["train"]["epochs"] == 8  # the option, then the cpu preset
    assert cfg["model"]["audio_context"] == 16  # prosody is frame-local
    # the demo's stage-1 recipe: rotation's loss weights / 10 and a teacher-forced start; the paper keeps DESIGN's
    assert (cfg["train"]["w_rot"], cfg["train"]["w_vel"], cfg["train"]["teacher_forcing"]) == (0.5, 1.0, 0.75)
    assert {"w_rot", "w_vel", "teacher_forcing"}.isdisjoint(preset_fields("paper", "logmel"))
    assert (TrainConfig().w_rot, TrainConfig().w_vel, TrainConfig().teacher_forcing) == (5.0, 10.0, 0.0)


def test_a_resumed_run_keeps_its_recipe():
    from dataclasses import asdict

    from realm.train import _resumed_train_config
    from realm.train.harness import jsonable

    saved = jsonable(asdict(TrainConfig(data="d", batch_size=512, epochs=200)))
    now = TrainConfig(data="d", batch_size=64, epochs=8, max_steps=10, devices="2")
    got = _resumed_train_config(now, saved)
    assert (got.batch_size, got.epochs) == (512, 200)  # the run's recipe, not today's defaults
    assert (got.max_steps, got.devices) == (10, "2")  # where and how long it runs: the command's


def test_frozen_modules_do_not_move_in_stage_1(synth_dir, tmp_path):
    from realm.train import REALMTask

    before = REALMTask(REALMConfig(**TINY).to_dict(), TrainConfig(data="d", freeze=("fusion", "decoder.gate")).__dict__, 1)
    trained = {n for n, p in before.model.named_parameters() if p.requires_grad}
    assert not any(n.startswith(("fusion.", "decoder.gate.", "refinement.")) for n in trained)
    assert any(n.startswith("decoder.decoder.") for n in trained) and any(n.startswith("audio_encoder.") for n in trained)
    with pytest.raises(ValueError, match="freeze: REALM has no module or parameter 'fusoin'"):
        REALMTask(REALMConfig(**TINY).to_dict(), TrainConfig(data="d", freeze=("fusoin",)).__dict__, 1)
    # single parameters too: everything but the decoder's heads and the rest leak's logits
    cfg = REALMConfig(**{**TINY, "rest_leak": True})
    keep = ("audio_encoder", "fusion", "waypoint", "decoder.queries", "decoder.motion_proj", "decoder.gate",
            "decoder.decoder", "decoder.lstm")  # fmt: skip
    task = REALMTask(cfg.to_dict(), TrainConfig(data="d", freeze=keep).__dict__, 1)
    trained = {n for n, p in task.model.named_parameters() if p.requires_grad}
    assert {n.split(".")[0] + "." + n.split(".")[1] if n.startswith("decoder.") else n for n in trained} == {
        "decoder.heads", "leak_logit"}
    task = REALMTask(cfg.to_dict(), TrainConfig(data="d", freeze=(*keep, "leak_logit")).__dict__, 1)
    assert {n.split(".")[1] for n, p in task.model.named_parameters() if p.requires_grad} == {"heads"}


def test_stage1_can_export_the_last_validation_instead_of_the_lowest_val_loss(synth_dir, tmp_path):
    """stage1_select="last": the weights of the last validation (last.ckpt), which differ from the best
    one's when the val loss rose; the choice is recorded in config.json."""
    from safetensors.torch import load_file

    from realm.train import best_model_state

    runs = {}
    for sel in ("val_loss", "last"):
        run = tmp_path / sel
        train_realm(cfg(synth_dir, stages=(1,), max_steps=6, val_every=2, stage1_select=sel), REALMConfig(**TINY), run,
                    progress=False)  # fmt: skip
        runs[sel] = run
    last = best_model_state(runs["last"] / "lightning/stage1/last.ckpt")
    exported = load_file(runs["last"] / "model.safetensors")
    assert all(torch.equal(exported[k], last[k]) for k in exported)
    conf = json.loads((runs["last"] / "config.json").read_text())
    assert "last validation" in conf["selected_on"] and conf["train"]["stage1_select"] == "last"
    assert json.loads((runs["val_loss"] / "config.json").read_text())["selected_on"] == "val"
    with pytest.raises(ValueError, match="stage1_select"):
        TrainConfig(stage1_select="best")


def test_teacher_forcing_runs_the_first_share_of_stage_1s_steps_and_validation_rolls_out(synth_dir, tmp_path, monkeypatch):
    from realm.models.realm import REALM
    from realm.train import REALMTask

    with pytest.raises(ValueError, match="teacher_forcing is a fraction"):
        TrainConfig(teacher_forcing=1.5)
    calls = []  # (which rollout, whether the model trains)
    for name in ("rollout", "teacher_rollout"):
        real = getattr(REALM, name)
        monkeypatch.setattr(REALM, name, lambda self, *a, _r=real, _n=name, **k: calls.append((_n, self.training)) or _r(self, *a, **k))
    task = REALMTask(REALMConfig(**TINY, audio_dim=6).to_dict(), TrainConfig(data="d", teacher_forcing=0.5).__dict__, 1)
    batch = {"audio": torch.randn(2, 32, 6), "motion": torch.randn(2, 32, task.model.spec.dim),
             "mask": torch.ones(2, 32, dtype=torch.bool)}  # fmt: skip
    task._steps = 4  # global step 0 of 4: in the teacher-forced half
    task.train()
    task._stage1(batch)
    task.eval()  # validation: always the model's own rollout
    task._stage1(batch)
    assert [n for n, _ in calls] == ["teacher_rollout", "rollout"]
    # under a wall-clock budget (max_minutes: Lightning's Timer) the time's first half too, whichever ends first
    from types import SimpleNamespace

    from lightning.pytorch.callbacks import Timer

    task.train()
    for used, expected in ((30, "teacher_rollout"), (70, "rollout")):  # of 100 s
        timer = Timer(duration={"seconds": 100})
        timer.load_state_dict({"time_elapsed": {"train": used}})  # as a resumed run's
        task._trainer = SimpleNamespace(callbacks=[timer], global_step=0)
        calls.clear()
        task._stage1(batch)
        assert [n for n, _ in calls] == [expected], used
    task._trainer = None
    fresh = REALMTask(REALMConfig(**TINY, audio_dim=6).to_dict(), TrainConfig(data="d", teacher_forcing=0.1).__dict__, 1)
    calls.clear()
    fresh._stage1(batch)  # outside a Trainer (a profile): teacher-forced whenever teacher_forcing > 0
    assert [n for n, _ in calls] == ["teacher_rollout"]
    with pytest.raises(ValueError, match="needs teacher_forcing=0"):  # refused before any data is read
        train_realm(cfg(tmp_path, stages=(1,), teacher_forcing=0.5),
                    REALMConfig(latent_dim=4, latent_branch=True, branch_into="offset"), tmp_path / "refused", progress=False)  # fmt: skip
    # through Lightning: the first half of the steps teacher-forced, then the rollout; validation rolls out
    calls.clear()
    train_realm(cfg(synth_dir, stages=(1,), max_steps=4, teacher_forcing=0.5), REALMConfig(**TINY), tmp_path / "run",
                progress=False)  # fmt: skip
    assert (tmp_path / "run/model.safetensors").exists()
    assert [n for n, training in calls if training] == ["teacher_rollout"] * 2 + ["rollout"] * 2
    assert {n for n, training in calls if not training} == {"rollout"}


def test_the_l2_loss_is_each_blocks_unsquared_distance_and_learns_the_median():
    """coarse_loss="l2" (the ViCo baseline's loss): each block's per-frame RMS error, not squared. A
    prediction fitted to a listener who smiles in 1 clip of 5 stays at the resting face (the median),
    where the MSE's settles at a fifth of the smile (the mean)."""
    from realm.models.realm import REALM
    from realm.train import REALMLoss

    model = REALM(REALMConfig(spec="arkit58", audio_dim=6, d_model=32, ff_dim=64))
    spec = model.spec
    gt = torch.randn(2, 32, spec.dim)
    aux = {"bounds": [], "alpha": torch.ones(2, 32, 1), "waypoint": None}
    ones = torch.ones(2, 32, dtype=torch.bool)
    out = REALMLoss(model, TrainConfig(coarse_loss="l2"))(gt + 0.1, gt, ones, aux)
    rot = 5.0 * 0.1 * math.sqrt(sum((2.0, 2.0, 1.0)) / 3)  # w_rot x the axis-weighted RMS
    assert out["l2"].item() == pytest.approx(rot + 0.1 * (len(spec.blocks) - 1), rel=1e-4)
    assert out["loss"].item() == pytest.approx(out["l2"].item(), rel=1e-6)  # the MSE is only logged
    assert out["mse"].item() == pytest.approx(5.0 * 5 / 3 * 0.01 + 0.01 * (len(spec.blocks) - 1), rel=1e-4)
    e = spec.block("expression").slice
    target = torch.zeros(5, 32, spec.dim)
    target[0, :, e] = 1.0  # one clip of five smiles (every expression channel at 1)
    for loss, expected in (("mse", 0.2), ("l2", 0.0)):
        x = torch.full((1, 1, spec.dim), 0.5, requires_grad=True)  # from between the two
        opt = torch.optim.Adam([x], lr=0.02)
        fn = REALMLoss(model, TrainConfig(coarse_loss=loss, w_vel=0.0))
        for _ in range(300):
            o = fn(x.expand(5, 32, -1), target, torch.ones(5, 32, dtype=torch.bool), {**aux, "alpha": torch.ones(5, 32, 1)})
            opt.zero_grad()
            o["loss"].backward()
            opt.step()
        assert x[0, 0, e].mean().item() == pytest.approx(expected, abs=0.03), loss


@pytest.mark.parametrize("history", [8, 16, 24])
def test_the_gate_term_counts_each_windows_gate_values_whatever_the_history_length(history):
    """The gate's term is 1 - the mean gate value over windows with a scored first frame: K values a window,
    for a history K shorter than, equal to or longer than the window W (K = 8 crashed: (B, 8 n) values
    against (B, T) frames)."""
    from realm.models.realm import REALM
    from realm.train import REALMLoss

    torch.manual_seed(0)
    model = REALM(REALMConfig(spec="arkit58", audio_dim=6, d_model=32, ff_dim=64, history=history)).eval()
    B, T = 2, 64
    a, gt = torch.randn(B, T, 6), torch.randn(B, T, model.spec.dim)
    with torch.no_grad():
        pred, aux = model.rollout(a, frame0=gt[:, 0])
    loss = REALMLoss(model, TrainConfig())
    out = loss(pred, gt, torch.ones(B, T, dtype=torch.bool), aux)
    alpha = aux["alpha"][..., 0]
    assert out["gate"].item() == pytest.approx(1 - alpha.mean().item(), abs=1e-6)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[:, 32:] = False  # windows 2 and 3 unscored: only windows 0 and 1's gate values count
    out = loss(pred, gt, mask, aux)
    assert out["gate"].item() == pytest.approx(1 - alpha[:, : min(2 * history, alpha.shape[1])].mean().item(), abs=1e-6)
