"""Choosing the regression GP's (s², σ²) on small n: evidence, MAP-II, noise floor, leave-one-out, blocked scale.

All four use one eigendecomposition of the unit-prior kernel K₁ = J Jᵀ of the adaptation rows
(n × n, one output) and the residuals r = y − f(X): with K₁ = Q diag(λ) Qᵀ and d = s² λ + σ², the
negative log marginal likelihood is ½ Σ (Qᵀr)²/d + ½ Σ log d + n/2 log 2π, and the leave-one-out
predictive (Rasmussen & Williams eq. 5.10-5.12) is N(y_i − α_i / [A⁻¹]_ii, 1 / [A⁻¹]_ii) with
A = s² K₁ + σ² I, α = A⁻¹ r. Each is optimized over (log s², log σ²) by L-BFGS-B.

- 'evidence': the type-II maximum likelihood (what ``LinearizedGP.fit_hyperparameters`` does).
- 'map2': evidence plus a weak log-normal prior on each variance, centred on the starting values
  (s² as given, σ² = NOISE_FRACTION × var y) with one decade (ln 10) of standard deviation.
- 'floor': evidence with σ² kept ≥ FLOOR_FRACTION × var y.
- 'loo': the leave-one-out predictive log likelihood (closed form, no refits).
- 'blocked': the floor's (s², σ²), then both multiplied by one covariance scale τ ≥ 1 (the mean is
  unchanged, every predictive variance is ×τ) chosen by the held-out NLL of blocks that lie away from
  the other rows: the user's groups when given, else Ward clusters of the rows in the linearized feature
  space (K₁ = E Eᵀ). Each block is predicted by the GP conditional on the rest (no refits:
  with A⁻¹ partitioned, the block's predictive is N(r_B − C (A⁻¹r)_B, C), C = [(A⁻¹)_BB]⁻¹), and the
  NLL-optimal τ is the mean squared standardized error of those predictions ("blocked"/spatial CV).
  τ < 1 is not taken: the floor is calibrated on rows like the labelled ones (docs/calibration.md), the
  blocks can only say that rows away from them need wider intervals.
- 'shift': the same scale τ, from one held-out block aimed at where the model will be used: given the
  inputs of unlabelled rows (rows of the data set without targets), a kernel ridge classifier
  (unlabelled vs labelled, on the unit-prior kernel over both, ridge = mean diagonal) scores each
  labelled row by its leave-one-out prediction; the half of the labelled rows that looks most like the
  unlabelled rows is predicted from the other half ("adversarial validation" as a CV split). Without
  unlabelled rows τ = 1 and 'shift' is 'floor'.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.optimize import minimize

LOG_BOUNDS = (-25.0, 15.0)
PRIOR_LOG_SD = math.log(10.0)
FLOOR_FRACTION = 0.01
SELECTIONS = ("fixed", "evidence", "map2", "floor", "loo", "blocked", "shift")
BLOCKS = 3  # feature-space blocks of 'blocked' (5 measured too: docs/calibration.md)
SCALE_MIN = 1.0  # 'blocked' and 'shift' only widen the floor's intervals
SHIFT_RIDGE = 1.0  # 'shift': the classifier's ridge as a multiple of the mean kernel diagonal
SHIFT_HELD_OUT = 0.5  # 'shift': share of the labelled rows held out (the most unlabelled-like)
SHIFT_MAX_UNLABELLED = 2000  # 'shift' reads at most this many unlabelled rows (evenly spaced): one (n+m)² solve


def _spectrum(K1: torch.Tensor, r: torch.Tensor):
    lam, Q = torch.linalg.eigh(K1.double())
    return lam.clamp_min(0.0), Q, (Q.T @ r.double()) ** 2


def neg_log_evidence(z: torch.Tensor, lam, coef) -> torch.Tensor:
    """Return the negative log marginal likelihood at z = (log s², log σ²) (differentiable)."""
    d = z[0].exp() * lam + z[1].exp()
    return 0.5 * ((coef / d).sum() + torch.log(d).sum() + lam.numel() * math.log(2 * math.pi))


def neg_loo(z: torch.Tensor, lam, Q, r) -> torch.Tensor:
    """Return the negative leave-one-out log predictive density at z = (log s², log σ²)."""
    d = z[0].exp() * lam + z[1].exp()
    Ainv_diag = (Q * Q / d).sum(1)
    alpha = Q @ ((Q.T @ r) / d)
    return 0.5 * ((alpha**2 / Ainv_diag) - torch.log(Ainv_diag) + math.log(2 * math.pi)).sum()


def feature_blocks(K_rows, blocks: int = BLOCKS) -> np.ndarray:
    """Return each row's block (0 … blocks−1): Ward clusters of the rows' feature vectors, K_rows = E Eᵀ.

    E = Q √λ from K_rows = Q diag(λ) Qᵀ reproduces every inner product of the linearized features, so
    this is Ward's clustering in that space without forming a P-sized vector. Deterministic.
    """
    K_rows = np.asarray(K_rows, dtype=np.float64)
    n = K_rows.shape[0]
    if n < 2:
        raise ValueError("blocked hyperparameters need at least 2 rows")
    lam, Q = np.linalg.eigh(K_rows)
    E = Q * np.sqrt(np.clip(lam, 0.0, None))
    labels = fcluster(linkage(E, method="ward"), min(blocks, n), criterion="maxclust") - 1
    return np.unique(labels, return_inverse=True)[1]


def block_predictive(K1, r, prior_var: float, noise: float, folds) -> tuple[np.ndarray, np.ndarray]:
    """Return (mean, variance) of each entry of r predicted by the GP from the entries in other folds.

    The predictive of y − f(X) with noise, from one factorization of A = s²K₁ + σ²I (no refits).
    """
    K1 = np.asarray(K1, dtype=np.float64)
    r = np.asarray(r, dtype=np.float64).reshape(-1)
    folds = np.asarray(folds)
    A = prior_var * K1
    A[np.diag_indices_from(A)] += noise
    Ainv = np.linalg.inv(A)
    Ainv = 0.5 * (Ainv + Ainv.T)
    a = Ainv @ r
    mean, var = np.empty_like(r), np.empty_like(r)
    for b in np.unique(folds):
        B = folds == b
        C = np.linalg.inv(Ainv[np.ix_(B, B)])
        mean[B] = r[B] - C @ a[B]
        var[B] = np.diag(C)
    return mean, var


def covariance_scale(K1, r, prior_var: float, noise: float, folds) -> tuple[float, float]:
    """Return (τ, held-out NLL per entry at τ): τ = max(SCALE_MIN, mean squared standardized block error).

    Scaling s² and σ² by τ keeps the mean and multiplies every held-out variance by τ; the NLL
    ½ Σ [log 2πτv + e²/(τv)] is smallest at τ = mean(e²/v).
    """
    r = np.asarray(r, dtype=np.float64).reshape(-1)
    mean, var = block_predictive(K1, r, prior_var, noise, folds)
    z2 = (r - mean) ** 2 / var
    tau = max(SCALE_MIN, float(z2.mean()))
    nll = 0.5 * float(np.mean(np.log(2 * math.pi * tau * var) + z2 / tau))
    return tau, nll


def row_folds(K1, outputs: int, groups=None, blocks: int = BLOCKS) -> np.ndarray:
    """Return the fold of each entry of the (n·outputs)-sized kernel K1: the rows' groups if ≥ 2, else feature blocks.

    Entries are row-major (row i, output k), and all outputs of a row share its fold.
    """
    K1 = np.asarray(K1, dtype=np.float64)
    n = K1.shape[0] // outputs
    if groups is not None and len(np.unique(np.asarray(groups))) >= 2:
        if len(groups) != n:
            raise ValueError(f"groups has {len(groups)} entries for {n} rows")
        folds = np.unique(np.asarray(groups), return_inverse=True)[1]
    else:
        folds = feature_blocks(row_kernel(K1, outputs, n, n), blocks)
    return np.repeat(folds, outputs)


def shift_scores(K_ll, K_lu, K_uu) -> np.ndarray:
    """Return each labelled row's leave-one-out score of a kernel ridge classifier, unlabelled (+1) vs labelled (−1).

    On the kernel over labelled and unlabelled rows together, with ridge SHIFT_RIDGE × its mean diagonal;
    the leave-one-out prediction of row i is t_i − α_i / [M⁻¹]_ii (M = K + ridge·I, α = M⁻¹t), no refits.
    """
    K_ll, K_lu, K_uu = (np.asarray(a, dtype=np.float64) for a in (K_ll, K_lu, K_uu))
    n, m = K_lu.shape
    K = np.block([[K_ll, K_lu], [K_lu.T, K_uu]])
    ridge = SHIFT_RIDGE * float(np.mean(np.diag(K)))
    K[np.diag_indices_from(K)] += ridge
    Minv = np.linalg.inv(K)
    t = np.concatenate([-np.ones(n), np.ones(m)])
    alpha = Minv @ t
    return (t - alpha / np.diag(Minv))[:n]


def shift_folds(K_ll, K_lu, K_uu) -> np.ndarray:
    """Return 1 for the held-out labelled rows of 'shift' (the ⌊SHIFT_HELD_OUT·n⌋ most unlabelled-like), else 0."""
    score = shift_scores(K_ll, K_lu, K_uu)
    held = np.zeros(len(score), dtype=int)
    held[np.argsort(-score, kind="stable")[: max(1, int(SHIFT_HELD_OUT * len(score)))]] = 1
    return held


def heldout_scale(K1, r, prior_var: float, noise: float, folds, held) -> tuple[float, float]:
    """Return (τ, held-out NLL per held-out entry at τ) from the entries where `held` is true only.

    Like :func:`covariance_scale`, but only the blocks marked `held` are scored (the rest is training only).
    """
    r = np.asarray(r, dtype=np.float64).reshape(-1)
    held = np.asarray(held, dtype=bool)
    mean, var = block_predictive(K1, r, prior_var, noise, folds)
    z2 = ((r - mean) ** 2 / var)[held]
    tau = max(SCALE_MIN, float(z2.mean()))
    return tau, 0.5 * float(np.mean(np.log(2 * math.pi * tau * var[held]) + z2 / tau))


def row_kernel(K, outputs: int, n1: int, n2: int) -> np.ndarray:
    """Return the (n1, n2) kernel between rows, Σ_k K[(i, k), (j, k)], of an (n1·outputs, n2·outputs) kernel."""
    return np.asarray(K, dtype=np.float64).reshape(n1, outputs, n2, outputs).diagonal(axis1=1, axis2=3).sum(-1)


def choose(selection: str, K1: torch.Tensor, r: torch.Tensor, prior_var: float, noise: float,
           y_var: float, groups=None, blocks: int = BLOCKS, unlabelled=None) -> tuple[float, float]:
    """Return (s², σ²) chosen by `selection` (see the module docstring), starting at (prior_var, noise).

    `unlabelled` ('shift' only): (K_lu, K_uu), the kernel from the labelled to the unlabelled rows and among them.
    """
    if selection == "fixed":
        return prior_var, noise
    if selection == "shift":
        s2, n2 = choose("floor", K1, r, prior_var, noise, y_var)
        if unlabelled is None:
            return s2, n2
        K = K1.double().cpu().numpy()
        held = shift_folds(K, *unlabelled)
        tau, _ = heldout_scale(K, r.double().cpu().numpy(), s2, n2, held, held == 1)
        return tau * s2, tau * n2
    if selection == "blocked":
        s2, n2 = choose("floor", K1, r, prior_var, noise, y_var)
        K = K1.double().cpu().numpy()
        tau, _ = covariance_scale(K, r.double().cpu().numpy(), s2, n2, row_folds(K, 1, groups, blocks))
        return tau * s2, tau * n2
    lam, Q, coef = _spectrum(K1, r)
    r = r.double()
    z0 = np.log([prior_var, noise])
    bounds = [LOG_BOUNDS, LOG_BOUNDS]
    if selection == "evidence":
        def f(z):
            return neg_log_evidence(z, lam, coef)
    elif selection == "map2":
        centre = torch.tensor(z0, dtype=torch.float64)

        def f(z):
            return neg_log_evidence(z, lam, coef) + 0.5 * (((z - centre) / PRIOR_LOG_SD) ** 2).sum()
    elif selection == "floor":
        bounds[1] = (math.log(FLOOR_FRACTION * y_var), LOG_BOUNDS[1])
        z0[1] = max(z0[1], bounds[1][0])

        def f(z):
            return neg_log_evidence(z, lam, coef)
    elif selection == "loo":
        def f(z):
            return neg_loo(z, lam, Q, r)
    else:
        raise ValueError(f"selection must be one of {', '.join(SELECTIONS)}; got {selection!r}")

    def value_and_grad(z: np.ndarray):
        t = torch.tensor(z, dtype=torch.float64, requires_grad=True)
        v = f(t)
        (g,) = torch.autograd.grad(v, t)
        return float(v.detach()), g.numpy()

    best = minimize(value_and_grad, z0, jac=True, method="L-BFGS-B", bounds=bounds)
    return float(np.exp(best.x[0])), float(np.exp(best.x[1]))


def noise_floor(y: torch.Tensor) -> float:
    """Return the 'floor' selection's lower bound on σ²: FLOOR_FRACTION × the variance of the targets."""
    return FLOOR_FRACTION * max(float(y.double().var()), 1e-300)


