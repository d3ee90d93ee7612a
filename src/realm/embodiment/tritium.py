"""Stream robot control frames to an Engineered Arts Tritium gateway (e.g. an Ameca robot).

The client library is ``tritium-remote-py`` (the optional extra ``realm-listener[ameca]``); it is
imported only when a :class:`TritiumStreamer` is created, and its absence is one clear error.

What the package does (version 1.1.3, read from its source):

* ``tritium_remote_py.connect_websocket(url, auth_token, description)`` opens a WebSocket to the
  gateway (``ws://<host>:1234`` in its example) with two HTTP headers: ``x-tritium-token`` (a JWT
  granting access to the system) and ``x-tritium-session-metadata`` (JSON
  ``{"session_type": "graphql", "description": ...}``).
* Everything after that is GraphQL over JSON text frames. A request is
  ``{"type": "graphql", "request_id": n, "document": ..., "variable_values": {...}}``; the gateway
  answers ``{"type": "graphql_response", "request_id": n, "data": {"data": ..., "errors": ...}}``.
* ``TritiumRemote.post_message(channel, message)`` sends the mutation
  ``postMessage(input: {channel, message})`` and waits (up to 10 s) for the response; a script
  running on the robot picks the message up from the named channel.
* Its ``connected`` property reads ``ws.open``, which the ``websockets>=14`` connection it
  creates no longer has, so this module never uses it: a dropped connection is detected by
  ``post_message`` failing or not being answered within ``reply_timeout_s``.

Each message this module posts is one JSON object::

    {"t": 12.345, "seq": 812, "controls": {"Head Yaw": 3.2, "Jaw Pitch": 0.1, ...}}

``t`` is the frame's time in seconds (the producer's clock, ``time.monotonic()`` by default),
``seq`` counts pushed frames (gaps mean frames were superseded before they could be sent) and a
non-finite control value is sent as ``null``. What the receiving script must do is in
docs/embodiment.md, "Tritium (on-robot side)".
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_PORT = 1234
INSTALL_HINT = "pip install 'realm-listener[ameca]'"


def import_tritium():
    """The ``tritium_remote_py`` module, or an ImportError that says how to install it."""
    try:
        import tritium_remote_py
    except ImportError as e:
        raise ImportError(
            f"streaming to a Tritium robot needs the tritium-remote-py package: {INSTALL_HINT}"
        ) from e
    return tritium_remote_py


def gateway_url(host: str) -> str:
    """``"robot.local"`` -> ``"ws://robot.local:1234"``; a ``ws://`` or ``wss://`` URL is kept as is."""
    if host.startswith(("ws://", "wss://")):
        return host
    return f"ws://{host}" if ":" in host.rsplit("]", 1)[-1] else f"ws://{host}:{DEFAULT_PORT}"


@dataclass
class StreamStats:
    """Counters of a :class:`TritiumStreamer` (a snapshot; see :meth:`TritiumStreamer.stats`)."""

    pushed: int = 0  # frames given to push()
    sent: int = 0  # frames the gateway acknowledged
    superseded: int = 0  # frames replaced by a newer one before they could be sent
    connects: int = 0  # successful connections (1 + reconnects)
    drops: int = 0  # connections lost while streaming
    connect_failures: int = 0  # failed connection attempts
    connected: bool = False
    last_error: str | None = None


Connect = Callable[[str, str, str], Awaitable[Any]]


