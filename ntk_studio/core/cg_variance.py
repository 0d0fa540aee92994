"""Function-space CG pieces: the stored kernel operator, the variance solves' preconditioner, bounded variances.

The CG route answers kernel products matrix-free (vjp then jvp) unless the n·K × n·K kernel itself
fits the memory budget: then it is filled once, block of rows by block of rows through the kernel
builder (structured Linear-layer form or per-sample Jacobians), and every product is one matrix
product. Posterior variances of all test points of a chunk are one block solve
(:func:`.solvers.quadratic_forms`) with a randomized Nyström preconditioner whose rank the solve
grows until the preconditioned system is well conditioned; each variance comes with a rigorous
bound from its true residual (see :func:`bounded_variances`).

When the kernel is stored and a Cholesky factor of s²K + σ²I fits beside it, the variances may be
answered by that factor instead (:func:`variance_route` chooses by estimated flops, see
:func:`factored_flops` and :func:`block_cg_flops`): factored once per fit in place
(:func:`factor_system`), every test column costs two triangular solves plus one product for its true
residual, and the same bound is reported; CG, preconditioned by the factor, continues any column the
factor leaves short of the bound.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from linear_operator.operators import DenseLinearOperator

from .kernels import KernelBuilder
from .plan import _fmt_bytes, _fmt_seconds, flops_per_second
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
# Block CG's iterations are planned at the condition number the variance preconditioner aims for (1 + GAP):
# CG's bound 2ρᵏ, ρ = (√κ − 1)/(√κ + 1), reaching cg_tol. At κ = 2 and cg_tol 1e-8 that is 11; measured 11–12
# (n = 2,000, P = 17,793, docs/benchmarks.md "Function-space CG variances").
PLANNED_CONDITION = 1.0 + VARIANCE_PRECOND_GAP


class StoredKernel(DenseLinearOperator):
    """The training kernel held as a dense matrix; products are counted like the matrix-free operator's."""

    counter = None
    lm = None

    def _matmul(self, rhs: torch.Tensor) -> torch.Tensor:
        if self.counter is not None:
            self.counter.add(self.lm, 1 if rhs.dim() == 1 else rhs.shape[-1])
        return super()._matmul(rhs)


def stored_kernel_bytes(n: int, K: int, P: int, itemsize: int, structured: bool) -> int:
    """Return the bytes the stored kernel of n rows and K outputs needs: the n·K × n·K matrix, plus the training
    Jacobian (n·K × P) on the generic path."""
    N = n * K
    return N * N * itemsize + (0 if structured else N * P * itemsize)


