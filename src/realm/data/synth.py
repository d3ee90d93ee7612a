"""The synthetic reactive-dyads benchmark (DESIGN section 5).

A speaker talks in phrases and pauses; a listener reacts through a *known* causal process,
every reaction starting ``tau`` frames (default 8 = 267 ms, +-1 frame jitter) after its
trigger. Because the process is known, models can be checked for what they recovered (the
delay, the semantics, the identity style) and the best reachable score is measurable (the
"GT resample" floor: two independent listener realisations of the same speaker track).

Trigger -> reaction (listener, arkit58):

=====================  =======================================================================
pause after a phrase   nod (pitch dip-and-return, 1-2 cycles) with the identity's probability
positive word          smile (mouthSmile, cheekSquint; 250 ms ease-out ramp, hold 0.8-2 s,
                       decay); sometimes a laugh (jawOpen oscillation, head back)
negative word          concern (browInnerUp, mouthFrown, slow roll tilt)
question (rising end)  brow raise (browOuterUp, browInnerUp) and head roll tilt
pitch accent           small brow flash with the identity's probability
(always)               Poisson blinks (150-200 ms eyeBlink pulses; 10-20 / min by identity)
                       plus blinks after phrase ends; resting expression, OU head drift,
                       micro-motion
=====================  =======================================================================

A trigger's frame is the end of its word (a word's meaning is known once it is said) or the
end of the phrase (pause, question). A positive/negative word is said with its phrase's
emotional prosody, except in a fraction ``no_cue_fraction`` of phrases spoken neutrally, so
that only the word's meaning can trigger the reaction. Phrases are 0.2-1.0 s apart; with
``long_pause_fraction`` that fraction of the gaps are long silences (``long_pause_seconds``), where
the listener rests, blinks and drifts, and reacts to nothing but the pause's nod.

Splits: ``train``/``val``/``test`` share the listener identities and vocabulary;
``ood`` has unseen listener identities and positive/negative words never used elsewhere
(synonyms of training words). Every clip is generated from its own seed
(``(seed, clip index)``), so datasets are identical for a seed and can be made in parallel.

A randomised speaker channel (:mod:`realm.data.channel`, off by default) varies the voice,
speaking rate, level, background noise, room, band and codec of each clip's speech; see
:func:`generate`'s ``channel``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from realm.audio import SAMPLE_RATE, n_frames, n_samples_for
from realm.data.channel import ChannelConfig, ClipChannel, apply_after, draw
from realm.data.clip import Clip, Word, write_clip, write_index
from realm.data.speech import VOICES, Prosody, Voice, get_backend
from realm.io import atomic_dir
from realm.motion import ARKIT_BLENDSHAPES, NormStats, get_spec

log = logging.getLogger(__name__)

SPEC = get_spec("arkit58")
FPS = 30.0
BS = {name: i for i, name in enumerate(ARKIT_BLENDSHAPES)}
PITCH, YAW, ROLL = 52, 53, 54  # rotation columns (rad); pitch > 0 is the head tipping down
TX, TY, TZ = 55, 56, 57

# ---------------------------------------------------------------- vocabulary and grammar

#: Word categories. ``ood`` words are synonyms used only in the ood split.
VOCAB = {
    "positive": {
        "train": ["great", "wonderful", "amazing", "fantastic", "lovely", "brilliant", "happy",
                  "excellent", "delighted", "awesome", "perfect", "beautiful"],
        "ood": ["superb", "marvelous", "terrific", "splendid", "joyful", "magnificent"],
    },
    "negative": {
        "train": ["terrible", "awful", "sad", "horrible", "painful", "dreadful", "miserable",
                  "broken", "tragic", "upsetting"],
        "ood": ["devastating", "grim", "gloomy", "heartbreaking", "disastrous", "unbearable"],
    },
    "emphasis": ["really", "totally", "absolutely", "truly", "so"],
    "subject": ["my brother", "my friend", "the neighbours", "my boss", "our team", "my mother",
                "the teacher", "my cousin"],
    "place": ["market", "station", "office", "garden", "library", "beach", "museum", "kitchen"],
    "day": ["monday", "tuesday", "the weekend", "friday", "last night", "this morning"],
    "verb": ["visited", "painted", "fixed", "cleaned", "moved", "checked", "opened", "found"],
    "object": ["the car", "the fence", "the window", "the boxes", "the old chair", "the garage",
               "the letters", "the bicycle"],
    "qverb": ["see", "hear", "try", "read", "watch", "visit"],
    "noun": ["movie", "book", "concert", "new place", "game", "trip"],
}  # fmt: skip

TEMPLATES = {
    "positive": [
        "that was {emph} {pos}", "we had a {emph} {pos} time at the {place}",
        "{subject} said the news was {pos}", "the trip on {day} was {pos}",
        "honestly the {noun} was {emph} {pos}", "everything at the {place} looked {pos}",
    ],
    "negative": [
        "that was {emph} {neg}", "{subject} had a {neg} week",
        "the news on {day} was {emph} {neg}", "honestly the {noun} was {neg}",
        "the {place} looked {neg} after the storm",
    ],
    "neutral": [
        "{subject} went to the {place} on {day}", "then we {verb} {object}",
        "{subject} {verb} {object} on {day}", "after that we walked to the {place}",
        "so {subject} {verb} {object}", "it was {emph} busy at the {place}",
    ],
    "question": [
        "did you {qverb} the {noun}", "what did you think of the {noun}",
        "have you been to the {place}", "do you want to {qverb} it on {day}",
    ],
}  # fmt: skip

#: With ``shared_templates``: one template set for positive and negative phrases, so that only the
#: emotional word ({emo}: a positive or a negative word, by the phrase's kind) tells them apart.
SHARED_TEMPLATES = [
    "that was {emph} {emo}", "honestly the {noun} was {emph} {emo}", "the trip on {day} was {emo}",
    "everything at the {place} looked {emo}", "{subject} said the news was {emo}", "{subject} had a {emo} week",
]  # fmt: skip

EMOTION_PROSODY = {  # rate (length scale), pitch, gain
    "positive": (0.9, 1.08, 1.25),
    "neutral": (1.0, 1.0, 1.0),
    "negative": (1.18, 0.93, 0.75),
}


# ---------------------------------------------------------------- configuration


@dataclass
class SynthConfig:
    hours: float = 0.05
    seed: int = 0  # conversations and listener realisations
    identity_seed: int = 0  # listener identity styles: a new seed with the same identity seed gives
    #                         new conversations of the same listeners (an honest held-out set)
    backend: str = "piper"  # "piper" (real words) or "formant" (fast babble)
    clip_seconds: tuple[float, float] = (16.0, 24.0)
    tau: int = 8  # reaction delay in frames (8 = 267 ms at 30 fps)
    tau_jitter: int = 1  # +- frames per reaction
    tau_spread: int = 0  # identities draw their own tau in tau +- spread
    listener_samples: int = 2  # realisations per speaker track (>= 2 gives the GT-resample floor)
    n_identities: int = 8  # listeners of train/val/test
    n_ood_identities: int = 3  # unseen listeners of ood
    no_cue_fraction: float = 0.3
    emotional_fraction: float = 0.5  # phrases with a positive (3/5 of them) or negative (2/5) word; the rest neutral or questions
    shared_templates: bool = False  # positive and negative phrases from one template set: only the word tells them apart
    long_pause_fraction: float = 0.0  # gaps between phrases that are long silences (the speaker stops
    #   talking for long_pause_seconds), so that the data shows the listener in silence: resting, blinking,
    #   reacting to nothing. 0 = the benchmark's gaps only (0.2-1.0 s); the draws are then unchanged
    long_pause_seconds: tuple[float, float] = (3.0, 10.0)  # a long silence's length range
    split_fractions: tuple[float, float, float, float] = (0.7, 0.1, 0.1, 0.1)  # train, val, test, ood
    workers: int = 1

    def __post_init__(self):
        for name in ("no_cue_fraction", "emotional_fraction", "long_pause_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name.replace('_', '-')} must be between 0 and 1, got {getattr(self, name)}")
        lo, hi = self.long_pause_seconds = tuple(self.long_pause_seconds)
        if not 0.2 <= lo <= hi:
            raise ValueError(f"long-pause-seconds must be LO HI with 0.2 <= LO <= HI, got {lo} {hi}")

    def n_clips(self) -> int:
        mean = sum(self.clip_seconds) / 2
        return max(4, int(math.ceil(self.hours * 3600 / mean)))


@dataclass
class Identity:
    """A listener's style: what the IN/AdaIN VQ-VAE must separate from content."""

    listener_id: str
    rest: dict[str, float]  # resting blendshape offsets
    rest_pose: tuple[float, float, float]  # resting pitch, yaw, roll (rad)
    gain: float  # expressivity
    nod_amp: float  # rad
    nod_prob: float
    blink_rate: float  # per minute
    smile_prob: float
    flash_prob: float
    tau: int

    @classmethod
    def sample(cls, listener_id: str, rng: np.random.Generator, cfg: SynthConfig) -> Identity:
        rest = {
            "mouthSmileLeft": rng.uniform(0, 0.15), "browInnerUp": rng.uniform(0, 0.12),
            "eyeSquintLeft": rng.uniform(0, 0.15), "mouthFrownLeft": rng.uniform(0, 0.1),
            "eyeWideLeft": rng.uniform(0, 0.1), "jawOpen": rng.uniform(0, 0.05),
            "mouthPressLeft": rng.uniform(0, 0.1), "browDownLeft": rng.uniform(0, 0.1),
        }  # fmt: skip
        for k in list(rest):  # symmetric faces
            if k.endswith("Left"):
                rest[k[:-4] + "Right"] = rest[k]
        return cls(
            listener_id=listener_id,
            rest={k: float(v) for k, v in rest.items()},
            rest_pose=tuple(float(v) for v in rng.uniform([-0.06, -0.08, -0.05], [0.06, 0.08, 0.05])),
            gain=float(rng.uniform(0.6, 1.4)),
            nod_amp=float(rng.uniform(0.04, 0.12)),
            nod_prob=float(rng.uniform(0.3, 0.9)),
            blink_rate=float(rng.uniform(10, 20)),
            smile_prob=float(rng.uniform(0.85, 1.0)),
            flash_prob=float(rng.uniform(0.2, 0.5)),
            tau=int(cfg.tau + (rng.integers(-cfg.tau_spread, cfg.tau_spread + 1) if cfg.tau_spread else 0)),
        )


