"""Dataset loaders on small fixtures written in each peer's exact released layout.

ViCo in REALM's layout (lipzh5/REALM datasets/vico_dataset.py) and in the challenge layout
(dc3ea9f/vico_challenge_baseline), Learning2Listen (evonneng/learning2listen) and LM-Listener
(sanjayss34/lm-listener). Arrays are seeded random values, so "the listener is the right person"
means: equal to what was written for the listener, and not to what was written for the speaker.
"""

from __future__ import annotations

import csv
import importlib.util
import logging
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import soundfile
import torch
from typer.testing import CliRunner

from realm.audio import n_samples_for
from realm.cli import app
from realm.data.l2l import load_l2l
from realm.data.lmlistener import load_lmlistener, load_lmlistener_stats
from realm.data.vico import load_vico
from realm.errors import RealmInputError
from realm.motion import vico73_to_vico70

SR = 16000


def write_wav(path: Path, frames: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, np.zeros(n_samples_for(frames), np.float32), SR)  # exactly `frames` frames


def write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def write_mat(path: Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, arrays)


def vico70_of(coeff: np.ndarray) -> np.ndarray:
    return np.concatenate([coeff[:, 80:144], coeff[:, 224:227], coeff[:, 254:257]], 1).astype(np.float32)


def vico73_of(coeff: np.ndarray, params: np.ndarray) -> np.ndarray:
    x = np.concatenate([coeff[:, 224:227], coeff[:, 80:144], coeff[:, 254:257], params[:, -3:]], 1)
    return x.astype(np.float32)


def raises_naming(fn, *names: str) -> RealmInputError:
    with pytest.raises(RealmInputError) as e:
        fn()
    for name in names:
        assert name in str(e.value), f"{name!r} not in {e.value}"
    return e.value


# ---------------------------------------------------------------- ViCo, REALM layout


def make_realm(tmp_path: Path) -> tuple[Path, dict]:
    """data/vico/RLD_data.csv, data/vico/audio-features/, data/vico_raw/{deep3d_coeffs/cropped,audios}/."""
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    coeffs = data / "vico_raw" / "deep3d_coeffs" / "cropped"
    rows, truth = [], {}
    for k, split in enumerate(["train", "test", "ood"]):
        t, audio, lis, spk = 40 + k, f"video{k}_001_002", f"video{k}_listener", f"video{k}_speaker"
        truth[lis] = {
            "split": split,
            "t": t,
            "listener": rng.normal(size=(t, 257)),
            "speaker": rng.normal(size=(t + 1, 257)),
        }
        write_mat(coeffs / f"{lis}.mat", coeff=truth[lis]["listener"])
        write_mat(coeffs / f"{spk}.mat", coeff=truth[lis]["speaker"])  # one frame longer: trimmed
        write_wav(data / "vico_raw" / "audios" / f"{audio}.wav", t)
        (data / "vico" / "audio-features").mkdir(parents=True, exist_ok=True)
        np.save(
            data / "vico" / "audio-features" / f"{audio}.npy", rng.normal(size=(t, 768)).astype(np.float32)
        )
        rows.append({"audio": audio, "speaker": spk, "listener": lis, "data_split": split,
                     "speaker_id": f"s{k}", "listener_id": f"l{k}"})  # fmt: skip
    write_csv(data / "vico" / "RLD_data.csv", rows)
    return data, truth


def test_vico_realm_layout(tmp_path):
    data, truth = make_realm(tmp_path)
    clips = load_vico(data)
    assert [c.clip_id for c in clips] == ["video0_listener", "video1_listener", "video2_listener"]
    assert [c.split for c in clips] == ["train", "test", "ood"]
    for k, c in enumerate(clips):
        want, t = truth[c.clip_id], truth[c.clip_id]["t"]
        assert (c.spec, c.speaker_spec, c.fps) == ("vico70", "vico70", 30.0)
        assert c.listener.shape == c.speaker.shape == (t, 70)
        np.testing.assert_array_equal(c.listener, vico70_of(want["listener"]))
        np.testing.assert_array_equal(c.speaker, vico70_of(want["speaker"])[:t])
        assert not np.allclose(c.listener, c.speaker)
        assert c.audio_path.name == f"video{k}_001_002.wav" and c.audio_path.exists()
        assert c.features["realm_audio"].shape == (t, 768)
        assert (c.speaker_id, c.listener_id) == (f"s{k}", f"l{k}")
        assert c.source.endswith(f"video{k}_listener.mat")
    # the same tree read from data/vico/, one split only
    (test,) = load_vico(data / "vico", layout="realm", splits="test")
    assert test.clip_id == "video1_listener" and test.split == "test"


