"""Reading helpers shared by the peer-dataset loaders (ViCo, Learning2Listen, LM-Listener, DualTalk,
Seamless Interaction, UniLS-Talk).

Each turns a failure into a :class:`RealmInputError` that names the file and the problem.
"""

from __future__ import annotations

import csv
import hashlib
import json
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


#: Full unpickling of peer files that no safe reader can read (``realm --trust-pickle``). Off:
#: a pickle can run any code when loaded, so a crafted dataset file must never be unpickled.
TRUST_PICKLE = False


def _numpy_globals() -> list:
    """What a pickled numpy array needs, and nothing else (no callable that runs code)."""
    from numpy._core import multiarray as ma

    old = [(ma._reconstruct, "numpy.core.multiarray._reconstruct"), (ma.scalar, "numpy.core.multiarray.scalar")]
    dtypes = [type(np.dtype(c)) for c in "?bBhHiIlLqQefdgFDGSUO"]
    return [ma._reconstruct, np.ndarray, np.dtype, ma.scalar, *old, *dtypes]  # files of numpy 2 and 1.x


def load_torch(path: Path):
    """``torch.load`` with ``weights_only=True`` (tensors, containers and numpy arrays, no code);
    a file that needs more is refused unless :data:`TRUST_PICKLE` (``realm --trust-pickle``)."""
    import torch

    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise RealmInputError(path, "file not found") from None
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e) or "Unsupported operand" in str(e):  # not a torch file, truncated
            raise RealmInputError(path, "unreadable torch file (not a torch.save file, or truncated)") from None
        if not TRUST_PICKLE:
            raise RealmInputError(path, "needs full unpickling, which can run code from the file: refused; "
                                        "pass `realm --trust-pickle ...` only for files you trust") from None  # fmt: skip
        log.warning("%s: full unpickling (--trust-pickle): this runs any code the file holds", path)
    except Exception as e:
        raise RealmInputError(path, f"unreadable torch file ({type(e).__name__}: {e})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise RealmInputError(path, f"unreadable torch file ({type(e).__name__}: {e})") from None


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles a numpy object array of plain values (str, int, float, bytes, tuples) and refuses
    every other global: what ``np.save`` writes for an object array, and nothing that runs code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"),
               ("_codecs", "encode")}  # fmt: skip  (protocol-2 pickles, numpy < 1.17, store bytes through it)

    def find_class(self, module: str, name: str):
        plain = "." not in name  # protocol 4 follows dotted names: never into an attribute of an allowed one
        if plain and ((module, name) in self.ALLOWED or (module == "numpy.dtypes" and name.endswith("DType"))):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a data array")


def load_object_npy(path: Path) -> np.ndarray:
    """A ``.npy`` file that holds an object array (e.g. Learning2Listen's files arrays of video id,
    person, frame), read without running code: its pickle may only rebuild a numpy array of plain
    values (:class:`_ArrayUnpickler`; anything else only with :data:`TRUST_PICKLE`). Plain
    (non-object) arrays load as usual."""
    try:
        with open(path, "rb") as f:
            fmt = np.lib.format
            version = fmt.read_magic(f)
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, dtype = read(f, max_header_size=100_000)
            if not dtype.hasobject:
                return np.load(path, allow_pickle=False)
            try:
                arr = _ArrayUnpickler(f).load()
            except pickle.UnpicklingError:
                if not TRUST_PICKLE:
                    raise
                log.warning("%s: full unpickling (--trust-pickle): this runs any code the file holds", path)
                arr = np.load(path, allow_pickle=True)
    except FileNotFoundError:
        raise RealmInputError(path, "file not found") from None
    except Exception as e:
        raise RealmInputError(path, f"unreadable .npy file ({type(e).__name__}: {e})") from None
    if not isinstance(arr, np.ndarray) or arr.shape != tuple(shape):
        raise RealmInputError(path, f"the pickled array is not a {tuple(shape)} numpy array")
    return arr


def load_npy_2d(path: Path) -> np.ndarray:
    """A finite (frames, dims) ``.npy`` array as float32 (read by :func:`load_npy`)."""
    x = load_npy(path)
    if x.ndim != 2 or x.dtype.kind not in "biuf" or not np.all(np.isfinite(x)):
        raise RealmInputError(
            path, f"features must be finite (frames, dims) numbers, got shape {x.shape} {x.dtype}"
        )
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


