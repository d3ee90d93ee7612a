"""A static HTML report of an evaluation, benchmark or demo directory (``realm report``).

    from realm.report import build_report
    path = build_report("runs/bench")            # -> runs/bench/report.html

The page needs no server and loads nothing from the network: tables come from every
``results.md``/``results.json`` (``realm eval``, ``realm bench``) and ``demo_metrics.json``
(``realm demo``) found under the directory, plots (PNG/JPEG/GIF) are embedded as base64 data
URIs, and videos (MP4/WebM) are ``<video controls>`` elements with paths relative to the page,
so keep the page beside the directory it describes.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path

from realm.errors import RealmInputError
from realm.io import atomic_path

IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif"}
VIDEO_TYPES = {".mp4": "video/mp4", ".webm": "video/webm"}
#: Larger images are linked instead of embedded.
EMBED_LIMIT = 8 * 1024 * 1024
MAX_DEPTH = 4

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.3em; margin-top: 2em; border-bottom: 1px solid #ddd; }
h3 { font-size: 1.1em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; }
th { background: #f2f4f7; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr:nth-child(even) td { background: #fafbfc; }
figure { margin: 1em 0; } figcaption { color: #555; font-size: 0.85em; }
img, video { max-width: 100%; border: 1px solid #ddd; }
code { background: #f4f4f4; padding: 0 0.2em; }
.meta { color: #666; font-size: 0.85em; }
"""


# ---------------------------------------------------------------- markdown subset -> HTML


def _inline(text: str) -> str:
    """Escape, then `code`, **bold**, *italic*."""
    s = html.escape(text, quote=False)
    s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
    s = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", s)
    s = re.sub(r"(?<![\w*])\*([^*]+)\*(?![\w*])", r"<i>\1</i>", s)
    return s


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def markdown_to_html(md: str, shift: int = 1) -> str:
    """The markdown our tools write (headings, pipe tables, bullet lists, paragraphs) as HTML.

    Headings are demoted by ``shift`` levels so that a document's ``#`` fits under the page's title.
    """
    out: list[str] = []
    lines = md.splitlines()
    i = 0
    para: list[str] = []

    def flush() -> None:
        if para:
            out.append("<p>" + "<br>\n".join(_inline(p.rstrip()) for p in para) + "</p>")
            para.clear()

    while i < len(lines):
        line = lines[i]
        if m := re.match(r"^(#{1,6})\s+(.*)$", line):
            flush()
            level = min(6, len(m.group(1)) + shift)
            out.append(f"<h{level}>{_inline(m.group(2))}</h{level}>")
        elif line.lstrip().startswith("|") and i + 1 < len(lines) and re.match(r"^\s*\|[\s:|-]+\|\s*$", lines[i + 1]):
            flush()
            head = _cells(line)
            align = ["num" if c.strip().endswith(":") else "" for c in _cells(lines[i + 1])]
            rows = []
            i += 2
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            out.append(_table(head, rows, align, markup=True))
            continue
        elif m := re.match(r"^\s*[-*]\s+(.*)$", line):
            flush()
            items = []
            while i < len(lines) and (m := re.match(r"^\s*[-*]\s+(.*)$", lines[i])):
                items.append(f"<li>{_inline(m.group(1))}</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
            continue
        elif not line.strip():
            flush()
        else:
            para.append(line.rstrip().removesuffix("  "))
        i += 1
    flush()
    return "\n".join(out)


def _table(head: list[str], rows: list[list[str]], align: list[str] | None = None, markup: bool = False) -> str:
    fmt = _inline if markup else (lambda s: html.escape(str(s)))
    align = align or [""] * len(head)
    th = "".join(f"<th>{fmt(h)}</th>" for h in head)
    body = []
    for r in rows:
        tds = "".join(
            f'<td class="{align[j] if j < len(align) else ""}">{fmt(c)}</td>' for j, c in enumerate(r)
        )
        body.append(f"<tr>{tds}</tr>")
    return f'<table class="results"><thead><tr>{th}</tr></thead><tbody>{"".join(body)}</tbody></table>'


# ---------------------------------------------------------------- sections


def _walk(root: Path, skip: Path | None) -> list[Path]:
    """Files under ``root`` (sorted, hidden entries skipped, at most MAX_DEPTH levels)."""
    found = []
    for d, dirs, files in os.walk(root):
        depth = len(Path(d).relative_to(root).parts)
        dirs[:] = sorted(x for x in dirs if not x.startswith(".") and depth < MAX_DEPTH)
        for f in sorted(files):
            p = Path(d) / f
            if not f.startswith(".") and (skip is None or p.resolve() != skip.resolve()):
                found.append(p)
    return found


def _eval_section(d: Path, root: Path) -> str:
    rel = d.relative_to(root).as_posix() or "."
    md = d / "results.md"
    parts = [f"<h2>Benchmark table: <code>{html.escape(rel)}</code></h2>"]
    if md.exists():
        parts.append(markdown_to_html(md.read_text(), shift=2))
    else:
        try:
            res = json.loads((d / "results.json").read_text())
            keys = list(res["metrics"])
            rows = [[name] + [_num(r["metrics"][k]["mean"]) for k in keys] for name, r in res["rows"].items()]
            heads = ["model"] + [res["metrics"][k]["label"] for k in keys]
            parts.append(_table(heads, rows, [""] + ["num"] * len(keys)))
        except (ValueError, KeyError, TypeError) as e:
            raise RealmInputError(d / "results.json", f"not a results file of realm eval ({type(e).__name__}: {e})") from None
    return "\n".join(parts)


def _demo_section(path: Path, root: Path) -> str:
    try:
        res = json.loads(path.read_text())
        cols, table = list(res["columns"]), dict(res["table"])
    except (ValueError, KeyError, TypeError) as e:
        raise RealmInputError(path, f"not a demo metrics file ({type(e).__name__}: {e})") from None
    rel = path.parent.relative_to(root).as_posix() or "."
    rows = [[name + (" (floor)" if name == "GT resample" else "")] + [_num(v) for v in vals] for name, vals in table.items()]
    meta = (f"checkpoint <code>{html.escape(str(res.get('checkpoint', '')))}</code>; "
            f"{len(res.get('test_clips', []))} held-out test clip(s); REALM: mean of {res.get('samples', '?')} "
            "samples per clip; lower is better; GT resample = a second listener realisation (the floor).")  # fmt: skip
    parts = [f"<h2>Demo metrics: <code>{html.escape(rel)}</code></h2>", f'<p class="meta">{meta}</p>',
             _table(["model"] + cols, rows, [""] + ["num"] * len(cols)), _help(res.get("column_help")),
             _findings(res.get("findings"))]  # fmt: skip
    real = res.get("real_speech")
    if real:
        from realm.metrics import behaviour_cell

        try:
            rcols, rrows = list(real["columns"]), dict(real["rows"])
        except (KeyError, TypeError) as e:
            raise RealmInputError(path, f"not a demo metrics file (real_speech: {type(e).__name__}: {e})") from None
        parts += ["<h3>Real speech next to the synthetic listeners (per minute)</h3>",
                  '<p class="meta">The same detectors on the ground truth of the synthetic conversations (every '
                  "listener realisation), on REALM's output for their test clips and on REALM's output for the real "
                  "recording (mean over its samples). The synthetic ground truth is the behaviour REALM learned; "
                  "real speech has no ground-truth listener.</p>",
                  _table(["motion"] + rcols, [[n] + [behaviour_cell(c, v) for c, v in zip(rcols, vals, strict=True)]
                                              for n, vals in rrows.items()], [""] + ["num"] * len(rcols)),
                  _help(real.get("column_help")), _findings(real.get("findings"))]  # fmt: skip
    return "\n".join(p for p in parts if p)


def _help(helps) -> str:
    if not helps:
        return ""
    items = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(str(v))}</li>" for k, v in dict(helps).items())
    return f'<details><summary>What the columns measure</summary><ul class="meta">{items}</ul></details>'


