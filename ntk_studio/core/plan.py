"""Route planning: function or weight space, Cholesky or CG, from a time and memory estimate.

Memory decides whether a dense route may run at all; within the budget, weight-space routes are
chosen by estimated time (:func:`estimate_seconds`). The time model counts flops:

* dense linear algebra at its operation count (JᵀJ: 2·N·P², a Cholesky of order s: s³/3,
  triangular solves: s² a column);
* one per-sample Jacobian row (``vmap(jacrev)``) as JACOBIAN_FLOPS·P, one GGN/kernel product column over
  N rows as PRODUCT_FLOPS·N·P (torch.func runs far below the matmul rate, so these constants are
  large; both measured with ``bench/weight_space.py`` on MLPs, docs/benchmarks.md "Weight space");
* CG as its preconditioner sketch (rank columns) plus CG_ITERATIONS[space] products per right-hand
  side, the variances as one more solve per test point.

Flops become seconds at :func:`flops_per_second` (one 512×512 float64 matmul, timed once per
process); the rate only scales the shown estimate, the choice depends on the flop counts alone.
The plan budgets for `test_points` predictive variances (PLAN_TEST_POINTS unless given), because
a route that fits fast but answers variances slowly is not the faster route for a user who asks
for them.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

from .errors import MemoryBudgetError
from .options import Solver, Space, choice

SPACES = tuple(m.value for m in Space)  # kept for callers that list the choices
SOLVERS = tuple(m.value for m in Solver)
# Solving in weight space costs P×P work; prefer function space until n·K exceeds P by this factor.
WEIGHT_SPACE_RATIO = 1.0
TYPICAL_CG_ITERATIONS = 100
KERNEL_COPIES = 3  # n·K × n·K matrices alive at the peak of a function-space Cholesky fit
WEIGHT_COPIES = 3  # P × P matrices alive at the peak of a weight-space Cholesky fit
PLAN_TEST_POINTS = 1000  # predictive variances the time estimate budgets for (the benchmark size)
# Set from bench/weight_space.py's calibration block (docs/benchmarks.md "Weight space", load 9–14):
JACOBIAN_FLOPS = 1500.0  # flop-equivalents per parameter of one per-sample Jacobian row (measured 1,300–2,600)
PRODUCT_FLOPS = 70.0  # per parameter and row of one GGN/kernel product column (measured 37–101)
# Typical preconditioned CG iterations per solve: weight measured 233 (P = 4,941) and 369 (P = 19,993) at
# n = 2,000 with Nyström rank 64, refinement included; function space ~50 (49–97 in benchmark 2).
CG_ITERATIONS = {"function": 50, "weight": 250}
STORED_CG_TOL = 1e-8  # the GP's default cg_tol, for the planned block-CG iterations of the variances
STRUCTURED_KERNEL_FLOPS = 8.0  # a structured kernel entry ≈ this · √P flops (MLP-shaped guess; display only)
CALIBRATION_SIZE = 512


@dataclass(frozen=True)
class Plan:
    """The chosen route with its estimated cost; shown to the user before a run."""

    space: str
    solver: str
    n: int
    outputs: int
    params: int
    est_bytes: int
    est_products: int
    budget_bytes: int
    reason: str
    prefix_note: str = ""  # the frozen-prefix route: "frozen prefix cached: …" or "no frozen prefix: <why>"
    est_seconds: float = 0.0  # fit plus PLAN_TEST_POINTS (or the asked number of) variances, from the flop model

    @property
    def size(self) -> int:
        """Return the order of the linear system solved (n·K or P)."""
        return self.n * self.outputs if self.space == "function" else self.params

    def describe(self) -> str:
        """Return a one-line human summary of the plan."""
        return (
            f"{self.space}-space {self.solver}: system {self.size:,}×{self.size:,}, "
            f"~{_fmt_bytes(self.est_bytes)} (budget {_fmt_bytes(self.budget_bytes)}), "
            f"~{self.est_products:,} product columns, ~{_fmt_seconds(self.est_seconds)} est. — {self.reason}"
            + (f"; {self.prefix_note}" if self.prefix_note else "")
        )


def _fmt_bytes(b: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if b < 1024 or unit == "TiB":
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
        b /= 1024
    return f"{b:.1f} TiB"


def _fmt_seconds(t: float) -> str:
    return f"{t * 1000:.0f} ms" if t < 1 else f"{t:.1f} s" if t < 100 else f"{t:,.0f} s"


@functools.cache
def flops_per_second() -> float:
    """Return this process's float64 matmul rate in flop/s (one CALIBRATION_SIZE² product, best of 3)."""
    import torch

    a = torch.ones(CALIBRATION_SIZE, CALIBRATION_SIZE, dtype=torch.float64)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - start)
    return 2 * CALIBRATION_SIZE**3 / max(best, 1e-9)


