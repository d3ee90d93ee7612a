"""The FLAME -> ARKit solver (realm.embodiment.flame_solve) and `realm embody solve-flame`.

Known answers: a random nonnegative basis and ground-truth weights in [0, 1] (some exactly at the
bounds) are recovered; with penalties the result equals scipy's per-frame bounded least squares on
the stacked system; each penalty does what it says (symmetry closes left/right gaps, smoothing
lowers frame-to-frame change, L2 shrinks).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.optimize import lsq_linear
from typer.testing import CliRunner

from realm.cli import app
from realm.embodiment.flame_solve import (
    SYMMETRIC_PAIRS,
    Basis,
    flame56_to_arkit58,
    head_angles,
    load_basis,
    solve_arkit,
)
from realm.motion import ARKIT_BLENDSHAPES

K = len(ARKIT_BLENDSHAPES)
runner = CliRunner()


def problem(seed: int = 0, F: int = 60, T: int = 200, noise: float = 0.0):
    rng = np.random.default_rng(seed)
    B = rng.uniform(0, 1, (F, K))
    A = rng.uniform(0, 1, (T, K))
    A[rng.uniform(size=A.shape) < 0.2] = 0.0  # weights on the bounds: the box constraints are active
    A[rng.uniform(size=A.shape) < 0.1] = 1.0
    Y = A @ B.T + rng.normal(0, noise, (T, F))
    return Basis(B, ARKIT_BLENDSHAPES, tuple(f"expression.{i}" for i in range(F))), A, Y


def lr_gap(W: np.ndarray) -> float:
    col = {c: k for k, c in enumerate(ARKIT_BLENDSHAPES)}
    return float(np.mean([np.abs(W[:, col[a]] - W[:, col[b]]).mean() for a, b in SYMMETRIC_PAIRS]))


def test_recovers_known_weights():
    basis, A, Y = problem()
    r = solve_arkit(Y, basis)
    assert r.report["converged"]
    assert np.abs(r.weights - A).max() < 1e-3
    assert r.report["expression_rmse"] < 1e-4 and r.report["jaw_rmse"] is None
    assert r.report["saturation_low"] == pytest.approx(np.mean(A == 0), abs=0.01)
    assert r.report["saturation_high"] == pytest.approx(np.mean(A == 1), abs=0.01)
    assert r.report["left_right_difference"] == pytest.approx(lr_gap(A), abs=1e-3)


def test_equals_per_frame_bounded_least_squares_with_penalties():
    basis, _, Y = problem(seed=1, T=40, noise=0.05)
    sym, l2 = 0.7, 0.2
    r = solve_arkit(Y, basis, symmetry=sym, l2=l2)
    col = {c: k for k, c in enumerate(ARKIT_BLENDSHAPES)}
    S = np.zeros((len(SYMMETRIC_PAIRS), K))
    for i, (a, b) in enumerate(SYMMETRIC_PAIRS):
        S[i, col[a]], S[i, col[b]] = 1.0, -1.0
    D = np.vstack([basis.matrix, np.sqrt(sym) * S, np.sqrt(l2) * np.eye(K)])
    pad = np.zeros(len(S) + K)
    ref = np.stack(
        [lsq_linear(D, np.concatenate([y, pad]), bounds=(0, 1), method="bvls", tol=1e-12).x for y in Y]
    )
    np.testing.assert_allclose(r.weights, ref, atol=2e-4)


def test_smoothing_equals_the_whole_sequence_bounded_least_squares():
    """With the temporal term the frames are coupled: compare with lsq_linear on the stacked T*K system."""
    basis, _, Y = problem(seed=7, F=30, T=12, noise=0.3)
    smooth, l2 = 2.0, 0.01
    r = solve_arkit(Y, basis, smooth=smooth, l2=l2)
    T = len(Y)
    D = np.diff(np.eye(T), axis=0)  # (T-1, T) frame differences
    M = np.vstack(
        [
            np.kron(np.eye(T), basis.matrix),
            np.sqrt(smooth) * np.kron(D, np.eye(K)),
            np.sqrt(l2) * np.eye(T * K),
        ]
    )
    rhs = np.concatenate([Y.reshape(-1), np.zeros((T - 1) * K + T * K)])
    ref = lsq_linear(M, rhs, bounds=(0, 1), method="bvls", tol=1e-12).x.reshape(T, K)
    np.testing.assert_allclose(r.weights, ref, atol=1e-4)


def test_symmetry_term_closes_left_right_gaps():
    basis, A, _ = problem(seed=2, T=100)
    Y = A @ basis.matrix.T  # A is asymmetric: the data asks for left != right
    gaps = [
        solve_arkit(Y, basis, symmetry=s).report["left_right_difference"] for s in (0.0, 1.0, 10.0, 1000.0)
    ]
    assert gaps[0] == pytest.approx(lr_gap(A), abs=1e-3)
    assert gaps[0] > gaps[1] > gaps[2] > gaps[3] and gaps[3] < 0.02


def test_smoothing_term_lowers_frame_to_frame_change():
    rng = np.random.default_rng(3)
    basis, _, _ = problem(seed=3)
    t = np.arange(300)[:, None]
    A = 0.5 + 0.4 * np.sin(2 * np.pi * t / 120 + rng.uniform(0, 6, K))  # slow, inside the box
    Y = A @ basis.matrix.T + rng.normal(0, 0.3, (300, basis.matrix.shape[0]))
    rough = solve_arkit(Y, basis)
    smooth = solve_arkit(Y, basis, smooth=20.0)
    jitter = lambda W: float(np.abs(np.diff(W, axis=0)).mean())  # noqa: E731
    assert smooth.report["converged"] and jitter(smooth.weights) < 0.3 * jitter(rough.weights)
    assert np.abs(smooth.weights - A).mean() < np.abs(rough.weights - A).mean()  # closer to the slow truth
    assert (
        smooth.report["expression_rmse"] > rough.report["expression_rmse"]
    )  # bought with a worse per-frame fit


def test_l2_shrinks_and_bounds_hold():
    basis, _, Y = problem(seed=4, T=50, noise=0.5)
    w0, w1 = solve_arkit(Y, basis).weights, solve_arkit(Y, basis, l2=50.0).weights
    assert w1.mean() < w0.mean()
    for w in (w0, w1):
        assert w.min() >= 0.0 and w.max() <= 1.0


def test_partial_columns_jaw_rows_and_head_pose(tmp_path):
    rng = np.random.default_rng(5)
    names = [n[0].upper() + n[1:] for n in ARKIT_BLENDSHAPES[:51]]  # a 51-column basis in Live Link spelling
    B = rng.uniform(0, 1, (53, 51))
    rows = [f"expression.{i}" for i in range(50)] + ["jaw.0", "jaw.1", "jaw.2"]
    np.savez(tmp_path / "basis.npz", basis=B, columns=np.array(names), rows=np.array(rows))
    basis = load_basis(tmp_path / "basis.npz")
    assert basis.columns == ARKIT_BLENDSHAPES[:51] and basis.jaw_rows.sum() == 3
    A = rng.uniform(0, 1, (30, 51))
    motion = np.zeros((30, 56))
    Y = A @ B.T
    motion[:, :50], motion[:, 53:56] = Y[:, :50], Y[:, 50:]
    motion[:, 50:53] = [0.0, 0.2, 0.0]  # 0.2 rad about FLAME's y axis (up): a yaw
    r = flame56_to_arkit58(motion, basis, jaw_weight=3.0)
    assert r.weights.shape == (30, 58) and r.report["unsolved_channels"] == ["tongueOut"]
    np.testing.assert_allclose(r.weights[:, :51], A, atol=2e-3)
    assert np.all(r.weights[:, 51] == 0) and r.report["jaw_rmse"] < 1e-3
    np.testing.assert_allclose(
        r.weights[:, 52:55], np.tile([0.0, 0.2, 0.0], (30, 1)), atol=1e-6
    )  # pitch, yaw, roll
    np.testing.assert_allclose(
        head_angles(np.array([[0.1, 0.0, 0.0], [0.0, 0.0, -0.3]])), [[0.1, 0, 0], [0, 0, -0.3]], atol=1e-9
    )


def test_cli_solve_flame(tmp_path):
    basis, A, Y = problem(seed=6, F=53, T=90)
    np.save(tmp_path / "basis.npy", basis.matrix)  # (53, 52): expression 0-49 and jaw by default
    assert load_basis(tmp_path / "basis.npy").rows[-1] == "jaw.2"
    motion = np.zeros((90, 56), np.float32)
    motion[:, :50], motion[:, 53:] = Y[:, :50], Y[:, 50:]
    np.savez(tmp_path / "flame.npz", listener=motion, spec=np.array("flame56"), fps=np.array(30.0))
    args = [
        "embody",
        "solve-flame",
        str(tmp_path / "flame.npz"),
        str(tmp_path / "arkit.npz"),
        "--basis",
        str(tmp_path / "basis.npy"),
    ]
    r = runner.invoke(app, args + ["--report", str(tmp_path / "report.json")])
    assert r.exit_code == 0, r.output
    assert (
        "solved 1 x 90 frames: expression RMSE" in r.output
        and "saturated" in r.output
        and "left/right" in r.output
    )
    with np.load(tmp_path / "arkit.npz") as z:
        assert str(z["spec"]) == "arkit58" and z["listener"].shape == (1, 90, 58)
        np.testing.assert_allclose(z["listener"][0, :, :52], A, atol=2e-3)
    assert json.loads((tmp_path / "report.json").read_text())["converged"] is True
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and "exists (use --force" in r.output
    np.save(tmp_path / "bad.npy", np.zeros((53, 40)))
    r = runner.invoke(app, args[:-1] + [str(tmp_path / "bad.npy"), "--force"])
    assert (
        r.exit_code == 2
        and "bad.npy" in r.output
        and "'columns'" in r.output
        and len(r.output.strip().splitlines()) == 1
    )
    np.savez(tmp_path / "arkit_in.npz", listener=np.zeros((10, 58), np.float32), spec=np.array("arkit58"))
    r = runner.invoke(
        app,
        [
            "embody",
            "solve-flame",
            str(tmp_path / "arkit_in.npz"),
            str(tmp_path / "o.npz"),
            "--basis",
            str(tmp_path / "basis.npy"),
        ],
    )
    assert r.exit_code == 2 and "expected flame56 motion" in r.output
