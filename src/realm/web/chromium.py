"""Drive the listener page in a headless Chromium through the DevTools protocol (no extra package).

    with Chromium(fake_audio="speech.wav") as browser:
        browser.open("http://127.0.0.1:8765/")
        browser.evaluate("realm.start('mic')", wait=True)
        ...
        png = browser.screenshot()

The fake microphone plays ``fake_audio`` (a WAV file; Chromium loops it) through the real
getUserMedia -> AudioWorklet path, so a test exercises exactly what a user's browser runs.
Used by tests/test_web.py and ``benchmarks/bench_serve.py --browser``.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

#: Executable names tried in order when none is given.
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_chromium() -> str | None:
    """Path of a Chromium-family browser on PATH (or $REALM_CHROMIUM), else None."""
    env = os.environ.get("REALM_CHROMIUM")
    if env:
        return env if Path(env).exists() or shutil.which(env) else None
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


class BrowserError(RuntimeError):
    """The browser could not be started, or a page script failed."""


class Chromium:
    """A headless Chromium with a fake microphone playing ``fake_audio``, driven over DevTools."""

    def __init__(self, fake_audio: str | Path | None = None, executable: str | None = None, timeout_s: float = 30.0,
                 size: tuple[int, int] = (1100, 760)):  # fmt: skip
        self.executable = executable or find_chromium()
        if self.executable is None:
            raise BrowserError(f"no Chromium found (tried {', '.join(BROWSERS)}; set REALM_CHROMIUM)")
        self.fake_audio, self.timeout_s, self.size = fake_audio, timeout_s, size
        self.proc = self.ws = None
        self._ids = itertools.count(1)
        self._profile = None
        self.console: list[str] = []

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Chromium:
        self._profile = tempfile.TemporaryDirectory(prefix="realm-chromium-")
        args = [
            self.executable, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            "--autoplay-policy=no-user-gesture-required", "--remote-debugging-port=0",
            f"--user-data-dir={self._profile.name}", f"--window-size={self.size[0]},{self.size[1]}",
        ]  # fmt: skip
        if self.fake_audio is not None:
            args.append(f"--use-file-for-fake-audio-capture={Path(self.fake_audio).resolve()}")
        args.append("about:blank")
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        port = self._devtools_port()
        target = self._page_target(port)
        from websockets.sync.client import connect

        self.ws = connect(target, max_size=None, open_timeout=self.timeout_s)
        self.call("Runtime.enable")
        self.call("Page.enable")
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.ws is not None:
            try:
                self.ws.close()
            except Exception:  # the browser may be gone already
                pass
            self.ws = None
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        if self._profile is not None:
            self._profile.cleanup()
            self._profile = None

    def _devtools_port(self) -> int:
        """The DevTools port Chromium prints on stderr ("DevTools listening on ws://127.0.0.1:PORT/...")."""
        deadline = time.monotonic() + self.timeout_s
        seen = []
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                if self.proc.poll() is not None:
                    break
                continue
            seen.append(line.strip())
            m = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
            if m:
                return int(m.group(1))
        self.close()
        tail = " | ".join(seen[-3:]) or "no output"
        raise BrowserError(f"{self.executable} did not start its DevTools endpoint ({tail})")

    def _page_target(self, port: int) -> str:
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                pages = [t for t in json.load(r) if t.get("type") == "page"]
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
            time.sleep(0.1)
        raise BrowserError("Chromium opened no page")

    # ------------------------------------------------------------------ DevTools calls

    def call(self, method: str, params: dict | None = None, timeout_s: float | None = None) -> dict:
        """Send one DevTools command and return its result (events in between are kept as console lines)."""
        i = next(self._ids)
        self.ws.send(json.dumps({"id": i, "method": method, "params": params or {}}))
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"{method}: no answer within {timeout_s or self.timeout_s:g} s")
            msg = json.loads(self.ws.recv(timeout=left))
            if msg.get("id") == i:
                if "error" in msg:
                    raise BrowserError(f"{method}: {msg['error'].get('message')}")
                return msg.get("result", {})
            self._event(msg)

    def _event(self, msg: dict) -> None:
        if msg.get("method") == "Runtime.consoleAPICalled":
            args = msg["params"].get("args", [])
            self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args))
        elif msg.get("method") == "Runtime.exceptionThrown":
            d = msg["params"]["exceptionDetails"]
            self.console.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")

    def open(self, url: str, ready: str = "window.realm !== undefined") -> None:
        """Load ``url`` and wait until the JavaScript condition ``ready`` holds."""
        self.call("Page.navigate", {"url": url})
        self.wait_for(ready)

    def evaluate(self, expression: str, wait: bool = True, timeout_s: float | None = None):
        """The value of a JavaScript expression (awaited when it is a promise and ``wait``), as JSON."""
        r = self.call("Runtime.evaluate", {"expression": expression, "awaitPromise": wait, "returnByValue": True},
                      timeout_s=timeout_s)  # fmt: skip
        if "exceptionDetails" in r:
            d = r["exceptionDetails"]
            raise BrowserError(f"{expression[:60]}: {d.get('exception', {}).get('description') or d.get('text')}")
        return r.get("result", {}).get("value")

    def wait_for(self, condition: str, timeout_s: float | None = None, every_s: float = 0.05):
        """Poll a JavaScript condition until it is truthy; its value."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while time.monotonic() < deadline:
            try:
                v = self.evaluate(condition, wait=False)
            except BrowserError:
                v = None
            if v:
                return v
            time.sleep(every_s)
        raise BrowserError(f"timed out waiting for {condition[:80]}; console: {self.console[-3:]}")

    def screenshot(self, path: str | Path | None = None, selector: str | None = None) -> bytes:
        """A PNG of the page (or of the element at ``selector``); written to ``path`` when given."""
        params: dict = {"format": "png"}
        if selector is not None:
            box = self.evaluate(f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
                                ".getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; })()")  # fmt: skip
            params["clip"] = {"x": box[0], "y": box[1], "width": box[2], "height": box[3], "scale": 1}
        png = base64.b64decode(self.call("Page.captureScreenshot", params)["data"])
        if path is not None:
            Path(path).write_bytes(png)
        return png
