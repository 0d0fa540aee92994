"""Choosing the linearized classifier's prior variance(s): held-out likelihood and per-module evidence.

Everything here works on the dense function-space form of the linearized classifier. With the
unit-prior kernel K₁ = J Jᵀ (n·C × n·C, sample-major) and Δθ ~ N(0, s² I), the logits' prior is
N(F0, s² K₁), so a refit at another s² (or on a subset of the rows) only slices and rescales one
matrix: the Jacobian is computed once. With one prior variance s_m² per module, the prior is
N(F0, Σ_m s_m² K_m) where K_m = J_m J_mᵀ uses that module's columns of J only.

:func:`fit_dense` is the Laplace fit of :mod:`.laplace`'s function route (Newton in the increment
form Δa = −(r − S B⁻¹ S K r), B = I + S K S, S = Λ^{1/2}) written for a dense kernel; the engine's
classifier and this fit agree to rounding (tests/test_core_calibration.py).

- :func:`select` (the engine's, via :func:`fit_selected`): the classifier's hyperparameters by name.
  The default 'evidence_tau' takes s² from the Laplace evidence (:func:`evidence_search`), which keeps
  the MAP's accuracy, and then a logit temperature T and a covariance scale τ from the K-fold held-out
  NLL of the predictive N(μ/T, τΣ/T²) (:class:`HeldoutProfile`, :func:`best_calibration`): the evidence
  says nothing about the spread of the predictive on new rows. 'heldout' / 'heldout_1se' also take s²
  from the held-out NLL. Every search is bounded and continuous in log space (:func:`log_search`: a
  coarse grid, then golden-section), and reports whether the optimum sits on a bound. On tiny n the
  folds are stratified by class. :func:`heldout_search` is the old discrete grid search.
- :func:`module_evidence_search`: per-module prior variances by coordinate ascent on the Laplace
  evidence over the same grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .errors import SettingsError, ShapeError
from .laplace import block_apply, point_blocks, softmax_stats, sym_sqrt
from .linearized import LinearizedModel

DEFAULT_FOLDS = 5
# How the held-out predictions that choose T and τ (and s² for 'heldout') are made (see HeldoutProfile):
# 'kfold' — one fit per fold of `folds` stratified folds; 'loo' — exact leave-one-out, one fit per row;
# 'laplace_loo' — leave-one-out from the full-data Laplace fit alone (the cavity of each row, no refit).
CV_SCHEMES = ("kfold", "loo", "laplace_loo")
DEFAULT_CV = "kfold"
# The old discrete grids (the bench's 'held-out s²' row); the engine searches continuously in the bounds.
HELDOUT_GRID = tuple(10.0**k for k in range(-4, 5))
COV_SCALES = tuple(10.0 ** (k / 4) for k in range(-24, 3))  # quarter decades, 1e-6 … √10
S2_BOUNDS = (1e-6, 1e6)  # prior variance s², searched in log space
TAU_BOUNDS = (1e-8, 1e2)  # logit-covariance scale τ; at 1e-8 the predictive is the MAP's to ~1e-8
TEMP_BOUNDS = (0.1, 10.0)  # logit temperature T: the predictive is that of the logits / T
TEMP_STEP = 0.5  # decades between the coarse temperatures
TEMP_PRIOR_SD = 1.0  # ln T ~ N(0, 1): T within [1/e, e] a priori at one sd (see temperature_penalty)
TABLE_SCALES = tuple(10.0**k for k in range(-8, 3))  # the τ columns of hyper_info['heldout_nll']
COARSE_STEP = 1.0  # decades between the coarse points of log_search
GOLDEN_TOL = 0.05  # decades: golden-section stops when the bracket is this narrow (factor 1.12)
SELECTIONS = ("heldout", "evidence_tau", "heldout_1se")
DEFAULT_SELECTION = "evidence_tau"
SELECTION_METHODS = {
    "heldout": "(s², τ) by K-fold held-out NLL (bounded log-space search)",
    "evidence_tau": "s² by the Laplace evidence, τ by K-fold held-out NLL",
    "heldout_1se": "held-out (s², τ) if better than the evidence s² by one standard error, else evidence s² + held-out τ",
}
DEFAULT_SWEEPS = 2
GRAD_TOL = 1e-9
MAX_NEWTON = 100
MAX_HALVINGS = 40
ARMIJO_C = 1e-4
FOLD_SEED = 0


@dataclass(frozen=True)
class DenseFit:
    """A dense function-space Laplace fit: dual weights a, MAP logits, S = Λ^{1/2}, chol(B), evidence."""

    a: torch.Tensor  # (n·C,), Δθ = Jᵀ a in the scaled parametrization; MAP logits F = F0 + K a
    F: torch.Tensor  # (n, C)
    S: torch.Tensor  # (n, C, C)
    L: torch.Tensor  # Cholesky factor of B = I + S K S
    objective: float  # Σ CE + ½ aᵀ K a at the MAP
    evidence: float  # −objective − ½ log det B
    iterations: int
    converged: bool


def _ce(F: torch.Tensor, y: torch.Tensor) -> float:
    return float(-torch.log_softmax(F, -1).gather(1, y[:, None]).sum())


def fit_dense(K: torch.Tensor, F0: torch.Tensor, y: torch.Tensor, grad_tol: float = GRAD_TOL,
              max_newton: int = MAX_NEWTON, a0: torch.Tensor | None = None) -> DenseFit:
    """Return the Laplace fit of logits F0 + f, f ~ N(0, K) (K: n·C × n·C sample-major), labels y.

    `a0` warm-starts Newton (the objective is convex, so the optimum does not depend on it).
    """
    n, C = F0.shape
    if K.shape != (n * C, n * C) or y.shape != (n,):
        raise ShapeError(f"K must be ({n * C}, {n * C}) and y ({n},); got {tuple(K.shape)} and {tuple(y.shape)}.")
    Y = torch.nn.functional.one_hot(y, C).to(K.dtype)
    a = torch.zeros(n * C, dtype=K.dtype, device=K.device) if a0 is None else a0.clone()
    h = K @ a
    g0, it, converged = None, 0, False
    while True:
        F = F0 + h.reshape(n, C)
        p, lam = softmax_stats(F)
        r = (p - Y).reshape(-1) + a
        Kr = K @ r
        gnorm = float((r @ Kr).clamp_min(0.0).sqrt())
        g0 = gnorm if g0 is None else g0
        if gnorm <= grad_tol * max(1.0, g0):
            converged = True
            break
        if it >= max_newton:
            break
        S = sym_sqrt(lam)
        B = _b_matrix(K, S)
        z = torch.cholesky_solve(block_apply(S, Kr).unsqueeze(-1), torch.linalg.cholesky(B))[:, 0]
        da = block_apply(S, z) - r
        du = K @ da
        q0, q1, q2 = float(a @ h), float(da @ h), float(da @ du)
        slope = float(((p - Y).reshape(-1) * du).sum()) + q1
        if not slope < 0:
            break

        def phi(t: float) -> float:
            return _ce(F + t * du.reshape(n, C), y) + 0.5 * (q0 + 2 * t * q1 + t * t * q2)
        f0, t = phi(0.0), 1.0
        for _ in range(MAX_HALVINGS):
            if phi(t) <= f0 + ARMIJO_C * t * slope or phi(t) - f0 <= 1e-14 * abs(f0):
                break
            t *= 0.5
        a, h, it = a + t * da, h + t * du, it + 1
    F = F0 + h.reshape(n, C)
    S = sym_sqrt(softmax_stats(F)[1])
    L = torch.linalg.cholesky(_b_matrix(K, S))
    objective = _ce(F, y) + 0.5 * float(a @ h)
    evidence = -objective - float(torch.log(L.diagonal()).sum())
    return DenseFit(a, F, S, L, objective, evidence, it, converged)


def _b_matrix(K: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    """Return B = I + S K S (eigenvalues ≥ 1)."""
    B = block_apply(S, block_apply(S, K).T).T
    B.diagonal().add_(1.0)
    return B


def predict_dense(fit: DenseFit, F0_test: torch.Tensor, K_cross: torch.Tensor,
                  K_test_blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (mean (m, C), covariance (m, C, C)) of the test logits.

    K_cross is K(X_train, X_test) (n·C × m·C), K_test_blocks the per-point prior blocks (m, C, C).
    """
    C = F0_test.shape[1]
    mean = F0_test + (K_cross.T @ fit.a).reshape(-1, C)
    V = torch.linalg.solve_triangular(fit.L, block_apply(fit.S, K_cross), upper=False)
    cov = K_test_blocks - point_blocks(V, V, C)
    return mean, 0.5 * (cov + cov.transpose(-1, -2))