def _rewrite_listener(data, coeff):
    write_mat(data / "vico_raw" / "deep3d_coeffs" / "cropped" / "video1_listener.mat", coeff=coeff)


def test_vico_realm_bad_inputs(tmp_path):
    data, truth = make_realm(tmp_path)
    listener = truth["video1_listener"]["listener"]

    _rewrite_listener(data, listener[:, :250])
    raises_naming(lambda: load_vico(data), "video1_listener.mat", "width")

    bad = listener.copy()
    bad[3, 90] = np.nan
    _rewrite_listener(data, bad)
    raises_naming(lambda: load_vico(data), "video1_listener.mat", "NaN")

    _rewrite_listener(data, np.concatenate([listener, listener[:5]]))  # 5 frames too long
    raises_naming(lambda: load_vico(data), "video1_listener.mat", "lengths differ")

    _rewrite_listener(data, listener)
    (data / "vico_raw" / "deep3d_coeffs" / "cropped" / "video2_speaker.mat").unlink()
    raises_naming(lambda: load_vico(data), "RLD_data.csv", "line 4", "video2_speaker.mat")

    raises_naming(lambda: load_vico(tmp_path / "nowhere"), "nowhere", "not found")


@pytest.mark.skipif(importlib.util.find_spec("h5py") is not None, reason="h5py reads v7.3 files")
def test_vico_mat_v73_without_h5py(tmp_path):
    data, _ = make_realm(tmp_path)
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64".ljust(116) + bytes(8) + b"\x00\x02IM"
    (data / "vico_raw" / "deep3d_coeffs" / "cropped" / "video0_listener.mat").write_bytes(header + bytes(512))
    raises_naming(lambda: load_vico(data), "video0_listener.mat", "v7.3", "h5py")


def test_vico_realm_bad_split(tmp_path):
    data, _ = make_realm(tmp_path)
    text = (data / "vico" / "RLD_data.csv").read_text().replace(",ood,", ",holdout,")
    (data / "vico" / "RLD_data.csv").write_text(text)
    raises_naming(lambda: load_vico(data), "RLD_data.csv", "line 4", "holdout")


# ---------------------------------------------------------------- ViCo, challenge layout


def make_challenge(tmp_path: Path) -> tuple[Path, dict]:
    """listening_head/{train,test}.csv, videos/test/, audios/, example/features/{video,audio}_feats/, recons/test/."""
    rng = np.random.default_rng(1)
    root = tmp_path / "listening_head"
    feats = root / "example" / "features"
    (feats / "video_feats").mkdir(parents=True)
    (feats / "audio_feats").mkdir(parents=True)
    (root / "videos" / "test").mkdir(parents=True)
    truth, rows = {}, {"train": [], "test": []}
    for k, (uuid, split) in enumerate(
        [("a1b2c3d4e5f6", "train"), ("g7h8i9j0k1l2", "train"), ("m3n4o5p6q7r8", "test")]
    ):
        t = 30 + k
        for role in ("speaker", "listener"):
            (root / "videos" / "test" / f"{uuid}.{role}.mp4").write_bytes(b"")  # not read
            if k < 2:  # rearrange_recon_coeffs.py output
                x = rng.normal(size=(t, 73)).astype(np.float32)
                torch.save({"id.gamma.tex": rng.normal(size=(t, 187)), "angle.exp.trans": x},
                           feats / "video_feats" / f"{uuid}.{role}.bin")  # fmt: skip
            else:  # only the Deep3DFaceRecon output
                coeff, params = rng.normal(size=(t, 257)), rng.normal(size=(t, 5))
                write_mat(
                    root / "recons" / "test" / f"{uuid}.{role}.mat", coeff=coeff, transform_params=params
                )
                x = vico73_of(coeff, params)
                truth[f"{uuid}.{role}.coeff"] = coeff
            truth[f"{uuid}.{role}"] = x
        write_wav(root / "audios" / f"{uuid}.wav", t)
        np.save(feats / "audio_feats" / f"{uuid}.npy", rng.normal(size=(t, 45)))
        rows[split].append(
            {"video_id": f"vid{k}", "uuid": uuid, "speaker_id": f"spk{k}", "listener_id": f"lis{k}"}
        )
    for split, r in rows.items():
        write_csv(root / f"{split}.csv", r)
    write_csv(root / "example" / "metadata" / "data.csv", rows["train"])  # the baseline's copy; not read
    return root, truth