def identities(cfg: SynthConfig) -> tuple[list[Identity], list[Identity]]:
    """The in-distribution and the ood listener identities (a function of ``identity_seed`` only)."""
    ids = [
        Identity.sample(f"lis{k}", np.random.default_rng([cfg.identity_seed, 1, k]), cfg)
        for k in range(cfg.n_identities)
    ]
    ood = [
        Identity.sample(f"ood{k}", np.random.default_rng([cfg.identity_seed, 2, k]), cfg)
        for k in range(cfg.n_ood_identities)
    ]
    return ids, ood


def split_plan(cfg: SynthConfig) -> list[str]:
    """The split of each clip index: every split gets at least one clip."""
    n = cfg.n_clips()
    counts = [max(1, int(round(f * n))) for f in cfg.split_fractions]
    counts[0] = max(1, n - sum(counts[1:]))
    return [s for s, c in zip(("train", "val", "test", "ood"), counts, strict=True) for _ in range(c)]


# ---------------------------------------------------------------- the speaker's conversation


@dataclass
class Phrase:
    words: list[str]
    categories: list[str]  # per word: positive / negative / emphasis / question / other
    emotion: str
    kind: str  # positive / negative / neutral / question
    cue: bool  # spoken with its emotion's prosody


def make_phrase(rng: np.random.Generator, vocab_split: str, cfg: SynthConfig) -> Phrase:
    f = cfg.emotional_fraction  # 0.5: [0.3, 0.2, 0.35, 0.15], the benchmark's mix (halving is exact in binary)
    kind = rng.choice(["positive", "negative", "neutral", "question"], p=[0.6 * f, 0.4 * f, 0.7 * (1 - f), 0.3 * (1 - f)])
    shared = cfg.shared_templates and kind in ("positive", "negative")
    template = str(rng.choice(SHARED_TEMPLATES if shared else TEMPLATES[kind]))
    if shared:
        template = template.replace("{emo}", "{pos}" if kind == "positive" else "{neg}")
    words, cats = [], []
    for token in template.split():
        if token.startswith("{"):
            slot = token.strip("{}")
            if slot == "emph":
                if rng.random() < 0.5:
                    words.append(str(rng.choice(VOCAB["emphasis"])))
                    cats.append("emphasis")
                continue
            if slot in ("pos", "neg"):
                cat = "positive" if slot == "pos" else "negative"
                words.append(str(rng.choice(VOCAB[cat][vocab_split])))
                cats.append(cat)
                continue
            for w in str(rng.choice(VOCAB[slot])).split():
                words.append(w)
                cats.append("other")
        else:
            words.append(token)
            cats.append("other")
    emotion = kind if kind in ("positive", "negative") else "neutral"
    cue = not (emotion != "neutral" and rng.random() < cfg.no_cue_fraction)
    if kind == "question":
        cats[-1] = "question"
    return Phrase(words, cats, emotion, str(kind), cue)


