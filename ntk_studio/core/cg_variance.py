"""Function-space CG pieces: the stored kernel operator, the variance solves' preconditioner, bounded variances.

The CG route answers kernel products matrix-free (vjp then jvp) unless the n·K × n·K kernel itself
fits the memory budget: then it is filled once, block of rows by block of rows through the kernel
builder (structured Linear-layer form or per-sample Jacobians), and every product is one matrix
product. Posterior variances of all test points of a chunk are one block solve
(:func:`.solvers.quadratic_forms`) with a randomized Nyström preconditioner whose rank the solve
grows until the preconditioned system is well conditioned; each variance comes with a rigorous
bound from its true residual (see :func:`bounded_variances`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
from linear_operator.operators import DenseLinearOperator

from .kernels import KernelBuilder
from .solvers import NEGATIVE_VARIANCE_ULPS, SolveInfo, quadratic_forms
from .weight_precond import nystrom

VARIANCE_RTOL = 1e-6  # default relative error bound every CG variance must meet (issue #17's bar)
ROW_BLOCK_BYTES = 64 * 1024**2  # one block of kernel rows (and its temporaries) while the stored kernel is filled
STRUCTURED_TEMPORARIES = 4  # row-block-sized arrays the structured builder holds at once
VARIANCE_PRECOND_START = 128  # first Nyström rank tried for the variance solves
# The rank doubles until the sketch's smallest eigenvalue of s²K is at most this × σ²: the preconditioned
# system's condition number is then about 1 + this, and block CG needs a handful of iterations.
VARIANCE_PRECOND_GAP = 1.0
STORED_PRECOND_COLUMNS = 1024  # columns the stored-kernel fit's preconditioner is sized for (test points per chunk)
COLUMN_BLOCK_BYTES = 512 * 1024**2  # matrix-free products take this many bytes of (columns × P) tangents at once


class StoredKernel(DenseLinearOperator):
    """The training kernel held as a dense matrix; products are counted like the matrix-free operator's."""

    counter = None
    lm = None

    def _matmul(self, rhs: torch.Tensor) -> torch.Tensor:
        if self.counter is not None:
            self.counter.add(self.lm, 1 if rhs.dim() == 1 else rhs.shape[-1])
        return super()._matmul(rhs)


def stored_kernel_bytes(N: int, K: int, P: int, itemsize: int, structured: bool) -> int:
    """Return the bytes the stored kernel needs: the matrix, plus the training Jacobian on the generic path."""
    return N * N * itemsize + (0 if structured else N * K * P * itemsize)


def fill_kernel(kernels: KernelBuilder, X: torch.Tensor, K: int) -> torch.Tensor:
    """Return the (N·K) × (N·K) kernel of X, filled block of rows by block of rows (one matrix at the peak)."""
    lm = kernels.lm
    n = X.shape[0]
    itemsize = torch.finfo(lm.dtype).bits // 8
    rows = max(1, ROW_BLOCK_BYTES // (STRUCTURED_TEMPORARIES * n * K * K * itemsize))
    out = torch.empty(n * K, n * K, dtype=lm.dtype, device=lm.device)
    for s in lm.chunks(n, rows):
        out[s.start * K : s.stop * K] = kernels.matrix(X[s], X)
    return out


def column_blocked(matmul: Callable[[torch.Tensor], torch.Tensor], P: int, itemsize: int) -> Callable:
    """Return matmul applied to at most COLUMN_BLOCK_BYTES / (P·itemsize) columns at a time (matrix-free tangents)."""
    step = max(1, COLUMN_BLOCK_BYTES // max(P * itemsize, 1))

    def apply(V: torch.Tensor) -> torch.Tensor:
        if V.dim() == 1 or V.shape[1] <= step:
            return matmul(V)
        return torch.cat([matmul(V[:, i : i + step]) for i in range(0, V.shape[1], step)], dim=1)

    return apply


def variance_preconditioner(
    kernel_matmul: Callable[[torch.Tensor], torch.Tensor], N: int, noise: float, columns: int,
    dtype: torch.dtype, device: torch.device, start: int = VARIANCE_PRECOND_START,
) -> tuple[Callable[[torch.Tensor], torch.Tensor], int]:
    """Return (Nyström preconditioner for s²K + σ²I, its rank); `kernel_matmul` is V ↦ s²K V.

    The rank starts at `start` and doubles while the sketch's smallest eigenvalue exceeds
    VARIANCE_PRECOND_GAP·σ², up to min(N/2, max(start, columns)): a sketch of r columns costs about
    what r/columns block-CG iterations cost, so it never exceeds the solve it serves.
    """
    cap = max(1, min(N // 2, max(start, columns)))
    rank = max(1, min(start, cap))
    while True:
        sketch = nystrom(kernel_matmul, N, rank, dtype, device)
        if float(sketch.d[-1]) <= VARIANCE_PRECOND_GAP * noise or rank >= cap:
            return sketch.preconditioner(noise), rank
        rank = min(2 * rank, cap)


def bounded_variances(
    matmul: Callable[[torch.Tensor], torch.Tensor], Kx: torch.Tensor, prior: torch.Tensor, prior_var: float,
    noise: float, rtol: float, max_iter: int, precond=None, check=None, tol: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, SolveInfo]:
    """Return (variances, absolute error bounds, SolveInfo) for the columns k of Kx = K(X, x*) (N, c).

    var = prior − s⁴ kᵀ(s²K + σ²I)⁻¹k. With q and its bound from :func:`.solvers.quadratic_forms`
    (λ_min ≥ σ²), the true variance lies in [var − s⁴·bound, var]; the reported bound adds
    NEGATIVE_VARIANCE_ULPS ulps of the prior for the rounding of prior − correction. A column stops
    once its bound is at most rtol × the variance's lower end (or at the rounding level) *and* its
    relative residual is at most `tol` (the solve keeps the engine's CG tolerance as well).
    SolveInfo.max_relative_error_bound is the largest bound / lower end over the columns.
    """
    s4 = prior_var * prior_var
    ulp = NEGATIVE_VARIANCE_ULPS * torch.finfo(Kx.dtype).eps * prior.abs()
    residual_cap = (tol * Kx.norm(dim=0)) ** 2 / noise  # ‖r‖ ≤ tol·‖k‖, as a bound on ‖r‖²/σ²

    def enough(q: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
        err = s4 * bound
        return (err <= torch.maximum(rtol * (prior - s4 * q - err), ulp)) & (bound <= residual_cap)

    q, bound, info = quadratic_forms(matmul, Kx, noise, max_iter, enough, precond, check)
    var = prior - s4 * q
    err = s4 * bound + ulp
    lower = var - err
    rel = torch.where(lower > 0, err / lower.clamp_min(torch.finfo(Kx.dtype).tiny), torch.full_like(err, math.inf))
    worst = float(rel.max()) if rel.numel() else 0.0
    return var, err, dataclasses.replace(info, max_relative_error_bound=worst)
