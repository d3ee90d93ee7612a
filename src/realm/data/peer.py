"""Reading helpers shared by the peer-dataset loaders (ViCo, Learning2Listen, LM-Listener).

Each turns a failure into a :class:`RealmInputError` that names the file and the problem.
"""

from __future__ import annotations

import csv
import logging
import pickle
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import scipy.io

from realm.audio import n_frames
from realm.data.clip import LENGTH_TOLERANCE_FRAMES, SPLITS, Clip
from realm.errors import RealmInputError

log = logging.getLogger(__name__)


def wanted_splits(splits: str | Iterable[str] | None) -> set[str]:
    wanted = set(SPLITS) if splits is None else {splits} if isinstance(splits, str) else set(splits)
    unknown = wanted - set(SPLITS)
    if unknown:
        raise RealmInputError(None, f"unknown split(s) {sorted(unknown)} (expected some of {SPLITS})")
    return wanted


def read_csv(path: Path, required: tuple[str, ...]) -> list[dict]:
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in reader]
            fields = [(k or "").strip() for k in reader.fieldnames or []]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise RealmInputError(path, f"unreadable CSV ({e})") from None
    missing = [c for c in required if c not in fields]
    if missing:
        raise RealmInputError(path, f"missing column(s) {missing}")
    return rows


def read_mat(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Variables ``keys`` of a MATLAB file (scipy; v7.3/HDF5 files through h5py when it is installed)."""
    try:
        m = scipy.io.loadmat(path, variable_names=list(keys))
    except FileNotFoundError:
        raise RealmInputError(path, "file not found") from None
    except NotImplementedError:  # scipy's answer to MATLAB v7.3 (HDF5) files
        try:
            import h5py
        except ImportError:
            raise RealmInputError(
                path,
                "MATLAB v7.3 (HDF5) file: install h5py to read it, or re-save it as v7 (scipy.io.savemat)",
            ) from None
        with h5py.File(path, "r") as f:  # HDF5 stores MATLAB matrices transposed
            m = {k: np.asarray(f[k]).T for k in keys if k in f}
    except Exception as e:  # not a .mat, truncated, ...
        raise RealmInputError(path, f"unreadable .mat file ({type(e).__name__}: {e})") from None
    for k in keys:
        if k not in m:
            raise RealmInputError(path, f"no {k!r} variable in the .mat file")
    return {k: np.asarray(m[k], dtype=np.float64) for k in keys}


def load_torch(path: Path):
    """``torch.load`` with ``weights_only=True``, falling back to full unpickling (logged) when needed."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise RealmInputError(path, "file not found") from None
    except pickle.UnpicklingError:
        log.warning("%s: needs full unpickling (weights_only=False); only load files you trust", path)
    except Exception as e:
        raise RealmInputError(path, f"unreadable torch file ({type(e).__name__}: {e})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise RealmInputError(path, f"unreadable torch file ({type(e).__name__}: {e})") from None


def load_npy_2d(path: Path) -> np.ndarray:
    try:
        x = np.load(path, allow_pickle=False)
    except Exception as e:
        raise RealmInputError(path, f"unreadable .npy file ({type(e).__name__}: {e})") from None
    if x.ndim != 2 or not np.all(np.isfinite(x)):
        raise RealmInputError(path, f"features must be finite (frames, dims), got shape {x.shape}")
    return x.astype(np.float32)


def audio_frames(path: Path, fps: float) -> int:
    """Length of an audio file in motion frames (header only)."""
    import soundfile

    try:
        info = soundfile.info(str(path))
    except Exception as e:
        raise RealmInputError(path, f"unreadable audio file ({e})") from None
    return n_frames(info.frames, fps, info.samplerate)


def common_length(source: str | Path, **lengths: int) -> int:
    """The shortest length; error when any two differ by more than ``LENGTH_TOLERANCE_FRAMES``."""
    if max(lengths.values()) - min(lengths.values()) > LENGTH_TOLERANCE_FRAMES:
        detail = ", ".join(f"{k} {v}" for k, v in lengths.items())
        raise RealmInputError(
            source, f"lengths differ by more than {LENGTH_TOLERANCE_FRAMES} frames ({detail})"
        )
    return min(lengths.values())


def finish_clip(clip: Clip) -> Clip:
    """Check listener, speaker, audio and feature lengths agree (within tolerance) and trim to the shortest."""
    lengths = {"listener": clip.n_frames, **{f"feature {k}": len(v) for k, v in clip.features.items()}}
    if clip.speaker is not None:
        lengths["speaker"] = len(clip.speaker)
    if clip.audio_path is not None:
        lengths["audio"] = audio_frames(clip.audio_path, clip.fps)
    n = common_length(clip.source, **lengths)
    clip.listener = clip.listener[:n]
    if clip.speaker is not None:
        clip.speaker = clip.speaker[:n]
    clip.features = {k: v[:n] for k, v in clip.features.items()}
    return clip


def to_numpy(x, path: Path) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise RealmInputError(path, f"not a numeric array ({e})") from None
