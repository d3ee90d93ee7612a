"""Resume equals an uninterrupted run, bit for bit (issue 17, point 4): a SIGKILL in either stage or in
the middle of writing a checkpoint, Ctrl-C (which saves and says how to resume), the baselines too."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import Dataset

from realm.models.realm import REALMConfig
from realm.train import REALMTask, TrainConfig, train_realm
from realm.train.harness import ResumableLoader, TrainingInterrupted

MODEL = dict(d_model=32, ff_dim=64, refine_dim=32, refine_ff=64)
#: on tiny_synth: 3 training batches an epoch; stage 1 two epochs (6 batches, validated after
#: batches 2 and 5), stage 2 one epoch (6 batches, validated after 2, 4 and 6)
RECIPE = dict(extractor="prosody", batch_size=4, epochs=2, stage2_epochs=1, clip_stride=32, val_stride=64, val_every=2,
              accelerator="cpu", devices="1")  # fmt: skip


def recipe(data) -> TrainConfig:
    return TrainConfig(data=str(data), **RECIPE)


def weights(run) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    differ = {k: float((a[k].double() - b[k].double()).abs().max()) for k in a if not torch.equal(a[k], b[k])}
    assert not differ, f"max |dw| per tensor: {differ}"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Every run of this module, in this process and in the killed ones, on one torch thread: bit
    equality needs the same summation order, and other tests may leave this process on another
    thread count than a fresh one starts with."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference(tiny_synth, tmp_path_factory, one_thread):
    """The uninterrupted run: its exported weights."""
    with pytest.MonkeyPatch.context() as mp:  # the session's feature cache (conftest), never the user's
        mp.setenv("REALM_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        run = tmp_path_factory.mktemp("reference") / "run"
        res = train_realm(recipe(tiny_synth), REALMConfig(**MODEL), run, progress=False)
    assert res["stage1"]["steps"] == 6 and res["stage2"]["steps"] == 12  # stage 2: two optimiser steps a batch
    return weights(run)


@pytest.fixture
def trained(monkeypatch):
    """Batches trained in this process per stage; ``trained.at[(stage, n)] = fn`` runs ``fn`` before the
    stage's n-th batch."""

    class Count(dict):
        at: dict = {}

    count = Count()
    step = REALMTask.training_step

    def training_step(self, batch, i):
        count[self.stage] = count.get(self.stage, 0) + 1
        if (self.stage, count[self.stage]) in count.at:
            count.at.pop((self.stage, count[self.stage]))()
        return step(self, batch, i)

    monkeypatch.setattr(REALMTask, "training_step", training_step)
    return count


#: A training process killed by SIGKILL where ``kill`` says: before a stage's n-th batch, or halfway
#: through writing the n-th ``last.ckpt`` of the process (``every``: realm.train.harness.LAST_EVERY_S).
LEG = r"""
import io, json, os, signal, sys
import torch
import realm.train as rt
import realm.train.harness as rh
from realm.models.realm import REALMConfig

args, kill = json.loads(sys.argv[1]), json.loads(sys.argv[2])
torch.set_num_threads(1)  # as the test process (bit equality needs the same summation order)
rh.LAST_EVERY_S = kill.get("every", rh.LAST_EVERY_S)
if "batch" in kill:
    step, seen = rt.REALMTask.training_step, {}
    def training_step(self, batch, i):
        seen[self.stage] = seen.get(self.stage, 0) + 1
        if (self.stage, seen[self.stage]) == (kill["stage"], kill["batch"]):
            os.kill(os.getpid(), signal.SIGKILL)
        return step(self, batch, i)
    rt.REALMTask.training_step = training_step
if "write" in kill:
    save, seen = torch.save, [0]
    def half_save(obj, f, *a, **k):
        if os.path.basename(getattr(f, "name", "")).startswith(".last.ckpt."):
            seen[0] += 1
            if seen[0] == kill["write"]:
                buf = io.BytesIO()
                save(obj, buf, *a, **k)
                f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        return save(obj, f, *a, **k)
    torch.save = half_save
rt.train_realm(rt.TrainConfig(**args["train"]), REALMConfig(**args["model"]), args["out"], resume=args["resume"],
               progress=False)
"""


