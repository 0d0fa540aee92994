"""The shared regression problem of benchmarks 1 and 2, and the naive dense-NTK baseline.

Problem: a tanh MLP 8-w-w-1 (w = 128 gives 17,793 parameters) at fixed random weights θ*,
inputs X ~ N(0, I₈), targets y = sin(ΣX) + 0.1·ε. The GP prior variance s² and the noise variance
σ² are fixed (PRIOR_VAR, NOISE) so that every method solves the same posterior:

    var(x*) = s²‖J(x*)‖² − s⁴ J(x*) Jᵀ (s² J Jᵀ + σ² I)⁻¹ J J(x*)ᵀ     (noise excluded)

The dense-NTK baseline is written the way a torch.func user would write it, independently of
ntk_studio: per-sample Jacobians with ``vmap(jacrev)``, the n×n kernel J Jᵀ and a dense Cholesky.
In float64 it is the reference every method's variances are checked against.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

IN_DIM = 8
DEFAULT_WIDTH = 128
MODEL_SEED = 0
TRAIN_SEED = 1
TEST_SEED = 2
PRIOR_VAR = 1.0  # s²
NOISE = 0.01  # σ², the variance of the 0.1·ε noise in the targets
NOISE_STD = 0.1
DENSE_CHUNK = 256  # samples per vmap(jacrev) call in the dense baseline


def mlp(width: int = DEFAULT_WIDTH, seed: int = MODEL_SEED) -> nn.Sequential:
    """Return the tanh MLP 8-width-width-1 with weights from a fixed seed (float32, eval mode)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(IN_DIM, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 1)
    ).eval()


def mlp_params(width: int) -> int:
    """Return P for the MLP 8-width-width-1: width² + 11·width + 1."""
    return width * width + 11 * width + 1


def width_for_params(target: int) -> int:
    """Return the width whose MLP 8-w-w-1 has the parameter count closest to `target`."""
    w = int((-11 + math.sqrt(121 + 4 * (target - 1))) / 2)
    return min((w, w + 1), key=lambda c: abs(mlp_params(c) - target))


def data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return X ~ N(0, I₈) of shape (n, 8) and y = sin(ΣX) + 0.1·ε of shape (n,), float64."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, IN_DIM, generator=g, dtype=torch.float64)
    y = torch.sin(X.sum(1)) + NOISE_STD * torch.randn(n, generator=g, dtype=torch.float64)
    return X, y


def dense_jacobian(model: nn.Module, X: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Return the (n, P) Jacobian of the scalar-output model at X by per-sample vmap(jacrev)."""
    params = {k: v.detach().to(dtype) for k, v in model.named_parameters()}

    def f(p, x):
        return functional_call(model, p, (x.unsqueeze(0),)).squeeze()

    jac = vmap(jacrev(f), in_dims=(None, 0))
    X = X.to(dtype)
    rows = []
    for i in range(0, X.shape[0], DENSE_CHUNK):
        J = jac(params, X[i : i + DENSE_CHUNK])
        rows.append(torch.cat([J[k].reshape(J[k].shape[0], -1) for k in params], dim=1))
    return torch.cat(rows)


def dense_ntk_posterior(
    model: nn.Module, X: torch.Tensor, y: torch.Tensor, Xs: torch.Tensor, dtype: torch.dtype,
    prior_var: float = PRIOR_VAR, noise: float = NOISE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (posterior mean, noise-free posterior variance) at Xs by dense J, J Jᵀ and Cholesky."""
    with torch.no_grad():
        model = model.to(dtype)
        f_X, f_s = model(X.to(dtype))[:, 0], model(Xs.to(dtype))[:, 0]
    J, Js = dense_jacobian(model, X, dtype), dense_jacobian(model, Xs, dtype)
    A = prior_var * (J @ J.T)
    A.diagonal().add_(noise)
    L = torch.linalg.cholesky(A)
    Kxs = prior_var * (J @ Js.T)  # (n, m)
    alpha = torch.cholesky_solve((y.to(dtype) - f_X).unsqueeze(-1), L)[:, 0]
    mean = f_s + Kxs.T @ alpha
    V = torch.linalg.solve_triangular(L, Kxs, upper=False)
    var = prior_var * (Js * Js).sum(1) - (V * V).sum(0)
    return mean, var


def relative_errors(approx: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """Return the max and median of |approx − ref| / |ref| (both float64)."""
    rel = (approx.double() - ref.double()).abs() / ref.double().abs()
    return {"max_rel": float(rel.max()), "median_rel": float(rel.median())}
