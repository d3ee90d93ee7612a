"""UniLS-Talk loader (Chu et al., "UniLS", 2025; dataset ``xg-chu/UniLSTalkDataset``), reading the
LMDB release that xg-chu/UniLS's ``core/data/sitalk_data.py`` reads (``configs/dataset.yaml``).

Layout (``configs/dataset.yaml``: DATA_PATH and META_PATH; ``core/data/sitalk_data.py``;
``core/libs/utils_lmdb.py``; ``core/libs/flame_model/FLAME.py``)::

    UniLSTalkDataset/                          root (root may also be SeamlessInteractionTalk/ itself)
      SeamlessInteractionTalk/
        seamless_interaction_pairs.json        {"train"|"val"|"test": {pair id: [path0, path1, frames]}}:
                                               the two people of a conversation and its length at 25 fps
        data_lmdb/data.mdb                     LMDB, key = basename(path): an ``np.savez`` archive of
                                                 audio        (S,) float, 16 kHz mono: that person's own track
                                                 motioncode   (T, 112) FLAME (EMICA) at 25 fps: exp 100 |
                                                              global rotation 3 | jaw 3 | eyes 6
                                                 speech_mask  (T,) 1 where that person speaks

Read without the ``lmdb`` package (:class:`realm.data.lmdbfile.LMDBFile`) and without unpickling
(``np.load(allow_pickle=False)``; UniLS's own reader passes ``allow_pickle=True``: a record that needs
it is refused). **Guessed**: the eye block's width (the code reads columns up to 111, we read 0:106
only) and that ``speech_mask`` is per motion frame; a JSON name other than
``seamless_interaction_pairs.json`` is accepted when it is the only ``*.json`` beside ``data_lmdb/``.

Every pair gives two clips, each person as the listener (clip id ``{pair id}_p{0|1}``). Motion comes
out in ``flame56`` (exp 0:50 | rotation 100:103 | jaw 103:106; expression components 50-99 and the
eye pose are dropped), trimmed to the pair's length, **resampled from 25 to 30 fps**. The audio
tracks are written once as 16 kHz wav files to ``audio_dir`` (default
``$REALM_CACHE/unils_audio/<root name>-<hash>``, the hash over the root's path and data.mdb's size
and modification time, so a changed LMDB gets fresh files), since every model reads audio from a file:
``audio_path`` is the other person's track, ``clip.meta["listener_audio"]`` the listener's own.
``speech_mask`` becomes ``clip.meta["speaker_vad"]`` / ``["listener_vad"]`` (seconds). The release
has no transcripts (``words`` None). Ids: the Seamless participant part of a key (``P0947``) when
the key is a Seamless file id, else the key.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from realm.audio import cache_dir
from realm.data.clip import SPLITS, Clip
from realm.data.lmdbfile import LMDBFile
from realm.data.peer import PICKLED, dyad_clip, mask_intervals, read_json, wanted_splits
from realm.errors import RealmInputError
from realm.io import atomic_path
from realm.motion import SPECS, resample_motion

log = logging.getLogger(__name__)

FPS = 30.0
SOURCE_FPS = 25.0  # configs/dataset.yaml MOTION_FPS
SAMPLE_RATE = 16000  # configs/dataset.yaml AUDIO_SAMPLE_RATE
META_NAME = "seamless_interaction_pairs.json"
EXP, ROT, JAW = slice(0, 50), slice(100, 103), slice(103, 106)
PARTICIPANT = re.compile(r"_P(\w+)$")
CONVERTED = (f"FLAME motioncode at {SOURCE_FPS:g} fps -> flame56 (exp 0:50, global rotation, jaw; exp 50:100 and "
             f"eyes dropped), resampled to {FPS:g} fps (linear interpolation)")  # fmt: skip


def find_root(root: Path) -> Path | None:
    """The folder holding ``data_lmdb/``: ``root`` or one folder below it (``SeamlessInteractionTalk/``)."""
    for cand in (root, *sorted(p for p in root.iterdir() if p.is_dir())):
        if (cand / "data_lmdb" / "data.mdb").exists():
            return cand
    return None


def is_unils(root: Path) -> bool:
    return root.is_dir() and find_root(root) is not None


def default_audio_dir(base: Path) -> Path:
    """``$REALM_CACHE/unils_audio/<base name>-<digest>``, beside the feature cache.

    The digest covers ``base``'s resolved path and ``data_lmdb/data.mdb``'s size and modification
    time, so a changed or replaced LMDB at the same path gets a fresh folder instead of the wav files
    cut from the old one (which :func:`_write_wav` would reuse whenever their lengths match).
    """
    try:
        st = (base / "data_lmdb" / "data.mdb").stat()
        stamp = f"{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        stamp = "missing"
    digest = hashlib.sha1(f"{base.resolve()}|{stamp}".encode()).hexdigest()[:10]
    return cache_dir().parent / "unils_audio" / f"{base.name}-{digest}"


def load_unils(
    root: str | Path, splits: str | Iterable[str] | None = None, audio_dir: str | Path | None = None
) -> list[Clip]:
    """Two clips per pair (each person as the listener) of the wanted splits."""
    return list(iter_unils(root, splits, audio_dir))


def iter_unils(
    root: str | Path, splits: str | Iterable[str] | None = None, audio_dir: str | Path | None = None
) -> Iterator[Clip]:
    """:func:`load_unils`'s clips one pair at a time (bounded memory: ``realm data store``)."""
    root = Path(root)
    if not root.is_dir():
        raise RealmInputError(root, "UniLS-Talk data directory not found")
    wanted = wanted_splits(splits)
    base = find_root(root)
    if base is None:
        raise RealmInputError(
            root,
            "no data_lmdb/data.mdb here or one folder below (UniLS-Talk layout: SeamlessInteractionTalk/data_lmdb)",
        )
    index = _index(base)
    pairs = read_json(index)
    if not isinstance(pairs, dict):
        raise RealmInputError(
            index, f"expected {{split: {{pair id: [path0, path1, frames]}}}}, got {type(pairs).__name__}"
        )
    unknown = sorted(set(pairs) - set(SPLITS))
    if unknown:
        log.warning("%s: split(s) %s are not ours %s: skipped", index, unknown, SPLITS)
    audio_dir = Path(audio_dir) if audio_dir is not None else default_audio_dir(base)
    n_clips = 0
    with LMDBFile(base / "data_lmdb") as db:
        for split in (s for s in SPLITS if s in pairs and s in wanted):
            entries = pairs[split]
            if not isinstance(entries, dict):
                raise RealmInputError(index, f"split {split!r}: expected {{pair id: [path0, path1, frames]}}")
            for pair_id, entry in entries.items():
                for clip in _pair(db, index, split, str(pair_id), entry, audio_dir):
                    n_clips += 1
                    yield clip
    log.info("UniLS-Talk: %d clips; audio tracks in %s; %s", n_clips, audio_dir, CONVERTED)
    log.warning("UniLS-Talk: no transcripts: mmlm and lm_listener need ASR (realm asr); audio models and the "
                "speaker-motion rows can run")  # fmt: skip


