"""Choosing the linearized classifier's prior variance(s): held-out likelihood and per-module evidence.

Everything here works on the dense function-space form of the linearized classifier. With the
unit-prior kernel K₁ = J Jᵀ (n·C × n·C, sample-major) and Δθ ~ N(0, s² I), the logits' prior is
N(F0, s² K₁), so a refit at another s² (or on a subset of the rows) only slices and rescales one
matrix: the Jacobian is computed once. With one prior variance s_m² per module, the prior is
N(F0, Σ_m s_m² K_m) where K_m = J_m J_mᵀ uses that module's columns of J only.

:func:`fit_dense` is the Laplace fit of :mod:`.laplace`'s function route (Newton in the increment
form Δa = −(r − S B⁻¹ S K r), B = I + S K S, S = Λ^{1/2}) written for a dense kernel; the engine's
classifier and this fit agree to rounding (tests/test_core_calibration.py).

- :func:`heldout_search`: the s² on a grid with the smallest K-fold held-out NLL of the predictive
  (the same probability map as at prediction time). It scores what a user sees (calibrated
  probabilities on new rows) instead of the evidence, which prefers a prior scale that leaves the
  logits' posterior variance large. On tiny n the folds are stratified by class.
- :func:`module_evidence_search`: per-module prior variances by coordinate ascent on the Laplace
  evidence over the same grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .errors import ShapeError
from .laplace import block_apply, point_blocks, softmax_stats, sym_sqrt
from .linearized import LinearizedModel

DEFAULT_FOLDS = 5
# Prior variances s² and covariance scales τ the held-out search tries (τ is free: no refit).
HELDOUT_GRID = tuple(10.0**k for k in range(-4, 5))
COV_SCALES = tuple(10.0 ** (k / 4) for k in range(-24, 3))  # quarter decades, 1e-6 … √10
DEFAULT_SWEEPS = 2
GRAD_TOL = 1e-9
MAX_NEWTON = 100
MAX_HALVINGS = 40
ARMIJO_C = 1e-4
FOLD_SEED = 0


@dataclass(frozen=True)
class DenseFit:
    """A dense function-space Laplace fit: dual weights a, MAP logits, S = Λ^{1/2}, chol(B), evidence."""

    a: torch.Tensor  # (n·C,), Δθ = Jᵀ a in the scaled parametrization; MAP logits F = F0 + K a
    F: torch.Tensor  # (n, C)
    S: torch.Tensor  # (n, C, C)
    L: torch.Tensor  # Cholesky factor of B = I + S K S
    objective: float  # Σ CE + ½ aᵀ K a at the MAP
    evidence: float  # −objective − ½ log det B
    iterations: int
    converged: bool


def _ce(F: torch.Tensor, y: torch.Tensor) -> float:
    return float(-torch.log_softmax(F, -1).gather(1, y[:, None]).sum())


def fit_dense(K: torch.Tensor, F0: torch.Tensor, y: torch.Tensor, grad_tol: float = GRAD_TOL,
              max_newton: int = MAX_NEWTON, a0: torch.Tensor | None = None) -> DenseFit:
    """Return the Laplace fit of logits F0 + f, f ~ N(0, K) (K: n·C × n·C sample-major), labels y.

    `a0` warm-starts Newton (the objective is convex, so the optimum does not depend on it).
    """
    n, C = F0.shape
    if K.shape != (n * C, n * C) or y.shape != (n,):
        raise ShapeError(f"K must be ({n * C}, {n * C}) and y ({n},); got {tuple(K.shape)} and {tuple(y.shape)}.")
    Y = torch.nn.functional.one_hot(y, C).to(K.dtype)
    a = torch.zeros(n * C, dtype=K.dtype, device=K.device) if a0 is None else a0.clone()
    h = K @ a
    g0, it, converged = None, 0, False
    while True:
        F = F0 + h.reshape(n, C)
        p, lam = softmax_stats(F)
        r = (p - Y).reshape(-1) + a
        Kr = K @ r
        gnorm = float((r @ Kr).clamp_min(0.0).sqrt())
        g0 = gnorm if g0 is None else g0
        if gnorm <= grad_tol * max(1.0, g0):
            converged = True
            break
        if it >= max_newton:
            break
        S = sym_sqrt(lam)
        B = _b_matrix(K, S)
        z = torch.cholesky_solve(block_apply(S, Kr).unsqueeze(-1), torch.linalg.cholesky(B))[:, 0]
        da = block_apply(S, z) - r
        du = K @ da
        q0, q1, q2 = float(a @ h), float(da @ h), float(da @ du)
        slope = float(((p - Y).reshape(-1) * du).sum()) + q1
        if not slope < 0:
            break

        def phi(t: float) -> float:
            return _ce(F + t * du.reshape(n, C), y) + 0.5 * (q0 + 2 * t * q1 + t * t * q2)
        f0, t = phi(0.0), 1.0
        for _ in range(MAX_HALVINGS):
            if phi(t) <= f0 + ARMIJO_C * t * slope or phi(t) - f0 <= 1e-14 * abs(f0):
                break
            t *= 0.5
        a, h, it = a + t * da, h + t * du, it + 1
    F = F0 + h.reshape(n, C)
    S = sym_sqrt(softmax_stats(F)[1])
    L = torch.linalg.cholesky(_b_matrix(K, S))
    objective = _ce(F, y) + 0.5 * float(a @ h)
    evidence = -objective - float(torch.log(L.diagonal()).sum())
    return DenseFit(a, F, S, L, objective, evidence, it, converged)


def _b_matrix(K: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    """Return B = I + S K S (eigenvalues ≥ 1)."""
    B = block_apply(S, block_apply(S, K).T).T
    B.diagonal().add_(1.0)
    return B


def predict_dense(fit: DenseFit, F0_test: torch.Tensor, K_cross: torch.Tensor,
                  K_test_blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (mean (m, C), covariance (m, C, C)) of the test logits.

    K_cross is K(X_train, X_test) (n·C × m·C), K_test_blocks the per-point prior blocks (m, C, C).
    """
    C = F0_test.shape[1]
    mean = F0_test + (K_cross.T @ fit.a).reshape(-1, C)
    V = torch.linalg.solve_triangular(fit.L, block_apply(fit.S, K_cross), upper=False)
    cov = K_test_blocks - point_blocks(V, V, C)
    return mean, 0.5 * (cov + cov.transpose(-1, -2))


