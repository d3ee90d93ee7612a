"""The listener page `realm serve` serves (realm.web), its face drawing, and the page in a real browser."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
import wave

import numpy as np
import pytest
from PIL import Image

import realm
from realm.audio import load_audio
from realm.render.face import PALETTE, FaceRenderer, decode_shapes, encode_shapes, face_shapes, neutral_frame
from realm.serve import ListenerServer, ServerConfig
from realm.web.browser import Chromium, Firefox, find_chromium, find_firefox
from tests.conftest import JFK
from tests.test_generate import make_run

CHROMIUM = find_chromium()
FIREFOX = find_firefox() if shutil.which("pulseaudio") else None
needs_browser = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (apt-get install chromium)")
BROWSERS = [
    pytest.param("chromium", marks=needs_browser),
    pytest.param("firefox", marks=pytest.mark.skipif(
        FIREFOX is None, reason="no Firefox with PulseAudio here (apt-get install firefox-esr pulseaudio)")),
]  # fmt: skip


@pytest.fixture(scope="module")
def listener(tmp_path_factory):
    return realm.load(make_run(tmp_path_factory.mktemp("web") / "run"))


class Running:
    """A ListenerServer on its own event loop thread (the browser talks to it from another process)."""

    def __init__(self, listener, **kw):
        self.server = ListenerServer(listener, profile=kw.pop("profile", None), config=ServerConfig(port=0, **kw))
        self.loop = asyncio.new_event_loop()
        up = threading.Event()

        def main():
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.server.start())
            up.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=main, daemon=True)
        self.thread.start()
        assert up.wait(60)
        self.url = f"http://127.0.0.1:{self.server.port}/"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def get(url: str) -> tuple[int, dict, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def smile() -> np.ndarray:
    f = neutral_frame()
    for name in ("mouthSmileLeft", "mouthSmileRight", "cheekSquintLeft", "cheekSquintRight"):
        f[realm.render.face.CH[name]] = 0.9
    f[52:55] = [0.12, -0.2, 0.05]
    return f


# ---------------------------------------------------------------- no browser needed


def test_face_shapes_survive_the_compact_encoding_to_a_thousandth_of_a_face_unit():
    rng = np.random.default_rng(0)
    for _ in range(20):
        f = np.concatenate([rng.uniform(0, 1, 52), rng.normal(0, 0.3, 3), rng.normal(0, 0.05, 3)])
        shapes = face_shapes(f)
        enc = encode_shapes(shapes)
        assert set(enc) == {"k", "n", "f", "o", "w", "p"} and len(enc["k"]) == len(shapes)
        back = decode_shapes(json.loads(json.dumps(enc)))  # through JSON, as the page gets it
        for a, b in zip(shapes, back, strict=True):
            assert a.kind == b.kind and a.fill == b.fill and a.outline == b.outline
            assert np.abs(a.points - b.points).max() <= 0.5e-3 + 1e-12
            assert abs(a.width - b.width) <= 0.5e-3
        assert all(s.fill in PALETTE + (None,) and s.outline in PALETTE + (None,) for s in shapes)
    assert len(base64.b64decode(enc["p"])) == 4 * sum(enc["n"])  # int16 x and y


def test_the_server_serves_the_page_next_to_its_websocket(listener):
    with Running(listener) as r:
        status, headers, body = get(r.url)
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        assert b"listener.js" in body and b"<canvas" in body
        assert "connect-src 'self'" in headers["Content-Security-Policy"] and headers["Cache-Control"] == "no-store"
        for path, kind in (("listener.js", "text/javascript"), ("capture-worklet.js", "text/javascript"),
                           ("listener.css", "text/css")):  # fmt: skip
            status, headers, body = get(r.url + path)
            assert status == 200 and headers["Content-Type"].startswith(kind) and len(body) > 500
        assert get(r.url + "../pyproject.toml")[0] == 404 and get(r.url + "nothing")[0] == 404
        assert get(r.url + "?token=abc")[0] == 200  # the page's own query string is the page's business
    with Running(listener, page=False) as r:
        assert get(r.url)[0] == 404


def test_the_pages_own_origin_is_admitted_and_others_are_not(listener):
    server = ListenerServer(listener, config=ServerConfig(host="0.0.0.0", token="t"))
    try:
        assert server._origin_ok("http://10.0.0.5:8765", host="10.0.0.5:8765")  # the page this server served
        assert not server._origin_ok("http://10.0.0.5:8765", host="10.0.0.6:8765")
        assert not server._origin_ok("https://evil.example", host="10.0.0.5:8765")
        assert server._origin_ok("http://localhost:3000", host="10.0.0.5:8765")  # a page on this machine, as before
        # DNS rebinding: a site whose name now points here sends Origin and Host under that name
        assert not server._origin_ok("http://evil.example:8765", host="evil.example:8765")
    finally:
        server.executor.shutdown()
    named = ListenerServer(listener, config=ServerConfig(host="robot.local", token="t"))
    try:  # the name the server was given is its own
        assert named._origin_ok("http://robot.local:8765", host="robot.local:8765")
        assert not named._origin_ok("http://evil.example:8765", host="evil.example:8765")
    finally:
        named.executor.shutdown()
    server = ListenerServer(listener, config=ServerConfig(host="0.0.0.0", token="t", page=False))
    try:
        assert not server._origin_ok("http://10.0.0.5:8765", host="10.0.0.5:8765")
    finally:
        server.executor.shutdown()


def handshake(port: int, headers: dict) -> bytes:
    """A raw WebSocket opening handshake with exactly ``headers``; the first line of the answer."""
    lines = ["GET / HTTP/1.1", "Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13",
             "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="] + [f"{k}: {v}" for k, v in headers.items()]  # fmt: skip
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        c.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        return c.recv(4096).split(b"\r\n", 1)[0]


def test_a_rebound_name_is_refused_at_the_handshake_and_the_pages_own_origin_admitted(listener):
    with Running(listener) as r:
        port = r.server.port
        evil = f"evil.example:{port}"
        assert b" 403 " in handshake(port, {"Host": evil, "Origin": f"http://{evil}"})
        own = f"127.0.0.1:{port}"
        assert b" 101 " in handshake(port, {"Host": own, "Origin": f"http://{own}"})
        assert b" 400 " in handshake(port, {"Host": own, "Origin": f"http://{own}", "origin": "http://x"})


# ---------------------------------------------------------------- in a browser


@pytest.fixture(scope="module")
def fake_mic(tmp_path_factory):
    """jfk.flac as the 48 kHz 16-bit WAV Chromium's fake microphone plays (and loops)."""
    import soundfile as sf

    y = load_audio(JFK, sr=48000)
    path = tmp_path_factory.mktemp("mic") / "jfk48.wav"
    sf.write(path, y, 48000, subtype="PCM_16")
    return path


