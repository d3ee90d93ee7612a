"""Our on-disk layout, its bad-input errors, and the shared training windows."""

import csv
import shutil

import numpy as np
import pytest
import soundfile as sf

from realm.data import detect_format, load_any, load_dataset
from realm.data.clip import Clip, read_index, write_clip, write_index
from realm.data.inspect import summarize
from realm.data.windows import WindowDataset, clip_features
from realm.errors import RealmInputError
from realm.motion import NormStats


def make_ds(root, T=90, audio_frames=None, spk_T=None, listener=None):
    """A one-clip dataset in our layout with known values."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lis = rng.uniform(0, 1, (T, 58)).astype(np.float32) if listener is None else listener
    (root / "audio").mkdir(exist_ok=True)
    n = int(np.ceil((audio_frames or T) * 16000 / 30))
    sf.write(str(root / "audio/c0.wav"), 0.1 * rng.standard_normal(n).astype(np.float32), 16000)
    clip = Clip("c0", "train", lis, "arkit58", speaker=rng.uniform(0, 1, (spk_T or T, 58)).astype(np.float32),
                speaker_spec="arkit58", audio_path=root / "audio/c0.wav", speaker_id="s", listener_id="l")
    write_index(root, [write_clip(root, clip)], {"spec": "arkit58"})
    return lis


def test_round_trip(tmp_path):
    lis = make_ds(tmp_path / "d")
    assert detect_format(tmp_path / "d") == "realm"
    (c,) = load_any(tmp_path / "d")
    np.testing.assert_array_equal(c.listener, lis)
    assert c.spec == "arkit58" and c.n_frames == 90 and c.duration == 3.0 and c.listener_id == "l"


def test_csv_naming_a_missing_clip(tmp_path):
    make_ds(tmp_path / "d")
    (tmp_path / "d/motion/c0.npz").unlink()
    with pytest.raises(RealmInputError, match=r"clips.csv: line 2: clip 'c0' names a missing file motion/c0.npz"):
        load_dataset(tmp_path / "d")


def test_missing_index_and_bad_split(tmp_path):
    with pytest.raises(RealmInputError, match="dataset directory not found"):
        load_dataset(tmp_path / "nothing")
    (tmp_path / "e").mkdir()
    with pytest.raises(RealmInputError, match="missing clips.csv"):
        load_dataset(tmp_path / "e")
    make_ds(tmp_path / "d")
    rows = list(csv.DictReader(open(tmp_path / "d/clips.csv")))
    rows[0]["split"] = "training"
    write_index(tmp_path / "d", rows)
    with pytest.raises(RealmInputError, match="unknown split 'training'"):
        load_dataset(tmp_path / "d")


def test_nan_and_wrong_width_in_motion(tmp_path):
    bad = np.zeros((30, 58), np.float32)
    bad[3, 7] = np.inf
    with pytest.raises(ValueError, match="refusing to write listener with 1 non-finite"):
        make_ds(tmp_path / "x", T=30, listener=bad)  # our writer never writes it ...
    make_ds(tmp_path / "a", T=30)
    np.savez(tmp_path / "a/motion/c0.npz", listener=bad, spec=np.array("arkit58"))  # ... someone else's may
    with pytest.raises(RealmInputError, match=r"c0.npz: NaN/inf in coefficients \(first at frame 3, dim 7\)"):
        load_dataset(tmp_path / "a")
    make_ds(tmp_path / "b", T=30)
    np.savez(tmp_path / "b/motion/c0.npz", listener=np.zeros((30, 57), np.float32), spec=np.array("arkit58"))
    with pytest.raises(RealmInputError, match="wrong coefficient width 57 for spec arkit58"):
        load_dataset(tmp_path / "b")
    (tmp_path / "b/motion/c0.npz").write_bytes(b"garbage")
    with pytest.raises(RealmInputError, match="unreadable motion file"):
        load_dataset(tmp_path / "b")


def test_motion_and_audio_lengths_must_agree_within_tolerance(tmp_path):
    make_ds(tmp_path / "ok", T=90, audio_frames=91)  # 1 frame off: trimmed
    clips = load_dataset(tmp_path / "ok")
    assert clip_features(clips, "vico45")[0].shape == (90, 45)
    make_ds(tmp_path / "bad", T=90, audio_frames=100)
    with pytest.raises(RealmInputError, match="audio gives 100 frames but the motion has 90"):
        clip_features(load_dataset(tmp_path / "bad"), "vico45")
    make_ds(tmp_path / "spk", T=90, spk_T=80)
    with pytest.raises(RealmInputError, match=r"speaker \(80\) and listener \(90\) motion lengths differ"):
        load_dataset(tmp_path / "spk")


def test_windows_shapes_values_history_and_padding(tmp_path):
    lis = make_ds(tmp_path / "d", T=100)
    clips = load_dataset(tmp_path / "d")
    feats = [np.arange(100 * 2, dtype=np.float32).reshape(100, 2)]
    st = NormStats.fit(lis)
    ds = WindowDataset(clips, feats, st, length=32, stride=16, history=4)
    assert [ds.index[i][1] for i in range(len(ds))] == [0, 16, 32, 48, 64]
    it = ds[1]
    assert it["audio"].shape == (32, 2) and it["motion"].shape == (32, 58) and it["history"].shape == (4, 58)
    np.testing.assert_allclose(st.invert(it["motion"].numpy()), lis[16:48], atol=1e-5)
    np.testing.assert_allclose(st.invert(it["history"].numpy()), lis[12:16], atol=1e-5)
    np.testing.assert_array_equal(it["audio"].numpy(), feats[0][16:48])
    first = ds[0]["history"].numpy()  # before the clip: frame 0 repeated
    np.testing.assert_allclose(st.invert(first), np.repeat(lis[:1], 4, 0), atol=1e-5)
    short = WindowDataset(clips, feats, st, length=128, stride=4, history=16)
    assert len(short) == 1
    it = short[0]
    assert it["mask"].sum() == 100 and not it["mask"][100:].any()
    assert np.all(it["audio"].numpy()[100:] == 0)


def test_windows_draw_listener_realisations(synth_dir):
    clips = load_dataset(synth_dir, "train")
    feats = [np.zeros((c.n_frames, 3), np.float32) for c in clips]
    st = NormStats.load(synth_dir / "stats.npz")
    all_k = WindowDataset(clips, feats, st, length=64, stride=64, sample="all")
    first = WindowDataset(clips, feats, st, length=64, stride=64, sample="first")
    assert len(all_k) == 2 * len(first)
    a, b = all_k[0]["motion"], all_k[1]["motion"]
    assert not np.allclose(a, b)


def test_inspect_reports_what_is_missing(tmp_path, synth_dir):
    s = summarize(synth_dir)
    assert s.format == "realm" and s.missing == [] and s.realisations == 2
    assert {sp.split for sp in s.splits if sp.clips} == {"train", "val", "test", "ood"}
    shutil.copytree(synth_dir, tmp_path / "d")
    rows = read_index(tmp_path / "d")
    for r in rows:
        r["words"] = ""
    write_index(tmp_path / "d", rows)
    (tmp_path / "d/stats.npz").unlink()
    s = summarize(tmp_path / "d")
    assert any(m.startswith(f"words for {len(rows)}/{len(rows)} clips") for m in s.missing)
    assert any("stats.npz" in m for m in s.missing)
