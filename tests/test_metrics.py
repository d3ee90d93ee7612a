"""Every metric of DESIGN section 9 against a hand-computed case, plus degenerate inputs."""

import math

import numpy as np
import pytest
from scipy.linalg import sqrtm
from scipy.ndimage import uniform_filter1d

from realm import metrics as M
from realm.data.synth import SynthConfig, ease_envelope, make_clip, pulse
from realm.motion import get_spec

SPEC = get_spec("arkit58")
CH = SPEC.channel


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """Small matrices: one BLAS thread is far faster (see realm.metrics.single_thread_blas)."""
    with M.single_thread_blas():
        yield


@pytest.fixture(scope="module")
def synth_clips():
    """Four 12-16 s synthetic clips (formant speech): GT, a second realisation, speaker, events."""
    cfg = SynthConfig(backend="formant", clip_seconds=(12.0, 16.0), seed=5)
    return [make_clip(i, "test", cfg)[0] for i in range(4)]


def closed_form_fd(m1, s1, m2, s2):
    return float(((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * np.real(sqrtm(s1 @ s2))))


# ---------------------------------------------------------------- FD and its matrix square root


def test_sqrtm_trace_matches_scipy_and_handles_singular_covariances():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    s1, s2 = a @ a.T, b @ b.T
    assert M.sqrtm_psd_trace(s1, s2) == pytest.approx(np.trace(np.real(sqrtm(s1 @ s2))), rel=1e-8)
    # rank deficient: tr((diag(a, 0) diag(b, c))^(1/2)) = sqrt(a b)
    assert M.sqrtm_psd_trace(np.diag([4.0, 0.0]), np.diag([9.0, 5.0])) == pytest.approx(6.0)
    assert M.sqrtm_psd_trace(np.zeros((3, 3)), s1[:3, :3]) == 0.0
    low = rng.normal(size=(6, 2))  # rank 2 in 6 dims
    v = M.sqrtm_psd_trace(low @ low.T, s1[:6, :6] if s1.shape[0] >= 6 else np.eye(6))
    assert np.isfinite(v) and v >= 0


def test_fd_of_gaussian_samples_matches_the_closed_form():
    rng = np.random.default_rng(1)
    m1, m2 = np.array([0.0, 1.0, -1.0]), np.array([0.5, 0.0, -1.0])
    a = rng.normal(size=(3, 3))
    s1, s2 = np.diag([1.0, 2.0, 0.5]), a @ a.T / 3 + 0.1 * np.eye(3)
    x = rng.multivariate_normal(m1, s1, 40000)
    y = rng.multivariate_normal(m2, s2, 40000)
    # exact on the samples' own moments (biased covariance) ...
    exact = closed_form_fd(x.mean(0), np.cov(x.T, bias=True), y.mean(0), np.cov(y.T, bias=True))
    assert M.frechet_distance(x, y) == pytest.approx(exact, rel=1e-9)
    # ... and close to the population value
    assert M.frechet_distance(x, y) == pytest.approx(closed_form_fd(m1, s1, m2, s2), rel=0.03)
    # ddof=1 is the unbiased variant of DIM / REALM / LM-Listener
    unb = closed_form_fd(x.mean(0), np.cov(x.T), y.mean(0), np.cov(y.T))
    assert M.frechet_distance(x, y, ddof=1) == pytest.approx(unb, rel=1e-9)


def test_fd_of_identical_sets_is_zero_and_tiny_clips_are_defined():
    rng = np.random.default_rng(2)
    clips = [rng.normal(size=(n, 4)) for n in (50, 80)]
    assert M.fd_per_clip(clips, clips) == pytest.approx(0.0, abs=1e-9)
    assert M.fd_pooled(clips, clips) == pytest.approx(0.0, abs=1e-9)
    one = rng.normal(size=(1, 4))
    assert M.frechet_distance(one, one + 1) == pytest.approx(4.0)  # zero covariances, mean shift only
    assert M.frechet_distance(one, one, ddof=1) == 0.0
    assert M.fd_delta(one, one + 3) == 0.0  # no differences in one frame
    two = rng.normal(size=(2, 10))  # fewer frames than dimensions: singular covariances
    assert np.isfinite(M.frechet_distance(two, rng.normal(size=(3, 10))))


def test_fd_delta_catches_over_smoothing(synth_clips):
    exp = SPEC.indices("expression")
    gts = [c.listener[:, exp] for c in synth_clips]
    smooth = [uniform_filter1d(g, 9, axis=0, mode="nearest") for g in gts]
    resample = [c.samples()[1][:, exp] for c in synth_clips]
    same = M.fd_delta_per_clip(gts, gts)
    smoothed = M.fd_delta_per_clip(gts, smooth)
    assert same == pytest.approx(0.0, abs=1e-9)
    assert smoothed > 0.01
    # the over-smoothed copy scores worse than an independent realisation (the floor)
    assert smoothed > M.fd_delta_per_clip(gts, resample)
    # while its plain FD hardly notices
    assert M.fd_per_clip(gts, smooth) < smoothed


# ---------------------------------------------------------------- L1, MSE, Var, diversity


def test_l1_mse_hand_case():
    gt = np.zeros((2, 2))
    pred = np.array([[1.0, -1.0], [3.0, 0.0]])
    assert M.l1(gt, pred) == pytest.approx(5 / 4)
    assert M.mse(gt, pred) == pytest.approx(11 / 4)
    assert M.mean_over_clips(M.mse, [gt, gt], [pred, gt]) == pytest.approx(11 / 8)
    assert M.l1(gt, np.zeros((5, 2))) == 0.0  # unequal lengths are cut to the shorter


def test_var_both_variants_hand_case():
    c1 = np.array([[0.0, 0.0], [2.0, 0.0]])  # per-dim variances (1, 0): clip var 0.5
    c2 = np.array([[1.0, 1.0], [1.0, 1.0]])  # constant: 0
    assert M.var_per_clip([c1, c2]) == pytest.approx(0.25)
    # DIM: variance of all 8 pooled values (0, 0, 2, 0, 1, 1, 1, 1): mean 0.75, var 1 - 0.5625
    assert M.var_pooled([c1, c2]) == pytest.approx(0.4375)
    assert M.var_per_clip([np.ones((1, 3))]) == 0.0


def test_diversity_hand_case_and_sampling():
    x = np.array([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])
    assert M.diversity(x, pairs=([0, 1], [1, 2])) == pytest.approx(5.0)
    assert M.diversity(x, pairs=([0], [2])) == pytest.approx(10.0)
    rng = np.random.default_rng(0)
    assert len(M.diversity_pairs(31, rng)[0]) == 30 and len(M.diversity_pairs(30, rng)[0]) == 10
    # one-hot frames: every pair of distinct frames is sqrt(2) apart
    eye = np.eye(40)
    a, b = M.diversity_pairs(40, np.random.default_rng(3))
    assert M.diversity(eye, seed=3) == pytest.approx(math.sqrt(2) * np.mean(a != b))
    assert M.diversity(eye, seed=3) == M.diversity(eye, seed=3)  # seeded
    assert M.diversity(np.ones((1, 4))) == 0.0 and M.diversity(np.ones((50, 4))) == 0.0
    assert np.isfinite(M.diversity(np.arange(5.0)[:, None]))  # fewer frames than pairs


# ---------------------------------------------------------------- SID and k-means


def dim_calcuate_sid(gt, pred, k):
    """DIM's ``calcuate_sid`` (code/metrics/eval_utils.py), line for line, on pooled (N, D) arrays."""
    from sklearn.cluster import KMeans

    kmeans_gt = KMeans(n_clusters=k, random_state=0, n_init="auto").fit(gt)
    kmeans_pred = kmeans_gt.predict(pred)
    hist_cnt = [0] * k
    for i in range(len(kmeans_pred)):
        hist_cnt[kmeans_pred[i]] += 1
    hist_cnt = np.array(hist_cnt)
    hist_cnt = hist_cnt / np.sum(hist_cnt)
    entropy = 0
    eps = 1e-6
    for i in range(k):
        entropy += hist_cnt[i] * np.log2(hist_cnt[i] + eps)
    return -entropy


@pytest.mark.parametrize("dtype,k", [(np.float32, 40), (np.float64, 20)])
def test_sid_equals_dims_scikit_learn_computation_on_the_same_arrays(dtype, k):
    rng = np.random.default_rng(7)
    gts = [rng.normal(size=(n, 6)).astype(dtype) for n in (60, 75, 90)]
    preds = [(0.7 * rng.normal(size=(n, 6)) + 0.2).astype(dtype) for n in (60, 75, 90)]
    want = dim_calcuate_sid(np.concatenate(gts), np.concatenate(preds), k)
    assert M.sid(gts, preds, k=k) == pytest.approx(want, rel=1e-12, abs=1e-15)
    assert M.sid(gts, gts, k=k) == pytest.approx(dim_calcuate_sid(np.concatenate(gts), np.concatenate(gts), k), rel=1e-12)
    model = M.kmeans(np.concatenate(gts), k)  # the harness fits once and reuses the model
    assert M.sid(gts, preds, k=k, model=model) == pytest.approx(want, rel=1e-12)
    assert model.n_clusters == k and model.random_state == 0


def test_sid_of_known_histograms():
    rng = np.random.default_rng(0)
    corners = np.array([[10.0, 10.0], [10.0, -10.0], [-10.0, 10.0], [-10.0, -10.0]])
    gt = [corners[rng.integers(4, size=400)] + rng.normal(0, 0.3, (400, 2))]
    even = [np.repeat(corners, 25, axis=0) + rng.normal(0, 0.3, (100, 2))]
    # -4 * 0.25 * log2(0.25 + 1e-6): DIM's eps takes 5.8e-6 bits off the plain 2 bits
    assert M.sid(gt, even, k=4) == pytest.approx(-math.log2(0.25 + 1e-6), rel=1e-12)
    assert M.sid(gt, even, k=4, eps=0.0) == 2.0
    assert M.sid(gt, [np.repeat(corners[:1], 30, 0)], k=4, eps=0.0) == 0.0
    assert M.sid(gt, [np.repeat(corners[:1], 30, 0)], k=4) == pytest.approx(-math.log2(1 + 1e-6))  # a hair below 0
    half = [np.repeat(corners[:2], 10, axis=0)]
    assert M.sid(gt, half, k=4, eps=0.0) == pytest.approx(1.0)
    model = M.kmeans(gt[0], 4, seed=0)
    assert np.allclose(np.sort(np.round(model.cluster_centers_), axis=0), np.sort(corners, axis=0))
    np.testing.assert_array_equal(model.cluster_centers_, M.kmeans(gt[0], 4, seed=0).cluster_centers_)  # seeded
    # nearest-center assignment of an array of centers agrees with the model's predict
    np.testing.assert_array_equal(M.kmeans_assign(even[0], model.cluster_centers_), M.kmeans_assign(even[0], model))
    # fewer frames than k: k is cut to the frames (DIM's code raises); 3 distinct frames, log2(3) bits
    three = [np.repeat(corners[:3], 5, axis=0)]
    assert M.kmeans(three[0], 40).n_clusters == 15
    assert M.sid(three, three, k=40, eps=0.0) == pytest.approx(math.log2(3))
    assert M.sid([np.zeros((5, 2))], [np.ones((5, 2))], k=40, eps=0.0) == 0.0  # constant GT: one cluster
    assert M.entropy_bits(np.array([0, 1, 1, 1]), 4) == pytest.approx(-(0.25 * math.log2(0.25) + 0.75 * math.log2(0.75)))
    with pytest.raises(ValueError, match="no clips"):
        M.sid([], even)
    with pytest.raises(ValueError, match=r"non-empty \(N, D\)"):
        M.kmeans(np.zeros((0, 2)), 4)


# ---------------------------------------------------------------- rPCC, STS


def test_pcc_and_rpcc_of_constructed_correlations():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(100, 3))
    gt, anti = 2 * s + 1, -s
    assert M.pcc(gt, s) == pytest.approx(1.0)
    assert M.rpcc(gt, anti, s) == pytest.approx(2.0)
    assert M.rpcc(gt, gt.copy(), s) == pytest.approx(0.0)
    assert M.pcc(np.ones((100, 3)), s) == 0.0  # a constant correlates 0, by definition
    noisy = s + rng.normal(size=s.shape)
    from scipy.stats import pearsonr

    assert M.pcc(noisy, s) == pytest.approx(pearsonr(noisy.reshape(-1), s.reshape(-1)).statistic, rel=1e-12)
    cols = M._pcc_columns(noisy, s)  # FRSyn's per-dimension PCC
    np.testing.assert_allclose(cols, [np.corrcoef(noisy[:, d], s[:, d])[0, 1] for d in range(3)], rtol=1e-12)
    assert M._pcc_columns(np.c_[noisy[:, :2], np.ones(100)], s)[2] == 0.0  # a constant column: 0, not NaN
    assert M.rpcc(gt, np.ones((100, 3)), s) == pytest.approx(1.0)
    # orthogonal construction: exactly uncorrelated with the speaker
    t = np.arange(200, dtype=float)
    spk, pred = np.sin(2 * np.pi * t / 200)[:, None], np.cos(2 * np.pi * t / 200)[:, None]
    assert M.pcc(pred, spk) == pytest.approx(0.0, abs=1e-12)
    # pooled (DIM) vs per clip (DualTalk) differ when the clips differ
    g2, p2, s2 = s[:50], s[:50], s[:50]
    assert M.rpcc_per_clip([gt, g2], [anti, p2], [s, s2]) == pytest.approx(1.0)
    assert M.rpcc_pooled([gt], [anti], [s]) == pytest.approx(2.0)
    assert M.rpcc_pooled([gt, g2], [anti, p2], [s, s2]) != pytest.approx(1.0)