def canvas_pixels(browser) -> np.ndarray:
    url = browser.evaluate("document.getElementById('face').toDataURL('image/png')")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")).astype(int)


@needs_browser
def test_the_page_draws_the_same_face_as_the_python_renderer(listener, fake_mic):
    with Running(listener) as r, Chromium(fake_audio=fake_mic, executable=CHROMIUM) as b:
        b.open(r.url)
        desc = json.dumps(realm.render.face.face_description())
        drawn = {}
        for name, f in (("neutral", neutral_frame()), ("smile", smile())):
            b.evaluate(f"realm.state.face = {desc}; realm.drawFace(document.getElementById('face'), "
                       f"{json.dumps(encode_shapes(face_shapes(f)))})")  # fmt: skip
            drawn[name] = canvas_pixels(b)
            assert drawn[name].shape == (400, 360, 3)
        python = {"neutral": FaceRenderer(360, 400).render(neutral_frame()).astype(int),
                  "smile": FaceRenderer(360, 400).render(smile()).astype(int)}  # fmt: skip
    same = np.abs(drawn["smile"] - python["smile"]).mean()
    other = np.abs(drawn["smile"] - python["neutral"]).mean()
    assert same < 1.5, f"page vs Pillow, same frame: mean |difference| {same:.2f} levels"
    assert other > 3 * same, (same, other)  # a smile and a turn are far more than anti-aliasing
    assert (np.abs(drawn["neutral"] - python["neutral"]).max(axis=2) > 60).mean() < 0.01  # only edges differ


