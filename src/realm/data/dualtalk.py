"""DualTalk loader (Peng et al., CVPR 2025), reading the FLAME release ``ZiqiaoPeng/DualTalk_Dataset``.

Layout (dataset card, mirrored in the README of OpenFacebot/DualTalk_Dataset_ARKit; read by the
DualTalk code's ``dataset_train.py`` / ``dataset_test.py``, and by that repository's
``script/gen_metadata.py`` for the ``.txt`` files)::

    DualTalk_Dataset/                          root (root may also be the folder holding it, or data/)
      train/ | test/ | ood/
        {name}_speaker1.wav                    person 1's own audio track
        {name}_speaker1.npz                    person 1's FLAME 2020 codes at 25 fps:
                                                 exp (T, 50), pose (T, 6) = neck rotation 3 | jaw 3
                                                 (axis-angle, rad), shape (T, 100) (not read)
        {name}_speaker1.txt                    optional: what person 1 says (text only, no times)
        {name}_speaker2.wav / .npz / .txt      the other person

``name`` is ``{YouTube id}_sub_video_{k}[_{segment}]``. Both people speak and listen in turn, so
every conversation gives two clips: the listener is one person, the "speaker" the other (clip id
``{name}_speaker{X}`` for listener X). Motion comes out in ``flame56`` (exp 50 | rotation 3 =
the neck rotation | jaw 3), **resampled from 25 to 30 fps** (:func:`realm.motion.resample_motion`;
``clip.meta["conversions"]`` says so). ``audio_path`` is the other person's track; the listener's
own is ``clip.meta["listener_audio"]``. The ``.txt`` transcripts carry no times, so ``words`` is
None (``clip.meta["speaker_text"]`` keeps the text; word times need ASR, ``realm.text``).

Identities (our choice): the release has no person ids; ``listener_id`` is
``{YouTube id}_speaker{X}``, assuming a side keeps its number across the sub-videos of one video.

Splits: the release has train, test and ood (unseen people). Our trainers select checkpoints on
``val``, so (our choice) the train conversations of a deterministic ``val_percent`` (default 5 %)
of the YouTube videos (sha1 of the id; :func:`realm.data.peer.held_out`) are returned as ``val``;
a video never straddles train and val.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from realm.data.clip import Clip
from realm.data.peer import audio_frames, common_length, dyad_clip, held_out, load_npz, wanted_splits
from realm.errors import RealmInputError
from realm.motion import SPECS, resample_motion

log = logging.getLogger(__name__)

FPS = 30.0  # what the clips come out at
SOURCE_FPS = 25.0  # DualTalk's motion rate (the DualTalk code cuts audio at frames / 25 s)
RELEASE_SPLITS = ("train", "test", "ood")
VAL_PERCENT = 5.0
PEOPLE = ("speaker1", "speaker2")
STEM = re.compile(r"^(?P<name>.+)_(?P<who>speaker[12])$")
RESAMPLED = f"motion resampled from {SOURCE_FPS:g} fps to {FPS:g} fps (linear interpolation)"


def find_root(root: Path, marker: str = "*_speaker[12].npz") -> Path | None:
    """The folder holding train/ test/ ood/ with DualTalk files: ``root``, ``root/DualTalk_Dataset``
    or ``root/data``."""
    for cand in (root, root / "DualTalk_Dataset", root / "data"):
        if any(any((cand / s).glob(marker)) for s in RELEASE_SPLITS if (cand / s).is_dir()):
            return cand
    return None


def video_of(name: str) -> str:
    """The YouTube id of a conversation name (``{id}_sub_video_{k}[_{seg}]``), else the name itself."""
    return name.split("_sub_video")[0]


def our_split(split: str, name: str, val_percent: float) -> str:
    """The release split, with train conversations of held-out videos as ``val``."""
    if split == "train" and val_percent > 0 and held_out(video_of(name), val_percent):
        return "val"
    return split


def load_dualtalk(
    root: str | Path, splits: str | Iterable[str] | None = None, val_percent: float = VAL_PERCENT
) -> list[Clip]:
    """Two clips per conversation (each person as the listener) of every split below ``root``."""
    return list(iter_dualtalk(root, splits, val_percent))


def iter_dualtalk(
    root: str | Path, splits: str | Iterable[str] | None = None, val_percent: float = VAL_PERCENT
) -> Iterator[Clip]:
    """:func:`load_dualtalk`'s clips one conversation at a time (bounded memory: ``realm data store``)."""
    root = Path(root)
    if not root.is_dir():
        raise RealmInputError(root, "DualTalk data directory not found")
    wanted = wanted_splits(splits)
    base = find_root(root)
    if base is None:
        raise RealmInputError(
            root,
            "no {train,test,ood}/{name}_speaker1.npz (DualTalk_Dataset layout: FLAME .npz and .wav per person)",
        )
    n_clips = 0
    for split in RELEASE_SPLITS:
        folder = base / split
        if not folder.is_dir():
            continue
        if not ({split, "val"} & wanted if split == "train" else {split} & wanted):
            continue
        has_audio = any(folder.glob("*_speaker[12].wav"))
        if not has_audio:
            log.warning(
                "%s: no .wav files: speaker audio missing, models needing waveforms cannot run", folder
            )
        names = sorted({m["name"] for p in folder.glob("*_speaker[12].npz") if (m := STEM.match(p.stem))})
        for name in names:
            ours = our_split(split, name, val_percent)
            if ours in wanted:
                for clip in conversation_clips(folder, name, ours, has_audio):
                    n_clips += 1
                    yield clip
    log.info("%s: %d DualTalk clips; %s", base, n_clips, RESAMPLED)
    log.warning("DualTalk: no word times (the .txt transcripts have none): mmlm and lm_listener need ASR (realm asr); "
                "audio models and the speaker-motion rows can run")  # fmt: skip


