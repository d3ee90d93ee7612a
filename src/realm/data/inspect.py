"""What a dataset holds and what it lacks: the data behind ``realm data inspect``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from realm.data import detect_format, load_any
from realm.data.clip import SPLITS, Clip


@dataclass
class SplitSummary:
    split: str
    clips: int = 0
    hours: float = 0.0
    listeners: set = field(default_factory=set)
    speakers: set = field(default_factory=set)


@dataclass
class DatasetSummary:
    root: Path
    format: str
    splits: list[SplitSummary]
    spec: str
    listener_dim: int
    speaker: str  # "arkit58 (58)" or "-"
    realisations: int
    features: dict[str, int]  # precomputed feature name -> dim
    with_audio: int
    with_words: int
    with_events: int
    has_stats: bool
    missing: list[str]
    conversions: list[str] = field(default_factory=list)  # what the loader changed (frame rates, channels)
    can_run: list[str] = field(default_factory=list)  # what can still run on the data as it is

    @property
    def n_clips(self) -> int:
        return sum(s.clips for s in self.splits)

    @property
    def hours(self) -> float:
        return sum(s.hours for s in self.splits)


def summarize(root: str | Path, clips: list[Clip] | None = None) -> DatasetSummary:
    root = Path(root)
    fmt = detect_format(root)
    clips = load_any(root, fmt) if clips is None else clips
    by_split = {s: SplitSummary(s) for s in SPLITS}
    for c in clips:
        s = by_split.setdefault(c.split, SplitSummary(c.split))
        s.clips += 1
        s.hours += c.duration / 3600
        s.listeners.add(c.listener_id)
        s.speakers.add(c.speaker_id)
    n = len(clips)
    first = clips[0] if clips else None
    with_speaker = sum(c.speaker is not None for c in clips)
    feats: dict[str, int] = {}
    for c in clips:
        for k, v in c.features.items():
            feats[k] = v.shape[-1]
    with_audio = sum(c.audio_path is not None for c in clips)
    with_words = sum(c.words is not None for c in clips)
    with_events = sum(c.events is not None for c in clips)
    K = min((c.samples().shape[0] for c in clips), default=0)
    missing = []
    if with_audio < n:
        alt = f"; precomputed features {sorted(feats)} can stand in" if feats else ""
        missing.append(f"speaker audio for {n - with_audio}/{n} clips: audio extractors cannot run{alt}")
    if with_speaker < n:
        missing.append(f"speaker motion for {n - with_speaker}/{n} clips: P-FD, rPCC and the mirror baseline unavailable")
    if with_words < n:
        missing.append(f"words for {n - with_words}/{n} clips: language models will need ASR (realm.text)")
    if with_events < n:
        missing.append(f"event logs for {n - with_events}/{n} clips: reaction delay and event F1 unavailable")
    if K < 2:
        missing.append("a second listener realisation: no GT-resample floor row")
    has_stats = (root / "stats.npz").exists()
    if fmt == "realm" and not has_stats:
        missing.append("stats.npz: normalisation will be fitted on the train split")
    for s in ("train", "val", "test"):
        if by_split[s].clips == 0:
            missing.append(f"a {s} split")
    missing += _counted(clips, "missing")
    spec_name = first.spec if first else "-"
    return DatasetSummary(
        root=root,
        format=fmt,
        splits=[s for s in by_split.values() if s.clips or s.split in SPLITS],
        spec=spec_name,
        listener_dim=first.listener.shape[1] if first else 0,
        speaker=(f"{first.speaker_spec} ({first.speaker.shape[1]})" if first is not None and first.speaker is not None else "-"),
        realisations=K,
        features=feats,
        with_audio=with_audio,
        with_words=with_words,
        with_events=with_events,
        has_stats=has_stats,
        missing=missing,
        conversions=_counted(clips, "conversions"),
        can_run=_can_run(n, with_audio, bool(feats), with_speaker, with_words, spec_name),
    )


def _counted(clips: list[Clip], key: str) -> list[str]:
    """The distinct strings of ``clip.meta[key]`` lists, each with the number of clips it applies to."""
    counts: dict[str, int] = {}
    for c in clips:
        for item in c.meta.get(key) or ():
            counts[item] = counts.get(item, 0) + 1
    n = len(clips)
    return [item if k == n else f"{item} ({k}/{n} clips)" for item, k in counts.items()]


def _can_run(n: int, audio: int, feats: bool, speaker: int, words: int, spec: str) -> list[str]:
    """What can run on the data as it is (every clip having what the item needs)."""
    if n == 0:
        return []
    out = []
    if audio == n or feats:
        how = "speaker audio" if audio == n else "the precomputed features only (--extractor <their name>)"
        out.append(f"REALM and the audio baselines (lstm, listenformer, l2l, nearest_neighbour): from {how}")
    else:
        out.append("static_mean and random_clip only (no speaker audio, no precomputed features): no audio-driven model")
    if speaker == n:
        out.append("mirror baseline, P-FD and rPCC (speaker motion present)")
    if words == n:
        out.append("mmlm and lm_listener from the transcript words")
    elif audio == n:
        out.append("mmlm and lm_listener after ASR (realm asr) of the audio")
    else:
        out.append("no language model (no words, and no audio for ASR)")
    if spec == "arkit58":
        out.append("robot and avatar export directly (arkit58)")
    elif spec != "-":
        out.append(f"robot export after a map {spec} -> arkit58 (realm embody fit-map on paired frames"
                   + (", or realm embody solve-flame with a FLAME basis)" if spec == "flame56" else ")"))
    return out
