"""Live listening: a WebSocket server from speech audio to listener frames and robot controls.

    realm serve --checkpoint RUN [--profile ameca] [--host 127.0.0.1] [--port 8765]
    realm listen --server ws://127.0.0.1:8765 --audio speech.wav --realtime --out heard.npz

One connection is one listener. Protocol version 1 (docs/serving.md has the full text):

**Client -> server**

* Text messages are JSON control messages with a ``type``:

  - ``{"type": "config", ...options}``: set options for the next stream (only between streams);
    answered by ``{"type": "config", "options": {...}}``.
  - ``{"type": "start", ...options}``: begin a stream; answered by ``{"type": "ready", ...}``
    (fps, spec and value names, control names, window, algorithmic latency, limits).
  - ``{"type": "stop"}``: end the stream; the server sends the remaining frames, then
    ``{"type": "end", "frames", "dropped", "late", "chunks", "audio_s", "held", "compute_ms_p50",
    "compute_ms_p95"}`` (held: non-finite model frames replaced by the last frame sent, so no
    message carries NaN; the compute times are null when nothing ran).
    A new ``start`` may follow.

  Options: ``sample_rate`` (must be 16000), ``encoding`` (``pcm_s16le``), ``channels`` (1),
  ``seed`` and ``sample`` (refinement noise, as ``realm generate``), ``refine`` (bool),
  ``pace`` (``"asap"``: send each frame as soon as it is computed; ``"realtime"``: hold each
  frame until its play time, ``first audio + latency_s + margin_s + i / fps``).
* Binary messages are audio: 16-bit signed little-endian PCM, mono, 16 kHz, any whole number
  of samples per message up to ``max_chunk_bytes`` (1 s by default).

**Server -> client** (JSON text)

* ``{"type": "frame", "i", "t", "chunk", "motion": [...], "controls": [...]}``: frame ``i`` at
  stream time ``t = i / fps`` s; ``chunk`` is the index of the audio message whose arrival
  completed it (-1: produced by ``stop``), so a client measures "chunk sent -> frame received"
  exactly; ``motion`` holds the spec's values; ``controls`` the robot controls after the safety
  layer (present when the server has a ``--profile``).
* ``{"type": "error", "code", "message"}``: a bad message is answered and otherwise ignored;
  the session goes on. Messages larger than the WebSocket limit close the connection (1009).

**Bounded memory.** Each client has an outgoing queue of ``queue_frames`` frames; when a
client reads too slowly the oldest frames are dropped and counted (``end.dropped``). Incoming
audio is read one message at a time, so a client that sends faster than the model runs is
slowed by TCP back-pressure, not buffered. Model compute runs in a small thread pool, so one
client's window never blocks the event loop that serves the others.

Frames equal those of :class:`realm.generate.Streamer` fed the same (16-bit) samples with the
same seed: the server is a transport around it (tested).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from realm.audio import SAMPLE_RATE, get_extractor, n_frames
from realm.threads import set_torch_threads

log = logging.getLogger(__name__)

PROTOCOL = 1
ENCODING = "pcm_s16le"
PACES = ("asap", "realtime")
DEFAULT_OPTIONS = {
    "sample_rate": SAMPLE_RATE, "encoding": ENCODING, "channels": 1,
    "seed": 0, "sample": 0, "refine": True, "pace": "asap", "margin_s": 0.05,
}  # fmt: skip


@dataclass
class ServerConfig:
    """Limits and resources of a :class:`ListenerServer`."""

    host: str = "127.0.0.1"  # loopback unless asked otherwise
    port: int = 8765  # 0: any free port (see ListenerServer.port)
    max_clients: int = 32
    max_chunk_s: float = 1.0  # largest audio message, in seconds of 16 kHz audio
    queue_frames: int = 90  # outgoing frames kept per client (3 s at 30 fps); older ones are dropped
    send_buffer_bytes: int = 65536  # kernel send buffer per client: a slow reader shows up as drops, not as seconds of delay
    workers: int = 2  # model threads shared by all clients
    torch_threads: int = 1  # intra-op threads per model call

    @property
    def max_chunk_bytes(self) -> int:
        return int(self.max_chunk_s * SAMPLE_RATE) * 2


class ProtocolError(Exception):
    """A bad client message: answered with ``{"type": "error", "code", "message"}``."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def check_options(options: dict, base: dict) -> dict:
    """``base`` updated with the recognised, validated entries of ``options`` (ProtocolError otherwise)."""
    out = dict(base)
    for key, value in options.items():
        if key == "type":
            continue
        if key not in DEFAULT_OPTIONS:
            raise ProtocolError("bad_option", f"unknown option {key!r}; known: {sorted(DEFAULT_OPTIONS)}")
        if key == "sample_rate":
            if value != SAMPLE_RATE:
                raise ProtocolError(
                    "bad_sample_rate", f"sample_rate must be {SAMPLE_RATE} (got {value!r}); resample before sending"
                )
        elif key == "encoding":
            if value != ENCODING:
                raise ProtocolError("bad_encoding", f"encoding must be {ENCODING!r} (got {value!r})")
        elif key == "channels":
            if value != 1:
                raise ProtocolError("bad_channels", f"audio must be mono (channels 1, got {value!r})")
        elif key in ("seed", "sample"):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ProtocolError("bad_option", f"{key} must be an integer >= 0 (got {value!r})")
        elif key == "refine":
            if not isinstance(value, bool):
                raise ProtocolError("bad_option", f"refine must be true or false (got {value!r})")
        elif key == "pace":
            if value not in PACES:
                raise ProtocolError("bad_option", f"pace must be one of {list(PACES)} (got {value!r})")
        elif key == "margin_s":
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 10:
                raise ProtocolError("bad_option", f"margin_s must be a number in [0, 10] (got {value!r})")
        out[key] = value
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
    """One outgoing message; frames may be dropped, control messages never."""

    text: str
    frame: bool = False
    due: float = 0.0  # loop time before which a paced frame is not sent


