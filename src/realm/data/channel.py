"""A randomised speaker channel for the synthetic benchmark's speech (issue 16, point 2).

The benchmark's speech is one clean TTS voice; real microphones, rooms and voices are not. The
channel varies, per clip, who speaks and what the recording did to it. Every knob is off by
default (:class:`ChannelConfig`), and a dataset made without the channel is bit-identical to one
made before the channel existed.

Two kinds of knob:

* **before the motion** (they move the words, so the listener reacts to the moved words):
  ``pitch_semitones`` and ``formant_shift`` (voices: the one Piper voice with its pitch moved,
  formants kept, and its vocal tract lengthened or shortened), ``espeak`` (a fraction of clips
  spoken by espeak-ng voices, where the binary is installed) and ``rate`` (speaking rate:
  Piper's length scale, and the gaps between words). They act on each word as it is synthesised,
  so word times, triggers and the listener's reactions follow the audio exactly.
* **after the motion** (they do not move anything in time): ``reverb`` (a room: an exponentially
  decaying noise impulse response of a drawn RT60), ``noise`` (pink, white or babble made of other
  conversations, at a drawn SNR), ``band`` (Butterworth band limits: telephone 300-3400 Hz, ...),
  ``level_db`` (gain), ``codec`` (mu-law or 8-bit quantisation, clipping, downsample-upsample),
  applied in that order, then the waveform is clipped to [-1, 1].

Random numbers come from their own streams, ``SeedSequence([seed, CHANNEL_STREAM, clip index,
knob])``, one per knob: the conversation and the listener's realisations never see them, and
turning one knob on does not change what another knob draws. What a clip drew is recorded in
its event log (``events/<id>.json``, key ``channel``; :meth:`ClipChannel.record`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from realm.audio import SAMPLE_RATE, resample

#: The channel's random stream: the second entry of its seed sequence (the synthetic benchmark uses
#: 0 for conversations, 1 and 2 for identities, 3 for listener realisations).
CHANNEL_STREAM = 4
_KNOB_STREAM = {"voice": 0, "rate": 1, "espeak": 2, "reverb": 3, "noise": 4, "band": 5, "level": 6, "codec": 7}

NOISE_KINDS = ("pink", "white", "babble")
#: Band limits (low, high) in Hz; None: no limit on that side.
BANDS: dict[str, tuple[float | None, float | None]] = {
    "telephone": (300.0, 3400.0),  # narrowband telephony
    "narrow": (500.0, 3000.0),  # intercom, cheap radio
    "lowpass": (None, 4000.0),  # an 8 kHz recording
    "highpass": (400.0, None),  # a small laptop microphone without bass
}
CODECS = ("mulaw", "8bit", "clip", "downsample")
#: espeak-ng voices (language + variant) drawn for ``espeak`` clips.
ESPEAK_VOICES = ("en-us", "en-us+f3", "en-gb+m3", "en-gb-x-rp+f2", "en-us+m7", "en-gb-scotland+f4")
BAND_ORDER = 4  # Butterworth order, applied forwards and backwards (zero phase: no delay)
SPEED_STEP = 0.05  # speaking rates are drawn in steps of this (Piper's word cache stays useful)


@dataclass
class ChannelConfig:
    """The randomised speaker channel of ``realm data synth``; every knob off by default.

    Ranges are (low, high) and drawn uniformly per clip; probabilities say how many clips get
    the effect. ``pitch_semitones``: each clip's pitch moves by U(-x, x) semitones with the
    formants kept. ``formant_shift``: its formants (vocal tract) scale by U(1-x, 1+x), the pitch
    kept (words get 1/that longer). ``espeak``: fraction of clips spoken by an espeak-ng voice
    (needs the ``espeak-ng`` binary). ``rate``: speaking-rate factor (> 1 faster) in steps of 0.05.
    ``level_db``: gain in dB. ``noise`` at ``snr_db`` (of the active speech's power over the
    noise's) of one of ``noise_kinds``; ``reverb`` with an RT60 in ``rt60`` seconds; ``band``, one
    of ``bands`` (:data:`BANDS`); ``codec``, one of ``codecs`` (:data:`CODECS`).
    """

    pitch_semitones: float = 0.0
    formant_shift: float = 0.0
    espeak: float = 0.0
    rate: tuple[float, float] = (1.0, 1.0)
    level_db: tuple[float, float] = (0.0, 0.0)
    noise: float = 0.0
    snr_db: tuple[float, float] = (0.0, 30.0)
    noise_kinds: tuple[str, ...] = NOISE_KINDS
    reverb: float = 0.0
    rt60: tuple[float, float] = (0.2, 1.0)
    band: float = 0.0
    bands: tuple[str, ...] = tuple(BANDS)
    codec: float = 0.0
    codecs: tuple[str, ...] = CODECS

    def __post_init__(self) -> None:
        for name in ("rate", "level_db", "snr_db", "rt60", "noise_kinds", "bands", "codecs"):
            setattr(self, name, tuple(getattr(self, name)))  # lists from JSON or the CLI
        self.validate()

    def active(self) -> bool:
        """Whether any knob is on (otherwise the channel leaves the benchmark exactly as it was)."""
        return bool(self.pitch_semitones or self.formant_shift or self.espeak or self.noise or self.reverb
                    or self.band or self.codec or self.rate != (1.0, 1.0) or self.level_db != (0.0, 0.0))  # fmt: skip

    def validate(self) -> None:
        for name in ("espeak", "noise", "reverb", "band", "codec"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"channel: {name} is a probability (0..1), got {getattr(self, name)}")
        for name in ("rate", "level_db", "snr_db", "rt60"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"channel: {name} range ({lo}, {hi}) has low > high")
        if self.pitch_semitones < 0 or self.pitch_semitones > 12:
            raise ValueError(f"channel: pitch_semitones must be within 0..12, got {self.pitch_semitones}")
        if not 0.0 <= self.formant_shift < 0.5:
            raise ValueError(f"channel: formant_shift must be within 0..0.5, got {self.formant_shift}")
        if self.rate[0] <= 0.3 or self.rate[1] > 3.0:
            raise ValueError(f"channel: rate must lie in (0.3, 3], got {self.rate}")
        if self.rt60[0] < 0.05 or self.rt60[1] > 3.0:
            raise ValueError(f"channel: rt60 must lie in 0.05..3 s, got {self.rt60}")
        for name, allowed in (("noise_kinds", NOISE_KINDS), ("bands", tuple(BANDS)), ("codecs", CODECS)):
            chosen = getattr(self, name)
            bad = [k for k in chosen if k not in allowed]
            if bad or not chosen:
                raise ValueError(f"channel: {name} must be some of {', '.join(allowed)}, got {', '.join(chosen) or 'none'}")

    def check_installed(self) -> None:
        """Raise ValueError when a knob needs a program this machine lacks (espeak-ng)."""
        from realm.data.speech import espeak_available

        if self.espeak and not espeak_available():
            raise ValueError("the channel's espeak knob needs the espeak-ng binary, which is not installed "
                             "(apt install espeak-ng, or leave --espeak at 0)")  # fmt: skip

    @classmethod
    def preset(cls, name: str) -> ChannelConfig:
        """Named settings: ``off`` (the defaults) or ``robust`` (every knob on, for training a
        listener that holds up on real audio; espeak-ng voices stay off so that the data does not
        depend on what is installed)."""
        if name == "off":
            return cls()
        if name == "robust":
            return cls(pitch_semitones=3.0, formant_shift=0.1, rate=(0.85, 1.2), level_db=(-20.0, 6.0),
                       noise=0.6, snr_db=(0.0, 30.0), reverb=0.4, rt60=(0.2, 1.0), band=0.3, codec=0.2)  # fmt: skip
        raise ValueError(f"unknown channel preset {name!r}; use 'off' or 'robust'")


@dataclass
class ClipChannel:
    """What the channel drew for one clip (None / neutral values: that effect is off for the clip)."""

    seed: int
    index: int
    pitch_semitones: float = 0.0
    formant: float = 1.0
    espeak_voice: str | None = None
    speed: float = 1.0
    reverb_rt60: float | None = None
    reverb_drr_db: float | None = None
    noise: str | None = None
    snr_db: float | None = None
    band: str | None = None
    level_db: float = 0.0
    codec: str | None = None
    codec_param: float | None = None
    extra: dict = field(default_factory=dict)

    def record(self) -> dict:
        """The clip's channel parameters for its event log (plain JSON values)."""
        d = asdict(self)
        del d["seed"], d["index"]
        extra = d.pop("extra")
        return {**{k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()}, **extra}

    def moves_voice(self) -> bool:
        return self.pitch_semitones != 0.0 or self.formant != 1.0

    def voice(self, y: np.ndarray) -> np.ndarray:
        """One synthesised word (16 kHz) as this clip's voice says it."""
        if not self.moves_voice():
            return y
        return shift_voice(y, self.pitch_semitones, self.formant)

    def rng(self, knob: str, part: int = 0) -> np.random.Generator:
        return channel_rng(self.seed, self.index, knob, part)


def channel_rng(seed: int, index: int, knob: str, part: int = 0) -> np.random.Generator:
    """The random stream of one knob of clip ``index``: ``SeedSequence([seed, CHANNEL_STREAM, index,
    knob id, part])`` (part 0 draws the parameters, part 1 what the effect needs: noise, an impulse
    response)."""
    return np.random.default_rng(np.random.SeedSequence([seed, CHANNEL_STREAM, index, _KNOB_STREAM[knob], part]))


def draw(cfg: ChannelConfig, seed: int, index: int) -> ClipChannel:
    """The channel of clip ``index``: each knob from its own stream, so knobs do not disturb each other."""
    ch = ClipChannel(seed=seed, index=index)
    if cfg.pitch_semitones or cfg.formant_shift:
        r = channel_rng(seed, index, "voice")
        ch.pitch_semitones = float(r.uniform(-cfg.pitch_semitones, cfg.pitch_semitones))
        ch.formant = float(r.uniform(1 - cfg.formant_shift, 1 + cfg.formant_shift))
    if cfg.rate != (1.0, 1.0):
        r = channel_rng(seed, index, "rate")
        lo, hi = cfg.rate
        steps = np.arange(math.ceil(lo / SPEED_STEP - 1e-9), math.floor(hi / SPEED_STEP + 1e-9) + 1) * SPEED_STEP
        ch.speed = float(round(r.choice(steps), 4)) if len(steps) else float(lo)
    if cfg.espeak:
        r = channel_rng(seed, index, "espeak")
        if r.random() < cfg.espeak:
            ch.espeak_voice = str(r.choice(ESPEAK_VOICES))
    if cfg.reverb:
        r = channel_rng(seed, index, "reverb")
        if r.random() < cfg.reverb:
            ch.reverb_rt60 = float(r.uniform(*cfg.rt60))
            ch.reverb_drr_db = float(r.uniform(-3.0, 6.0))
    if cfg.noise:
        r = channel_rng(seed, index, "noise")
        if r.random() < cfg.noise:
            ch.noise = str(r.choice(cfg.noise_kinds))
            ch.snr_db = float(r.uniform(*cfg.snr_db))
    if cfg.band:
        r = channel_rng(seed, index, "band")
        if r.random() < cfg.band:
            ch.band = str(r.choice(cfg.bands))
    if cfg.level_db != (0.0, 0.0):
        ch.level_db = float(channel_rng(seed, index, "level").uniform(*cfg.level_db))
    if cfg.codec:
        r = channel_rng(seed, index, "codec")
        if r.random() < cfg.codec:
            ch.codec = str(r.choice(cfg.codecs))
            if ch.codec == "clip":  # clip at this fraction of the peak
                ch.codec_param = float(r.uniform(0.2, 0.6))
            elif ch.codec == "downsample":  # through this sample rate
                ch.codec_param = float(r.choice([8000.0, 11025.0]))
    return ch


# ---------------------------------------------------------------- voices


def _cepstral_envelope(mag: np.ndarray, n_fft: int, lifter: int) -> np.ndarray:
    """Smooth spectral envelope (F, N) of a magnitude spectrogram: the low quefrencies of its log."""
    cep = np.fft.irfft(np.log(mag + 1e-7), n=n_fft, axis=0)
    cep[lifter : n_fft - lifter + 1] = 0.0
    return np.exp(np.fft.rfft(cep, n=n_fft, axis=0).real)


def shift_voice(y: np.ndarray, semitones: float = 0.0, formant: float = 1.0, sr: int = SAMPLE_RATE,
                n_fft: int = 512, hop: int = 128, lifter: int = 24) -> np.ndarray:  # fmt: skip
    """A voice variant of ``y``: pitch moved by ``semitones``, formants scaled by ``formant``.

    Formants: resampling (``y`` played ``formant`` times faster: pitch, formants and duration all
    scale, ``len(y) / formant`` samples). Pitch: a phase-vocoder pitch shift (duration kept) by
    what is left (``2^(semitones/12) / formant``), which moves the formants too; they are put
    back frame by frame with the ratio of cepstral envelopes (before / after the shift, ``lifter``
    quefrency bins: 1.5 ms at 16 kHz, below the pitch period of any voice). A simple method:
    no PSOLA, some phasiness, which is part of the channel anyway.
    """
    import librosa

    y = np.asarray(y, np.float32)
    if formant != 1.0:
        y = resample(y, sr * formant, sr)
    ratio = 2.0 ** (semitones / 12.0) / formant
    if abs(ratio - 1.0) < 1e-4 or len(y) < n_fft:
        return y.astype(np.float32)
    shifted = librosa.effects.pitch_shift(y, sr=sr, n_steps=12.0 * math.log2(ratio), n_fft=n_fft, hop_length=hop)
    S0 = librosa.stft(y, n_fft=n_fft, hop_length=hop)
    S1 = librosa.stft(shifted, n_fft=n_fft, hop_length=hop)
    gain = _cepstral_envelope(np.abs(S0), n_fft, lifter) / _cepstral_envelope(np.abs(S1), n_fft, lifter)
    out = librosa.istft(S1 * np.clip(gain, 0.1, 10.0), hop_length=hop, n_fft=n_fft, length=len(y))
    return out.astype(np.float32)


# ---------------------------------------------------------------- after the motion


def active_power(y: np.ndarray, sr: int = SAMPLE_RATE, fps: float = 30.0, rel: float = 0.1) -> float:
    """Mean power of ``y`` over its active (speech) frames: 1/30 s frames whose RMS is above ``rel``
    x the 95th percentile of the frame RMS (the speech rule of :func:`realm.metrics.speech_offsets`).
    The speech level of an SNR; 0 for silence."""
    from realm.metrics import frame_rms

    rms = frame_rms(y, fps, sr)
    if len(rms) == 0 or np.percentile(rms, 95) <= 0:
        return 0.0
    on = rms > rel * np.percentile(rms, 95)
    return float(np.mean(rms[on] ** 2))


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS pink (1/f power) noise: white noise with its spectrum scaled by 1/sqrt(f)."""
    w = rng.standard_normal(n)
    f = np.fft.rfft(w)
    k = np.arange(len(f), dtype=np.float64)
    k[0] = 1.0
    x = np.fft.irfft(f / np.sqrt(k), n)
    return x / (x.std() + 1e-12)


def add_noise(speech: np.ndarray, noise: np.ndarray, snr_db: float, sr: int = SAMPLE_RATE) -> np.ndarray:
    """``speech`` plus ``noise`` scaled so that ``active_power(speech) / mean(noise^2)`` is ``snr_db``."""
    p_s = active_power(speech, sr)
    p_n = float(np.mean(np.asarray(noise, np.float64) ** 2))
    if p_s <= 0 or p_n <= 0:
        return np.asarray(speech, np.float32)
    scale = math.sqrt(p_s / (10 ** (snr_db / 10) * p_n))
    return (np.asarray(speech, np.float64) + scale * noise[: len(speech)]).astype(np.float32)


def reverb_ir(rt60: float, rng: np.random.Generator, drr_db: float = 0.0, sr: int = SAMPLE_RATE) -> np.ndarray:
    """A synthetic room impulse response: a unit direct path, then Gaussian noise whose amplitude
    decays 60 dB in ``rt60`` s (``exp(-ln(1000) t / rt60)``), scaled so that the direct energy is
    ``drr_db`` above the tail's, ``rt60`` s long."""
    n = max(2, int(rt60 * sr))
    t = np.arange(n) / sr
    h = rng.standard_normal(n) * np.exp(-math.log(1000.0) * t / rt60)
    h[0] = 0.0
    h *= math.sqrt(10 ** (-drr_db / 10) / np.sum(h[1:] ** 2))
    h[0] = 1.0
    return h


def reverberate(y: np.ndarray, ir: np.ndarray) -> np.ndarray:
    """``y`` in the room ``ir`` (direct path at sample 0: nothing moves), cut to ``len(y)``, at the
    same active power."""
    from scipy.signal import fftconvolve

    out = fftconvolve(np.asarray(y, np.float64), ir)[: len(y)]
    p0, p1 = active_power(y), active_power(out)
    return (out * (math.sqrt(p0 / p1) if p1 > 0 else 1.0)).astype(np.float32)


def band_limit(y: np.ndarray, band: str, sr: int = SAMPLE_RATE) -> np.ndarray:
    """``y`` through the Butterworth band ``band`` of :data:`BANDS` (order 4, forwards and
    backwards: zero phase, so speech does not move in time)."""
    from scipy.signal import butter, sosfiltfilt

    lo, hi = BANDS[band]
    if lo and hi:
        sos = butter(BAND_ORDER, [lo, hi], btype="bandpass", fs=sr, output="sos")
    elif hi:
        sos = butter(BAND_ORDER, hi, btype="lowpass", fs=sr, output="sos")
    else:
        sos = butter(BAND_ORDER, lo, btype="highpass", fs=sr, output="sos")
    return sosfiltfilt(sos, np.asarray(y, np.float64)).astype(np.float32)


def codec(y: np.ndarray, kind: str, param: float | None = None, sr: int = SAMPLE_RATE) -> np.ndarray:
    """A codec-like distortion: ``mulaw`` (8-bit mu-law, mu = 255), ``8bit`` (linear 8-bit),
    ``clip`` (at ``param`` x the peak), ``downsample`` (to ``param`` Hz and back)."""
    x = np.clip(np.asarray(y, np.float64), -1.0, 1.0)
    if kind == "mulaw":
        mu = 255.0
        c = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
        q = np.round((c + 1) / 2 * 255) / 255 * 2 - 1
        return (np.sign(q) * np.expm1(np.abs(q) * np.log1p(mu)) / mu).astype(np.float32)
    if kind == "8bit":
        return (np.clip(np.round(x * 128), -128, 127) / 128).astype(np.float32)
    if kind == "clip":
        t = float(param if param is not None else 0.5) * float(np.abs(x).max())
        return np.clip(x, -t, t).astype(np.float32)
    if kind == "downsample":
        low = resample(x.astype(np.float32), sr, float(param or 8000.0))
        back = resample(low, float(param or 8000.0), sr)
        out = np.zeros(len(x), np.float32)
        out[: min(len(x), len(back))] = back[: len(x)]
        return out
    raise ValueError(f"unknown codec {kind!r}; codecs: {', '.join(CODECS)}")


def apply_after(audio: np.ndarray, ch: ClipChannel, talker: Callable[[np.random.Generator, int], np.ndarray] | None = None) -> np.ndarray:
    """The after-the-motion part of clip ``ch``'s channel, in order: reverb, noise, band, level,
    codec; then clipped to [-1, 1]. ``talker(rng, n)``: ``n`` samples of another conversation
    (for babble noise: 3-6 of them, each at a random offset, are summed)."""
    y = np.asarray(audio, np.float32)
    n = len(y)
    if ch.reverb_rt60 is not None:
        y = reverberate(y, reverb_ir(ch.reverb_rt60, ch.rng("reverb", 1), ch.reverb_drr_db or 0.0))
    if ch.noise is not None:
        r = ch.rng("noise", 1)
        if ch.noise == "white":
            noise = r.standard_normal(n)
        elif ch.noise == "pink":
            noise = pink_noise(n, r)
        else:
            if talker is None:
                raise ValueError("babble noise needs other conversations (talker)")
            k = int(r.integers(3, 7))
            noise = np.zeros(n)
            for _ in range(k):
                other = np.asarray(talker(r, n), np.float64)[:n]
                noise[: len(other)] += np.roll(other, int(r.integers(0, max(1, len(other)))))
            ch.extra["babble_talkers"] = k
        y = add_noise(y, noise, float(ch.snr_db))
    if ch.band is not None:
        y = band_limit(y, ch.band)
    if ch.level_db != 0.0:
        y = (y * 10 ** (ch.level_db / 20)).astype(np.float32)
    if ch.codec is not None:
        y = codec(y, ch.codec, ch.codec_param)
    return np.clip(y, -1.0, 1.0).astype(np.float32)
