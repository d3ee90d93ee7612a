"""FLAME (or any linear 3DMM) expression codes -> ARKit blendshape weights, with a basis the user supplies.

A basis ``B`` (F, K) says what each of K ARKit blendshapes, fully on, adds to F FLAME coefficients
(expression components, optionally the jaw rotation): ``y ~ B a``. For frames ``y_t`` (T, F) the
solver finds weights ``a_t`` in [0, 1]^K minimising, over the whole sequence at once::

    sum_t ||w * (B a_t - y_t)||^2                    fit in FLAME space (w: per-row weights, e.g. jaw)
    + symmetry * sum_t sum_(l, r) (a_tl - a_tr)^2   left/right ARKit pairs move together
    + l2       * sum_t ||a_t||^2                     shrinkage (for bases with near-duplicate columns)
    + smooth   * sum_t ||a_t - a_(t-1)||^2           temporal smoothness
    subject to 0 <= a <= 1

This is one convex box-constrained quadratic programme over all T x K weights. It is solved by ADMM
(the ``x = z`` splitting of Boyd et al. 2011, section 5.2, over-relaxed, with residual balancing of
``rho``) in which the linear step is exact and costs two small matrix products and, when ``smooth > 0``,
a DCT along time: the quadratic term is ``I_T (x) H + smooth * L_T (x) I_K`` with ``H = B' W^2 B +
symmetry S'S + l2 I`` (K x K, diagonalised once) and ``L_T`` the path-graph Laplacian, which the
orthonormal DCT-II diagonalises (eigenvalues ``2 - 2 cos(pi j / T)``). Everything is vectorised over
frames: 5000 frames of a 60 x 52 basis take about 1-2 s on one core (a few hundred iterations),
against about 1.4 ms per frame for ``scipy.optimize.lsq_linear`` called frame by frame. Without the
smoothness term the frames are independent and the result equals that per-frame bounded least
squares to ~1e-5; with it, the bounded least squares of the stacked (T*K)-variable system (both tested).

No basis ships with realm-listener (see docs/data.md, "FLAME to ARKit"); the one DualTalk's ARKit
conversion used (OpenFacebot/DualTalk_Dataset_ARKit, ``mat_final.npy``, 51 x 103: rows in the order
``MATRIX_ARKIT51_ORDER`` of that repository's ``script/flame2arkit.py``, i.e. alphabetical
``BrowDownLeft, BrowDownRight, BrowInnerUp, ...``, not Live Link order; columns exp 100 | jaw 3) is
``basis = M[:, list(range(50)) + [100, 101, 102]].T`` with ``MATRIX_ARKIT51_ORDER`` as ``columns``.
Settings that approximate that conversion's solve, and where they differ from it: docs/data.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from realm.errors import RealmInputError
from realm.motion import ARKIT_BLENDSHAPES, SPECS

#: Left/right ARKit pairs the symmetry term ties together: the mirror-image shapes. Not eyeLook*
#: (gaze moves both eyes the same way, so In/Out swap sides), jawLeft/Right and mouthLeft/Right
#: (opposite motions).
SYMMETRIC_PAIRS: tuple[tuple[str, str], ...] = tuple(
    (n, n[: -len("Left")] + "Right")
    for n in ARKIT_BLENDSHAPES
    if n.endswith("Left") and not n.startswith(("eyeLook", "jaw", "mouthLeft"))
)
SATURATED = 1e-4  # a weight this close to 0 or 1 counts as saturated in the report


@dataclass
class SolveResult:
    """``weights`` (T, 52) in ARKit order (columns the basis lacks are 0) and the quality report."""

    weights: np.ndarray
    report: dict = field(default_factory=dict)


@dataclass
class Basis:
    """``matrix`` (F, K): column k = ARKit shape ``columns[k]`` at full activation, in FLAME space;
    ``rows`` names each FLAME row (``expression.i`` or ``jaw.i``, flame56's channel names)."""

    matrix: np.ndarray
    columns: tuple[str, ...]
    rows: tuple[str, ...]
    weights: np.ndarray | None = None  # (F,) row weights, default ones

    def __post_init__(self) -> None:
        m = np.asarray(self.matrix, np.float64)
        if m.ndim != 2 or m.shape != (len(self.rows), len(self.columns)):
            raise ValueError(
                f"basis is {m.shape}, but names {len(self.rows)} rows and {len(self.columns)} columns"
            )
        if not np.all(np.isfinite(m)):
            raise ValueError("basis has NaN/inf values")
        unknown = [c for c in self.columns if c not in ARKIT_BLENDSHAPES]
        if unknown:
            raise ValueError(f"basis column {unknown[0]!r} is not an ARKit blendshape name")
        if len(set(self.columns)) != len(self.columns):
            raise ValueError("basis columns repeat a blendshape")
        self.matrix = m

    @property
    def jaw_rows(self) -> np.ndarray:
        return np.array([r.startswith("jaw.") for r in self.rows])


def arkit_name(name: str) -> str:
    """``EyeBlinkLeft`` (Live Link) or ``eyeBlinkLeft`` -> ``eyeBlinkLeft``."""
    return name[:1].lower() + name[1:]


def default_rows(n: int) -> tuple[str, ...]:
    """Row names of an F-row basis without explicit ``rows``: F <= 50: ``expression.0..F-1``; 51 <= F
    <= 53: the first F - 3 expression components then ``jaw.0..2``."""
    if 1 <= n <= 50:
        return tuple(f"expression.{i}" for i in range(n))
    if 51 <= n <= 53:
        return tuple(f"expression.{i}" for i in range(n - 3)) + ("jaw.0", "jaw.1", "jaw.2")
    raise ValueError(f"a basis of {n} rows needs explicit row names (an .npz 'rows' array); see docs/data.md")


def load_basis(path: str | Path) -> Basis:
    """A basis from ``.npy`` (F, 52): columns in Apple's ARKit order, rows by :func:`default_rows`; or
    ``.npz`` with ``basis`` (F, K) and optional ``columns`` (K ARKit or Live Link names), ``rows`` (F
    flame56 channel names: ``expression.i``, ``jaw.i``) and ``weights`` (F,). Never unpickled."""
    path = Path(path)
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                if "basis" not in z.files:
                    raise RealmInputError(path, f"no 'basis' array (has {sorted(z.files)})")
                arrays = {k: z[k] for k in ("basis", "columns", "rows", "weights") if k in z.files}
        else:
            arrays = {"basis": np.load(path, allow_pickle=False)}
    except RealmInputError:
        raise
    except FileNotFoundError:
        raise RealmInputError(path, "basis file not found") from None
    except Exception as e:
        raise RealmInputError(path, f"unreadable basis ({type(e).__name__}: {e})") from None
    m = np.asarray(arrays["basis"])
    if m.ndim != 2 or m.dtype.kind not in "fiu":
        raise RealmInputError(
            path, f"basis must be a numeric (n_flame, n_arkit) matrix, got shape {m.shape} {m.dtype}"
        )
    try:
        if "columns" in arrays:
            columns = tuple(arkit_name(str(c)) for c in arrays["columns"])
        elif m.shape[1] == 52:
            columns = ARKIT_BLENDSHAPES
        else:
            raise ValueError(
                f"{m.shape[1]} columns: a basis that is not (n_flame, 52) in ARKit order needs a 'columns' array (.npz)"
            )
        rows = tuple(str(r) for r in arrays["rows"]) if "rows" in arrays else default_rows(m.shape[0])
        weights = np.asarray(arrays["weights"], np.float64) if "weights" in arrays else None
        if weights is not None and (
            weights.shape != (m.shape[0],) or np.any(weights < 0) or not np.all(np.isfinite(weights))
        ):
            raise ValueError(f"'weights' must be {m.shape[0]} finite values >= 0, got shape {weights.shape}")
        return Basis(m, columns, rows, weights)
    except ValueError as e:
        raise RealmInputError(path, str(e)) from None


def solve_arkit(
    flame: np.ndarray,
    basis: Basis,
    *,
    symmetry: float = 0.0,
    l2: float = 0.0,
    smooth: float = 0.0,
    jaw_weight: float = 1.0,
    pairs: tuple[tuple[str, str], ...] = SYMMETRIC_PAIRS,
    tol: float = 1e-7,
    max_iter: int = 20000,
) -> SolveResult:
    """ARKit weights (T, 52) for FLAME frames ``flame`` (T, F) in the basis's row order (module docstring).

    ``jaw_weight`` multiplies the row weights of the ``jaw.*`` rows (jaw rotations in radians are small
    next to expression components). ``tol``: the root-mean-square primal and dual residuals (weight
    units) at which ADMM stops.
    """
    y = np.asarray(flame, np.float64)
    B = basis.matrix
    F, K = B.shape
    if y.ndim != 2 or y.shape[1] != F:
        raise ValueError(f"FLAME frames must be (T, {F}) for this basis, got shape {y.shape}")
    if len(y) == 0 or not np.all(np.isfinite(y)):
        raise ValueError("FLAME frames must be finite and at least one")
    if min(symmetry, l2, smooth, jaw_weight) < 0:
        raise ValueError("symmetry, l2, smooth and jaw_weight must be >= 0")
    w = np.ones(F) if basis.weights is None else basis.weights.copy()
    w[basis.jaw_rows] *= jaw_weight
    col = {c: k for k, c in enumerate(basis.columns)}
    pair_idx = [(col[a], col[b]) for a, b in pairs if a in col and b in col]
    S = np.zeros((len(pair_idx), K))
    for r, (a, b) in enumerate(pair_idx):
        S[r, a], S[r, b] = 1.0, -1.0
    Bw = B * w[:, None]
    H = Bw.T @ Bw + symmetry * S.T @ S + l2 * np.eye(K)  # (K, K)
    C = (y * w) @ Bw  # (T, K): B' W^2 y_t per frame
    x, iters, converged = _admm(H, C, smooth, tol, max_iter)
    out = np.zeros((len(y), len(ARKIT_BLENDSHAPES)))
    out[:, [ARKIT_BLENDSHAPES.index(c) for c in basis.columns]] = x
    resid = x @ B.T - y  # (T, F), unweighted
    jaw = basis.jaw_rows
    report = {
        "frames": len(y),
        "expression_rmse": _rms(resid[:, ~jaw]),
        "jaw_rmse": _rms(resid[:, jaw]) if jaw.any() else None,
        "saturation_low": float(np.mean(x <= SATURATED)),
        "saturation_high": float(np.mean(x >= 1.0 - SATURATED)),
        "left_right_difference": float(np.mean([np.abs(x[:, a] - x[:, b]).mean() for a, b in pair_idx]))
        if pair_idx
        else None,
        "unsolved_channels": [c for c in ARKIT_BLENDSHAPES if c not in col],
        "iterations": iters,
        "converged": converged,
        "settings": {"symmetry": symmetry, "l2": l2, "smooth": smooth, "jaw_weight": jaw_weight},
    }
    return SolveResult(out.astype(np.float32), report)


def _rms(a: np.ndarray) -> float:
    return float(np.sqrt(np.mean(a**2))) if a.size else 0.0


def _admm(H: np.ndarray, C: np.ndarray, smooth: float, tol: float, max_iter: int, alpha: float = 1.6):
    """argmin over X in [0,1]^(T x K) of 1/2 sum_t x_t' H x_t - <C, X> + smooth/2 sum_t ||x_t - x_(t-1)||^2
    (half :func:`solve_arkit`'s objective, up to a constant). Returns (X, iterations, converged)."""
    from scipy.fft import dct, idct

    T, K = C.shape
    h, V = np.linalg.eigh(H)
    h = np.maximum(h, 0.0)
    mu = smooth * (2.0 - 2.0 * np.cos(np.pi * np.arange(T) / T)) if smooth > 0 and T > 1 else np.zeros(T)
    # rho: geometric mean of the curvature's extent, a standard choice for ADMM on a QP
    top = float(h.max() + mu.max())
    rho = float(np.sqrt(max(h.min() + mu.min(), 1e-6 * max(top, 1e-12)) * max(top, 1e-12)))
    Ct = (
        dct(C, type=2, norm="ortho", axis=0) @ V if smooth > 0 else C @ V
    )  # rhs in the eigenbasis (time x shape)

    def linear(z_minus_u: np.ndarray) -> np.ndarray:
        r = z_minus_u @ V
        if smooth > 0:
            r = dct(r, type=2, norm="ortho", axis=0)
        r = (Ct + rho * r) / (h[None, :] + mu[:, None] + rho)
        if smooth > 0:
            r = idct(r, type=2, norm="ortho", axis=0)
        return r @ V.T

    z = np.clip(linear(np.zeros((T, K))), 0.0, 1.0)  # start from the projected unconstrained-ish solution
    u = np.zeros((T, K))
    n = np.sqrt(T * K)
    for it in range(1, max_iter + 1):
        x = linear(z - u)
        xh = alpha * x + (1.0 - alpha) * z
        z_old = z
        z = np.clip(xh + u, 0.0, 1.0)
        u += xh - z
        r_prim = np.linalg.norm(x - z) / n
        r_dual = rho * np.linalg.norm(z - z_old) / n
        if r_prim < tol and np.linalg.norm(z - z_old) / n < tol:
            return z, it, True
        if it % 20 == 0:  # residual balancing; the eigenbasis makes a new rho free
            if r_prim > 10 * r_dual:
                rho *= 2.0
                u /= 2.0
            elif r_dual > 10 * r_prim:
                rho /= 2.0
                u *= 2.0
    return z, max_iter, False


def head_angles(rotvec: np.ndarray) -> np.ndarray:
    """(T, 3) FLAME axis-angle head (or neck) rotation -> (T, 3) pitch, yaw, roll in radians: intrinsic
    Y-X-Z Euler angles (FLAME: x right, y up, z towards the camera), as DualTalk's ARKit conversion."""
    from scipy.spatial.transform import Rotation

    e = Rotation.from_rotvec(np.asarray(rotvec, np.float64)).as_euler("YXZ")  # yaw, pitch, roll
    return e[:, [1, 0, 2]]


def flame56_to_arkit58(motion: np.ndarray, basis: Basis, **solve_kw) -> SolveResult:
    """(T, 56) flame56 motion -> arkit58 (T, 58): blendshapes by :func:`solve_arkit` on the basis's rows
    (``expression.i`` / ``jaw.i`` of the frames), head rotation by :func:`head_angles`, translation 0."""
    spec = SPECS["flame56"]
    x = np.asarray(motion, np.float64)
    if x.ndim != 2 or x.shape[1] != spec.dim:
        raise ValueError(f"flame56 motion must be (T, 56), got shape {x.shape}")
    try:
        cols = [spec.names.index(r) for r in basis.rows]
    except ValueError:
        bad = next(r for r in basis.rows if r not in spec.names)
        raise ValueError(f"basis row {bad!r} is not a flame56 channel (expression.0-49, jaw.0-2)") from None
    res = solve_arkit(x[:, cols], basis, **solve_kw)
    out = np.zeros((len(x), SPECS["arkit58"].dim), np.float32)
    out[:, :52] = res.weights
    out[:, 52:55] = head_angles(spec.take(x, "rotation"))
    return SolveResult(out, res.report)
