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
    with atomic_path(path, force=force) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, arr)


def save_npz(path: str | Path, force: bool = True, **arrays) -> None:
    with atomic_path(path, force=force) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