# ------------------------------------------------------------------ kernels from the linearized model
def module_columns(lm: LinearizedModel) -> dict[str, list[int]]:
    """Return, per owning module, the column indices of its parameters in the flat Jacobian."""
    cols: dict[str, list[int]] = {}
    start = 0
    for name, size in zip(lm.subset.names, lm.subset.sizes):
        cols.setdefault(name.rpartition(".")[0], []).extend(range(start, start + size))
        start += size
    return cols


def module_kernels(lm: LinearizedModel, X: torch.Tensor) -> tuple[list[str], torch.Tensor]:
    """Return (module names, unit-prior kernels K_m = J_m J_mᵀ stacked as (M, n·C, n·C))."""
    J = lm.jacobian(X)
    J = J.reshape(-1, J.shape[-1])
    names, parts = [], []
    for name, cols in module_columns(lm).items():
        Jm = J[:, cols]
        names.append(name)
        parts.append(Jm @ Jm.T)
    return names, torch.stack(parts)


# ------------------------------------------------------------------------------ folds and scoring
def stratified_folds(y: torch.Tensor, folds: int, seed: int = FOLD_SEED) -> list[torch.Tensor]:
    """Return `folds` disjoint row-index sets; each class is dealt round-robin after a seeded shuffle."""
    counts = torch.bincount(y)
    folds = int(min(folds, max(2, int(counts[counts > 0].max()))))
    gen = torch.Generator().manual_seed(seed)
    fold_of = torch.empty(len(y), dtype=torch.int64)
    offset = 0
    for c in torch.unique(y).tolist():
        rows = torch.nonzero(y == c).flatten()
        rows = rows[torch.randperm(len(rows), generator=gen)]
        fold_of[rows] = (torch.arange(len(rows)) + offset) % folds
        offset += len(rows)  # so that classes with one example do not all land in fold 0
    return [torch.nonzero(fold_of == k).flatten() for k in range(folds) if bool((fold_of == k).any())]