def _index(base: Path) -> Path:
    if (base / META_NAME).exists():
        return base / META_NAME
    found = sorted(base.glob("*.json"))
    if len(found) == 1:
        return found[0]
    raise RealmInputError(base / META_NAME, "file not found (the pair list of UniLS-Talk, beside data_lmdb/)")


def _pair(db: LMDBFile, index: Path, split: str, pair_id: str, entry, audio_dir: Path) -> list[Clip]:
    where = f"{index.name} {split}/{pair_id}"
    ok = isinstance(entry, (list, tuple)) and len(entry) >= 3 and all(isinstance(p, str) for p in entry[:2])
    if not ok or isinstance(entry[2], bool) or not isinstance(entry[2], (int, float)) or entry[2] < 1:
        raise RealmInputError(index, f"{split}/{pair_id}: expected [path0, path1, frames], got {entry!r}")
    frames = int(entry[2])
    people = []
    for path in entry[:2]:
        key = os.path.basename(path)
        rec = _record(db, key, where)
        people.append(_person(db, key, rec, frames, audio_dir))
    meta = {"conversions": [CONVERTED], "missing": ["transcripts (none in the release): language models need ASR"]}
    return [dyad_clip(people[x], people[1 - x], clip_id=f"{pair_id}_p{x}", split=split, spec="flame56", fps=FPS,
                      source=f"{db.path} [{people[x]['key']}]",
                      meta={**meta, "speaker_vad": people[1 - x]["vad"], "listener_vad": people[x]["vad"]})
            for x in (0, 1)]  # fmt: skip


