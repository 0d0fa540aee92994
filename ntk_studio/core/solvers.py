"""The engine's one solver layer: dense Cholesky and one preconditioned block CG, each reporting a SolveInfo.

Every route (GP fits and variance solves, the classifier's Newton steps and Laplace covariances,
resumable checkpointed fits) solves through :func:`cholesky` or :func:`cg`. A solve that misses its
tolerance raises :class:`SolverError` naming the settings to change, or, when the caller asked for
best effort, emits a :class:`SolverWarning` and goes on; jitter added to a factorization is reported
as a :class:`JitterWarning`. Nothing here fails quietly.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .errors import SolverError, SolverWarning

TINY = 1e-300  # guards CG's divisions for columns that have already converged (and zero right-hand sides)
JITTER_STEPS = (0.0, 1e-10, 1e-8, 1e-6)  # relative to the mean diagonal, tried in order
CG_STATE_KEYS = ("x", "r", "z", "p", "rz", "iteration")  # what a checkpoint must hold to resume CG
# Variance = prior − correction: subtracting two accurate numbers errs by about one ulp of the prior,
# so a value below −NEGATIVE_VARIANCE_ULPS ulps means the solve's own error dominates the answer.
NEGATIVE_VARIANCE_ULPS = 8


class JitterWarning(SolverWarning):
    """A Cholesky factorization needed jitter on the diagonal: the solve is of a slightly changed matrix."""


class NegativeVarianceWarning(SolverWarning):
    """Predictive variances came out negative beyond rounding and were clamped to 0."""


@dataclass(frozen=True)
class SolveInfo:
    """What a solve did: solver, product columns used, iterations, true relative residual, jitter."""

    solver: str
    products: int
    residual: float
    jitter: float = 0.0
    converged: bool = True
    iterations: int = 0
    # Variance solves: the largest relative error any returned variance can have (from the true residual).
    max_relative_error_bound: float | None = None
    note: str = ""  # which route ran and why, one line (e.g. the function-space CG variances' route choice)


def cholesky(A: torch.Tensor, what: str = "the system matrix") -> tuple[torch.Tensor, float]:
    """Return (lower Cholesky factor of A, relative jitter added); warn when jitter was needed.

    Raises SolverError if no jitter in JITTER_STEPS makes A positive definite.
    """
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
            if jitter:
                warnings.warn(
                    f"Cholesky of {what} needed jitter {jitter:g} × its mean diagonal: the result solves a "
                    "slightly perturbed system. Raise the noise variance (or the prior variance's ratio to it) "
                    "to avoid it.", JitterWarning, stacklevel=2,
                )
            return L, jitter
    raise SolverError(
        f"{what.capitalize()} is not positive definite even with jitter {JITTER_STEPS[-1]:g}; raise the "
        "noise variance or use float64."
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
    """Return max over columns of ‖A x − b‖ / ‖b‖ (0 for zero columns solved exactly)."""
    r = matmul(x) - b
    bb = b if b.dim() > 1 else b.unsqueeze(-1)
    rr = r if r.dim() > 1 else r.unsqueeze(-1)
    return float((rr.norm(dim=0) / bb.norm(dim=0).clamp_min(TINY)).max())


def merge_infos(infos: list[SolveInfo]) -> SolveInfo:
    """Return one SolveInfo for several solves: summed products, worst residual, iterations and error bound."""
    bounds = [i.max_relative_error_bound for i in infos if i.max_relative_error_bound is not None]
    solvers = list(dict.fromkeys(i.solver for i in infos))
    return SolveInfo(
        "+".join(solvers), sum(i.products for i in infos), max(i.residual for i in infos),
        max(i.jitter for i in infos), all(i.converged for i in infos), max(i.iterations for i in infos),
        max(bounds) if bounds else None, "; ".join(dict.fromkeys(i.note for i in infos if i.note)),
    )


def clamp_variance(var: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """Return var clamped at 0; warn NegativeVarianceWarning when any value is negative beyond rounding."""
    bad = var < -NEGATIVE_VARIANCE_ULPS * torch.finfo(var.dtype).eps * prior.abs()
    if bool(bad.any()):
        worst = float((var / prior.abs().clamp_min(TINY)).min())
        warnings.warn(
            f"{int(bad.sum())} predictive variance(s) were negative beyond rounding (down to {worst:.2e} × the "
            "prior variance) and were clamped to 0: the solves are too inexact. Tighten cg_tol, raise the "
            "noise variance, or use solver='cholesky'.", NegativeVarianceWarning, stacklevel=3,
        )
    return var.clamp_min(0.0)


def cg(
    matmul: Callable[[torch.Tensor], torch.Tensor],
    B: torch.Tensor,
    tol: float,
    max_iter: int,
    precond: Callable[[torch.Tensor], torch.Tensor] | None = None,
    check: Callable[[], None] | None = None,
    state: dict | None = None,
    on_iteration: Callable[[dict], None] | None = None,
    done: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, int, bool]:
    """Return (A⁻¹ B, iterations, converged) by preconditioned CG on every column of B (N, c) at once.

    A column stops at ‖r‖ ≤ tol·‖b‖, or when ``done(x, r)`` (a (c,) bool tensor, optional) says so, or when
    its residual is no longer finite (then `converged` is False);
    a stopped column is no longer multiplied (products and the preconditioner see the active
    columns only). `check` runs before every product (cancel); `state` (keys CG_STATE_KEYS)
    continues an earlier run instead of starting at x = 0, and `on_iteration(state)` receives the
    state after every step (checkpoints).
    """
    M = precond or (lambda t: t)
    if state is not None:
        x, r, z, p, rz = (state[k].to(B.device, B.dtype) for k in CG_STATE_KEYS[:5])
        it = int(state["iteration"])
    else:
        x, r = torch.zeros_like(B), B.clone()
        z = M(r)
        p, rz, it = z.clone(), (r * z).sum(0), 0
    target = tol * B.norm(dim=0)

    def active() -> torch.Tensor:
        act = r.norm(dim=0) > target
        return act & ~done(x, r) if done is not None else act

    act = active()
    while it < max_iter and bool(act.any()):
        if check is not None:
            check()
        every = bool(act.all())
        idx = None if every else act.nonzero()[:, 0]
        pa, ra, rza = (p, r, rz) if every else (p[:, idx], r[:, idx], rz[idx])
        Ap = matmul(pa)
        pAp = (pa * Ap).sum(0)
        alpha = torch.where(pAp > TINY, rza / pAp.clamp_min(TINY), torch.zeros_like(rza))
        ra = ra - alpha * Ap
        za = M(ra)
        rz_new = (ra * za).sum(0)
        pa = za + (rz_new / rza.clamp_min(TINY)) * pa
        # Out-of-place updates: states handed to on_iteration stay valid after the next step.
        if every:
            x, r, z, p, rz = x + alpha * p, ra, za, pa, rz_new
        else:
            x = x.index_add(1, idx, alpha * p[:, idx])
            r, z, p = r.index_copy(1, idx, ra), z.index_copy(1, idx, za), p.index_copy(1, idx, pa)
            rz = rz.index_copy(0, idx, rz_new)
        it += 1
        if on_iteration is not None:
            on_iteration(dict(zip(CG_STATE_KEYS, (x, r, z, p, rz, it))))
        act = active()
    # A NaN/inf residual compares False against the target, so its column stops as if converged: it is not.
    return x, it, not bool(act.any()) and bool(torch.isfinite(r).all())


def solve_cg(matmul: Callable[[torch.Tensor], torch.Tensor], B: torch.Tensor, tol: float, max_iter: int,
             **cg_options) -> tuple[torch.Tensor, SolveInfo]:
    """Return (A⁻¹ B, SolveInfo with the true relative residual) by :func:`cg`; B is (N,) or (N, c).

    ``cg_options`` are :func:`cg`'s keywords (precond, check, state, on_iteration).
    """
    vector = B.dim() == 1
    B2 = B.unsqueeze(-1) if vector else B
    x, it, converged = cg(matmul, B2, tol, max_iter, **cg_options)
    residual = relative_residual(matmul, x, B2)
    info = SolveInfo("cg", (it + 1) * B2.shape[1], residual, converged=converged, iterations=it)
    return (x[:, 0] if vector else x), info


def quadratic_forms(
    matmul: Callable[[torch.Tensor], torch.Tensor],
    B: torch.Tensor,
    floor: float,
    max_iter: int,
    enough: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    precond: Callable[[torch.Tensor], torch.Tensor] | None = None,
    check: Callable[[], None] | None = None,
    restarts: int = 2,
    start: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, SolveInfo]:
    """Return (q, bound, SolveInfo) with 0 ≤ b_jᵀA⁻¹b_j − q_j ≤ bound_j for every column b_j of B (N, c).

    For any W and its true residual R = B − AW, bᵀA⁻¹b = bᵀw + wᵀr + rᵀA⁻¹r, and
    0 ≤ rᵀA⁻¹r ≤ ‖r‖²/λ_min(A) ≤ ‖r‖²/floor when `floor` ≤ λ_min(A) (e.g. σ² for s²K + σ²I): so
    q = bᵀw + wᵀr errs by the residual *squared*. W comes from one block :func:`cg` over all the
    columns; a column stops when ``enough(q, bound)`` holds on CG's recurrence residual, and is
    checked again on the true residual (one more product): a column that fails there is continued
    from its W (at most `restarts` times). SolveInfo.converged says whether every column met `enough`.
    `start` (N, c) is a first W (e.g. from a factorization of A): its true residual is one product, and
    CG runs only for the columns it leaves short of `enough`.
    """
    columns = [0]

    def counted(V: torch.Tensor) -> torch.Tensor:
        columns[0] += V.shape[-1]
        return matmul(V)

    def forms(Bs, W, R):
        return (Bs * W).sum(0) + (W * R).sum(0), (R * R).sum(0) / floor

    W = torch.zeros_like(B) if start is None else start
    R = B.clone() if start is None else B - counted(W)
    q, bound = forms(B, W, R)
    todo = ~enough(q, bound)
    iterations = 0
    for _ in range(restarts + 1):
        if not bool(todo.any()) or iterations >= max_iter:
            break
        idx = todo.nonzero()[:, 0]
        Bs, W0 = B[:, idx], W[:, idx]

        def done(x, r, Bs=Bs, W0=W0):
            return enough(*forms(Bs, W0 + x, r))

        dW, it, _ = cg(counted, R[:, idx], 0.0, max_iter - iterations, precond, check, done=done)
        iterations += it
        W = W.index_add(1, idx, dW)
        R = R.index_copy(1, idx, Bs - counted(W[:, idx]))
        q, bound = forms(B, W, R)
        todo = ~enough(q, bound)
    residual = float((R.norm(dim=0) / B.norm(dim=0).clamp_min(TINY)).max()) if B.shape[1] else 0.0
    info = SolveInfo("cg", columns[0], residual, converged=not bool(todo.any()), iterations=iterations)
    return q, bound, info


def require_converged(info: SolveInfo, what: str, advice: str, best_effort: bool, tol: float) -> None:
    """Raise SolverError (or, with best_effort, warn SolverWarning) unless `info` converged."""
    if info.converged:
        return
    message = (
        f"{what} did not converge: relative residual {info.residual:.2e} after {info.iterations} CG "
        f"iterations (tolerance {tol:g}). {advice}"
    )
    if best_effort:
        warnings.warn(message + " Continuing with the unconverged solve (best_effort=True).", SolverWarning, stacklevel=3)
        return
    raise SolverError(message)


def solve_preconditioner(op, rank: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """Return linear_operator's pivoted-Cholesky preconditioner P⁻¹(·) of rank `rank` for op, or None."""
    if rank <= 0:
        return None
    from linear_operator import settings as lo_settings
    from linear_operator.utils.warnings import NumericalWarning

    with warnings.catch_warnings(record=True) as caught, lo_settings.max_cholesky_size(0), \
            lo_settings.max_preconditioner_size(rank), lo_settings.min_preconditioning_size(1):
        warnings.simplefilter("always", NumericalWarning)
        try:
            precond = op._solve_preconditioner()
        except RuntimeError as exc:  # linear_operator's NotPSDError and friends are bare RuntimeErrors
            raise SolverError(
                f"The rank-{rank} pivoted-Cholesky preconditioner failed ({exc}); lower precond_rank or raise the noise."
            ) from exc
    if precond is None and any(issubclass(w.category, NumericalWarning) for w in caught):
        warnings.warn(
            f"The rank-{rank} preconditioner could not be built (NaNs in its pivoted Cholesky); CG runs "
            "unpreconditioned. Lower precond_rank or raise the noise.", SolverWarning, stacklevel=2,
        )
    return precond
