"""Live listening: a WebSocket server from speech audio to listener frames and robot controls.

    realm serve --checkpoint RUN [--profile ameca] [--host 127.0.0.1] [--port 8765] [--token T]
    realm listen --server ws://127.0.0.1:8765 --audio speech.wav --realtime --out heard.npz

One connection is one listener. Protocol version 1 (docs/serving.md has the full text):

**Client -> server**

* Text messages are JSON control messages with a ``type``:

  - ``{"type": "config", ...options}``: set options for the next stream (only between streams);
    answered by ``{"type": "config", "options": {...}}``.
  - ``{"type": "start", ...options}``: begin a stream; answered by ``{"type": "ready", ...}``
    (fps, spec and value names, control names, window, algorithmic latency, limits).
  - ``{"type": "words", "words": [{"word", "start", "end"}, ...]}``: the speaker's words as they are
    recognised (seconds from the start of the stream), for listeners that read words (the mmlm);
    each counts from the next model call on (docs/serving.md).
  - ``{"type": "stop"}``: end the stream; the server sends the remaining frames, then
    ``{"type": "end", "frames", "dropped", "late", "chunks", "audio_s", "held", "compute_ms_p50",
    "compute_ms_p95"}`` (held: non-finite model frames replaced by the last frame sent, so no
    message carries NaN; the compute times are null when nothing ran).
    A new ``start`` may follow.

  Options: ``sample_rate`` (must be 16000), ``encoding`` (``pcm_s16le``), ``channels`` (1),
  ``seed`` and ``sample`` (refinement noise, as ``realm generate``), ``refine`` (bool),
  ``pace`` (``"asap"``: send each frame as soon as it is computed; ``"realtime"``: hold each
  frame until its play time, ``first audio + latency_s + margin_s + i / fps``), ``face`` (bool:
  each frame also carries ``face``, the listener's face as :func:`realm.render.face.encode_shapes`
  shapes, and ``ready`` the palette and layout to draw them; what the page draws), ``asr``
  (bool: for a model that reads words, the server transcribes the stream itself with
  :class:`realm.text.StreamingASR` and feeds the words it confirms to the model, 1-2 s after they
  are spoken; ``ready.asr`` says whether it does; ignored by models that read no words).
* Binary messages are audio: 16-bit signed little-endian PCM, mono, 16 kHz, any whole number
  of samples per message up to ``max_chunk_bytes`` (1 s by default).

**HTTP.** A plain GET (no WebSocket upgrade) of ``/`` is answered with the listener page
(:mod:`realm.web`: microphone or file, the face and controls drawn live, latency readouts); other
paths with 404. The page needs no token (it holds none); its WebSocket carries the page's
``?token=``, and its Origin (this server's own host and port) is admitted.

**Server -> client** (JSON text)

* ``{"type": "frame", "i", "t", "chunk", "motion": [...], "controls": [...]}``: frame ``i`` at
  stream time ``t = i / fps`` s; ``chunk`` is the index of the audio message whose arrival
  completed it (-1: produced by ``stop``), so a client measures "chunk sent -> frame received"
  exactly; ``motion`` holds the spec's values; ``controls`` the robot controls after the safety
  layer (present when the server has a ``--profile``).
* ``{"type": "words", "words": [{"word", "start", "end"}, ...]}``: with the ``asr`` option, the
  words the server's ASR has confirmed (stream seconds), as it confirms them.
* ``{"type": "error", "code", "message"}``: a bad message is answered and otherwise ignored;
  the session goes on, up to ``max_errors`` bad messages. Error messages never quote more than
  a few characters of what the client sent. Messages larger than the WebSocket limit close the
  connection (1009).

**Admission and limits.** The handshake is refused (HTTP 403/401) for an ``Origin`` outside the
allow-list or a missing or wrong token (``Authorization: Bearer TOKEN`` or ``?token=TOKEN``; a
token is required unless the host is loopback). A connection must send ``start`` within
``start_timeout_s`` and some message every ``idle_timeout_s``; past ``max_pending`` connections
without a stream (or ``max_clients`` in all), the one that waited longest is closed to make room.
A ``start`` (and a connection) is answered ``server_full`` and closed (1013) while as many streams
run as the measured capacity allows (:attr:`ListenerServer.capacity`) or while real-time model
calls lag (``max_lag_s``). Each connection may send ``max_msgs_per_s`` messages and
``max_bytes_per_s`` bytes per second (one second's burst); past that its messages are read later
(TCP back-pressure) and it is told once in a while with ``rate_limited``; over the message rate
for ``max_flood_s`` it is closed. Every refusal and protocol error is logged with the client's
address (:class:`LogBudget`).

**Bounded memory.** Each client has an outgoing queue of ``queue_frames`` frames, whose oldest
frames are dropped and counted (``end.dropped``) when the client reads too slowly, and of
``queue_messages`` other messages: past that, new errors are dropped and any other message closes
the connection (1008, ``not_reading``). Incoming audio is read one message at a time.

**Fair share.** Model calls run on ``workers`` threads in the order of their audio's real time
(:class:`FairScheduler`): a client at or behind real time is served in arrival order; audio a
client sent ahead of real time runs early only on spare threads (at most ``workers - 1``) and
within ``ahead_share`` of a core, so a client that streams as fast as it can does not delay the
others, and every client is served at least at real-time pace.

Frames equal those of :class:`realm.generate.Streamer` fed the same (16-bit) samples with the
same seed: the server is a transport around it (tested).
"""

from __future__ import annotations

import asyncio
import heapq
import hmac
import ipaddress
import json
import logging
import math
import os
import socket
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np

from realm.audio import SAMPLE_RATE, get_extractor, n_frames
from realm.render.face import encode_shapes, face_description, face_frame, face_shapes
from realm.threads import set_torch_threads

log = logging.getLogger(__name__)

PROTOCOL = 1
ENCODING = "pcm_s16le"
PACES = ("asap", "realtime")
DEFAULT_OPTIONS = {
    "sample_rate": SAMPLE_RATE, "encoding": ENCODING, "channels": 1,
    "seed": 0, "sample": 0, "refine": True, "pace": "asap", "margin_s": 0.05, "face": False, "asr": False,
}  # fmt: skip
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
AHEAD_GRACE_S = 0.25  # audio up to this far ahead of real time still counts as real time (network jitter)
NOTICE_S = 10.0  # at most one rate_limited error per client in this many seconds
CLOSE_S = 2.0  # a closing client gets this long to take its last message and the close frame
LOUD_ERRORS = 3  # bad messages per connection logged as warnings; later ones at info level (-v)
WARNINGS_PER_10S = 20  # refusals and bad messages logged as warnings per 10 s; the rest at info level, counted
MIN_PUSH = 160  # audio samples (10 ms) gathered before a model call: tiny messages cost no thread hand-off
LAG_WINDOW_S = 5.0  # the lag that closes admission (max_lag_s) is over this many seconds


@dataclass
class ServerConfig:
    """Limits and resources of a :class:`ListenerServer`; 0 turns off a timeout, a rate, ``max_flood_s``,
    ``max_errors``, ``max_pending``, ``max_lag_s`` or ``max_streams`` (then measured)."""

    host: str = "127.0.0.1"  # loopback unless asked otherwise; any other host needs a token
    port: int = 8765  # 0: any free port (see ListenerServer.port)
    max_clients: int = 128  # connections at once, streaming or not (streams: see max_streams)
    max_pending: int = 64  # connections that have not sent start; a new one beyond closes the oldest
    max_streams: int = 0  # streams at once; 0: the measured capacity (ListenerServer.capacity)
    load_target: float = 0.5  # share of the model threads' cores real-time streams may fill (capacity)
    ahead_share: float = 0.25  # share of one core for audio sent ahead of real time (FairScheduler)
    max_lag_s: float = 0.1  # no new stream while real-time model calls take longer than this (p95 over 5 s)
    max_chunk_s: float = 1.0  # largest audio message, in seconds of 16 kHz audio
    queue_frames: int = 90  # outgoing frames kept per client (3 s at 30 fps); older ones are dropped
    queue_messages: int = 32  # other outgoing messages per client: errors beyond are dropped, others close
    send_buffer_bytes: int = 65536  # kernel send buffer per client: a slow reader shows up as drops, not as seconds of delay
    start_timeout_s: float = 10.0  # a connection that has not sent start by then is closed (start_timeout)
    idle_timeout_s: float = 60.0  # a connection that sends nothing for this long is closed (idle_timeout)
    max_msgs_per_s: float = 200.0  # messages per second per client (burst: one second's worth)
    max_flood_s: float = 5.0  # a client over the message rate this long without a quarter-second pause is closed
    max_bytes_per_s: float = 320_000.0  # bytes per second per client: 10x real-time audio
    max_errors: int = 100  # bad messages per connection before it is closed (too_many_errors)
    token: str | None = None  # required from clients when set; must be set unless the host is loopback
    allowed_origins: tuple = ()  # browser Origins admitted besides localhost pages ("*": any)
    tls_cert: str | None = None  # PEM certificate (chain) and key: serve wss:// instead of ws://
    tls_key: str | None = None
    workers: int = 2  # model threads shared by all clients
    torch_threads: int = 1  # intra-op threads per model call
    record_dir: str | None = None  # keep each stream's received audio: DIR/stream-<start>-<session>-<n>.wav at stop
    asr_streams: int = 2  # streams transcribed at once (option asr; about 0.45 of a core each, a thread each)
    #   (what the server heard, to replay offline: tests and debugging; memory grows with the stream)
    page: bool = True  # answer plain HTTP GETs of / with the listener page (realm.web)

    @property
    def max_chunk_bytes(self) -> int:
        return int(self.max_chunk_s * SAMPLE_RATE) * 2


