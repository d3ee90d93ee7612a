"""TritiumStreamer against a fake Tritium gateway on loopback.

The fake speaks what tritium-remote-py 1.1.3 expects: a WebSocket that checks the
``x-tritium-token`` header, takes ``{"type": "graphql", "request_id", "document",
"variable_values"}`` text frames and answers ``{"type": "graphql_response", "request_id",
"data": {"data": ...}}``. It records every ``postMessage`` (channel, message) it receives.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading
import time

import pytest

pytest.importorskip("tritium_remote_py")

from websockets.asyncio.server import serve  # noqa: E402
from websockets.datastructures import Headers  # noqa: E402
from websockets.http11 import Response  # noqa: E402

from realm.embodiment.tritium import TritiumStreamer, gateway_url, import_tritium  # noqa: E402

TOKEN = "test-jwt"


class FakeGateway:
    """A Tritium-like gateway in its own thread on 127.0.0.1; ``start()``/``stop()`` can repeat."""

    def __init__(self, port: int | None = None):
        self.port = port or _free_port()
        self.received: list[tuple[float, str, dict]] = []  # (arrival time, channel, message)
        self.sessions: list[dict] = []  # session metadata of accepted connections
        self.rejected = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def messages(self, channel: str | None = None) -> list[dict]:
        with self._lock:
            return [m for _, c, m in self.received if channel is None or c == channel]

    def times(self) -> list[float]:
        with self._lock:
            return [t for t, _, _ in self.received]

    def _check_token(self, connection, request):
        if request.headers.get("x-tritium-token") != TOKEN:
            self.rejected += 1
            return Response(401, "Unauthorized", Headers(), b"bad token\n")
        self.sessions.append(json.loads(request.headers.get("x-tritium-session-metadata", "{}")))
        return None

    async def _handle(self, ws):
        async for raw in ws:
            msg = json.loads(raw)
            assert msg["type"] == "graphql"
            assert "postMessage" in msg["document"]
            inp = msg["variable_values"]["input"]
            with self._lock:
                self.received.append((time.monotonic(), inp["channel"], inp["message"]))
            reply = {"type": "graphql_response", "request_id": msg["request_id"], "data": {"data": {"postMessage": True}}}
            await ws.send(json.dumps(reply))

    async def _serve(self, ready: threading.Event):
        self._stopped = asyncio.Event()
        async with serve(self._handle, "127.0.0.1", self.port, process_request=self._check_token):
            ready.set()
            await self._stopped.wait()

    def start(self) -> FakeGateway:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._serve(ready),), daemon=True)
        self._thread.start()
        assert ready.wait(5), "fake gateway did not start"
        return self

    def stop(self) -> None:
        """Shut the server down, closing every open connection (the robot 'goes away')."""
        self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(5)
        self._loop.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(cond, timeout: float = 3.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


@pytest.fixture
def gateway():
    g = FakeGateway().start()
    yield g
    try:
        g.stop()
    except Exception:
        pass


def test_gateway_url():
    assert gateway_url("ameca.local") == "ws://ameca.local:1234"
    assert gateway_url("10.0.0.5:4321") == "ws://10.0.0.5:4321"
    assert gateway_url("wss://robot/api") == "wss://robot/api"


def test_frames_arrive_on_channel_with_values_at_rate(gateway):
    rate = 40.0
    pushed: dict[int, dict] = {}
    with TritiumStreamer(gateway.url, "face", rate_hz=rate, auth_token=TOKEN, names=["Head Yaw", "Jaw"]) as s:
        assert _wait_for(lambda: s.connected)
        t0 = time.monotonic()
        i = 0
        while time.monotonic() - t0 < 1.0:  # the producer pushes ~5x faster than the stream rate
            seq = s.push([float(i), i / 100.0], t=float(i))
            pushed[seq] = {"Head Yaw": float(i), "Jaw": i / 100.0}
            i += 1
            time.sleep(0.005)
        stats = s.stats()
    msgs = gateway.messages("face")
    assert gateway.messages() == msgs  # nothing on other channels
    assert gateway.sessions[0]["session_type"] == "graphql"
    # roughly the set rate: 40 frames in 1 s (loose bounds, the CI machine is shared)
    assert 0.5 * rate <= len(msgs) <= 1.15 * rate + 2, len(msgs)
    gaps = [b - a for a, b in zip(gateway.times()[1:-1], gateway.times()[2:], strict=False)]
    assert 0.5 / rate < sorted(gaps)[len(gaps) // 2] < 2.0 / rate  # median inter-arrival ~ 1/rate
    # each message is exactly one pushed frame, newest-first semantics: seq strictly increases
    seqs = [m["seq"] for m in msgs]
    assert seqs == sorted(set(seqs))
    for m in msgs:
        assert m["controls"] == pushed[m["seq"]]
        assert m["t"] == m["controls"]["Head Yaw"]
    assert stats.sent == len(msgs) and stats.superseded > 0 and stats.pushed == len(pushed)


def test_reconnects_after_gateway_restart(gateway):
    with TritiumStreamer(gateway.url, "face", rate_hz=50, auth_token=TOKEN, backoff_s=(0.05, 0.2),
                         reply_timeout_s=0.3) as s:  # fmt: skip
        stop = threading.Event()

        def produce():
            i = 0
            while not stop.is_set():
                s.push({"Head Yaw": float(i)})
                i += 1
                time.sleep(0.01)

        producer = threading.Thread(target=produce, daemon=True)
        producer.start()
        try:
            assert _wait_for(lambda: len(gateway.messages()) >= 5)
            gateway.stop()  # robot goes away: the client sees the connection close
            assert _wait_for(lambda: not s.connected)
            n_down = len(gateway.messages())
            time.sleep(0.3)  # a few failed reconnects against a closed port
            assert len(gateway.messages()) == n_down
            assert s.stats().connect_failures >= 1
            gateway.start()  # same port
            assert _wait_for(lambda: len(gateway.messages()) >= n_down + 5), "no frames after restart"
        finally:
            stop.set()
            producer.join()
        st = s.stats()
    assert st.connects >= 2 and st.drops >= 1
    seqs = [m["seq"] for m in gateway.messages()]
    assert seqs == sorted(set(seqs))  # no frame resent or reordered across the reconnect


def test_push_never_blocks_while_gateway_is_down():
    dead = f"ws://127.0.0.1:{_free_port()}"  # nothing listens here
    s = TritiumStreamer(dead, "face", rate_hz=100, auth_token=TOKEN, backoff_s=(0.05, 0.1)).start()
    try:
        worst = 0.0
        t_all = time.perf_counter()
        for i in range(2000):
            t = time.perf_counter()
            s.push({"Head Yaw": float(i), "Jaw": float("nan")})
            worst = max(worst, time.perf_counter() - t)
        total = time.perf_counter() - t_all
        assert total < 0.5 and worst < 0.05, (total, worst)
        assert _wait_for(lambda: s.stats().connect_failures >= 2)
        st = s.stats()
        assert st.pushed == 2000 and st.sent == 0 and not st.connected and "connect" in st.last_error
    finally:
        t = time.perf_counter()
        s.stop()
        assert time.perf_counter() - t < 1.0  # stop() interrupts the backoff sleep


def test_nan_sent_as_null_and_resend(gateway):
    with TritiumStreamer(gateway.url, "face", rate_hz=50, auth_token=TOKEN, resend=True) as s:
        s.push({"Jaw": float("nan"), "Head Yaw": 1.5}, t=7.0)
        assert _wait_for(lambda: len(gateway.messages()) >= 3)
    msgs = gateway.messages()
    assert all(m == {"t": 7.0, "seq": 1, "controls": {"Jaw": None, "Head Yaw": 1.5}} for m in msgs)


def test_wrong_token_is_rejected_and_retried(gateway):
    with TritiumStreamer(gateway.url, "face", rate_hz=50, auth_token="nope", backoff_s=(0.05, 0.1)) as s:
        s.push({"Jaw": 0.5})
        assert _wait_for(lambda: s.stats().connect_failures >= 2)
        assert not s.connected
    assert gateway.rejected >= 2 and gateway.messages() == []


def test_vector_push_needs_names():
    s = TritiumStreamer("127.0.0.1:9", "face", connect=_never_connect)
    with pytest.raises(ValueError, match="names"):
        s.push([1.0, 2.0])
    s = TritiumStreamer("127.0.0.1:9", "face", names=["a", "b"], connect=_never_connect)
    with pytest.raises(ValueError, match="expected 2"):
        s.push([1.0])


def test_missing_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "tritium_remote_py", None)
    with pytest.raises(ImportError, match=r"realm-listener\[ameca\]"):
        import_tritium()
    with pytest.raises(ImportError, match="tritium-remote-py"):
        TritiumStreamer("127.0.0.1:9", "face")


async def _never_connect(url, token, description):
    raise OSError("unused")
