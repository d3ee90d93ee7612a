"""The in-memory clip every loader produces, and our on-disk dataset layout.

Layout of a dataset directory (documented in ``docs/data.md``)::

    DIR/
      clips.csv          clip_id, split, speaker_id, listener_id, emotion, duration, audio, motion, words, events
      meta.json          who made it (generator config and seed, or the source dataset), spec, fps
      stats.npz          z-score statistics of the listener motion over the train split
      audio/<id>.wav     speaker audio (16 kHz mono for synthetic data; any format is accepted)
      motion/<id>.npz    listener (K, T, D) or (T, D), speaker (T, Ds), spec, speaker_spec, fps
      words/<id>.json    [{"word", "start", "end"}, ...] seconds, speaker's words
      events/<id>.json   {"triggers": [...], "reactions": [...]} (synthetic data only)

The audio/motion/words/events columns hold paths relative to DIR (empty when absent).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from realm.errors import RealmInputError
from realm.io import save_npz, write_json
from realm.motion import NormStats, get_spec

SPLITS = ("train", "val", "test", "ood")
CSV_COLUMNS = (
    "clip_id", "split", "speaker_id", "listener_id", "emotion", "duration",
    "audio", "motion", "words", "events",
)  # fmt: skip

#: Motion and audio may disagree by this many frames (rounding of video vs audio lengths);
#: more than that is an error, less is trimmed to the shorter of the two.
LENGTH_TOLERANCE_FRAMES = 2


@dataclass
class Word:
    word: str
    start: float  # seconds
    end: float

    def to_dict(self) -> dict:
        return {"word": self.word, "start": round(self.start, 4), "end": round(self.end, 4)}


@dataclass
class Clip:
    """One speaker-listener segment.

    ``listener`` is (T, D) in ``spec``; ``listener_samples`` (K, T, D) holds further
    realisations of the same listener for the same speaker (K >= 1, the first equals
    ``listener``) where the data has them. ``speaker`` is the speaker's motion (T, Ds) in
    ``speaker_spec`` when known. Audio is referenced by path (``audio_path``) and loaded on
    demand; ``features`` holds features that came precomputed with the dataset (name -> (T, F)).
    ``meta`` holds a peer loader's notes (conversions applied, what is missing; ``realm data inspect``).
    """

    clip_id: str
    split: str
    listener: np.ndarray
    spec: str
    fps: float = 30.0
    speaker: np.ndarray | None = None
    speaker_spec: str | None = None
    audio_path: Path | None = None
    speaker_id: str = ""
    listener_id: str = ""
    emotion: str = ""
    words: list[Word] | None = None
    events: dict | None = None
    listener_samples: np.ndarray | None = None
    features: dict[str, np.ndarray] = field(default_factory=dict)
    source: str = ""  # where it was read from, for error messages
    #: what a peer loader says about the clip (not written to our layout): ``conversions`` (list of
    #: str: e.g. a frame-rate change), ``missing`` (list of str: what the source lacks), and extra
    #: per-clip data such as ``listener_audio`` (the listener's own track) or ``speaker_vad``.
    meta: dict = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        return int(self.listener.shape[0])

    @property
    def duration(self) -> float:
        return self.n_frames / self.fps

    def samples(self) -> np.ndarray:
        """All listener realisations (K, T, D); K = 1 when the data has only one."""
        if self.listener_samples is not None:
            return self.listener_samples
        return self.listener[None]


# ---------------------------------------------------------------- reading and writing our layout


def _rel(path: Path | None, root: Path) -> str:
    if path is None:
        return ""
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def write_clip(root: Path, clip: Clip, audio_ext: str = ".wav") -> dict:
    """Write one clip's motion, words and events below ``root``; return its clips.csv row.

    The audio file is expected at ``clip.audio_path`` already (the caller wrote or copied it).
    """
    root = Path(root)
    motion_rel = f"motion/{clip.clip_id}.npz"
    arrays = {
        "listener": (clip.listener_samples if clip.listener_samples is not None else clip.listener).astype(
            np.float32
        ),
        "spec": np.array(clip.spec),
        "fps": np.array(clip.fps),
    }
    if clip.speaker is not None:
        arrays["speaker"] = clip.speaker.astype(np.float32)
        arrays["speaker_spec"] = np.array(clip.speaker_spec or clip.spec)
    save_npz(root / motion_rel, **arrays)
    words_rel = events_rel = ""
    if clip.words is not None:
        words_rel = f"words/{clip.clip_id}.json"
        write_json(root / words_rel, [w.to_dict() for w in clip.words])
    if clip.events is not None:
        events_rel = f"events/{clip.clip_id}.json"
        write_json(root / events_rel, clip.events)
    return {
        "clip_id": clip.clip_id,
        "split": clip.split,
        "speaker_id": clip.speaker_id,
        "listener_id": clip.listener_id,
        "emotion": clip.emotion,
        "duration": f"{clip.duration:.3f}",
        "audio": _rel(clip.audio_path, root),
        "motion": motion_rel,
        "words": words_rel,
        "events": events_rel,
    }


def write_index(root: Path, rows: list[dict], meta: dict | None = None) -> None:
    root = Path(root)
    from realm.io import atomic_path

    with atomic_path(root / "clips.csv") as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            w.writeheader()
            for r in rows:
                w.writerow({k: r.get(k, "") for k in CSV_COLUMNS})
    if meta is not None:
        write_json(root / "meta.json", meta)


def read_index(root: str | Path) -> list[dict]:
    root = Path(root)
    index = root / "clips.csv"
    if not root.is_dir():
        raise RealmInputError(root, "dataset directory not found")
    if not index.exists():
        raise RealmInputError(index, "missing clips.csv (not a realm dataset directory; see docs/data.md)")
    with open(index, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"clip_id", "split", "motion"} - set(reader.fieldnames or [])
        if missing:
            raise RealmInputError(index, f"missing column(s) {sorted(missing)}")
        rows = list(reader)
    for i, r in enumerate(rows, start=2):
        if r["split"] not in SPLITS:
            raise RealmInputError(index, f"line {i}: unknown split {r['split']!r} (expected one of {SPLITS})")
        for col in ("motion", "audio", "words", "events"):
            if r.get(col) and not (root / r[col]).exists():
                raise RealmInputError(index, f"line {i}: clip {r['clip_id']!r} names a missing file {r[col]}")
    return rows


def load_motion_npz(path: Path) -> dict:
    try:
        with np.load(path, allow_pickle=False) as d:
            return {k: d[k] for k in d.files}
    except FileNotFoundError:
        raise RealmInputError(path, "motion file not found") from None
    except Exception as e:  # zip/pickle/format errors
        raise RealmInputError(path, f"unreadable motion file ({type(e).__name__}: {e})") from None


def read_words(path: Path) -> list[Word]:
    try:
        items = json.loads(Path(path).read_text())
        return [Word(str(w["word"]), float(w["start"]), float(w["end"])) for w in items]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RealmInputError(path, f"unreadable words file ({e})") from None


def load_clip(root: Path, row: dict) -> Clip:
    root = Path(root)
    mpath = root / row["motion"]
    m = load_motion_npz(mpath)
    if "listener" not in m:
        raise RealmInputError(mpath, "no 'listener' array")
    spec = get_spec(str(m.get("spec", "arkit58")))
    lis = np.asarray(m["listener"], dtype=np.float32)
    samples = lis if lis.ndim == 3 else None
    first = lis[0] if lis.ndim == 3 else lis
    spec.validate(first, mpath)
    if samples is not None and not np.all(np.isfinite(samples)):
        raise RealmInputError(mpath, "NaN/inf in listener realisations")
    speaker = speaker_spec = None
    if "speaker" in m:
        speaker_spec = str(m.get("speaker_spec", spec.name))
        speaker = get_spec(speaker_spec).validate(m["speaker"], mpath)
    clip = Clip(
        clip_id=row["clip_id"],
        split=row["split"],
        listener=first,
        spec=spec.name,
        fps=float(m.get("fps", 30.0)),
        speaker=speaker,
        speaker_spec=speaker_spec,
        audio_path=(root / row["audio"]) if row.get("audio") else None,
        speaker_id=row.get("speaker_id", ""),
        listener_id=row.get("listener_id", ""),
        emotion=row.get("emotion", ""),
        words=read_words(root / row["words"]) if row.get("words") else None,
        events=json.loads((root / row["events"]).read_text()) if row.get("events") else None,
        listener_samples=samples,
        source=str(mpath),
    )
    if speaker is not None and abs(speaker.shape[0] - clip.n_frames) > LENGTH_TOLERANCE_FRAMES:
        raise RealmInputError(
            mpath,
            f"speaker ({speaker.shape[0]}) and listener ({clip.n_frames}) motion lengths differ by more "
            f"than {LENGTH_TOLERANCE_FRAMES} frames",
        )
    return clip


def load_dataset(root: str | Path, splits: str | tuple[str, ...] | None = None) -> list[Clip]:
    """Read every clip of a dataset in our layout (optionally only the given splits)."""
    root = Path(root)
    if isinstance(splits, str):
        splits = (splits,)
    rows = read_index(root)
    return [load_clip(root, r) for r in rows if splits is None or r["split"] in splits]


def load_stats(root: str | Path) -> NormStats:
    return NormStats.load(Path(root) / "stats.npz")


def read_meta(root: str | Path) -> dict:
    p = Path(root) / "meta.json"
    return json.loads(p.read_text()) if p.exists() else {}