class ProtocolError(Exception):
    """A bad client message: answered with ``{"type": "error", "code", "message"}``."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


class Refused(Exception):
    """A client the server stops serving: told ``{"type": "error", "code", "message"}``, then closed with ``close``."""

    def __init__(self, close: int, code: str, message: str):
        super().__init__(message)
        self.close, self.code, self.message = close, code, message


def shown(value, limit: int = 24) -> str:
    """A client's value as an error message may quote it: its repr when short, else only its kind and size."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f" of {len(value)}" if hasattr(value, "__len__") else ""
    return f"<{type(value).__name__}{size}>"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an interface to bind) is reachable from this machine only."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost, "" or 0.0.0.0: reachable from elsewhere


def check_options(options: dict, base: dict) -> dict:
    """``base`` updated with the recognised, validated entries of ``options`` (ProtocolError otherwise)."""
    out = dict(base)
    for key, value in options.items():
        if key == "type":
            continue
        if key not in DEFAULT_OPTIONS:
            raise ProtocolError("bad_option", f"unknown option {shown(key)}; known: {sorted(DEFAULT_OPTIONS)}")
        got = f"(got {shown(value)})"
        if key == "sample_rate":
            if value != SAMPLE_RATE:
                raise ProtocolError("bad_sample_rate", f"sample_rate must be {SAMPLE_RATE} {got}; resample before sending")
        elif key == "encoding":
            if value != ENCODING:
                raise ProtocolError("bad_encoding", f"encoding must be {ENCODING!r} {got}")
        elif key == "channels":
            if value != 1:
                raise ProtocolError("bad_channels", f"audio must be mono (channels 1) {got}")
        elif key in ("seed", "sample"):
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
                raise ProtocolError("bad_option", f"{key} must be an integer in [0, 2**63) {got}")
        elif key in ("refine", "face", "asr"):
            if not isinstance(value, bool):
                raise ProtocolError("bad_option", f"{key} must be true or false {got}")
        elif key == "pace":
            if value not in PACES:
                raise ProtocolError("bad_option", f"pace must be one of {list(PACES)} {got}")
        elif key == "margin_s":
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 10:
                raise ProtocolError("bad_option", f"margin_s must be a number in [0, 10] {got}")
        out[key] = value
    return out


def robot_url(robot: str) -> str:
    """``tritium://HOST[:PORT]`` (or a bare host, or a ws:// URL) -> the gateway's WebSocket URL."""
    from realm.embodiment.tritium import gateway_url

    if robot.startswith("tritium://"):
        robot = robot[len("tritium://") :]
    if not robot.strip("/"):
        raise ValueError("--robot: expected tritium://HOST[:PORT]")
    return gateway_url(robot.rstrip("/"))


#: Most words one ``words`` message may carry, and the longest word.
MAX_WORDS, MAX_WORD_CHARS = 256, 64


def parse_words(items) -> list:
    """The ``words`` of a ``{"type": "words", "words": [{"word", "start", "end"}, ...]}`` message as
    :class:`realm.data.clip.Word` (seconds from the start of the stream), or a ProtocolError."""
    from realm.data.clip import Word

    if not isinstance(items, list) or len(items) > MAX_WORDS:
        raise ProtocolError("bad_words", f'"words" must be a list of at most {MAX_WORDS} objects')
    out = []
    for w in items:
        ok = isinstance(w, dict) and isinstance(w.get("word"), str) and 0 < len(w["word"]) <= MAX_WORD_CHARS
        times = [w.get("start"), w.get("end")] if ok else []
        ok = ok and all(isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) for t in times)
        if not ok or not 0 <= times[0] <= times[1]:
            raise ProtocolError("bad_words", 'each word is {"word": text, "start": s, "end": s} with 0 <= start <= end')
        out.append(Word(w["word"], float(times[0]), float(times[1])))
    return out


def decode_pcm16(data: bytes) -> np.ndarray:
    """16-bit little-endian PCM bytes -> float32 samples in [-1, 1)."""
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def encode_pcm16(y: np.ndarray) -> bytes:
    """Float samples -> 16-bit little-endian PCM bytes (clipped, rounded)."""
    q = np.clip(np.round(np.asarray(y, np.float64) * 32768.0), -32768, 32767).astype("<i2")
    return q.tobytes()


def quantise_pcm16(y: np.ndarray) -> np.ndarray:
    """What the server hears when ``y`` is sent as 16-bit PCM."""
    return decode_pcm16(encode_pcm16(y))


@dataclass
class _Item:
    """One outgoing message; frames may be dropped, errors too when too many wait, others never."""

    body: str | dict  # JSON text; a frame stays a dict until it is sent (a dropped frame is never encoded)
    frame: bool = False
    due: float = 0.0  # loop time before which a paced frame is not sent
    error: bool = False


@dataclass
class Bucket:
    """A token bucket: ``rate`` units per second, at most ``burst`` saved up (rate 0: no limit)."""

    rate: float
    burst: float
    level: float = 0.0
    t: float = 0.0

    def take(self, n: float, now: float) -> float:
        """Spend ``n`` units at time ``now``; the seconds to wait before the spender is back within the rate."""
        if self.rate <= 0:
            return 0.0
        self.level = min(self.burst, self.level + (now - self.t) * self.rate) - n
        self.t = now
        return -self.level / self.rate if self.level < 0 else 0.0


@dataclass
class Session:
    """The state of one connected client."""

    id: int
    options: dict = field(default_factory=lambda: dict(DEFAULT_OPTIONS))
    streamer: object = None
    pipeline: object = None  # realm.embodiment.controls.ControlPipeline (with a robot profile)
    streaming: bool = False
    chunks: int = 0  # audio messages of this stream
    samples: int = 0
    frames: int = 0  # frames produced in this stream
    dropped: int = 0
    late: int = 0
    first_audio: float | None = None  # loop time of the first audio message
    origin: float = 0.0  # loop time of audio time 0 at real-time pace (first audio minus its own length)
    pending: list = field(default_factory=list)  # audio messages not yet run (together under MIN_PUSH samples)
    pending_n: int = 0  # their samples
    words: list = field(default_factory=list)  # words received since the last model call (listeners that read words)
    recorded: list = field(default_factory=list)  # this stream's audio messages (ServerConfig.record_dir)
    asr: object = None  # realm.text.StreamingASR of this stream (option asr, a model that reads words)
    asr_audio: list = field(default_factory=list)  # audio the ASR has not seen yet
    asr_job: asyncio.Task | None = None  # the ASR run in progress
    streams: int = 0  # streams started on this connection
    queue: deque = field(default_factory=deque)
    queued_frames: int = 0  # frames in queue
    queued_other: int = 0  # other messages in queue
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    compute_s: deque = field(default_factory=lambda: deque(maxlen=1024))  # seconds per model call that made frames
    last: np.ndarray | None = None  # the last frame sent (held in place of a non-finite one)
    held: int = 0  # non-finite model frames replaced by the last frame (never sent as NaN)
    ws: object = None
    address: str = "?"
    connected: float = 0.0  # loop time of the connection
    last_message: float = 0.0  # loop time of the last message received
    started: bool = False  # has sent start at least once
    errors: int = 0  # bad messages
    errors_dropped: int = 0  # error replies not queued because too many waited
    noticed: float = float("-inf")  # loop time of the last rate_limited error
    flooding: float | None = None  # loop time since which every message came over the message rate
    msg_bucket: Bucket | None = None
    byte_bucket: Bucket | None = None
    sender: asyncio.Task | None = None
    closing: bool = False


