"""DualTalk's ARKit conversion (OpenFacebot/DualTalk_Dataset_ARKit; files on ModelScope
``yiwenhao/Dualtalk_Dataset_ARKit``): DualTalk's FLAME codes solved into Live Link ARKit channels.

Layout (the repository's README, DOWNLOAD.md, ``upload_modelscope.py``, ``metadata/*.jsonl`` and
``script/convert_flame2arkit.py``)::

    Dualtalk_Dataset_ARKit/                    root
      metadata/train.jsonl, test.jsonl, ood.jsonl
                                               one JSON object per conversation: name,
                                               speaker{1,2}_text (no times), speaker{1,2}_audio and
                                               speaker{1,2}_flame (relative to the DualTalk_Dataset
                                               root), speaker{1,2}_arkit (relative to the ARKit output
                                               folder), speaker{1,2}_frames, ..._smoothed, ..._head_correction
      ARKit_npy/{split}/{name}_speaker{1,2}.npy
                                               (T, 61) float32 at 25 fps, MOTION61_ORDER: 51 ARKit
                                               blendshapes (Apple's order), TongueOut (0), HeadYaw,
                                               HeadPitch, HeadRoll (YXZ Euler, rad, clipped to +-1),
                                               Left/RightEye Yaw/Pitch/Roll (0)
      DualTalk_Dataset/{split}/{name}_speaker{1,2}.wav
                                               the raw release (optional here): the audio tracks

**Guessed** (not stated by a public source): the folder ``ARKit_npy.zip`` unpacks to. The metadata's
``speaker*_arkit`` paths are relative to the converter's ``--output-dir``; we look for them under
``ARKit_npy/``, then ``ARKit/``, then root itself, and the error lists what was tried. Audio paths
are looked up under ``DualTalk_Dataset/`` then root.

Conversion: the 52 blendshapes map by name onto ``arkit58``'s (the orders coincide), HeadPitch /
HeadYaw / HeadRoll become arkit58's rotation (pitch, yaw, roll), the release's (zero) eye angles are
dropped and head translation, absent, is zero. The 25 fps sequences are **resampled to our 30 fps**
on load (:func:`realm.motion.resample_motion`); ``clip.meta["conversions"]`` and ``realm data
inspect`` say so. Pairing, clip ids, identities and the ``val`` hold-out are DualTalk's
(:mod:`realm.data.dualtalk`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from realm.data.clip import Clip
from realm.data.dualtalk import FPS, PEOPLE, RELEASE_SPLITS, SOURCE_FPS, VAL_PERCENT, our_split, video_of
from realm.data.peer import dyad_clip, load_npy, read_jsonl, wanted_splits
from realm.errors import RealmInputError
from realm.motion import ARKIT_BLENDSHAPES, SPECS, resample_motion

log = logging.getLogger(__name__)

#: The 61 channels of the release's .npy (flame2arkit.py's MOTION61_ORDER): Live Link names.
MOTION61: tuple[str, ...] = (
    *(n[0].upper() + n[1:] for n in ARKIT_BLENDSHAPES),  # 51 blendshapes, then TongueOut
    "HeadYaw", "HeadPitch", "HeadRoll",
    "LeftEyeYaw", "LeftEyePitch", "LeftEyeRoll", "RightEyeYaw", "RightEyePitch", "RightEyeRoll",
)  # fmt: skip
ARKIT_DIRS = ("ARKit_npy", "ARKit", ".")
AUDIO_DIRS = ("DualTalk_Dataset", ".")
CONVERTED = (
    f"ARKit Live Link 61 channels at {SOURCE_FPS:g} fps resampled to {FPS:g} fps (linear interpolation); "
    "HeadPitch/HeadYaw/HeadRoll -> rotation, eye angles dropped"
)


def is_dualtalk_arkit(root: Path) -> bool:
    return any((root / "metadata" / f"{s}.jsonl").exists() for s in RELEASE_SPLITS)


def load_dualtalk_arkit(
    root: str | Path, splits: str | Iterable[str] | None = None, val_percent: float = VAL_PERCENT
) -> list[Clip]:
    """Two clips per conversation (each person as the listener) from ``metadata/{split}.jsonl``."""
    return list(iter_dualtalk_arkit(root, splits, val_percent))


def iter_dualtalk_arkit(
    root: str | Path, splits: str | Iterable[str] | None = None, val_percent: float = VAL_PERCENT
) -> Iterator[Clip]:
    """:func:`load_dualtalk_arkit`'s clips one conversation at a time (bounded memory: ``realm data store``)."""
    root = Path(root)
    if not root.is_dir():
        raise RealmInputError(root, "DualTalk ARKit data directory not found")
    if not is_dualtalk_arkit(root):
        raise RealmInputError(
            root, "no metadata/train.jsonl, test.jsonl or ood.jsonl (DualTalk_Dataset_ARKit layout)"
        )
    wanted = wanted_splits(splits)
    audio_root = next((root / d for d in AUDIO_DIRS[:-1] if (root / d).is_dir()), None)
    if audio_root is None:
        log.warning(
            "%s: no DualTalk_Dataset/ folder: speaker audio missing, models needing waveforms cannot run",
            root,
        )
    n_clips = skipped = 0
    for split in RELEASE_SPLITS:
        index = root / "metadata" / f"{split}.jsonl"
        if not index.exists() or not ({split, "val"} & wanted if split == "train" else {split} & wanted):
            continue
        for line, rec in enumerate(read_jsonl(index), start=1):
            name = rec.get("name")
            if not isinstance(name, str) or not name:
                raise RealmInputError(index, f"line {line}: no 'name'")
            ours = our_split(split, name, val_percent)
            if ours not in wanted:
                continue
            if any(not rec.get(f"{who}_arkit") for who in PEOPLE):
                skipped += 1  # the converter leaves null where a person's FLAME file was missing
                continue
            for clip in _conversation(root, index, line, rec, ours, audio_root is not None):
                n_clips += 1
                yield clip
    if skipped:
        log.warning(
            "%s: %d conversation(s) without ARKit files for both people (null speaker*_arkit): skipped",
            root,
            skipped,
        )
    log.info("%s: %d clips; %s", root, n_clips, CONVERTED)
    log.warning("DualTalk ARKit: no head translation (zeros) and no word times: mmlm and lm_listener need ASR; "
                "robot and avatar export run directly on arkit58")  # fmt: skip