def test_sts_hand_case():
    gt = np.zeros((3, 1))
    pred = np.array([[0.0], [1.0], [1.0]])  # differences (1, 0) vs (0, 0)
    assert M.sts(gt, pred) == pytest.approx(math.sqrt(1 / 0.1))
    assert M.sts_pooled([gt, gt], [pred, pred]) == pytest.approx(math.sqrt(20))
    assert M.sts_per_clip([gt, gt], [pred, gt]) == pytest.approx(math.sqrt(10) / 2)
    assert M.sts(gt[:1], pred[:1]) == 0.0


# ---------------------------------------------------------------- ViCo L1


def test_vico_l1_blocks():
    gt = np.zeros((4, 58))
    pred = gt.copy()
    pred[:, SPEC.block("rotation").slice] = 0.3
    assert M.vico_l1_angle(gt, pred, SPEC) == pytest.approx(0.3)
    assert M.vico_l1_exp(gt, pred, SPEC) == 0.0 and M.vico_l1_trans(gt, pred, SPEC) == 0.0
    assert M.vico_l1_trans(np.zeros((4, 56)), np.zeros((4, 56)), "flame56") is None  # no translation block


# ---------------------------------------------------------------- reaction delay, FRSyn


def smile_motion(T, onsets, amp=0.5):
    m = np.zeros((T, 58))
    for on in onsets:
        env = ease_envelope(T, on, 7.5, 20, 15) * amp
        m[:, CH("mouthSmileLeft")] = np.maximum(m[:, CH("mouthSmileLeft")], env)
        m[:, CH("mouthSmileRight")] = m[:, CH("mouthSmileLeft")]
    return m


