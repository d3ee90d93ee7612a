import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DATA = Path(__file__).parent / "data"
JFK = DATA / "jfk.flac"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test session gets its own feature cache, never the user's."""
    monkeypatch.setenv("REALM_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory):
    """A small synthetic dataset (formant backend, seed 0), shared by read-only tests."""
    from realm.data.synth import SynthConfig, generate

    out = tmp_path_factory.mktemp("synth") / "ds"
    generate(SynthConfig(hours=0.03, seed=0, backend="formant", listener_samples=2), out)
    return out


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory):
    """A tiny synthetic dataset (formant speech, 7 clips of 6-8 s: 4 train, 1 val, 1 test, 1 ood) for
    tests that train models; read-only."""
    from realm.data.synth import SynthConfig, generate

    out = tmp_path_factory.mktemp("tiny") / "ds"
    generate(SynthConfig(hours=0.012, seed=0, backend="formant", listener_samples=2, clip_seconds=(6.0, 8.0)), out)
    return out


def assert_streamed_equals_offline(ex, y, chunk: int, atol: float):
    """Feed ``y`` to the extractor's incremental stream (``ex.stream()``) ``chunk`` samples at a time,
    flush it, and check that every frame equals offline extraction ``ex(y)`` (returned)."""
    import numpy as np

    offline = ex(y)
    st = ex.stream()
    streamed = np.concatenate([st.push(y[i : i + chunk]) for i in range(0, len(y), chunk)] + [st.flush()])
    assert streamed.shape == offline.shape
    np.testing.assert_allclose(streamed, offline, rtol=0, atol=atol)
    return offline