def speak(
    phrases_rng: np.random.Generator, backend, voice: Voice, duration: float, vocab_split: str, cfg: SynthConfig,
    channel: ClipChannel | None = None,
):
    """Lay out phrases and pauses over ``duration`` s; return audio (16 kHz), words, triggers, phrases.

    ``channel``: the clip's randomised channel; its speaking rate (``speed``: words and the gaps
    between them 1/speed as long; pauses between phrases kept) and voice act here, word by word,
    so the words' times are those of the audio.
    """
    rng = phrases_rng
    speed = 1.0 if channel is None else channel.speed
    pieces: list[tuple[int, np.ndarray]] = []
    words: list[Word] = []
    triggers: list[dict] = []
    phrases: list[dict] = []
    t = rng.uniform(0.2, 0.6)
    while True:
        ph = make_phrase(rng, vocab_split, cfg)
        rate, pitch, gain = EMOTION_PROSODY[ph.emotion if ph.cue else "neutral"]
        start_phrase = t
        clip_words: list[tuple[float, float, str, str]] = []
        audio_words = []
        cursor = t
        for i, (w, cat) in enumerate(zip(ph.words, ph.categories, strict=True)):
            pros = Prosody(
                rate=rate / speed,
                pitch=pitch,
                gain=gain * (1.5 if cat == "emphasis" else 1.0),
                rising=(cat == "question"),
                accent=(cat == "emphasis"),
            )
            y = backend.word(w, voice, pros, rng)
            if channel is not None:
                y = channel.voice(y)
            audio_words.append((cursor, y))
            clip_words.append((cursor, cursor + len(y) / SAMPLE_RATE, w, cat))
            cursor += len(y) / SAMPLE_RATE + (rng.uniform(0.03, 0.08) / speed if i < len(ph.words) - 1 else 0.0)
        if cursor > duration - 0.3:  # the phrase does not fit: end the conversation with silence
            break
        for start, y in audio_words:
            pieces.append((int(round(start * SAMPLE_RATE)), y))
        for start, end, w, cat in clip_words:
            words.append(Word(w, start, end))
            if cat in ("positive", "negative", "emphasis"):
                triggers.append(
                    {"kind": {"emphasis": "accent"}.get(cat, cat), "time": round(end, 4), "word": w,
                     "cue": bool(ph.cue) if cat != "emphasis" else True}
                )  # fmt: skip
        end_phrase = cursor
        if ph.kind == "question":
            triggers.append({"kind": "question", "time": round(end_phrase, 4), "word": ph.words[-1], "cue": True})
        triggers.append({"kind": "pause", "time": round(end_phrase, 4), "word": "", "cue": True})
        phrases.append(
            {"start": round(start_phrase, 4), "end": round(end_phrase, 4), "emotion": ph.emotion,
             "kind": ph.kind, "cue": ph.cue, "text": " ".join(ph.words) + ("?" if ph.kind == "question" else "")}
        )  # fmt: skip
        gap = rng.uniform(0.2, 1.0)
        if cfg.long_pause_fraction > 0 and rng.random() < cfg.long_pause_fraction:  # no draw at 0: datasets unchanged
            gap = rng.uniform(*cfg.long_pause_seconds)
        t = end_phrase + gap
    T = n_frames(int(duration * SAMPLE_RATE))
    audio = np.zeros(n_samples_for(T), np.float32)
    for start, y in pieces:
        seg = audio[start : start + len(y)]
        seg += y[: len(seg)]
    for tr in triggers:
        tr["frame"] = int(math.floor(tr["time"] * FPS))
    triggers.sort(key=lambda d: (d["frame"], d["kind"]))
    return audio, words, triggers, phrases, T


