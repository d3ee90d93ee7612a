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

from pathlib import Path

from realm.data.clip import SPLITS, Clip, Word, load_dataset
from realm.errors import RealmInputError

FORMATS = ("realm", "vico", "l2l", "lmlistener", "dualtalk", "dualtalk_arkit", "seamless", "unils")


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
    if fmt == "vico":
        from realm.data.vico import load_vico

        return load_vico(root, splits=splits)
    if fmt == "l2l":
        from realm.data.l2l import load_l2l

        return load_l2l(root, splits=splits)
    if fmt == "lmlistener":
        from realm.data.lmlistener import load_lmlistener

        return load_lmlistener(root, splits=splits)
    if fmt == "dualtalk":
        from realm.data.dualtalk import load_dualtalk

        return load_dualtalk(root, splits=splits)
    if fmt == "dualtalk_arkit":
        from realm.data.dualtalk_arkit import load_dualtalk_arkit

        return load_dualtalk_arkit(root, splits=splits)
    if fmt == "seamless":
        from realm.data.seamless import load_seamless

        return load_seamless(root, splits=splits)
    if fmt == "unils":
        from realm.data.unils import load_unils

        return load_unils(root, splits=splits)
    raise ValueError(f"unknown dataset format {fmt!r}; known: {FORMATS}")


__all__ = ["Clip", "Word", "SPLITS", "FORMATS", "detect_format", "load_any", "load_dataset"]
