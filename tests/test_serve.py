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

        def failing(streamer, safety, start, audio):  # a model failure on one client's chunk
            if audio is not None and len(audio) == 1234:
                raise RuntimeError("boom")
            return run_model(streamer, safety, start, audio)

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
        "odd_length", "chunk_too_large", "already_started", "streaming",
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
        line = proc.stdout.readline()
        url = re.search(r"ws://[\d.]+:\d+", line)
        assert url, line
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
