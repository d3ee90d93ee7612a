"""Drive the listener page in a headless browser, with no extra package: Chromium through the DevTools
protocol, Firefox through WebDriver BiDi (both over a WebSocket).

    with Chromium(fake_audio="speech.wav") as browser:      # or Firefox()
        browser.open("http://127.0.0.1:8765/")
        browser.evaluate("realm.start('mic')")
        ...
        png = browser.screenshot()

Chromium's fake microphone plays ``fake_audio`` (a WAV file, looped); Firefox's plays its own
test tone (it takes no file). Either way the sound goes through the real getUserMedia ->
AudioWorklet path, so a test exercises what a user's browser runs. Used by tests/test_web.py
and ``benchmarks/bench_serve.py --browser``.
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
import threading
import time
import urllib.request
from pathlib import Path

#: Executable names tried in order when none is given.
CHROMIUMS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
FIREFOXES = ("firefox", "firefox-esr")


def _find(env: str, names: tuple[str, ...]) -> str | None:
    path = os.environ.get(env)
    if path:
        return path if Path(path).exists() or shutil.which(path) else None
    return next((p for p in map(shutil.which, names) if p), None)


def find_chromium() -> str | None:
    """Path of a Chromium-family browser on PATH (or $REALM_CHROMIUM), else None."""
    return _find("REALM_CHROMIUM", CHROMIUMS)


def find_firefox() -> str | None:
    """Path of Firefox on PATH (or $REALM_FIREFOX), else None."""
    return _find("REALM_FIREFOX", FIREFOXES)


class BrowserError(RuntimeError):
    """The browser could not be started, or a page script failed."""


class Browser:
    """What both drivers share: a headless browser process, a WebSocket to it, a page to script."""

    name = "browser"
    LISTENING = r""  # the line on stderr that gives the protocol's WebSocket URL

    def __init__(self, executable: str | None, timeout_s: float = 30.0, size: tuple[int, int] = (1100, 760)):
        if executable is None:
            raise BrowserError(f"no {self.name} found (set REALM_{self.name.upper()} to its executable)")
        self.executable, self.timeout_s, self.size = executable, timeout_s, size
        self.proc = self.ws = None
        self._ids = itertools.count(1)
        self._profile = None
        self.console: list[str] = []

    def __enter__(self):
        try:
            return self._start()
        except BaseException:  # a browser half started is stopped, its profile removed
            self.close()
            raise

    def _start(self):
        raise NotImplementedError

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
            self.proc.stderr.close()
            self.proc = None
        if self._profile is not None:
            self._profile.cleanup()
            self._profile = None

    def _profile_dir(self) -> str:
        """A fresh profile directory, removed on :meth:`close`."""
        self._profile = tempfile.TemporaryDirectory(prefix=f"realm-{self.name.lower()}-")
        return self._profile.name

    def _launch(self, args: list[str], env: dict | None = None) -> str:
        """Start the browser; the WebSocket URL it prints (the match of :attr:`LISTENING`)."""
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        deadline = time.monotonic() + self.timeout_s
        seen = []
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                if self.proc.poll() is not None:
                    break
                continue
            seen.append(line.strip())
            m = re.search(self.LISTENING, line)
            if m:  # from now on its log is read and dropped, or a full pipe would stall the browser
                threading.Thread(target=self._drain, args=(self.proc.stderr,), daemon=True).start()
                return m.group(1)
        self.close()
        tail = " | ".join(seen[-3:]) or "no output"
        raise BrowserError(f"{self.executable} did not start its remote protocol ({tail})")

    @staticmethod
    def _drain(stream) -> None:
        try:
            for _ in stream:
                pass
        except (OSError, ValueError):  # closed
            pass

    def _send(self, method: str, params: dict, timeout_s: float | None) -> dict:
        """One command and its answer (messages in between go to :meth:`_event`)."""
        i = next(self._ids)
        self.ws.send(json.dumps({"id": i, "method": method, "params": params}))
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"{method}: no answer within {timeout_s or self.timeout_s:g} s")
            msg = json.loads(self.ws.recv(timeout=left))
            if msg.get("id") == i:
                if "error" in msg:
                    err = msg["error"]
                    raise BrowserError(f"{method}: {err.get('message', err) if isinstance(err, dict) else msg.get('message', err)}")
                return msg.get("result", {})
            self._event(msg)

    def _event(self, msg: dict) -> None:
        pass

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

    def evaluate(self, expression: str, wait: bool = True, timeout_s: float | None = None):
        raise NotImplementedError

    def open(self, url: str, ready: str = "window.realm !== undefined") -> None:
        raise NotImplementedError


class Chromium(Browser):
    """A headless Chromium with a fake microphone playing ``fake_audio``, driven over DevTools."""

    name = "Chromium"
    LISTENING = r"DevTools listening on (ws://\S+)"

    def __init__(self, fake_audio: str | Path | None = None, executable: str | None = None, timeout_s: float = 30.0,
                 size: tuple[int, int] = (1100, 760)):  # fmt: skip
        super().__init__(executable or find_chromium(), timeout_s, size)
        self.fake_audio = fake_audio

    # ------------------------------------------------------------------ lifecycle

    def _start(self) -> Chromium:
        profile = self._profile_dir()
        args = [
            self.executable, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            "--autoplay-policy=no-user-gesture-required", "--remote-debugging-port=0",
            f"--user-data-dir={profile}", f"--window-size={self.size[0]},{self.size[1]}",
        ]  # fmt: skip
        if self.fake_audio is not None:
            args.append(f"--use-file-for-fake-audio-capture={Path(self.fake_audio).resolve()}")
        args.append("about:blank")
        browser_url = self._launch(args)
        port = int(re.search(r":(\d+)/", browser_url).group(1))
        from websockets.sync.client import connect

        self.ws = connect(self._page_target(port), max_size=None, open_timeout=self.timeout_s)
        self.call("Runtime.enable")
        self.call("Page.enable")
        return self

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
        return self._send(method, params or {}, timeout_s)

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


def _pulse_running(env: dict) -> bool:
    try:
        return subprocess.run(["pactl", "info"], env=env, capture_output=True, timeout=5).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class Firefox(Browser):
    """A headless Firefox driven over WebDriver BiDi; its fake microphone plays Firefox's own test
    tone (``media.navigator.streams.fake``: it takes no file), with permission prompts off.

    Firefox's audio graph runs only with a sound server (without one an AudioContext stays
    suspended): where no PulseAudio answers, one of its own with a null sink is started for the
    browser (needs ``pulseaudio``; Debian: ``apt-get install pulseaudio``) and stopped on close."""

    name = "Firefox"
    LISTENING = r"WebDriver BiDi listening on (ws://\S+)"
    PREFS = {
        "media.navigator.streams.fake": True,
        "media.navigator.permission.disabled": True,
        "media.autoplay.default": 0,
        "media.autoplay.block-webaudio": False,
        "media.autoplay.blocking_policy": 0,
        "app.update.disabledForTesting": True,
        "datareporting.policy.dataSubmissionEnabled": False,
        "browser.shell.checkDefaultBrowser": False,
    }

    def __init__(self, executable: str | None = None, timeout_s: float = 30.0, size: tuple[int, int] = (1100, 760)):
        super().__init__(executable or find_firefox(), timeout_s, size)
        self.context = None
        self.pulse = None  # the sound server started for this browser, if one was needed
        self._pulse_dir = None

    def _sound(self) -> dict:
        """The environment Firefox runs in: with a reachable PulseAudio (started here if none is)."""
        env = dict(os.environ)
        if _pulse_running(env):
            return env
        if shutil.which("pulseaudio") is None:
            raise BrowserError("Firefox needs a sound server for Web Audio: install pulseaudio (or start one)")
        self._pulse_dir = tempfile.TemporaryDirectory(prefix="realm-pulse-")
        env["XDG_RUNTIME_DIR"] = self._pulse_dir.name
        os.chmod(self._pulse_dir.name, 0o700)
        self.pulse = subprocess.Popen(["pulseaudio", "--daemonize=no", "--exit-idle-time=-1", "-n",
                                       "--load=module-null-sink sink_name=realm", "--load=module-native-protocol-unix"],
                                      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + 10
        socket_path = Path(self._pulse_dir.name, "pulse", "native")  # ready once it listens (pactl may be absent)
        while not socket_path.exists():
            if time.monotonic() > deadline or self.pulse.poll() is not None:
                self.close()
                raise BrowserError("could not start a PulseAudio server for Firefox")
            time.sleep(0.1)
        return env

    def close(self) -> None:
        super().close()
        if self.pulse is not None:
            self.pulse.terminate()
            self.pulse.wait(timeout=10)
            self.pulse = None
        if self._pulse_dir is not None:
            self._pulse_dir.cleanup()
            self._pulse_dir = None

    def _start(self) -> Firefox:
        env = self._sound()
        profile = self._profile_dir()
        prefs = "".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n" for k, v in self.PREFS.items())
        Path(profile, "user.js").write_text(prefs)
        url = self._launch([self.executable, "--headless", "--no-remote", "--remote-debugging-port=0", "--profile",
                            profile, f"--width={self.size[0]}", f"--height={self.size[1]}", "about:blank"], env)  # fmt: skip
        from websockets.sync.client import connect

        self.ws = connect(url.rstrip("/") + "/session", max_size=None, open_timeout=self.timeout_s)
        self._send("session.new", {"capabilities": {}}, None)
        self.context = self._send("browsingContext.getTree", {}, None)["contexts"][0]["context"]
        self._send("session.subscribe", {"events": ["log.entryAdded"]}, None)
        return self

    def _event(self, msg: dict) -> None:
        if msg.get("method") == "log.entryAdded":
            self.console.append(str(msg["params"].get("text")))

    def open(self, url: str, ready: str = "window.realm !== undefined") -> None:
        self._send("browsingContext.navigate", {"context": self.context, "url": url, "wait": "complete"}, None)
        self.wait_for(ready)

    def evaluate(self, expression: str, wait: bool = True, timeout_s: float | None = None):
        # BiDi returns typed remote values: the page serialises to JSON itself, and this parses it
        wrapped = f"Promise.resolve({expression}).then((v) => JSON.stringify(v === undefined ? null : v))" if wait else \
            f"JSON.stringify((() => {{ const v = ({expression}); return v === undefined ? null : v; }})())"  # fmt: skip
        r = self._send("script.evaluate", {"expression": wrapped, "target": {"context": self.context},
                                           "awaitPromise": True, "resultOwnership": "none"}, timeout_s)  # fmt: skip
        if r.get("type") == "exception":
            d = r.get("exceptionDetails", {})
            raise BrowserError(f"{expression[:60]}: {d.get('text') or d.get('exception', {}).get('value')}")
        value = r.get("result", {}).get("value")
        return None if value is None else json.loads(value)

    def screenshot(self, path: str | Path | None = None, selector: str | None = None) -> bytes:
        """A PNG of the page's viewport; written to ``path`` when given (``selector`` is not supported)."""
        png = base64.b64decode(self._send("browsingContext.captureScreenshot", {"context": self.context}, None)["data"])
        if path is not None:
            Path(path).write_bytes(png)
        return png