def test_vico_challenge_layout(tmp_path):
    root, truth = make_challenge(tmp_path)
    clips = load_vico(root)
    assert [(c.clip_id, c.split) for c in clips] == [
        ("a1b2c3d4e5f6", "train"), ("g7h8i9j0k1l2", "train"), ("m3n4o5p6q7r8", "test"),
    ]  # fmt: skip
    for k, c in enumerate(clips):
        assert (c.spec, c.speaker_spec) == ("vico73", "vico73")
        assert c.listener.shape == c.speaker.shape == (30 + k, 73)
        np.testing.assert_array_equal(c.listener, truth[f"{c.clip_id}.listener"])
        np.testing.assert_array_equal(c.speaker, truth[f"{c.clip_id}.speaker"])
        assert not np.allclose(c.listener, c.speaker)
        assert c.audio_path == root / "audios" / f"{c.clip_id}.wav"
        assert c.features["vico_audio"].shape == (30 + k, 45)
        assert (c.speaker_id, c.listener_id) == (f"spk{k}", f"lis{k}")
    # the .mat-derived clip converts to exactly what REALM's layout reads from the same coefficients
    np.testing.assert_array_equal(
        vico73_to_vico70(clips[2].listener), vico70_of(truth["m3n4o5p6q7r8.listener.coeff"])
    )
    assert [c.clip_id for c in load_vico(root, layout="challenge", splits=["test"])] == ["m3n4o5p6q7r8"]


def test_vico_challenge_bad_inputs(tmp_path):
    root, truth = make_challenge(tmp_path)
    bin_path = root / "example" / "features" / "video_feats" / "g7h8i9j0k1l2.listener.bin"

    torch.save({"angle.exp.trans": truth["g7h8i9j0k1l2.listener"][:, :70]}, bin_path)
    raises_naming(lambda: load_vico(root), "g7h8i9j0k1l2.listener.bin", "width")

    torch.save({"id.gamma.tex": np.zeros((31, 187))}, bin_path)
    raises_naming(lambda: load_vico(root), "g7h8i9j0k1l2.listener.bin", "angle.exp.trans")

    bin_path.unlink()
    raises_naming(lambda: load_vico(root), "train.csv", "line 3", "g7h8i9j0k1l2.listener.bin")

    (root / "test.csv").write_text("uuid,speaker_id\nm3n4o5p6q7r8,x\n")
    raises_naming(lambda: load_vico(root, splits="test"), "test.csv", "video_id")

    raises_naming(lambda: load_vico(tmp_path), str(tmp_path), "not a ViCo directory")


# ---------------------------------------------------------------- Learning2Listen


def write_l2l_pair(split_dir: Path, listener: int, n: int, rng, object_files: bool = False) -> dict:
    """pX_list_faces + p{1-X}_speak_{faces,audio,files}, as unpacked from {channel}_data.tar."""
    split_dir.mkdir(parents=True, exist_ok=True)
    s = 1 - listener
    arrays = {
        f"p{listener}_list_faces": rng.normal(size=(n, 64, 184)).astype(np.float32),
        f"p{s}_speak_faces": rng.normal(size=(n, 64, 184)).astype(np.float32),
        f"p{s}_speak_audio": rng.normal(size=(n, 256, 128)).astype(np.float32),
    }
    files = np.array([[[f"video{i}", f"p{s}", str(100 + f)] for f in range(64)] for i in range(n)])
    arrays[f"p{s}_speak_files"] = files.astype(object) if object_files else files
    for name, a in arrays.items():
        np.save(split_dir / f"{name}_clean_deca.npy", a)
    return arrays


