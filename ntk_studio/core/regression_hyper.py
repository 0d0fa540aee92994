"""Choosing the regression GP's (s², σ²) on small n: evidence, MAP-II, noise floor, leave-one-out.

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
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import minimize

LOG_BOUNDS = (-25.0, 15.0)
PRIOR_LOG_SD = math.log(10.0)
FLOOR_FRACTION = 0.01
SELECTIONS = ("fixed", "evidence", "map2", "floor", "loo")


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


def choose(selection: str, K1: torch.Tensor, r: torch.Tensor, prior_var: float, noise: float,
           y_var: float) -> tuple[float, float]:
    """Return (s², σ²) chosen by `selection` (see the module docstring), starting at (prior_var, noise)."""
    if selection == "fixed":
        return prior_var, noise
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
