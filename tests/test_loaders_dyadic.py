"""Loaders of the two-sided conversation datasets on small fixtures written in each release's layout.

DualTalk (ZiqiaoPeng/DualTalk_Dataset: {split}/{name}_speaker{1,2}.{npz,wav,txt}), its ARKit
conversion (OpenFacebot/DualTalk_Dataset_ARKit: metadata/{split}.jsonl + ARKit_npy/), Seamless
Interaction (facebookresearch/seamless_interaction's download layout: {label}/{split}/{batch}/{archive}/
V.._S.._I.._P...{npz,json,wav}) and UniLS-Talk (xg-chu/UniLS: seamless_interaction_pairs.json +
data_lmdb/data.mdb, an LMDB written here byte by byte and read back by the real ``lmdb`` package when
it is installed). Arrays are seeded random values; "the listener is the right person" means equal to
what was written for that person, after the documented conversion.
"""

from __future__ import annotations

import io
import json
import logging
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile
from typer.testing import CliRunner

from realm.audio import n_samples_for
from realm.cli import app
from realm.data import detect_format, load_any
from realm.data.dualtalk import load_dualtalk
from realm.data.dualtalk_arkit import load_dualtalk_arkit
from realm.data.inspect import summarize
from realm.data.lmdbfile import LMDBFile
from realm.data.peer import held_out
from realm.data.seamless import load_seamless
from realm.data.unils import default_audio_dir, load_unils
from realm.errors import RealmInputError
from realm.motion import ARKIT_BLENDSHAPES, SPECS, resample_motion

T25, T30 = 50, 60  # 2 s at DualTalk's / UniLS's 25 fps, and at our 30 fps


