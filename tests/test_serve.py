"""`realm serve` / `realm listen`: the live WebSocket server and its client."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import realm
from realm.audio import load_audio
from realm.cli import app
from realm.embodiment.retarget import retarget
from realm.embodiment.safety import SafetyLayer
from realm.errors import RealmInputError
from realm.serve import ListenerServer, ServerConfig, encode_pcm16, listen_async, quantise_pcm16
from tests.conftest import JFK
from tests.test_generate import make_run

websockets = pytest.importorskip("websockets")
from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402


@pytest.fixture(scope="module")
def listener(tmp_path_factory):
    return realm.load(make_run(tmp_path_factory.mktemp("serve") / "run"))


@pytest.fixture(scope="module")
def speech():
    return load_audio(JFK)[: 16000 * 3]


def offline_stream(listener, y, seed=0, chunk=1600):
    """What the offline Streamer gives for the samples the server hears (16-bit PCM), on as many
    torch threads as a server worker (another count sums matrix products in another order: the
    last bit differs)."""
    import torch

    q = quantise_pcm16(y)
    st = listener.streamer(seed=seed)
    n = torch.get_num_threads()
    torch.set_num_threads(ServerConfig().torch_threads)
    try:
        return np.concatenate([st.push(q[k : k + chunk]) for k in range(0, len(q), chunk)] + [st.flush()])
    finally:
        torch.set_num_threads(n)


def run(coro, timeout=60):
    async def bounded():
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


async def started(listener, **kw):
    profile = kw.pop("profile", None)
    return await ListenerServer(listener, profile=profile, config=ServerConfig(port=0, **kw)).start()


async def recv_json(ws, kind=None, timeout=10):
    """The next JSON message (of ``kind`` when given, skipping frames)."""
    while True:
        msg = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if kind is None or msg["type"] == kind:
            return msg


def test_server_output_equals_the_offline_streamer(listener, speech):
    async def scenario():
        server = await started(listener, profile="ameca")
        try:
            return await listen_async(server.url, speech, realtime=False, chunk_ms=100)
        finally:
            await server.close()

    r = run(scenario())
    expected = offline_stream(listener, speech)
    assert r.motion.shape == expected.shape == (90, 58)
    np.testing.assert_array_equal(r.motion, expected)  # same samples, same seed: the same frames, bit for bit
    # robot controls: retargeted, then the safety layer stepped at the frame rate
    safe = SafetyLayer("ameca", rate_hz=30).run(retarget(expected, "ameca"))
    np.testing.assert_allclose(r.controls, safe, atol=1e-9)
    assert r.ready["controls"][0] and len(r.ready["controls"]) == r.controls.shape[1]
    s = r.stats()
    assert s["frames"] == s["expected"] == 90 and s["missing"] == 0 and s["dropped"] == 0
    assert set(np.unique(r.chunk)) <= set(range(-1, 30)) and (r.chunk >= 0).sum() > 0
    assert np.all(np.isfinite(r.latency_s)) and np.all(r.latency_s >= 0)
    assert r.end["frames"] == 90 and r.end["chunks"] == 30 and r.end["audio_s"] == pytest.approx(3.0)
    assert 0 < r.end["compute_ms_p50"] <= r.end["compute_ms_p95"]


def test_a_server_error_ends_only_that_session(listener, speech):
    async def scenario():
        server = await started(listener)
        run_model = server._run_model

        def failing(streamer, safety, start, audio, face=False):  # a model failure on one client's chunk
            if audio is not None and len(audio) == 1234:
                raise RuntimeError("boom")
            return run_model(streamer, safety, start, audio, face)

        server._run_model = failing
        try:
            good = asyncio.create_task(listen_async(server.url, speech, realtime=True, chunk_ms=100))
            async with connect(server.url) as bad:
                await bad.send(json.dumps({"type": "start"}))
                await recv_json(bad, "ready")
                await bad.send(encode_pcm16(speech[:1234]))
                err = await recv_json(bad, "error")
                with pytest.raises(ConnectionClosed) as e:
                    await bad.recv()
            return err, e.value.rcvd.code, await good
        finally:
            await server.close()

    err, code, r = run(scenario())
    assert err["code"] == "internal" and "boom" in err["message"] and code == 1011
    assert r.missing == 0 and r.end["dropped"] == 0


def test_several_clients_each_with_their_own_state(listener, speech):
    async def scenario():
        server = await started(listener)
        try:
            return await asyncio.gather(
                *[listen_async(server.url, speech, realtime=False, chunk_ms=ms, options={"seed": seed})
                  for seed, ms in ((0, 100), (7, 37), (0, 250))]  # fmt: skip
            )
        finally:
            await server.close()

    a, b, c = run(scenario())
    np.testing.assert_array_equal(a.motion, offline_stream(listener, speech, seed=0))
    np.testing.assert_allclose(b.motion, offline_stream(listener, speech, seed=7), atol=1e-5)
    np.testing.assert_allclose(c.motion, a.motion, atol=1e-5)  # chunking does not change the frames
    assert not np.allclose(a.motion, b.motion)  # the seed does


def test_bad_messages_are_answered_and_the_session_goes_on(listener, speech):
    async def scenario():
        server = await started(listener, max_chunk_s=0.5)
        try:
            async with connect(server.url) as ws:
                codes = []
                for msg in [
                    "not json",
                    json.dumps([1, 2]),
                    json.dumps({"type": "dance"}),
                    encode_pcm16(speech[:1600]),  # audio before start
                    json.dumps({"type": "stop"}),
                    json.dumps({"type": "start", "sample_rate": 44100}),
                    json.dumps({"type": "start", "encoding": "f32"}),
                    json.dumps({"type": "start", "channels": 2}),
                    json.dumps({"type": "config", "seed": -1}),
                    json.dumps({"type": "config", "pace": "warp"}),
                    json.dumps({"type": "config", "volume": 3}),
                ]:
                    await ws.send(msg)
                    codes.append((await recv_json(ws))["code"])
                await ws.send(json.dumps({"type": "config", "seed": 3}))
                assert (await recv_json(ws))["options"]["seed"] == 3
                await ws.send(json.dumps({"type": "start"}))
                ready = await recv_json(ws)
                assert ready["type"] == "ready" and ready["options"]["seed"] == 3 and ready["max_chunk_bytes"] == 16000
                for msg in [
                    encode_pcm16(speech[:1600]) + b"\x00",  # half a sample
                    encode_pcm16(speech[:9000]),  # over max_chunk_bytes (but under the WebSocket limit)
                    json.dumps({"type": "start"}),
                    json.dumps({"type": "config", "seed": 1}),
                    json.dumps({"type": "words", "words": []}),  # REALM hears audio only
                ]:
                    await ws.send(msg)
                    codes.append((await recv_json(ws, "error"))["code"])
                q = speech[:16000]
                for k in range(0, len(q), 1600):
                    await ws.send(encode_pcm16(q[k : k + 1600]))
                await ws.send(json.dumps({"type": "stop"}))
                frames = []
                while (m := await recv_json(ws))["type"] != "end":
                    frames.append(m["motion"])
                return codes, np.array(frames, np.float32), m
        finally:
            await server.close()

    codes, frames, end = run(scenario())
    assert codes == [
        "bad_json", "bad_message", "unknown_type", "not_started", "not_started", "bad_sample_rate",
        "bad_encoding", "bad_channels", "bad_option", "bad_option", "bad_option",
        "odd_length", "chunk_too_large", "already_started", "streaming", "no_words",
    ]  # fmt: skip
    assert end["frames"] == len(frames) == 30 and end["dropped"] == 0
    np.testing.assert_array_equal(frames, offline_stream(listener, speech[:16000], seed=3))


def test_oversized_message_or_lost_client_ends_only_its_own_session(listener, speech):
    async def scenario():
        server = await started(listener, max_chunk_s=0.25)
        try:
            good = asyncio.create_task(listen_async(server.url, speech, realtime=True, chunk_ms=100))
            async with connect(server.url, max_size=None) as big:
                await big.send(json.dumps({"type": "start"}))
                await recv_json(big, "ready")
                await big.send(b"\x00" * 200_000)  # far over the WebSocket limit
                with pytest.raises(ConnectionClosed) as e:
                    await recv_json(big)
                assert e.value.rcvd.code == 1009
            lost = await connect(server.url)
            await lost.send(json.dumps({"type": "start"}))
            await recv_json(lost, "ready")
            for k in range(0, 16000, 1600):
                await lost.send(encode_pcm16(speech[k : k + 1600]))
            await lost.recv()
            lost.transport.abort()  # gone mid-stream, without a closing handshake
            r = await good
            for _ in range(100):
                if len(server.sessions) == 0:
                    break
                await asyncio.sleep(0.02)
            return r, len(server.sessions), server.totals
        finally:
            await server.close()

    r, left, totals = run(scenario())
    assert r.missing == 0 and r.end["dropped"] == 0
    np.testing.assert_array_equal(r.motion, offline_stream(listener, speech))
    assert left == 0 and totals["clients"] == 3


def test_a_client_that_does_not_read_loses_frames_not_memory(listener, speech):
    queue = 20
    long = np.tile(speech, 6)  # 18 s: 540 frames

    async def scenario():
        server = await started(listener, queue_frames=queue, send_buffer_bytes=4096)
        try:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", server.port))
            async with connect(server.url, sock=s, max_queue=2) as slow:  # reads 2 messages, then stops reading
                await slow.send(json.dumps({"type": "start"}))
                await recv_json(slow, "ready")
                (sess,) = server.sessions.values()
                good = asyncio.create_task(listen_async(server.url, speech, realtime=True, chunk_ms=100))
                peak = 0
                for k in range(0, len(long), 8000):
                    await slow.send(encode_pcm16(long[k : k + 8000]))
                    peak = max(peak, sum(x.frame for x in sess.queue))
                await slow.send(json.dumps({"type": "stop"}))
                r = await good
                for _ in range(200):
                    if not sess.streaming:
                        break
                    await asyncio.sleep(0.02)
                return r, sess.frames, sess.dropped, peak
        finally:
            await server.close()

    r, frames, dropped, peak = run(scenario(), timeout=120)
    assert frames == 540 and dropped > 350  # most frames were dropped, and counted
    assert peak <= queue  # the per-client queue never grew past its bound
    assert r.missing == 0 and r.end["dropped"] == 0  # the client that reads gets every frame
    np.testing.assert_array_equal(r.motion, offline_stream(listener, speech))


def test_shutdown_and_a_full_server_close_connections_cleanly(listener, speech):
    async def scenario():
        server = await started(listener, max_clients=2)
        clients = [await connect(server.url) for _ in range(2)]
        for ws in clients:
            await ws.send(json.dumps({"type": "start"}))
            await recv_json(ws, "ready")
            await ws.send(encode_pcm16(speech[:16000]))
        async with connect(server.url) as third:
            refused = await recv_json(third)
            with pytest.raises(ConnectionClosed) as e:
                await third.recv()
            assert e.value.rcvd.code == 1013
        t = time.perf_counter()
        await server.close()
        took = time.perf_counter() - t
        closes = []
        for ws in clients:
            with pytest.raises(ConnectionClosed) as e:
                while True:
                    await ws.recv()
            closes.append(e.value.rcvd.code)
        return refused, closes, took

    refused, closes, took = run(scenario())
    assert refused["code"] == "server_full"
    assert closes == [1001, 1001] and took < 5


def test_realtime_pace_spreads_frames_at_the_frame_rate(listener, speech):
    times = []

    async def scenario():
        server = await started(listener)
        try:
            loop = asyncio.get_running_loop()
            return await listen_async(
                server.url, speech[:32000], realtime=True, chunk_ms=50,
                options={"pace": "realtime", "margin_s": 0.05}, on_frame=lambda m: times.append(loop.time()),
            )  # fmt: skip
        finally:
            await server.close()

    r = run(scenario())
    assert r.missing == 0 and r.end["late"] == 0
    gaps = np.diff(times[:48])  # streamed windows (the flushed tail arrives at once)
    assert np.median(gaps) == pytest.approx(1 / 30, abs=0.006)


def test_refuses_models_that_cannot_stream(listener):
    with pytest.raises(RealmInputError, match="cannot be streamed"):
        ListenerServer(replace(listener, extractor="whisper"))
    arkit_only = replace(listener, model=replace_spec(listener.model, "vico70"))
    with pytest.raises(RealmInputError, match="needs --map"):
        ListenerServer(arkit_only, profile="ameca")


def replace_spec(model, name):
    """A stand-in model object with another motion spec (only ``spec`` is read before serving)."""
    from realm.motion import get_spec

    class M:
        spec = get_spec(name)
        config = model.config

    return M()


def test_cli_serve_and_listen(listener, tmp_path):
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "realm"), "serve", "-c", str(listener.path), "--port", "0", "--profile", "ameca"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        lines = []  # the no-token warning (logged), then the banner
        while not (url := re.search(r"ws://[\d.]+:\d+", lines[-1] if lines else "")) and len(lines) < 10:
            lines.append(proc.stdout.readline())
        assert url and "no token" in "".join(lines), lines
        out = tmp_path / "heard.npz"
        audio = tmp_path / "clip.wav"
        import soundfile as sf

        sf.write(audio, load_audio(JFK)[:32000], 16000)
        res = CliRunner().invoke(app, ["listen", "--server", url.group(0), "--audio", str(audio), "--out", str(out)])
        assert res.exit_code == 0, res.output
        assert "60/60 frames" in res.output and "p95" in res.output
        with np.load(out) as d:
            assert d["listener"].shape == (1, 60, 58) and str(d["spec"]) == "arkit58"
            assert d["controls"].shape[0] == 60 and len(d["control_names"]) == d["controls"].shape[1]
        again = CliRunner().invoke(app, ["listen", "--server", url.group(0), "--audio", str(audio), "--out", str(out)])
        assert again.exit_code == 2 and "--force" in again.output
    finally:
        proc.send_signal(2)
        tail = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0 and "stopped" in tail
    res = CliRunner().invoke(app, ["listen", "--server", "ws://127.0.0.1:9", "--audio", str(audio)])
    assert res.exit_code == 2 and "cannot connect" in res.output


def test_a_listen_file_holds_missing_frames_and_never_writes_nan(tmp_path):
    from realm.serve import ListenResult, save_listen

    motion = np.arange(12, dtype=np.float32).reshape(6, 2)
    motion[[0, 3, 4]] = np.nan  # frames 0, 3 and 4 never arrived
    lat = np.array([np.nan, 0.1, 0.2, np.nan, np.nan, 0.3])
    r = ListenResult(motion=motion, controls=None, ready={"spec": "arkit58", "fps": 30.0}, end={},
                     latency_s=lat, chunk=np.zeros(6, int), expected=6, errors=[])  # fmt: skip
    save_listen(r, tmp_path / "l.npz")
    with np.load(tmp_path / "l.npz") as d:
        x, got, ls = d["listener"][0], d["received"], d["latency_s"]
    assert got.tolist() == [False, True, True, False, False, True]
    # missing frames hold the last received one (the first received one before any arrived)
    np.testing.assert_array_equal(x[:, 0], [2, 2, 4, 4, 4, 10])
    np.testing.assert_array_equal(ls, [-1, 0.1, 0.2, -1, -1, 0.3])


def test_non_finite_model_frames_never_reach_the_socket(listener, speech, monkeypatch):
    # a model that emits NaN for some frames (numerical trouble): every message stays valid JSON
    # (no NaN token), the bad frames hold the last good one, and the end message counts them
    from realm.generate import Streamer

    push = Streamer.push

    def broken(self, chunk):
        frames = push(self, chunk)
        if len(frames):
            frames = frames.copy()
            frames[len(frames) // 2 :, 3] = np.nan
        return frames

    monkeypatch.setattr(Streamer, "push", broken)
    raw = []

    async def scenario():
        server = await started(listener)
        try:
            async with connect(server.url) as ws:
                await ws.send(json.dumps({"type": "start"}))
                await recv_json(ws, "ready")
                for k in range(0, len(speech), 1600):
                    await ws.send(encode_pcm16(speech[k : k + 1600]))
                await ws.send(json.dumps({"type": "stop"}))
                while True:
                    text = await asyncio.wait_for(ws.recv(), 10)
                    raw.append(text)
                    if json.loads(text)["type"] == "end":
                        return
        finally:
            await server.close()

    run(scenario())
    msgs = [json.loads(t, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c} sent")) for t in raw]
    frames = [m for m in msgs if m["type"] == "frame"]
    assert frames and all(np.isfinite(m["motion"]).all() for m in frames)
    end = msgs[-1]
    assert end["held"] > 0 and end["frames"] == len(frames)
    # the first window's second half was NaN: its first bad frame repeats the last good one, whole
    assert frames[8]["motion"] == frames[7]["motion"] and frames[7]["motion"] != frames[6]["motion"]


# ---------------------------------------------------------------- limits: a server idle or greedy clients cannot take over


async def closed_with(ws, timeout=10):
    """Read until the connection closes: (the messages read, the close code)."""
    msgs = []
    try:
        while True:
            msgs.append(json.loads(await asyncio.wait_for(ws.recv(), timeout)))
    except ConnectionClosed as e:
        return msgs, e.rcvd.code if e.rcvd else None


def test_a_connection_must_start_in_time_and_stay_active(listener, speech, caplog):
    async def scenario():
        server = await started(listener, start_timeout_s=0.4, idle_timeout_s=0.8, max_pending=2)
        loop = asyncio.get_running_loop()
        try:
            t = loop.time()
            async with connect(server.url) as lazy:  # config is not start: the start deadline holds
                await lazy.send(json.dumps({"type": "config", "seed": 1}))
                lazy_msgs, lazy_code = await closed_with(lazy)
            lazy_s = loop.time() - t
            async with connect(server.url) as idle:  # started, then silent
                await idle.send(json.dumps({"type": "start"}))
                await recv_json(idle, "ready")
                idle_msgs, idle_code = await closed_with(idle)
            async with connect(server.url) as busy:  # a message every 0.3 s keeps a connection open
                await busy.send(json.dumps({"type": "start"}))
                await recv_json(busy, "ready")
                for k in range(6):
                    await busy.send(encode_pcm16(speech[k * 1600 : (k + 1) * 1600]))
                    await asyncio.sleep(0.3)
                await busy.send(json.dumps({"type": "stop"}))
                busy_end = await recv_json(busy, "end")
            # past max_pending connections without start, the oldest makes room
            waiting = [await connect(server.url) for _ in range(3)]
            evicted, code = await closed_with(waiting[0], timeout=5)
            await waiting[2].send(json.dumps({"type": "start"}))
            assert (await recv_json(waiting[2]))["type"] == "ready"
            for ws in waiting[1:]:
                await ws.close()
            return lazy_msgs, lazy_code, lazy_s, idle_msgs, idle_code, busy_end, evicted, code, server.totals
        finally:
            await server.close()

    caplog.set_level("WARNING", logger="realm.serve")
    lazy, lazy_code, lazy_s, idle, idle_code, busy_end, evicted, code, totals = run(scenario())
    assert lazy[0]["type"] == "config" and lazy[-1]["code"] == "start_timeout" and lazy_code == 1008
    assert 0.35 < lazy_s < 5
    assert idle[-1]["code"] == "idle_timeout" and idle_code == 1008
    assert busy_end["chunks"] == 6
    assert evicted[-1]["code"] == "start_timeout" and "make room" in evicted[-1]["message"] and code == 1008
    assert totals["closed"] == 3
    assert re.search(r"client \d+ \(127\.0\.0\.1:\d+\) closed \(1008\): start_timeout", caplog.text)
    assert re.search(r"client \d+ \(127\.0\.0\.1:\d+\) closed \(1008\): idle_timeout", caplog.text)


def test_a_flooder_is_told_cut_off_and_never_echoed(listener, speech, caplog):
    junk = "{" + "x" * 30000  # 30 KB of bad JSON

    async def scenario():
        server = await started(listener, max_errors=20)
        try:
            async with connect(server.url) as bad:  # bad messages: answered briefly, then cut off
                for _ in range(25):
                    await bad.send(junk)
                msgs, code = await closed_with(bad)
            async with connect(server.url) as ws:  # an unknown 30 KB option name or value is not quoted either
                await ws.send(json.dumps({"type": "config", "pace": "y" * 15000, "z" * 15000: 1}))
                option = await recv_json(ws)
            return msgs, code, option, server.totals
        finally:
            await server.close()

    caplog.set_level("WARNING", logger="realm.serve")
    msgs, code, option, totals = run(scenario())
    codes = [m["code"] for m in msgs]
    assert "rate_limited" in codes  # 30 KB messages: over the byte rate after the first 10
    assert [c for c in codes if c != "rate_limited"] == ["bad_json"] * 19 + ["too_many_errors"] and code == 1008
    for m in msgs + [option]:
        assert len(json.dumps(m)) < 300 and "xxxxxxxx" not in m["message"] and "yyyyyyyy" not in m["message"]
    assert option["code"] == "bad_option" and "<str of 15000>" in option["message"]
    assert totals["errors"] == 21 and totals["closed"] == 1
    assert "xxxxxxxx" not in caplog.text and re.search(r"\(127\.0\.0\.1:\d+\): bad_json", caplog.text)


def test_message_and_byte_rates_are_limited(listener, speech):
    async def scenario():
        server = await started(listener, max_msgs_per_s=50, max_flood_s=2.5, max_bytes_per_s=32000, max_chunk_s=0.5)
        loop = asyncio.get_running_loop()
        try:
            async with connect(server.url) as tiny:  # 2-byte audio messages, as fast as the server takes them
                await tiny.send(json.dumps({"type": "start"}))
                ready = await recv_json(tiny, "ready")
                (sess,) = server.sessions.values()
                t = loop.time()
                for _ in range(100):
                    await tiny.send(b"\x00\x00")
                over = 0  # polls that saw more handled than one second's burst plus the rate allows
                while sess.chunks < 100 and loop.time() - t < 20:
                    over += sess.chunks > 50 + 50 * (loop.time() - t) + 2
                    await asyncio.sleep(0.05)
                took = loop.time() - t
                notice = await recv_json(tiny, "error")
                await tiny.close()
            async with connect(server.url) as flood:  # the same without end: closed once over the rate for 2.5 s
                await flood.send(json.dumps({"type": "start"}))
                await recv_json(flood, "ready")
                t = loop.time()
                for _ in range(3000):
                    await flood.send(b"\x00\x00")
                flooded, code = await closed_with(flood)
                flood_s = loop.time() - t
            async with connect(server.url) as fast:  # 3 s of audio as fast as possible, at a 1x real-time byte rate
                await fast.send(json.dumps({"type": "start"}))
                await recv_json(fast, "ready")
                t = loop.time()
                q = speech[:48000]
                for k in range(0, len(q), 8000):
                    await fast.send(encode_pcm16(q[k : k + 8000]))
                await fast.send(json.dumps({"type": "stop"}))
                end = await recv_json(fast, "end")
                fast_s = loop.time() - t
            return ready, over, took, notice, (flooded, code, flood_s), end, fast_s, server.totals
        finally:
            await server.close()

    ready, over, took, notice, (flooded, code, flood_s), end, fast_s, totals = run(scenario())
    assert ready["limits"]["max_msgs_per_s"] == 50 and ready["limits"]["max_bytes_per_s"] == 32000
    assert over == 0 and 0.8 < took < 20  # one second's burst, then 50 a second: 100 messages take 1 s
    assert notice["code"] == "rate_limited" and len(notice["message"]) < 200
    assert flooded[-1]["code"] == "rate_limited" and "for 2.5 s" in flooded[-1]["message"] and code == 1008
    assert 2.4 < flood_s < 20  # over the rate from its 50th message (the burst) on, for 2.5 s
    assert end["chunks"] == 6 and end["frames"] == 90
    assert fast_s > 1.5  # 96 kB at 32 kB/s after a 32 kB burst: 2 s
    assert totals["throttled"] > 0


def test_a_client_that_never_reads_cannot_grow_any_queue(listener, speech):
    async def scenario():
        server = await started(listener, max_errors=0, max_msgs_per_s=0, max_bytes_per_s=0, queue_messages=8,
                               send_buffer_bytes=4096)  # fmt: skip
        try:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", server.port))
            async with connect(server.url, sock=s, max_queue=1, close_timeout=0.5) as deaf:
                (sess,) = server.sessions.values()
                peak = 0
                for _ in range(2000):  # 2000 bad messages: 2000 error replies it never reads
                    await deaf.send("[" + "x" * 3000)
                    peak = max(peak, len(sess.queue))
                for _ in range(500):
                    if sess.errors == 2000:
                        break
                    peak = max(peak, len(sess.queue))
                    await asyncio.sleep(0.01)
                assert sess.errors == 2000 and sess.errors_dropped > 1500  # the rest fit in the socket buffers
                for _ in range(40):  # replies that cannot be dropped: the connection is closed instead
                    await deaf.send(json.dumps({"type": "config"}))
                    if sess.closing:
                        break
                for _ in range(200):
                    if sess.id not in server.sessions:
                        break
                    await asyncio.sleep(0.02)
                return peak, sess, server.sessions, server.totals
        finally:
            await server.close()

    peak, sess, sessions, totals = run(scenario())
    assert peak <= 8 and sess.queued_other <= 8  # never more than queue_messages unread replies
    assert sess.closing and sess.id not in sessions and totals["closed"] == 1


def test_token_and_origin_are_checked_at_the_handshake(listener, caplog):
    from websockets.exceptions import InvalidStatus

    async def status(url, **kw):
        try:
            async with connect(url, **kw) as ws:
                await ws.send(json.dumps({"type": "start"}))
                return (await recv_json(ws))["type"]
        except InvalidStatus as e:
            return e.response.status_code

    async def scenario():
        server = await started(listener, token="s3cret", allowed_origins=("https://app.example",))
        u = server.url
        try:
            return [
                await status(u),  # no token
                await status(u, additional_headers={"Authorization": "Bearer wrong"}),
                await status(u, additional_headers={"Authorization": "Bearer s3cret"}),
                await status(u + "/?token=s3cret"),  # browsers cannot set headers
                await status(u + "/?token=s3cret", origin="https://evil.example"),
                await status(u + "/?token=s3cret", origin="http://localhost:3000"),
                await status(u + "/?token=s3cret", origin="https://app.example"),
            ], server.totals
        finally:
            await server.close()

    caplog.set_level("WARNING", logger="realm.serve")
    got, totals = run(scenario())
    assert got == [401, 401, "ready", "ready", 403, "ready", "ready"]
    assert totals["refused"] == 3
    assert re.search(r"refused 127\.0\.0\.1:\d+: no token", caplog.text)
    assert re.search(r"refused 127\.0\.0\.1:\d+: Origin 'https://evil.example' is not allowed", caplog.text)
    with pytest.raises(ValueError, match="set a token"):
        ListenerServer(listener, config=ServerConfig(host="0.0.0.0"))
    ListenerServer(listener, config=ServerConfig(host="0.0.0.0", token="t")).executor.shutdown()


def test_admission_follows_the_measured_capacity(listener, speech, caplog):
    async def scenario():
        server = await started(listener)
        derived = server.capacity, server.load, server.cores
        await server.close()
        server = await started(listener, load_target=1e-6)  # a machine too small for two streams: capacity 1
        try:
            a, b = await connect(server.url), await connect(server.url)
            await a.send(json.dumps({"type": "start"}))
            await recv_json(a, "ready")
            await b.send(json.dumps({"type": "start"}))  # refused at start ...
            at_start = await closed_with(b)
            async with connect(server.url) as c:  # ... and at connection while the server is full
                at_connect = await closed_with(c)
            await a.send(encode_pcm16(speech[:16000]))
            await a.send(json.dumps({"type": "stop"}))
            await recv_json(a, "end")
            async with connect(server.url) as d:  # a slot is free again once a stream ends
                await d.send(json.dumps({"type": "start"}))
                after = (await recv_json(d))["type"]
                small = server.capacity
                # while streams run behind real time nobody else is admitted, whatever the capacity:
                # 20 real-time model calls just now took 0.5 s from audio to frames
                server.config.load_target = 0.5
                server._lags.extend([(asyncio.get_running_loop().time(), 0.5)] * 20)
                async with connect(server.url) as e:
                    behind = await closed_with(e)
            await a.close()
            return derived, small, at_start, at_connect, after, behind
        finally:
            await server.close()

    caplog.set_level("WARNING", logger="realm.serve")
    (capacity, load, cores), small, at_start, at_connect, after, behind = run(scenario())
    assert behind[0][-1]["code"] == "server_full" and "behind" in behind[0][-1]["message"] and behind[1] == 1013
    assert 0 < load < 1 and capacity == min(128, int(0.5 * cores / load))  # load_target x cores / one stream's load
    assert small == 1
    for msgs, code in (at_start, at_connect):
        assert msgs[-1]["code"] == "server_full" and code == 1013
    assert after == "ready"
    assert re.search(r"refused 127\.0\.0\.1:\d+: server_full", caplog.text)
    assert re.search(r"client \d+ \(127\.0\.0\.1:\d+\) closed \(1013\): server_full", caplog.text)


def test_the_scheduler_runs_real_time_work_before_work_ahead_of_it():
    from concurrent.futures import ThreadPoolExecutor

    from realm.serve import FairScheduler

    log = []

    def job(name):
        log.append(("start", name))
        time.sleep(0.03)
        log.append(("end", name))
        return name

    async def scenario():
        pool = ThreadPoolExecutor(2)
        sched = FairScheduler(pool, 2)
        now = asyncio.get_running_loop().time()
        try:
            greedy = [asyncio.ensure_future(sched.run(now + 60 + k, job, f"ahead{k}")) for k in range(4)]
            await asyncio.sleep(0.005)  # ahead0 runs (spare capacity), ahead1-3 wait: one thread stays free
            due = [asyncio.ensure_future(sched.run(now + k * 1e-3, job, f"due{k}")) for k in range(3)]
            results = await asyncio.gather(*greedy, *due)
            return results, sched
        finally:
            pool.shutdown()

    results, sched = run(scenario())
    starts = [n for e, n in log if e == "start"]
    assert starts[0] == "ahead0" and starts[1:4] == ["due0", "due1", "due2"]  # real time first, in order
    assert starts[4:] == ["ahead1", "ahead2", "ahead3"]  # the rest still runs, on spare threads
    assert sched.peak_ahead == 1 and sched.counts == {"due": 3, "ahead": 4}
    assert [r[0] for r in results] == [f"ahead{k}" for k in range(4)] + [f"due{k}" for k in range(3)]

    async def shared(share, keys):  # early calls within a share of one thread; none early at share 0
        pool = ThreadPoolExecutor(2)
        sched = FairScheduler(pool, 2, ahead_share=share)
        loop = asyncio.get_running_loop()
        now = loop.time()
        times = []

        def timed(_):
            times.append(loop.time())
            time.sleep(0.03)

        try:
            await asyncio.gather(*[sched.run(now + k, timed, k) for k in keys])
            return np.diff(times), np.array(times) - now, sched.counts
        finally:
            pool.shutdown()

    gaps, _, counts = run(shared(0.25, [60, 61, 62, 63]))
    assert counts == {"due": 0, "ahead": 4} and gaps.min() >= 0.09  # 30 ms calls at most 1/4 of the time
    _, started, counts = run(shared(0.0, [0.2, 0.4]))
    assert counts == {"due": 2, "ahead": 0} and started[0] >= 0.2 and started[1] >= 0.4  # each at its time


def test_a_client_streaming_as_fast_as_it_can_does_not_delay_a_real_time_one(listener, speech):
    async def scenario():
        server = await started(listener)
        try:
            greedy = asyncio.create_task(listen_async(server.url, np.tile(speech, 8), realtime=False, chunk_ms=250))
            await asyncio.sleep(0.2)
            alone = None
            rt = await listen_async(server.url, speech, realtime=True, chunk_ms=100)
            g = await greedy
            alone = await listen_async(server.url, speech, realtime=True, chunk_ms=100)
            return rt, g, alone, server.scheduler
        finally:
            await server.close()

    rt, g, alone, sched = run(scenario(), timeout=120)
    assert g.missing == 0 and rt.missing == 0 and rt.end["dropped"] == 0
    assert sched.counts["ahead"] > 20 and sched.peak_ahead == 1  # the greedy client ran ahead, on one thread
    # generous on a loaded 2-core machine: before the scheduler an as-fast-as-possible client pushed p95 to ~0.5 s
    assert rt.stats()["p95_ms"] < alone.stats()["p95_ms"] + 150


def test_tls_serves_wss(listener, speech, tmp_path):
    import shutil
    import ssl

    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip

    async def scenario():
        server = await started(listener, token="t0k", tls_cert=str(cert), tls_key=str(key))
        try:
            ctx = ssl.create_default_context(cafile=str(cert))
            return server.url, await listen_async(server.url, speech[:16000], realtime=False, token="t0k", ssl=ctx)
        finally:
            await server.close()

    url, r = run(scenario())
    assert url.startswith("wss://127.0.0.1:") and r.missing == 0 and r.end["frames"] == 30
    with pytest.raises(ValueError, match="both a certificate"):
        ListenerServer(listener, config=ServerConfig(tls_cert=str(cert)))


def test_serve_drives_a_robot_at_play_time_survives_a_gateway_restart_and_eases_to_neutral(listener, speech):
    """`realm serve --robot tritium://HOST:PORT`: the streaming session's safe controls reach the gateway
    at the frame rate, a gateway that drops and comes back gets them again, and after the stream the
    robot eases to the profile's neutral controls."""
    pytest.importorskip("tritium_remote_py")
    from realm.embodiment.profile import load_profile
    from realm.serve import neutral_ramp
    from tests.test_tritium import TOKEN, FakeGateway

    gw = FakeGateway().start()
    neutral = load_profile("ameca").neutral_vector()

    async def scenario():
        server = ListenerServer(listener, profile="ameca", config=ServerConfig(port=0),
                                robot=f"tritium://127.0.0.1:{gw.port}", robot_token=TOKEN)  # fmt: skip
        server.robot.streamer.backoff_s = (0.05, 0.2)
        await server.start()
        try:
            task = asyncio.create_task(listen_async(server.url, speech, realtime=True, chunk_ms=100))
            await asyncio.sleep(1.5)
            gw.stop()  # the robot goes away mid-stream ...
            before = len(gw.messages())
            await asyncio.sleep(0.5)
            gw.start()  # ... and comes back on the same port
            r = await task
            await asyncio.sleep(1.5)  # the frames still due, then the ease to neutral
            return r, before
        finally:
            await server.close()
            gw.stop()

    r, before = run(scenario(), timeout=90)
    msgs = gw.messages("realm_controls")
    names = load_profile("ameca").names
    rows = np.array([[m["controls"][n] for n in names] for m in msgs])
    assert before > 10 and len(msgs) > before + 20  # frames before the drop, and again after the gateway came back
    np.testing.assert_allclose(rows[0], neutral)  # the server starts the robot at neutral
    np.testing.assert_allclose(rows[-1], neutral, atol=1e-9)  # and leaves it there
    # every other message is one of the session's safe controls or a step of the ease to neutral
    sent = np.asarray(r.controls)
    ramp = neutral_ramp(sent[-1], neutral, np.array([c.max_vel for c in load_profile("ameca").controls]), 30.0)
    known = np.concatenate([sent, ramp, neutral[None]])
    dist = np.abs(rows[:, None, :] - known[None]).max(-1).min(1)
    assert dist.max() < 1e-6
    steps = np.abs(np.diff(ramp, axis=0)).max(0) * 30
    assert (steps <= np.array([c.max_vel for c in load_profile("ameca").controls]) + 1e-9).all()  # no control too fast