def conversation_clips(folder: Path, name: str, split: str, has_audio: bool) -> list[Clip]:
    """The two clips of conversation ``name`` (listener speaker1, then speaker2)."""
    motion, audio, text = {}, {}, {}
    for who in PEOPLE:
        path = folder / f"{name}_{who}.npz"
        if not path.exists():
            other = PEOPLE[1 - PEOPLE.index(who)]
            raise RealmInputError(path, f"file not found (every {name}_{other}.npz pairs with it)")
        motion[who] = resample_motion(flame56_of(path), SOURCE_FPS, FPS)
        wav = folder / f"{name}_{who}.wav"
        if has_audio and not wav.exists():
            raise RealmInputError(wav, "file not found (the split has audio for the other conversations)")
        audio[who] = wav if has_audio else None
        if has_audio:  # a person's motion against their own track, so that a bad file is the one named
            common_length(path, motion=len(motion[who]), own_audio=audio_frames(wav, FPS))
        txt = folder / f"{name}_{who}.txt"
        text[who] = txt.read_text(encoding="utf-8", errors="replace").strip() if txt.exists() else None
    person = {who: {"motion": motion[who], "wav": audio[who], "id": f"{video_of(name)}_{who}"} for who in PEOPLE}
    meta = {"conversions": [RESAMPLED], "missing": ["word times (the .txt transcripts have none): language models need ASR"]}
    return [dyad_clip(person[lis], person[spk], clip_id=f"{name}_{lis}", split=split, spec="flame56", fps=FPS,
                      source=str(folder / f"{name}_{lis}.npz"), meta={**meta, "speaker_text": text[spk]})
            for lis, spk in (PEOPLE, PEOPLE[::-1])]  # fmt: skip


def flame56_of(path: Path) -> np.ndarray:
    """A DualTalk ``.npz`` -> (T, 56) exp 50 | neck rotation 3 | jaw 3, at the file's 25 fps."""
    z = load_npz(path, ("exp", "pose"), what="DualTalk FLAME .npz")
    exp, pose = np.asarray(z["exp"]), np.asarray(z["pose"])
    if exp.ndim != 2 or exp.shape[1] < 50:
        raise RealmInputError(
            path, f"wrong coefficient width: 'exp' has shape {exp.shape}, expected (frames, 50)"
        )
    if pose.ndim != 2 or pose.shape[1] != 6:
        raise RealmInputError(
            path,
            f"wrong coefficient width: 'pose' has shape {pose.shape}, expected (frames, 6) neck 3 | jaw 3",
        )
    if len(exp) != len(pose):
        raise RealmInputError(path, f"'exp' has {len(exp)} frames but 'pose' {len(pose)}")
    return SPECS["flame56"].validate(np.concatenate([exp[:, :50], pose], axis=1).astype(np.float32), path)