# ---------------------------------------------------------------- motion primitives


def ease_envelope(T: int, onset: float, ramp: float, hold: float, decay: float) -> np.ndarray:
    """0 before ``onset`` (frames), ease-out rise over ``ramp``, hold, cosine decay; (T,)."""
    t = np.arange(T, dtype=np.float64) - onset
    env = np.zeros(T)
    rise = (t > 0) & (t < ramp)
    env[rise] = 1 - (1 - t[rise] / ramp) ** 2
    env[(t >= ramp) & (t < ramp + hold)] = 1.0
    fall = (t >= ramp + hold) & (t < ramp + hold + decay)
    env[fall] = 0.5 * (1 + np.cos(np.pi * (t[fall] - ramp - hold) / decay))
    return env


def pulse(T: int, start_s: float, dur_s: float) -> np.ndarray:
    """A sin^2 bump from ``start_s`` lasting ``dur_s`` seconds, sampled at frame times (0 outside)."""
    t = np.arange(T) / FPS - start_s
    inside = (t > 0) & (t < dur_s)
    out = np.zeros(T)
    out[inside] = np.sin(np.pi * t[inside] / dur_s) ** 2
    return out


def ou_process(rng: np.random.Generator, T: int, dims: int, theta: float, sigma: float) -> np.ndarray:
    """Ornstein-Uhlenbeck drift sampled at the frame rate (stationary std = sigma)."""
    dt = 1 / FPS
    a = math.exp(-theta * dt)
    noise = rng.standard_normal((T, dims)) * sigma * math.sqrt(1 - a * a)
    x = np.zeros((T, dims))
    x[0] = rng.standard_normal(dims) * sigma
    for t in range(1, T):
        x[t] = a * x[t - 1] + noise[t]
    return x