def raises_naming(fn, *names: str) -> RealmInputError:
    with pytest.raises(RealmInputError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg, msg
    for name in names:
        assert name in msg, f"{name!r} not in {msg}"
    return e.value


def write_wav(path: Path, frames: int, sr: int = 16000, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = n_samples_for(frames, 30.0, sr)  # exactly `frames` frames at 30 fps
    soundfile.write(path, np.random.default_rng(seed).normal(0, 0.01, n).astype(np.float32), sr)


class Planted:
    """A pickle that creates a file when loaded (what a crafted dataset file could do)."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def pickled_array(target: Path) -> np.ndarray:
    a = np.empty(1, dtype=object)
    a[0] = Planted(target)
    return a


def videos(n_val: int, n_train: int) -> tuple[list[str], list[str]]:
    """YouTube-like ids that DualTalk's 5 % val hold-out puts in val / keeps in train."""
    val, train, i = [], [], 0
    while len(val) < n_val or len(train) < n_train:
        vid = f"yt{i:04d}Ab-c"
        (val if held_out(vid, 5.0) else train).append(vid)
        i += 1
    return val[:n_val], train[:n_train]


# ---------------------------------------------------------------- DualTalk (FLAME)


def make_dualtalk(tmp_path: Path) -> tuple[Path, dict]:
    """DualTalk_Dataset/{train,test,ood}/{name}_speaker{1,2}.{npz,wav,txt}."""
    rng = np.random.default_rng(10)
    root = tmp_path / "DualTalk_Dataset"
    (val_vid,), (train_vid,) = videos(1, 1)
    names = {"train": [f"{train_vid}_sub_video_3_000", f"{val_vid}_sub_video_7"], "test": ["tst-001_sub_video_1_001"],
             "ood": ["ood_xyz_sub_video_12"]}  # fmt: skip
    truth = {}
    for split, ns in names.items():
        (root / split).mkdir(parents=True)
        for name in ns:
            for k, who in enumerate(("speaker1", "speaker2")):
                exp, pose = rng.normal(size=(T25, 50)), rng.normal(0, 0.1, size=(T25, 6))
                np.savez(
                    root / split / f"{name}_{who}.npz", exp=exp, pose=pose, shape=rng.normal(size=(T25, 100))
                )
                write_wav(root / split / f"{name}_{who}.wav", T30, seed=k)
                (root / split / f"{name}_{who}.txt").write_text(f"words of {who}")
                truth[f"{name}_{who}"] = np.concatenate([exp, pose], 1).astype(np.float32)
    return root, {"truth": truth, "val": names["train"][1], "train": names["train"][0]}


def test_dualtalk_layout(tmp_path, caplog):
    root, fx = make_dualtalk(tmp_path)
    assert (
        detect_format(root) == "dualtalk" and detect_format(tmp_path) == "dualtalk"
    )  # or the folder holding it
    clips = load_dualtalk(tmp_path)
    by_id = {c.clip_id: c for c in clips}
    assert len(clips) == 8
    assert {c.split for c in clips} == {"train", "val", "test", "ood"}
    assert by_id[f"{fx['val']}_speaker1"].split == "val" and by_id[f"{fx['train']}_speaker2"].split == "train"
    for c in clips:
        name, lis = c.clip_id.rsplit("_", 1)
        spk = "speaker2" if lis == "speaker1" else "speaker1"
        assert (c.spec, c.speaker_spec, c.fps, c.n_frames) == ("flame56", "flame56", 30.0, T30)
        np.testing.assert_allclose(c.listener, resample_motion(fx["truth"][c.clip_id], 25, 30), atol=1e-6)
        np.testing.assert_allclose(
            c.speaker, resample_motion(fx["truth"][f"{name}_{spk}"], 25, 30), atol=1e-6
        )
        np.testing.assert_array_equal(
            c.listener[::6], fx["truth"][c.clip_id][::5]
        )  # frames 6k of 30 fps = 5k of 25 fps
        assert (
            c.audio_path.name == f"{name}_{spk}.wav" and c.meta["listener_audio"].name == f"{name}_{lis}.wav"
        )
        assert c.meta["speaker_text"] == f"words of {spk}" and c.words is None
        assert "25 fps to 30 fps" in c.meta["conversions"][0]
        assert c.listener_id.endswith(lis) and c.speaker_id.endswith(spk)
    assert {c.split for c in load_any(root, splits=["test", "ood"])} == {"test", "ood"}
    assert [c.split for c in load_dualtalk(root, splits="val")] == ["val", "val"]
    s = summarize(root)
    assert s.format == "dualtalk" and any("25 fps to 30 fps" in m for m in s.conversions)
    assert any("word times" in m for m in s.missing) and any(m.startswith("REALM") for m in s.can_run)


def test_dualtalk_bad_inputs(tmp_path):
    root, fx = make_dualtalk(tmp_path)
    name = "tst-001_sub_video_1_001"
    path = root / "test" / f"{name}_speaker2.npz"
    exp, pose = np.zeros((T25, 50)), np.zeros((T25, 6))

    np.savez(path, exp=exp)
    raises_naming(lambda: load_dualtalk(root), f"{name}_speaker2.npz", "'pose'")
    np.savez(path, exp=exp[:, :40], pose=pose)
    raises_naming(lambda: load_dualtalk(root), f"{name}_speaker2.npz", "width", "(frames, 50)")
    bad = exp.copy()
    bad[3, 7] = np.nan
    np.savez(path, exp=bad, pose=pose)
    raises_naming(lambda: load_dualtalk(root), f"{name}_speaker2.npz", "NaN")
    np.savez(path, exp=exp, pose=pose[:-1])
    raises_naming(lambda: load_dualtalk(root), f"{name}_speaker2.npz", "frames")
    np.savez(path, exp=np.zeros((T25 + 5, 50)), pose=np.zeros((T25 + 5, 6)))  # 6 frames too long at 30 fps
    raises_naming(lambda: load_dualtalk(root), f"{name}_speaker2.npz", "lengths differ")
    path.write_bytes(b"not a zip")
    raises_naming(lambda: load_dualtalk(root), f"{name}_speaker2.npz", "unreadable")
    with open(path, "wb") as f:  # a .npy under the .npz's name
        np.save(f, exp)
    raises_naming(lambda: load_dualtalk(root), f"{name}_speaker2.npz", "found a single .npy array")
    planted = tmp_path / "planted"
    np.savez(path, exp=pickled_array(planted), pose=pose)
    raises_naming(lambda: load_dualtalk(root), f"{name}_speaker2.npz", "pickled", "refused")
    assert not planted.exists()
    path.unlink()
    raises_naming(lambda: load_dualtalk(root), f"{name}_speaker2.npz", "not found", "speaker1")
    np.savez(path, exp=exp, pose=pose)
    (root / "test" / f"{name}_speaker1.wav").write_bytes(b"RIFF....not audio")
    raises_naming(lambda: load_dualtalk(root, splits="test"), f"{name}_speaker1.wav", "unreadable audio")
    (root / "test" / f"{name}_speaker1.wav").unlink()
    raises_naming(lambda: load_dualtalk(root, splits="test"), f"{name}_speaker1.wav", "not found")
    raises_naming(lambda: load_dualtalk(tmp_path / "nowhere"), "nowhere", "not found")


# ---------------------------------------------------------------- DualTalk ARKit


def make_dualtalk_arkit(tmp_path: Path, audio: bool = True) -> tuple[Path, dict]:
    """metadata/{test,ood}.jsonl, ARKit_npy/{split}/{name}_speaker{1,2}.npy (T, 61), DualTalk_Dataset/ wavs."""
    rng = np.random.default_rng(11)
    root = tmp_path / "Dualtalk_Dataset_ARKit"
    truth = {}
    for split, names in {"test": ["aa_sub_video_1_000", "bb_sub_video_2"], "ood": ["cc_sub_video_5"]}.items():
        lines = []
        for name in names:
            rec = {"name": name}
            for k, who in enumerate(("speaker1", "speaker2")):
                x = np.zeros((T25, 61), np.float32)
                x[:, :51] = rng.uniform(0, 1, (T25, 51))
                x[:, 52:55] = rng.uniform(-0.5, 0.5, (T25, 3))
                (root / "ARKit_npy" / split).mkdir(parents=True, exist_ok=True)
                np.save(root / "ARKit_npy" / split / f"{name}_{who}.npy", x)
                if audio:
                    write_wav(root / "DualTalk_Dataset" / split / f"{name}_{who}.wav", T30, seed=k)
                truth[f"{name}_{who}"] = x
                rec.update({f"{who}_text": f"text {who}", f"{who}_audio": f"{split}/{name}_{who}.wav",
                            f"{who}_flame": f"{split}/{name}_{who}.npz", f"{who}_arkit": f"{split}/{name}_{who}.npy",
                            f"{who}_frames": T25, f"{who}_smoothed": True,
                            f"{who}_head_correction": {"center_mode": "none"}})  # fmt: skip
            lines.append(json.dumps(rec))
        (root / "metadata").mkdir(parents=True, exist_ok=True)
        (root / "metadata" / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return root, truth


def test_dualtalk_arkit_layout(tmp_path):
    root, truth = make_dualtalk_arkit(tmp_path)
    assert detect_format(root) == "dualtalk_arkit"
    clips = load_any(root)
    assert [c.clip_id for c in clips] == [
        "aa_sub_video_1_000_speaker1", "aa_sub_video_1_000_speaker2", "bb_sub_video_2_speaker1", "bb_sub_video_2_speaker2",
        "cc_sub_video_5_speaker1", "cc_sub_video_5_speaker2",
    ]  # fmt: skip
    for c in clips:
        name, lis = c.clip_id.rsplit("_", 1)
        spk = "speaker2" if lis == "speaker1" else "speaker1"
        x = truth[c.clip_id]
        assert (c.spec, c.fps, c.n_frames) == ("arkit58", 30.0, T30)
        want = np.zeros((T25, 58), np.float32)
        want[:, :52] = x[:, :52]  # the orders coincide: Apple's 51, then TongueOut
        want[:, 52:55] = x[:, [53, 52, 54]]  # HeadYaw, HeadPitch, HeadRoll -> pitch, yaw, roll
        np.testing.assert_allclose(c.listener, resample_motion(want, 25, 30), atol=1e-6)
        np.testing.assert_allclose(c.speaker[::6, :52], truth[f"{name}_{spk}"][::5, :52], atol=1e-6)
        assert SPECS["arkit58"].channel("eyeBlinkLeft") == 0 and c.listener[0, 0] == pytest.approx(x[0, 0])
        assert c.audio_path.name == f"{name}_{spk}.wav" and "DualTalk_Dataset" in str(c.audio_path)
        assert "Live Link 61 channels at 25 fps resampled to 30 fps" in c.meta["conversions"][0]
    r = CliRunner().invoke(app, ["data", "inspect", str(root)])
    assert r.exit_code == 0, r.output
    for text in ("dualtalk_arkit", "converted on load", "25 fps resampled to 30 fps", "head translation", "can run",
                 "robot and avatar export directly"):  # fmt: skip
        assert text in r.output, text


def test_dualtalk_arkit_without_audio_says_so(tmp_path, caplog):
    root, _ = make_dualtalk_arkit(tmp_path, audio=False)
    with caplog.at_level(logging.WARNING, logger="realm.data.dualtalk_arkit"):
        clips = load_dualtalk_arkit(root)
    assert "speaker audio missing" in caplog.text and all(c.audio_path is None for c in clips)
    s = summarize(root)
    assert any(m.startswith("speaker audio for 6/6 clips") for m in s.missing)
    assert any("static_mean and random_clip only" in m for m in s.can_run)


def test_dualtalk_arkit_bad_inputs(tmp_path):
    root, truth = make_dualtalk_arkit(tmp_path)
    npy = root / "ARKit_npy" / "ood" / "cc_sub_video_5_speaker2.npy"
    x = truth["cc_sub_video_5_speaker2"]

    np.save(npy, x[:, :60])
    raises_naming(lambda: load_dualtalk_arkit(root), "cc_sub_video_5_speaker2.npy", "(frames, 61)")
    np.save(npy, x[:-1])
    raises_naming(
        lambda: load_dualtalk_arkit(root), "cc_sub_video_5_speaker2.npy", "49 frames", "speaker2_frames = 50"
    )
    planted = tmp_path / "planted"
    np.save(npy, pickled_array(planted), allow_pickle=True)
    raises_naming(lambda: load_dualtalk_arkit(root), "cc_sub_video_5_speaker2.npy", "pickled", "refused")
    assert not planted.exists()
    with open(npy, "wb") as f:  # an .npz under the .npy's name
        np.savez(f, x=x)
    raises_naming(lambda: load_dualtalk_arkit(root), "cc_sub_video_5_speaker2.npy", "found an .npz archive")
    npy.unlink()
    raises_naming(
        lambda: load_dualtalk_arkit(root),
        "ood.jsonl",
        "line 1",
        "ood/cc_sub_video_5_speaker2.npy",
        "ARKit_npy/",
    )
    meta = root / "metadata" / "test.jsonl"
    meta.write_text(meta.read_text().splitlines()[0] + "\n{not json\n")
    raises_naming(lambda: load_dualtalk_arkit(root, splits="test"), "test.jsonl", "line 2", "not JSON")


# ---------------------------------------------------------------- Seamless Interaction


def imitator_arrays(rng, n: int, vendor_has_movement: bool = True) -> dict:
    arrays = {"smplh:body_pose": rng.normal(size=(n, 21, 3)).astype(np.float32),
              "boxes_and_keypoints:box": rng.normal(size=(n, 4)).astype(np.float32)}  # fmt: skip
    if vendor_has_movement:
        for field, size in (("expression", 128), ("FAUValue", 24), ("gaze_encodings", 2), ("head_encodings", 3),
                            ("alignment_head_rotation", 3), ("emotion_scores", 8), ("frame_latent", 64)):  # fmt: skip
            arrays[f"movement:{field}"] = rng.normal(size=(n, size)).astype(np.float32)
        valid = np.ones((n, 1), np.float32)
        valid[:6] = 0.0
        arrays["movement:is_valid"] = valid
        arrays["movement:hypernet_features"] = rng.normal(size=(max(1, n // 15), 16)).astype(np.float32)
    return arrays


def transcript(offset: float) -> dict:
    return {
        "metadata:transcript": [
            {"words": [{"word": " Hello", "start": offset + 0.1, "end": offset + 0.4, "score": 0.9},
                       {"word": "there.", "start": None, "end": None},
                       {"word": "Yes", "start": offset + 0.9, "end": offset + 1.1, "score": 0.5}],
             "start": offset + 0.1, "end": offset + 1.1, "transcript": "Hello there. Yes"},
            {"start": offset + 1.4, "end": offset + 1.8, "transcript": "no words list"},
        ],
        "metadata:vad": [{"start": offset + 0.1, "end": offset + 1.1}, {"start": offset + 1.5, "end": offset + 1.8}],
    }  # fmt: skip


def make_seamless(tmp_path: Path) -> tuple[Path, dict]:
    """seamless_interaction/{improvised/dev,naturalistic/train}/0000/000k/V.._P....{npz,json,wav} + CSVs and mp4s."""
    rng = np.random.default_rng(12)
    root = tmp_path / "seamless_interaction"
    (root).mkdir()
    for name in ("interactions.csv", "participants.csv"):
        (root / name).write_text("a,b\n1,2\n")
    people = {
        "improvised/dev/0000/0000": ["V00_S0809_I00000582_P0947", "V00_S0809_I00000582_P0948",
                                     "V00_S0810_I00000001_P1281A", "V00_S0810_I00000001_P1282"],
        "naturalistic/train/0001/0003": ["V00_S0100_I00000007_P0001", "V00_S0100_I00000007_P0002",
                                         "V03_S0200_I00000009_P0100", "V03_S0200_I00000009_P0101",  # no movement
                                         "V00_S0300_I00000011_P0500"],  # its partner is not downloaded
    }  # fmt: skip
    truth, offsets = {}, {}
    for folder, ids in people.items():
        d = root / folder
        d.mkdir(parents=True)
        for j, fid in enumerate(ids):
            arrays = imitator_arrays(rng, T30, vendor_has_movement=not fid.startswith("V03"))
            np.savez(d / f"{fid}.npz", **arrays)
            offsets[fid] = 0.01 * j  # each participant's words at their own times
            (d / f"{fid}.json").write_text(json.dumps({"id": fid, **transcript(offsets[fid])}, indent=4))
            write_wav(d / f"{fid}.wav", T30, sr=48000, seed=j)
            (d / f"{fid}.mp4").write_bytes(b"")
            truth[fid] = arrays
    truth["offsets"] = offsets
    return root, truth


def imitator_of(arrays: dict) -> np.ndarray:
    keys = ("expression", "FAUValue", "gaze_encodings", "head_encodings", "alignment_head_rotation")
    return np.concatenate([arrays[f"movement:{k}"] for k in keys], 1)


def test_seamless_layout(tmp_path, caplog):
    root, truth = make_seamless(tmp_path)
    assert detect_format(root) == "seamless"  # not ViCo, although the root has CSVs and mp4s
    with caplog.at_level(logging.WARNING, logger="realm.data.seamless"):
        clips = load_seamless(root)
    assert "without exactly two participants" in caplog.text and "without Imitator movement" in caplog.text
    assert "marked invalid" in caplog.text
    assert sorted(c.clip_id for c in clips) == sorted([
        "V00_S0809_I00000582_P0947", "V00_S0809_I00000582_P0948", "V00_S0810_I00000001_P1281A",
        "V00_S0810_I00000001_P1282", "V00_S0100_I00000007_P0001", "V00_S0100_I00000007_P0002",
    ])  # fmt: skip
    by_id = {c.clip_id: c for c in clips}
    pairs = {"V00_S0809_I00000582_P0947": "V00_S0809_I00000582_P0948", "V00_S0810_I00000001_P1281A": "V00_S0810_I00000001_P1282",
             "V00_S0100_I00000007_P0001": "V00_S0100_I00000007_P0002"}  # fmt: skip
    pairs.update({b: a for a, b in pairs.items()})
    for cid, c in by_id.items():
        other = pairs[cid]
        assert (c.spec, c.speaker_spec, c.fps, c.n_frames) == ("imitator160", "imitator160", 30.0, T30)
        np.testing.assert_array_equal(c.listener, imitator_of(truth[cid]))
        np.testing.assert_array_equal(c.speaker, imitator_of(truth[other]))
        assert c.split == ("val" if "S08" in cid else "train")
        assert c.meta["label"] == ("improvised" if "S08" in cid else "naturalistic")
        assert c.audio_path.name == f"{other}.wav" and c.meta["listener_audio"].name == f"{cid}.wav"
        assert c.listener_id == cid.split("_P")[1] and c.speaker_id == other.split("_P")[1]
        assert c.meta["listener_valid"].sum() == T30 - 6
        # words: timed, an untimed word between its neighbours, a text-only segment spread over the VAD speech
        j = truth["offsets"][other]
        got = [(w.word, round(w.start - j, 4), round(w.end - j, 4)) for w in c.words]
        assert [w for w, _, _ in got] == ["Hello", "there.", "Yes", "no", "words", "list"]
        assert got[1][1:] == (0.4, 0.9)
        assert got[3][1] == pytest.approx(1.5) and got[-1][2] == pytest.approx(1.8)
        assert c.meta["speaker_vad"][0][1] - c.meta["speaker_vad"][0][0] == pytest.approx(1.0)
    assert [c.split for c in load_any(root, splits="val")] == ["val"] * 4
    # the imitator spec is its own: blocks named by the release's fields
    spec = SPECS["imitator160"]
    assert spec.block_names == ["expression", "FAUValue", "gaze_encodings", "head_encodings", "rotation"]
    assert spec.names[-3:] == [
        "alignment_head_rotation.0",
        "alignment_head_rotation.1",
        "alignment_head_rotation.2",
    ]
    s = summarize(root)
    assert any("robot export after a map imitator160 -> arkit58" in m for m in s.can_run)


def test_seamless_bad_inputs(tmp_path):
    root, truth = make_seamless(tmp_path)
    d = root / "improvised" / "dev" / "0000" / "0000"
    fid = "V00_S0809_I00000582_P0948"
    arrays = truth[fid]

    np.savez(d / f"{fid}.npz", **{k: v for k, v in arrays.items() if k != "movement:FAUValue"})
    raises_naming(lambda: load_seamless(root), f"{fid}.npz", "movement:FAUValue")
    np.savez(
        d / f"{fid}.npz", **{**arrays, "movement:gaze_encodings": arrays["movement:gaze_encodings"][:-1]}
    )
    raises_naming(lambda: load_seamless(root), f"{fid}.npz", "movement:gaze_encodings", "expected (60, 2)")
    planted = tmp_path / "planted"
    np.savez(d / f"{fid}.npz", **{**arrays, "movement:expression": pickled_array(planted)})
    raises_naming(lambda: load_seamless(root), f"{fid}.npz", "pickled")
    assert not planted.exists()
    np.savez(d / f"{fid}.npz", **arrays)
    (d / f"{fid}.json").write_text("{broken")
    raises_naming(lambda: load_seamless(root), f"{fid}.json", "unreadable JSON")
    (d / f"{fid}.json").write_text(json.dumps({"metadata:transcript": [{"words": [{"start": 1.0}]}]}))
    raises_naming(lambda: load_seamless(root), f"{fid}.json", "segment 0", "'word'")
    (d / f"{fid}.json").write_text(json.dumps({"metadata:vad": [{"start": 1.0}]}))
    raises_naming(lambda: load_seamless(root), f"{fid}.json", "metadata:vad entry 0")
    (d / f"{fid}.json").unlink()
    clips = load_seamless(root, splits="val")
    assert {c.clip_id: c.words for c in clips}[
        "V00_S0809_I00000582_P0947"
    ] is None  # its speaker has no transcript


def test_seamless_split_comes_from_below_root(tmp_path):
    """Folders above the root never give the split: a download kept under .../test/ keeps its own."""
    parent = tmp_path / "test"
    parent.mkdir()
    root, _ = make_seamless(parent)
    train = root / "naturalistic" / "train"
    want = ["V00_S0100_I00000007_P0001", "V00_S0100_I00000007_P0002"]
    for r in (root, root / "naturalistic", train):  # the download root, a label folder, a split folder
        clips = load_seamless(r, splits="train")
        assert sorted(c.clip_id for c in clips) == want
        assert {(c.split, c.meta["label"]) for c in clips} == {("train", "naturalistic")}
    assert load_seamless(train, splits="test") == []
    # files that are links into a store under a folder named test: the split is still the layout's
    store = tmp_path / "blobs" / "test"
    store.mkdir(parents=True)
    for f in sorted(train.rglob("V*_P*.npz")):
        f.rename(store / f.name)
        f.symlink_to(store / f.name)
    assert [c.split for c in load_seamless(root, splits="train")] == ["train", "train"]
    # a batch folder as the root has no split folder from it down: an error, not the parent's "test"
    batch = parent / "batch"
    (train / "0001").rename(batch)
    raises_naming(lambda: load_seamless(batch), "cannot tell the split", "train|dev|test")


# ---------------------------------------------------------------- UniLS-Talk


def write_lmdb(folder: Path, items: dict[str, bytes], psize: int = 4096) -> None:
    """An LMDB 0.9 environment (folder/data.mdb, as py-lmdb writes): two meta pages, one leaf page
    holding every key, each value in overflow pages."""
    folder.mkdir(parents=True, exist_ok=True)
    keys, body, where, nxt = sorted(items), [], {}, 3
    for k in keys:
        v, n = items[k], -(-(16 + len(items[k])) // psize)
        page = bytearray(n * psize)
        struct.pack_into("<QHHI", page, 0, nxt, 0, 0x04, n)  # an overflow page of n pages
        page[16 : 16 + len(v)] = v
        body.append(bytes(page))
        where[k], nxt = nxt, nxt + n
    leaf, upper, ptrs = bytearray(psize), psize, []
    for k in keys:
        kb = k.encode()
        upper -= 16 + len(kb) + len(kb) % 2
        struct.pack_into(
            "<HHHH", leaf, upper, len(items[k]) & 0xFFFF, len(items[k]) >> 16, 0x01, len(kb)
        )  # BIGDATA
        leaf[upper + 8 : upper + 8 + len(kb)] = kb
        struct.pack_into("<Q", leaf, upper + 8 + len(kb), where[k])
        ptrs.append(upper)
    struct.pack_into(f"<QHHHH{len(ptrs)}H", leaf, 0, 2, 0, 0x02, 16 + 2 * len(ptrs), upper, *ptrs)
    metas = []
    for pgno, txnid in ((0, 1), (1, 0)):
        m = bytearray(psize)
        struct.pack_into("<QHHHHIIQQ", m, 0, pgno, 0, 0x08, 0, 0, 0xBEEFC0DE, 1, 0, max(nxt * psize, 1 << 20))
        struct.pack_into("<IHHQQQQQ", m, 40, psize, 0, 0, 0, 0, 0, 0, (1 << 64) - 1)  # free DB: empty
        struct.pack_into(
            "<IHHQQQQQQQ", m, 88, 0, 0, 1, 0, 1, nxt - 3, len(keys), 2, nxt - 1, txnid
        )  # main DB, last page, txn
        metas.append(bytes(m))
    (folder / "data.mdb").write_bytes(b"".join(metas) + bytes(leaf) + b"".join(body))


def unils_record(rng, frames: int, width: int = 112, extra: dict | None = None) -> tuple[bytes, dict]:
    arrays = {"audio": rng.normal(0, 0.05, frames * 640).astype(np.float32),
              "motioncode": rng.normal(0, 0.1, (frames, width)).astype(np.float32),
              "speech_mask": (np.arange(frames) >= frames // 2).astype(np.float32), **(extra or {})}  # fmt: skip
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue(), arrays


def make_unils(tmp_path: Path) -> tuple[Path, dict]:
    """UniLSTalkDataset/SeamlessInteractionTalk/{seamless_interaction_pairs.json, data_lmdb/data.mdb}."""
    rng = np.random.default_rng(13)
    base = tmp_path / "UniLSTalkDataset" / "SeamlessInteractionTalk"
    pairs = {"train": {"V00_S0809_I00000582": ["/x/audio/V00_S0809_I00000582_P0947", "/x/audio/V00_S0809_I00000582_P0948", T25]},
             "val": {"V00_S0810_I00000001": ["a/V00_S0810_I00000001_P1281A", "a/V00_S0810_I00000001_P1282", T25]},
             "test": {"pair3": ["k/person_a", "k/person_b", T25 - 5]}}  # fmt: skip
    items, truth = {}, {}
    for split in pairs.values():
        for p0, p1, frames in split.values():
            for p in (p0, p1):
                key = p.rsplit("/", 1)[1]
                items[key], truth[key] = unils_record(
                    rng, frames + 2
                )  # records may run past the pair's length
    write_lmdb(base / "data_lmdb", items)
    (base / "seamless_interaction_pairs.json").write_text(json.dumps(pairs))
    return base, {"truth": truth, "items": items}


def flame56_of(code: np.ndarray) -> np.ndarray:
    return np.concatenate([code[:, :50], code[:, 100:103], code[:, 103:106]], 1)


def test_unils_layout(tmp_path):
    base, fx = make_unils(tmp_path)
    root = base.parent
    assert detect_format(root) == "unils" and detect_format(base) == "unils"
    clips = load_unils(root, audio_dir=tmp_path / "wavs")
    assert [(c.clip_id, c.split) for c in clips] == [
        ("V00_S0809_I00000582_p0", "train"), ("V00_S0809_I00000582_p1", "train"),
        ("V00_S0810_I00000001_p0", "val"), ("V00_S0810_I00000001_p1", "val"), ("pair3_p0", "test"), ("pair3_p1", "test"),
    ]  # fmt: skip
    keys = {"V00_S0809_I00000582": ("V00_S0809_I00000582_P0947", "V00_S0809_I00000582_P0948"),
            "V00_S0810_I00000001": ("V00_S0810_I00000001_P1281A", "V00_S0810_I00000001_P1282"), "pair3": ("person_a", "person_b")}  # fmt: skip
    for c in clips:
        pair, x = c.clip_id.rsplit("_p", 1)
        lis, spk = keys[pair][int(x)], keys[pair][1 - int(x)]
        frames = T25 if pair != "pair3" else T25 - 5
        assert (c.spec, c.fps, c.n_frames) == ("flame56", 30.0, frames * 6 // 5)
        code = fx["truth"][lis]["motioncode"][:frames]
        np.testing.assert_allclose(c.listener, resample_motion(flame56_of(code), 25, 30), atol=1e-6)
        np.testing.assert_allclose(
            c.speaker[::6], flame56_of(fx["truth"][spk]["motioncode"][:frames])[::5], atol=1e-6
        )
        assert (
            c.audio_path == tmp_path / "wavs" / f"{spk}.wav" and c.meta["listener_audio"].name == f"{lis}.wav"
        )
        audio, sr = soundfile.read(c.audio_path, dtype="float32")
        assert sr == 16000 and len(audio) == frames * 640
        np.testing.assert_allclose(audio, fx["truth"][spk]["audio"][: frames * 640], atol=1 / 32768)
        assert c.meta["speaker_vad"] == [[round((frames + 2) // 2 / 25, 4), round(frames / 25, 4)]]
        assert c.listener_id == (lis.split("_P")[1] if "_P" in lis else lis)
    assert [c.split for c in load_any(root, splits="val")] == ["val", "val"]


def test_unils_default_audio_dir_follows_the_lmdb(tmp_path, monkeypatch):
    base, fx = make_unils(tmp_path)
    monkeypatch.setenv("REALM_CACHE", str(tmp_path / "cache"))
    first = default_audio_dir(base)
    assert first.parent == tmp_path / "cache" / "unils_audio" and first.name.startswith(base.name + "-")
    assert default_audio_dir(base) == first  # stable while data.mdb is unchanged
    mdb = base / "data_lmdb" / "data.mdb"
    st = mdb.stat()
    os.utime(mdb, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # touched
    touched = default_audio_dir(base)
    assert touched != first
    items = dict(fx["items"])
    items["person_b"], _ = unils_record(np.random.default_rng(5), T25)  # replaced by another LMDB
    write_lmdb(base / "data_lmdb", items)
    os.utime(mdb, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))  # even within one mtime tick
    assert default_audio_dir(base) not in (first, touched)
    clips = load_unils(base, splits="test")
    assert clips[0].audio_path.parent == default_audio_dir(base)


def test_unils_lmdb_matches_the_lmdb_package(tmp_path):
    lmdb = pytest.importorskip("lmdb")
    base, fx = make_unils(tmp_path)
    env = lmdb.open(str(base / "data_lmdb"), readonly=True, lock=False)
    with env.begin() as txn:
        assert {k.decode(): bytes(v) for k, v in txn.cursor()} == fx["items"]  # our fixture is a real LMDB
    env.close()
    rng = np.random.default_rng(0)
    env = lmdb.open(str(tmp_path / "real"), map_size=1 << 28)
    items = {
        f"k{i:05d}": rng.bytes(int(rng.integers(1, 9000))) for i in range(400)
    }  # branch pages, inline values
    with env.begin(write=True) as txn:
        for k, v in items.items():
            txn.put(k.encode(), v)
    env.close()
    with LMDBFile(tmp_path / "real") as db:
        assert db.keys() == sorted(items) and all(db.get(k) == v for k, v in items.items())


def test_unils_bad_inputs(tmp_path):
    base, fx = make_unils(tmp_path)
    rng = np.random.default_rng(1)
    items = dict(fx["items"])
    load = lambda: load_unils(base, audio_dir=tmp_path / "wavs")  # noqa: E731

    items["person_b"], _ = unils_record(rng, T25, width=100)
    write_lmdb(base / "data_lmdb", items)
    raises_naming(load, "data.mdb", "[person_b]", "width")
    planted = tmp_path / "planted"
    items["person_b"], _ = unils_record(rng, T25, extra={"motioncode": pickled_array(planted)})
    write_lmdb(base / "data_lmdb", items)
    raises_naming(load, "[person_b]", "pickled")
    assert not planted.exists()
    items["person_b"], _ = unils_record(rng, T25 - 20)
    write_lmdb(base / "data_lmdb", items)
    raises_naming(load, "[person_b]", "30 frames", "says 45")
    del items["person_b"]
    write_lmdb(base / "data_lmdb", items)
    raises_naming(load, "data.mdb", "'person_b'", "test/pair3")
    pairs = base / "seamless_interaction_pairs.json"
    good = pairs.read_text()
    pairs.write_text(json.dumps({"test": {"p": ["a", "b"]}}))
    raises_naming(load, "seamless_interaction_pairs.json", "test/p", "[path0, path1, frames]")
    pairs.write_text('{"train": ')
    raises_naming(load, "seamless_interaction_pairs.json", "unreadable JSON")
    pairs.write_text(good)
    (base / "data_lmdb" / "data.mdb").write_bytes(b"\0" * 9000)
    raises_naming(load, "data.mdb", "not an LMDB")


def test_unils_corrupt_lmdb_pages(tmp_path):
    """A corrupt page is a one-line RealmInputError naming data.mdb, never a struct.error traceback."""
    base, fx = make_unils(tmp_path)
    mdb = base / "data_lmdb" / "data.mdb"
    good = mdb.read_bytes()
    leaf = 2 * 4096  # the fixture's one leaf page (the root)

    def keys():
        with LMDBFile(mdb) as db:
            return db.keys()

    def get():
        with LMDBFile(mdb) as db:
            return db.get("person_a")

    def corrupt(at: int, fmt: str, value: int) -> None:
        data = bytearray(good)
        struct.pack_into(fmt, data, at, value)
        mdb.write_bytes(bytes(data))

    corrupt(leaf + 12, "<H", 4)  # 'lower' below the page header
    for fn in (keys, get):
        raises_naming(fn, "data.mdb", "corrupt LMDB file", "'lower' field is 4")
    raises_naming(lambda: load_unils(base, audio_dir=tmp_path / "wavs"), "data.mdb", "corrupt LMDB file")
    corrupt(leaf + 12, "<H", 5000)  # 'lower' past the page
    for fn in (keys, get):
        raises_naming(fn, "data.mdb", "corrupt LMDB file", "'lower' field is 5000")
    corrupt(leaf + 16, "<H", 0xFFFF)  # a node offset past the page
    for fn in (keys, get):
        raises_naming(fn, "data.mdb", "corrupt LMDB file", "node at offset 65535")
    corrupt(leaf + 16, "<H", 20)  # a node offset inside the node pointers
    raises_naming(keys, "data.mdb", "corrupt LMDB file", "node at offset 20")
    data = bytearray(good)
    node = leaf + struct.unpack_from("<H", data, leaf + 16 + 2 * 4)[0]  # person_a's node (keys are sorted)
    struct.pack_into("<H", data, node + 6, 4000)  # a key longer than its page
    mdb.write_bytes(bytes(data))
    for fn in (keys, get):
        raises_naming(fn, "data.mdb", "corrupt LMDB file", "key of 4000 bytes")
    mdb.write_bytes(good[: leaf + 2000])  # truncated inside the leaf page
    for fn in (keys, get):
        raises_naming(fn, "data.mdb", "corrupt LMDB file", "truncated")
    mdb.write_bytes(good)
    assert keys() == sorted(fx["items"]) and get() == fx["items"]["person_a"]


# ---------------------------------------------------------------- imitator160 -> arkit58 through the existing fit-map


def test_imitator_features_get_a_fitted_map_to_arkit(tmp_path):
    """Paired frames (Imitator features and ARKit of the same frames) -> `realm embody fit-map`, unchanged."""
    from realm.embodiment.retarget import LinearMap

    rng = np.random.default_rng(5)
    W = rng.normal(0, 0.05, (160, 58))
    x = rng.normal(size=(400, 160)).astype(np.float32)
    y = (x @ W + 0.3).astype(np.float32)
    np.savez(tmp_path / "imitator.npz", listener=x, spec=np.array("imitator160"), fps=np.array(30.0))
    np.savez(tmp_path / "arkit.npz", listener=y, spec=np.array("arkit58"), fps=np.array(30.0))
    r = CliRunner().invoke(app, ["embody", "fit-map", "--source", str(tmp_path / "imitator.npz"),
                                 "--target", str(tmp_path / "arkit.npz"), "--out", str(tmp_path / "map.npz"), "--ridge", "0"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "fitted imitator160 -> arkit58 on 400 paired frames" in r.output
    m = LinearMap.load(tmp_path / "map.npz")
    assert m.source == "imitator160" and m.W.shape == (160, 58)
    np.testing.assert_allclose(m.W, W, atol=1e-4)
    assert ARKIT_BLENDSHAPES[0] == "eyeBlinkLeft"


@pytest.mark.parametrize(
    "make, fmt, reader",
    [(make_dualtalk, "dualtalk", "realm.data.dualtalk.conversation_clips"),
     (make_dualtalk_arkit, "dualtalk_arkit", "realm.data.dualtalk_arkit._conversation"),
     (make_seamless, "seamless", "realm.data.seamless._participant"),
     (make_unils, "unils", "realm.data.unils._pair")],
)  # fmt: skip
def test_large_layouts_stream_one_conversation_at_a_time(tmp_path, monkeypatch, make, fmt, reader):
    """iter_any gives load_any's clips in the same order, reading a conversation only when its clips are
    reached (what lets `realm data store` build a store from 4,000 h with bounded memory)."""
    import importlib

    from realm.data import ITERATORS, iter_any

    root, _ = make(tmp_path)
    everything = load_any(root, fmt)
    module, name = reader.rsplit(".", 1)
    real = getattr(importlib.import_module(module), name)
    calls = []
    monkeypatch.setattr(importlib.import_module(module), name, lambda *a, **k: calls.append(1) or real(*a, **k))
    stream = iter_any(root, fmt)
    first = next(stream)
    per_conversation = 2 if fmt == "seamless" else 1  # seamless reads each participant's file
    assert len(calls) == per_conversation and len(everything) >= 4
    rest = [first, *stream]
    assert [c.clip_id for c in rest] == [c.clip_id for c in everything]
    assert all(np.array_equal(a.listener, b.listener) for a, b in zip(rest, everything, strict=True))
    assert fmt in ITERATORS
    assert [c.clip_id for c in iter_any(root, fmt, splits="test")] == [c.clip_id for c in load_any(root, fmt, "test")]
