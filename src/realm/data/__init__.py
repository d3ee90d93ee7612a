"""Datasets: our layout, the synthetic benchmark, and loaders for the peers' released layouts.

:func:`load_any` reads a directory in any supported layout into :class:`Clip` objects:

==============  =================================================================
format          recognised by
==============  =================================================================
realm           ``clips.csv`` (our layout, see ``realm.data.clip``)
vico            ``RLD_data.csv`` (REALM) or ViCo challenge split CSVs
l2l             ``*_list_faces_clean_deca.npy`` (Learning2Listen)
lmlistener      ``segments_{train,val,test}.pth`` (LM-Listener)
dualtalk_arkit  ``metadata/{train,test,ood}.jsonl`` (DualTalk's ARKit conversion)
dualtalk        ``{train,test,ood}/*_speaker1.npz`` (DualTalk, FLAME)
unils           ``data_lmdb/data.mdb`` here or one folder below (UniLS-Talk)
seamless        ``V*_S*_I*_P*.npz`` files below (Seamless Interaction downloads)
==============  =================================================================

The four last are checked before ViCo's CSV rules (a Seamless Interaction root has CSVs and mp4s).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from realm.data.clip import SPLITS, Clip, Word, load_dataset
from realm.errors import RealmInputError

#: Each peer layout's loader (module, function), imported when a dataset of that layout is read.
LOADERS = {
    "vico": ("realm.data.vico", "load_vico"),
    "l2l": ("realm.data.l2l", "load_l2l"),
    "lmlistener": ("realm.data.lmlistener", "load_lmlistener"),
    "dualtalk": ("realm.data.dualtalk", "load_dualtalk"),
    "dualtalk_arkit": ("realm.data.dualtalk_arkit", "load_dualtalk_arkit"),
    "seamless": ("realm.data.seamless", "load_seamless"),
    "unils": ("realm.data.unils", "load_unils"),
}
FORMATS = ("realm", *LOADERS)
#: The loaders that also give their clips one conversation at a time (module, generator): a dataset of
#: these layouts is read with bounded memory however large (``realm data store``). The others load a
#: whole split (ViCo, L2L and LM-Listener splits are a few hours; LM-Listener's is one file).
ITERATORS = {
    "dualtalk": ("realm.data.dualtalk", "iter_dualtalk"),
    "dualtalk_arkit": ("realm.data.dualtalk_arkit", "iter_dualtalk_arkit"),
    "seamless": ("realm.data.seamless", "iter_seamless"),
    "unils": ("realm.data.unils", "iter_unils"),
}


def detect_format(root: str | Path) -> str:
    root = Path(root)
    if not root.is_dir():
        raise RealmInputError(root, "dataset directory not found")
    if (root / "clips.csv").exists():
        return "realm"
    if (root / "RLD_data.csv").exists():
        return "vico"
    from realm.data import dualtalk, dualtalk_arkit, seamless, unils

    if dualtalk_arkit.is_dualtalk_arkit(root):
        return "dualtalk_arkit"
    if dualtalk.find_root(root) is not None:
        return "dualtalk"
    if unils.is_unils(root):
        return "unils"
    if seamless.is_seamless(root):
        return "seamless"
    if any(root.glob("*.csv")) and any(root.rglob("*.mp4")):
        return "vico"
    if any(root.rglob("*_list_faces_clean_deca.npy")):
        return "l2l"
    if any(root.rglob("segments_*.pth")):
        return "lmlistener"
    if any(root.rglob("*.csv")):
        return "vico"
    raise RealmInputError(
        root,
        "unrecognised dataset layout (expected clips.csv, RLD_data.csv, *_clean_deca.npy, segments_*.pth, "
        "{train,test,ood}/*_speaker1.npz, metadata/*.jsonl, data_lmdb/ or V*_S*_I*_P*.npz; see docs/data.md)",
    )


def load_any(root: str | Path, fmt: str = "auto", splits=None) -> list[Clip]:
    """Clips of a dataset directory in any supported layout (``fmt="auto"`` detects it).

    Every loader logs (and ``realm data inspect`` lists) what the data lacks; the newer loaders also
    put their conversions and gaps in ``clip.meta``.
    """
    fmt = detect_format(root) if fmt == "auto" else fmt
    if fmt == "realm":
        return load_dataset(root, splits)
    if fmt in LOADERS:
        import importlib

        module, name = LOADERS[fmt]
        return getattr(importlib.import_module(module), name)(root, splits=splits)
    raise ValueError(f"unknown dataset format {fmt!r}; known: {FORMATS}")


def iter_any(root: str | Path, fmt: str = "auto", splits=None) -> Iterator[Clip]:
    """:func:`load_any`'s clips one at a time: our layout clip by clip, :data:`ITERATORS`' layouts
    conversation by conversation, the other layouts a split at a time."""
    from realm.data.peer import wanted_splits

    fmt = detect_format(root) if fmt == "auto" else fmt
    if fmt == "realm":
        from realm.data.clip import load_clip, read_index

        wanted = wanted_splits(splits)
        for row in read_index(Path(root)):
            if row["split"] in wanted:
                yield load_clip(Path(root), row)
    elif fmt in ITERATORS:
        import importlib

        module, name = ITERATORS[fmt]
        yield from getattr(importlib.import_module(module), name)(root, splits=splits)
    else:
        wanted = wanted_splits(splits)
        for split in (s for s in SPLITS if s in wanted):  # in SPLITS' order (a set's differs between runs)
            yield from load_any(root, fmt, splits=split)


__all__ = ["Clip", "Word", "SPLITS", "FORMATS", "ITERATORS", "detect_format", "iter_any", "load_any", "load_dataset"]