def smooth_noise(rng: np.random.Generator, T: int, dims: int, sigma: float, width: float = 3.0) -> np.ndarray:
    from scipy.ndimage import gaussian_filter1d

    x = gaussian_filter1d(rng.standard_normal((T, dims)), width, axis=0)
    return x / (x.std() + 1e-9) * sigma


def _add(m: np.ndarray, names, env: np.ndarray, amp: float) -> None:
    for n in names:
        m[:, BS[n]] += amp * env


# ---------------------------------------------------------------- the listener's ground-truth process


def listener_motion(
    rng: np.random.Generator, ident: Identity, triggers: list[dict], T: int, cfg: SynthConfig
) -> tuple[np.ndarray, list[dict]]:
    """One realisation of the listener's reactions to ``triggers``; returns (T, 58) and the reactions."""
    m = np.zeros((T, SPEC.dim))
    for name, v in ident.rest.items():
        m[:, BS[name]] = v
    m[:, PITCH : ROLL + 1] = ident.rest_pose
    m[:, PITCH : ROLL + 1] += ou_process(rng, T, 3, theta=0.4, sigma=0.025)
    m[:, TX : TZ + 1] += ou_process(rng, T, 3, theta=0.3, sigma=0.004)
    m[:, :52] += smooth_noise(rng, T, 52, 0.004)
    g = ident.gain
    reactions: list[dict] = []
    smile = np.zeros(T)  # overlapping smiles (and concerns) combine by maximum, not by sum
    concern = np.zeros(T)
    smile_until = -1.0
    concern_until = -1.0

    def onset_of(tr) -> int:
        return tr["frame"] + ident.tau + int(rng.integers(-cfg.tau_jitter, cfg.tau_jitter + 1))

    for ti, tr in enumerate(triggers):
        kind = tr["kind"]
        if kind == "positive":
            if rng.random() > ident.smile_prob:
                continue
            on = onset_of(tr)
            ramp, hold, decay = 0.25 * FPS, rng.uniform(0.8, 2.0) * FPS, 0.5 * FPS
            visible = on > smile_until  # else it prolongs (or strengthens) the smile already shown
            smile = np.maximum(smile, rng.uniform(0.35, 0.7) * g * ease_envelope(T, on, ramp, hold, decay))
            smile_until = max(smile_until, on + ramp + hold + decay)
            reactions.append({"kind": "smile", "frame": on, "trigger": ti, "visible_onset": bool(visible)})
            if rng.random() < 0.15:  # a laugh
                dur = rng.uniform(0.6, 1.0)
                t = (np.arange(T) - on - 3) / FPS
                inside = (t > 0) & (t < dur)
                osc = np.zeros(T)
                osc[inside] = np.sin(np.pi * t[inside] / dur) * (0.6 + 0.4 * np.sin(2 * np.pi * 5 * t[inside]))
                m[:, BS["jawOpen"]] += 0.35 * g * osc
                m[:, PITCH] -= 0.06 * g * osc
                reactions.append({"kind": "laugh", "frame": on + 3, "trigger": ti, "visible_onset": True})
        elif kind == "negative":
            on = onset_of(tr)
            ramp, hold, decay = 0.4 * FPS, rng.uniform(1.0, 2.0) * FPS, 0.6 * FPS
            env = ease_envelope(T, on, ramp, hold, decay)
            concern = np.maximum(concern, rng.uniform(0.3, 0.6) * g * env)
            m[:, ROLL] += env * rng.choice([-1, 1]) * rng.uniform(0.04, 0.09) * g
            reactions.append({"kind": "concern", "frame": on, "trigger": ti, "visible_onset": bool(on > concern_until)})
            concern_until = max(concern_until, on + ramp + hold + decay)
        elif kind == "question":
            on = onset_of(tr)
            env = ease_envelope(T, on, 0.2 * FPS, rng.uniform(0.6, 1.0) * FPS, 0.4 * FPS)
            amp = rng.uniform(0.3, 0.5) * g
            _add(m, ["browOuterUpLeft", "browOuterUpRight"], env, amp)
            _add(m, ["browInnerUp"], env, 0.6 * amp)
            m[:, ROLL] += env * rng.choice([-1, 1]) * rng.uniform(0.04, 0.08) * g
            reactions.append({"kind": "brow_raise", "frame": on, "trigger": ti, "visible_onset": True})
        elif kind == "accent":
            if rng.random() > ident.flash_prob:
                continue
            on = onset_of(tr)
            env = ease_envelope(T, on, 0.1 * FPS, 0.15 * FPS, 0.15 * FPS)
            _add(m, ["browInnerUp", "browOuterUpLeft", "browOuterUpRight"], env, 0.2 * g)
            reactions.append({"kind": "brow_flash", "frame": on, "trigger": ti, "visible_onset": True})
        elif kind == "pause":
            if rng.random() < ident.nod_prob:
                on = onset_of(tr)
                cycles = int(rng.integers(1, 3))
                period = rng.uniform(0.5, 0.7) * FPS
                t = np.arange(T) - on
                nod = np.zeros(T)
                for c in range(cycles):
                    seg = (t > c * period) & (t <= (c + 1) * period)
                    nod[seg] = (0.7**c) * 0.5 * (1 - np.cos(2 * np.pi * (t[seg] - c * period) / period))
                m[:, PITCH] += ident.nod_amp * g * nod
                reactions.append({"kind": "nod", "frame": on, "trigger": ti, "visible_onset": True})
            if rng.random() < 0.4:  # blink after a phrase end
                on = onset_of(tr)
                reactions.append(_blink(m, T, on / FPS + rng.uniform(0, 0.1), rng, ti))
    _add(m, ["mouthSmileLeft", "mouthSmileRight"], smile, 1.0)
    _add(m, ["cheekSquintLeft", "cheekSquintRight"], smile, 0.6)
    _add(m, ["eyeSquintLeft", "eyeSquintRight"], smile, 0.25)
    _add(m, ["browInnerUp"], concern, 1.0)
    _add(m, ["mouthFrownLeft", "mouthFrownRight"], concern, 0.7)
    # spontaneous blinks: a Poisson process at the identity's rate, at least 0.3 s apart
    t = rng.exponential(60 / ident.blink_rate)
    while t < T / FPS - 0.2:
        reactions.append(_blink(m, T, t, rng, None))
        t += max(0.3, rng.exponential(60 / ident.blink_rate))
    m[:, :52] = np.clip(m[:, :52], 0.0, 1.0)
    reactions.sort(key=lambda r: r["frame"])
    return m.astype(np.float32), reactions


