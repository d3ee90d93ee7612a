"""LM-Listener loader, reading the segment files released with sanjayss34/lm-listener (Ng et al., ICCV 2023).

Layout (README "Data Preparation"; read by ``dataset/dataset_TM_train.py``,
``dataset/dataset_VQ.py``, ``evaluate_listener.py``, ``baselines.py``, ``visualize_listener.py``)::

    dataset/{trevor,conan,stephen,trevorconanstephen}/     root = one of these folders
      segments_train.pth, segments_val.pth, segments_test.pth
                          torch.save'd list of dicts, one per segment:
          fname               source video path, e.g. "trevor_videos/.../025YouTube/025YouTube.mp4"
          split_start_frame   first frame of the segment in that video (30 fps)
          split_end_frame     one past its last frame
          p0_exp (T, 50), p0_pose (T, 6), p0_shape (T, 100)   EMOCA codes of p0, the listener
          p1_exp (T, 50), p1_pose (T, 6), p1_shape           the speaker
          before_words        [{"text": str, "end": seconds in video time}, ...] words before the segment
          during_words        the same, for words said during the segment
      mean.npy, std.npy   (56,) z-score statistics of exp | pose (see :func:`load_lmlistener_stats`)

Listener (p0) and speaker (p1) come out in ``flame56`` = exp 50 | pose 6 (global rotation 3,
jaw 3). Clip ids are ``{video stem}_{split_start_frame}``; ``speaker_id`` is the video stem (each
video has its own guest) and ``listener_id`` the folder name (the host, e.g. ``trevor``).

Words: ``clip.words`` holds ``before_words`` and ``during_words`` in time order, with times in
seconds from the clip start, so words said before the clip have negative times (LM-Listener reads
up to 3 s of them). The release gives only word *end* times: a word's ``start`` is set to the end
of the word before it (its own end for the first word), so ``start`` is an upper bound on how
early the word can begin, not a measured onset. The audio is not public: ``audio_path`` is None.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from realm.data.clip import SPLITS, Clip, Word
from realm.data.peer import common_length, load_torch, to_numpy, wanted_splits
from realm.errors import RealmInputError
from realm.motion import SPECS, NormStats

log = logging.getLogger(__name__)

FPS = 30.0
LM_SPLITS = ("train", "val", "test")
DIMS = {"exp": 50, "pose": 6}


def load_lmlistener(root: str | Path, splits: str | Iterable[str] | None = None) -> list[Clip]:
    """Read ``segments_{split}.pth`` below ``root`` (all present splits when ``splits`` is None)."""
    root = Path(root)
    if not root.is_dir():
        raise RealmInputError(root, "LM-Listener data directory not found")
    if splits is None:
        paths = {s: root / f"segments_{s}.pth" for s in LM_SPLITS if (root / f"segments_{s}.pth").exists()}
        if not paths:
            raise RealmInputError(root, "no segments_train.pth, segments_val.pth or segments_test.pth")
    else:
        wanted = wanted_splits(splits)
        paths = {s: root / f"segments_{s}.pth" for s in SPLITS if s in wanted}
    if not (root / "mean.npy").exists():
        log.info("%s: no mean.npy/std.npy beside the segments (normalisation stats must be fitted)", root)
    log.warning(
        "LM-Listener audio is not public: models needing waveforms cannot run; transcript words are available"
    )
    clips = []
    for split, path in paths.items():
        segments = load_torch(path)
        if not isinstance(segments, (list, tuple)):
            raise RealmInputError(path, f"expected a list of segment dicts, got {type(segments).__name__}")
        clips += [_segment_clip(seg, i, split, path, root.name) for i, seg in enumerate(segments)]
    return clips


def load_lmlistener_stats(root: str | Path) -> NormStats:
    """``mean.npy``/``std.npy`` (56,) of an LM-Listener folder as :class:`NormStats` (flame56)."""
    root = Path(root)
    arrays = []
    for name in ("mean.npy", "std.npy"):
        try:
            a = np.load(root / name, allow_pickle=False).astype(np.float32).reshape(-1)
        except FileNotFoundError:
            raise RealmInputError(root / name, "file not found") from None
        except Exception as e:
            raise RealmInputError(root / name, f"unreadable .npy file ({type(e).__name__}: {e})") from None
        if a.shape != (56,) or not np.all(np.isfinite(a)):
            raise RealmInputError(
                root / name, f"expected 56 finite values (exp 50 | pose 6), got shape {a.shape}"
            )
        arrays.append(a)
    return NormStats(arrays[0], arrays[1], "flame56")


def _segment_clip(seg, i: int, split: str, path: Path, listener_id: str) -> Clip:
    where = f"{path} segment {i}"
    if not isinstance(seg, dict):
        raise RealmInputError(where, f"expected a dict, got {type(seg).__name__}")
    missing = [
        k for k in ("fname", "split_start_frame", "p0_exp", "p0_pose", "p1_exp", "p1_pose") if k not in seg
    ]
    if missing:
        raise RealmInputError(where, f"missing key(s) {missing}")
    listener, speaker = _person(seg, "p0", where), _person(seg, "p1", where)
    n = common_length(where, listener=len(listener), speaker=len(speaker))
    try:
        start = int(seg["split_start_frame"])
    except (TypeError, ValueError):
        raise RealmInputError(
            where, f"split_start_frame is not a frame number: {seg['split_start_frame']!r}"
        ) from None
    stem = Path(str(seg["fname"])).stem
    return Clip(
        clip_id=f"{stem}_{start}",
        split=split,
        listener=listener[:n],
        spec="flame56",
        fps=FPS,
        speaker=speaker[:n],
        speaker_spec="flame56",
        speaker_id=stem,
        listener_id=listener_id,
        words=_words(seg, start / FPS, where),
        source=str(path),
    )


def _person(seg: dict, who: str, where: str) -> np.ndarray:
    """(T, 56) exp | pose of ``who`` ("p0" or "p1")."""
    parts = []
    for key, width in DIMS.items():
        a = to_numpy(seg[f"{who}_{key}"], where)
        if a.ndim != 2 or a.shape[1] != width:
            raise RealmInputError(
                where, f"wrong coefficient width: {who}_{key} has shape {a.shape}, expected (frames, {width})"
            )
        parts.append(a)
    if len(parts[0]) != len(parts[1]):
        raise RealmInputError(where, f"{who}_exp has {len(parts[0])} frames but {who}_pose {len(parts[1])}")
    return SPECS["flame56"].validate(np.concatenate(parts, axis=1), f"{where} ({who})")


def _words(seg: dict, offset: float, where: str) -> list[Word] | None:
    if "before_words" not in seg and "during_words" not in seg:
        return None
    items = list(seg.get("before_words") or []) + list(seg.get("during_words") or [])
    try:
        timed = sorted(
            ((float(w["end"]) - offset, str(w["text"]).strip()) for w in items), key=lambda t: t[0]
        )
    except (KeyError, TypeError, ValueError) as e:
        raise RealmInputError(where, f"words must be dicts with 'text' and 'end' (seconds) ({e!r})") from None
    words, prev_end = [], None
    for end, text in timed:
        words.append(Word(text, end if prev_end is None else prev_end, end))
        prev_end = end
    return words
