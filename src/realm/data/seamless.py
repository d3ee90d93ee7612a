"""Seamless Interaction loader (Meta FAIR, 2025), reading what facebookresearch/seamless_interaction's
download tools write (``SeamlessInteractionFS.download_batch_from_hf`` / ``gather_file_id_data_from_s3``).

Layout (README "S3 Download" and "Deep Dive"; ``src/seamless_interaction/fs.py`` and ``constants.py``)::

    seamless_interaction/                      root (or a label folder, or one split folder below it)
      improvised/ | naturalistic/
        train/ | dev/ | test/
          {batch:04d}/{archive:04d}/           (any depth: files are found recursively)
            V{vendor}_S{session}_I{interaction}_P{participant}.wav    the participant's own denoised track (48 kHz)
            V..._P....npz     "movement:<feature>" Imitator features at 30 Hz: expression (N, 128),
                              FAUValue (N, 24), gaze_encodings (N, 2), head_encodings (N, 3),
                              alignment_head_rotation (N, 3), is_valid (N, 1) (and emotion, token,
                              latent, SMPL-H and keypoint arrays, not read)
            V..._P....json    {"id", "metadata:transcript": [{"start", "end", "transcript",
                              "words": [{"word", "start", "end", "score"}]}], "metadata:vad":
                              [{"start", "end"}] (seconds) [, "annotations:..."]}
            V..._P....mp4     (not read)

**Pairing.** The file id's ``V_S_I`` part is the interaction: its two participants are the dyad. Each
interaction gives two clips, each participant as the listener in turn: ``listener`` is that
participant's Imitator features, ``speaker`` the other's, ``audio_path`` the other's track (the
listener's own is ``clip.meta["listener_audio"]``). Clip id = the listener's file id; ids are the
participant parts (``P0947``). An interaction with one participant, or more than two, is skipped
with a logged line.

**Motion spec.** The Imitator features are neither FLAME nor ARKit: they come out in
``imitator160`` (:data:`realm.motion.IMITATOR_FIELDS`: blocks named by their fields). Fit a map to
ARKit on paired frames with ``realm embody fit-map`` to drive a robot or an avatar. Frames where
``movement:is_valid`` is 0 hold zeros (the release's failed blocks); they stay in the clip, their
mask is ``clip.meta["listener_valid"]`` and the fraction is logged. A participant file with no
``movement:*`` arrays (in the release, only some vendors have them) cannot give clips: its
interaction is skipped and counted in the log; so are empty (0-frame) bundles.

**Words.** The speaker's ``metadata:transcript`` words with their times. A word whose times are null
is placed between its timed neighbours (within its segment); a segment with text but no words list
has its words spread evenly over the parts of the segment that the VAD marks as speech (else the
whole segment). The VAD intervals are kept as ``clip.meta["speaker_vad"]`` / ``["listener_vad"]``.

**Splits.** train, dev (-> our ``val``), test; the label is ``clip.meta["label"]``. Both are read
from ``root``'s own name and the folders below it, never from folders above ``root``.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from realm.data.clip import Clip, Word
from realm.data.peer import dyad_clip, load_npz, read_json, wanted_splits
from realm.errors import RealmInputError
from realm.motion import IMITATOR_FIELDS, SPECS

log = logging.getLogger(__name__)

FPS = 30.0
SPEC = "imitator160"
FILE_ID = re.compile(r"^V(\d+)_S(\d+)_I(\d+)_P(\w+)$")
SPLIT_OF = {"train": "train", "dev": "val", "test": "test"}
LABELS = ("improvised", "naturalistic")
VALID_KEY = "movement:is_valid"


def find_files(root: Path) -> list[Path]:
    """Every participant ``.npz`` (named by a file id) below ``root``."""
    return sorted(p for p in root.rglob("V*_S*_I*_P*.npz") if FILE_ID.match(p.stem))


def is_seamless(root: Path) -> bool:
    return any(FILE_ID.match(p.stem) for p in root.rglob("V*_S*_I*_P*.npz"))


def load_seamless(root: str | Path, splits: str | Iterable[str] | None = None) -> list[Clip]:
    """Two clips per interaction (each participant as the listener) below ``root``."""
    return list(iter_seamless(root, splits))


def iter_seamless(root: str | Path, splits: str | Iterable[str] | None = None) -> Iterator[Clip]:
    """:func:`load_seamless`'s clips one interaction at a time: memory holds one interaction's two
    participants, whatever the size of the download (``realm data store`` reads 4,000 h this way)."""
    root = Path(root)
    if not root.is_dir():
        raise RealmInputError(root, "Seamless Interaction data directory not found")
    wanted = wanted_splits(splits)
    files = find_files(root)
    if not files:
        raise RealmInputError(
            root,
            "no V<vendor>_S<session>_I<interaction>_P<participant>.npz files (Seamless Interaction download layout)",
        )
    groups: dict[tuple, list[Path]] = defaultdict(list)
    for p in files:
        label, split = _label_split(p, root)
        if SPLIT_OF[split] in wanted:
            groups[(label, split, "_".join(p.stem.split("_")[:3]))].append(p)
    no_movement, unpaired = [], []
    no_audio = n_clips = invalid = total = 0
    for (label, split, interaction), paths in sorted(groups.items()):
        if len(paths) != 2:
            unpaired.append(interaction)
            continue
        people = [_participant(p) for p in paths]
        bad = [str(p.name) for p, d in zip(paths, people, strict=True) if d is None]
        if bad:
            no_movement += bad
            continue
        for x in (0, 1):
            lis, spk = people[x], people[1 - x]
            no_audio += spk["wav"] is None
            clip = _clip(lis, spk, SPLIT_OF[split], label)
            n_clips += 1
            invalid += int((~clip.meta["listener_valid"]).sum())
            total += clip.n_frames
            yield clip
    if unpaired:
        log.warning("Seamless Interaction: %d interaction(s) without exactly two participants skipped (e.g. %s)",
                    len(unpaired), unpaired[0])  # fmt: skip
    if no_movement:
        log.warning("Seamless Interaction: %d participant file(s) without Imitator movement features or frames "
                    "(e.g. %s): their interactions give no clips", len(no_movement), no_movement[0])  # fmt: skip
    if no_audio:
        log.warning("Seamless Interaction: %d clip(s) without the speaker's .wav: models needing waveforms cannot run on them",
                    no_audio)  # fmt: skip
    log.info("Seamless Interaction: %d clips of %s (Imitator features): robot or avatar export needs a map to "
             "arkit58 fitted on paired frames (realm embody fit-map)", n_clips, SPEC)  # fmt: skip
    if invalid:
        log.warning("Seamless Interaction: %.1f %% of listener frames are marked invalid by movement:is_valid (zeros kept)",
                    100 * invalid / max(total, 1))  # fmt: skip


def _label_split(path: Path, root: Path) -> tuple[str, str]:
    """(label, split folder) of a file below ``root``: the deepest split folder among the folders
    between ``root`` and the file and ``root`` itself (``root`` may be a split folder), the label the
    folder above it (for a split-folder ``root``, its parent). Folders above ``root``, and where the
    file's symlinks point, are not looked at: a dataset kept under e.g. ``/data/test/`` keeps its own
    splits."""
    top = root.resolve()
    parts = (top.parent.name, top.name, *path.relative_to(root).parts[:-1])  # [0]: only ever a label
    for i in range(len(parts) - 1, 0, -1):
        if parts[i] in SPLIT_OF:
            label = parts[i - 1] if parts[i - 1] in LABELS else ""
            return label, parts[i]
    raise RealmInputError(
        path,
        f"cannot tell the split: no train|dev|test folder from {root} down to the file (DIR: the download "
        "root, a label folder or a split folder; layout {improvised|naturalistic}/{train|dev|test}/...)",
    )


def _participant(npz: Path) -> dict | None:
    """A participant's motion (T, 160), validity (T,), audio path, transcript and VAD; None when the file
    has no Imitator features (or no frames)."""
    keys = [f"movement:{field}" for _, field, _ in IMITATOR_FIELDS]
    z = load_npz(npz, tuple(keys) + (VALID_KEY,), what="Seamless Interaction .npz", require=False)
    present = [k for k in keys + [VALID_KEY] if k in z]
    if not present:
        return None
    missing = [k for k in keys + [VALID_KEY] if k not in z]
    if missing:
        raise RealmInputError(npz, f"no {missing[0]!r} array (it has other movement:* arrays)")
    parts, n = [], len(z[VALID_KEY])
    if n == 0:
        return None
    for (_, _, size), key in zip(IMITATOR_FIELDS, keys, strict=True):
        a = np.asarray(z[key])
        if a.shape != (n, size):
            raise RealmInputError(npz, f"{key!r} has shape {a.shape}, expected ({n}, {size})")
        parts.append(a.astype(np.float32))
    valid = np.asarray(z[VALID_KEY]).reshape(n, -1)
    if valid.shape[1] != 1:
        raise RealmInputError(npz, f"{VALID_KEY!r} has shape {z[VALID_KEY].shape}, expected ({n}, 1)")
    motion = SPECS[SPEC].validate(np.concatenate(parts, axis=1), npz)
    wav, js = npz.with_suffix(".wav"), npz.with_suffix(".json")
    meta = read_json(js) if js.exists() else None
    if meta is not None and not isinstance(meta, dict):
        raise RealmInputError(js, f"expected a JSON object, got {type(meta).__name__}")
    vad = _vad(meta, js) if meta is not None else None
    return {
        "id": npz.stem,
        "npz": npz,
        "motion": motion,
        "valid": valid[:, 0] > 0.5,
        "wav": wav if wav.exists() else None,
        "json": js if meta is not None else None,
        "vad": vad,
        "words": _words(meta, js, vad or []) if meta is not None else None,
    }


def _clip(lis: dict, spk: dict, split: str, label: str) -> Clip:
    missing = []
    if spk["words"] is None:
        missing.append(f"the speaker's transcript ({spk['id']}.json): language models need ASR")
    ids = {k: FILE_ID.match(p["id"]).group(4) for k, p in (("lis", lis), ("spk", spk))}
    return dyad_clip({**lis, "id": ids["lis"]}, {**spk, "id": ids["spk"]}, clip_id=lis["id"], split=split, spec=SPEC,
                     fps=FPS, source=str(lis["npz"]), words=spk["words"],
                     meta={"label": label, "missing": missing, "listener_valid": lis["valid"], "speaker_vad": spk["vad"],
                           "listener_vad": lis["vad"]})  # fmt: skip


def _vad(meta: dict, path: Path) -> list[list[float]]:
    out = []
    for i, seg in enumerate(meta.get("metadata:vad") or []):
        try:
            out.append([float(seg["start"]), float(seg["end"])])
        except (KeyError, TypeError, ValueError):
            raise RealmInputError(
                path, f"metadata:vad entry {i}: expected {{'start': s, 'end': s}}, got {seg!r}"
            ) from None
    return sorted(out)


def _time(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) else None


def _words(meta: dict, path: Path, vad: list[list[float]]) -> list[Word]:
    """The transcript's words with times (see the module docstring for untimed words)."""
    words: list[Word] = []
    for i, seg in enumerate(meta.get("metadata:transcript") or []):
        if not isinstance(seg, dict):
            raise RealmInputError(
                path, f"metadata:transcript segment {i}: expected an object, got {type(seg).__name__}"
            )
        s0, s1 = _time(seg.get("start")), _time(seg.get("end"))
        items = seg.get("words")
        if items is None:  # text only: spread its words over the segment's speech
            if s0 is None or s1 is None:
                raise RealmInputError(
                    path, f"metadata:transcript segment {i}: no words and no start/end times"
                )
            words += _spread(str(seg.get("transcript", "")).split(), s0, s1, vad)
            continue
        if not isinstance(items, list):
            raise RealmInputError(path, f"metadata:transcript segment {i}: 'words' is not a list")
        try:
            toks = [(str(w["word"]).strip(), _time(w.get("start")), _time(w.get("end"))) for w in items]
        except (KeyError, TypeError):
            raise RealmInputError(
                path, f"metadata:transcript segment {i}: words must be objects with 'word', 'start', 'end'"
            ) from None
        words += _fill_untimed(toks, s0, s1, path, i)
    words = [w for w in words if w.word]
    return sorted(words, key=lambda w: (w.start, w.end))


