"""The multimodal-LM listener at run time: offline generation (:class:`MMLMListener.generate`, the
baselines' :class:`~realm.models.baselines.base.BaselineListener`) and streaming
(:class:`LMStreamer`): audio chunks and the speaker's words as they are recognised in, motion out.

    listener = realm.load("checkpoints/mmlm-demo")
    s = listener.streamer(seed=0)
    frames = s.push(chunk, words=[Word("great", 1.20, 1.52)])   # (n, D), n a multiple of 8 or 0
    frames = s.flush()

Each motion token (8 frames) is decoded as soon as the audio of its 8 frames (plus the feature
extractor's look-ahead) is in, from the acoustic state and emotion at its last frame and the
words known by then (:class:`realm.models.mmlm.TokenDecoder`, with its key/value cache; a word
recognised after its place in the cached sequence rebuilds the cache). A token's frames are
decoded from the ``decode_window`` tokens ending ``decode_lookahead`` tokens after it
(:meth:`MMLM.decode_span`, :meth:`MMLM.decode_token`; the IDVQ decoder's instance norms and convolutions read both sides),
so **algorithmic latency** = (1 + lookahead) tokens + the extractor's look-ahead: 800 + 25 ms
with the defaults (lookahead 2, logmel features). With ``decode_window`` > 0 in the checkpoint's
config, offline generation decodes the same way and streaming gives the offline frames (tested);
with the default 0 offline decodes the whole clip at once, and the two differ by the instance
norms' statistics (measured in docs/mmlm.md). Words must reach the streamer before the token
after them is decoded to count where offline generation counts them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from realm.errors import RealmInputError
from realm.generate import FeatureFeed
from realm.models.baselines.base import BaselineListener
from realm.models.mmlm import FRAMES_PER_TOKEN, TokenDecoder

__all__ = ["LMStreamer", "MMLMListener"]


@dataclass
class MMLMListener(BaselineListener):
    """The mmlm's loaded run: the baselines' listener, plus streaming."""

    streams: ClassVar[bool] = True

    def streamer(self, seed: int = 0, sample: int = 0, refine: bool = True, clamp: bool = True, identity_ref=None,
                 history=None, temperature=None, top_p=None) -> LMStreamer:  # fmt: skip
        """A :class:`LMStreamer` (``refine`` is REALM's and ignored here)."""
        try:
            return LMStreamer(self, seed, sample, clamp, identity_ref, history, temperature, top_p)
        except ValueError as e:
            raise RealmInputError(self.path, str(e)) from None


class LMStreamer:
    """Streaming generation of the multimodal-LM listener: ``push(chunk, words=None)`` 16 kHz mono
    chunks of any size and the words recognised since (:class:`realm.data.clip.Word`, times in
    seconds from the start of the stream); frames come out a token (8 frames) at a time."""

    def __init__(self, listener: MMLMListener, seed: int = 0, sample: int = 0, clamp: bool = True, identity_ref=None,
                 history=None, temperature=None, top_p=None):  # fmt: skip
        m = listener.model.eval()
        self.listener, self.m, self.clamp = listener, m, clamp
        self.feed = FeatureFeed(listener.extractor, listener.fps)
        self.ex = self.feed.ex
        self.W = FRAMES_PER_TOKEN  # frames a step gives (serve reports it as the window)
        self.la = m.config.decode_lookahead
        self.dec = TokenDecoder(m, 1, seed, temperature, top_p, first_sample=sample)
        with torch.inference_mode():
            self.ref = m._reference(listener._motion(identity_ref, "identity_ref"), listener._motion(history, "history"))
        self.words: list = []
        self.overlay = np.zeros((0, m.spec.dim), np.float32)  # blinks drawn on frames [obase, ...) (normalised units)
        self.obase = 0
        self.emitted = 0  # tokens whose frames were given out
        self.done = False

    @property
    def latency_s(self) -> float:
        """Algorithmic latency of a token's first frame (seconds)."""
        return FRAMES_PER_TOKEN * (1 + self.la) / self.listener.fps + self.ex.ahead / 16000

    def add_words(self, words) -> None:
        """Words recognised since the last call (in the order offline generation would list them)."""
        self.words.extend(words or [])

    def push(self, chunk: np.ndarray, words=None) -> np.ndarray:
        if self.done:
            raise RuntimeError("the stream was flushed; start a new streamer")
        self.feed.push(chunk)
        self.add_words(words)
        while self.feed.ready(FRAMES_PER_TOKEN * (self.dec.n + 1)):
            self._decode(final=False)
        return self._emit(final=False)

    def flush(self) -> np.ndarray:
        n = -(-self.feed.frames // FRAMES_PER_TOKEN)
        while self.dec.n < n:
            self._decode(final=True)
        self.done = True
        return self._emit(final=True)

    @torch.inference_mode()
    def _decode(self, final: bool) -> None:
        """Decode token j from the features of its last frame and the lookback before it."""
        m, f, j = self.m, FRAMES_PER_TOKEN, self.dec.n
        end = f * (j + 1)  # frames [8 j, 8 j + 8); past the audio's end the last frame is held, as offline
        last = min(end, self.feed.frames)
        first = max(0, end - 1 - m.audio_lookback)
        feats = self.listener.feature_stats.apply(self.feed.raw(first, last, final)).astype(np.float32)
        if last < end:
            feats = np.concatenate([feats, np.repeat(feats[-1:], end - last, 0)])
        self.dec.step(m.slot_feature_at(torch.from_numpy(feats)[None]), self.words)
        self.feed.forget(max(0, end - m.audio_lookback))
        if m.blinks:  # this token's blink, drawn from its onset on (the template may outrun the frames decoded)
            c = self.dec.blinks[0][j]
            t = m.blink_template.numpy()
            onset = f * j + c - 1
            need = max(f * (j + 1), onset + len(t) if c > 0 else 0) - self.obase
            if len(self.overlay) < need:
                self.overlay = np.concatenate([self.overlay, np.zeros((need - len(self.overlay), m.spec.dim), np.float32)])
            if c > 0:
                self.overlay[onset - self.obase : onset - self.obase + len(t)] += t

    @torch.inference_mode()
    def _emit(self, final: bool) -> np.ndarray:
        m, f = self.m, FRAMES_PER_TOKEN
        n = self.dec.n
        out = []
        while self.emitted < n and (final or self.emitted + self.la < n):
            e = self.emitted
            lo, hi = m.decode_span(e, n)
            span = torch.tensor([self.dec.tokens[0][lo:hi]])  # (1, hi - lo): only the tokens it reads
            y = m.decode_token(span, self.ref, e - lo)[0].numpy()  # (8, D)
            if m.blinks:
                y = y + self.overlay[f * e - self.obase : f * e + f - self.obase]
            out.append(y)
            self.emitted += 1
        if m.blinks and self.emitted * f > self.obase:  # forget the frames given out
            self.overlay, self.obase = self.overlay[self.emitted * f - self.obase :], self.emitted * f
        if not out:
            return np.zeros((0, m.spec.dim), np.float32)
        frames = np.concatenate(out)
        if final:
            frames = frames[: max(0, self.feed.frames - f * (self.emitted - len(out)))]
        frames = self.listener.stats.invert(frames).astype(np.float32)
        return self.m.spec.clamp(frames) if self.clamp else frames