def estimate_flops(space: str, solver: str, n: int, K: int, P: int, dense_jacobian: bool, rank: int,
                   test_points: int, budget_bytes: int | None = None, itemsize: int = 8) -> float:
    """Return the flop-equivalents of a fit plus `test_points` predictive variances on one route (module doc).

    With `budget_bytes`, the function-space CG route is costed as it will run: on the stored kernel when
    it fits the budget (see :func:`stored_cg_flops`), matrix-free otherwise.
    """
    N, m = n * K, test_points * K
    product = PRODUCT_FLOPS * N * P  # one GGN / kernel product column over the training rows
    if space == "function" and solver == "cholesky":
        kernel = _kernel_flops(N, P, dense_jacobian)
        cross = kernel * m / max(N, 1)  # the test rows' kernel against the training rows
        return kernel + N**3 / 3 + cross + m * N * N
    if space == "function" and budget_bytes is not None:
        stored = stored_cg_flops(n, K, P, dense_jacobian, test_points, budget_bytes, itemsize)
        if stored is not None:
            return stored[0]
    if space == "weight" and solver == "cholesky":
        jac = JACOBIAN_FLOPS * (N + m) * P
        return jac + 2.0 * N * P * P + P**3 / 3 + m * P * P
    iterations = CG_ITERATIONS[space]
    return (rank + iterations * (1 + m)) * product + JACOBIAN_FLOPS * m * P


def _kernel_flops(N: int, P: int, dense_jacobian: bool) -> float:
    """Return the flops of filling an N × N training kernel (per-sample Jacobians, or the structured features)."""
    return JACOBIAN_FLOPS * N * P + 2.0 * N * N * P if dense_jacobian else STRUCTURED_KERNEL_FLOPS * N * N * P**0.5


def stored_cg_flops(n: int, K: int, P: int, dense_jacobian: bool, test_points: int, budget_bytes: int,
                    itemsize: int) -> tuple[float, int] | None:
    """Return (flops, bytes) of the function-space CG route on its stored kernel, or None when it is not stored.

    The same rules as the GP (:mod:`.cg_variance`): the kernel is stored when it fits the budget; with a
    Cholesky factor beside it the fit and the variances use the factor (its flops, two products for the
    fit's CG), else the fit iterates on the stored kernel and the variances are block CG.
    """
    from . import cg_variance  # lazy: cg_variance imports this module's formatting

    stored = cg_variance.stored_kernel_bytes(n, K, P, itemsize, not dense_jacobian)
    if stored > budget_bytes:
        return None
    N, m = n * K, test_points * K
    fill = _kernel_flops(N, P, dense_jacobian)
    cross = fill * m / max(N, 1)
    factor = cg_variance.factor_bytes(N, itemsize)  # the same rule as cg_variance.variance_route
    if stored + factor <= budget_bytes:
        return fill + cross + cg_variance.factored_flops(N, m) + 4.0 * N * N, stored + factor
    fit = CG_ITERATIONS["function"] * 2.0 * N * N
    variances = cg_variance.block_cg_flops(N, m, STORED_CG_TOL, cg_variance.VARIANCE_PRECOND_START)
    return fill + cross + fit + variances, stored


def estimate_seconds(*args, **kwargs) -> float:
    """Return :func:`estimate_flops` in seconds at this process's :func:`flops_per_second`."""
    return estimate_flops(*args, **kwargs) / flops_per_second()


def cholesky_bytes(space: str, n: int, K: int, P: int, itemsize: int, dense_jacobian: bool) -> int:
    """Return the bytes a Cholesky route materializes (matrix, factor, and J when it is needed)."""
    N = n * K
    if space == "function":
        jac = N * P * itemsize if dense_jacobian else 0
        # Kernel, system matrix / factor, and one kernel-sized temporary while it is built.
        return KERNEL_COPIES * N * N * itemsize + jac
    # JᵀJ (kept for refits), the system matrix and its factor.
    return WEIGHT_COPIES * P * P * itemsize + min(N, 1024) * P * itemsize


