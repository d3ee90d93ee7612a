"""The listener page that ``realm serve`` serves next to its WebSocket (plain HTTP, same host and port).

Static files only, no build step and nothing from the network: ``index.html``, ``listener.js``
(microphone or file -> the server; the face and robot controls drawn live; latency readouts),
``capture-worklet.js`` (an AudioWorklet: mono, resampled to 16 kHz, 16-bit PCM chunks) and
``listener.css``. The face is :mod:`realm.render.face`'s drawing: the page asks for it with
``{"type": "start", "face": true}`` and fills and strokes the shapes each frame carries, so there
is one drawing description, in Python. :mod:`realm.web.browser` drives the page in a headless
Chromium with a fake microphone (tests, ``benchmarks/bench_serve.py --browser``).
"""

from __future__ import annotations

from importlib import resources

#: URL path -> (file in this package, Content-Type)
PAGES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/listener.js": ("listener.js", "text/javascript; charset=utf-8"),
    "/capture-worklet.js": ("capture-worklet.js", "text/javascript; charset=utf-8"),
    "/listener.css": ("listener.css", "text/css; charset=utf-8"),
}

#: Headers of every page response: nothing is cached, nothing but this server is reachable from the page.
HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
    "media-src 'self' blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
}


def asset(path: str) -> tuple[bytes, str] | None:
    """The body and Content-Type of the page file at URL ``path`` (query string ignored), or None."""
    entry = PAGES.get(path.split("?", 1)[0])
    if entry is None:
        return None
    name, ctype = entry
    return resources.files(__name__).joinpath(name).read_bytes(), ctype