def _record(db: LMDBFile, key: str, where: str) -> dict[str, np.ndarray]:
    raw = db.get(key)
    src = f"{db.path} [{key}]"
    if raw is None:
        raise RealmInputError(db.path, f"no record {key!r} (named by {where})")
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            missing = [k for k in ("audio", "motioncode") if k not in z.files]
            if missing:
                raise RealmInputError(src, f"no {missing[0]!r} array in the record (has {sorted(z.files)})")
            return {k: z[k] for k in z.files if k in ("audio", "motioncode", "speech_mask")}
    except RealmInputError:
        raise
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise RealmInputError(src, PICKLED) from None
        raise RealmInputError(src, f"unreadable record (expected an np.savez archive: {e})") from None
    except Exception as e:
        raise RealmInputError(
            src, f"unreadable record (expected an np.savez archive: {type(e).__name__}: {e})"
        ) from None


def _person(db: LMDBFile, key: str, rec: dict, frames: int, audio_dir: Path) -> dict:
    src = f"{db.path} [{key}]"
    code = np.asarray(rec["motioncode"])
    if code.ndim != 2 or code.shape[1] < JAW.stop:
        raise RealmInputError(
            src,
            f"wrong coefficient width: 'motioncode' has shape {code.shape}, expected (frames, 112) exp 100 | rot 3 | jaw 3 | eyes",
        )
    if len(code) < frames:
        raise RealmInputError(src, f"'motioncode' has {len(code)} frames, the pair list says {frames}")
    code = code[:frames]
    x = SPECS["flame56"].validate(
        np.concatenate([code[:, EXP], code[:, ROT], code[:, JAW]], 1).astype(np.float32), src
    )
    audio = np.asarray(rec["audio"], dtype=np.float32).reshape(-1)
    if not np.all(np.isfinite(audio)):
        raise RealmInputError(src, "NaN/inf in 'audio'")
    n = int(
        round(frames * SAMPLE_RATE / SOURCE_FPS)
    )  # as sitalk_data.py: padded with zeros or cut to the pair's length
    audio = np.pad(audio[:n], (0, max(0, n - len(audio))))
    vad = None
    if "speech_mask" in rec:
        mask = np.asarray(rec["speech_mask"]).reshape(-1)
        if len(mask) < frames:
            raise RealmInputError(src, f"'speech_mask' has {len(mask)} frames, the pair list says {frames}")
        vad = mask_intervals(mask[:frames] > 0.5, SOURCE_FPS)
    m = PARTICIPANT.search(key)
    return {
        "key": key,
        "id": m.group(1) if m else key,
        "motion": resample_motion(x, SOURCE_FPS, FPS),
        "wav": _write_wav(audio_dir / f"{key}.wav", audio),
        "vad": vad,
    }


def _write_wav(path: Path, audio: np.ndarray) -> Path:
    """``audio`` as a 16 kHz wav at ``path``, unless a file of that length is there already."""
    import soundfile

    if path.exists():
        try:
            if soundfile.info(str(path)).frames == len(audio):
                return path
        except Exception:  # a broken earlier write: write it again
            pass
    subtype = "PCM_16" if float(np.abs(audio).max(initial=0.0)) <= 1.0 else "FLOAT"
    with atomic_path(path) as tmp:
        soundfile.write(str(tmp), audio, SAMPLE_RATE, subtype=subtype, format="WAV")
    return path