@pytest.mark.parametrize("shift", [8, 5, 12])
def test_reaction_delay_recovers_a_known_shift(shift):
    triggers = [20, 75, 130, 190, 240]
    motion = smile_motion(300, [t + shift for t in triggers])
    assert M.reaction_delay(motion, triggers) == shift
    lags, cc = M.delay_cross_correlation([motion], [triggers], max_lag=30)
    assert lags[np.argmax(cc)] == shift and len(lags) == 61


def test_reaction_delay_sees_through_frame_level_jitter():
    """Weak reactions under jitter on every channel (a quiet model plus its refinement's detail):
    the rectified increments of the raw motion are noise; the smoothed motion keeps the delay."""
    triggers = list(range(20, 1800, 60))
    found = {1.0: 0, 0.0: 0}
    for seed in range(10):
        motion = 0.05 * smile_motion(1830, [t + 8 for t in triggers])
        motion[:, :52] += np.random.default_rng(seed).normal(0, 0.003, (1830, 52))
        scale = M.velocity_scale([motion])
        for smooth in found:
            found[smooth] += abs(M.reaction_delay(motion, triggers, scale=scale, smooth=smooth) - 8) <= 1
    assert found[1.0] == 10 and found[0.0] <= 3  # smooth=0: the earlier definition