def _conversation(root: Path, index: Path, line: int, rec: dict, split: str, audio: bool) -> list[Clip]:
    name = rec["name"]
    motion, wav = {}, {}
    for who in PEOPLE:
        path = _resolve(
            root, ARKIT_DIRS, rec[f"{who}_arkit"], index, line, "ARKit_npy.zip unpacked beside metadata/"
        )
        x = load_npy(path)
        frames = rec.get(f"{who}_frames")
        if x.ndim != 2 or x.shape[1] != len(MOTION61):
            raise RealmInputError(
                path, f"wrong channel count: shape {x.shape}, expected (frames, 61) Live Link ARKit"
            )
        if isinstance(frames, int) and frames != len(x):
            raise RealmInputError(
                path, f"{len(x)} frames but {index.name} line {line} says {who}_frames = {frames}"
            )
        motion[who] = resample_motion(arkit58_of(x, path), SOURCE_FPS, FPS)
        rel = rec.get(f"{who}_audio")
        wav[who] = (
            _resolve(root, AUDIO_DIRS, rel, index, line, "the DualTalk_Dataset release")
            if audio and rel
            else None
        )
    missing = [
        "head translation (not in the release: zeros)",
        "word times (text only): language models need ASR",
    ]
    if not audio:
        missing.append("speaker audio (DualTalk_Dataset/ not found)")
    person = {who: {"motion": motion[who], "wav": wav[who], "id": f"{video_of(name)}_{who}"} for who in PEOPLE}
    return [dyad_clip(person[lis], person[spk], clip_id=f"{name}_{lis}", split=split, spec="arkit58", fps=FPS,
                      source=f"{index} line {line}",
                      meta={"conversions": [CONVERTED], "missing": list(missing), "speaker_text": rec.get(f"{spk}_text"),
                            "head_correction": rec.get(f"{lis}_head_correction")})
            for lis, spk in (PEOPLE, PEOPLE[::-1])]  # fmt: skip


def arkit58_of(x: np.ndarray, source: str | Path) -> np.ndarray:
    """(T, 61) Live Link ARKit -> (T, 58) arkit58: 52 blendshapes by name, head (pitch, yaw, roll), no translation."""
    col = {n: i for i, n in enumerate(MOTION61)}
    out = np.zeros((len(x), SPECS["arkit58"].dim), np.float32)
    out[:, :52] = x[:, [col[n[0].upper() + n[1:]] for n in ARKIT_BLENDSHAPES]]
    out[:, 52:55] = x[:, [col["HeadPitch"], col["HeadYaw"], col["HeadRoll"]]]
    return SPECS["arkit58"].validate(out, source)


def _resolve(root: Path, dirs: tuple[str, ...], rel, index: Path, line: int, hint: str) -> Path:
    """``rel`` (a metadata path) under the first of ``dirs`` that has it; else one line naming what was tried."""
    if not isinstance(rel, str) or Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise RealmInputError(index, f"line {line}: bad relative path {rel!r}")
    tried = [root / d / rel for d in dirs]
    found = next((p for p in tried if p.exists()), None)
    if found is None:
        names = ", ".join(str(p.relative_to(root)) for p in tried)
        raise RealmInputError(index, f"line {line}: names a missing file {rel} (looked for {names}; {hint})")
    return found