def _rows(idx: torch.Tensor, C: int) -> torch.Tensor:
    return (idx[:, None] * C + torch.arange(C)).reshape(-1)


def fold_predictions(K: torch.Tensor, F0: torch.Tensor, y: torch.Tensor, folds: Sequence[torch.Tensor],
                     check: Callable[[], None] | None = None, warm: dict | None = None,
                     start: torch.Tensor | None = None) -> list[tuple]:
    """Return [(held-out rows, mean (m, C), cov (m, C, C))] per fold: one Laplace fit on the other rows each.

    The logits' prior is N(F0, K). `warm` (fold index -> (K's scale, a)) carries each fold's MAP to
    the next prior scale as a Newton start with the same logits (a rescaled); it is updated. Folds
    without a warm entry start from `start` (the full-data fit's dual weights on K) restricted to
    their rows. The objective is convex: starts change the iterations, not the fit.
    """
    n, C = F0.shape
    Kv = K.reshape(n, C, n, C)
    out = []
    for f, te in enumerate(folds):
        if check is not None:
            check()
        mask = torch.ones(n, dtype=torch.bool)
        mask[te] = False
        tr = torch.nonzero(mask).flatten()
        rt, rs = _rows(tr, C).to(K.device), _rows(te, C).to(K.device)
        scale = float(K.diagonal().mean())
        a0 = None if start is None else start[rt]
        if warm is not None and f in warm:
            previous, a_prev = warm[f]
            a0 = a_prev * (previous / scale)
        fit = fit_dense(K[rt][:, rt], F0[tr], y[tr], a0=a0)
        if warm is not None:
            warm[f] = (scale, fit.a)
        mean, cov = predict_dense(fit, F0[te], K[rt][:, rs], Kv[te, :, te, :])
        out.append((te, mean, cov))
    return out


