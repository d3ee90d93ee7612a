"""Run directories (realm.checkpoint) and the model registry (realm.registry): one format, one set of checks."""

import json
import shutil

import numpy as np
import pytest
import torch

import realm
from realm.checkpoint import check_files, load, load_stats, read_config, save
from realm.errors import RealmInputError
from realm.models.listener import RunModel
from realm.registry import BASELINES, MODELS, get_model
from tests.test_generate import make_run


def test_the_registry_names_every_model_type_and_each_loads_its_class():
    assert {"realm", "mmlm", "idvq", "emotion"} <= set(MODELS)
    assert set(BASELINES) <= set(MODELS) and all(MODELS[n].baseline for n in BASELINES)
    assert [n for n, m in MODELS.items() if m.baseline] == list(BASELINES)
    assert {MODELS[n].kind for n in ("realm", "idvq", "emotion")} == {"listener", "tokenizer", "classifier"}
    for info in MODELS.values():
        cls = info.load_class()
        assert isinstance(cls, type) and issubclass(cls, torch.nn.Module), info.name
        if info.listener:
            assert issubclass(info.listener_class(), RunModel), info.name
    with pytest.raises(ValueError, match="unknown model type 'nope'.*realm"):
        get_model("nope")


def test_realm_and_a_baseline_load_through_one_function_into_one_contract(tmp_path):
    run = make_run(tmp_path / "realm")
    lis = load(run)
    assert lis.name == "realm" and lis.streams and isinstance(lis, RunModel)
    from realm.models.baselines.simple import StaticMean

    model = StaticMean(StaticMean.Config(spec="arkit58", audio_dim=80))
    save(tmp_path / "sm", model, lis.stats, lis.feature_stats, "logmel", {}, model_type="static_mean")
    base = realm.load(tmp_path / "sm")
    assert isinstance(base, RunModel) and base.name == "static_mean" and not base.streams
    with pytest.raises(RealmInputError, match="static_mean does not stream"):
        base.streamer()
    out = base.generate(np.zeros(16000, np.float32))
    np.testing.assert_allclose(out[0, 0], np.clip(lis.stats.mean, 0, None), atol=1e-6)


def test_one_set_of_checks_and_messages(tmp_path):
    run = make_run(tmp_path / "r")
    assert read_config(run)["model_type"] == "realm"
    with pytest.raises(RealmInputError, match="config.json: model_type is 'realm', not 'idvq'"):
        read_config(run, "idvq")
    bad = tmp_path / "unknown"
    shutil.copytree(run, bad)
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt9"}))
    with pytest.raises(RealmInputError, match=r"config.json: unsupported model type 'gpt9' \(known: realm, static_mean"):
        load(bad)
    (bad / "config.json").write_text("{not json")
    with pytest.raises(RealmInputError, match="config.json: invalid checkpoint config"):
        load(bad)
    with pytest.raises(RealmInputError, match="feature_stats.npz: missing checkpoint file"):
        check_files(tmp_path, ("feature_stats.npz",))
    with pytest.raises(RealmInputError, match="stats.npz: stats have 58 dims, spec arkit58 70"):
        load_stats(run, 70, 80, "arkit58")
    with pytest.raises(ValueError, match="unknown model type"):
        save(tmp_path / "x", load(run).model, *load_stats(run, 58, 80), "logmel", {}, model_type="gpt9")


def test_generate_options_are_one_frozen_dataclass_checked_against_the_model(tmp_path):
    from dataclasses import FrozenInstanceError

    from realm.models.listener import GenerateOptions

    lis = load(make_run(tmp_path / "r"))
    y = np.zeros(16000 * 2, np.float32)
    o = GenerateOptions(samples=2, seed=4)
    with pytest.raises(FrozenInstanceError):
        o.seed = 5
    np.testing.assert_array_equal(lis.generate(y, o), lis.generate(y, samples=2, seed=4))
    np.testing.assert_array_equal(lis.generate(y, o, seed=5), lis.generate(y, samples=2, seed=5))  # keywords replace
    with pytest.raises(ValueError, match="realm does not take temperature"):
        lis.generate(y, temperature=0.5)
    with pytest.raises(TypeError, match="unknown generate option.*tempreature"):
        lis.generate(y, tempreature=0.5)
    with pytest.raises(ValueError, match="samples must be a whole number >= 1"):
        GenerateOptions(samples=0)
    with pytest.raises(ValueError, match="top_p must be in"):
        GenerateOptions(top_p=1.5)
