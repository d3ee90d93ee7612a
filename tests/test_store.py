"""Training data larger than memory: the on-disk store (realm.data.store) gives exactly the in-memory windows."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from realm.data import load_any
from realm.data.store import StoreWindows, build_store, open_store, read_store_meta
from realm.data.windows import WindowDataset, clip_features
from realm.errors import RealmInputError
from realm.models.realm import REALMConfig
from realm.motion import NormStats
from realm.train import TrainConfig, prepare_data, train_realm
from realm.train.harness import best_model_state

EXTRACTOR = "prosody"


@pytest.fixture(scope="module")
def store(synth_dir, tmp_path_factory):
    # shards of 64 kB: every clip starts a new shard, so reads cross shards
    return build_store(synth_dir, tmp_path_factory.mktemp("store") / "s", EXTRACTOR, shard_mb=1 / 16)


def memory_windows(data, split, **kw):
    clips = load_any(data, splits=split)
    return WindowDataset(clips, clip_features(clips, EXTRACTOR), **kw), clips


def test_the_store_holds_every_clip_and_the_stats_prepare_data_fits(synth_dir, store):
    meta = read_store_meta(store)
    train = load_any(synth_dir, splits="train")
    assert meta["splits"]["train"]["clips"] == len(train) and meta["splits"]["train"]["shards"] > 1
    assert meta["splits"]["train"]["frames"] == sum(c.n_frames for c in train)
    _, stats, fstats = open_store(store, EXTRACTOR)
    mine = NormStats.fit([c.samples().reshape(-1, c.listener.shape[1]) for c in train], train[0].spec)
    np.testing.assert_array_equal(stats.mean, mine.mean)
    np.testing.assert_array_equal(stats.std, mine.std)
    np.testing.assert_array_equal(stats.lo, mine.lo)
    feats = clip_features(train, EXTRACTOR)
    fmine = NormStats.fit(feats, EXTRACTOR)
    np.testing.assert_array_equal(fstats.mean, fmine.mean)
    np.testing.assert_array_equal(fstats.std, fmine.std)
    ds = StoreWindows(store, "train", stats)
    for ci in (0, len(train) - 1):
        f, S = ds.clip_arrays(ci)
        np.testing.assert_array_equal(f, feats[ci])
        np.testing.assert_array_equal(S, train[ci].samples())


@pytest.mark.parametrize("sample", ["random", "first", "all"])
def test_store_windows_equal_the_in_memory_windows_item_for_item(synth_dir, store, sample):
    _, stats, fstats = open_store(store, EXTRACTOR)
    kw = dict(stats=stats, feature_stats=fstats, length=64, stride=9, history=16, sample=sample, seed=3)
    mem, _ = memory_windows(synth_dir, "train", **kw)
    disk = StoreWindows(store, "train", **kw)
    assert len(mem) == len(disk) and mem.index == disk.index and disk.frames_total == mem.frames_total
    for i in list(range(0, len(mem), 7)) + [len(mem) - 1]:  # the same draws from the same rng, in order
        a, b = mem[i], disk[i]
        assert a.keys() == b.keys()
        for k in a:
            if torch.is_tensor(a[k]):
                assert torch.equal(a[k], b[k]), (i, k)
            else:
                assert a[k] == b[k]


def test_training_from_the_store_is_bit_identical_to_training_from_memory(synth_dir, store, tmp_path):
    base = dict(data=str(synth_dir), extractor=EXTRACTOR, batch_size=8, epochs=1, max_steps=4, clip_stride=32,
                val_stride=64, accelerator="cpu", devices="1", stages=(1,))  # fmt: skip
    model = REALMConfig(d_model=32, ff_dim=64, refine_dim=32, refine_ff=64, use_refinement=False)
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the two runs sum their matrix products in the same order
    try:
        train_realm(TrainConfig(**base), model, tmp_path / "mem", progress=False)
        train_realm(TrainConfig(**base, store=str(store)), model, tmp_path / "disk", progress=False)
    finally:
        torch.set_num_threads(n)
    a = best_model_state(next((tmp_path / "mem").rglob("last.ckpt")))
    b = best_model_state(next((tmp_path / "disk").rglob("last.ckpt")))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    prep = prepare_data(TrainConfig(**base, store=str(store)))
    assert isinstance(prep.train, StoreWindows) and prep.audio_dim == 4 and prep.spec == "arkit58"


def test_a_broken_store_says_what_is_wrong_in_one_line(synth_dir, store, tmp_path):
    with pytest.raises(RealmInputError, match="no meta.json"):
        read_store_meta(tmp_path)
    with pytest.raises(RealmInputError, match="holds 'prosody' features, the run asks for 'logmel'"):
        open_store(store, "logmel")
    with pytest.raises(FileExistsError):
        build_store(synth_dir, store, EXTRACTOR)  # never replaced without force
    with pytest.raises(RealmInputError, match="was built from"):  # a store of other data
        prepare_data(TrainConfig(data=str(tmp_path), extractor=EXTRACTOR, store=str(store)))
    # a truncated shard
    import shutil

    cut = tmp_path / "cut"
    shutil.copytree(store, cut)
    shard = sorted((cut / "train").glob("shard-*.motion.f32"))[-1]
    shard.write_bytes(shard.read_bytes()[:100])
    _, stats, _ = open_store(cut, EXTRACTOR)
    ds = StoreWindows(cut, "train", stats, sample="first")
    with pytest.raises(RealmInputError, match="truncated"):
        ds[len(ds) - 1]
    # another version, and an interrupted build
    meta = json.loads((cut / "meta.json").read_text())
    (cut / "meta.json").write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(RealmInputError, match="store version 99"):
        read_store_meta(cut)
    (tmp_path / "half.partial").mkdir()
    with pytest.raises(RealmInputError, match="interrupted"):
        read_store_meta(tmp_path / "half")