def test_reaction_delay_degenerate_and_on_the_synthetic_ground_truth(synth_clips):
    assert M.reaction_delay(np.zeros((100, 58)), [10, 50]) == 0.0  # a motionless listener
    assert M.reaction_delay(np.zeros((1, 58)), [0]) == 0.0
    assert M.reaction_delay(smile_motion(100, [30]), []) == 0.0  # no triggers
    gts = [c.listener for c in synth_clips]
    trig = [M.trigger_frames(c.events) for c in synth_clips]
    assert abs(M.reaction_delay(gts, trig) - synth_clips[0].events["tau"]) <= 1


def test_speech_offsets_find_the_ends_of_speech():
    sr, rng = 16000, np.random.default_rng(0)
    y = np.concatenate([rng.normal(0, 0.3, sr), np.zeros(sr // 2), rng.normal(0, 0.3, sr), np.zeros(sr // 2)])
    off = M.speech_offsets(y)
    assert len(off) == 2 and abs(off[0] - 29) <= 2 and abs(off[1] - 74) <= 2
    assert M.speech_offsets(np.zeros(sr)) == []


def test_frsyn_finds_the_lag_of_a_delayed_copy():
    rng = np.random.default_rng(0)
    spk = uniform_filter1d(rng.normal(size=(300, 3)), 5, axis=0)
    pred = np.roll(spk, 10, axis=0)  # the listener follows 10 frames later
    assert M.tlcc_peak_lag(pred, spk) == 10
    assert M.frsyn(pred, spk) == 10.0
    assert M.frsyn(np.roll(spk, -7, axis=0), spk) == 7.0
    assert M.frsyn(np.ones((300, 3)), spk) == 0.0  # constant: all correlations 0, ties go to lag 0
    assert M.frsyn(pred, spk, window=120) == pytest.approx(10.0, abs=1)
    assert M.frsyn(pred[:1], spk[:1]) == 0.0


# ---------------------------------------------------------------- events and identity


def test_event_f1_one_hit_one_miss_one_false_alarm():
    T = 300
    m = smile_motion(T, [33])  # smile 3 frames after the true onset: a hit
    outer = ease_envelope(T, 200, 6, 20, 12) * 0.4  # a brow raise nobody logged: a false alarm
    m[:, CH("browOuterUpLeft")] = m[:, CH("browOuterUpRight")] = outer
    log = [{"kind": "smile", "frame": 30, "visible_onset": True},
           {"kind": "blink", "frame": 100, "visible_onset": True}]  # no blink in the motion: a miss  # fmt: skip
    found = M.detect_events(m, SPEC)
    assert [(e["kind"], e["frame"]) for e in found] == [("smile", 33), ("brow_raise", 200)]
    r = M.event_f1(m, log, SPEC)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 1, 1)
    assert r["precision"] == r["recall"] == r["f1"] == pytest.approx(0.5)
    assert r["per_kind"]["smile"]["f1"] == 1.0 and r["per_kind"]["blink"]["recall"] == 0.0
    assert r["per_kind"]["brow_raise"]["precision"] == 0.0 and r["per_kind"]["nod"]["f1"] == 1.0  # nothing, nothing
    # a hit outside the tolerance is a miss plus a false alarm
    late = M.event_f1(smile_motion(T, [50]), log[:1], SPEC)
    assert (late["tp"], late["fp"], late["fn"]) == (0, 1, 1)
    # a smile that only prolongs one already shown is neither required nor a false alarm
    hidden = M.event_f1(m, [{"kind": "smile", "frame": 31, "visible_onset": False}], SPEC, kinds=["smile"])
    assert (hidden["tp"], hidden["fp"], hidden["fn"]) == (0, 0, 0) and hidden["f1"] == 1.0


def test_prf_conventions_never_nan():
    assert M.prf(0, 0, 0)["f1"] == 1.0
    assert M.prf(0, 0, 3) == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "tp": 0, "fp": 0, "fn": 3}
    assert M.prf(0, 2, 0)["f1"] == 0.0 and M.prf(0, 2, 0)["recall"] == 0.0
    assert M.prf(3, 1, 0)["precision"] == 0.75
    assert M.event_f1(np.zeros((1, 58)), [], SPEC)["f1"] == 1.0  # empty motion, empty log


def test_false_alarms_are_the_detections_match_events_counts_as_such():
    det, truth = [10, 31, 60, 95, 140], [30, 62, 100]
    # 31 <-> 30 and 60 <-> 62 match; 95 is 5 frames from 100 (tolerance 4): a false alarm, and 100 a miss;
    # 10 is near nothing; 140 lies within the tolerance of an ignored (invisible) event
    assert M.match_events(det, truth, 4, ignore=[138]) == (2, 2, 1)
    assert M.false_alarms(det, truth, 4, ignore=[138]) == [10, 95]
    assert M.false_alarms(det, truth, 4) == [10, 95, 140]
    # one true event, two detections near it: the nearer one matches, the other is a false alarm
    assert M.false_alarms([28, 31], [30], 4) == [28]
    assert M.false_alarms([], [30], 4) == [] and M.false_alarms([5], [], 4) == [5]


def test_detectors_on_synthetic_ground_truth_and_blinks(synth_clips):
    gts = [c.listener for c in synth_clips]
    logs = [c.events["reactions"] for c in synth_clips]
    assert M.event_f1(gts, logs, SPEC)["f1"] > 0.85  # the detectors see what the process did
    floor = M.event_f1([c.samples()[1] for c in synth_clips], logs, SPEC)["f1"]
    assert 0.3 < floor < 0.9  # an independent realisation shares the triggered reactions only
    m = np.zeros((90, 58))
    m[:, CH("eyeBlinkLeft")] = m[:, CH("eyeBlinkRight")] = pulse(90, 1.0, 0.18)
    assert [e["frame"] for e in M.detect_events(m, SPEC, kinds=["blink"])] == [30]


def test_identity_fidelity_distances():
    rng = np.random.default_rng(0)
    target = [np.clip(rng.normal(0.2, 0.05, (200, 58)), 0, 1) for _ in range(2)]
    same = M.identity_fidelity(target, target, SPEC)
    assert same["rest_exp_l1"] == same["rest_pose_l1"] == same["expressivity_err"] == 0.0
    assert same["blink_rate_err"] == 0.0
    shifted = [t + np.r_[np.full(52, 0.1), np.zeros(6)] for t in target]
    assert M.identity_fidelity(shifted, target, SPEC)["rest_exp_l1"] == pytest.approx(0.1)
    louder = [2 * (t - t.mean(0)) + t.mean(0) for t in target]
    assert M.identity_fidelity(louder, target, SPEC)["expressivity_err"] == pytest.approx(math.log(2), rel=1e-4)
    frozen = [np.zeros((100, 58))]
    r = M.identity_fidelity(frozen, frozen, SPEC)
    assert r["expressivity_err"] == 0.0 and r["expressivity_ratio"] == 1.0
    blinks = np.zeros((1800, 58))  # 1 minute with 12 blinks
    for k in range(12):
        p = pulse(1800, 2 + 4.5 * k, 0.18)
        blinks[:, CH("eyeBlinkLeft")] = np.maximum(blinks[:, CH("eyeBlinkLeft")], p)
    blinks[:, CH("eyeBlinkRight")] = blinks[:, CH("eyeBlinkLeft")]
    assert M.style_stats([blinks], SPEC)["blink_rate"] == pytest.approx(12.0)
    assert M.identity_fidelity([blinks], frozen, SPEC)["blink_rate_err"] == pytest.approx(12.0)


# ---------------------------------------------------------------- the one call of the harness


def test_evaluate_clip_set_all_metrics(synth_clips):
    gts = [c.listener for c in synth_clips]
    kw = dict(speakers=[c.speaker for c in synth_clips], events=[c.events for c in synth_clips],
              listener_ids=[c.listener_id for c in synth_clips])  # fmt: skip
    ref = M.make_reference(gts, SPEC)
    same = M.evaluate_clip_set(gts, gts, SPEC, reference=ref, **kw)
    assert set(same) == set(M.METRICS) - set(M.REACT_SET_KEYS)  # those need all K samples: evaluate_react
    assert all(v is not None and np.isfinite(v) for v in same.values())
    for k in ("l1_exp", "mse_pose", "fd_exp", "fd_pooled_pose", "fd_delta_exp", "p_fd_exp", "rpcc_exp", "sts_exp",
              "vico_l1_angle", "id_rest_exp", "id_expressivity"):  # fmt: skip
        assert same[k] == pytest.approx(0.0, abs=1e-8), k
    assert same["delay_err"] <= 1 and same["event_f1"] > 0.85
    mean = np.mean(np.concatenate(gts), axis=0)
    static = [np.repeat(mean[None], len(g), 0) for g in gts]
    frozen = M.evaluate_clip_set(gts, static, SPEC, reference=ref, **kw)
    assert all(v is None or np.isfinite(v) for v in frozen.values())
    assert frozen["var_exp"] == 0.0 and frozen["diversity_exp"] == 0.0
    assert frozen["sid_exp"] == pytest.approx(-math.log2(1 + 1e-6))  # one cluster: DIM's eps, a hair below 0
    assert frozen["frsyn_exp"] == 0.0 and frozen["delay"] == 0.0 and frozen["event_recall"] == 0.0
    resample = M.evaluate_clip_set(gts, [c.samples()[1] for c in synth_clips], SPEC, reference=ref, **kw)
    assert resample["fd_delta_exp"] < M.evaluate_clip_set(
        gts, [uniform_filter1d(g, 9, axis=0) for g in gts], SPEC, reference=ref)["fd_delta_exp"]  # fmt: skip


def test_evaluate_clip_set_degenerate_inputs_are_defined():
    one = [np.full((1, 58), 0.2)]
    r = M.evaluate_clip_set(one, [np.full((1, 58), 0.3)], SPEC, speakers=[np.zeros((1, 58))],
                            events=[{"tau": 8, "triggers": [], "reactions": []}], listener_ids=["a"])  # fmt: skip
    assert all(v is None or np.isfinite(v) for v in r.values())
    assert r["l1_exp"] == pytest.approx(0.1) and r["fd_delta_exp"] == 0.0 and r["sts_exp"] == 0.0
    assert r["delay"] is None and r["event_f1"] == 1.0  # no triggers to correlate; nothing to find
    const = [np.full((40, 58), 0.5)]
    r = M.evaluate_clip_set(const, const, SPEC, speakers=[np.full((40, 58), 0.1)])
    assert all(v is None or np.isfinite(v) for v in r.values())
    assert r["rpcc_exp"] == 0.0 and r["p_fd_exp"] == 0.0 and r["event_f1"] is None  # no event log
    flame = M.evaluate_clip_set([np.zeros((10, 56))], [np.ones((10, 56))], "flame56")
    assert flame["vico_l1_trans"] is None and flame["vico_l1_exp"] == 1.0 and flame["p_fd_exp"] is None


# ---------------------------------------------------------------- behaviour: FD terms, variance ratio, blinks, drift


def test_fd_terms_split_the_frechet_distance():
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, (400, 3))
    mean_term, cov_term = M.frechet_terms(x, x + np.array([0.3, 0.0, -0.4]))
    assert mean_term == pytest.approx(0.25) and cov_term == pytest.approx(0.0, abs=1e-9)  # a pure offset
    mean_term, cov_term = M.frechet_terms(x, 2 * (x - x.mean(0)) + x.mean(0))
    assert mean_term == pytest.approx(0.0, abs=1e-12)
    assert cov_term == pytest.approx(np.trace(np.cov(x, rowvar=False, bias=True)))  # tr(S + 4S - 2*2S) = tr(S)
    y = rng.normal(0.5, 2, (300, 3))
    assert sum(M.frechet_terms(x, y)) == pytest.approx(M.frechet_distance(x, y))
    gts, preds = [x[:200], x[200:]], [y[:150], y[150:]]
    m, c = M.fd_terms_per_clip(gts, preds)
    assert m + c == pytest.approx(M.fd_per_clip(gts, preds))


