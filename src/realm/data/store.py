"""Training data larger than memory: a sharded on-disk store of features and motion, read a window at a time.

    realm data store DATA --extractor logmel --out STORE        # once: clip by clip, bounded memory
    realm train realm --data DATA --store STORE ...             # windows read lazily, RSS flat

``prepare_data`` keeps every clip's features and motion in memory, which is right for hours
and impossible for the 50 h of DualTalk or the 4,000 h of Seamless Interaction. A store holds
the same numbers in flat float32 files, written one clip at a time:

    STORE/meta.json                      version, extractor, spec, fps, dims, the source, per split clips and frames
    STORE/stats.npz, feature_stats.npz   normalisation fitted on the train split (as prepare_data fits it)
    STORE/<split>/index.json             per clip: id, shard, feature row, motion row, frames, realisations, speaker row
    STORE/<split>/shard-NNNNN.{features,motion,speaker}.f32   row-major float32, rows of F / D / Ds values

A shard holds about ``shard_mb`` of data; a clip never spans two. :class:`StoreWindows` gives the
items of :class:`realm.data.windows.WindowDataset` (tested equal, item for item) but reads each
window's rows with ``os.pread`` when it is asked for: memory is the index (a few hundred bytes a
clip) plus a batch, whatever the store's size, and nothing is mapped (a memory map's pages count
in RSS as they are touched). Sampling across processes is the harness's: ``ResumableLoader``'s
order is a ``DistributedSampler`` (each rank reads its share of the windows).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from realm.data.clip import Clip
from realm.data.windows import window_item
from realm.errors import RealmInputError
from realm.io import write_json
from realm.motion import NormStats

log = logging.getLogger(__name__)

STORE_VERSION = 1
KINDS = ("features", "motion", "speaker")


def iter_clips(root: str | Path, splits: tuple[str, ...]) -> Iterator[Clip]:
    """The clips of ``splits``, one at a time (:func:`realm.data.iter_any`): our layout clip by clip, DualTalk
    (both layouts), Seamless Interaction and UniLS-Talk conversation by conversation; ViCo, L2L and
    LM-Listener a split at a time (a split of those must fit in memory while the store is built)."""
    from realm.data import iter_any

    for split in splits:  # split by split: the store writes each split's clips together
        yield from iter_any(root, splits=split)


def _clip_features(c: Clip, extractor: str) -> np.ndarray:
    from realm.data.windows import clip_features

    return clip_features([c], extractor, cache=False)[0]  # the store is the cache: not twice on disk


class _ShardWriter:
    """Appends clips to ``split``'s shards, starting a new shard past ``shard_bytes``."""

    def __init__(self, root: Path, shard_bytes: int):
        self.root, self.shard_bytes = root, shard_bytes
        self.root.mkdir(parents=True, exist_ok=True)
        self.shard, self.files, self.rows, self.bytes = -1, {}, {}, 0
        self._next()

    def _next(self) -> None:
        self.close()
        self.shard += 1
        self.files = {k: open(self.root / f"shard-{self.shard:05d}.{k}.f32", "wb") for k in KINDS}
        self.rows, self.bytes = dict.fromkeys(KINDS, 0), 0

    def add(self, arrays: dict[str, np.ndarray | None]) -> tuple[int, dict[str, int | None]]:
        """Write a clip's arrays (kind -> (rows, width) or None); its shard and first row per kind."""
        size = sum(a.nbytes for a in arrays.values() if a is not None)
        if self.bytes and self.bytes + size > self.shard_bytes:
            self._next()
        at = {}
        for k, a in arrays.items():
            if a is None:
                at[k] = None
                continue
            at[k] = self.rows[k]
            self.files[k].write(np.ascontiguousarray(a, dtype="<f4").tobytes())
            self.rows[k] += len(a)
        self.bytes += size
        return self.shard, at

    def close(self) -> None:
        for f in self.files.values():
            f.flush()
            os.fsync(f.fileno())
            f.close()
        self.files = {}


