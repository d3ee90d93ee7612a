"""Atomic writes: complete or absent, never replacing a file without ``force``, no temporaries left."""

import errno
import os
import time

import numpy as np
import pytest

import realm.io
from realm.io import atomic_dir, atomic_path, save_npy, save_npz, write_json


def leftovers(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_without_force_an_existing_file_is_refused_before_any_work(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("theirs")
    with pytest.raises(FileExistsError, match=r"out.json: exists \(use --force to overwrite\)"):
        write_json(target, {"a": 1}, force=False)
    assert target.read_text() == "theirs" and leftovers(tmp_path) == []
    write_json(target, {"a": 1}, force=True)
    assert target.read_text() == '{\n "a": 1\n}'


@pytest.mark.parametrize("write", [
    lambda p: write_json(p, [1], force=False),
    lambda p: save_npy(p, np.zeros(3), force=False),
    lambda p: save_npz(p, force=False, x=np.zeros(3)),
])  # fmt: skip
def test_a_file_created_after_the_check_is_not_replaced(tmp_path, monkeypatch, write):
    """The race: the target appears between the up-front check and the final write."""
    target = tmp_path / "out.bin"
    real_chmod = os.chmod

    def chmod_then_appear(path, mode):
        """Runs once the temporary file is complete, just before it is put in place."""
        real_chmod(path, mode)
        if str(path).endswith(".tmp"):
            target.write_text("theirs")

    monkeypatch.setattr(realm.io.os, "chmod", chmod_then_appear)
    with pytest.raises(FileExistsError, match="out.bin: exists"):
        write(target)
    assert target.read_text() == "theirs" and leftovers(tmp_path) == []


def test_the_check_holds_without_hard_links(tmp_path, monkeypatch):
    """On a file system without hard links the name is claimed with O_EXCL instead."""

    def no_links(src, dst):
        raise OSError(errno.EPERM, "hard links not supported")

    monkeypatch.setattr(realm.io.os, "link", no_links)
    target = tmp_path / "out.txt"
    with atomic_path(target, force=False) as tmp:
        tmp.write_text("ours")
    assert target.read_text() == "ours"
    target.unlink()
    with pytest.raises(FileExistsError, match="exists"):
        with atomic_path(target, force=False) as tmp:
            tmp.write_text("ours")
            target.write_text("theirs")
    assert target.read_text() == "theirs" and leftovers(tmp_path) == []


def test_a_failing_write_leaves_no_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target, force=False) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    with pytest.raises(ValueError, match="non-finite"):
        save_npy(target, np.array([np.nan]), force=False)
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(tmp_path / "ds", force=False) as tmp:
            (tmp / "clips.csv").write_text("half")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_directories_are_create_exclusive_too(tmp_path, monkeypatch):
    target = tmp_path / "ds"
    with atomic_dir(target, force=False) as tmp:
        (tmp / "a").write_text("1")
    assert (target / "a").read_text() == "1"
    with pytest.raises(FileExistsError, match="ds: exists"):
        with atomic_dir(target, force=False):
            pass
    other = tmp_path / "other"
    with pytest.raises(FileExistsError, match="other: exists"):
        with atomic_dir(other, force=False) as tmp:
            (tmp / "a").write_text("ours")
            other.mkdir()
            (other / "theirs").write_text("kept")
    assert [p.name for p in other.iterdir()] == ["theirs"] and leftovers(tmp_path) == []
    with atomic_dir(target, force=True) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b"]


def test_a_killed_writers_temporaries_are_swept_by_the_next_write_of_that_name(tmp_path):
    fcntl = pytest.importorskip("fcntl")
    target = tmp_path / "out.txt"
    orphan, fresh, held = (tmp_path / f".out.txt.{k}.tmp" for k in ("orphan", "fresh", "held"))
    for p in (orphan, fresh, held):
        p.write_text("partial")
    old = time.time() - 3600
    os.utime(orphan, (old, old))
    os.utime(held, (old, old))
    other = tmp_path / ".other.txt.x.tmp"  # another output's temporary: not this write's business
    other.write_text("partial")
    os.utime(other, (old, old))
    fd = os.open(held, os.O_RDWR)  # a writer still at work holds its lock
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        write_json(target, [1], force=False)
    finally:
        os.close(fd)
    assert leftovers(tmp_path) == sorted([fresh.name, held.name, other.name])


def test_atomic_dir_allow_empty_replaces_an_empty_directory_only_while_it_stays_empty(tmp_path):
    out = tmp_path / "eval"
    out.mkdir()
    with atomic_dir(out, allow_empty=True) as tmp:
        (tmp / "results.json").write_text("{}")
    assert (out / "results.json").read_text() == "{}"
    again = tmp_path / "again"
    again.mkdir()
    with pytest.raises(FileExistsError, match="not empty"):
        with atomic_dir(again, allow_empty=True) as tmp:
            (tmp / "results.json").write_text("{}")
            (again / "mine.txt").write_text("a user's file, put there meanwhile")
    assert [p.name for p in again.iterdir()] == ["mine.txt"]
    assert not list(tmp_path.glob(".again.*"))  # no temporary left


def test_a_script_refuses_an_existing_output_in_one_line_unless_forced(tmp_path, capsys):
    import argparse

    from realm.io import refuse_output

    out = tmp_path / "numbers.json"
    out.write_text("{}")
    ap = argparse.ArgumentParser(prog="bench")
    with pytest.raises(SystemExit) as e:
        refuse_output(ap, out, force=False)
    assert e.value.code == 2 and f"bench: error: {out}: exists (use --force to overwrite)" in capsys.readouterr().err
    refuse_output(ap, out, force=True)  # forced: no error
    refuse_output(ap, tmp_path / "new.json", force=False)  # a new file: no error
    refuse_output(ap, None, force=False)  # no output asked for
