"""The REACT family (FRCorr, FRDist, FRDiv, FRDvs, FRVar, FRSyn): each against a case computed by hand."""

import math

import numpy as np
import pytest
from scipy.ndimage import uniform_filter1d

from realm import metrics as M
from realm.data.synth import SynthConfig, make_clip
from realm.motion import get_spec

SPEC = get_spec("arkit58")


def seq(*values) -> np.ndarray:
    """A one-dimensional reaction (T, 1)."""
    return np.array(values, dtype=float)[:, None]


# ---------------------------------------------------------------- CCC and FRCorr


def test_ccc_hand_case():
    # a = (0, 2), b = (1, 3): means 1 and 2, variances 1 and 1, covariance 1: 2 / (1 + 1 + 1)
    assert M.ccc(seq(0, 2), seq(1, 3), eps=0.0) == pytest.approx(2 / 3, rel=1e-15)
    assert M.ccc(seq(0, 2), seq(1, 3)) == pytest.approx(2 / (3 + 1e-8), rel=1e-15)  # REACT's eps
    # a constant dimension scores 0 (REACT's corrcoef turns its NaN into 0); the mean over dimensions halves it
    assert M.ccc(np.c_[seq(0, 2), seq(5, 5)], np.c_[seq(1, 3), seq(4, 6)], eps=0.0) == pytest.approx(1 / 3)
    assert M.ccc(seq(5, 5), seq(5, 5), eps=0.0) == 0.0  # two equal constants: 0 / 0 defined as 0
    assert M.ccc(seq(0, 2), seq(0, -2), eps=0.0) == pytest.approx(-1 / 3)  # cov -1 / (1 + 1 + 1)
    assert M.ccc(seq(0, 2, 9), seq(1, 3), eps=0.0) == pytest.approx(2 / 3)  # cut to the shorter


def test_frcorr_sums_the_best_ccc_over_samples_then_averages_inputs():
    r1, r2 = seq(0, 2), seq(0, -2)  # means 1 and -1, variances 1
    # input 0: sample (1, 3) vs r1: 2 / (1 + 1 + 1) = 2/3, vs r2: -2 / (1 + 1 + 9) = -2/11 -> 2/3;
    #          sample (0, 0) is constant -> 0 against both.                   sum 2/3, mean 1/3
    # input 1: both samples equal r2 (its only appropriate reaction): CCC 1 each. sum 2,   mean 1
    preds = [np.stack([seq(1, 3), seq(0, 0)]), np.stack([r2, r2])]
    appropriate = [[r1, r2], [r2]]
    assert M.frcorr(preds, appropriate, eps=0.0) == pytest.approx((2 / 3 + 2) / 2)
    assert M.frcorr(preds, appropriate, reduce="mean", eps=0.0) == pytest.approx((1 / 3 + 1) / 2)
    assert M.frcorr(preds, appropriate) == pytest.approx((2 / 3 + 2) / 2, rel=1e-7)  # eps 1e-8
    assert M.frcorr([seq(1, 3)], [np.stack([r1, r2])], eps=0.0) == pytest.approx(2 / 3)  # (T, D) = one sample
    with pytest.raises(ValueError, match="input 1 has no appropriate real reaction"):
        M.frcorr(preds, [[r1], []])
    with pytest.raises(ValueError, match="one set per input"):
        M.frcorr(preds, [[r1]])
    with pytest.raises(ValueError, match="reduce must be"):
        M.frcorr(preds, appropriate, reduce="median")
    with pytest.raises(ValueError, match="no inputs"):
        M.frcorr([], [])


# ---------------------------------------------------------------- DTW and FRDist