def _findings(findings) -> str:
    if not findings:
        return ""
    items = "".join(f"<li>{html.escape(str(f))}</li>" for f in findings)
    return f"<p><b>Where REALM stands</b></p><ul>{items}</ul>"


def _num(v) -> str:
    return "—" if v is None else f"{v:.4f}"


def _image(p: Path, root: Path, base: Path) -> str:
    rel = p.relative_to(root).as_posix()
    if p.stat().st_size <= EMBED_LIMIT:
        src = f"data:{IMAGE_TYPES[p.suffix.lower()]};base64," + base64.b64encode(p.read_bytes()).decode("ascii")
    else:
        src = html.escape(Path(os.path.relpath(p, base)).as_posix(), quote=True)
    return f'<figure><img src="{src}" alt="{html.escape(rel)}"><figcaption>{html.escape(rel)}</figcaption></figure>'


def _video(p: Path, root: Path, base: Path) -> str:
    rel = p.relative_to(root).as_posix()
    src = html.escape(Path(os.path.relpath(p, base)).as_posix(), quote=True)
    return (f'<figure><video controls preload="metadata" src="{src}"><a href="{src}">{html.escape(rel)}</a></video>'
            f"<figcaption>{html.escape(rel)}</figcaption></figure>")  # fmt: skip


# ---------------------------------------------------------------- the page


def build_report(src: str | Path, out: str | Path | None = None, force: bool = False, title: str | None = None) -> Path:
    """Write a static HTML report of directory ``src`` to ``out`` (default ``src/report.html``)."""
    src = Path(src)
    if not src.exists():
        raise RealmInputError(src, "directory not found")
    if not src.is_dir():
        raise RealmInputError(src, "not a directory (give a realm eval, bench or demo output directory)")
    out = Path(out) if out is not None else src / "report.html"
    if out.exists() and not force:
        raise FileExistsError(f"{out}: exists (use --force to overwrite)")
    base = out.resolve().parent
    files = _walk(src, out)
    tables = []
    for p in files:
        if p.name == "results.json":
            tables.append(_eval_section(p.parent, src))
        elif p.name == "demo_metrics.json":
            tables.append(_demo_section(p, src))
    videos = [_video(p, src, base) for p in files if p.suffix.lower() in VIDEO_TYPES]
    order = ("metrics", "trajector", "gate", "attention")  # benchmark bars first, internals last
    rank = lambda p: next((i for i, k in enumerate(order) if k in p.name), len(order))  # noqa: E731
    images = [_image(p, src, base) for p in sorted((p for p in files if p.suffix.lower() in IMAGE_TYPES), key=rank)]
    if not (tables or videos or images):
        raise RealmInputError(src, "nothing to report: no results.json, demo_metrics.json, plots or videos found")
    title = title or f"REALM report: {src.resolve().name}"
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    body = [f"<h1>{html.escape(title)}</h1>",
            f'<p class="meta">Source <code>{html.escape(str(src))}</code>, written {stamp}. '
            f"{len(tables)} table section(s), {len(videos)} video(s), {len(images)} plot(s).</p>"]  # fmt: skip
    body += tables
    if videos:
        body += ["<h2>Videos</h2>"] + videos
    if images:
        body += ["<h2>Plots</h2>"] + images
    page = ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")  # fmt: skip
    with atomic_path(out, force=force) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return out
