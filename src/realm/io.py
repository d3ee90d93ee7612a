"""Atomic file and directory writes: outputs appear complete or not at all."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np


@contextmanager
def atomic_path(path: str | Path, force: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    With ``force=False`` an existing ``path`` is an error (never overwrite a user's file).
    """
    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f"{path}: exists (use --force to overwrite)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_dir(path: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; it becomes ``path`` only if the block succeeds.

    On failure the temporary directory is removed, so no partial dataset is ever left behind.
    An existing ``path`` is replaced only with ``force=True``.
    """
    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f"{path}: exists (use --force to overwrite)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | Path, obj, force: bool = True) -> None:
    with atomic_path(path, force=force) as tmp:
        tmp.write_text(json.dumps(obj, indent=1))


def save_npy(path: str | Path, arr: np.ndarray, force: bool = True) -> None:
    """Write ``arr`` atomically; NaN or inf is refused (:func:`check_finite`)."""
    check_finite(path, array=arr)
    with atomic_path(path, force=force) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, arr)


def save_npz(path: str | Path, force: bool = True, **arrays) -> None:
    """Write ``arrays`` atomically (compressed); NaN or inf is refused (:func:`check_finite`)."""
    check_finite(path, **arrays)
    with atomic_path(path, force=force) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)


def load_weights(path: str | Path) -> dict:
    """The tensors of a safetensors file (no code runs on load), refused with a one-line
    :class:`~realm.errors.RealmInputError` when the file is corrupt or any weight is NaN or
    infinite (a diverged run's checkpoint would otherwise generate NaN frames)."""
    from safetensors.torch import load_file

    from realm.errors import RealmInputError

    try:
        state = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise RealmInputError(path, f"corrupt weights file ({type(e).__name__}: {e})") from None
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(v.isfinite().all())]
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise RealmInputError(path, f"non-finite (NaN or inf) weights in {', '.join(bad[:3])}{more}: a diverged run?")
    return state


def check_finite(path: str | Path, **arrays) -> None:
    """Refuse to write NaN or inf: a ValueError naming ``path`` and the first non-finite array."""
    for name, a in arrays.items():
        a = np.asarray(a)
        if a.dtype.kind in "fc" and not np.isfinite(a).all():
            raise ValueError(f"{path}: refusing to write {name} with {int((~np.isfinite(a)).sum())} non-finite values")