def build_store(data: str | Path, out: str | Path, extractor: str = "logmel", splits: tuple[str, ...] = ("train", "val"),
                shard_mb: float = 1024.0, force: bool = False, progress=None) -> Path:  # fmt: skip
    """Write the store of ``data``'s ``splits`` with ``extractor`` features to ``out`` (see the module doc).

    Written into ``out.partial`` and renamed when complete, so an interrupted build leaves no
    store that looks whole; an existing ``out`` is replaced only with ``force``. ``progress(done)``
    is called after each clip. Returns ``out``."""
    from realm.io import refuse_existing

    data, out = Path(data), Path(out)
    if not force:
        refuse_existing(out)
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    meta = {"version": STORE_VERSION, "extractor": extractor, "data": str(data.resolve()), "splits": {}}
    done = 0
    for split in splits:
        writer = _ShardWriter(tmp / split, int(shard_mb * 2**20))
        index = []
        try:
            clips = iter_clips(data, (split,))
            done = _write_split(clips, writer, index, meta, extractor, done, progress)
        finally:
            writer.close()
        if not index:
            raise RealmInputError(data, f"no {split} clips")
        write_json(tmp / split / "index.json", index)
        meta["splits"][split] = {"clips": len(index), "frames": int(sum(r["frames"] for r in index)),
                                 "shards": writer.shard + 1}  # fmt: skip
    if "train" in splits:  # fitted as prepare_data fits them: per clip, every realisation
        store = _Reader(tmp, "train", meta)
        try:
            NormStats.fit((store.motion(i) for i in range(len(store.index))), meta["spec"]).save(tmp / "stats.npz")
            NormStats.fit((store.features(i) for i in range(len(store.index))), extractor).save(tmp / "feature_stats.npz")
        finally:
            store.close()
    write_json(tmp / "meta.json", meta)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    log.info("store of %d clips written to %s", done, out)
    return out


def _write_split(clips, writer: _ShardWriter, index: list, meta: dict, extractor: str, done: int, progress) -> int:
    """Append each clip to ``writer`` and ``index`` (and the dataset's dims to ``meta``); clips done so far."""
    for c in clips:
        feats = _clip_features(c, extractor)
        samples = c.samples()  # (S, T, D)
        shard, at = writer.add({"features": feats, "motion": samples.reshape(-1, samples.shape[-1]),
                                "speaker": c.speaker[: c.n_frames] if c.speaker is not None else None})  # fmt: skip
        index.append({"id": c.clip_id, "shard": shard, "features": at["features"], "motion": at["motion"],
                      "speaker": at["speaker"], "frames": c.n_frames, "samples": int(samples.shape[0])})  # fmt: skip
        if "spec" not in meta:
            meta.update(spec=c.spec, fps=c.fps, feature_dim=int(feats.shape[1]), motion_dim=int(samples.shape[-1]),
                        speaker_dim=int(c.speaker.shape[1]) if c.speaker is not None else None)  # fmt: skip
        elif c.spec != meta["spec"] or feats.shape[1] != meta["feature_dim"]:
            raise RealmInputError(c.source or c.clip_id, f"clip {c.clip_id}: spec {c.spec} / {feats.shape[1]} "
                                  f"features, but earlier clips have {meta['spec']} / {meta['feature_dim']}")  # fmt: skip
        if meta["speaker_dim"] is not None and c.speaker is None:
            meta["speaker_dim"] = None  # windows carry speaker motion only when every clip has it
        done += 1
        if progress:
            progress(done)
    return done


def read_store_meta(store: str | Path) -> dict:
    """A store's meta.json, checked (one-line errors naming the store)."""
    store = Path(store)
    p = store / "meta.json"
    if not p.exists():
        partial = store.with_name(store.name + ".partial").exists()
        raise RealmInputError(store, "not a store (no meta.json)" + ("; its build was interrupted: build it again" if partial else
                                                                      "; build one with `realm data store`"))  # fmt: skip
    try:
        meta = json.loads(p.read_text())
    except ValueError as e:
        raise RealmInputError(p, f"unreadable store metadata ({e})") from None
    if meta.get("version") != STORE_VERSION:
        raise RealmInputError(p, f"store version {meta.get('version')}, this realm reads {STORE_VERSION}: build it again")
    return meta


