"""`realm report`: a static HTML page of an eval/demo directory (tables, plots, videos)."""

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from realm.cli import app
from realm.errors import RealmInputError
from realm.render.video import Track, render_video
from realm.report import build_report, markdown_to_html

RESULTS_MD = """# Benchmark: data (test, 2 clips, arkit58)

Command: `realm eval --data data`<BR>
Stochastic models: mean ± std over 3 samples per clip.

## Headline

| model | L1 exp ↓ | FD pose ↓ |
|---|---:|---:|
| realm | **0.0123** | 0.50 |
| *GT resample* (floor) | 0.0100 | 0.40 |

## Rows

- **realm** `runs/r`: model, 3 sample(s)
""".replace("<BR>", "  ")  # markdown's line break: two trailing spaces


@pytest.fixture()
def eval_dir(tmp_path):
    """A tiny eval-like directory: results.json/.md/.csv, a plot and a rendered video."""
    d = tmp_path / "run"
    (d / "plots").mkdir(parents=True)
    (d / "results.md").write_text(RESULTS_MD)
    (d / "results.json").write_text(json.dumps({"rows": {}, "metrics": {}}))
    (d / "results.csv").write_text("row,metric\n")
    Image.new("RGB", (40, 30), (200, 10, 10)).save(d / "plots" / "metrics.png")
    m = np.zeros((15, 58), np.float32)
    render_video(d / "videos" / "clip.mp4", [Track("gen", m, "arkit58")], audio=np.zeros(8000, np.float32))
    return d


def test_report_has_the_table_the_plots_and_the_videos(eval_dir):
    path = build_report(eval_dir)
    assert path == eval_dir / "report.html"
    page = path.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert "<table" in page and "<th>L1 exp ↓</th>" in page and "<b>0.0123</b>" in page and "<i>GT resample</i>" in page
    assert '<td class="num">0.50</td>' in page
    assert re.search(r'<video controls preload="metadata" src="videos/clip\.mp4">', page)
    assert 'src="data:image/png;base64,' in page
    assert "<code>realm eval --data data</code>" in page
    assert not re.search(r"(src|href)=\"https?:", page)  # nothing from the network
    with pytest.raises(FileExistsError):
        build_report(eval_dir)
    other = build_report(eval_dir, eval_dir.parent / "elsewhere" / "r.html", title="mine")
    assert 'src="../run/videos/clip.mp4"' in other.read_text() and "<h1>mine</h1>" in other.read_text()


def test_report_of_a_demo_directory_and_of_results_json_alone(tmp_path):
    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / "demo_metrics.json").write_text(json.dumps({
        "checkpoint": "ck", "test_clips": ["a"], "samples": 2, "columns": ["L1 exp", "FD pose"],
        "table": {"REALM": [0.1, 0.2], "GT resample": [0.05, 0.1]}}))  # fmt: skip
    page = build_report(demo).read_text()
    assert "<th>L1 exp</th>" in page and "GT resample (floor)" in page and '<td class="num">0.2000</td>' in page
    ev = tmp_path / "ev"
    ev.mkdir()
    (ev / "results.json").write_text(json.dumps({
        "metrics": {"l1_exp": {"label": "L1 exp"}},
        "rows": {"realm": {"metrics": {"l1_exp": {"mean": 0.25}}}}}))  # fmt: skip
    page = build_report(ev).read_text()
    assert "<th>L1 exp</th>" in page and '<td class="num">0.2500</td>' in page


def test_report_errors_are_one_clear_line(tmp_path):
    with pytest.raises(RealmInputError, match="directory not found"):
        build_report(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RealmInputError, match="nothing to report"):
        build_report(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.json").write_text("{}")
    with pytest.raises(RealmInputError, match="not a results file"):
        build_report(tmp_path / "bad")


def test_markdown_subset():
    h = markdown_to_html("# T\n\na *b* **c** `d` <e>\n\n- x\n- y\n", shift=1)
    assert h == "<h2>T</h2>\n<p>a <i>b</i> <b>c</b> <code>d</code> &lt;e&gt;</p>\n<ul><li>x</li><li>y</li></ul>"


def test_realm_report_command(eval_dir):
    r = CliRunner().invoke(app, ["report", str(eval_dir)])
    assert r.exit_code == 0, r.output
    assert f"wrote {eval_dir / 'report.html'}" in r.output.replace("\n", "")
    r = CliRunner().invoke(app, ["report", str(eval_dir)])
    assert r.exit_code == 2 and "exists (use --force" in r.output
    assert CliRunner().invoke(app, ["report", str(eval_dir), "--force"]).exit_code == 0


def test_report_opens_in_a_headless_browser(eval_dir, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (Debian package `chromium`); the HTML is checked as text above")
    page = build_report(eval_dir)
    shot = tmp_path / "report.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files"]
    dom = subprocess.run([browser, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert "<table" in dom.stdout and "<video" in dom.stdout
    subprocess.run([browser, *flags, f"--screenshot={shot}", "--window-size=1200,900", page.as_uri()],
                   capture_output=True, timeout=120)  # fmt: skip
    assert shot.exists() and Image.open(shot).width == 1200