def test_react_dtw_hand_case_and_weights():
    # squared costs of (0, 1, 2) against (0, 2): [[0, 4], [1, 1], [4, 0]]; the best path sums 1: DTW = 1
    assert M.react_dtw(seq(0, 1, 2), seq(0, 2)) == pytest.approx(1.0)
    # a second dimension (0, 0, 0) against (3, 3): every cell costs 9, a path has at least 3 cells: sqrt(27)
    pred, real = np.c_[seq(0, 1, 2), seq(0, 0, 0)], np.c_[seq(0, 2), seq(3, 3)]
    assert M.react_dtw(pred, real, groups=[(0, 1, 0.5), (1, 2, 2.0)]) == pytest.approx(0.5 + 2 * math.sqrt(27))
    # unweighted (ReactFace): one DTW on both dimensions, costs [[9, 13], [10, 10], [13, 9]] -> 9 + 10 + 9
    assert M.react_dtw(pred, real) == pytest.approx(math.sqrt(28))
    # REACT's 25-d groups: 15 AUs / 15, valence-arousal, 8 expressions / 8; a unit offset everywhere
    a = np.zeros((4, 25))
    assert M.react_dtw(a, a + 1, M.REACT_DTW_GROUPS) == pytest.approx(
        math.sqrt(4 * 15) / 15 + math.sqrt(4 * 2) + math.sqrt(4 * 8) / 8)  # fmt: skip
    with pytest.raises(ValueError, match="do not fit 2 columns"):
        M.react_dtw(pred, real, groups=[(0, 3, 1.0)])
    with pytest.raises(ValueError, match=r"\(T, D\) and \(T', D\)"):
        M.react_dtw(pred, seq(0, 1))


def test_frdist_sums_the_nearest_dtw_over_samples():
    a1, a2 = seq(0, 2), seq(4, 4, 4, 4)
    # (0, 1, 2): DTW 1 to a1; costs 16, 9, 4 per row to a2 with >= 4 cells: 16 + 9 + 4 + 4 -> sqrt(33). min 1
    # (5, 5, 5): costs 25, 9 per column to a1: 25 + 9 + 9 -> sqrt(43); every cell 1 to a2, 4 cells -> 2. min 2
    preds = [np.stack([seq(0, 1, 2), seq(5, 5, 5)])]
    assert M.react_dtw(seq(0, 1, 2), a2) == pytest.approx(math.sqrt(33))
    assert M.react_dtw(seq(5, 5, 5), a1) == pytest.approx(math.sqrt(43))
    assert M.frdist(preds, [[a1, a2]]) == pytest.approx(1 + 2)  # REACT: the sum over the K samples
    assert M.frdist(preds, [[a1, a2]], reduce="mean") == pytest.approx(1.5)
    assert M.frdist([preds[0], preds[0][:1]], [[a1, a2], [a1]]) == pytest.approx((3 + 1) / 2)  # mean over inputs


# ---------------------------------------------------------------- FRDiv, FRDvs, FRVar


def test_frdiv_is_reacts_s_mse():
    # three samples of one frame, D = 2: (0, 0), (1, 0), (0, 2); squared distances 1, 4, 5 -> 20 over ordered
    # pairs, / (K (K - 1) T D) = 20 / 12; an input whose samples agree scores 0; the mean over inputs
    one = np.array([[[0.0, 0.0]], [[1.0, 0.0]], [[0.0, 2.0]]])
    assert M.frdiv([one]) == pytest.approx(5 / 3)
    assert M.frdiv([one, np.zeros((3, 1, 2))]) == pytest.approx(5 / 6)
    assert M.frdiv([one[:1]]) == 0.0  # K = 1: REACT returns 0.0


def test_frdvs_compares_inputs_per_sample_index():
    # N = 3 inputs, K = 2, T = D = 1: sample 0 is (0, 1, 3) across inputs: squared distances 1, 9, 4 -> 28 over
    # ordered pairs; sample 1 is 0 everywhere. 28 / (N (N - 1) K T D) = 28 / 12
    preds = [np.array([[[v]], [[0.0]]]) for v in (0.0, 1.0, 3.0)]
    assert M.frdvs(preds) == pytest.approx(7 / 3)
    assert M.frdvs(preds[:1]) == 0.0  # one input: no pair
    with pytest.raises(ValueError, match="same number of samples"):
        M.frdvs([preds[0], preds[1][:1]])
    # inputs of unequal length are cut to the shortest: the extra frame of the first input does not count
    longer = np.concatenate([preds[0], np.full((2, 1, 1), 9.0)], axis=1)
    assert M.frdvs([longer, *preds[1:]]) == pytest.approx(7 / 3)