# ------------------------------------------------------------------ kernels from the linearized model
def module_columns(lm: LinearizedModel) -> dict[str, list[int]]:
    """Return, per owning module, the column indices of its parameters in the flat Jacobian."""
    cols: dict[str, list[int]] = {}
    start = 0
    for name, size in zip(lm.subset.names, lm.subset.sizes):
        cols.setdefault(name.rpartition(".")[0], []).extend(range(start, start + size))
        start += size
    return cols


def module_kernels(lm: LinearizedModel, X: torch.Tensor) -> tuple[list[str], torch.Tensor]:
    """Return (module names, unit-prior kernels K_m = J_m J_mᵀ stacked as (M, n·C, n·C))."""
    J = lm.jacobian(X)
    J = J.reshape(-1, J.shape[-1])
    names, parts = [], []
    for name, cols in module_columns(lm).items():
        Jm = J[:, cols]
        names.append(name)
        parts.append(Jm @ Jm.T)
    return names, torch.stack(parts)


# ------------------------------------------------------------------------------ folds and scoring
def stratified_folds(y: torch.Tensor, folds: int, seed: int = FOLD_SEED) -> list[torch.Tensor]:
    """Return `folds` disjoint row-index sets; each class is dealt round-robin after a seeded shuffle."""
    counts = torch.bincount(y)
    folds = int(min(folds, max(2, int(counts[counts > 0].max()))))
    gen = torch.Generator().manual_seed(seed)
    fold_of = torch.empty(len(y), dtype=torch.int64)
    offset = 0
    for c in torch.unique(y).tolist():
        rows = torch.nonzero(y == c).flatten()
        rows = rows[torch.randperm(len(rows), generator=gen)]
        fold_of[rows] = (torch.arange(len(rows)) + offset) % folds
        offset += len(rows)  # so that classes with one example do not all land in fold 0
    return [torch.nonzero(fold_of == k).flatten() for k in range(folds) if bool((fold_of == k).any())]


def _rows(idx: torch.Tensor, C: int) -> torch.Tensor:
    return (idx[:, None] * C + torch.arange(C)).reshape(-1)


def heldout_nll(K: torch.Tensor, F0: torch.Tensor, y: torch.Tensor, folds: Sequence[torch.Tensor],
                proba: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                scales: Sequence[float] = (1.0,), check: Callable[[], None] | None = None,
                warm: dict | None = None) -> list[float]:
    """Return the mean held-out NLL over `folds` of `proba(mean, τ·cov)` for each τ in `scales`.

    The logits' prior is N(F0, K); every fold is one Laplace fit on the other folds' rows, and the
    covariance scales τ reuse it. `warm` (fold index -> (K's scale, a)) carries each fold's MAP to
    the next prior scale as a Newton start with the same logits (a rescaled); it is updated.
    """
    n, C = F0.shape
    Kv = K.reshape(n, C, n, C)
    total = [0.0] * len(scales)
    for f, te in enumerate(folds):
        if check is not None:
            check()
        mask = torch.ones(n, dtype=torch.bool)
        mask[te] = False
        tr = torch.nonzero(mask).flatten()
        rt, rs = _rows(tr, C).to(K.device), _rows(te, C).to(K.device)
        scale = float(K.diagonal().mean())
        a0 = None
        if warm is not None and f in warm:
            previous, a_prev = warm[f]
            a0 = a_prev * (previous / scale)
        fit = fit_dense(K[rt][:, rt], F0[tr], y[tr], a0=a0)
        if warm is not None:
            warm[f] = (scale, fit.a)
        mean, cov = predict_dense(fit, F0[te], K[rt][:, rs], Kv[te, :, te, :])
        for j, tau in enumerate(scales):
            p = proba(mean, tau * cov)
            total[j] += float(-torch.log(p.gather(1, y[te, None]).clamp_min(1e-300)).sum())
    return [t / n for t in total]