class TritiumStreamer:
    """Send the latest control frame to a Tritium channel at a fixed rate, from a background thread.

    ``push(frame)`` only stores the frame and returns at once; the sender thread posts the newest
    frame at each tick of ``rate_hz`` and drops the ones it never got to (nothing queues up).
    A frame is sent once; with ``resend=True`` the last frame is re-posted at every tick even when
    no new one came (its ``t`` and ``seq`` stay the same, so the robot can still tell it is stale).
    When the connection fails or drops, the thread reconnects with exponential backoff from
    ``backoff_s[0]`` to ``backoff_s[1]`` seconds while push() keeps accepting frames.

    Use as a context manager, or call :meth:`start` and :meth:`stop`::

        with TritiumStreamer("ameca.local", "realm_controls", rate_hz=30, names=profile.names) as s:
            for row in controls:
                s.push(row)
                time.sleep(1 / 30)
    """

    def __init__(
        self,
        url: str,
        channel: str = "realm_controls",
        rate_hz: float = 30.0,
        *,
        auth_token: str | None = None,
        names: Sequence[str] | None = None,
        description: str = "realm-listener control stream",
        reply_timeout_s: float = 1.0,
        connect_timeout_s: float = 3.0,
        backoff_s: tuple[float, float] = (0.1, 5.0),
        resend: bool = False,
        connect: Connect | None = None,
    ):
        if not rate_hz > 0:
            raise ValueError(f"rate_hz must be positive, got {rate_hz}")
        if not 0 < backoff_s[0] <= backoff_s[1]:
            raise ValueError(f"backoff_s must be (min, max) with 0 < min <= max, got {backoff_s}")
        if connect is None:
            tr = import_tritium()  # fail here, in the caller's thread, not in the sender thread
            connect = tr.connect_websocket
        self.url = gateway_url(url)
        self.channel = channel
        self.rate_hz = float(rate_hz)
        self.auth_token = auth_token if auth_token is not None else os.environ.get("TRITIUM_AUTH_TOKEN", "")
        self.names = tuple(names) if names is not None else None
        self.description = description
        self.reply_timeout_s = reply_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.backoff_s = backoff_s
        self.resend = resend
        self._connect = connect
        self._lock = threading.Lock()
        self._latest: dict | None = None  # newest message; replaced by push(), read by the sender
        self._seq = 0
        self._sent_seq = 0
        self._stats = StreamStats()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._stopping = threading.Event()

    # ------------------------------------------------------------------ caller side

    def push(self, frame: Mapping[str, float] | Sequence[float] | np.ndarray, t: float | None = None) -> int:
        """Store ``frame`` as the one to send next; returns its sequence number. Never blocks.

        ``frame`` is a mapping control name -> value, or a vector in the order of ``names``.
        ``t`` is the frame time in seconds (default ``time.monotonic()``).
        """
        if isinstance(frame, Mapping):
            controls = {str(k): _json_float(v) for k, v in frame.items()}
        else:
            if self.names is None:
                raise ValueError("push() got a vector but the streamer has no control names (pass names=...)")
            values = np.asarray(frame, dtype=float).reshape(-1)
            if values.size != len(self.names):
                raise ValueError(f"frame has {values.size} values, expected {len(self.names)} ({self.channel})")
            controls = {n: _json_float(v) for n, v in zip(self.names, values.tolist(), strict=True)}
        with self._lock:
            self._seq += 1
            self._latest = {"t": float(time.monotonic() if t is None else t), "seq": self._seq, "controls": controls}
            self._stats.pushed += 1
            return self._seq

    def stats(self) -> StreamStats:
        """A snapshot of the counters."""
        with self._lock:
            return StreamStats(**vars(self._stats))

    @property
    def connected(self) -> bool:
        return self.stats().connected

    def start(self) -> TritiumStreamer:
        """Start the sender thread (it connects in the background; push() works at once)."""
        if self._thread is not None:
            raise RuntimeError("TritiumStreamer already started")
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="tritium-streamer", daemon=True)
        self._thread.start()
        ready.wait(5.0)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop sending, close the connection and join the thread (at most ``timeout`` seconds)."""
        self._stopping.set()
        if self._loop is not None and self._stop is not None:
            try:
                self._loop.call_soon_threadsafe(self._stop.set)
            except RuntimeError:  # loop already closed
                pass
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("tritium streamer thread did not stop within %.1f s", timeout)

    def __enter__(self) -> TritiumStreamer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ sender thread

    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        loop.set_exception_handler(_quiet_exception_handler)
        self._loop = loop
        self._stop = asyncio.Event()
        ready.set()
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _sleep(self, seconds: float) -> None:
        """Sleep, waking early when stop() is called."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    def _note(self, **changes) -> None:
        with self._lock:
            for k, v in changes.items():
                setattr(self._stats, k, getattr(self._stats, k) + v if k not in ("connected", "last_error") else v)

    async def _main(self) -> None:
        delay = self.backoff_s[0]
        while not self._stopping.is_set():
            try:
                client = await asyncio.wait_for(
                    self._connect(self.url, self.auth_token, self.description), self.connect_timeout_s
                )
            except Exception as e:  # refused, unreachable, rejected token, timeout
                self._note(connect_failures=1, last_error=f"connect: {_describe(e)}")
                log.debug("tritium connect to %s failed: %s; retry in %.2f s", self.url, _describe(e), delay)
                await self._sleep(delay)
                delay = min(2 * delay, self.backoff_s[1])
                continue
            self._note(connects=1, connected=True)
            delay = self.backoff_s[0]
            try:
                await self._send_loop(client)
            except Exception as e:  # connection closed, reply timeout, GraphQL error
                self._note(drops=1, last_error=f"send: {_describe(e)}")
                log.debug("tritium connection to %s lost: %s", self.url, _describe(e))
            finally:
                self._note(connected=False)
                try:
                    await asyncio.wait_for(client.disconnect(), 1.0)
                except Exception:
                    pass
            if not self._stopping.is_set():
                await self._sleep(delay)
                delay = min(2 * delay, self.backoff_s[1])

    async def _send_loop(self, client) -> None:
        loop = asyncio.get_running_loop()
        period = 1.0 / self.rate_hz
        next_tick = loop.time()
        while not self._stopping.is_set():
            with self._lock:
                msg = self._latest
                fresh = msg is not None and msg["seq"] > self._sent_seq
            if msg is not None and (fresh or self.resend):
                await asyncio.wait_for(client.post_message(self.channel, msg), self.reply_timeout_s)
                with self._lock:
                    if fresh:
                        self._stats.superseded += msg["seq"] - self._sent_seq - 1
                        self._sent_seq = msg["seq"]
                    self._stats.sent += 1
            next_tick += period
            now = loop.time()
            if next_tick < now - period:  # fell behind (slow gateway): restart the clock, do not burst
                next_tick = now
            await self._sleep(next_tick - now)


def _json_float(v) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _quiet_exception_handler(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    """The package's listener task dies with ConnectionClosed when the gateway goes away and nobody
    retrieves that exception; log it at debug level instead of as an asyncio error."""
    exc = context.get("exception")
    if exc is not None and type(exc).__module__.startswith("websockets"):
        log.debug("tritium: %s", _describe(exc))
        return
    loop.default_exception_handler(context)
