"""Learning2Listen loader, reading the layout released by evonneng/learning2listen.

Layout (README "Download Data" and ``src/utils/load_utils.py``: ``get_local_files`` and
``load_test_data``)::

    data/                                        root (root may also be the folder holding data/)
      {channel}/                                 conan, devi2, fallon, kimmel, stephen, trevor
        train/ | test/
          p0_list_faces_clean_deca.npy           (N, 64, 184) p0 listening: DECA exp 50 | pose 6 | detail 128
          p1_speak_faces_clean_deca.npy          (N, 64, 184) p1 speaking at the same time
          p1_speak_audio_clean_deca.npy          (N, 256, 128) p1's audio, log-mel, 4 mel frames per motion frame
          p1_speak_files_clean_deca.npy          (N, 64, 3) per frame: video id, person, frame number
          p1_list_faces_clean_deca.npy           and the same with the roles swapped
          p0_speak_{faces,audio,files}_clean_deca.npy

p0 is the person on the left of the video, p1 on the right. ``pX_list_faces`` pairs with
``p{1-X}_speak_*`` sequence by sequence; every pairing present gives clips. Listener and speaker
keep the first 56 values (``flame56`` = exp 50 | global rotation 3 | jaw 3; files of width 56,
as the README's "Using your own data" describes, are read too). The mel of each clip is stored
as ``clip.features["l2l_mel"]`` (64, 512): row t is mel frames 4t..4t+3 concatenated.

L2L's own code treats the channel's host as the listener: p1 for fallon, p0 for the others
(``out_num`` in ``test_vq_decoder.py``). That pairing gets ``listener_id = channel``; the
other gets ``listener_id = channel + "_guest"`` (different guests, not one identity).
Clip ids are ``{channel}_{split}_p{X}_{index:05d}``; 30 fps. The audio waveforms are not public:
``audio_path`` is None.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from realm.data.clip import SPLITS, Clip
from realm.data.peer import common_length, load_object_npy, wanted_splits
from realm.errors import RealmInputError
from realm.motion import SPECS

log = logging.getLogger(__name__)

FPS = 30.0
MEL_PER_FRAME = 4
HOST = {"fallon": 1}  # listener index of the channel's host; 0 for every other channel
PATTERN = "*/*/p[01]_list_faces_clean_deca.npy"


def load_l2l(root: str | Path, splits: str | Iterable[str] | None = None) -> list[Clip]:
    """Read every (listener, speaker) pairing of every channel and split below ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise RealmInputError(root, "Learning2Listen data directory not found")
    wanted = wanted_splits(splits)
    if not any(root.glob(PATTERN)) and (root / "data").is_dir():
        root = root / "data"
    found = sorted(root.glob(PATTERN))
    if not found:
        raise RealmInputError(
            root, "no {channel}/{split}/p0_list_faces_clean_deca.npy (Learning2Listen data/ layout)"
        )
    log.warning(
        "Learning2Listen audio is not public: models needing waveforms cannot run; l2l_mel features are available"
    )
    clips = []
    for lis_path in found:
        channel, split = lis_path.parent.parent.name, lis_path.parent.name
        if split not in SPLITS:
            log.warning("%s: skipped, %r is not a split name %s", lis_path, split, SPLITS)
        elif split in wanted:
            clips += _load_pairing(lis_path, channel, split)
    return clips


def _load_pairing(lis_path: Path, channel: str, split: str) -> list[Clip]:
    x = int(lis_path.name[1])
    s = 1 - x
    spk_path, mel_path, files_path = (
        lis_path.parent / f"p{s}_speak_{kind}_clean_deca.npy" for kind in ("faces", "audio", "files")
    )
    lis, spk = _faces(lis_path), _faces(spk_path)
    mel, files = _load(mel_path), _load(files_path, allow_pickle=True)
    if mel.ndim != 3:
        raise RealmInputError(mel_path, f"mel features must be (N, frames, mels), got shape {mel.shape}")
    if files.ndim != 3 or files.shape[2] != 3:
        raise RealmInputError(
            files_path, f"expected (N, frames, 3) video id, person, frame; got shape {files.shape}"
        )
    for path, a in ((spk_path, spk), (mel_path, mel), (files_path, files)):
        if len(a) != len(lis):
            raise RealmInputError(path, f"{len(a)} sequences, but {lis_path.name} has {len(lis)}")
    t = common_length(
        mel_path,
        listener=lis.shape[1],
        speaker=spk.shape[1],
        files=files.shape[1],
        mel=mel.shape[1] // MEL_PER_FRAME,
    )
    host = HOST.get(channel, 0)
    lis_id, spk_id = (channel, f"{channel}_guest") if x == host else (f"{channel}_guest", channel)
    spec = SPECS["flame56"]
    clips = []
    for i in range(len(lis)):
        clips.append(
            Clip(
                clip_id=f"{channel}_{split}_p{x}_{i:05d}",
                split=split,
                listener=spec.validate(np.array(lis[i, :t], dtype=np.float32), f"{lis_path}[{i}]"),
                spec="flame56",
                fps=FPS,
                speaker=spec.validate(np.array(spk[i, :t], dtype=np.float32), f"{spk_path}[{i}]"),
                speaker_spec="flame56",
                speaker_id=spk_id,
                listener_id=lis_id,
                features={"l2l_mel": _mel(mel[i, : t * MEL_PER_FRAME], t, f"{mel_path}[{i}]")},
                source=str(lis_path),
            )
        )
    return clips


def _faces(path: Path) -> np.ndarray:
    """The (N, T, 56) flame56 part of a faces file (memory-mapped; copied clip by clip)."""
    a = _load(path)
    if a.ndim != 3 or a.shape[2] < 56:
        raise RealmInputError(
            path,
            f"wrong coefficient width: shape {a.shape}, expected (N, frames, 184) exp 50 | pose 6 | detail 128",
        )
    return a[:, :, :56]


def _mel(m: np.ndarray, t: int, source: str) -> np.ndarray:
    m = np.array(m, dtype=np.float32).reshape(t, -1)
    if not np.all(np.isfinite(m)):
        raise RealmInputError(source, "NaN/inf in mel features")
    return m


def _load(path: Path, allow_pickle: bool = False) -> np.ndarray:
    """``np.load``; object arrays (the files array may be one) only where ``allow_pickle``, through
    the safe reader :func:`realm.data.peer.load_object_npy`."""
    if not path.exists():
        raise RealmInputError(
            path, "file not found (every pX_list_faces file pairs with p{1-X}_speak_* files)"
        )
    try:
        try:
            return np.load(path, mmap_mode="r")
        except ValueError:  # an object array cannot be memory-mapped
            if not allow_pickle:
                raise
            return load_object_npy(path)  # its pickle may only rebuild an array: no code runs
    except RealmInputError:
        raise
    except Exception as e:
        raise RealmInputError(path, f"unreadable .npy file ({type(e).__name__}: {e})") from None