def test_variance_ratio_reads_too_quiet_and_too_busy():
    rng = np.random.default_rng(4)
    gts = [rng.normal(0.3, 0.1, (100, 5)) for _ in range(3)]
    quiet = [0.5 * (g - g.mean(0)) + g.mean(0) for g in gts]
    assert M.var_ratio(gts, quiet) == pytest.approx(0.25)
    assert M.var_ratio(gts, [2 * g for g in gts]) == pytest.approx(4.0)
    assert M.var_ratio(gts, gts) == pytest.approx(1.0)
    frozen = [np.zeros((10, 5))]
    assert M.var_ratio(frozen, frozen) == 0.0 and M.var_ratio(frozen, [np.eye(10, 5)]) == math.inf


def blinking(T: int, starts_s, dur_s: float = 0.17, amp: float = 0.95) -> np.ndarray:
    m = np.zeros((T, 58))
    for s in starts_s:
        p = amp * pulse(T, s, dur_s)
        for ch in ("eyeBlinkLeft", "eyeBlinkRight"):
            m[:, CH(ch)] = np.maximum(m[:, CH(ch)], p)
    return m


def test_the_one_blink_definition():
    m = blinking(300, [1.0, 4.0, 7.0])
    found = M.detect_blinks(m, SPEC)
    assert [b["frame"] for b in found] == [e["frame"] for e in M.detect_events(m, SPEC, kinds=["blink"])] == [30, 120, 210]
    for b in found:
        assert 0.85 <= b["peak"] <= 0.95 and 0.13 <= b["duration_s"] <= 0.2  # a 170 ms sin^2 pulse
    assert M.blink_rate([m], SPEC) == pytest.approx(3 / (10 / 60))
    pair = blinking(300, [1.0, 1.33])  # two blinks 330 ms apart: two of 170 ms, not one of 500 ms
    found = M.detect_blinks(pair, SPEC)
    assert [b["frame"] for b in found] == [30, 40] and all(b["duration_s"] <= 0.2 for b in found)
    shut = np.zeros((300, 58))  # eyes that close and stay shut are not blinking
    shut[90:, CH("eyeBlinkLeft")] = shut[90:, CH("eyeBlinkRight")] = np.minimum(1.0, np.arange(210) / 3)
    assert M.detect_blinks(shut, SPEC) == []
    slow = blinking(300, [1.0], dur_s=1.5)  # a slow 1.5 s closure rises too slowly to be a blink
    assert M.detect_blinks(slow, SPEC) == []
    faint = blinking(300, [1.0], amp=0.3)  # below the 0.35 rise
    assert M.detect_blinks(faint, SPEC) == [] and M.blink_rate([faint], SPEC) == 0.0
    assert M.blink_rate([np.zeros((30, 56))], "flame56") is None  # no eyelids in FLAME's 50 expressions