def fit_exact_selected(gp, st: dict, selection: str) -> tuple[float, float]:
    """Return (s², σ²) for a fitted GP on a Cholesky route by 'floor' or 'map2' (the engine's spectral evidence).

    Uses :func:`.hyper._spectral_nll` (function or weight space, any number of outputs). 'map2' centres
    its log-normal prior on the GP's current (s², σ²).
    """
    from . import hyper

    nll = hyper._spectral_nll(gp, st)
    z0 = np.log([gp.prior_var, gp.noise])
    bounds = [hyper.LOG_VAR_BOUNDS, hyper.LOG_VAR_BOUNDS]
    if selection == "floor":
        bounds[1] = (math.log(noise_floor(st["Y"])), hyper.LOG_VAR_BOUNDS[1])
        z0[1] = max(z0[1], bounds[1][0])
        objective = nll
    elif selection == "map2":
        centre = z0.copy()

        def objective(z: np.ndarray):
            value, grad = nll(z)
            return value + 0.5 * float((((z - centre) / PRIOR_LOG_SD) ** 2).sum()), grad + (z - centre) / PRIOR_LOG_SD**2
    else:
        raise ValueError(f"selection must be 'floor' or 'map2' here; got {selection!r}")
    best = minimize(objective, z0, jac=True, method="L-BFGS-B", bounds=bounds)
    return float(np.exp(best.x[0])), float(np.exp(best.x[1]))