@dataclass
class Session:
    """The state of one connected client."""

    id: int
    options: dict = field(default_factory=lambda: dict(DEFAULT_OPTIONS))
    streamer: object = None
    safety: object = None
    streaming: bool = False
    chunks: int = 0  # audio messages of this stream
    samples: int = 0
    frames: int = 0  # frames produced in this stream
    dropped: int = 0
    late: int = 0
    first_audio: float | None = None  # loop time of the first audio message
    queue: deque = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    compute_s: deque = field(default_factory=lambda: deque(maxlen=1024))  # seconds per model call that made frames
    last: np.ndarray | None = None  # the last frame sent (held in place of a non-finite one)
    held: int = 0  # non-finite model frames replaced by the last frame (never sent as NaN)


class ListenerServer:
    """Serves one streaming checkpoint to many WebSocket clients, each with its own state.

    ``listener`` is a loaded REALM run whose features stream (logmel, vico45, prosody);
    ``profile`` (a robot profile name or path) adds safe robot controls to every frame;
    ``linear_map`` maps non-arkit58 motion to arkit58 for retargeting.
    """

    def __init__(self, listener, profile=None, linear_map=None, config: ServerConfig | None = None):
        from realm.errors import RealmInputError

        self.config = config or ServerConfig()
        if not hasattr(listener, "streamer"):
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
            from realm.embodiment.retarget import ARKIT

            self.profile = load_profile(profile)
            if listener.spec.name != ARKIT and linear_map is None:
                raise RealmInputError(
                    listener.path, f"motion spec {listener.spec.name} needs --map (a linear map to arkit58) for robot controls"
                )
        self.executor = ThreadPoolExecutor(
            max_workers=self.config.workers, thread_name_prefix="realm-serve",
            initializer=set_torch_threads, initargs=(self.config.torch_threads,),  # per worker: OpenMP's count is per thread
        )  # fmt: skip
        self.sessions: dict[int, Session] = {}
        self.totals = {"clients": 0, "frames": 0, "dropped": 0, "refused": 0}
        self._next_id = 0
        self._server = None
        self._limits = None  # the BLAS/OpenMP thread limits held while serving
        self.port: int | None = None
        self.latency_s = listener.streamer().latency_s

    # ------------------------------------------------------------------ lifecycle

    async def start(self):
        """Bind and start accepting clients (returns once listening)."""
        from threadpoolctl import threadpool_limits
        from websockets.asyncio.server import serve

        # BLAS/OpenMP pools sized for the whole machine busy-wait after each small call (the
        # streamer already extracts features under one BLAS thread; this covers the rest, e.g.
        # retargeting): before these limits, spinning cost 6x the model's own CPU time per client.
        self._limits = threadpool_limits(limits=self.config.torch_threads)
        limit = self.config.max_chunk_bytes + 4096  # the WebSocket frame limit: larger messages close the connection
        await self._warm_up()
        self._server = await serve(self._handle, self.config.host, self.config.port, max_size=limit, max_queue=4)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("listening on ws://%s:%d", self.config.host, self.port)
        return self

    async def _warm_up(self) -> None:
        """Run one stream per worker before accepting clients: the first model call of a thread
        pays for lazy initialisation (1-2 s measured), which would otherwise land on the first client."""
        loop = asyncio.get_running_loop()

        def one():
            streamer, safety = self.listener.streamer(), self._new_safety()
            self._run_model(streamer, safety, 0, np.zeros(SAMPLE_RATE, np.float32))
            self._run_model(streamer, safety, 0, None)

        await asyncio.gather(*[loop.run_in_executor(self.executor, one) for _ in range(self.config.workers)])

    @property
    def url(self) -> str:
        return f"ws://{self.config.host}:{self.port}"

    async def close(self) -> None:
        """Stop accepting, close every connection with 1001 (going away), wait for them to end."""
        if self._server is not None:
            self._server.close(close_connections=True)
            await self._server.wait_closed()
            self._server = None
        self.executor.shutdown(wait=True, cancel_futures=True)
        if self._limits is not None:
            self._limits.restore_original_limits()
            self._limits = None

    async def serve_forever(self) -> None:
        if self._server is None:
            await self.start()
        await self._server.serve_forever()

    # ------------------------------------------------------------------ one client

    async def _handle(self, ws) -> None:
        if len(self.sessions) >= self.config.max_clients:
            self.totals["refused"] += 1
            await ws.send(_error("server_full", f"{self.config.max_clients} clients connected; try again later"))
            await ws.close(1013, "server full")
            return
        sock = ws.transport.get_extra_info("socket")
        if sock is not None and self.config.send_buffer_bytes:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.config.send_buffer_bytes)
        s = Session(self._next_id)
        self._next_id += 1
        self.sessions[s.id] = s
        self.totals["clients"] += 1
        sender = asyncio.create_task(self._send_loop(ws, s))
        log.info("client %d connected from %s", s.id, ws.remote_address)
        try:
            async for message in ws:
                try:
                    if isinstance(message, str):
                        await self._on_control(s, message)
                    else:
                        await self._on_audio(s, message)
                except ProtocolError as e:
                    self._put(s, _Item(_error(e.code, e.message)))
        except Exception as e:  # a broken connection ends this session only
            from websockets.exceptions import ConnectionClosed

            if not isinstance(e, ConnectionClosed):
                log.exception("client %d: unexpected error", s.id)
                try:  # tell the client, then end only this session
                    await ws.send(_error("internal", f"server error: {type(e).__name__}: {e}"))
                    await ws.close(1011, "internal error")
                except Exception:
                    pass
        finally:
            sender.cancel()
            self.sessions.pop(s.id, None)
            self.totals["frames"] += s.frames
            self.totals["dropped"] += s.dropped
            log.info("client %d gone (%d frames, %d dropped)", s.id, s.frames, s.dropped)

    async def _on_control(self, s: Session, text: str) -> None:
        try:
            msg = json.loads(text)
        except ValueError:
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
            s.options = check_options(msg, s.options)
            self._begin(s)
            self._put(s, _Item(json.dumps(self._ready(s))))
        elif kind == "stop":
            if not s.streaming:
                raise ProtocolError("not_started", "no stream is running")
            frames = await self._compute(s, None)
            self._emit(s, frames, chunk=-1)
            s.streaming = False
            ms = 1e3 * np.array(s.compute_s)
            end = {"type": "end", "frames": s.frames, "dropped": s.dropped, "late": s.late, "held": s.held,
                   "chunks": s.chunks, "audio_s": s.samples / SAMPLE_RATE,  # compute: null when nothing ran
                   "compute_ms_p50": float(np.median(ms)) if len(ms) else None,
                   "compute_ms_p95": float(np.percentile(ms, 95)) if len(ms) else None}  # fmt: skip
            self._put(s, _Item(json.dumps(end, allow_nan=False)))
        else:
            raise ProtocolError("unknown_type", f"unknown message type {kind!r}; use config, start or stop")

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
        chunk = s.chunks
        s.chunks += 1
        s.samples += len(data) // 2
        frames = await self._compute(s, decode_pcm16(data))
        self._emit(s, frames, chunk)

    # ------------------------------------------------------------------ model and robot

    def _begin(self, s: Session) -> None:
        o = s.options
        s.streamer = self.listener.streamer(seed=o["seed"], sample=o["sample"], refine=o["refine"])
        s.safety = self._new_safety()
        s.streaming, s.chunks, s.samples, s.frames, s.dropped, s.late, s.held, s.last = True, 0, 0, 0, 0, 0, 0, None
        s.first_audio = None
        s.compute_s.clear()

    def _new_safety(self):
        """A fresh safety layer at the frame rate (neutral, ramping in), or None without a profile."""
        if self.profile is None:
            return None
        from realm.embodiment.safety import SafetyLayer

        return SafetyLayer(self.profile, rate_hz=self.listener.fps)

    def _ready(self, s: Session) -> dict:
        spec = self.listener.spec
        return {
            "type": "ready", "protocol": PROTOCOL, "session": s.id,
            "sample_rate": SAMPLE_RATE, "encoding": ENCODING, "channels": 1,
            "fps": self.listener.fps, "spec": spec.name, "names": spec.names,
            "window": s.streamer.W, "latency_s": s.streamer.latency_s,
            "max_chunk_bytes": self.config.max_chunk_bytes, "queue_frames": self.config.queue_frames,
            "profile": self.profile.name if self.profile else None,
            "controls": list(self.profile.names) if self.profile else None,
            "options": s.options,
        }  # fmt: skip

    async def _compute(self, s: Session, audio: np.ndarray | None):
        """Push audio (None: flush) through this session's streamer in the thread pool."""
        streamer, safety, start = s.streamer, s.safety, s.frames
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        frames, controls = await loop.run_in_executor(self.executor, self._run_model, streamer, safety, start, audio)
        if len(frames):
            s.compute_s.append(time.perf_counter() - t0)
        return frames, controls

    def _run_model(self, streamer, safety, start: int, audio):
        frames = streamer.flush() if audio is None else streamer.push(audio)
        controls = None
        if safety is not None and len(frames):
            from realm.embodiment.retarget import retarget

            raw = retarget(frames, self.profile, self.listener.spec.name, self.linear_map)
            fps = self.listener.fps
            controls = np.stack([safety.step(c, (start + k) / fps) for k, c in enumerate(raw)])
        return frames, controls

    def _emit(self, s: Session, result, chunk: int) -> None:
        frames, controls = result
        fps = self.listener.fps
        origin = s.first_audio if s.first_audio is not None else asyncio.get_running_loop().time()
        for k, f in enumerate(frames):
            i = s.frames + k
            if not np.isfinite(f).all():  # JSON has no NaN: hold the last frame, count it
                f = s.last if s.last is not None else np.nan_to_num(f, nan=0.0, posinf=0.0, neginf=0.0)
                s.held += 1
                log.warning("session %d: non-finite model frame %d replaced by the last frame", s.id, i)
            s.last = f
            msg = {"type": "frame", "i": i, "t": i / fps, "chunk": chunk, "motion": f.astype(np.float64).tolist()}
            if controls is not None:
                msg["controls"] = controls[k].tolist()
            due = origin + self.latency_s + s.options["margin_s"] + i / fps if s.options["pace"] == "realtime" else 0.0
            self._put(s, _Item(json.dumps(msg), frame=True, due=due))
        s.frames += len(frames)

    # ------------------------------------------------------------------ outgoing queue

    def _put(self, s: Session, item: _Item) -> None:
        """Queue a message; when the client is behind by ``queue_frames`` frames, drop the oldest frame."""
        if item.frame and sum(x.frame for x in s.queue) >= self.config.queue_frames:
            for k, x in enumerate(s.queue):
                if x.frame:
                    del s.queue[k]
                    s.dropped += 1
                    break
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
                await ws.send(item.text)
        except asyncio.CancelledError:
            raise
        except Exception:  # the connection is gone; the reader ends the session
            return