def _fill_untimed(toks: list, s0: float | None, s1: float | None, path: Path, seg: int) -> list[Word]:
    """Words of one segment; a null time becomes its neighbours' (previous end, next start)."""
    times = [t for _, a, b in toks for t in (a, b) if t is not None]
    lo = s0 if s0 is not None else min(times, default=None)
    hi = s1 if s1 is not None else max(times, default=None)
    if lo is None or hi is None:
        if toks:
            raise RealmInputError(path, f"metadata:transcript segment {seg}: no word or segment has times")
        return []
    out, prev = [], lo
    for k, (w, a, b) in enumerate(toks):
        nxt = next((t for _, a2, b2 in toks[k + 1 :] for t in (a2, b2) if t is not None), hi)
        start = a if a is not None else prev
        end = b if b is not None else max(start, nxt)
        if end < start:
            raise RealmInputError(
                path, f"metadata:transcript segment {seg}: word {w!r} ends ({end}) before it starts ({start})"
            )
        out.append(Word(w, start, end))
        prev = end
    return out


def _spread(tokens: list[str], s0: float, s1: float, vad: list[list[float]]) -> list[Word]:
    """``tokens`` evenly over the speech (VAD) inside [s0, s1], or over [s0, s1] when the VAD has none."""
    spans = [(max(a, s0), min(b, s1)) for a, b in vad if min(b, s1) > max(a, s0)] or [(s0, s1)]
    total = sum(b - a for a, b in spans)
    if not tokens or total <= 0:
        return []
    step, out = total / len(tokens), []

    def at(offset: float) -> float:  # speech time `offset` into the spans -> clock time
        for a, b in spans:
            if offset <= b - a + 1e-9:
                return a + offset
            offset -= b - a
        return spans[-1][1]

    for k, tok in enumerate(tokens):
        out.append(Word(tok, at(k * step), at((k + 1) * step)))
    return out