def test_frvar_is_the_unbiased_temporal_variance():
    # input 0: K = 1, dims (0, 1, 2) and (0, 0, 3): unbiased variances 1 and 3 -> 2
    # input 1: K = 2, (0, 2) -> 2 and (1, 1) -> 0 -> 1.            mean over inputs 1.5
    x0 = np.array([[[0.0, 0.0], [1.0, 0.0], [2.0, 3.0]]])
    x1 = np.array([[[0.0], [2.0]], [[1.0], [1.0]]])
    assert M.frvar([x0]) == pytest.approx(2.0)
    assert M.frvar([x1]) == pytest.approx(1.0)
    assert M.frvar([x0[..., :1], x1]) == pytest.approx((1 + 1) / 2)
    assert M.frvar([np.ones((2, 1, 3))]) == 0.0  # one frame: defined as 0
    assert M.var_per_clip([x0[0]]) == pytest.approx((2 / 3 + 2) / 2)  # LM-Listener's 1/T variant differs


def test_frsyn_samples_is_the_mean_over_inputs_and_samples():
    rng = np.random.default_rng(0)
    spk = uniform_filter1d(rng.normal(size=(300, 3)), 5, axis=0)
    preds = [np.stack([np.roll(spk, 10, axis=0), np.roll(spk, 7, axis=0)])]
    assert M.frsyn_samples(preds, [spk]) == pytest.approx(8.5)
    assert M.frsyn_samples(preds, [spk], first_sample_only=True) == 10.0  # REACT's compute_TLCC_mp
    with pytest.raises(ValueError, match="2 speaker sequences"):
        M.frsyn_samples(preds, [spk, spk])


# ---------------------------------------------------------------- appropriate reactions and the harness's call


def test_neighbour_reactions_follow_the_matrix():
    reactions = [seq(0, 1), seq(2, 3), seq(4, 5)]
    found = M.neighbour_reactions(np.array([[1, 0, 1], [0, 1, 0]]), reactions)
    assert [[r[0, 0] for r in row] for row in found] == [[0.0, 4.0], [2.0]]
    assert len(M.neighbour_reactions(np.array([[1, 0, 1], [0, 1, 0]]), reactions, rows=[1])) == 1
    with pytest.raises(ValueError, match="row 1 has no appropriate reaction"):
        M.neighbour_reactions(np.array([[1, 0, 0], [0, 2, 0]]), reactions)  # only entries equal to 1 count
    with pytest.raises(ValueError, match=r"expected \(N, 3\)"):
        M.neighbour_reactions(np.ones((2, 2)), reactions)


def test_evaluate_react_on_synthetic_realisations():
    cfg = SynthConfig(backend="formant", clip_seconds=(4.0, 5.0), seed=3, listener_samples=3)
    clips = [make_clip(i, "test", cfg)[0] for i in range(2)]
    real = [c.samples() for c in clips]  # (3, T, 58): every realisation of the same speaker track
    assert all(r.shape[0] == 3 for r in real)
    same = M.evaluate_react(real, SPEC, appropriate=real)
    assert set(same) == set(M.REACT_SET_KEYS)
    # each sample finds itself: CCC 1 per dimension, summed over K = 3; channels that hardly move lose a
    # little to REACT's eps (2 var / (2 var + 1e-8)), without it the value is exact
    assert same["frcorr_exp"] == pytest.approx(3.0, abs=0.01) and same["frcorr_exp"] < 3.0
    assert same["frcorr_mean_exp"] == pytest.approx(same["frcorr_exp"] / 3)
    exp = [r[..., SPEC.indices("expression")] for r in real]
    assert M.frcorr(exp, exp, eps=0.0) == pytest.approx(3.0, rel=1e-12)
    assert same["frdist_exp"] == pytest.approx(0.0, abs=1e-5) and same["frdist_mean_pose"] == pytest.approx(0.0, abs=1e-5)
    assert same["frdiv_exp"] > 0 and same["frdvs_exp"] > same["frdiv_exp"]  # other speakers differ more
    assert same["frvar_exp"] == pytest.approx(M.frvar(exp))
    frozen = [np.repeat(r[:1] * 0 + r[0].mean(0), 3, axis=0) for r in real]  # a static listener, K copies
    static = M.evaluate_react(frozen, SPEC, appropriate=real)
    assert static["frdiv_exp"] == 0.0 and static["frvar_exp"] == pytest.approx(0.0, abs=1e-12)
    assert static["frcorr_exp"] == 0.0 and static["frdist_exp"] > same["frdist_exp"]
    alone = M.evaluate_react(real, SPEC)  # the ground truth's own row: no appropriateness
    assert alone["frcorr_exp"] is None and alone["frdiv_exp"] == same["frdiv_exp"]
    assert M.evaluate_react([r[:1] for r in real], SPEC)["frdiv_exp"] is None  # one realisation: no diversity