def _error(code: str, message: str) -> str:
    return json.dumps({"type": "error", "code": code, "message": message})


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
    open_timeout: float = 10.0, on_frame=None,
) -> ListenResult:  # fmt: skip
    """Stream 16 kHz float ``audio`` to a server (at real-time pace or as fast as possible) and collect frames."""
    from websockets.asyncio.client import connect

    audio = np.asarray(audio, np.float32).reshape(-1)
    step = max(1, int(round(chunk_ms * SAMPLE_RATE / 1000)))
    chunks = [audio[k : k + step] for k in range(0, len(audio), step)]
    sent: list[float] = []
    got: dict[int, tuple] = {}
    errors: list = []
    state: dict = {}
    loop = asyncio.get_running_loop()
    async with connect(url, open_timeout=open_timeout, max_size=None) as ws:
        await ws.send(json.dumps({"type": "start", **(options or {})}))
        ready = json.loads(await ws.recv())
        if ready.get("type") != "ready":
            raise ValueError(f"{url}: server refused the stream: {ready.get('message', ready)}")

        async def send():
            t0 = loop.time()
            for k, c in enumerate(chunks):
                if realtime:
                    wait = t0 + k * step / SAMPLE_RATE - loop.time()
                    if wait > 0:
                        await asyncio.sleep(wait)
                sent.append(loop.time())
                await ws.send(encode_pcm16(c))
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
        await sender
    expected = n_frames(len(audio), ready["fps"])
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
    return ListenResult(motion, controls, ready, state.get("end", {}), latency, chunk_of, expected, errors)


def listen(url: str, audio, **kw) -> ListenResult:
    """Blocking :func:`listen_async` for a file path or a 16 kHz waveform."""
    from realm.audio import load_audio

    y = load_audio(audio) if isinstance(audio, (str, Path)) else audio
    return asyncio.run(listen_async(url, y, **kw))


def save_listen(result: ListenResult, out: str | Path, audio: str = "", force: bool = False) -> None:
    """Write what a client received as a motion .npz (readable by export, render and eval).

    Files hold no NaN: a frame that never arrived (``received`` False) holds the last frame
    that did (the first received one before it; zeros if none came), and its ``latency_s`` is -1."""
    from realm.io import save_npz

    out = Path(out)
    if out.exists() and not force:
        raise FileExistsError(f"{out}: exists (use --force to overwrite)")
    got = np.isfinite(result.latency_s) & np.isfinite(result.motion).all(1)
    extra = {}
    if result.controls is not None:
        extra = {"controls": _hold(result.controls, got), "control_names": np.array(result.ready["controls"])}
    save_npz(
        out, listener=_hold(result.motion, got)[None], spec=np.array(result.ready["spec"]),
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