def test_rest_drift_per_segment_and_per_window():
    rest = np.full(4, 0.2)
    x = np.tile(rest, (600, 1))  # 20 s at rest, then the face leaves it after 8 s
    x[240:] += 0.05
    d = M.rest_drift(x, rest, fps=30)
    assert d.shape == (3,) and d[0] == pytest.approx(0.0) and d[1] == pytest.approx(0.0) and d[2] == pytest.approx(0.05)
    spikes = x.copy()
    spikes[10:14] += 1.0  # a short reaction does not move the resting face
    assert M.rest_drift(spikes, rest)[0] == pytest.approx(0.0)
    per_window = M.rest_drift(x, rest, fps=30, window_s=5.0)
    np.testing.assert_allclose(per_window, [0, 0, 0.05, 0.05], atol=1e-12)
    short = M.rest_drift(x[:60], rest)  # a 2 s clip has no 3-8 s or 8 s-end segment
    assert short[0] == pytest.approx(0.0) and np.isnan(short[1:]).all()


def test_evaluate_clip_set_reports_behaviour(synth_clips):
    gts = [c.listener for c in synth_clips]
    kw = dict(events=[c.events for c in synth_clips])
    same = M.evaluate_clip_set(gts, gts, SPEC, **kw)
    assert same["var_ratio_exp"] == pytest.approx(1.0) and same["fd_mean_exp"] == 0.0
    assert same["fd_cov_exp"] == pytest.approx(0.0, abs=1e-9)
    assert same["blink_rate"] == pytest.approx(M.blink_rate(gts, SPEC)) and same["blink_rate"] > 5
    assert same["drift_0_3"] < 0.01 and same["drift_8_end"] < 0.01
    late = [g + np.r_[np.zeros(30 * 8), np.full(len(g) - 30 * 8, 0.1)][:, None] * (np.arange(58) < 52) for g in gts]
    moved = M.evaluate_clip_set(gts, late, SPEC, **kw)
    assert moved["drift_0_3"] < 0.01 and moved["drift_8_end"] == pytest.approx(same["drift_8_end"] + 0.1, abs=0.01)
    assert moved["fd_mean_exp"] > 0 and moved["fd_mean_exp"] + moved["fd_cov_exp"] == pytest.approx(moved["fd_exp"])


