"""`realm data mix`: one training set from several datasets of our layout."""

import json
import os

import numpy as np
import pytest
from typer.testing import CliRunner

from realm.cli import app
from realm.data import load_any
from realm.data.clip import read_index, write_index
from realm.data.mix import data_config, mix_datasets
from realm.errors import RealmInputError
from test_layout import make_ds

runner = CliRunner()


def two_sources(tmp_path):
    """Two one-clip datasets (both call their clip c0) and a second clip in the first, of split test."""
    a, b = tmp_path / "a", tmp_path / "b"
    lis_a = make_ds(a)
    lis_b = make_ds(b, listener=np.full((90, 58), 0.25, np.float32))
    rows = read_index(a)
    rows.append(dict(rows[0], clip_id="t0", split="test"))
    write_index(a, rows)
    return a, b, lis_a, lis_b


def test_mix_keeps_every_clip_under_its_suffix_and_leaves_held_out_splits(tmp_path):
    a, b, lis_a, lis_b = two_sources(tmp_path)
    n = mix_datasets(tmp_path / "m", [("c", a), ("r", b)])
    assert n == 2  # the test row of a is not a training clip
    clips = {c.clip_id: c for c in load_any(tmp_path / "m")}
    assert set(clips) == {"c0c", "c0r"}
    np.testing.assert_array_equal(clips["c0c"].listener, lis_a)
    np.testing.assert_array_equal(clips["c0r"].listener, lis_b)
    assert clips["c0r"].audio_path.resolve() == (b / "audio/c0.wav").resolve()
    assert os.path.islink(tmp_path / "m/motion/c0r.npz")
    meta = json.loads((tmp_path / "m/meta.json").read_text())
    assert meta["spec"] == "arkit58"
    assert [(s["suffix"], s["clips"]) for s in meta["mix"]["sources"]] == [("c", 1), ("r", 1)]
    # all splits on request; copies instead of links
    assert mix_datasets(tmp_path / "m2", [("c", a), ("r", b)], splits=("train", "val", "test"), copy=True) == 3
    assert not os.path.islink(tmp_path / "m2/motion/t0c.npz")
    assert {c.split for c in load_any(tmp_path / "m2")} == {"train", "test"}


def test_mix_refuses_to_overwrite_and_bad_sources(tmp_path):
    a, b, _, _ = two_sources(tmp_path)
    mix_datasets(tmp_path / "m", [("c", a), ("r", b)])
    with pytest.raises(FileExistsError, match="--force"):
        mix_datasets(tmp_path / "m", [("c", a)])
    assert mix_datasets(tmp_path / "m", [("c", a)], force=True) == 1
    with pytest.raises(ValueError, match="must differ"):
        mix_datasets(tmp_path / "x", [("c", a), ("c", b)])
    with pytest.raises(RealmInputError, match="not found"):
        mix_datasets(tmp_path / "x", [("c", a), ("r", tmp_path / "nope")])
    for d, fps in ((a, 30.0), (b, 25.0)):
        meta = json.loads((d / "meta.json").read_text())
        (d / "meta.json").write_text(json.dumps(dict(meta, fps=fps)))
    with pytest.raises(RealmInputError, match="fps"):
        mix_datasets(tmp_path / "x", [("c", a), ("r", b)])
    assert not (tmp_path / "x").exists()  # nothing half-written


def test_cli_mix(tmp_path):
    a, b, _, _ = two_sources(tmp_path)
    r = runner.invoke(app, ["data", "mix", str(a), str(b), "--out", str(tmp_path / "m"), "--suffix", "c", "--suffix", "r"])
    assert r.exit_code == 0, r.output
    assert "wrote 2 clips" in r.output
    assert {c.clip_id for c in load_any(tmp_path / "m")} == {"c0c", "c0r"}
    r = runner.invoke(app, ["data", "mix", str(a), str(b), "--out", str(tmp_path / "m")])
    assert r.exit_code == 2 and "exists" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["data", "mix", str(a), str(b), "--out", str(tmp_path / "n"), "--suffix", "c"])
    assert r.exit_code == 2 and "one per source" in r.output


def test_a_mix_records_every_sources_generator_config(tmp_path):
    a, b, _, _ = two_sources(tmp_path)
    for d, cfg in ((a, {"seed": 0}), (b, {"seed": 0, "channel": {"noise": 0.6}})):
        meta = json.loads((d / "meta.json").read_text())
        (d / "meta.json").write_text(json.dumps(dict(meta, config=cfg)))
    mix_datasets(tmp_path / "m", [("c", a), ("r", b)])
    got = data_config(tmp_path / "m")
    assert got["seed"] == 0 and "channel" not in got  # the first source's config, as before
    assert [(m["suffix"], m["config"]) for m in got["mix"]] == [("c", {"seed": 0}), ("r", {"seed": 0, "channel": {"noise": 0.6}})]
    # an older mix's meta ({suffix: source}) reads the same
    meta = json.loads((tmp_path / "m/meta.json").read_text())
    (tmp_path / "m/meta.json").write_text(json.dumps(dict(meta, mix={"c": str(a), "r": str(b)})))
    assert [m["config"] for m in data_config(tmp_path / "m")["mix"]] == [{"seed": 0}, {"seed": 0, "channel": {"noise": 0.6}}]
    assert "mix" not in data_config(a)
