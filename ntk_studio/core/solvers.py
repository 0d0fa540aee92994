"""Linear solves for the GP: dense Cholesky and preconditioned CG through linear_operator."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from linear_operator import settings as lo_settings
from linear_operator.operators import LinearOperator
from linear_operator.utils.linear_cg import linear_cg
from linear_operator.utils.warnings import NumericalWarning

from .errors import SolverError

# linear_cg treats pᵀAp < eps as a breakdown; its default (1e-10) stalls float64 solves near a
# 1e-6 relative residual, so we pass a tiny eps and stop only on the requested tolerance.
CG_BREAKDOWN_EPS = 1e-300
JITTER_STEPS = (0.0, 1e-10, 1e-8, 1e-6)  # relative to the mean diagonal, tried in order


@dataclass(frozen=True)
class SolveInfo:
    """What a solve did: solver, product columns used, iterations, true relative residual, jitter."""

    solver: str
    products: int
    residual: float
    jitter: float = 0.0
    converged: bool = True
    iterations: int = 0


def cholesky(A: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Return (lower Cholesky factor of A, relative jitter added); raise SolverError if none works."""
    scale = float(A.diagonal().mean().abs()) or 1.0
    for jitter in JITTER_STEPS:
        # A jittered copy only when it is needed (no identity matrix: it was a system-sized allocation).
        B = A
        if jitter:
            B = A.clone()
            B.diagonal().add_(jitter * scale)
        L, info = torch.linalg.cholesky_ex(B)
        del B
        if int(info) == 0:
            return L, jitter
    raise SolverError(
        "The system matrix is not positive definite even with jitter; increase the noise variance "
        "or use float64."
    )


def cho_solve(L: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Return A⁻¹ b from A's lower Cholesky factor L, for b of shape (N,) or (N, c).

    Two triangular solves: torch.cholesky_solve copies a factor from cholesky_ex (column-major)
    first, one more system-sized matrix at the peak; solve_triangular takes it as it is.
    """
    B = b.unsqueeze(-1) if b.dim() == 1 else b
    x = torch.linalg.solve_triangular(L.mT, torch.linalg.solve_triangular(L, B, upper=False), upper=True)
    return x[:, 0] if b.dim() == 1 else x


def relative_residual(matmul, x: torch.Tensor, b: torch.Tensor) -> float:
    """Return max over columns of ‖A x − b‖ / ‖b‖."""
    r = matmul(x) - b
    bb = b if b.dim() > 1 else b.unsqueeze(-1)
    rr = r if r.dim() > 1 else r.unsqueeze(-1)
    return float((rr.norm(dim=0) / bb.norm(dim=0).clamp_min(1e-300)).max())


def cg_solve(
    A: LinearOperator, b: torch.Tensor, tol: float, max_iter: int, precond_rank: int
) -> tuple[torch.Tensor, bool]:
    """Return (A⁻¹ b by preconditioned CG, converged) with GPyTorch's linear_cg."""
    with warnings.catch_warnings(record=True) as caught, lo_settings.max_cholesky_size(0), \
            lo_settings.cg_tolerance(tol), lo_settings.max_cg_iterations(max_iter), \
            lo_settings.max_preconditioner_size(precond_rank), lo_settings.min_preconditioning_size(1), \
            lo_settings.terminate_cg_by_size(False):
        warnings.simplefilter("always", NumericalWarning)
        precond = A._solve_preconditioner() if precond_rank > 0 else None
        x = linear_cg(
            A._matmul, b, tolerance=tol, eps=CG_BREAKDOWN_EPS, stop_updating_after=CG_BREAKDOWN_EPS,
            max_iter=max_iter, preconditioner=precond,
        )
    converged = not any(issubclass(w.category, NumericalWarning) and "CG terminated" in str(w.message) for w in caught)
    return x, converged