class FakeSoundDevice:
    """A stand-in for the sounddevice module: a 'microphone' that plays ``y`` (16 kHz) through the
    InputStream callback, block by block, from its own thread (``speed`` x real time); ``devices=False``
    is a machine without an input device."""

    def __init__(self, y=None, devices=True, speed=4.0):
        self.y, self.devices, self.speed = y, devices, speed

    def query_devices(self, device=None, kind=None):
        if not self.devices:
            raise ValueError("No input device matching kind 'input'")
        return {"name": "fake microphone", "max_input_channels": 1, "default_samplerate": 16000.0}

    def InputStream(self, samplerate, channels, dtype, blocksize, device, callback):  # noqa: N802 (sounddevice's name)
        import threading

        sd = self

        class Stream:
            def __enter__(self):
                self.stop = threading.Event()

                def play():
                    for k in range(0, len(sd.y), blocksize):
                        if self.stop.wait(blocksize / samplerate / sd.speed):
                            return
                        block = np.zeros((blocksize, 1), np.float32)
                        part = sd.y[k : k + blocksize]
                        block[: len(part), 0] = part
                        callback(block, blocksize, None, None)

                self.thread = threading.Thread(target=play, daemon=True)
                self.thread.start()
                return self

            def __exit__(self, *exc):
                self.stop.set()
                self.thread.join(2)

        return Stream()