def make_l2l(tmp_path: Path) -> tuple[Path, dict]:
    rng = np.random.default_rng(2)
    data = tmp_path / "learning2listen" / "src" / "data"
    truth = {
        ("conan", "train", 0): write_l2l_pair(data / "conan" / "train", 0, 3, rng),
        ("conan", "train", 1): write_l2l_pair(data / "conan" / "train", 1, 2, rng),
        ("conan", "test", 0): write_l2l_pair(data / "conan" / "test", 0, 2, rng),
        ("fallon", "test", 1): write_l2l_pair(data / "fallon" / "test", 1, 2, rng, object_files=True),
    }
    return data, truth


def test_l2l_layout(tmp_path, caplog):
    data, truth = make_l2l(tmp_path)
    with caplog.at_level(logging.WARNING, logger="realm.data.l2l"):
        clips = load_l2l(data)
    assert "not public" in caplog.text and "l2l_mel" in caplog.text
    assert [c.clip_id for c in clips] == [
        "conan_test_p0_00000", "conan_test_p0_00001",
        "conan_train_p0_00000", "conan_train_p0_00001", "conan_train_p0_00002",
        "conan_train_p1_00000", "conan_train_p1_00001",
        "fallon_test_p1_00000", "fallon_test_p1_00001",
    ]  # fmt: skip
    by_id = {c.clip_id: c for c in clips}
    for (channel, split, x), arrays in truth.items():
        for i in range(len(arrays[f"p{x}_list_faces"])):
            c = by_id[f"{channel}_{split}_p{x}_{i:05d}"]
            assert c.split == split and (c.spec, c.speaker_spec) == ("flame56", "flame56")
            assert c.listener.shape == c.speaker.shape == (64, 56)
            np.testing.assert_array_equal(c.listener, arrays[f"p{x}_list_faces"][i, :, :56])
            np.testing.assert_array_equal(c.speaker, arrays[f"p{1 - x}_speak_faces"][i, :, :56])
            mel = c.features["l2l_mel"]
            assert mel.shape == (64, 512)
            np.testing.assert_array_equal(mel[5], arrays[f"p{1 - x}_speak_audio"][i, 20:24].reshape(-1))
            assert c.audio_path is None
    assert by_id["conan_train_p0_00000"].listener_id == "conan"  # the host, as L2L's code pairs it
    assert by_id["conan_train_p1_00000"].listener_id == "conan_guest"
    assert by_id["fallon_test_p1_00000"].listener_id == "fallon"
    assert len(load_l2l(data.parent, splits="test")) == 4  # root may be the folder holding data/


def test_l2l_bad_inputs(tmp_path):
    data, truth = make_l2l(tmp_path)
    d = data / "conan" / "train"
    np.save(d / "p1_speak_faces_clean_deca.npy", truth[("conan", "train", 0)]["p1_speak_faces"][:2])
    raises_naming(lambda: load_l2l(data), "p1_speak_faces_clean_deca.npy", "2 sequences")

    np.save(d / "p1_speak_faces_clean_deca.npy", truth[("conan", "train", 0)]["p1_speak_faces"][:, :, :40])
    raises_naming(lambda: load_l2l(data), "p1_speak_faces_clean_deca.npy", "width")

    faces = truth[("conan", "test", 0)]["p0_list_faces"].copy()
    faces[1, 7, 3] = np.nan
    np.save(data / "conan" / "test" / "p0_list_faces_clean_deca.npy", faces)
    raises_naming(lambda: load_l2l(data, splits="test"), "p0_list_faces_clean_deca.npy[1]", "NaN")

    np.save(
        data / "conan" / "test" / "p0_list_faces_clean_deca.npy", truth[("conan", "test", 0)]["p0_list_faces"]
    )
    (data / "fallon" / "test" / "p0_speak_audio_clean_deca.npy").unlink()
    raises_naming(lambda: load_l2l(data, splits="test"), "p0_speak_audio_clean_deca.npy", "not found")

    raises_naming(lambda: load_l2l(tmp_path / "nowhere"), "nowhere")


# ---------------------------------------------------------------- LM-Listener