def test_seam_ratio_sees_window_edges():
    rng = np.random.default_rng(0)
    smooth = np.cumsum(rng.normal(0, 0.01, (160, 3)), axis=0)
    assert 0.6 < M.seam_ratio(smooth) < 1.5
    steps = smooth.copy()
    for k in range(16, 160, 16):
        steps[k:] += 0.05  # a jump at every window edge
    assert M.seam_ratio(steps) > 3
    assert M.seam_ratio(np.zeros((40, 2))) == 1.0
    with pytest.raises(ValueError, match="more than 32"):
        M.seam_ratio(smooth[:30])


def test_classifier_two_sample_test_tells_a_static_listener_from_a_live_one_but_not_two_live_ones():
    from realm.metrics import c2st_accuracy, loudness

    rng = np.random.default_rng(0)

    def listener(T, on):  # a listener that moves after each loud stretch of the speaker, and blinks
        x = np.cumsum(rng.normal(0, 0.01, (T, 6)), 0)
        for t in np.flatnonzero(np.diff(on.astype(int)) < 0):  # speech offsets
            x[t + 8 : t + 30, 0] += np.hanning(22)[: len(x[t + 8 : t + 30])] * rng.uniform(0.5, 1)
        return x

    speech, gts, others = [], [], []
    for _ in range(8):
        on = np.repeat(rng.random(40) < 0.5, 15)  # 20 s of 0.5 s speech / pause segments
        speech.append(np.stack([np.where(on, -20.0, -60.0), np.zeros(len(on))], 1))
        gts.append(listener(len(on), on))
        others.append(listener(len(on), on))  # another realisation of the same listener
    static = [np.tile(g.mean(0), (len(g), 1)) for g in gts]
    late = [np.roll(o, 15, axis=0) for o in others]  # the same listener, reacting half a second late
    assert c2st_accuracy(gts, static, speech) > 0.95
    same = c2st_accuracy(gts, others, speech)
    assert 0.35 < same < 0.6, same
    assert c2st_accuracy(gts, late, speech) > same + 0.1  # timing shows only against the audio
    assert c2st_accuracy(gts, gts, speech) == pytest.approx(0.5, abs=0.05)  # identical sets: chance
    assert c2st_accuracy(gts[:1], static[:1]) is None  # one clip: no held-out fold
    lo = loudness(np.concatenate([np.zeros(1600), 0.1 * np.ones(1600)]).astype(np.float32))
    assert lo.shape == (6, 2) and lo[0, 0] == -80 and lo[-1, 0] == pytest.approx(-20, abs=0.1) and lo[3, 1] > 50


