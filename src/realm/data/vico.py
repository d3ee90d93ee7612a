"""ViCo (responsive listening head) loaders, in REALM's layout and in the ViCo challenge layout.

Both layouts come from Deep3DFaceRecon reconstructions of ViCo's videos, 30 fps. A ``coeff``
row (257) splits as id 0:80, exp 80:144, tex 144:224, angles 224:227, gamma 227:254,
trans 254:257.

**REALM layout** (``layout="realm"``), as read by lipzh5/REALM ``datasets/vico_dataset.py``::

    data/                                      root (root may also be data/vico/)
      vico/
        RLD_data.csv                           one row per clip: audio, speaker, listener, data_split
                                               (train | test | ood); the ViCo full release also has
                                               speaker_id, listener_id (dc3ea9f/vico_challenge_baseline
                                               preprocess/convert.py)
        audio-features/{audio}.npy             optional: REALM's per-frame audio features (T, 768)
                                               -> clip.features["realm_audio"]
      vico_raw/
        deep3d_coeffs/cropped/{speaker}.mat    Deep3DFaceRecon output holding ``coeff`` (T, 257)
        deep3d_coeffs/cropped/{listener}.mat
        audios/{audio}.wav                     speaker audio (the ViCo release's audios/ folder)

``speaker`` and ``listener`` name the videos (file stems) whose coefficients are read; ``audio``
names the speaker audio. Listener and speaker come out in ``vico70`` (exp 64 | angles 3 |
trans 3), exactly REALM's ``get_target_coeffs``. An ``attitude`` (or ``sentiment``) column, if
present, fills ``clip.emotion``. A flat variant (RLD_data.csv, deep3d_coeffs/
[cropped/], audios/ side by side in root) is read too. The clip id is the listener video name.

**Challenge layout** (``layout="challenge"``), as made by dc3ea9f/vico_challenge_baseline
(README, ``preprocess/convert.py``, ``preprocess/rearrange_recon_coeffs.py``, ``vico/data.py``)::

    listening_head/                            root
      train.csv, val.csv, test.csv, ood.csv    per split (any present): video_id, uuid, speaker_id, listener_id
      videos/[test/]{uuid}.speaker.mp4         (not read: motion comes from the coefficients)
      videos/[test/]{uuid}.listener.mp4
      audios/{uuid}.wav                        speaker audio
      example/features/video_feats/{uuid}.speaker.bin    torch.save'd dict: "angle.exp.trans" (T, 73) =
      example/features/video_feats/{uuid}.listener.bin   angle 3 | exp 64 | trans 3 | crop 3, "id.gamma.tex"
      example/features/audio_feats/{uuid}.npy  optional: baseline audio features (T, 45)
                                               -> clip.features["vico_audio"]
      recons/**/{uuid}.listener.mat            Deep3DFaceRecon output (``coeff`` (T, 257),
                                               ``transform_params`` (T, 5)); used when the .bin is absent
                                               and rearranged exactly as rearrange_recon_coeffs.py does
                                               (crop = last 3 transform_params)

Motion comes out in ``vico73``; convert with :func:`realm.motion.vico73_to_vico70`. The clip id
is the uuid. ``features/`` directly under root (no ``example/``) is accepted too.

In both layouts a folder that is absent (audio, audio features) is logged and skipped; a folder
that exists but lacks a file a CSV row names is an error. Lengths (listener, speaker, audio,
features) may differ by ``LENGTH_TOLERANCE_FRAMES``; the clip is trimmed to the shortest.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from realm.data.clip import SPLITS, Clip
from realm.data.peer import (
    finish_clip,
    load_npy_2d,
    load_torch,
    read_csv,
    read_mat,
    to_numpy,
    wanted_splits,
)
from realm.errors import RealmInputError
from realm.motion import SPECS

log = logging.getLogger(__name__)

FPS = 30.0
EXP, ANGLES, TRANS = slice(80, 144), slice(224, 227), slice(254, 257)
CHALLENGE_COLUMNS = ("video_id", "uuid", "speaker_id", "listener_id")
REALM_COLUMNS = ("audio", "speaker", "listener", "data_split")


def load_vico(
    root: str | Path, layout: str = "auto", splits: str | Iterable[str] | None = None
) -> list[Clip]:
    """Read ViCo clips from ``root`` in REALM's (``"realm"``) or the challenge (``"challenge"``) layout.

    ``"auto"`` picks REALM's when an ``RLD_data.csv`` is found, else the challenge layout when a
    per-split CSV (``train.csv`` ...) is. ``splits`` keeps only those splits.
    """
    root = Path(root)
    if not root.is_dir():
        raise RealmInputError(root, "ViCo data directory not found")
    wanted = wanted_splits(splits)
    if layout == "auto":
        if _rld_csv(root) is not None:
            layout = "realm"
        elif any((root / f"{s}.csv").exists() for s in SPLITS):
            layout = "challenge"
        else:
            raise RealmInputError(
                root,
                "not a ViCo directory: no RLD_data.csv (REALM layout) and no train/val/test/ood.csv (challenge)",
            )
    if layout == "realm":
        return _load_realm(root, wanted)
    if layout == "challenge":
        return _load_challenge(root, wanted)
    raise RealmInputError(None, f"unknown ViCo layout {layout!r} (expected 'auto', 'realm' or 'challenge')")


# ---------------------------------------------------------------- REALM layout


def _rld_csv(root: Path) -> Path | None:
    return _first(root / "RLD_data.csv", root / "vico" / "RLD_data.csv")


def _load_realm(root: Path, wanted: set[str]) -> list[Clip]:
    index = _rld_csv(root)
    if index is None:
        raise RealmInputError(root / "RLD_data.csv", "REALM layout index not found (also looked in vico/)")
    base = index.parent
    coeff_dir = _first(
        base.parent / "vico_raw" / "deep3d_coeffs" / "cropped",
        base / "deep3d_coeffs" / "cropped",
        base / "deep3d_coeffs",
    )
    if coeff_dir is None:
        raise RealmInputError(
            base,
            "no coefficient folder (looked for ../vico_raw/deep3d_coeffs/cropped, deep3d_coeffs[/cropped])",
        )
    audio_dir = _first(base.parent / "vico_raw" / "audios", base / "audios")
    feat_dir = _first(base / "audio-features")
    if audio_dir is None:
        log.warning("%s: no audios/ folder: speaker audio missing, models needing waveforms cannot run", base)
    if feat_dir is None:
        log.info("%s: no audio-features/ folder: REALM's precomputed audio features not loaded", base)
    clips = []
    for line, row in enumerate(read_csv(index, REALM_COLUMNS), start=2):
        split = row["data_split"]
        if split not in SPLITS:
            raise RealmInputError(
                index, f"line {line}: unknown data_split {split!r} (expected one of {SPLITS})"
            )
        if split not in wanted:
            continue
        lis_path = _named_file(coeff_dir / f"{row['listener']}.mat", index, line)
        spk_path = _named_file(coeff_dir / f"{row['speaker']}.mat", index, line)
        features = {}
        if feat_dir is not None:
            features["realm_audio"] = load_npy_2d(_named_file(feat_dir / f"{row['audio']}.npy", index, line))
        clip = Clip(
            clip_id=row["listener"],
            split=split,
            listener=deep3d_vico70(lis_path),
            spec="vico70",
            fps=FPS,
            speaker=deep3d_vico70(spk_path),
            speaker_spec="vico70",
            audio_path=_named_file(audio_dir / f"{row['audio']}.wav", index, line) if audio_dir else None,
            speaker_id=row.get("speaker_id", ""),
            listener_id=row.get("listener_id", ""),
            emotion=row.get("attitude", "") or row.get("sentiment", ""),
            features=features,
            source=str(lis_path),
        )
        clips.append(finish_clip(clip))
    return clips


def deep3d_vico70(path: Path) -> np.ndarray:
    """A Deep3DFaceRecon ``.mat`` -> (T, 70) exp | angles | trans (REALM's ``get_target_coeffs``)."""
    coeff = _coeff257(read_mat(path, ("coeff",))["coeff"], path)
    return SPECS["vico70"].validate(
        np.concatenate([coeff[:, EXP], coeff[:, ANGLES], coeff[:, TRANS]], 1), path
    )


# ---------------------------------------------------------------- challenge layout


def _load_challenge(root: Path, wanted: set[str]) -> list[Clip]:
    indexes = {s: root / f"{s}.csv" for s in SPLITS if (root / f"{s}.csv").exists()}
    if not indexes:
        raise RealmInputError(root, "no per-split CSV (train.csv, val.csv, test.csv or ood.csv)")
    feats = _first(root / "example" / "features", root / "features")
    bin_dir = _first(feats / "video_feats") if feats else None
    afeat_dir = _first(feats / "audio_feats") if feats else None
    recons = (
        {p.name: p for p in sorted((root / "recons").rglob("*.mat"))} if (root / "recons").is_dir() else {}
    )
    if bin_dir is None and not recons:
        raise RealmInputError(
            root,
            "no coefficients: expected example/features/video_feats/{uuid}.listener.bin or recons/**/{uuid}.listener.mat",
        )
    audio_dir = _first(root / "audios")
    if audio_dir is None:
        log.warning("%s: no audios/ folder: speaker audio missing, models needing waveforms cannot run", root)
    clips = []
    for split, index in indexes.items():
        if split not in wanted:
            continue
        for line, row in enumerate(read_csv(index, CHALLENGE_COLUMNS), start=2):
            uuid = row["uuid"]
            listener, lis_path = _vico73(uuid, "listener", bin_dir, recons, index, line)
            speaker, _ = _vico73(uuid, "speaker", bin_dir, recons, index, line)
            features = {}
            if afeat_dir is not None:
                features["vico_audio"] = load_npy_2d(_named_file(afeat_dir / f"{uuid}.npy", index, line))
            clip = Clip(
                clip_id=uuid,
                split=split,
                listener=listener,
                spec="vico73",
                fps=FPS,
                speaker=speaker,
                speaker_spec="vico73",
                audio_path=_named_file(audio_dir / f"{uuid}.wav", index, line) if audio_dir else None,
                speaker_id=row["speaker_id"],
                listener_id=row["listener_id"],
                features=features,
                source=str(lis_path),
            )
            clips.append(finish_clip(clip))
    return clips


def _vico73(uuid: str, role: str, bin_dir: Path | None, recons: dict, index: Path, line: int):
    """(T, 73) angle | exp | trans | crop of ``{uuid}.{role}``, from the .bin, else from the recons .mat."""
    bin_path = bin_dir / f"{uuid}.{role}.bin" if bin_dir else None
    if bin_path is not None and bin_path.exists():
        d = load_torch(bin_path)
        if not isinstance(d, dict) or "angle.exp.trans" not in d:
            raise RealmInputError(
                bin_path, "no 'angle.exp.trans' entry (expected rearrange_recon_coeffs.py output)"
            )
        return SPECS["vico73"].validate(to_numpy(d["angle.exp.trans"], bin_path), bin_path), bin_path
    mat_path = recons.get(f"{uuid}.{role}.mat")
    if mat_path is None:
        missing = bin_path if bin_path is not None else f"recons/**/{uuid}.{role}.mat"
        raise RealmInputError(index, f"line {line}: names a missing file {missing}")
    m = read_mat(mat_path, ("coeff", "transform_params"))
    coeff, params = _coeff257(m["coeff"], mat_path), m["transform_params"]
    if params.ndim != 2 or params.shape[0] != coeff.shape[0] or params.shape[1] < 3:
        raise RealmInputError(
            mat_path, f"'transform_params' has shape {params.shape}, expected ({coeff.shape[0]}, 5)"
        )
    x = np.concatenate([coeff[:, ANGLES], coeff[:, EXP], coeff[:, TRANS], params[:, -3:]], 1)
    return SPECS["vico73"].validate(x, mat_path), mat_path


def _coeff257(coeff: np.ndarray, path: Path) -> np.ndarray:
    if coeff.ndim != 2 or coeff.shape[1] != 257:
        raise RealmInputError(
            path, f"wrong coefficient width: 'coeff' has shape {coeff.shape}, expected (frames, 257)"
        )
    return coeff


def _first(*paths: Path) -> Path | None:
    return next((p for p in paths if p.exists()), None)


def _named_file(path: Path, index: Path, line: int) -> Path:
    if not path.exists():
        raise RealmInputError(index, f"line {line}: names a missing file {path}")
    return path