@pytest.mark.parametrize("kind", BROWSERS)
def test_in_a_browser_the_microphone_streams_and_the_frames_equal_the_offline_streamer(listener, fake_mic, tmp_path, kind):
    # Chromium's fake microphone plays jfk.flac; Firefox's its test tone (through its own resampling rate)
    browser = Chromium(fake_audio=fake_mic, executable=CHROMIUM) if kind == "chromium" else Firefox(FIREFOX)
    with Running(listener, profile="ameca", token="s3cret", record_dir=str(tmp_path / "heard")) as r, browser as b:
        b.open(r.url)  # without the token the WebSocket is refused, and the page says so
        with pytest.raises(Exception, match="cannot connect"):
            b.evaluate("realm.start('mic')")
        b.open(r.url + "?token=s3cret")
        b.evaluate("realm.start('mic')")
        b.wait_for("realm.state.received >= 30", timeout_s=30)
        first = hashlib.sha1(canvas_pixels(b).tobytes()).hexdigest()
        time.sleep(2.5)
        later = hashlib.sha1(canvas_pixels(b).tobytes()).hexdigest()
        b.evaluate("realm.stop()", timeout_s=30)
        b.wait_for("realm.state.drawn + realm.state.skipped === realm.state.received", timeout_s=10)  # played out
        state = b.evaluate("({end: realm.state.end, frames: realm.state.frames, drawn: realm.state.drawn, "
                           "added: realm.state.added, ready: realm.state.ready})")  # fmt: skip
    end, frames = state["end"], state["frames"]
    assert end is not None and end["frames"] == len(frames) >= 90 and end["dropped"] == 0
    assert [f["i"] for f in frames] == list(range(len(frames)))
    assert first != later and state["drawn"] >= 0.8 * len(frames)  # the face moved on the canvas
    assert state["ready"]["controls"] and all(len(f["controls"]) == len(state["ready"]["controls"]) for f in frames)
    live = sum(f["chunk"] >= 0 for f in frames)  # the rest came from the stop (the last window's flush)
    assert live >= 0.8 * len(frames) and len(state["added"]) >= 0.9 * live and all(x > 0 for x in state["added"])
    # what the server heard: the browser's resampled PCM, replayed offline
    (heard,) = sorted((tmp_path / "heard").glob("stream-*.wav"))
    with wave.open(str(heard)) as w:
        assert w.getframerate() == 16000 and w.getnchannels() == 1
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    assert abs(len(pcm) / 16000 - end["audio_s"]) < 1e-9
    assert np.abs(pcm).max() > 1000  # sound, not silence
    y = pcm.astype(np.float32) / 32768.0
    st = listener.streamer(seed=0)
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(ServerConfig().torch_threads)
    try:
        offline = np.concatenate([st.push(y[k : k + 1600]) for k in range(0, len(y), 1600)] + [st.flush()])
    finally:
        torch.set_num_threads(n)
    got = np.array([f["motion"] for f in frames])
    assert got.shape == offline.shape
    np.testing.assert_allclose(got, offline, atol=1e-6)


@pytest.mark.parametrize("kind", BROWSERS)
def test_a_file_given_to_the_page_streams_through_the_same_path(listener, tmp_path, kind):
    """The page's file input (as a drop gives it): decoded by the browser, played through the worklet."""
    import soundfile as sf

    y = load_audio(JFK)[: 16000 * 3]
    buf = io.BytesIO()
    sf.write(buf, y, 16000, subtype="PCM_16", format="WAV")
    b64 = base64.b64encode(buf.getvalue()).decode()
    browser = Chromium(executable=CHROMIUM) if kind == "chromium" else Firefox(FIREFOX)
    with Running(listener, record_dir=str(tmp_path / "heard")) as r, browser as b:
        b.open(r.url)
        b.evaluate("document.getElementById('hear').checked = false")
        b.evaluate(f"realm.start('file', new File([Uint8Array.from(atob('{b64}'), (c) => c.charCodeAt(0))], 'jfk.wav'))")
        b.wait_for("realm.state.end !== null", timeout_s=30)  # the file's end stops the stream
        state = b.evaluate("({end: realm.state.end, n: realm.state.frames.length, log: realm.state.log})")
    assert state["log"][0].startswith("playing jfk.wav") and state["end"]["frames"] == state["n"] > 60
    (heard,) = sorted((tmp_path / "heard").glob("stream-*.wav"))
    with wave.open(str(heard)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768
    assert abs(len(pcm) / 16000 - 3.0) < 0.3  # the file's 3 s, resampled twice by the browser and back
    seg = y[8000:24000]  # one second of speech, found where it lies in what the server heard
    at = int(np.argmax(np.correlate(pcm, seg, mode="valid")))
    got = pcm[at : at + len(seg)]
    assert abs(at - 8000) < 1600, at  # the file's start within 0.1 s of the stream's
    assert np.corrcoef(got, seg)[0, 1] > 0.9  # the file, through the browser's resampling and ours