def test_listen_mic_streams_the_microphone_and_says_when_there_is_none(listener, speech, monkeypatch, tmp_path):
    """`realm listen --mic`: the microphone's chunks go to the server as they come (frames equal the
    offline streamer's for what was recorded), and a machine without an input device gets one line."""
    monkeypatch.setitem(sys.modules, "sounddevice", FakeSoundDevice(devices=False))
    r = CliRunner().invoke(app, ["listen", "--mic", "--seconds", "1"])
    assert r.exit_code == 2 and "no microphone" in r.output and "Traceback" not in r.output
    y = speech[: 16000 * 2]
    monkeypatch.setitem(sys.modules, "sounddevice", FakeSoundDevice(y))

    async def scenario():
        server = await started(listener)
        try:
            from realm.audio import microphone_chunks

            return await listen_async(server.url, microphone_chunks(2.0, 100.0), chunk_ms=100.0)
        finally:
            await server.close()

    res = run(scenario())
    assert res.motion.shape == (60, 58) and res.stats()["missing"] == 0
    np.testing.assert_array_equal(res.motion, offline_stream(listener, y))


def test_a_model_that_reads_words_gets_them_from_the_servers_streaming_asr(listener, speech):
    from tests.test_demo import MMLM_CKPT

    if not (MMLM_CKPT / "config.json").exists():
        pytest.skip("the committed mmlm demo checkpoint is not here")
    mmlm = realm.load(MMLM_CKPT)
    y = load_audio(JFK)

    async def scenario(model, options):
        server = await ListenerServer(model, config=ServerConfig(port=0)).start()
        try:
            return await listen_async(server.url, y, realtime=False, chunk_ms=100, options=options)
        finally:
            await server.close()

    r = run(scenario(mmlm, {"asr": True}), timeout=120)
    assert r.ready["asr"] is True and r.ready["uses_words"] is True
    heard = [w["word"] for w in r.words]  # what Whisper makes of it depends on where its runs cut the audio
    assert len(heard) >= 12 and "country" in heard, heard
    assert sum(w in heard for w in ("fellow", "americans", "ask", "what", "your", "can", "do", "for")) >= 6, heard
    assert [w["start"] for w in r.words] == sorted(w["start"] for w in r.words)
    assert r.missing == 0 and r.end["frames"] == r.expected
    r = run(scenario(listener, {"asr": True}), timeout=60)  # REALM reads no words: the option is ignored
    assert r.ready["asr"] is False and r.words == [] and r.missing == 0


def test_a_failing_speech_recogniser_leaves_the_stream_running_without_words(monkeypatch):
    from realm.text import StreamingASR
    from tests.test_demo import MMLM_CKPT

    if not (MMLM_CKPT / "config.json").exists():
        pytest.skip("the committed mmlm demo checkpoint is not here")

    def broken(self, audio):
        raise RuntimeError("no model")

    monkeypatch.setattr(StreamingASR, "push", broken)
    mmlm = realm.load(MMLM_CKPT)
    y = load_audio(JFK)[: 16000 * 4]

    async def scenario():
        server = await ListenerServer(mmlm, config=ServerConfig(port=0)).start()
        try:
            return await listen_async(server.url, y, realtime=False, chunk_ms=100, options={"asr": True})
        finally:
            await server.close()

    r = run(scenario(), timeout=120)
    assert [e["code"] for e in r.errors] == ["asr_failed"]  # said once, not at every chunk
    assert r.words == [] and r.end["frames"] == r.expected and r.missing == 0