def make_segment(rng, vid: str, start: int, t: int) -> dict:
    g = torch.Generator().manual_seed(int(rng.integers(1 << 30)))
    seg = {"fname": f"trevor_videos/done_trevor_videos1/{vid}/{vid}.mp4",
           "split_start_frame": start, "split_end_frame": start + t}  # fmt: skip
    for p in ("p0", "p1"):
        seg[f"{p}_exp"], seg[f"{p}_pose"] = torch.randn(t, 50, generator=g), torch.randn(t, 6, generator=g)
        seg[f"{p}_shape"] = torch.randn(t, 100, generator=g)
    s = start / 30
    seg["before_words"] = [{"text": "so", "end": s - 1.0}, {"text": "anyway", "end": s - 0.5}]
    seg["during_words"] = [{"text": "hello", "end": s + 0.4}, {"text": "there", "end": s + 1.0}]
    return seg


def make_lm(tmp_path: Path) -> tuple[Path, dict]:
    rng = np.random.default_rng(3)
    root = tmp_path / "dataset" / "trevor"
    root.mkdir(parents=True)
    segs = {
        "train": [make_segment(rng, "025YouTube", 10916, 64), make_segment(rng, "025YouTube", 11200, 48)],
        "val": [make_segment(rng, "031YouTube", 300, 40)],
        "test": [make_segment(rng, "040YouTube", 0, 32)],
    }
    for split, s in segs.items():
        torch.save(s, root / f"segments_{split}.pth")
    np.save(root / "mean.npy", rng.normal(size=56).astype(np.float32))
    np.save(root / "std.npy", rng.uniform(0.5, 1.5, size=56).astype(np.float32))
    return root, segs


def test_lmlistener_layout(tmp_path):
    root, segs = make_lm(tmp_path)
    clips = load_lmlistener(root)
    assert [(c.clip_id, c.split) for c in clips] == [
        ("025YouTube_10916", "train"), ("025YouTube_11200", "train"), ("031YouTube_300", "val"), ("040YouTube_0", "test"),
    ]  # fmt: skip
    seg_list = segs["train"] + segs["val"] + segs["test"]
    for c, seg in zip(clips, seg_list, strict=True):
        assert (c.spec, c.speaker_spec, c.fps) == ("flame56", "flame56", 30.0)
        np.testing.assert_array_equal(c.listener, torch.cat([seg["p0_exp"], seg["p0_pose"]], 1).numpy())
        np.testing.assert_array_equal(c.speaker, torch.cat([seg["p1_exp"], seg["p1_pose"]], 1).numpy())
        assert not np.allclose(c.listener, c.speaker)
        assert (
            c.audio_path is None and c.listener_id == "trevor" and c.speaker_id == seg["fname"].split("/")[-2]
        )
        # times from the clip start; start = previous word's end (own end for the first word)
        got = [(w.word, round(w.start, 6), round(w.end, 6)) for w in c.words]
        assert got == [("so", -1.0, -1.0), ("anyway", -1.0, -0.5), ("hello", -0.5, 0.4), ("there", 0.4, 1.0)]
    assert [c.clip_id for c in load_lmlistener(root, splits="val")] == ["031YouTube_300"]
    stats = load_lmlistener_stats(root)
    assert stats.mean.shape == stats.std.shape == (56,) and stats.spec == "flame56"