def test_the_two_sample_breakdown_names_the_feature_and_the_channel_that_give_a_model_away():
    from realm.metrics import C2ST_GROUPS, c2st_accuracy, c2st_breakdown

    rng = np.random.default_rng(1)
    T, D = 600, 4
    gts = [np.cumsum(rng.normal(0, 0.01, (T, D)), 0) for _ in range(12)]  # a wandering listener, 4 channels
    others = [np.cumsum(rng.normal(0, 0.01, (T, D)), 0) for _ in range(12)]  # another realisation
    too_smooth = []
    for o in others:  # channel 2 without its frame-to-frame jitter: the same path, smoothed over 9 frames
        s = o.copy()
        s[:, 2] = np.convolve(np.pad(o[:, 2], 4, mode="edge"), np.ones(9) / 9, mode="valid")
        too_smooth.append(s)
    names = ["a", "b", "smooth", "d"]
    out = c2st_breakdown(gts, too_smooth, names=names)
    assert out["all"] == c2st_accuracy(gts, too_smooth)  # the same test on every feature
    assert list(out["groups"]) == list(C2ST_GROUPS[:4])  # no loudness groups without the speaker's signal
    assert out["groups"]["speed"] > 0.95 and out["groups"]["level"] < 0.7  # the speed tells, the level does not
    acc = {n: c["accuracy"] for n, c in out["channels"].items()}
    assert acc["smooth"] > 0.95 and max(acc[n] for n in ("a", "b", "d")) < 0.7, acc
    assert out["channels"]["smooth"]["speed_ratio"] < 0.5 and 0.8 < out["channels"]["a"]["speed_ratio"] < 1.25
    same = c2st_breakdown(gts, others, names=names)
    assert max(same["groups"].values()) < 0.7 and same["channels"]["a"]["level_diff"] == pytest.approx(
        np.concatenate(others)[:, 0].mean() - np.concatenate(gts)[:, 0].mean())
    cond = [np.stack([rng.normal(size=T), np.zeros(T)], 1) for _ in range(12)]
    assert list(c2st_breakdown(gts, others, cond)["groups"]) == list(C2ST_GROUPS)  # with the loudness lags
    with pytest.raises(ValueError, match="3 names for 4 channels"):
        c2st_breakdown(gts, others, names=names[:3])
    assert c2st_breakdown(gts[:1], others[:1]) is None


def test_out_of_range_counts_motion_past_the_datas_widened_range():
    from realm.metrics import out_of_range

    lo, hi = np.array([0.0, -1.0]), np.array([1.0, 1.0])  # margins 0.25 and 0.5
    x = np.zeros((10, 2))
    assert out_of_range(x, lo, hi) == {"frames": 0.0, "values": 0.0, "worst": None, "excess": 0.0}
    x[:2, 0] = 1.2  # inside the margin
    x[8:, 1] = -1.7  # 0.2 past it
    r = out_of_range(x, lo, hi)
    assert r["frames"] == pytest.approx(0.2) and r["values"] == pytest.approx(0.1)
    assert r["worst"] == 1 and r["excess"] == pytest.approx(0.2)
    # the floor widens a channel the data barely moves
    assert out_of_range(np.full((4, 1), 0.015), np.zeros(1), np.zeros(1))["frames"] == 0.0