def dyad_clip(lis: dict, spk: dict, *, clip_id: str, split: str, spec: str, fps: float, source: str,
              meta: dict, words=None) -> Clip:  # fmt: skip
    """One side of a two-person conversation as a clip: ``lis`` listens, ``spk``'s audio drives it.
    ``lis``/``spk``: ``{"motion": (T, D), "wav": path or None, "id": person id}``; the listener's own
    track goes to ``meta["listener_audio"]``. Lengths are checked (:func:`finish_clip`)."""
    clip = Clip(clip_id=clip_id, split=split, listener=lis["motion"], spec=spec, fps=fps, speaker=spk["motion"],
                speaker_spec=spec, audio_path=spk["wav"], speaker_id=spk["id"], listener_id=lis["id"], words=words,
                source=source, meta={**meta, "listener_audio": lis["wav"]})  # fmt: skip
    return finish_clip(clip)


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


# ---------------------------------------------------------------- numpy and JSON files, never unpickled

PICKLED = "holds a pickled object array, refused (a pickle can run code; arrays must be plain numbers)"
NPY_MAGIC, NPZ_MAGIC = b"\x93NUMPY", b"PK\x03\x04"  # what np.load tells the two apart by


def _magic(path: Path) -> bytes:
    """The first bytes of ``path`` (RealmInputError when it cannot be opened)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(NPY_MAGIC))
    except FileNotFoundError:
        raise RealmInputError(path, "file not found") from None
    except OSError as e:
        raise RealmInputError(path, f"unreadable file ({e})") from None


def load_npz(
    path: Path, keys: tuple[str, ...] | None = None, what: str = ".npz file", require: bool = True
) -> dict[str, np.ndarray]:
    """Arrays of an ``.npz`` (all, or only ``keys``: a missing one is an error unless ``require`` is
    False, then it is left out), read with ``allow_pickle=False``: an object array is refused with one
    line naming the file and the key. Arrays not asked for are never decompressed."""
    if _magic(path).startswith(NPY_MAGIC):
        raise RealmInputError(path, f"expected a {what} (a zip of arrays), found a single .npy array")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in keys or () if k not in z.files]
            if missing and require:
                raise RealmInputError(path, f"no {missing[0]!r} array in the {what} (has {sorted(z.files)})")
            out = {}
            for k in [k for k in keys if k in z.files] if keys is not None else z.files:
                try:
                    out[k] = z[k]
                except ValueError as e:
                    if "allow_pickle" in str(e):
                        raise RealmInputError(path, f"array {k!r} {PICKLED}") from None
                    raise
            return out
    except RealmInputError:
        raise
    except FileNotFoundError:
        raise RealmInputError(path, "file not found") from None
    except Exception as e:  # not a zip, truncated, ...
        raise RealmInputError(path, f"unreadable {what} ({type(e).__name__}: {e})") from None


def load_npy(path: Path) -> np.ndarray:
    """A ``.npy`` array, ``allow_pickle=False`` (an object array is refused with one line, an ``.npz``
    archive too)."""
    if _magic(path).startswith(NPZ_MAGIC):
        raise RealmInputError(
            path, "expected a .npy file (a single array), found an .npz archive (a zip of arrays)"
        )
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise RealmInputError(path, "file not found") from None
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise RealmInputError(path, PICKLED) from None
        raise RealmInputError(path, f"unreadable .npy file ({e})") from None
    except Exception as e:
        raise RealmInputError(path, f"unreadable .npy file ({type(e).__name__}: {e})") from None


def read_json(path: Path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RealmInputError(path, "file not found") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise RealmInputError(path, f"unreadable JSON ({e})") from None


def read_jsonl(path: Path) -> list[dict]:
    """One JSON object per non-empty line; a bad line is an error naming its number."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise RealmInputError(path, "file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RealmInputError(path, f"unreadable JSON lines ({e})") from None
    out = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise RealmInputError(path, f"line {i}: not JSON ({e})") from None
        if not isinstance(obj, dict):
            raise RealmInputError(path, f"line {i}: expected a JSON object, got {type(obj).__name__}")
        out.append(obj)
    return out


def mask_intervals(mask: np.ndarray, fps: float) -> list[list[float]]:
    """[[start, end], ...] seconds of the runs of a per-frame boolean mask (frame t = [t/fps, (t+1)/fps))."""
    m = np.concatenate([[False], np.asarray(mask, bool).reshape(-1), [False]])
    edges = np.flatnonzero(m[1:] != m[:-1])
    return [[round(a / fps, 4), round(b / fps, 4)] for a, b in zip(edges[::2], edges[1::2], strict=True)]


def held_out(name: str, percent: float) -> bool:
    """Whether ``name`` falls in a deterministic ``percent`` % hold-out (sha1 of the name): the same on
    every machine and run, and a name always lands on the same side however the dataset grows."""
    return int(hashlib.sha1(name.encode()).hexdigest()[:8], 16) % 10000 < percent * 100
