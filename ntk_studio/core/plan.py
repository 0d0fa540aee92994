"""Route planning: function or weight space, Cholesky or CG, from a cost and memory estimate."""

from __future__ import annotations

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

    @property
    def size(self) -> int:
        """Return the order of the linear system solved (n·K or P)."""
        return self.n * self.outputs if self.space == "function" else self.params

    def describe(self) -> str:
        """Return a one-line human summary of the plan."""
        return (
            f"{self.space}-space {self.solver}: system {self.size:,}×{self.size:,}, "
            f"~{_fmt_bytes(self.est_bytes)} (budget {_fmt_bytes(self.budget_bytes)}), "
            f"~{self.est_products:,} product columns — {self.reason}"
            + (f"; {self.prefix_note}" if self.prefix_note else "")
        )


def _fmt_bytes(b: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if b < 1024 or unit == "TiB":
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
        b /= 1024
    return f"{b:.1f} TiB"


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
    return P * 16 * itemsize


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
) -> Plan:
    """Return the route for n samples, K outputs, P parameters under a memory budget."""
    space, solver = choice(Space, space, "space").value, choice(Solver, solver, "solver").value
    N = n * K
    reasons = []
    if space == "auto":
        space = "function" if N <= WEIGHT_SPACE_RATIO * P else "weight"
        reasons.append(f"n·K = {N:,} {'≤' if space == 'function' else '>'} P = {P:,}")
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
        est_bytes = cg_bytes(space, n, K, P, itemsize, rank, chunk)
        products = min(size, TYPICAL_CG_ITERATIONS) + (rank if space == "function" else 0)
    return Plan(space, solver, n, K, P, int(est_bytes), int(products), int(budget_bytes), "; ".join(reasons) or "as requested")