def killed(data, run, resume: bool, **kill) -> None:
    args = {"train": {**RECIPE, "data": str(data)}, "model": MODEL, "out": str(run), "resume": resume}
    r = subprocess.run([sys.executable, "-c", LEG, json.dumps(args), json.dumps(kill)], capture_output=True, text=True,
                       timeout=600)  # fmt: skip
    assert r.returncode == -signal.SIGKILL, r.stderr[-4000:]


def ckpt_batches(path) -> int:
    """Training batches done in a checkpoint (loaded as resume loads it: weights only)."""
    ck = torch.load(path, map_location="cpu", weights_only=True)
    return ck["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["processed"]


def test_sigkill_in_either_stage_or_mid_checkpoint_then_resume_is_bit_exact(tiny_synth, reference, tmp_path, trained):
    run = tmp_path / "run"
    last1, last2 = run / "lightning/stage1/last.ckpt", run / "lightning/stage2/last.ckpt"
    # stage 1, mid-epoch: the last checkpoint is the one after batch 2's validation
    killed(tiny_synth, run, False, stage=1, batch=4)
    assert ckpt_batches(last1) == 2 and not (run / "train_state.json").exists()
    # resumed, then killed halfway through writing last.ckpt (after batch 5's validation): the
    # checkpoint before it stays whole under its name, the torn half only in a temporary file beside it
    killed(tiny_synth, run, True, write=1)
    assert ckpt_batches(last1) == 2 and list(last1.parent.glob(".last.ckpt.*.tmp"))
    # resumed: stage 1 ends, stage 2 checkpoints at the end of every batch, killed before its batch 4
    killed(tiny_synth, run, True, every=0.0, stage=2, batch=4)
    assert json.loads((run / "train_state.json").read_text())["done"] == [1] and ckpt_batches(last2) == 3
    res = train_realm(recipe(tiny_synth), REALMConfig(**MODEL), run, resume=True, progress=False)
    assert dict(trained) == {2: 3} and res["stage2"]["steps"] == 12  # batches 4-6 of stage 2, nothing else
    assert_same_weights(weights(run), reference)


def test_ctrl_c_saves_says_how_to_resume_and_resume_is_bit_exact(tiny_synth, reference, tmp_path, trained, capsys):
    run, handler = tmp_path / "run", signal.getsignal(signal.SIGINT)
    command = f"realm train realm --data {tiny_synth} --out {run}"
    interrupt = lambda: os.kill(os.getpid(), signal.SIGINT)  # noqa: E731
    # Ctrl-C in stage 1 before batch 4: that batch ends, is saved, training stops
    trained.at[(1, 4)] = interrupt
    with pytest.raises(TrainingInterrupted) as e:
        train_realm(recipe(tiny_synth), REALMConfig(**MODEL), run, progress=False, command=command)
    last1 = run / "lightning/stage1/last.ckpt"
    line = f"interrupted: stage 1 saved after 4 batches in {last1.resolve()}; resume with: {command} --resume"
    assert str(e.value) == line and line in capsys.readouterr().err.splitlines()
    assert ckpt_batches(last1) == 4 and dict(trained) == {1: 4}
    # resumed; Ctrl-C in stage 2 before batch 2, which a validation follows: saved after it
    trained.clear()
    trained.at[(2, 2)] = interrupt
    with pytest.raises(TrainingInterrupted, match="stage 2 saved after 2 batches"):
        train_realm(recipe(tiny_synth), REALMConfig(**MODEL), run, resume=True, progress=False, command=command)
    assert dict(trained) == {1: 2, 2: 2}  # stage 1 went on from batch 5
    # resumed; Ctrl-C twice in batch 4: stops at once, unsaved; the checkpoint after batch 2 stays
    trained.clear()
    trained.at[(2, 2)] = lambda: (interrupt(), interrupt())
    with pytest.raises(TrainingInterrupted, match="stage 2 stopped without saving"):
        train_realm(recipe(tiny_synth), REALMConfig(**MODEL), run, resume=True, progress=False, command=command)
    trained.clear()
    train_realm(recipe(tiny_synth), REALMConfig(**MODEL), run, resume=True, progress=False)
    assert dict(trained) == {2: 4}
    assert_same_weights(weights(run), reference)
    assert signal.getsignal(signal.SIGINT) is handler  # put back after training


def test_a_baseline_resumes_from_ctrl_c_bit_exact(tiny_synth, tmp_path, monkeypatch):
    from realm.train.baselines import BaselineTask, baseline_train_config, train_baseline

    cfg = lambda: baseline_train_config("lstm", data=str(tiny_synth), extractor="prosody", batch_size=8, epochs=2,  # noqa: E731
                                        clip_len=32, clip_stride=16, val_stride=32, accelerator="cpu", devices="1")  # fmt: skip
    model = dict(fusion_dim=24, hidden=16, lr_step_epochs=1)  # and a per-epoch learning-rate step
    train_baseline("lstm", cfg(), tmp_path / "ref", model_cfg=model, progress=False)
    n, step = [0], BaselineTask.training_step

    def training_step(self, batch, i):
        n[0] += 1
        if n[0] == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return step(self, batch, i)

    monkeypatch.setattr(BaselineTask, "training_step", training_step)
    with pytest.raises(TrainingInterrupted, match="lstm saved after 2 batches"):
        train_baseline("lstm", cfg(), tmp_path / "run", model_cfg=model, progress=False)
    res = train_baseline("lstm", cfg(), tmp_path / "run", model_cfg=model, resume=True, progress=False)
    assert n[0] == res["train"]["steps"]  # the 2 batches before the interrupt, then the rest
    assert_same_weights(weights(tmp_path / "run"), weights(tmp_path / "ref"))


class Draws(Dataset):
    """Items that draw from the dataset's own generator, as WindowDataset draws a listener realisation."""

    def __init__(self):
        self.rng = np.random.default_rng(0)

    def __len__(self):
        return 10

    def __getitem__(self, i):
        return torch.tensor([i, int(self.rng.integers(1 << 30))])


def test_the_loader_resumes_mid_epoch_and_its_items_do_not_depend_on_what_was_read_before():
    def epochs(loader, first=0, n=2):
        out = []
        for e in range(first, first + n):
            loader.order.set_epoch(e)  # as Lightning does at every epoch start
            out.append([b.tolist() for b in loader])
        return out

    whole = epochs(ResumableLoader(Draws(), seed=1, batch_size=3))
    assert len(whole[0]) == 4 and sorted(i for b in whole[0] for i, _ in b) == list(range(10))
    assert whole[0] != whole[1]  # a new order and new draws each epoch
    assert whole == epochs(ResumableLoader(Draws(), seed=1, batch_size=3))
    assert whole != epochs(ResumableLoader(Draws(), seed=2, batch_size=3))
    part = ResumableLoader(Draws(), seed=1, batch_size=3)
    it = iter(part)
    seen = [next(it).tolist() for _ in range(2)]
    resumed = ResumableLoader(Draws(), seed=1, batch_size=3)
    resumed.load_state_dict(part.state_dict())
    assert part.state_dict() == {"epoch": 0, "batches": 2}
    assert [seen + [b.tolist() for b in resumed]] + epochs(resumed, 1, 1) == whole
    at_end = ResumableLoader(Draws(), seed=1, batch_size=3)
    at_end.load_state_dict({"epoch": 0, "batches": 4})  # saved at the end of epoch 0: epoch 1 follows
    assert [b.tolist() for b in at_end] == whole[1]


def test_a_damaged_state_file_is_one_clear_error(tiny_synth, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "train_state.json").write_text('{"done": [1], "best1": "/x')
    with pytest.raises(ValueError, match=r"train_state.json: not valid JSON .*damaged"):
        train_realm(recipe(tiny_synth), REALMConfig(**MODEL), run, resume=True, progress=False)
