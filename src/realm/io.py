"""Atomic file and directory writes: outputs appear complete or not at all, and never replace
an existing file unless asked (``force``).

Without ``force`` the check is made when the output is put in place, not only before the work
starts: the finished temporary file is hard-linked to its name (a directory renamed onto a
name just created for it), which fails if the name exists, so a file created meanwhile is kept.
Temporary files and directories are removed when the block fails; while a write is under way
its temporary file is locked, and a later write to the same name removes the unlocked ones
that a killed process left behind.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

try:
    import fcntl
except ImportError:  # Windows: no locks, no sweeping of orphans
    fcntl = None


def refuse_existing(path: str | Path) -> None:
    """The one-line error for an output that exists (also a dangling link): use ``--force``."""
    if os.path.lexists(path):
        raise FileExistsError(f"{path}: exists (use --force to overwrite)")



def refuse_output(parser, path, force: bool) -> None:
    """For a script's argparse ``parser``: a one-line usage error (exit 2) when the output
    ``path`` exists and ``force`` is off, checked before the work (the write checks again)."""
    if path and not force:
        try:
            refuse_existing(path)
        except FileExistsError as e:
            parser.error(str(e))

@contextmanager
def atomic_path(path: str | Path, force: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it becomes ``path`` only if the block succeeds.

    With ``force=False`` an existing ``path`` is an error (never overwrite a user's file), both
    before the block and when the file is put in place (create-exclusive: a file that appears
    at ``path`` during the block is not replaced). The temporary file never outlives the block.
    """
    path = Path(path)
    if not force:
        refuse_existing(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep_orphans(path, ".tmp")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp, fd = Path(tmp), _lock(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        if force:
            os.replace(tmp, path)
        else:
            _link_exclusive(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        if fd is not None:
            os.close(fd)


def _link_exclusive(tmp: Path, path: Path) -> None:
    """Give the finished ``tmp`` the name ``path`` unless ``path`` exists (at this very moment)."""
    try:
        os.link(tmp, path)
        return
    except FileExistsError:
        refuse_existing(path)
        raise
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
            raise
    # a file system without hard links: claim the name exclusively, then replace the claim
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        refuse_existing(path)
        raise
    try:
        os.replace(tmp, path)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _lock(fd: int) -> int | None:
    """Lock ``fd`` to mark its temporary file or directory as in use (the lock goes when the
    process ends, however it ends) and return it; without locks (Windows) close it, ``None``."""
    if fcntl is None:
        os.close(fd)
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # a file system without locks: its temporaries are never swept either
        pass
    return fd


def _sweep_orphans(path: Path, suffix: str, min_age_s: float = 60.0) -> None:
    """Remove the temporaries of ``path`` that no live process holds (left by a killed writer)
    and that have not changed for ``min_age_s``."""
    if fcntl is None:
        return
    for orphan in glob.glob(os.path.join(glob.escape(str(path.parent)), f".{glob.escape(path.name)}.*{suffix}")):
        try:
            if time.time() - os.lstat(orphan).st_mtime < min_age_s:
                continue
            fd = os.open(orphan, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fails while its writer is alive
        except OSError:
            continue
        finally:
            os.close(fd)  # (closing releases the lock just taken)
        if os.path.isdir(orphan) and not os.path.islink(orphan):
            shutil.rmtree(orphan, ignore_errors=True)
        else:
            Path(orphan).unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: str | Path, force: bool = False, allow_empty: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; it becomes ``path`` only if the block succeeds.

    On failure the temporary directory is removed, so no partial dataset is ever left behind.
    An existing ``path`` is replaced only with ``force=True``; without it ``path`` is refused
    before the block and again when the directory is put in place (create-exclusive).
    ``allow_empty``: an empty directory at ``path`` may be replaced without ``force``, as long as
    it is still empty when the result is put in place.
    """
    path = Path(path)
    empty_ok = allow_empty and path.is_dir() and not path.is_symlink() and not any(path.iterdir())
    if not force and not empty_ok:
        refuse_existing(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep_orphans(path, ".partial")
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    fd = _lock(os.open(tmp, os.O_RDONLY)) if fcntl is not None else None
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if not force and empty_ok and os.path.isdir(path):  # replaces the directory only while it is empty
            _rename_onto_empty(tmp, path)
        elif not force:
            _rename_dir_exclusive(tmp, path)
        elif os.path.lexists(path):
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if fd is not None:
            os.close(fd)
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _rename_onto_empty(tmp: Path, path: Path) -> None:
    """Rename the finished directory ``tmp`` onto the empty directory ``path``; the rename fails,
    and ``path`` is kept, if anything was put into it meanwhile."""
    try:
        os.rename(tmp, path)
    except OSError as e:
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
            raise FileExistsError(f"{path}: exists and is not empty (use --force to overwrite)") from None
        raise


def _rename_dir_exclusive(tmp: Path, path: Path) -> None:
    """Rename the finished directory ``tmp`` to ``path`` unless ``path`` exists (at this very moment).

    ``mkdir`` claims the name (it fails if anything has it); the rename then replaces only that
    empty claim, and fails if anything was put into it meanwhile, which is then kept.
    """
    try:
        os.mkdir(path)
    except FileExistsError:
        refuse_existing(path)
        raise
    try:
        os.rename(tmp, path)
    except OSError as e:
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):  # something was put there: keep it
            refuse_existing(path)
        os.rmdir(path)
        raise


def write_json(path: str | Path, obj, force: bool = True) -> None:
    """Write ``obj`` as JSON atomically; ``force=False`` refuses to replace a file (see :func:`atomic_path`)."""
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