def gather_rows(preds: Sequence[tuple], n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the folds' held-out (mean (n, C), cov (n, C, C)) in row order."""
    mean, cov = preds[0][1], preds[0][2]
    M = mean.new_empty((n, mean.shape[1]))
    V = cov.new_empty((n, *cov.shape[1:]))
    for te, m, c in preds:
        M[te.to(M.device)], V[te.to(V.device)] = m, c
    return M, V


def loo_folds(n: int) -> list[torch.Tensor]:
    """Return n folds of one row each (exact leave-one-out)."""
    return [torch.tensor([i]) for i in range(n)]


def laplace_loo(fit: DenseFit, K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return every row's approximate leave-one-out predictive (mean (n, C), cov (n, C, C)) from one full fit.

    The Laplace posterior is the prior times one Gaussian site per row, the row's log-likelihood
    expanded at the MAP: precision Λ_i, gradient Y_i − p_i = a_i. Dividing row i's site out of its
    posterior marginal N(F_i, Σ_i) leaves its cavity: Σ_c = (Σ_i⁻¹ − Λ_i)⁻¹ = Σ_i + Σ_i S_i (I − S_i Σ_i
    S_i)⁻¹ S_i Σ_i (S_i = Λ_i^{1/2}; I − S_i Σ_i S_i is positive definite), mean F_i − Σ_c a_i. This is
    exact leave-one-out when the sites do not move (a Gaussian likelihood); for softmax it leaves the
    other rows' MAP where it was (tests/test_core_calibration.py measures it against exact refits).
    """
    n, C = fit.F.shape
    blocks = K.reshape(n, C, n, C).diagonal(dim1=0, dim2=2).permute(2, 0, 1)
    V = torch.linalg.solve_triangular(fit.L, block_apply(fit.S, K), upper=False)
    sigma = blocks - point_blocks(V, V, C)
    sigma = 0.5 * (sigma + sigma.transpose(-1, -2))
    SS = fit.S @ sigma  # S_i Σ_i
    inner = torch.eye(C, dtype=K.dtype, device=K.device) - SS @ fit.S
    cav = sigma + SS.transpose(-1, -2) @ torch.linalg.solve(inner, SS)
    cav = 0.5 * (cav + cav.transpose(-1, -2))
    mean = fit.F - (cav @ fit.a.reshape(n, C, 1))[..., 0]
    return mean, cav


def row_nll(preds: Sequence[tuple] | tuple[torch.Tensor, torch.Tensor], y: torch.Tensor, proba: Callable, tau: float,
            temperature: float = 1.0) -> torch.Tensor:
    """Return each row's held-out NLL (n,) of the predictive `proba(mean/T, τ·cov/T²)`.

    `preds` is fold_predictions' list or gather_rows' (mean, cov); T is the logit temperature.
    """
    M, V = preds if isinstance(preds, tuple) else gather_rows(preds, len(y))
    p = proba(M / temperature, (tau / temperature**2) * V)
    return -torch.log(p.gather(1, y[:, None].to(p.device)).clamp_min(1e-300))[:, 0].double().cpu()


def heldout_nll(K: torch.Tensor, F0: torch.Tensor, y: torch.Tensor, folds: Sequence[torch.Tensor],
                proba: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                scales: Sequence[float] = (1.0,), check: Callable[[], None] | None = None,
                warm: dict | None = None) -> list[float]:
    """Return the mean held-out NLL over `folds` of `proba(mean, τ·cov)` for each τ in `scales`."""
    preds = fold_predictions(K, F0, y, folds, check, warm)
    return [float(row_nll(preds, y, proba, tau).mean()) for tau in scales]


# ------------------------------------------------------------------ bounded 1-D searches in log space
def log_search(f: Callable[[float], float], low: float, high: float, step: float = COARSE_STEP,
               tol: float = GOLDEN_TOL) -> dict:
    """Return the minimizer of f on [low, high] in log10 space: a coarse grid, then golden-section.

    f is evaluated every `step` decades from `low` to `high`; if the best point is interior, the
    bracket between its two neighbours is narrowed by golden-section search to `tol` decades (f is
    assumed unimodal there; the grid guards against other local minima). Returns {'x', 'value',
    'edge' ('lower' / 'upper' / None: whether the minimum is at a bound), 'evaluated': [(x, f(x))]
    in evaluation order}. Ties go to the smaller x.
    """
    cache: dict[float, float] = {}
    order: list[tuple[float, float]] = []

    def g(u: float) -> float:
        if u not in cache:
            cache[u] = float(f(10.0 ** u))
            order.append((10.0 ** u, cache[u]))
        return cache[u]

    u0, u1 = math.log10(low), math.log10(high)
    count = max(1, round((u1 - u0) / step))
    grid = [u0 + (u1 - u0) * k / count for k in range(count + 1)]
    values = [g(u) for u in grid]
    i = min(range(len(grid)), key=lambda k: (values[k], k))
    best_u = grid[i]
    if 0 < i < len(grid) - 1:
        a, b = grid[i - 1], grid[i + 1]
        r = (math.sqrt(5.0) - 1.0) / 2.0
        c, d = b - r * (b - a), a + r * (b - a)
        while b - a > tol:
            if g(c) <= g(d):
                b, d = d, c
                c = b - r * (b - a)
            else:
                a, c = c, d
                d = a + r * (b - a)
        best_u = min(cache, key=lambda u: (cache[u], u))
    edge = "lower" if best_u == u0 else "upper" if best_u == u1 else None
    return {"x": 10.0 ** best_u, "value": cache[best_u], "edge": edge, "evaluated": order}


def best_cov_scale(preds, y: torch.Tensor, proba: Callable, bounds: tuple[float, float] = TAU_BOUNDS,
                   temperature: float = 1.0) -> dict:
    """Return log_search's result for τ: the held-out NLL of proba(mean/T, τ·cov/T²) over `bounds` (no refit)."""
    rows = preds if isinstance(preds, tuple) else gather_rows(preds, len(y))
    return log_search(lambda tau: float(row_nll(rows, y, proba, tau, temperature).mean()), *bounds)


def _coarse(low: float, high: float, step: float) -> list[float]:
    u0, u1 = math.log10(low), math.log10(high)
    count = max(1, round((u1 - u0) / step))
    return [10.0 ** (u0 + (u1 - u0) * k / count) for k in range(count + 1)]


def _refine(f: Callable[[float], float], grid: list[float], i: int) -> tuple[float, float]:
    """Return (x, f(x)): golden-section in log space between grid[i]'s neighbours (grid[i] if at an end)."""
    if not 0 < i < len(grid) - 1:
        return grid[i], f(grid[i])
    found = log_search(f, grid[i - 1], grid[i + 1], step=math.log10(grid[i + 1] / grid[i - 1]) / 2)
    return found["x"], found["value"]


def best_calibration(preds, y: torch.Tensor, proba: Callable, tau_bounds: tuple[float, float] = TAU_BOUNDS,
                     temp_bounds: tuple[float, float] | None = TEMP_BOUNDS) -> dict:
    """Return {'temperature', 'cov_scale', 'objective', 'nll', 'temperature_edge', 'cov_scale_edge'}: the (T, τ)
    with the least held-out NLL of proba(mean/T, τ·cov/T²) plus temperature_penalty(T) ('objective'; no refit).

    A coarse grid (τ every COARSE_STEP decades in `tau_bounds`, T every TEMP_STEP decades in
    `temp_bounds`; None: T = 1) is scored in one batched call; then τ and T are refined in turn by
    golden-section between the best cell's neighbours. An edge is reported when the best coarse
    cell lies on a bound.
    """
    M, V = preds if isinstance(preds, tuple) else gather_rows(preds, len(y))
    n = len(y)
    taus = _coarse(*tau_bounds, COARSE_STEP)
    temps = [1.0] if temp_bounds is None else _coarse(*temp_bounds, TEMP_STEP)
    t = torch.tensor(temps, dtype=M.dtype, device=M.device)[:, None, None, None]
    u = torch.tensor(taus, dtype=M.dtype, device=M.device)[None, :, None, None]
    p = proba((M / t[..., 0]).unsqueeze(1).expand(len(temps), len(taus), *M.shape), (u / t**2)[..., None] * V)
    nll = -torch.log(p.gather(-1, y[:, None].to(p.device).expand(len(temps), len(taus), -1, 1))
                     .clamp_min(1e-300)).mean((-1, -2))
    nll = nll + torch.tensor([temperature_penalty(T, n) for T in temps], dtype=nll.dtype, device=nll.device)[:, None]
    i, j = divmod(int(torch.argmin(nll.flatten())), len(taus))

    def f(T: float, tau: float) -> float:
        return float(row_nll((M, V), y, proba, tau, T).mean()) + temperature_penalty(T, n)
    tau, value = _refine(lambda x: f(temps[i], x), taus, j)
    T = temps[i]
    if len(temps) > 1:
        T, value = _refine(lambda x: f(x, tau), temps, i)
        if value > f(temps[i], tau):  # keep the better of the two refinements
            T, value = temps[i], f(temps[i], tau)
    edge = {0: "lower", len(taus) - 1: "upper"}
    t_edge = None if len(temps) == 1 else {0: "lower", len(temps) - 1: "upper"}.get(i)
    return {"temperature": T, "cov_scale": tau, "objective": value, "nll": value - temperature_penalty(T, n),
            "temperature_edge": t_edge, "cov_scale_edge": edge.get(j)}


def temperature_penalty(T: float, n: int) -> float:
    """Return −log p(T)/n for the log-normal prior ln T ~ N(0, TEMP_PRIOR_SD²) (constant dropped).

    Without it, held-out folds that are all classified right (faces: 0 of 40 wrong) make the held-out
    NLL fall without limit as T → 0; the prior keeps T where the data support it (a MAP-II choice).
    """
    return math.log(T) ** 2 / (2.0 * TEMP_PRIOR_SD**2 * n)


class HeldoutProfile:
    """The held-out NLL as a function of s², with (T, τ) minimized at each s² (cached per s²).

    `cv` says how each row's held-out predictive is made (:data:`CV_SCHEMES`): 'kfold' fits once per
    fold of `folds` stratified folds; 'loo' once per row (each Newton started from the full-data MAP);
    'laplace_loo' fits the full data once and takes each row's cavity (:func:`laplace_loo`). One
    unit-prior kernel K1 serves every s² (the prior is s²·K1) and every fold; each fit's MAP is carried
    to the next s² as a warm start. :attr:`fits` counts the dense Laplace fits made.
    """

    def __init__(self, K1: torch.Tensor, F0: torch.Tensor, y: torch.Tensor, proba: Callable,
                 folds: int = DEFAULT_FOLDS, seed: int = FOLD_SEED, check: Callable[[], None] | None = None,
                 tau_bounds: tuple[float, float] | None = TAU_BOUNDS, scales: Sequence[float] = (),
                 temp_bounds: tuple[float, float] | None = TEMP_BOUNDS, cv: str = DEFAULT_CV):
        if cv not in CV_SCHEMES:
            raise SettingsError(f"cv must be one of {', '.join(CV_SCHEMES)}; got {cv!r}.")
        self.K1, self.F0, self.y, self.proba, self.check, self.cv = K1, F0, y, proba, check, cv
        self.parts = {"kfold": lambda: stratified_folds(y.cpu(), folds, seed), "loo": lambda: loo_folds(len(y)),
                      "laplace_loo": lambda: [torch.arange(len(y))]}[cv]()
        self.tau_bounds, self.scales, self.temp_bounds = tau_bounds, tuple(scales), temp_bounds
        self.warm: dict = {}
        self.cache: dict[float, dict] = {}
        self.fits = 0

    @property
    def fits_per_value(self) -> int:
        """Return the dense fits one s² costs: one per fold, plus the full-data fit for the leave-one-out schemes."""
        return {"kfold": len(self.parts), "loo": len(self.parts) + 1, "laplace_loo": 1}[self.cv]

    def _full_fit(self, K: torch.Tensor, s2: float) -> DenseFit:
        a0 = None
        if "full" in self.warm:
            previous, a_prev = self.warm["full"]
            a0 = a_prev * (previous / s2)
        fit = fit_dense(K, self.F0, self.y, a0=a0)
        self.warm["full"] = (s2, fit.a)
        return fit

    def predictions(self, s2: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Return every row's held-out (mean (n, C), cov (n, C, C)) at s² (T = τ = 1), by :attr:`cv`."""
        K = s2 * self.K1
        self.fits += self.fits_per_value
        if self.cv == "laplace_loo":
            if self.check is not None:
                self.check()
            return laplace_loo(self._full_fit(K, s2), K)
        start = self._full_fit(K, s2).a if self.cv == "loo" else None
        return gather_rows(fold_predictions(K, self.F0, self.y, self.parts, self.check, self.warm, start), len(self.y))

    def __call__(self, s2: float) -> dict:
        """Return {'prior_var', 'cov_scale' (best τ), 'temperature' (best T), 'nll', 'rows' (per-row losses),
        'tau_edge', 'temperature_edge', 'table' (NLL at each of `scales`, T = 1), 'nll_unscaled' (T = τ = 1)}."""
        s2 = float(s2)
        if s2 not in self.cache:
            rows_mv = self.predictions(s2)
            table = [float(row_nll(rows_mv, self.y, self.proba, t).mean()) for t in self.scales]
            if self.tau_bounds is None:  # τ from `scales` only (discrete; ties to the first), T = 1
                j = min(range(len(table)), key=lambda k: (table[k], k))
                tau, edge, T, t_edge = self.scales[j], None, 1.0, None
            else:
                found = best_calibration(rows_mv, self.y, self.proba, self.tau_bounds, self.temp_bounds)
                tau, edge, T, t_edge = (found["cov_scale"], found["cov_scale_edge"], found["temperature"],
                                        found["temperature_edge"])
            rows = row_nll(rows_mv, self.y, self.proba, tau, T)
            objective = float(rows.mean()) + (temperature_penalty(T, len(self.y)) if T != 1.0 else 0.0)
            self.cache[s2] = {"prior_var": s2, "cov_scale": float(tau), "temperature": float(T), "nll": float(rows.mean()),
                              "objective": objective,
                              "rows": rows, "tau_edge": edge, "temperature_edge": t_edge, "table": table,
                              "nll_unscaled": float(row_nll(rows_mv, self.y, self.proba, 1.0).mean())}
        return self.cache[s2]

    def nll(self, s2: float) -> float:
        """Return the profile objective at s²: held-out NLL at the best (T, τ) plus the temperature prior term."""
        return self(s2)["objective"]


def evidence_search(K1: torch.Tensor, F0: torch.Tensor, y: torch.Tensor,
                    bounds: tuple[float, float] = S2_BOUNDS, grid: Sequence[float] | None = None,
                    check: Callable[[], None] | None = None) -> dict:
    """Return the s² with the largest Laplace evidence of the dense fit on s²·K1 (log_search, warm-started).

    With `grid`, only its values are tried. Adds 'fits' (dense fits made) and 'evidence' pairs.
    """
    warm: list = []

    def neg_evidence(s2: float) -> float:
        if check is not None:
            check()
        a0 = None
        if warm:
            previous, a_prev = warm[0]
            a0 = a_prev * (previous / s2)
        fit = fit_dense(s2 * K1, F0, y, a0=a0)
        warm[:] = [(s2, fit.a)]
        return -fit.evidence
    if grid is not None:
        values = [(float(s), neg_evidence(float(s))) for s in grid]
        s2, v = min(values, key=lambda t: t[1])
        found = {"x": s2, "value": v, "edge": None, "evaluated": values}
    else:
        found = log_search(neg_evidence, *bounds)
    return {"prior_var": found["x"], "evidence": -found["value"], "edge": found["edge"], "fits": len(found["evaluated"]),
            "evaluated": [(s, -v) for s, v in found["evaluated"]]}


def _fmt(x: float) -> str:
    return f"{x:.2g}"


def _fits(profile: HeldoutProfile, ev: dict | None, ho: dict | None) -> int:
    """Return the dense Laplace fits one selection needs on its own (the profile may be shared)."""
    used = set() if ho is None else {s for s, _ in ho["evaluated"]}
    if ev is not None:
        used.add(ev["prior_var"])
    return len(used) * profile.fits_per_value + (ev["fits"] if ev is not None else 0)


def select(K1: torch.Tensor, F0: torch.Tensor, y: torch.Tensor, proba: Callable, selection: str = DEFAULT_SELECTION,
           folds: int = DEFAULT_FOLDS, seed: int = FOLD_SEED, check: Callable[[], None] | None = None,
           grid: Sequence[float] | None = None, scales: Sequence[float] | None = None,
           state: dict | None = None, cv: str = DEFAULT_CV) -> dict:
    """Return the chosen (s², τ) for `selection` and how they were chosen (the classifier's hyper_info).

    K1: the unit-prior kernel J Jᵀ of the adaptation rows (n·C × n·C), F0 their pretrained logits,
    `proba` the predictive map scored on held-out rows.

    - 'heldout': (s², τ) jointly by the K-fold held-out NLL: s² by log_search over S2_BOUNDS (each
      value: one fit per fold), τ by log_search over TAU_BOUNDS at each s² (no refit).
    - 'evidence_tau': s² by the Laplace evidence (log_search over S2_BOUNDS, full-data dense fits),
      then τ by the held-out NLL at that s² (one fit per fold).
    - 'heldout_1se': both of the above; the held-out optimum only if its held-out NLL is lower than
      at the evidence s² by more than one standard error of the paired per-row difference, else
      the evidence s² with its held-out τ.
    `cv` (:data:`CV_SCHEMES`) says how the held-out predictions are made (K-fold with `folds`, exact
    or Laplace leave-one-out). `grid` / `scales` replace the continuous searches by those values
    (tests, old callers). `state` (a dict, filled on the first call) shares the fits between calls on
    the same problem and `cv` (the bench).
    """
    if selection not in SELECTIONS:
        raise SettingsError(f"selection must be one of {', '.join(SELECTIONS)}; got {selection!r}.")
    state = {} if state is None else state
    if "profile" not in state:
        state["profile"] = HeldoutProfile(K1, F0, y, proba, folds, seed, check,
                                          tau_bounds=None if scales is not None else TAU_BOUNDS,
                                          scales=scales if scales is not None else TABLE_SCALES, cv=cv)
    profile = state["profile"]
    info: dict = {"selection": selection, "cv": profile.cv, "folds": len(profile.parts) if profile.cv == "kfold" else len(y),
                  "cov_scale": list(profile.scales)}
    ev = ho = None
    if selection in ("evidence_tau", "heldout_1se"):
        if "evidence" not in state:
            state["evidence"] = evidence_search(K1, F0, y, grid=grid, check=check)
        ev = state["evidence"]
        info.update({"evidence_prior_var": [s for s, _ in sorted(ev["evaluated"])],
                     "evidence": [v for _, v in sorted(ev["evaluated"])],
                     "chosen_evidence_prior_var": ev["prior_var"], "chosen_evidence": ev["evidence"],
                     "evidence_edge": ev["edge"]})
        at_ev = profile(ev["prior_var"])
    if selection in ("heldout", "heldout_1se"):
        if "heldout" not in state:
            if grid is not None:
                values = [(float(s), profile.nll(s)) for s in grid]
                state["heldout"] = {"x": min(values, key=lambda t: t[1])[0], "edge": None, "evaluated": values}
            else:
                state["heldout"] = log_search(profile.nll, *S2_BOUNDS)
        ho = state["heldout"]
        at_ho = profile(ho["x"])
        info["heldout_edge"] = ho["edge"]
    k = {"kfold": f"{len(profile.parts)}-fold held-out", "loo": "leave-one-out",
         "laplace_loo": "Laplace leave-one-out"}[profile.cv]

    def calib(c: dict) -> str:
        t = "" if c["temperature"] == 1.0 else f", T = {_fmt(c['temperature'])}"
        return f"τ = {_fmt(c['cov_scale'])}{t}"
    if selection == "heldout":
        chosen = at_ho
        reason = f"s² = {_fmt(at_ho['prior_var'])}, {calib(at_ho)} by {k} NLL {at_ho['nll']:.3f}"
    elif selection == "evidence_tau":
        chosen = at_ev
        reason = (f"s² = {_fmt(ev['prior_var'])} by the Laplace evidence (log Z = {ev['evidence']:.1f}); "
                  f"{calib(at_ev)} by {k} NLL {at_ev['nll']:.3f}")
    else:
        d = at_ev["rows"] - at_ho["rows"]
        se = float(d.std() / math.sqrt(len(d))) if len(d) > 1 else 0.0
        gain = float(d.mean())
        info.update({"heldout_gain": gain, "heldout_gain_se": se})
        if gain > se:
            chosen = at_ho
            reason = (f"s² = {_fmt(at_ho['prior_var'])}, {calib(at_ho)} by {k} NLL {at_ho['nll']:.3f}, "
                      f"lower than at the evidence s² = {_fmt(ev['prior_var'])} ({at_ev['nll']:.3f}) by {gain:.3f} "
                      f"> 1 SE {se:.3f}")
        else:
            chosen = at_ev
            reason = (f"s² = {_fmt(ev['prior_var'])} by the Laplace evidence (log Z = {ev['evidence']:.1f}; the "
                      f"held-out optimum s² = {_fmt(at_ho['prior_var'])} is not better by 1 SE: {gain:.3f} ≤ {se:.3f}); "
                      f"{calib(at_ev)} by {k} NLL {at_ev['nll']:.3f}")
    if chosen["tau_edge"] == "lower":
        reason += " (τ at its lower bound: the MAP logits; the posterior spread did not lower the held-out NLL)"
    elif chosen["tau_edge"] == "upper":
        reason += " (τ at its upper bound)"
    if chosen["temperature_edge"] is not None:
        reason += (f" (T at its {chosen['temperature_edge']} bound"
                   + (": the held-out rows are all classified right, so sharper is always better there)"
                      if chosen["temperature_edge"] == "lower" else ")"))
    at_one = chosen["nll_unscaled"]
    reason += f"; at τ = T = 1: {at_one:.3f}"
    evaluated = sorted(profile.cache)
    info.update({
        "method": SELECTION_METHODS[selection], "why": reason,
        "prior_var": evaluated, "heldout_nll": [profile.cache[s]["table"] for s in evaluated],
        "heldout_profile": [profile.cache[s]["nll"] for s in evaluated],
        "heldout_profile_objective": [profile.cache[s]["objective"] for s in evaluated],  # what the s² search minimized
        "heldout_profile_cov_scale": [profile.cache[s]["cov_scale"] for s in evaluated],
        "heldout_profile_temperature": [profile.cache[s]["temperature"] for s in evaluated],
        "chosen_temperature": chosen["temperature"], "temperature_edge": chosen["temperature_edge"],
        "chosen": chosen["prior_var"], "chosen_cov_scale": chosen["cov_scale"], "chosen_heldout_nll": chosen["nll"],
        "heldout_nll_unscaled": at_one, "cov_scale_edge": chosen["tau_edge"],
        "fits": _fits(profile, ev, ho),
    })
    return info


def heldout_search(K1: torch.Tensor, F0: torch.Tensor, y: torch.Tensor, grid: Sequence[float],
                   proba: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                   scales: Sequence[float] = (1.0,), folds: int = DEFAULT_FOLDS, seed: int = FOLD_SEED,
                   check: Callable[[], None] | None = None) -> dict:
    """Return the (s², τ) on `grid` × `scales` with the least K-fold held-out NLL, and the table.

    The discrete form of select('heldout') (kept for the bench's 'held-out s²' row and old callers).
    Ties go to the first value (grid order, then scale order). The result also holds the best s²
    at τ = 1 when 1 is among `scales` ('chosen_unscaled').
    """
    parts = stratified_folds(y.cpu(), folds, seed)
    warm: dict = {}
    table = [heldout_nll(float(s2) * K1, F0, y, parts, proba, scales, check, warm) for s2 in grid]
    cells = [(table[i][j], i, j) for i in range(len(grid)) for j in range(len(scales))]
    value, i, j = min(cells)
    info = {"method": f"{len(parts)}-fold held-out NLL", "prior_var": [float(s) for s in grid],
            "cov_scale": [float(t) for t in scales], "heldout_nll": table, "folds": len(parts),
            "chosen": float(grid[i]), "chosen_cov_scale": float(scales[j]), "chosen_heldout_nll": value}
    if 1.0 in scales:
        j1 = list(scales).index(1.0)
        value1, i1 = min((table[i][j1], i) for i in range(len(grid)))
        info["chosen_unscaled"] = float(grid[i1])
        info["chosen_unscaled_heldout_nll"] = value1
    return info


def fit_selected(clf, rep, selection: str = DEFAULT_SELECTION, grid: Sequence[float] | None = None,
                 folds: int = DEFAULT_FOLDS, scales: Sequence[float] | None = None, cv: str = DEFAULT_CV) -> dict:
    """Set a fitted LinearizedClassifier's prior_var and cov_scale by :func:`select`; refit it once.

    The predictive scored is the classifier's own 'auto' map (the pairwise probit), applied to τ·Σ.
    One unit-prior kernel of the adaptation rows serves every fold and every s²; the classifier is
    refitted once at the winner on its own route. Returns select's info.
    """
    from .classify import PROBIT_APPROXIMATIONS, resolve_proba_method  # classify imports this module lazily

    X, y = clf._data
    with clf._reporting(rep):
        K1 = clf.kernels.matrix(X)
        F0 = clf.lm.forward(X)
    proba = PROBIT_APPROXIMATIONS[resolve_proba_method("auto", F0.shape[1])]
    info = select(K1, F0, y, proba, selection, folds, check=rep.check, grid=grid, scales=scales, cv=cv)
    clf.prior_var, clf.cov_scale = info["chosen"], info["chosen_cov_scale"]
    clf.logit_temperature = info["chosen_temperature"]
    clf._fit(X, y, rep)
    return info


def fit_heldout(clf, rep, grid: Sequence[float] | None = None, folds: int = DEFAULT_FOLDS,
                scales: Sequence[float] | None = None) -> dict:
    """Return fit_selected(clf, rep, 'heldout', ...): (s², τ) jointly by the held-out NLL."""
    return fit_selected(clf, rep, "heldout", grid, folds, scales)


def module_evidence_search(Ks: torch.Tensor, F0: torch.Tensor, y: torch.Tensor, grid: Sequence[float],
                           start: float | None = None, sweeps: int = DEFAULT_SWEEPS) -> dict:
    """Return {'chosen': [s_m² per module], 'evidence'}: coordinate ascent of the Laplace evidence.

    Ks is (M, n·C, n·C), the per-module unit kernels. It starts from the best isotropic value on
    the grid (or `start`) and, module by module, moves each variance to the grid value with the
    largest evidence, for `sweeps` passes (the evidence never decreases).
    """
    def evidence(v: Sequence[float]) -> float:
        return fit_dense(torch.einsum("m,mij->ij", torch.tensor(v, dtype=Ks.dtype, device=Ks.device), Ks),
                         F0, y).evidence
    M = Ks.shape[0]
    if start is None:
        iso = [evidence([s] * M) for s in grid]
        start = grid[max(range(len(grid)), key=iso.__getitem__)]
    current = [float(start)] * M
    best = evidence(current)
    for _ in range(sweeps):
        moved = False
        for m in range(M):
            for s in grid:
                if s == current[m]:
                    continue
                trial = current.copy()
                trial[m] = float(s)
                value = evidence(trial)
                if value > best + 1e-9 * abs(best):
                    best, current, moved = value, trial, True
        if not moved:
            break
    return {"method": "per-module Laplace evidence (coordinate ascent on the grid)", "chosen": current,
            "evidence": best}


def log_grid(low: float, high: float, per_decade: int = 1) -> tuple[float, ...]:
    """Return powers of ten from `low` to `high` with `per_decade` points per decade."""
    k0, k1 = round(math.log10(low) * per_decade), round(math.log10(high) * per_decade)
    return tuple(10.0 ** (k / per_decade) for k in range(k0, k1 + 1))
