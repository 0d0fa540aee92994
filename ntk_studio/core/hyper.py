"""Marginal-likelihood fitting of the prior variance s² and the noise variance σ².

Cholesky routes use the exact closed form through one eigendecomposition (of K in function space,
of JᵀJ in weight space): each evaluation is then O(n) and L-BFGS finds the optimum of a smooth
two-parameter objective. Matrix-free routes use GPyTorch's ExactMarginalLogLikelihood with the
Jacobian kernel and the network mean (stochastic log-determinant through CG and Lanczos).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import TYPE_CHECKING

import gpytorch
import numpy as np
import torch
from scipy.optimize import minimize

from .errors import NTKStudioError, SolverError
from .gpytorch_bridge import LinearizedExactGP

if TYPE_CHECKING:
    from .gp import LinearizedGP

LOG_VAR_BOUNDS = (-25.0, 15.0)  # natural-log bounds for s² and σ² (≈1e-11 … 3e6)
GPYTORCH_LR = 0.1
GPYTORCH_CG_TOL = 0.01
GPYTORCH_TRACE_SAMPLES = 16
# Prior variances the classifier's Laplace evidence is compared on (it has no cheap closed-form optimum).
PRIOR_VAR_GRID = tuple(10.0**k for k in range(-4, 3))


def _spectral_nll(gp: LinearizedGP, st: dict):
    """Return a function (log s², log σ²) -> (negative log marginal likelihood, gradient).

    Every evaluation checks the cancel token of the GP's reporter (the optimizer's inner loop).
    """
    r = st["r"]
    N = r.numel()
    if gp.plan.space == "function":
        lam, Q = torch.linalg.eigh(st["Kxx"])
        coef, extra, rr = (Q.T @ r) ** 2, 0, None
    else:
        lam, Q = torch.linalg.eigh(st["G"])
        coef, extra, rr = (Q.T @ st["b"]) ** 2, N - lam.numel(), float(r @ r)
    lam = lam.clamp_min(0.0)

    def nll(z: np.ndarray) -> tuple[float, np.ndarray]:
        gp.lm.check_cancel()
        t = torch.tensor(z, dtype=torch.float64, device=lam.device, requires_grad=True)
        s2, n2 = t[0].exp(), t[1].exp()
        d = s2 * lam + n2
        logdet = torch.log(d).sum() + extra * t[1]
        quad = (coef / d).sum() if rr is None else (rr - (coef * s2 / d).sum()) / n2
        value = 0.5 * (quad + logdet + N * math.log(2 * math.pi))
        (grad,) = torch.autograd.grad(value, t)
        return float(value.detach()), grad.cpu().numpy()

    return nll


def fit_exact(gp: LinearizedGP, st: dict) -> tuple[float, float]:
    """Return (s², σ²) maximizing the exact marginal likelihood (L-BFGS-B on log variances)."""
    nll = _spectral_nll(gp, st)
    z0 = np.log([gp.prior_var, gp.noise])
    best = minimize(nll, z0, jac=True, method="L-BFGS-B", bounds=[LOG_VAR_BOUNDS] * 2)
    return float(np.exp(best.x[0])), float(np.exp(best.x[1]))


def exact_nll(gp: LinearizedGP, st: dict, prior_var: float, noise: float) -> float:
    """Return the exact negative log marginal likelihood at (s², σ²) for a Cholesky route."""
    return _spectral_nll(gp, st)(np.log([prior_var, noise]))[0]


def _gpytorch_model(gp: LinearizedGP, st: dict):
    lm = gp.lm
    likelihood = gpytorch.likelihoods.GaussianLikelihood(
        noise_constraint=gpytorch.constraints.GreaterThan(1e-10)
    ).to(device=lm.device, dtype=lm.dtype)
    model = LinearizedExactGP(
        lm, st["X"], st["Y"].reshape(-1), st["f_X"], likelihood, independent=gp.outputs == "independent"
    ).to(device=lm.device, dtype=lm.dtype)
    likelihood.noise = gp.noise
    model.covar_module.outputscale = gp.prior_var
    return model, likelihood


def _settings(gp: LinearizedGP):
    return (
        gpytorch.settings.max_cholesky_size(0),
        gpytorch.settings.cg_tolerance(GPYTORCH_CG_TOL),
        gpytorch.settings.max_preconditioner_size(gp.precond_rank),
        gpytorch.settings.num_trace_samples(GPYTORCH_TRACE_SAMPLES),
    )


@contextmanager
def _typed_errors():
    """Re-raise GPyTorch's bare RuntimeErrors (NotPSDError, CG tridiagonalization limits) as SolverError."""
    try:
        yield
    except RuntimeError as exc:
        if isinstance(exc, NTKStudioError):
            raise
        raise SolverError(
            f"GPyTorch's marginal-likelihood estimate failed ({type(exc).__name__}: {exc}). Raise the noise "
            "variance or precond_rank, or fit on a subset small enough for solver='cholesky'."
        ) from exc


def gpytorch_mll(gp: LinearizedGP, st: dict) -> float:
    """Return GPyTorch's (stochastic) marginal log likelihood per datum at the current values."""
    model, likelihood = _gpytorch_model(gp, st)
    model.train()
    likelihood.train()
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(likelihood, model)
    rows = model.train_inputs[0]
    a, b, c, d = _settings(gp)
    with a, b, c, d, torch.no_grad(), _typed_errors():
        return float(mll(model(rows), model.train_targets))


def fit_gpytorch(gp: LinearizedGP, st: dict, iters: int) -> tuple[float, float]:
    """Return (s², σ²) after `iters` Adam steps on GPyTorch's ExactMarginalLogLikelihood."""
    model, likelihood = _gpytorch_model(gp, st)
    model.train()
    likelihood.train()
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(likelihood, model)
    opt = torch.optim.Adam(model.parameters(), lr=GPYTORCH_LR)
    rows = model.train_inputs[0]
    a, b, c, d = _settings(gp)
    with a, b, c, d, _typed_errors():
        for _ in range(iters):
            gp.lm.check_cancel()
            opt.zero_grad()
            loss = -mll(model(rows), model.train_targets)
            loss.backward()
            opt.step()
    return float(model.covar_module.outputscale.detach()), float(likelihood.noise.detach())