def _blink(m: np.ndarray, T: int, start_s: float, rng: np.random.Generator, trigger) -> dict:
    dur = float(rng.uniform(0.15, 0.2))
    p = pulse(T, start_s, dur)
    amp = rng.uniform(0.9, 1.0)
    m[:, BS["eyeBlinkLeft"]] = np.maximum(m[:, BS["eyeBlinkLeft"]], amp * p)
    m[:, BS["eyeBlinkRight"]] = np.maximum(m[:, BS["eyeBlinkRight"]], amp * p)
    return {
        "kind": "blink", "frame": int(math.floor(start_s * FPS)) + 1, "trigger": trigger,
        "visible_onset": True, "start": round(start_s, 4), "duration": round(dur, 4),
    }  # fmt: skip


# ---------------------------------------------------------------- the speaker's own motion


def speaker_motion(
    rng: np.random.Generator, audio: np.ndarray, T: int, triggers: list[dict], phrases: list[dict]
) -> np.ndarray:
    """Speaker arkit58: jaw/lips follow the speech envelope, nods on accents, smiles on positive phrases."""
    from scipy.ndimage import gaussian_filter1d

    m = np.zeros((T, SPEC.dim))
    hop = SAMPLE_RATE / FPS
    edges = np.floor(np.arange(T + 1) * hop).astype(int)
    env = np.array([np.sqrt(np.mean(audio[edges[i] : edges[i + 1]] ** 2) + 1e-12) for i in range(T)])
    env = gaussian_filter1d(env / (np.percentile(env, 95) + 1e-6), 1.0)
    m[:, BS["jawOpen"]] = np.clip(0.55 * env, 0, 1)
    m[:, BS["mouthLowerDownLeft"]] = m[:, BS["mouthLowerDownRight"]] = np.clip(0.3 * env, 0, 1)
    m[:, BS["mouthFunnel"]] = np.clip(0.25 * env * (0.5 + 0.5 * np.sin(np.arange(T) / 2.3)), 0, 1)
    m[:, :52] += smooth_noise(rng, T, 52, 0.01, width=2.0)
    m[:, PITCH : ROLL + 1] += ou_process(rng, T, 3, theta=0.5, sigma=0.06)
    m[:, TX : TZ + 1] += ou_process(rng, T, 3, theta=0.4, sigma=0.01)
    for tr in triggers:
        if tr["kind"] == "accent":
            e = ease_envelope(T, tr["frame"] - 4, 3, 2, 5)
            m[:, PITCH] += 0.06 * e
            m[:, BS["browInnerUp"]] += 0.3 * e
    for ph in phrases:
        a, b = int(ph["start"] * FPS), int(ph["end"] * FPS)
        if ph["emotion"] == "positive" and ph["cue"]:
            e = ease_envelope(T, a, 6, max(1, b - a), 9)
            m[:, BS["mouthSmileLeft"]] += 0.4 * e
            m[:, BS["mouthSmileRight"]] += 0.4 * e
        elif ph["emotion"] == "negative" and ph["cue"]:
            e = ease_envelope(T, a, 6, max(1, b - a), 9)
            m[:, BS["browInnerUp"]] += 0.3 * e
            m[:, BS["mouthFrownLeft"]] += 0.3 * e
            m[:, BS["mouthFrownRight"]] += 0.3 * e
    blink_t = rng.exponential(3.0)
    while blink_t < T / FPS - 0.2:
        p = pulse(T, blink_t, rng.uniform(0.15, 0.2))
        m[:, BS["eyeBlinkLeft"]] = np.maximum(m[:, BS["eyeBlinkLeft"]], p)
        m[:, BS["eyeBlinkRight"]] = np.maximum(m[:, BS["eyeBlinkRight"]], p)
        blink_t += max(0.3, rng.exponential(3.0))
    m[:, :52] = np.clip(m[:, :52], 0, 1)
    return m.astype(np.float32)


