"""One training set from several datasets of our layout (``realm data mix``).

The demo's recipe trains on the same conversations heard clean and through a randomised channel,
plus conversations with long silences: three ``realm data synth`` directories whose train and val
rows go into one ``clips.csv``. Each source's clip ids get a suffix (``train_00000`` of the second
source becomes ``train_00000r``) so that they stay unique, and each file is linked (or copied)
under the new id, so the mix is a dataset directory like any other::

    mix = mix_datasets("data/mix", [("c", "data/clean"), ("r", "data/robust")])

The test and ood rows are left out by default: a mix is for training, and evaluation reads each
source's own held-out splits (the sources share them when they share a seed).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from realm.data.clip import SPLITS, read_index, read_meta, write_index
from realm.errors import RealmInputError
from realm.io import atomic_dir, write_json

#: The clips.csv columns that name files (relative to the dataset directory, or absolute).
FILE_COLUMNS = ("audio", "motion", "words", "events")
_SUFFIX = re.compile(r"^[A-Za-z0-9_-]+$")


def default_suffixes(n: int) -> list[str]:
    """``a``, ``b``, ``c``, ... for ``n`` sources."""
    if n > 26:
        raise ValueError(f"{n} sources: give each a suffix")
    return [chr(ord("a") + k) for k in range(n)]


def mix_datasets(
    out: str | Path,
    sources: list[tuple[str, str | Path]],
    splits: tuple[str, ...] = ("train", "val"),
    copy: bool = False,
    force: bool = False,
) -> int:
    """Write the ``splits`` rows of every ``(suffix, directory)`` source into one dataset at ``out``.

    Files are symlinked to their resolved source (``copy``: copied, for a mix that outlives its
    sources). Sources must share the motion spec and frame rate (their ``meta.json``). ``meta.json``
    of the mix is the first source's, with ``mix``: each source's suffix, path, clip count and
    generator config. The directory appears only when complete (an existing one needs ``force``).
    Returns the number of clips.
    """
    if not sources:
        raise ValueError("realm data mix needs at least one source dataset")
    bad = [s for s in splits if s not in SPLITS]
    if bad:
        raise ValueError(f"unknown split(s) {bad} (expected some of {SPLITS})")
    suffixes = [s for s, _ in sources]
    for s in suffixes:
        if not _SUFFIX.match(s):
            raise ValueError(f"suffix {s!r}: use letters, digits, '-' or '_'")
    if len(set(suffixes)) != len(suffixes):
        raise ValueError(f"suffixes must differ, got {suffixes}")
    out = Path(out)
    tables = []  # (suffix, resolved dir, rows, meta)
    for suffix, d in sources:
        d = Path(d)
        rows = read_index(d)  # a missing or broken dataset is a one-line error naming it
        meta = read_meta(d)
        if out.resolve() == d.resolve():
            raise RealmInputError(d, "is the output of the mix itself")
        tables.append((suffix, d.resolve(), rows, meta))
    first_dir, first_meta = tables[0][1], tables[0][3]
    for _, d, _, meta in tables[1:]:
        for key in ("spec", "fps"):
            if key in meta and key in first_meta and meta[key] != first_meta[key]:
                raise RealmInputError(d, f"{key} {meta[key]!r} differs from {first_dir}'s {first_meta[key]!r}")
    mixed, seen, info = [], set(), []
    with atomic_dir(out, force=force) as tmp:
        for col in FILE_COLUMNS:
            (tmp / col).mkdir()
        for suffix, d, rows, meta in tables:
            n = 0
            for r in rows:
                if r["split"] not in splits:
                    continue
                cid = r["clip_id"] + suffix
                if cid in seen:
                    raise RealmInputError(d, f"clip id {cid!r} twice in the mix (choose other suffixes)")
                seen.add(cid)
                row = dict(r, clip_id=cid)
                for col in FILE_COLUMNS:
                    if not r.get(col):
                        continue
                    src = (d / r[col]).resolve()
                    rel = f"{col}/{cid}{''.join(src.suffixes[-1:])}"
                    if copy:
                        shutil.copy2(src, tmp / rel)
                    else:
                        os.symlink(src, tmp / rel)
                    row[col] = rel
                mixed.append(row)
                n += 1
            info.append({"suffix": suffix, "source": str(d), "clips": n, "config": meta.get("config", {})})
        if not mixed:
            raise RealmInputError(first_dir, f"no clips of split(s) {list(splits)} in any source")
        meta = dict(first_meta, mix={"splits": list(splits), "files": "copied" if copy else "linked", "sources": info})
        write_index(tmp, mixed)
        write_json(tmp / "meta.json", meta)
    return len(mixed)


def data_config(root: str | Path) -> dict:
    """What a checkpoint records of the data it was trained on: the generator config of ``root``'s
    ``meta.json`` and, for a mix, ``mix``: each source's suffix, path and generator config (a mix's
    own config is its first source's, which says nothing of the others, e.g. their channel)."""
    meta = read_meta(root)
    cfg = dict(meta.get("config", {}))
    mix = meta.get("mix")
    if isinstance(mix, dict) and "sources" in mix:  # realm data mix
        cfg["mix"] = [{k: s.get(k) for k in ("suffix", "source", "config")} for s in mix["sources"]]
    elif isinstance(mix, dict):  # an older mix's meta: {suffix: source directory}
        cfg["mix"] = [{"suffix": s, "source": str(d), "config": read_meta(d).get("config", {})} for s, d in mix.items()]
    return cfg
