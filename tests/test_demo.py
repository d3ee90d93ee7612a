"""The committed demo checkpoint and the demo job that `make demo` runs."""

import json
from pathlib import Path

import numpy as np
import pytest

import realm
from realm.demo import run_demo
from tests.conftest import JFK

CKPT = Path(__file__).resolve().parents[1] / "checkpoints" / "realm-demo"


def test_the_committed_checkpoint_loads_and_says_how_it_was_made():
    lis = realm.load(CKPT)
    c = lis.config
    assert c["spec"] == "arkit58" and c["feature_extractor"] == "logmel" and c["stage"] == 2
    assert c["model"]["audio_context"] == 16  # local features need the context (docs/realm.md)
    assert c["selected_on"] == "val" and c["command"].startswith("realm train realm")
    assert c["data_config"]["backend"] == "piper"
    counts = lis.model.param_counts()
    assert counts["total"] > counts["coarse"] > 1.9e6


def test_demo_job_scores_realm_against_baselines_and_the_floor(tmp_path):
    res = run_demo(CKPT, tmp_path / "out", JFK, hours=0.03, samples=2)
    assert set(res["table"]) == {"REALM", "static mean", "random train clip", "GT resample"}
    assert all(np.isfinite(v).all() for v in res["table"].values())
    saved = json.loads((tmp_path / "out/demo_metrics.json").read_text())
    assert saved["table"] == res["table"]
    with np.load(res["outputs"]["speech"]) as d:
        assert d["listener"].shape == (2, 330, 58) and str(d["spec"]) == "arkit58"
    for p in res["outputs"]["test"]:
        with np.load(p) as d:
            assert d["listener"].shape[0] == 2 and d["listener"].shape[1:] == d["gt"].shape[1:]
    # a short rendered clip, plots and the HTML report that collects them
    page = Path(res["outputs"]["report"]).read_text()
    assert Path(res["outputs"]["video"]).stat().st_size > 10_000 and len(res["outputs"]["plots"]) == 3
    assert "<table" in page and '<video controls preload="metadata" src="media/' in page
    assert page.count("data:image/png;base64,") == 3


@pytest.mark.parametrize("seed", [0, 1])
def test_demo_checkpoint_motion_is_plausible_on_real_speech(seed):
    lis = realm.load(CKPT)
    raw = lis.generate(JFK, seed=seed, clamp=False)[0]
    m = lis.generate(JFK, seed=seed)[0]
    assert np.isfinite(raw).all()
    assert m[:, :52].min() >= 0 and m[:, :52].max() <= 1  # the output contract: ARKit blendshapes in 0..1
    np.testing.assert_array_equal(m, lis.spec.clamp(raw))  # clamping is the only difference
    assert np.abs(raw[:, 52:55]).max() < 0.6  # head rotation within +-35 degrees
    assert np.abs(np.diff(raw, axis=0)).mean() > 0  # it moves


def test_demo_checkpoint_streams_what_it_generates_offline():
    from realm.audio import load_audio

    lis = realm.load(CKPT)
    y = load_audio(JFK)[: 16000 * 4]
    offline = lis.generate(y, seed=3, refine_window=16)[0]
    st = lis.streamer(seed=3)
    streamed = np.concatenate([st.push(y[k : k + 1234]) for k in range(0, len(y), 1234)] + [st.flush()])
    np.testing.assert_allclose(streamed, offline, atol=1e-5)