# ---------------------------------------------------------------- one clip, the whole dataset

_BACKENDS: dict[str, object] = {}  # one loaded backend per process


def _backend(name: str):
    if name not in _BACKENDS:
        _BACKENDS[name] = get_backend(name)
    return _BACKENDS[name]


def make_clip(
    index: int, split: str, cfg: SynthConfig, channel: ChannelConfig | None = None
) -> tuple[Clip, np.ndarray, dict]:
    """Generate clip ``index`` (deterministic in (cfg.seed, index)); returns the clip, its audio and extras.

    ``channel``: the randomised speaker channel (:mod:`realm.data.channel`); off (None, or all
    knobs off) leaves the clip exactly as without it. Its voice, espeak-ng and rate knobs act
    while the words are said (before the motion: the listener reacts to the words' new times);
    reverb, noise, band, level and codec act on the finished audio only (the speaker's face
    follows the clean speech). What it drew goes into the event log, key ``channel``.
    """
    rng = np.random.default_rng([cfg.seed, 0, index])
    ids, ood_ids = identities(cfg)
    ident = (ood_ids if split == "ood" else ids)[int(rng.integers(len(ood_ids if split == "ood" else ids)))]
    voice = VOICES[int(rng.integers(len(VOICES)))]
    duration = float(rng.uniform(*cfg.clip_seconds))
    vocab_split = "ood" if split == "ood" else "train"
    ch = draw(channel, cfg.seed, index) if channel is not None and channel.active() else None
    backend = _backend(cfg.backend)
    speaker_id = voice.name
    if ch is not None and ch.espeak_voice is not None:
        backend = _backend(f"espeak:{ch.espeak_voice}")
        speaker_id = f"espeak:{ch.espeak_voice}"
    audio, words, triggers, phrases, T = speak(rng, backend, voice, duration, vocab_split, cfg, channel=ch)
    speaker = speaker_motion(rng, audio, T, triggers, phrases)
    samples, logs = [], []
    for k in range(cfg.listener_samples):
        lrng = np.random.default_rng([cfg.seed, 3, index, k])
        motion, reactions = listener_motion(lrng, ident, triggers, T, cfg)
        samples.append(motion)
        logs.append(reactions)
    emotions = [p["emotion"] for p in phrases]
    dominant = max(("positive", "negative", "neutral"), key=emotions.count) if emotions else "neutral"
    events = {
        "tau": ident.tau, "fps": FPS, "triggers": triggers, "reactions": logs[0],
        "reactions_per_sample": logs, "phrases": phrases,
    }  # fmt: skip
    if ch is not None:  # after the motion: the audio changes, nothing moves in time
        audio = apply_after(audio, ch, talker=lambda r, n: _talker(r, n, cfg, vocab_split))
        events["channel"] = ch.record()
    clip = Clip(
        clip_id=f"{split}_{index:05d}",
        split=split,
        listener=samples[0],
        spec="arkit58",
        fps=FPS,
        speaker=speaker,
        speaker_spec="arkit58",
        speaker_id=speaker_id,
        listener_id=ident.listener_id,
        emotion=dominant,
        words=words,
        events=events,
        listener_samples=np.stack(samples),
    )
    return clip, audio, {"identity": asdict(ident)}


