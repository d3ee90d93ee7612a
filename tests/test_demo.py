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
    assert c["spec"] == "arkit58" and c["feature_extractor"] == "logmel_norm" and lis.model.refinement is not None
    # stage 2 in this run, or stage 1 retrained on a run whose stage 2 it keeps (the chain is recorded)
    assert c["stage"] == 2 or (c["stage"] == 1 and "--stages 2" in json.dumps(c["init"]))
    assert c["model"]["audio_context"] == 16  # local features need the context (docs/realm.md)
    # selected on val (the lowest loss, or the last validation: stage1_select), never on test
    assert c["selected_on"] in ("val", "the last validation (stage1_select)") and c["command"].startswith("realm train realm")
    # trained on speech heard through the randomised channel and on long silences (a realm data mix of three sets)
    sources = [c["data_config"]] + [m["config"] for m in c["data_config"].get("mix", [])]
    assert all(s["backend"] == "piper" for s in sources)
    assert any(s.get("channel", {}).get("noise", 0) > 0 for s in sources)
    assert any(s.get("long_pause_fraction", 0) > 0 for s in sources)
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
    # the real recording next to the synthetic listeners, with what the columns mean and where REALM is behind
    real = saved["real_speech"]
    assert list(real["rows"])[-1] == "REALM on jfk.flac" and len(real["rows"]) == 3
    assert all(len(v) == len(real["columns"]) and np.isfinite(v).all() for v in real["rows"].values())
    assert real["rows"]["REALM on jfk.flac"][0] > 0  # jfk.flac has pauses
    assert "Real speech next to the synthetic listeners" in page and "What the columns measure" in page
    assert "FD exp: REALM" in page and "concern on jfk.flac" in page


def _rates(**kw):
    base = {"minutes": 1.0, "n": 1, "pauses": 10, "nods_after_pause": 5, "pitch_range_deg": 8.0, "drift": 0.01}
    for k in ("blinks", "nods", "smiles", "concern"):
        base[f"{k}_pm"] = kw.pop(k, 10.0)
    return {**base, **kw}


def test_real_speech_findings_say_plainly_where_realm_is_behind():
    from realm.demo import real_speech_findings, synthetic_findings

    gt = _rates(concern=2.0, blinks=20.0)
    ok = real_speech_findings(gt, _rates(n=0), _rates(concern=3.9, blinks=25.0, nods_after_pause=3), "x.wav")
    assert not [f for f in ok if f.startswith("Behind")]
    bad = real_speech_findings(gt, _rates(n=0), _rates(concern=4.5, blinks=10.0, nods_after_pause=2, smiles=1.0,
                                                       pitch_range_deg=1.0, drift=0.2), "x.wav")  # fmt: skip
    behind = " ".join(f for f in bad if f.startswith("Behind"))
    for what in ("concern on x.wav 4.5/min", "blinks on x.wav 10.0/min", "0.20 per pause against the ground truth's 0.50",
                 "smiles on x.wav 1.0/min", "pitch range", "drift"):  # fmt: skip
        assert what in behind
    table = {"REALM": [0.02, 0.01, 0.10, 0.002, 0.002], "static mean": [0.01, 0.02, 0.18, 0.008, 0.02],
             "GT resample": [0.009, 0.015, 0.005, 0.0015, 0.0001]}  # fmt: skip
    found = synthetic_findings(table)
    assert "20.0x the floor" in found[0] and found[1].startswith("Behind the static mean on L1 exp (L1 rewards")


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
    offline = lis.generate(y, seed=3)[0]
    st = lis.streamer(seed=3)
    streamed = np.concatenate([st.push(y[k : k + 1234]) for k in range(0, len(y), 1234)] + [st.flush()])
    np.testing.assert_allclose(streamed, offline, atol=1e-5)


# ---------------------------------------------------------------- the refinement: detail, not an offset


@pytest.fixture(scope="module")
def jfk_draws():
    """The demo checkpoint on the first 6 s of real speech: the coarse motion and 24 refined samples,
    with the coarse generator's latents at 0 (its conditional mean), so that the samples differ by
    the refinement's noise alone: the refinement's properties, on a fixed coarse input."""
    from realm.audio import load_audio

    lis = realm.load(CKPT)
    lis.model.config.latent_temperature = 0.0
    lis.model.config.kind_temperature = 0.0  # with react_condition: the same kinds in every sample (p > 0.5)
    y = load_audio(JFK)[: 16000 * 6]
    coarse = lis.generate(y, refine=False, clamp=False)[0]
    refined = lis.generate(y, samples=24, seed=0, clamp=False)
    return lis, y, coarse, refined


def test_refinement_averages_to_its_coarse_input(jfk_draws):
    """Averaged over noise draws the refined expression stays on the coarse one: no offset."""
    lis, _, coarse, refined = jfk_draws
    e = lis.spec.indices("expression")
    gap = np.abs(refined[:, :, e].mean(0) - coarse[:, e])
    assert gap.mean() < 0.005  # blendshape units (0..1), over frames and the 52 channels
    assert np.abs(refined[:, :, e] - coarse[:, e]).mean() > 1.5 * gap.mean()  # single draws do move
    pose = lis.spec.indices("pose")  # untouched by the refinement (a batch of 24 rollouts: float32 rounding only)
    np.testing.assert_allclose(refined[0][:, pose], coarse[:, pose], atol=1e-6)