class _Planted:
    """A pickle that creates a file when loaded (what a crafted dataset file could do)."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_lmlistener_reads_numpy_safely_and_never_runs_a_planted_pickle(tmp_path, monkeypatch):
    import datetime

    import realm.data.peer as peer

    root, segs = make_lm(tmp_path)
    seg = dict(segs["val"][0], p0_shape=np.zeros((40, 100)))  # numpy arrays load without unpickling code
    torch.save([seg], root / "segments_val.pth")
    (clip,) = load_lmlistener(root, splits="val")
    np.testing.assert_array_equal(clip.listener, torch.cat([seg["p0_exp"], seg["p0_pose"]], 1).numpy())
    planted = tmp_path / "planted"
    torch.save([dict(seg, extra=_Planted(planted))], root / "segments_val.pth")
    raises_naming(lambda: load_lmlistener(root, splits="val"), "segments_val.pth", "needs full unpickling", "--trust-pickle")
    assert not planted.exists()
    r = CliRunner().invoke(app, ["data", "inspect", str(root)])
    assert r.exit_code != 0 and "segments_" in r.output and "refused" in r.output and not planted.exists()
    # a harmless object no safe reader allows: read only with --trust-pickle (realm.data.peer.TRUST_PICKLE)
    torch.save([dict(seg, recorded=datetime.date(2020, 1, 1))], root / "segments_val.pth")
    raises_naming(lambda: load_lmlistener(root, splits="val"), "segments_val.pth", "refused")
    monkeypatch.setattr(peer, "TRUST_PICKLE", True)
    (clip,) = load_lmlistener(root, splits="val")
    assert clip.listener.shape[1] == 56


def test_l2l_object_files_array_never_runs_a_planted_pickle(tmp_path):
    from realm.data.peer import load_object_npy

    a = np.empty((2, 4, 3), dtype=object)
    a[..., 0], a[..., 1], a[..., 2] = "vid", 0, 5
    np.save(tmp_path / "files.npy", a, allow_pickle=True)
    np.testing.assert_array_equal(load_object_npy(tmp_path / "files.npy"), a)
    planted = tmp_path / "planted"
    bad = np.empty(1, dtype=object)
    bad[0] = _Planted(planted)
    np.save(tmp_path / "bad.npy", bad, allow_pickle=True)
    raises_naming(lambda: load_object_npy(tmp_path / "bad.npy"), "bad.npy", "not allowed in a data array")
    assert not planted.exists()


def test_lmlistener_bad_inputs(tmp_path):
    root, segs = make_lm(tmp_path)
    path = root / "segments_train.pth"
    train = segs["train"]

    torch.save([train[0], dict(train[1], p0_exp=train[1]["p0_exp"][:, :49])], path)
    raises_naming(lambda: load_lmlistener(root), "segments_train.pth", "segment 1", "p0_exp", "width")

    bad = train[1]["p1_pose"].clone()
    bad[4, 2] = float("nan")
    torch.save([train[0], dict(train[1], p1_pose=bad)], path)
    raises_naming(lambda: load_lmlistener(root), "segments_train.pth", "segment 1", "NaN")

    torch.save([{k: v for k, v in train[0].items() if k != "p1_pose"}], path)
    raises_naming(lambda: load_lmlistener(root), "segments_train.pth", "segment 0", "p1_pose")

    torch.save([dict(train[0], p1_exp=train[0]["p1_exp"][:50], p1_pose=train[0]["p1_pose"][:50])], path)
    raises_naming(lambda: load_lmlistener(root), "segments_train.pth", "lengths differ")

    torch.save({"segments": train}, path)
    raises_naming(lambda: load_lmlistener(root), "segments_train.pth", "list")

    path.write_bytes(b"not a torch file")
    raises_naming(lambda: load_lmlistener(root), "segments_train.pth", "unreadable")

    raises_naming(lambda: load_lmlistener(root, splits="ood"), "segments_ood.pth", "not found")
    raises_naming(lambda: load_lmlistener(tmp_path / "nowhere"), "nowhere", "not found")


def test_numpy_1_arrays_in_torch_files_and_protocol_2_object_arrays_load_safely(tmp_path):
    import pickle
    import zipfile

    from realm.data.peer import load_object_npy, load_torch

    torch.save({"n": np.arange(3, dtype=np.float32)}, tmp_path / "a.pth")
    with zipfile.ZipFile(tmp_path / "a.pth") as z:  # as numpy 1.x wrote it: numpy.core, not numpy._core
        files = {n: z.read(n) for n in z.namelist()}
    files = {n: b.replace(b"numpy._core.multiarray", b"numpy.core.multiarray") if n.endswith("data.pkl") else b
             for n, b in files.items()}  # fmt: skip
    with zipfile.ZipFile(tmp_path / "old.pth", "w") as z:
        for n, b in files.items():
            z.writestr(n, b)
    np.testing.assert_array_equal(load_torch(tmp_path / "old.pth")["n"], [0, 1, 2])
    a = np.empty((2, 2), dtype=object)
    a[:] = "vid"
    with open(tmp_path / "p2.npy", "wb") as f:  # Python 2 / numpy < 1.17 wrote protocol 2
        np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(a))
        pickle.dump(a, f, protocol=2)
    np.testing.assert_array_equal(load_object_npy(tmp_path / "p2.npy"), a)