def _talker(rng: np.random.Generator, n: int, cfg: SynthConfig, vocab_split: str) -> np.ndarray:
    """``n`` samples of another conversation (a random voice of the dataset's backend): babble."""
    voice = VOICES[int(rng.integers(len(VOICES)))]
    return speak(rng, _backend(cfg.backend), voice, n / SAMPLE_RATE + 0.5, vocab_split, cfg)[0][:n]


def _make_and_write(args) -> dict:
    index, split, cfg, root, channel = args
    import soundfile as sf

    clip, audio, _ = make_clip(index, split, cfg, channel=channel)
    apath = Path(root) / "audio" / f"{clip.clip_id}.wav"
    apath.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(apath), audio, SAMPLE_RATE, subtype="PCM_16")
    clip.audio_path = apath
    return write_clip(Path(root), clip)


@dataclass
class SynthResult:
    out: Path
    n_clips: int
    hours: float
    rows: list[dict] = field(default_factory=list)


def generate(
    cfg: SynthConfig, out: str | Path, force: bool = False, progress: Callable[[int, int], None] | None = None,
    channel: ChannelConfig | None = None,
) -> SynthResult:
    """Write a synthetic dataset to ``out`` in our layout. Nothing is left behind if it fails.

    ``channel``: the randomised speaker channel (:class:`realm.data.channel.ChannelConfig`); when
    any knob is on, ``meta.json``'s ``config`` gets a ``channel`` entry with its settings (a dataset
    without it has the clean channel and is bit-identical to one made before the channel existed).
    """
    out = Path(out)
    plan = split_plan(cfg)
    channel = channel if channel is not None and channel.active() else None
    if channel is not None:
        channel.check_installed()
    with atomic_dir(out, force=force) as tmp:
        jobs = [(i, split, cfg, tmp, channel) for i, split in enumerate(plan)]
        rows: list[dict] = []
        workers = max(1, min(cfg.workers, os.cpu_count() or 1, len(jobs)))
        if workers == 1:
            for j in jobs:
                rows.append(_make_and_write(j))
                if progress:
                    progress(len(rows), len(jobs))
        else:
            with ProcessPoolExecutor(workers) as pool:
                for row in pool.map(_make_and_write, jobs):
                    rows.append(row)
                    if progress:
                        progress(len(rows), len(jobs))
        from realm.data.clip import load_clip

        train = [load_clip(tmp, r).samples().reshape(-1, SPEC.dim) for r in rows if r["split"] == "train"]
        NormStats.fit(train, spec="arkit58").save(tmp / "stats.npz")
        ids, ood = identities(cfg)
        config = asdict(cfg)
        if channel is not None:
            config["channel"] = asdict(channel)
        meta = {
            "generator": "realm.data.synth", "config": config, "spec": "arkit58", "fps": FPS,
            "sample_rate": SAMPLE_RATE, "identities": [asdict(i) for i in ids + ood],
            "vocabulary": {"positive": VOCAB["positive"], "negative": VOCAB["negative"]},
        }  # fmt: skip
        write_index(tmp, rows, meta)
    hours = sum(float(r["duration"]) for r in rows) / 3600
    log.info("wrote %d clips (%.3f h) to %s", len(rows), hours, out)
    return SynthResult(out, len(rows), hours, rows)