def factor_bytes(N: int, itemsize: int) -> int:
    """Return the bytes of the N × N Cholesky factor kept beside the stored kernel (the factored variance route)."""
    return N * N * itemsize


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
    noise: float, rtol: float, max_iter: int, precond=None, check=None, tol: float = 0.0, start=None,
) -> tuple[torch.Tensor, torch.Tensor, SolveInfo]:
    """Return (variances, absolute error bounds, SolveInfo) for the columns k of Kx = K(X, x*) (N, c).

    var = prior − s⁴ kᵀ(s²K + σ²I)⁻¹k. With q and its bound from :func:`.solvers.quadratic_forms`
    (λ_min ≥ σ²), the true variance lies in [var − s⁴·bound, var]; the reported bound adds
    NEGATIVE_VARIANCE_ULPS ulps of the prior for the rounding of prior − correction. A column stops
    once its bound is at most rtol × the variance's lower end (or at the rounding level) *and* its
    relative residual is at most `tol` (the solve keeps the engine's CG tolerance as well).
    SolveInfo.max_relative_error_bound is the largest bound / lower end over the columns. `start` is a
    first iterate W ≈ (s²K + σ²I)⁻¹Kx (the factored route's), checked by its true residual.
    """
    s4 = prior_var * prior_var
    ulp = NEGATIVE_VARIANCE_ULPS * torch.finfo(Kx.dtype).eps * prior.abs()
    residual_cap = (tol * Kx.norm(dim=0)) ** 2 / noise  # ‖r‖ ≤ tol·‖k‖, as a bound on ‖r‖²/σ²

    def enough(q: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
        err = s4 * bound
        return (err <= torch.maximum(rtol * (prior - s4 * q - err), ulp)) & (bound <= residual_cap)

    q, bound, info = quadratic_forms(matmul, Kx, noise, max_iter, enough, precond, check, start=start)
    var = prior - s4 * q
    err = s4 * bound + ulp
    lower = var - err
    rel = torch.where(lower > 0, err / lower.clamp_min(torch.finfo(Kx.dtype).tiny), torch.full_like(err, math.inf))
    worst = float(rel.max()) if rel.numel() else 0.0
    return var, err, dataclasses.replace(info, max_relative_error_bound=worst)


def factored_flops(N: int, columns: int) -> float:
    """Return the flops of the factored variances: the factor (N³/3), then per column two triangular solves and one product (4N²)."""
    return N**3 / 3 + 4.0 * N * N * columns


def planned_cg_iterations(tol: float) -> int:
    """Return the block-CG iterations planned for a relative residual `tol` at PLANNED_CONDITION (CG's 2ρᵏ bound)."""
    root = math.sqrt(PLANNED_CONDITION)
    rho = (root - 1.0) / (root + 1.0)
    return max(1, math.ceil(math.log(2.0 / max(tol, 1e-300)) / -math.log(rho)))


def sketch_ranks(N: int, columns: int, start: int) -> list[int]:
    """Return the Nyström ranks :func:`variance_preconditioner` tries at most (it doubles up to its cap)."""
    cap = max(1, min(N // 2, max(start, columns)))
    ranks = [max(1, min(start, cap))]
    while ranks[-1] < cap:
        ranks.append(min(2 * ranks[-1], cap))
    return ranks


def block_cg_flops(N: int, columns: int, tol: float, start: int, sketched_rank: int | None = None) -> float:
    """Return the planned flops of block-CG variances on a stored kernel (module doc of :func:`variance_route`).

    The sketch (when not built yet) counts every doubling to its cap — an upper estimate, the doubling
    stops earlier when the spectrum allows; each column then costs planned_cg_iterations(tol) products
    (2N²) and preconditioner applications (4N·rank), and one product for its true residual.
    """
    ranks = sketch_ranks(N, columns, start) if sketched_rank is None else [sketched_rank]
    sketch = 0.0 if sketched_rank is not None else sum(2.0 * N * N * r + 4.0 * N * r * r for r in ranks)
    rank = ranks[-1]
    return sketch + columns * (planned_cg_iterations(tol) * (2.0 * N * N + 4.0 * N * rank) + 2.0 * N * N)


@dataclass(frozen=True)
class VarianceRoute:
    """How the function-space CG route answers variances: `factored` (stored kernel's Cholesky) or block CG; `note` says why."""

    factored: bool
    note: str


def variance_route(
    N: int, columns: int, itemsize: int, budget: int, stored_bytes: int, world_size: int, tol: float, start: int,
    sketched_rank: int | None = None, failed: str = "", basis: str = "",
) -> VarianceRoute:
    """Return the variance route for an N × N system and `columns` expected variances (test points × outputs).

    Block CG whenever the kernel is not stored (over the budget, or split across ranks: the memory
    reason the CG route exists), when a factor beside the stored kernel exceeds the budget, or when
    the factorization failed (`failed` says why); otherwise the cheaper by estimated flops of
    :func:`factored_flops` and :func:`block_cg_flops` (a sketch already built is not counted again),
    shown in seconds at this process's matmul rate. `basis` says where `columns` came from.
    """
    factor = factor_bytes(N, itemsize)
    if world_size > 1:
        return VarianceRoute(False, f"variances: block CG, matrix-free (the kernel is split across {world_size} ranks)")
    if stored_bytes > budget:
        return VarianceRoute(False, f"variances: block CG, matrix-free (storing the kernel needs "
                                    f"{_fmt_bytes(stored_bytes)} > budget {_fmt_bytes(budget)})")
    if stored_bytes + factor > budget:
        return VarianceRoute(False, f"variances: block CG on the stored kernel (a factor beside it needs "
                                    f"{_fmt_bytes(stored_bytes + factor)} > budget {_fmt_bytes(budget)})")
    if failed:
        return VarianceRoute(False, f"variances: block CG on the stored kernel (its {failed})")
    rate = flops_per_second()
    fac, blk = factored_flops(N, columns) / rate, block_cg_flops(N, columns, tol, start, sketched_rank) / rate
    counts = f"for {columns:,} variance{'s' if columns != 1 else ''}" + (f", {basis}" if basis else "")
    if fac <= blk:
        return VarianceRoute(True, f"variances: stored kernel factored once (est {_fmt_seconds(fac)} vs block CG "
                                   f"{_fmt_seconds(blk)} {counts})")
    return VarianceRoute(False, f"variances: block CG on the stored kernel (est {_fmt_seconds(blk)} vs factoring "
                                f"{_fmt_seconds(fac)} {counts})")


def factor_system(Kxx: torch.Tensor, prior_var: float, noise: float) -> tuple[torch.Tensor | None, str]:
    """Return (lower Cholesky factor of s²K + σ²I, "") or (None, why it failed); one new matrix at the peak.

    The factor overwrites the system matrix in place (LAPACK's potrf on its column-major view), so the
    stored kernel plus the factor is all the memory it takes. No jitter: a matrix that is not positive
    definite in the working precision is reported, and the caller falls back to block CG.
    """
    A = Kxx * prior_var
    A.diagonal().add_(noise)
    info = torch.empty((), dtype=torch.int32, device=A.device)
    # A is symmetric: its transpose (column-major) is A, and the upper factor U = Lᵀ written there is L in A.
    torch.linalg.cholesky_ex(A.mT, upper=True, out=(A.mT, info))
    if int(info) != 0 or not bool(torch.isfinite(A.diagonal()).all()):
        dtype = str(A.dtype).removeprefix("torch.")
        return None, (f"factorization failed: s²K + σ²I is not positive definite in {dtype} (leading minor "
                      f"{int(info)}); use float64 or raise the noise")
    return A, ""