def heldout_search(K1: torch.Tensor, F0: torch.Tensor, y: torch.Tensor, grid: Sequence[float],
                   proba: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                   scales: Sequence[float] = (1.0,), folds: int = DEFAULT_FOLDS, seed: int = FOLD_SEED,
                   check: Callable[[], None] | None = None) -> dict:
    """Return the (s², τ) on `grid` × `scales` with the least K-fold held-out NLL, and the table.

    K1 is the unit-prior kernel J Jᵀ of the adaptation rows, F0 their pretrained logits; the
    predictive is `proba(mean, τ·cov)` with the Laplace posterior at prior variance s². Ties go
    to the first value (grid order, then scale order). The result also holds the best s² at τ = 1
    when 1 is among `scales` ('chosen_unscaled').
    """
    parts = stratified_folds(y.cpu(), folds, seed)
    warm: dict = {}
    table = [heldout_nll(float(s2) * K1, F0, y, parts, proba, scales, check, warm) for s2 in grid]
    cells = [(table[i][j], i, j) for i in range(len(grid)) for j in range(len(scales))]
    value, i, j = min(cells)
    info = {"method": f"{len(parts)}-fold held-out NLL", "prior_var": [float(s) for s in grid],
            "cov_scale": [float(t) for t in scales], "heldout_nll": table, "folds": len(parts),
            "chosen": float(grid[i]), "chosen_cov_scale": float(scales[j]), "chosen_heldout_nll": value}
    if 1.0 in scales:
        j1 = list(scales).index(1.0)
        value1, i1 = min((table[i][j1], i) for i in range(len(grid)))
        info["chosen_unscaled"] = float(grid[i1])
        info["chosen_unscaled_heldout_nll"] = value1
    return info


def fit_heldout(clf, rep, grid: Sequence[float] | None = None, folds: int = DEFAULT_FOLDS,
                scales: Sequence[float] = COV_SCALES) -> dict:
    """Set a fitted LinearizedClassifier's prior_var and cov_scale by the K-fold held-out NLL; refit it.

    The predictive scored is the classifier's own 'auto' map (the pairwise probit), applied to τ·Σ. One unit-prior kernel of the adaptation rows serves every
    fold and every s²; the classifier is refitted once at the winner on its own route. Returns the
    search's table (see :func:`heldout_search`).
    """
    from .classify import PROBIT_APPROXIMATIONS, resolve_proba_method  # classify imports this module lazily

    X, y = clf._data
    with clf._reporting(rep):
        K1 = clf.kernels.matrix(X)
        F0 = clf.lm.forward(X)
    proba = PROBIT_APPROXIMATIONS[resolve_proba_method("auto", F0.shape[1])]
    grid = HELDOUT_GRID if grid is None else grid
    info = heldout_search(K1, F0, y, grid, proba, scales, folds, check=rep.check)
    clf.prior_var, clf.cov_scale = info["chosen"], info["chosen_cov_scale"]
    clf._fit(X, y, rep)
    return info


def module_evidence_search(Ks: torch.Tensor, F0: torch.Tensor, y: torch.Tensor, grid: Sequence[float],
                           start: float | None = None, sweeps: int = DEFAULT_SWEEPS) -> dict:
    """Return {'chosen': [s_m² per module], 'evidence'}: coordinate ascent of the Laplace evidence.

    Ks is (M, n·C, n·C), the per-module unit kernels. It starts from the best isotropic value on
    the grid (or `start`) and, module by module, moves each variance to the grid value with the
    largest evidence, for `sweeps` passes (the evidence never decreases).
    """
    def evidence(v: Sequence[float]) -> float:
        return fit_dense(torch.einsum("m,mij->ij", torch.tensor(v, dtype=Ks.dtype, device=Ks.device), Ks),
                         F0, y).evidence
    M = Ks.shape[0]
    if start is None:
        iso = [evidence([s] * M) for s in grid]
        start = grid[max(range(len(grid)), key=iso.__getitem__)]
    current = [float(start)] * M
    best = evidence(current)
    for _ in range(sweeps):
        moved = False
        for m in range(M):
            for s in grid:
                if s == current[m]:
                    continue
                trial = current.copy()
                trial[m] = float(s)
                value = evidence(trial)
                if value > best + 1e-9 * abs(best):
                    best, current, moved = value, trial, True
        if not moved:
            break
    return {"method": "per-module Laplace evidence (coordinate ascent on the grid)", "chosen": current,
            "evidence": best}


def log_grid(low: float, high: float, per_decade: int = 1) -> tuple[float, ...]:
    """Return powers of ten from `low` to `high` with `per_decade` points per decade."""
    k0, k1 = round(math.log10(low) * per_decade), round(math.log10(high) * per_decade)
    return tuple(10.0 ** (k / per_decade) for k in range(k0, k1 + 1))