class _Reader:
    """Reads a split's rows with ``os.pread``; file descriptors are opened per process (DataLoader
    workers fork) and on first use."""

    def __init__(self, store: Path, split: str, meta: dict):
        self.dir, self.meta = Path(store) / split, meta
        p = self.dir / "index.json"
        if not p.exists():
            raise RealmInputError(store, f"the store has no {split} split (it has {', '.join(meta.get('splits', {}))})")
        try:
            self.index = json.loads(p.read_text())
        except ValueError as e:
            raise RealmInputError(p, f"unreadable store index ({e}): build the store again") from None
        self.width = {"features": meta["feature_dim"], "motion": meta["motion_dim"], "speaker": meta.get("speaker_dim")}
        self._fds: dict = {}
        self._pid = None

    def _fd(self, shard: int, kind: str) -> int:
        if self._pid != os.getpid():
            self._fds, self._pid = {}, os.getpid()
        key = (shard, kind)
        if key not in self._fds:
            self._fds[key] = os.open(self.dir / f"shard-{shard:05d}.{kind}.f32", os.O_RDONLY)
        return self._fds[key]

    def rows(self, ci: int, kind: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of clip ``ci``'s ``kind`` block (rows counted from the clip's first)."""
        r = self.index[ci]
        w = self.width[kind]
        n = (stop - start) * w * 4
        data = os.pread(self._fd(r["shard"], kind), n, (r[kind] + start) * w * 4)
        if len(data) != n:
            raise RealmInputError(self.dir, f"shard {r['shard']} {kind} is truncated at clip {r['id']}: build the store again")
        return np.frombuffer(data, dtype="<f4").reshape(stop - start, w)

    def features(self, ci: int) -> np.ndarray:
        return self.rows(ci, "features", 0, self.index[ci]["frames"])

    def motion(self, ci: int) -> np.ndarray:
        """Every realisation of clip ``ci``, (S T, D) as ``Clip.samples().reshape(-1, D)``."""
        r = self.index[ci]
        return self.rows(ci, "motion", 0, r["samples"] * r["frames"])

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}

    def __getstate__(self):  # file descriptors do not travel to other processes
        return {**self.__dict__, "_fds": {}, "_pid": None}


class StoreWindows(Dataset):
    """The windows of :class:`realm.data.windows.WindowDataset` (same items, same order, the same
    realisation draws from ``rng``) read from a store's ``split`` on demand."""

    def __init__(self, store: str | Path, split: str, stats: NormStats, length: int = 128, stride: int = 4,
                 history: int = 16, feature_stats: NormStats | None = None, sample: str = "random", seed: int = 0):  # fmt: skip
        self.meta = read_store_meta(store)
        self.reader = _Reader(Path(store), split, self.meta)
        self.stats, self.feature_stats = stats, feature_stats
        self.length, self.stride, self.history, self.sample = length, stride, history, sample
        self.rng = np.random.default_rng(seed)
        self.with_speaker = self.meta.get("speaker_dim") is not None and all(r["speaker"] is not None for r in self.reader.index)
        self.index: list[tuple[int, int, int]] = []  # (clip, start, realisation or -1), as WindowDataset's
        for ci, r in enumerate(self.reader.index):
            starts = range(0, max(1, r["frames"] - length + 1), stride)
            ks = range(r["samples"]) if sample == "all" else [-1]
            self.index += [(ci, s, k) for s in starts for k in ks]

    def __len__(self) -> int:
        return len(self.index)

    @property
    def n_clips(self) -> int:
        return len(self.reader.index)

    @property
    def frames_total(self) -> int:
        """Training frames of every realisation of every clip."""
        return sum(r["frames"] * r["samples"] for r in self.reader.index)

    def clip_arrays(self, ci: int) -> tuple[np.ndarray, np.ndarray]:
        """Clip ``ci``'s features (T, F) and realisations (S, T, D), read whole."""
        r = self.reader.index[ci]
        return self.reader.features(ci), self.reader.motion(ci).reshape(r["samples"], r["frames"], -1)

    def __getitem__(self, i: int) -> dict:
        ci, s, k = self.index[i]
        r, L, H = self.reader.index[ci], self.length, self.history
        T = r["frames"]
        if k < 0:
            k = int(self.rng.integers(r["samples"])) if self.sample == "random" else 0
        e = min(s + L, T)
        lo = max(0, s - H)  # the rows the window and its history read, in one read
        motion = self.reader.rows(ci, "motion", k * T + lo, k * T + e)
        hist_idx = np.clip(np.arange(s - H, s), 0, T - 1)  # frame 0 repeated before the clip starts
        speaker = self.reader.rows(ci, "speaker", s, e) if self.with_speaker else None
        return window_item(self, motion[s - lo :], motion[hist_idx - lo], self.reader.rows(ci, "features", s, e), speaker,
                           ci, s)  # fmt: skip


def open_store(store: str | Path, extractor: str) -> tuple[dict, NormStats, NormStats]:
    """A store's meta and its (motion, feature) stats, checking it holds ``extractor`` features."""
    meta = read_store_meta(store)
    if meta["extractor"] != extractor:
        raise RealmInputError(store, f"the store holds {meta['extractor']!r} features, the run asks for {extractor!r}; "
                              "build a store with --extractor " + extractor)  # fmt: skip
    if "train" not in meta["splits"]:
        raise RealmInputError(store, "the store has no train split (its normalisation comes from it)")
    return meta, NormStats.load(Path(store) / "stats.npz"), NormStats.load(Path(store) / "feature_stats.npz")


__all__ = ["StoreWindows", "build_store", "iter_clips", "open_store", "read_store_meta"]