class LogBudget:
    """Logs refusals and protocol errors: at most ``per`` warnings in ``period`` seconds, the rest at
    info level (``-v``), counted in a warning when the next period starts (a flood cannot make the
    server spend its time logging)."""

    def __init__(self, per: int = WARNINGS_PER_10S, period: float = 10.0):
        self.per, self.period = per, period
        self.start, self.count, self.quiet = float("-inf"), 0, 0

    def __call__(self, msg: str, *args, loud: bool = True) -> None:
        now = time.monotonic()
        if now - self.start >= self.period:
            self.flush()
            self.start, self.count = now, 0
        if loud and self.count < self.per:
            self.count += 1
            log.warning(msg, *args)
        else:
            self.quiet += loud
            log.info(msg, *args)

    def flush(self) -> None:
        if self.quiet:
            log.warning("%d more refusals and bad messages logged at info level (-v shows them)", self.quiet)
            self.quiet = 0


class FairScheduler:
    """Runs model calls on ``workers`` threads, the call with the earliest ``key`` (a loop time) first.

    A call whose key is still in the future (audio ahead of real time) runs early only on a free
    thread, on at most ``workers - 1`` threads at once (1 when there is one thread), and within
    ``ahead_share`` of one thread's time (after an early call of d seconds the next one waits
    d (1 - share) / share; 0: none runs early; >= 1: no such wait). Once its key has passed it is a
    call like any other. So a call at real time never waits behind more than ``workers - 1`` early
    calls, early work uses at most ``ahead_share`` of a core, and every client is served at least
    at real-time pace. ``counts`` holds the calls run on time (``due``) and early (``ahead``);
    ``peak_ahead`` the most early calls at once.
    """

    def __init__(self, executor, workers: int, ahead_share: float = 1.0):
        self.executor, self.workers, self.ahead_share = executor, workers, ahead_share
        self.max_ahead = max(1, workers - 1)
        self.heap: list = []
        self.busy = self.busy_ahead = self.peak_ahead = 0
        self.counts = {"due": 0, "ahead": 0}
        self.ahead_free_at = float("-inf")  # loop time before which no early call starts (the share)
        self._seq = 0
        self._timer = None

    async def run(self, key: float, fn, *args):
        """``fn(*args)`` on a worker thread once its turn comes: (its result, seconds waited, ran ahead)."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        heapq.heappush(self.heap, (key, self._seq, loop.time(), fut, fn, args))
        self._seq += 1
        self._dispatch()
        return await fut

    def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self.heap and self.busy < self.workers:
            key, _, queued, fut, fn, args = self.heap[0]
            if fut.done():  # its client went away
                heapq.heappop(self.heap)
                continue
            ahead = key > now
            if ahead:  # every other call is later still: look again when this one may start, or when a call ends
                if self.busy_ahead >= self.max_ahead or self.ahead_share <= 0:
                    return self._wake_at(key)
                if now < self.ahead_free_at:
                    return self._wake_at(min(key, self.ahead_free_at))
            heapq.heappop(self.heap)
            self.busy += 1
            self.busy_ahead += ahead
            self.peak_ahead = max(self.peak_ahead, self.busy_ahead)
            self.counts["ahead" if ahead else "due"] += 1
            job = loop.run_in_executor(self.executor, fn, *args)
            job.add_done_callback(lambda j, f=fut, a=ahead, t=now, w=now - queued: self._done(j, f, a, t, w))

    def _wake_at(self, when: float) -> None:
        if self._timer is not None and self._timer.when() <= when:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_at(when, self._wake)

    def _wake(self) -> None:
        self._timer = None
        self._dispatch()

    def _done(self, job, fut, ahead: bool, started: float, waited: float) -> None:
        self.busy -= 1
        self.busy_ahead -= ahead
        if ahead and 0 < self.ahead_share < 1:
            now = asyncio.get_running_loop().time()
            self.ahead_free_at = max(self.ahead_free_at, now) + (now - started) * (1 - self.ahead_share) / self.ahead_share
        if not fut.done():
            if job.cancelled():
                fut.cancel()
            elif job.exception() is not None:
                fut.set_exception(job.exception())
            else:
                fut.set_result((job.result(), waited, ahead))
        self._dispatch()


class RobotLink:
    """The server's robot: one session's safe controls forwarded to a Tritium gateway
    (:class:`realm.embodiment.tritium.TritiumStreamer`: a sender thread at the profile's rate that
    reconnects with backoff while frames keep coming), each frame at its play time (first audio +
    latency + margin + i / fps, the ``realtime`` pace), so the robot moves at the frame rate
    whatever the bursts of model calls.

    The first session that streams drives the robot until it stops or disconnects; the others get
    frames but do not move it. When the driving session ends (stop, disconnect, server shutdown) the
    robot eases back to the profile's neutral controls, no control faster than its ``max_vel``
    (a half-cosine ramp), and the next session to stream takes it over.
    """

    def __init__(self, url: str, profile, fps: float, channel: str = "realm_controls", token: str | None = None,
                 connect=None):  # fmt: skip
        from realm.embodiment.tritium import TritiumStreamer

        self.profile, self.fps = profile, fps
        self.neutral = profile.neutral_vector()
        self.max_vel = np.array([c.max_vel for c in profile.controls], np.float64)
        self.streamer = TritiumStreamer(url, channel, rate_hz=fps, names=profile.names, auth_token=token, connect=connect)
        self.owner: int | None = None
        self.last = self.neutral.copy()  # the last controls handed to the streamer
        self.tail: tuple[np.ndarray, float] | None = None  # the driving session's last scheduled row and its time
        self._pending: list[asyncio.TimerHandle] = []

    def start(self) -> RobotLink:
        self.streamer.start()
        self._push(self.neutral)
        return self

    def _push(self, row) -> None:
        self.last = np.asarray(row, np.float64)
        self.streamer.push(self.last)

    def forward(self, sid: int, rows, dues) -> None:
        """Schedule ``rows`` (n, controls) of session ``sid`` at loop times ``dues`` (it drives the
        robot if no other session does)."""
        if self.owner is None:
            self.owner = sid
            for h in self._pending:  # the previous session's ease to neutral, if still under way
                h.cancel()
            self._pending = []
            log.info("session %d drives the robot (%s)", sid, self.streamer.url)
        if self.owner != sid:
            return
        loop = asyncio.get_running_loop()
        self._pending = [h for h in self._pending if not h.cancelled() and h.when() > loop.time()]
        for row, due in zip(rows, dues, strict=True):
            self._pending.append(loop.call_at(due, self._push, row))
            self.tail = (np.asarray(row, np.float64), due)

    def release(self, sid: int) -> None:
        """Session ``sid`` ended: if it drove the robot, its frames already made play out, then the
        robot eases to neutral."""
        if self.owner != sid:
            return
        self.owner = None
        loop = asyncio.get_running_loop()
        row, due = self.tail if self.tail is not None else (self.last, loop.time())
        start = max(due, loop.time())
        ramp = neutral_ramp(row, self.neutral, self.max_vel, self.fps)
        self._pending += [loop.call_at(start + (k + 1) / self.fps, self._push, r) for k, r in enumerate(ramp)]
        self.tail = None
        log.info("the robot eases to neutral over %.2f s", len(ramp) / self.fps)

    def close(self) -> None:
        for h in self._pending:
            h.cancel()
        self._push(self.neutral)
        time.sleep(2 / self.fps)  # the sender's next tick posts it
        self.streamer.stop()


def neutral_ramp(start, neutral, max_vel, fps: float) -> np.ndarray:
    """(n, controls) from ``start`` to ``neutral`` along a half-cosine, slow enough that no control
    exceeds its ``max_vel`` (units per second; the ramp's peak speed is pi / 2 times its mean);
    the last row is ``neutral``."""
    start, neutral = np.asarray(start, np.float64), np.asarray(neutral, np.float64)
    span = np.abs(neutral - start)
    seconds = float(np.max(np.where(max_vel > 0, span / np.maximum(max_vel, 1e-9), 0.0))) * math.pi / 2
    n = max(1, math.ceil(seconds * fps))
    w = 0.5 - 0.5 * np.cos(math.pi * np.arange(1, n + 1) / n)  # (n,), 0 -> 1
    return start + w[:, None] * (neutral - start)


class ListenerServer:
    """Serves one streaming checkpoint to many WebSocket clients, each with its own state.

    ``listener`` is a loaded REALM run whose features stream (logmel, vico45, prosody);
    ``profile`` (a robot profile name or path) adds safe robot controls to every frame;
    ``linear_map`` maps non-arkit58 motion to arkit58 for retargeting. A host other than
    loopback needs ``config.token`` (ValueError otherwise).
    """

    def __init__(self, listener, profile=None, linear_map=None, config: ServerConfig | None = None, robot: str | None = None,
                 robot_channel: str = "realm_controls", robot_token: str | None = None, robot_connect=None):  # fmt: skip
        from realm.errors import RealmInputError

        self.config = config or ServerConfig()
        if not is_loopback(self.config.host) and not self.config.token:
            raise ValueError(
                f"--host {self.config.host or '(all interfaces)'} is reachable from other machines: set a token "
                "(--token or REALM_SERVE_TOKEN) that clients send as `Authorization: Bearer TOKEN` or `?token=TOKEN`"
            )
        if bool(self.config.tls_cert) != bool(self.config.tls_key):
            raise ValueError("TLS needs both a certificate (--tls-cert) and its key (--tls-key)")
        if not listener.streams:  # the listener contract's declared capability (realm.models.listener)
            raise RealmInputError(
                getattr(listener, "path", None),
                f"model {getattr(listener, 'name', '?')!r} has no streaming generator; serve a REALM checkpoint",
            )
        if get_extractor(listener.extractor).context is None:
            raise RealmInputError(
                listener.path,
                f"checkpoint uses {listener.extractor!r} features, which cannot be streamed; serve a checkpoint "
                "trained with `--extractor logmel --audio-context 16`",
            )
        self.listener = listener
        self.profile = None
        self.linear_map = linear_map
        if profile is not None:
            from realm.embodiment.profile import load_profile
            from realm.embodiment.retarget import check_map

            self.profile = load_profile(profile)
            try:
                check_map(listener.spec.name, linear_map)
            except ValueError as e:
                raise RealmInputError(listener.path, str(e)) from None
        if robot is not None and self.profile is None:
            raise ValueError("--robot needs --profile: the robot is driven with the profile's safe controls")
        #: the robot the streaming session drives (``robot``: a Tritium gateway, ``tritium://HOST[:PORT]``)
        self.robot = None if robot is None else RobotLink(robot_url(robot), self.profile, listener.fps, robot_channel,
                                                          robot_token, robot_connect)  # fmt: skip
        self.executor = ThreadPoolExecutor(
            max_workers=self.config.workers, thread_name_prefix="realm-serve",
            initializer=set_torch_threads, initargs=(self.config.torch_threads,),  # per worker: OpenMP's count is per thread
        )  # fmt: skip
        self.scheduler = FairScheduler(self.executor, self.config.workers, self.config.ahead_share)
        self.sessions: dict[int, Session] = {}
        self.totals = {"clients": 0, "frames": 0, "dropped": 0, "refused": 0, "closed": 0, "errors": 0, "throttled": 0}
        self._next_id = 0
        self._server = None
        self._limits = None  # the BLAS/OpenMP thread limits held while serving
        self.port: int | None = None
        self.latency_s = listener.streamer().latency_s
        self.startup_load: float | None = None  # measured by start(): seconds of one thread per second of audio
        self._costs: deque = deque(maxlen=256)  # model-thread seconds per frame of recent model calls
        self._lags: deque = deque(maxlen=512)  # (loop time, seconds from audio to frames) of recent on-time calls
        self._frame_cost = 0.0  # event-loop seconds to encode one frame message
        self._closing: set = set()  # tasks closing connections
        self.note = LogBudget()  # how refusals and protocol errors are logged
        self._asr_executor: ThreadPoolExecutor | None = None  # streaming ASR (option asr), made on first use
        self._started = time.strftime("%Y%m%d-%H%M%S")  # names the streams record_dir keeps

    # ------------------------------------------------------------------ capacity

    @property
    def cores(self) -> int:
        """CPU cores the model threads can use: the workers, at most the cores this process may run on."""
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return max(1, min(self.config.workers, cpus))

    @property
    def load(self) -> float:
        """Compute of one real-time stream, in cores: model-thread seconds per second of audio (the model,
        robot controls and frame encoding), from the last 256 model calls (from start-up until 8 have run).
        Wall time on the thread, so a machine busy with other work, or the GIL, make a stream cost more."""
        if len(self._costs) >= 8:
            per_frame = float(np.median(self._costs)) + self._frame_cost
            return per_frame * self.listener.fps
        return self.startup_load if self.startup_load is not None else float("nan")

    @property
    def capacity(self) -> int:
        """Streams admitted at once: ``max_streams``, or as many real-time loads as fill ``load_target`` of the cores."""
        if self.config.max_streams:
            return self.config.max_streams
        load = self.load
        if not np.isfinite(load) or load <= 0:
            return self.config.max_clients
        return max(1, min(self.config.max_clients, int(self.config.load_target * self.cores / load)))

    @property
    def streams(self) -> int:
        """Clients streaming now."""
        return sum(s.streaming for s in self.sessions.values())

    @property
    def lag_s(self) -> float:
        """95th percentile of the time from audio to frames of on-time model calls in the last LAG_WINDOW_S
        seconds (queueing and compute; NaN with fewer than 10 calls)."""
        since = asyncio.get_running_loop().time() - LAG_WINDOW_S
        lags = [x for t, x in self._lags if t >= since]
        return float(np.percentile(lags, 95)) if len(lags) >= 10 else float("nan")

    def _full(self) -> str | None:
        """Why a new stream would not be served in time (None: it would)."""
        if self.streams >= self.capacity:
            return f"{self.streams} streams running, this server's capacity; try again later"
        if self.config.max_lag_s and self.streams and self.lag_s > self.config.max_lag_s:
            return f"the server is behind (model lag p95 {1e3 * self.lag_s:.0f} ms); try again later"
        return None

    # ------------------------------------------------------------------ lifecycle

    async def start(self):
        """Measure the model's cost, bind and start accepting clients (returns once listening)."""
        from threadpoolctl import threadpool_limits
        from websockets.asyncio.server import serve

        # BLAS/OpenMP pools sized for the whole machine busy-wait after each small call (the
        # streamer already extracts features under one BLAS thread; this covers the rest, e.g.
        # retargeting): before these limits, spinning cost 6x the model's own CPU time per client.
        self._limits = threadpool_limits(limits=self.config.torch_threads)
        if self.robot is not None:
            self.robot.start()
        limit = self.config.max_chunk_bytes + 4096  # the WebSocket frame limit: larger messages close the connection
        await self._warm_up()
        tls = self._tls()
        self._server = await serve(
            self._handle, self.config.host, self.config.port, max_size=limit, max_queue=4,
            process_request=self._check_request, ssl=tls,
            compression=None,  # per-message deflate cost CPU and memory per connection for little gain on short JSON
        )  # fmt: skip
        self.port = self._server.sockets[0].getsockname()[1]
        log.info(
            "listening on %s; capacity %d streams (%.3f cores per stream, %d cores, load target %g)",
            self.url, self.capacity, self.load, self.cores, self.config.load_target,
        )  # fmt: skip
        if not self.config.token:
            log.warning("no token: any program on this machine can connect (set --token to require one)")
        elif not is_loopback(self.config.host) and tls is None:
            log.warning(
                "ws:// is not encrypted: the token and the audio cross the network in clear; "
                "use --tls-cert/--tls-key or a TLS proxy"
            )
        return self

    def _tls(self):
        """An SSL context from ``tls_cert``/``tls_key``, or None."""
        if not self.config.tls_cert:
            return None
        import ssl

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            ctx.load_cert_chain(self.config.tls_cert, self.config.tls_key)
        except (OSError, ssl.SSLError) as e:
            raise ValueError(f"{self.config.tls_cert}: cannot load the TLS certificate and key ({e})") from None
        return ctx

    async def _warm_up(self) -> None:
        """Run one stream per worker before accepting clients: the first model call of a thread
        pays for lazy initialisation (1-2 s measured), which would otherwise land on the first client.
        A second, measured stream of 2 s in 100 ms chunks gives the start-up load per stream."""
        loop = asyncio.get_running_loop()

        def one():
            streamer, pipeline = self.listener.streamer(), self._new_controls()
            self._run_model(streamer, pipeline, 0, np.zeros(SAMPLE_RATE, np.float32))
            self._run_model(streamer, pipeline, 0, None)
            streamer, pipeline = self.listener.streamer(), self._new_controls()
            t0, audio = time.perf_counter(), np.zeros(2 * SAMPLE_RATE, np.float32)
            n = sum(len(self._run_model(streamer, pipeline, 0, audio[k : k + 1600])[0]) for k in range(0, len(audio), 1600))
            frames = n + len(self._run_model(streamer, pipeline, 0, None)[0])
            return (time.perf_counter() - t0) / frames

        per_frame = await asyncio.gather(*[loop.run_in_executor(self.executor, one) for _ in range(self.config.workers)])
        t0 = time.thread_time()  # the event loop's share: one frame message, encoded as _emit does
        f = np.zeros(self.listener.spec.dim, np.float32)
        for i in range(100):
            _encode({"type": "frame", "i": i, "t": i / 30, "chunk": 0, "motion": f})
        self._frame_cost = (time.thread_time() - t0) / 100
        self.startup_load = (float(np.median(per_frame)) + self._frame_cost) * self.listener.fps

    @property
    def url(self) -> str:
        host = self.config.host or "0.0.0.0"
        host = f"[{host}]" if ":" in host else host
        return f"{'wss' if self.config.tls_cert else 'ws'}://{host}:{self.port}"

    async def close(self) -> None:
        """Stop accepting, close every connection with 1001 (going away), wait for them to end."""
        if self._server is not None:
            self._server.close(close_connections=True)
            await self._server.wait_closed()
            self._server = None
        self.note.flush()
        if self.robot is not None:
            self.robot.close()
        self.executor.shutdown(wait=True, cancel_futures=True)
        if self._asr_executor is not None:
            self._asr_executor.shutdown(wait=True, cancel_futures=True)
        if self._limits is not None:
            self._limits.restore_original_limits()
            self._limits = None

    async def serve_forever(self) -> None:
        if self._server is None:
            await self.start()
        await self._server.serve_forever()

    # ------------------------------------------------------------------ admission

    def _check_request(self, connection, request):
        """The opening handshake: refuse (HTTP 403/401) a browser Origin outside the allow-list or a
        missing or wrong token; None admits."""
        import http

        if "upgrade" not in ",".join(request.headers.get_all("Connection")).lower():  # plain HTTP: the page
            return self._page(connection, request)
        if len(request.headers.get_all("Origin")) > 1 or len(request.headers.get_all("Host")) > 1:
            return self._reject(connection, http.HTTPStatus.BAD_REQUEST, "repeated Origin or Host header")
        origin = request.headers.get("Origin")
        if origin is not None and not self._origin_ok(origin, request.headers.get("Host")):
            return self._reject(connection, http.HTTPStatus.FORBIDDEN, f"Origin {shown(origin, 64)} is not allowed")
        token = self.config.token
        if token:
            auth = request.headers.get("Authorization", "")
            given = auth[7:].strip() if auth[:7].lower() == "bearer " else None
            if given is None:
                given = (parse_qs(urlsplit(request.path).query).get("token") or [None])[0]
            if given is None or not hmac.compare_digest(given.encode(), token.encode()):
                why = "no token" if given is None else "wrong token"
                return self._reject(connection, http.HTTPStatus.UNAUTHORIZED, f"{why} (send Authorization: Bearer TOKEN)")
        return None

    def _origin_ok(self, origin: str, host: str | None = None) -> bool:
        allowed = self.config.allowed_origins
        if "*" in allowed or origin.rstrip("/") in {o.rstrip("/") for o in allowed}:
            return True
        try:
            parts = urlsplit(origin)
            if parts.hostname in LOOPBACK_NAMES:  # a page served from this machine
                return True
            # this server's own page: the same host and port, under a name the server answers to (an IP
            # address or its --host). Any name would admit DNS rebinding: a site whose name is made to
            # point here would pass as "same origin" (Origin and Host both evil.example:PORT)
            return bool(self.config.page and host is not None and parts.netloc == host and self._own_name(parts.hostname))
        except ValueError:
            return False

    def _own_name(self, hostname: str | None) -> bool:
        """Whether ``hostname`` (from a request's Host) is one this server answers to by itself: an IP
        address, or the --host it was given. Other names need --allow-origin."""
        if not hostname:
            return False
        try:
            ipaddress.ip_address(hostname)
            return True
        except ValueError:
            return hostname == self.config.host

    def _page(self, connection, request):
        """A plain HTTP request: the listener page's files, else 404 (websockets answers other methods itself)."""
        import http

        from websockets.datastructures import Headers
        from websockets.http11 import Response

        from realm.web import HEADERS, asset

        found = asset(urlsplit(request.path).path) if self.config.page else None
        if found is None:
            return connection.respond(http.HTTPStatus.NOT_FOUND, "not found: this server has the page / and a WebSocket\n")
        body, ctype = found
        headers = Headers({**HEADERS, "Content-Type": ctype, "Content-Length": str(len(body)), "Connection": "close"})
        return Response(200, "OK", headers, body)

    def _reject(self, connection, status, why: str):
        self.totals["refused"] += 1
        self.note("refused %s: %s", _address(connection.remote_address), why)
        return connection.respond(status, why + "\n")

    def _admit(self) -> Refused | None:
        """Whether a new connection may stay (None) or why not. Past ``max_clients`` connections or
        ``max_pending`` without a stream, the connection that has waited longest without sending
        start is closed to make room; when none has, the new one is refused."""
        if full := self._full():
            return Refused(1013, "server_full", full)
        live = [s for s in self.sessions.values() if not s.closing]
        pending = [s for s in live if not s.started]
        crowded = len(live) >= self.config.max_clients
        if crowded or (self.config.max_pending and len(pending) >= self.config.max_pending):
            if not pending:
                return Refused(1013, "server_full", f"{self.config.max_clients} clients connected; try again later")
            oldest = min(pending, key=lambda s: s.connected)
            self._close(oldest, Refused(1008, "start_timeout", f"closed to make room: {len(pending)} connections waited without start"))
        return None

    def _close(self, s: Session, r: Refused) -> asyncio.Task | None:
        """End a session once: log why, abandon its queue, then (in a task) send its error and close with ``r.close``."""
        if s.closing:
            return None
        s.closing = True
        self.totals["closed"] += 1
        self.note("client %d (%s) closed (%d): %s: %s", s.id, s.address, r.close, r.code, r.message)
        if s.sender is not None:
            s.sender.cancel()
        task = asyncio.create_task(_shut(s.ws, r))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        return task

    # ------------------------------------------------------------------ one client

    async def _handle(self, ws) -> None:
        from websockets.protocol import State

        loop = asyncio.get_running_loop()
        now = loop.time()
        address = _address(ws.remote_address)
        refused = self._admit()
        if refused is not None:
            self.totals["refused"] += 1
            self.note("refused %s: %s: %s", address, refused.code, refused.message)
            await _shut(ws, refused)
            return
        sock = ws.transport.get_extra_info("socket")
        if sock is not None and self.config.send_buffer_bytes:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.config.send_buffer_bytes)
        cfg = self.config
        burst_msgs, burst_bytes = max(1.0, cfg.max_msgs_per_s), max(cfg.max_bytes_per_s, cfg.max_chunk_bytes + 4096.0)
        s = Session(
            self._next_id, ws=ws, address=address, connected=now, last_message=now,
            msg_bucket=Bucket(cfg.max_msgs_per_s, burst_msgs, burst_msgs, now),
            byte_bucket=Bucket(cfg.max_bytes_per_s, burst_bytes, burst_bytes, now),
        )  # fmt: skip
        self._next_id += 1
        self.sessions[s.id] = s
        self.totals["clients"] += 1
        s.sender = asyncio.create_task(self._send_loop(ws, s))
        watchdog = asyncio.create_task(self._watch(s))
        log.info("client %d connected from %s", s.id, address)
        try:
            async for message in ws:
                if s.closing or ws.state is not State.OPEN:  # closing: what the client sent before is not read
                    break
                s.last_message = loop.time()
                await self._throttle(s, message)
                try:
                    if isinstance(message, str):
                        await self._on_control(s, message)
                    else:
                        await self._on_audio(s, message)
                except ProtocolError as e:
                    self._bad_message(s, e)
        except Refused as r:
            await _wait(self._close(s, r))
        except Exception as e:  # a broken connection ends this session only
            from websockets.exceptions import ConnectionClosed

            if not isinstance(e, ConnectionClosed):
                log.exception("client %d (%s): unexpected error", s.id, address)
                await _wait(self._close(s, Refused(1011, "internal", f"server error: {type(e).__name__}: {str(e)[:200]}")))
        finally:
            watchdog.cancel()
            s.sender.cancel()
            s.streaming = False
            s.asr = None  # an ASR run still going is dropped
            if self.robot is not None:
                self.robot.release(s.id)
            self.sessions.pop(s.id, None)
            self.totals["frames"] += s.frames
            self.totals["dropped"] += s.dropped
            self.note("client %d (%s) gone (%d frames, %d dropped, %d bad messages)", s.id, address, s.frames, s.dropped,
                      s.errors, loud=s.errors > LOUD_ERRORS)  # fmt: skip

    async def _watch(self, s: Session) -> None:
        """Close a connection that has not sent start within ``start_timeout_s`` or has sent nothing for ``idle_timeout_s``."""
        loop = asyncio.get_running_loop()
        cfg = self.config
        while not s.closing:
            now = loop.time()
            deadlines = []
            if cfg.start_timeout_s and not s.started:
                if now >= s.connected + cfg.start_timeout_s:
                    msg = f"no start within {cfg.start_timeout_s:g} s of connecting"
                    self._close(s, Refused(1008, "start_timeout", msg))
                    return
                deadlines.append(s.connected + cfg.start_timeout_s)
            if cfg.idle_timeout_s:
                if now >= s.last_message + cfg.idle_timeout_s:
                    self._close(s, Refused(1008, "idle_timeout", f"no message for {cfg.idle_timeout_s:g} s"))
                    return
                deadlines.append(s.last_message + cfg.idle_timeout_s)
            if not deadlines:
                return
            await asyncio.sleep(max(0.01, min(deadlines) - now))

    async def _throttle(self, s: Session, message) -> None:
        """Hold a client within ``max_msgs_per_s`` and ``max_bytes_per_s``: wait before handling a message
        that exceeds them (TCP back-pressure does the rest); tell the client at most every NOTICE_S seconds.
        A client over the message rate for ``max_flood_s`` without a quarter-second pause is closed (Refused)."""
        now = asyncio.get_running_loop().time()
        cfg = self.config
        wait_messages = s.msg_bucket.take(1, now)
        wait = max(wait_messages, s.byte_bucket.take(len(message), now))
        if wait_messages > 0:
            if s.flooding is None:
                s.flooding = now
            elif cfg.max_flood_s and now - s.flooding >= cfg.max_flood_s:
                raise Refused(1008, "rate_limited", f"over {cfg.max_msgs_per_s:g} messages per second for {cfg.max_flood_s:g} s")
        elif s.msg_bucket.level >= s.msg_bucket.rate / 4:  # a quarter of a second without messages ends a flood
            s.flooding = None
        if wait <= 0:
            return
        self.totals["throttled"] += 1
        if now - s.noticed >= NOTICE_S:
            s.noticed = now
            msg = f"over {cfg.max_msgs_per_s:g} messages or {cfg.max_bytes_per_s:g} bytes per second: messages are read later"
            self.note("client %d (%s): rate_limited: %s", s.id, s.address, msg)
            self._put(s, _Item(_error("rate_limited", msg), error=True))
        await asyncio.sleep(wait)

    def _bad_message(self, s: Session, e: ProtocolError) -> None:
        """Log a bad message (the first LOUD_ERRORS of a connection as warnings, the rest at info level)
        and answer it, or close after ``max_errors`` of them."""
        s.errors += 1
        self.totals["errors"] += 1
        self.note("client %d (%s): %s: %s", s.id, s.address, e.code, e.message, loud=s.errors <= LOUD_ERRORS)
        if self.config.max_errors and s.errors >= self.config.max_errors:
            raise Refused(1008, "too_many_errors", f"{s.errors} bad messages (the last: {e.code})")
        self._put(s, _Item(_error(e.code, e.message), error=True))

    async def _on_control(self, s: Session, text: str) -> None:
        try:
            msg = json.loads(text)
        except (ValueError, RecursionError):
            raise ProtocolError("bad_json", "control messages must be JSON objects") from None
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            raise ProtocolError("bad_message", 'control messages are JSON objects with a "type"')
        kind = msg["type"]
        if kind == "config":
            if s.streaming:
                raise ProtocolError("streaming", "options can change only between streams; send stop first")
            s.options = check_options(msg, s.options)
            self._put(s, _Item(json.dumps({"type": "config", "options": s.options})))
        elif kind == "start":
            if s.streaming:
                raise ProtocolError("already_started", "a stream is running; send stop first")
            options = check_options(msg, s.options)
            if full := self._full():
                raise Refused(1013, "server_full", full)
            s.options, s.started = options, True
            self._begin(s)
            self._put(s, _Item(json.dumps(self._ready(s))))
        elif kind == "stop":
            if not s.streaming:
                raise ProtocolError("not_started", "no stream is running")
            if s.pending:
                await self._push(s, s.chunks - 1)
            if s.asr is not None:  # the last words, before the model's last frames
                if s.asr_job is not None:
                    await s.asr_job
                await self._transcribe(s, final=True)
            frames = await self._compute(s, None)
            self._emit(s, frames, chunk=-1)
            s.streaming = False
            if self.robot is not None:
                self.robot.release(s.id)
            ms = 1e3 * np.array(s.compute_s)
            end = {"type": "end", "frames": s.frames, "dropped": s.dropped, "late": s.late, "held": s.held,
                   "chunks": s.chunks, "audio_s": s.samples / SAMPLE_RATE,  # compute: null when nothing ran
                   "compute_ms_p50": float(np.median(ms)) if len(ms) else None,
                   "compute_ms_p95": float(np.percentile(ms, 95)) if len(ms) else None}  # fmt: skip
            self._put(s, _Item(json.dumps(end, allow_nan=False)))
            if self.config.record_dir:
                await self._record(s)
        elif kind == "words":
            if not s.streaming:
                raise ProtocolError("not_started", 'send {"type": "start"} before words')
            if not self.listener.uses_words:
                raise ProtocolError("no_words", f"this server's model ({self.listener.name}) does not read words")
            s.words.extend(parse_words(msg.get("words")))
        else:
            raise ProtocolError("unknown_type", f"unknown message type {shown(kind)}; use config, start, words or stop")

    async def _on_audio(self, s: Session, data: bytes) -> None:
        if not s.streaming:
            raise ProtocolError("not_started", 'send {"type": "start"} before audio')
        if len(data) % 2:
            raise ProtocolError("odd_length", f"audio messages hold whole 16-bit samples; got {len(data)} bytes")
        if len(data) > self.config.max_chunk_bytes:
            raise ProtocolError(
                "chunk_too_large", f"{len(data)} bytes; at most {self.config.max_chunk_bytes} per message"
            )
        if s.first_audio is None:
            s.first_audio = asyncio.get_running_loop().time()
            s.origin = s.first_audio - len(data) / 2 / SAMPLE_RATE
        chunk = s.chunks
        s.chunks += 1
        s.samples += len(data) // 2
        s.pending.append(data)
        s.pending_n += len(data) // 2
        if self.config.record_dir:
            s.recorded.append(data)
        if s.pending_n >= MIN_PUSH:  # smaller messages wait for the next ones (or stop)
            await self._push(s, chunk)

    async def _push(self, s: Session, chunk: int) -> None:
        """Run the audio gathered since the last model call; its frames count as completed by ``chunk``."""
        audio = decode_pcm16(b"".join(s.pending))
        s.pending, s.pending_n = [], 0
        if s.asr is not None:
            s.asr_audio.append(audio)
            if s.asr_job is None or s.asr_job.done():
                s.asr_job = asyncio.create_task(self._transcribe(s))
        self._emit(s, await self._compute(s, audio), chunk)

    async def _transcribe(self, s: Session, final: bool = False) -> None:
        """Give the stream's ASR the audio it has not seen (on its own thread, beside the model calls);
        the words it confirms reach the model at its next call. ``final``: the stream's end (flush)."""
        asr, audio = s.asr, np.concatenate(s.asr_audio) if s.asr_audio else np.zeros(0, np.float32)
        s.asr_audio = []
        loop = asyncio.get_running_loop()
        try:
            words = await loop.run_in_executor(self._asr_pool(), lambda: asr.push(audio) + (asr.flush() if final else []))
        except Exception as e:  # the stream goes on without words; the client is told once
            if s.asr is asr:
                s.asr = None
                self.note("client %d (%s): streaming ASR failed (%s: %s); the stream goes on without words", s.id,
                          s.address, type(e).__name__, str(e)[:200])  # fmt: skip
                self._put(s, _Item(_error("asr_failed", f"speech recognition failed ({type(e).__name__}); no more words"),
                                   error=True))  # fmt: skip
            return
        if s.asr is asr and words:  # not a stream that ended meanwhile
            s.words.extend(words)
            try:
                self._put(s, _Item(json.dumps({"type": "words", "words": [w.to_dict(detailed=False) for w in words]})))
            except Refused as r:  # a client that reads nothing
                self._close(s, r)

    def _asr_pool(self) -> ThreadPoolExecutor:
        """The ASR threads: one per stream transcribed at once (``asr_streams``), beside the model threads."""
        if self._asr_executor is None:
            self._asr_executor = ThreadPoolExecutor(max_workers=max(1, self.config.asr_streams), thread_name_prefix="realm-asr",
                                                    initializer=set_torch_threads, initargs=(1,))  # fmt: skip
        return self._asr_executor


    async def _record(self, s: Session) -> None:
        """Write the stream's received audio (16-bit, 16 kHz) to ``record_dir/stream-<server start>-<session>-<n>.wav``,
        off the event loop; an existing file is never replaced."""
        import wave

        from realm.io import atomic_path

        out = Path(self.config.record_dir) / f"stream-{self._started}-{s.id}-{s.streams}.wav"
        data, s.recorded = b"".join(s.recorded), []

        def write():
            out.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(out, force=False) as tmp, wave.open(str(tmp), "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(SAMPLE_RATE)
                w.writeframes(data)

        try:
            await asyncio.get_running_loop().run_in_executor(None, write)
            log.info("client %d: stream %d's audio written to %s", s.id, s.streams, out)
        except OSError as e:  # a full disk or an existing file: the stream's end is not held up by it
            self.note("client %d: could not record the stream to %s: %s", s.id, out, e)

    # ------------------------------------------------------------------ model and robot

    def _begin(self, s: Session) -> None:
        o = s.options
        s.streamer = self.listener.streamer(seed=o["seed"], sample=o["sample"], refine=o["refine"])
        s.pipeline = self._new_controls()
        s.streaming, s.chunks, s.samples, s.frames, s.dropped, s.late, s.held, s.last = True, 0, 0, 0, 0, 0, 0, None
        s.first_audio, s.pending, s.pending_n, s.words, s.recorded = None, [], 0, [], []
        s.asr, s.asr_audio, s.asr_job = None, [], None
        if o["asr"] and self.listener.uses_words:
            busy = sum(x.asr is not None for x in self.sessions.values())
            if busy < self.config.asr_streams:
                from realm.text import StreamingASR

                s.asr = StreamingASR()
            else:  # each transcribed stream costs about half a core: the stream goes on without words
                self.note("client %d (%s): %d streams transcribed already (asr_streams): this one gets no ASR", s.id,
                          s.address, busy)  # fmt: skip
        s.streams += 1
        s.compute_s.clear()

    def _new_controls(self):
        """A fresh motion -> controls pipeline at the frame rate (the one export and sim use; its
        safety layer at neutral, ramping in), or None without a profile."""
        if self.profile is None:
            return None
        from realm.embodiment.controls import ControlPipeline

        return ControlPipeline(self.profile, self.listener.spec.name, self.linear_map, self.listener.fps)

    def _ready(self, s: Session) -> dict:
        spec, cfg = self.listener.spec, self.config
        return {
            "type": "ready", "protocol": PROTOCOL, "session": s.id,
            "sample_rate": SAMPLE_RATE, "encoding": ENCODING, "channels": 1,
            "fps": self.listener.fps, "spec": spec.name, "names": spec.names,
            "window": s.streamer.W, "latency_s": s.streamer.latency_s,
            "max_chunk_bytes": cfg.max_chunk_bytes, "queue_frames": cfg.queue_frames,
            "limits": {"max_msgs_per_s": cfg.max_msgs_per_s, "max_bytes_per_s": cfg.max_bytes_per_s,
                       "max_flood_s": cfg.max_flood_s, "idle_timeout_s": cfg.idle_timeout_s,
                       "max_errors": cfg.max_errors, "queue_messages": cfg.queue_messages},
            "profile": self.profile.name if self.profile else None,
            "controls": list(self.profile.names) if self.profile else None,
            "control_ranges": np.column_stack(self.profile.lo_hi()).tolist() if self.profile else None,
            "control_neutral": self.profile.neutral_vector().tolist() if self.profile else None,
            "face": face_description() if s.options["face"] else None,
            "asr": s.asr is not None, "uses_words": bool(self.listener.uses_words),
            "options": s.options,
        }  # fmt: skip

    async def _compute(self, s: Session, audio: np.ndarray | None):
        """Push audio (None: flush) through this session's streamer on a model thread, in its turn:
        the turn of a chunk is when its audio ends at real-time pace (AHEAD_GRACE_S early), or now if later."""
        streamer, pipeline, start = s.streamer, s.pipeline, s.frames
        if s.words:  # the words heard since the last call (a session's calls run one after another)
            streamer.add_words(s.words)
            s.words = []
        now = asyncio.get_running_loop().time()
        key = now if audio is None else max(now, s.origin + s.samples / SAMPLE_RATE - AHEAD_GRACE_S)
        t0 = time.perf_counter()
        (frames, controls, faces, took), _, ahead = await self.scheduler.run(
            key, self._timed, streamer, pipeline, start, audio, s.options["face"]
        )  # fmt: skip
        if len(frames):
            s.compute_s.append(time.perf_counter() - t0)
            self._costs.append(took / len(frames))
            if not ahead and audio is not None:  # a real-time call (not the flush at stop)
                self._lags.append((now, s.compute_s[-1]))
        return frames, controls, faces

    def _timed(self, streamer, pipeline, start: int, audio, face: bool = False):
        """:meth:`_run_model` and the seconds it took on its thread."""
        t0 = time.perf_counter()
        frames, controls, faces = self._run_model(streamer, pipeline, start, audio, face)
        return frames, controls, faces, time.perf_counter() - t0

    def _run_model(self, streamer, pipeline, start: int, audio, face: bool = False):
        """Frames (and controls, and with ``face`` each frame's face shapes: None for a non-finite frame)."""
        frames = streamer.flush() if audio is None else streamer.push(audio)
        controls = faces = None
        if pipeline is not None and len(frames):  # the session's ControlPipeline, frame by frame
            controls = pipeline.step(frames, start / self.listener.fps)
        if face and len(frames):
            spec = self.listener.spec
            faces = [encode_shapes(face_shapes(*face_frame(spec, f))) if np.isfinite(f).all() else None for f in frames]
        return frames, controls, faces

    def _emit(self, s: Session, result, chunk: int) -> None:
        frames, controls, faces = result
        fps = self.listener.fps
        origin = s.first_audio if s.first_audio is not None else asyncio.get_running_loop().time()
        bad = ~np.isfinite(frames).all(axis=1) if len(frames) else np.zeros(0, bool)  # one check a call
        if bad.any():  # JSON has no NaN: hold the last frame, count it, log once a call (within budget)
            s.held += int(bad.sum())
            self.note("session %d: %d non-finite model frame(s) from %d replaced by the last frame", s.id,
                      int(bad.sum()), s.frames + int(np.argmax(bad)))  # fmt: skip
        for k, f in enumerate(frames):
            i = s.frames + k
            if bad[k]:
                f = s.last if s.last is not None else np.nan_to_num(f, nan=0.0, posinf=0.0, neginf=0.0)
            s.last = f
            msg = {"type": "frame", "i": i, "t": i / fps, "chunk": chunk, "motion": f}
            if controls is not None:
                msg["controls"] = controls[k]
            if faces is not None and faces[k] is not None:  # a held frame keeps the face drawn last
                msg["face"] = faces[k]
            due = origin + self.latency_s + s.options["margin_s"] + i / fps if s.options["pace"] == "realtime" else 0.0
            self._put(s, _Item(msg, frame=True, due=due))
        if self.robot is not None and controls is not None and len(frames) and s.streaming:
            plays = [origin + self.latency_s + s.options["margin_s"] + (s.frames + k) / fps for k in range(len(frames))]
            self.robot.forward(s.id, controls, plays)
        s.frames += len(frames)

    # ------------------------------------------------------------------ outgoing queue

    def _put(self, s: Session, item: _Item) -> None:
        """Queue a message. Past ``queue_frames`` frames the oldest frame is dropped; past
        ``queue_messages`` other messages a new error is dropped and anything else raises Refused."""
        if item.frame:
            if s.queued_frames >= self.config.queue_frames:
                for k, x in enumerate(s.queue):
                    if x.frame:
                        del s.queue[k]
                        s.queued_frames -= 1
                        s.dropped += 1
                        break
            s.queued_frames += 1
        else:
            if s.queued_other >= self.config.queue_messages:
                if item.error:
                    s.errors_dropped += 1
                    return
                raise Refused(1008, "not_reading", f"{s.queued_other} messages unread: a client must read its messages")
            s.queued_other += 1
        s.queue.append(item)
        s.wake.set()

    async def _send_loop(self, ws, s: Session) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                while not s.queue:
                    s.wake.clear()
                    await s.wake.wait()
                item = s.queue[0]
                if item.frame and item.due:
                    wait = item.due - loop.time()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    elif wait < -1.0 / self.listener.fps:
                        s.late += 1
                    if not s.queue or s.queue[0] is not item:  # dropped while waiting
                        continue
                s.queue.popleft()
                if item.frame:
                    s.queued_frames -= 1
                else:
                    s.queued_other -= 1
                await ws.send(_encode(item.body))
        except asyncio.CancelledError:
            raise
        except Exception:  # the connection is gone; the reader ends the session
            return


def _encode(msg: str | dict) -> str:
    """A queued message as JSON text (a frame's arrays as lists of floats)."""
    if isinstance(msg, str):
        return msg
    msg = dict(msg, motion=msg["motion"].astype(np.float64).tolist())
    if "controls" in msg:
        msg["controls"] = msg["controls"].tolist()
    return json.dumps(msg)


def _error(code: str, message: str) -> str:
    return json.dumps({"type": "error", "code": code, "message": message})


def _address(remote) -> str:
    """A peer address as ``host:port`` (``[v6]:port``)."""
    if isinstance(remote, (tuple, list)) and len(remote) >= 2:
        host = f"[{remote[0]}]" if ":" in str(remote[0]) else remote[0]
        return f"{host}:{remote[1]}"
    return str(remote)


async def _wait(task) -> None:
    if task is not None:
        await task


async def _shut(ws, r: Refused) -> None:
    """Send the refusal's error, then close with its code; a peer that does not take them within CLOSE_S is cut off."""
    try:
        await asyncio.wait_for(ws.send(_error(r.code, r.message)), CLOSE_S)
        await asyncio.wait_for(ws.close(r.close, r.code), CLOSE_S)
    except Exception:  # not reading, or gone: drop the connection
        ws.transport.abort()


# ---------------------------------------------------------------- the client


@dataclass
class ListenResult:
    """What a client received for one stream."""

    motion: np.ndarray  # (T, D) frames in order; missing frames are NaN rows
    controls: np.ndarray | None  # (T, n) robot controls when the server has a profile
    ready: dict  # the server's ready message (spec, names, fps, latency_s, ...)
    end: dict  # the server's end message (frames, dropped, late, ...)
    latency_s: np.ndarray  # (T,) chunk sent -> frame received (NaN for missing frames)
    chunk: np.ndarray  # (T,) index of the audio message that completed each frame (-1: stop)
    expected: int  # frames the audio holds
    errors: list  # error messages the server sent
    words: list = field(default_factory=list)  # the words the server's ASR confirmed ({"word", "start", "end"}; option asr)

    @property
    def received(self) -> int:
        return int(np.isfinite(self.latency_s).sum())

    @property
    def missing(self) -> int:
        return self.expected - self.received

    def stats(self, late_ms: float = 100.0) -> dict:
        """Latency percentiles over streamed frames (those completed by an audio chunk), in ms."""
        lat = self.latency_s[(self.chunk >= 0) & np.isfinite(self.latency_s)] * 1e3
        pct = (lambda q: float(np.percentile(lat, q))) if len(lat) else (lambda q: float("nan"))
        return {
            "frames": self.received, "expected": self.expected, "missing": self.missing,
            "dropped": int(self.end.get("dropped", 0)), "server_late": int(self.end.get("late", 0)),
            "late": int((lat > late_ms).sum()), "late_ms": late_ms,
            "p50_ms": pct(50), "p95_ms": pct(95), "max_ms": float(lat.max()) if len(lat) else float("nan"),
            "algorithmic_latency_ms": 1e3 * float(self.ready.get("latency_s", float("nan"))),
        }  # fmt: skip


async def listen_async(
    url: str, audio: np.ndarray, *, realtime: bool = True, chunk_ms: float = 100.0, options: dict | None = None,
    open_timeout: float = 10.0, on_frame=None, token: str | None = None, ssl=None,
) -> ListenResult:  # fmt: skip
    """Stream 16 kHz float ``audio`` to a server (at real-time pace or as fast as possible) and collect frames.

    ``audio`` is a waveform, or a live source: an async iterable of float32 chunks (e.g.
    :func:`realm.audio.microphone_chunks`), sent as they come. ``token`` is sent as
    ``Authorization: Bearer TOKEN``; ``ssl`` is an SSL context for wss:// (default: the system's)."""
    from websockets.asyncio.client import connect

    live = hasattr(audio, "__aiter__")
    if not live:
        audio = np.asarray(audio, np.float32).reshape(-1)
    step = max(1, int(round(chunk_ms * SAMPLE_RATE / 1000)))
    chunks = audio if live else [audio[k : k + step] for k in range(0, len(audio), step)]
    n_samples = [0]
    sent: list[float] = []
    got: dict[int, tuple] = {}
    errors: list = []
    heard: list = []
    state: dict = {}
    loop = asyncio.get_running_loop()
    headers = {"Authorization": f"Bearer {token}"} if token else None
    tls = {"ssl": ssl} if ssl is not None else {}
    async with connect(url, open_timeout=open_timeout, max_size=None, additional_headers=headers, **tls) as ws:
        await ws.send(json.dumps({"type": "start", **(options or {})}))
        ready = json.loads(await ws.recv())
        if ready.get("type") != "ready":
            raise ValueError(f"{url}: server refused the stream: {ready.get('message', ready)}")

        async def send_one(c):
            sent.append(loop.time())
            n_samples[0] += len(c)
            await ws.send(encode_pcm16(c))

        async def send():
            t0 = loop.time()
            if live:  # a live source paces itself
                async for c in chunks:
                    await send_one(np.asarray(c, np.float32).reshape(-1))
            else:
                for k, c in enumerate(chunks):
                    if realtime:
                        wait = t0 + k * step / SAMPLE_RATE - loop.time()
                        if wait > 0:
                            await asyncio.sleep(wait)
                    await send_one(c)
            state["stop"] = loop.time()
            await ws.send(json.dumps({"type": "stop"}))

        sender = asyncio.create_task(send())
        async for text in ws:
            msg = json.loads(text)
            kind = msg.get("type")
            if kind == "frame":
                now = loop.time()
                c = msg["chunk"]
                origin = sent[c] if 0 <= c < len(sent) else state.get("stop", now)
                got[msg["i"]] = (msg["motion"], msg.get("controls"), now - origin, c)
                if on_frame is not None:
                    on_frame(msg)
            elif kind == "end":
                state["end"] = msg
                break
            elif kind == "error":
                errors.append(msg)
            elif kind == "words":  # what the server's ASR heard (option asr)
                heard.extend(msg["words"])
        await sender
    expected = n_frames(n_samples[0], ready["fps"])
    T = max(expected, max(got, default=-1) + 1)
    D = len(ready["names"])
    motion = np.full((T, D), np.nan, np.float32)
    n_ctrl = len(ready["controls"]) if ready.get("controls") else 0
    controls = np.full((T, n_ctrl), np.nan, np.float64) if n_ctrl else None
    latency = np.full(T, np.nan)
    chunk_of = np.full(T, -2, np.int64)
    for i, (m, c, lat, ch) in got.items():
        motion[i] = m
        if controls is not None and c is not None:
            controls[i] = c
        latency[i], chunk_of[i] = lat, ch
    return ListenResult(motion, controls, ready, state.get("end", {}), latency, chunk_of, expected, errors, heard)


def listen(url: str, audio, **kw) -> ListenResult:
    """Blocking :func:`listen_async` for a file path or a 16 kHz waveform."""
    from realm.audio import load_audio

    y = load_audio(audio) if isinstance(audio, (str, Path)) else audio
    return asyncio.run(listen_async(url, y, **kw))


def save_listen(result: ListenResult, out: str | Path, audio: str = "", force: bool = False) -> None:
    """Write what a client received as a motion .npz (readable by export, render and eval).

    Files hold no NaN: a frame that never arrived (``received`` False) holds the last frame
    that did (the first received one before it; zeros if none came), and its ``latency_s`` is -1."""
    from realm.io import refuse_existing, save_npz

    out = Path(out)
    if not force:
        refuse_existing(out)  # before the work; save_npz checks again when it writes
    got = np.isfinite(result.latency_s) & np.isfinite(result.motion).all(1)
    extra = {}
    if result.controls is not None:
        extra = {"controls": _hold(result.controls, got), "control_names": np.array(result.ready["controls"])}
    save_npz(
        out, force=force, listener=_hold(result.motion, got)[None], spec=np.array(result.ready["spec"]),
        fps=np.array(result.ready["fps"]), latency_s=np.where(got, result.latency_s, -1.0), received=got,
        chunk=result.chunk, audio=np.array(str(audio)), **extra,
    )  # fmt: skip


def _hold(x: np.ndarray, got: np.ndarray) -> np.ndarray:
    """Rows of x (T, n) where ``got`` is False replaced by the last received row (the first one before it)."""
    if not got.any():
        return np.zeros_like(x)
    idx = np.where(got, np.arange(len(x)), 0)
    np.maximum.accumulate(idx, out=idx)
    idx[: int(np.argmax(got))] = int(np.argmax(got))
    return x[idx]