def cg_bytes(space: str, n: int, K: int, P: int, itemsize: int, rank: int, chunk: int) -> int:
    """Return the bytes a CG route keeps (vectors, preconditioner, one chunk of tangents)."""
    N = n * K
    if space == "function":
        return (N * (rank + 8) + P * 16 + chunk * K * P // max(chunk, 1)) * itemsize
    return P * (16 + rank) * itemsize  # CG vectors and the Nyström preconditioner's P × rank basis


def make_plan(
    n: int,
    K: int,
    P: int,
    space: str = "auto",
    solver: str = "auto",
    budget_bytes: int = 2 * 1024**3,
    itemsize: int = 8,
    dense_jacobian: bool = True,
    rank: int = 50,
    chunk: int = 1024,
    *,
    test_points: int = PLAN_TEST_POINTS,
    dual: bool = True,
) -> Plan:
    """Return the route for n samples, K outputs, P parameters under a memory budget.

    Function space against weight space: the smaller system (n·K against P), or as forced. In function
    space the solver follows the memory budget. In weight space it is the fastest route by
    :func:`estimate_flops` among those within the budget: the dense P × P Cholesky, Nyström-preconditioned
    CG, and, when weight space is forced with P > n·K and the solver left to the planner, the same
    posterior through the dual identity (JᵀJ + λI)⁻¹Jᵀ = Jᵀ(JJᵀ + λI)⁻¹, i.e. the n·K × n·K
    function-space system; the reason says which and why. `dual=False` keeps forced weight space in
    weight space (independent outputs have no weight-space form to take the dual of).
    """
    space, solver = choice(Space, space, "space").value, choice(Solver, solver, "solver").value
    N = n * K
    reasons = []
    forced_weight = space == "weight"
    if space == "auto":
        space = "function" if N <= WEIGHT_SPACE_RATIO * P else "weight"
        reasons.append(f"n·K = {N:,} {'≤' if space == 'function' else '>'} P = {P:,}")

    def seconds(sp: str, so: str) -> float:
        return estimate_seconds(sp, so, n, K, P, dense_jacobian, rank, test_points, budget_bytes, itemsize)

    if space == "weight" and solver == "auto":
        space, solver, why = _fastest_weight_route(n, K, P, budget_bytes, itemsize, dense_jacobian,
                                                   forced_weight and dual, test_points, seconds)
        reasons.append(why)
    chol = cholesky_bytes(space, n, K, P, itemsize, dense_jacobian)
    if solver == "auto":
        solver = "cholesky" if chol <= budget_bytes else "cg"
        reasons.append(
            f"dense factor {'fits' if solver == 'cholesky' else 'exceeds'} the memory budget"
        )
    elif solver == "cholesky" and chol > budget_bytes:
        raise MemoryBudgetError(
            f"The {space}-space Cholesky route needs ~{_fmt_bytes(chol)}, over the budget of "
            f"{_fmt_bytes(budget_bytes)}. Use solver='cg', a smaller parameter subset, or raise memory_budget."
        )
    size = N if space == "function" else P
    if solver == "cholesky":
        est_bytes, products = chol, size
    else:
        stored = stored_cg_flops(n, K, P, dense_jacobian, test_points, budget_bytes, itemsize) if space == "function" else None
        est_bytes = cg_bytes(space, n, K, P, itemsize, rank, chunk) + (stored[1] if stored else 0)
        products = min(size, TYPICAL_CG_ITERATIONS) + rank
    return Plan(space, solver, n, K, P, int(est_bytes), int(products), int(budget_bytes),
                "; ".join(reasons) or "as requested", est_seconds=seconds(space, solver))


def _fastest_weight_route(n, K, P, budget_bytes, itemsize, dense_jacobian, forced, test_points, seconds):
    """Return (space, solver, reason) of the fastest weight-space route within the memory budget."""
    N = n * K
    routes = {("weight", "cg"): "Nyström-preconditioned CG"}
    if cholesky_bytes("weight", n, K, P, itemsize, dense_jacobian) <= budget_bytes:
        routes[("weight", "cholesky")] = "P × P Cholesky"
    if forced and P > N:
        fits = cholesky_bytes("function", n, K, P, itemsize, dense_jacobian) <= budget_bytes
        routes[("function", "cholesky" if fits else "cg")] = "dual identity"
    est = {route: seconds(*route) for route in routes}
    best = min(est, key=est.get)
    others = ", ".join(f"{routes[r]} ~{_fmt_seconds(t)}" for r, t in est.items() if r != best)
    why = f"fastest weight-space route by estimated time (fit and {test_points:,} variances): {routes[best]}"
    if best[0] == "function":
        why = (f"weight space asked, P = {P:,} > n·K = {N:,}: (JᵀJ + λI)⁻¹Jᵀ = Jᵀ(JJᵀ + λI)⁻¹ solves the same "
               f"posterior in the n·K × n·K system (dual identity, {best[1]})")
    if others:
        why += f"; against {others}"
    if ("weight", "cholesky") not in routes:
        why += "; the P × P factor exceeds the memory budget"
    return best[0], best[1], why