def test_refinement_noise_acts_at_high_frequencies(jfk_draws):
    """What the noise changes (a draw minus the mean of the draws) is fast: over 70 % of its power
    lies above 1 Hz (periods under 1 s; measured 81 %), where the coarse motion has under 20 %
    (measured 9 %)."""
    lis, _, coarse, refined = jfk_draws
    e = lis.spec.indices("expression")
    freq = np.fft.rfftfreq(refined.shape[1], 1 / 30)

    def above_1hz(x):  # (..., T, C) -> the share of its power at 1 Hz and above
        power = (np.abs(np.fft.rfft(x, axis=-2)) ** 2).reshape(-1, len(freq), x.shape[-1]).sum(axis=(0, 2))
        return power[freq >= 1.0].sum() / power.sum()

    assert above_1hz(refined[:, :, e] - refined[:, :, e].mean(0)) > 0.7
    assert above_1hz(coarse[:, e] - coarse[:, e].mean(0)) < 0.2


def test_refined_listener_blinks_where_the_coarse_one_does_not(jfk_draws, synth_dir):
    from realm.data import load_any
    from realm.metrics import blink_rate, detect_blinks

    lis, _, coarse, refined = jfk_draws
    assert detect_blinks(coarse, lis.spec) == []
    clip = sorted(load_any(synth_dir, splits="test"), key=lambda c: c.clip_id)[0]
    synth_coarse = lis.generate(clip.audio_path, first_frame=clip.listener[0], refine=False)[0]
    synth_refined = lis.generate(clip.audio_path, first_frame=clip.listener[0], samples=4, seed=1)
    assert detect_blinks(synth_coarse, lis.spec) == []
    blinks = [b for m in list(refined) + list(synth_refined) for b in detect_blinks(np.clip(m, 0, 1), lis.spec)]
    assert 8 <= blink_rate([np.clip(m, 0, 1) for m in refined], lis.spec) <= 40  # per minute; the data: 10-30
    assert len(blinks) >= 10
    # eyeBlink pulses of 100-250 ms that close the eyes: nearly all at least to 0.6, none a flicker
    # below 0.5 (the demos: 0-6 of 173-191 blinks under 0.6 on jfk.flac and 3 synthetic test clips)
    for b in blinks:
        assert b["peak"] >= 0.5 and 0.1 <= b["duration_s"] <= 0.25, b
    assert np.mean([b["peak"] >= 0.6 for b in blinks]) >= 0.9, [round(b["peak"], 2) for b in blinks]
    assert not np.array_equal(refined[0], refined[1])  # each draw blinks at its own times


def test_streamed_refinement_leaves_no_seam_at_window_edges():
    from realm.audio import load_audio
    from realm.metrics import seam_ratio

    lis = realm.load(CKPT)
    y = load_audio(JFK)
    st = lis.streamer(seed=0)
    streamed = np.concatenate([st.push(y[k : k + 1600]) for k in range(0, len(y), 1600)] + [st.flush()])
    np.testing.assert_allclose(streamed, lis.generate(y, seed=0)[0], atol=1e-5)
    assert seam_ratio(streamed[:, lis.spec.indices("expression")], window=16) < 1.2


MMLM_CKPT = Path(__file__).resolve().parents[1] / "checkpoints" / "mmlm-demo"


def test_the_committed_mmlm_checkpoint_generates_on_real_speech_with_asr_words_blinks_and_streams(tmp_path):
    """`realm generate` on jfk.flac with the multimodal-LM demo: words by offline ASR, blinks from its
    blink channel, and its streamer gives frames as the audio and words arrive."""
    from typer.testing import CliRunner

    from realm.audio import load_audio
    from realm.cli import app
    from realm.metrics import detect_blinks

    lis = realm.load(MMLM_CKPT)
    c = lis.config
    assert lis.name == "mmlm" and lis.uses_words and lis.streams and lis.model.blinks
    assert c["command"].startswith("realm train mmlm") and c["feature_extractor"] == "logmel_norm"
    assert c["data_config"]["channel"]["noise"] > 0 and (MMLM_CKPT / "model.safetensors").stat().st_size < 20e6
    r = CliRunner().invoke(app, ["generate", "-c", str(MMLM_CKPT), "-a", str(JFK), "-o", str(tmp_path / "m.npz"),
                                 "--samples", "2", "--seed", "0"])  # fmt: skip
    assert r.exit_code == 0, r.output
    with np.load(tmp_path / "m.npz") as d:
        m = d["listener"]
    assert m.shape == (2, 330, 58) and np.isfinite(m).all()
    assert sum(len(detect_blinks(x, lis.spec)) for x in m) >= 1  # it blinks (the seed's tokens alone never did)
    lo, hi = lis.stats.mean - 6 * lis.stats.std, lis.stats.mean + 6 * lis.stats.std
    assert ((m >= lo) & (m <= hi)).mean() > 0.99  # within the data's spread
    s = lis.streamer(seed=0)
    y = load_audio(JFK)
    first = s.push(y[:16000])  # 1 s: the tokens whose audio and 2 tokens after are in
    assert first.shape[1] == 58 and 0 < len(first) <= 30 and s.latency_s < 0.9
