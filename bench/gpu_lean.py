"""GPU check, part 4b: the headline by a memory-lean exact route (a prototype for the engine).

Why: the engine's function-space Cholesky keeps ~3 n×n matrices (the planner's KERNEL_COPIES), 240 GB
in float64 at n = 100,000, more than an H200 holds; its auto plan therefore falls back to CG, whose
variance solves for 1,000 test points are many block-CG runs. The exact posterior itself needs one
n×n matrix (80 GB). This route holds just that:

1. per-layer structured features (A, G) of the MLP's Linear layers from the engine's
   ``StructuredKernel.features`` (one forward and one backward over the data, a few GB);
2. the system matrix s²K + σ²I written row block by row block into one preallocated n×n tensor,
   K = Σ_layers (A Aᵀ + 1) ⊙ (G Gᵀ) (the structured form of DESIGN.md);
3. an in-place, right-looking blocked Cholesky of that tensor (diagonal blocks by torch.linalg.cholesky,
   panels by triangular solves, the trailing lower triangle updated block column by block column);
4. blocked forward and back substitution for α and for L⁻¹ K(X, X*) (all test points at once), then
   mean = f(X*) + s² K(X*, X) α and var = s² diag K(X*) − ‖L⁻¹ s² K(X, X*)‖² per test point.

Everything is float64 and exact (no approximation beyond rounding): on the CPU, at small n, it equals
the engine's function-space Cholesky to ~1e-12 (tests/test_gpu_check.py and the quick run check it).
Only scalar-output models built from Linear layers (the headline's MLP) are supported.
"""

from __future__ import annotations

import time

import torch

import _problem as prob
import gpu_common as common
from ntk_studio.core import LinearizedModel
from ntk_studio.core.structured import StructuredKernel

ROW_BLOCK = 4096  # rows of the kernel built at once: two ROW_BLOCK × n temporaries
CHOL_BLOCK = 4096  # Cholesky panel width
SOLVE_BLOCK = 4096


def _features(lm: LinearizedModel, X: torch.Tensor):
    sk = StructuredKernel(lm)
    if not sk.check(X[: min(8, X.shape[0])]):
        raise ValueError(f"the structured form does not cover this model: {sk.reason}")
    out = []
    for f in sk.features(X):  # G is (n, K, positions, groups, out), U is (n, positions, groups, in)
        if f.U is None or f.J is not None or tuple(f.G.shape[1:4]) != (1, 1, 1):
            raise ValueError("the lean route supports scalar-output MLPs (linearized weights, one position) only")
        out.append((f.U[:, 0, 0, :], f.G[:, 0, 0, 0, :], f.bias is not None))
    return out


def kernel_rows(F1, F2, rows: slice, out: torch.Tensor) -> torch.Tensor:
    """Write K(X1[rows], X2) = Σ (A1 A2ᵀ + 1) ⊙ (G1 G2ᵀ) into out (rows × n2) and return it."""
    out.zero_()
    for (A1, G1, b1), (A2, G2, _) in zip(F1, F2):
        gg = G1[rows] @ G2.T
        if A1 is not None:
            scale = A1[rows] @ A2.T
            if b1:
                scale.add_(1.0)
            out.addcmul_(scale, gg)
            del scale
        elif b1:
            out.add_(gg)
        del gg
    return out


def kernel_diag(F) -> torch.Tensor:
    total = None
    for A, G, b in F:
        scale = torch.zeros(G.shape[0], dtype=G.dtype, device=G.device)
        if A is not None:
            scale = scale + (A * A).sum(-1)
        if b:
            scale = scale + 1.0
        part = scale * (G * G).sum(-1)
        total = part if total is None else total + part
    return total


def cholesky_inplace_(A: torch.Tensor, block: int = CHOL_BLOCK) -> torch.Tensor:
    """Overwrite the lower triangle of the SPD matrix A with its Cholesky factor L (upper part: stale)."""
    n = A.shape[0]
    for k in range(0, n, block):
        e = min(k + block, n)
        L_kk, info = torch.linalg.cholesky_ex(A[k:e, k:e])
        if int(info) != 0:
            raise torch.linalg.LinAlgError(f"the system matrix is not positive definite (block at row {k})")
        A[k:e, k:e].copy_(L_kk)
        if e == n:
            break
        # Panel: A[e:, k:e] ← A[e:, k:e] L_kkᵀ⁻¹
        A[e:, k:e].copy_(torch.linalg.solve_triangular(L_kk.mT, A[e:, k:e], upper=True, left=False))
        # Trailing update of the lower triangle, one block column at a time.
        for j in range(e, n, block):
            je = min(j + block, n)
            A[j:, j:je].addmm_(A[j:, k:e], A[j:je, k:e].mT, alpha=-1.0)
    return A


def solve_lower_(L: torch.Tensor, B: torch.Tensor, block: int = SOLVE_BLOCK) -> torch.Tensor:
    """Overwrite B (n × c) with L⁻¹ B, reading only L's lower triangle."""
    n = L.shape[0]
    for k in range(0, n, block):
        e = min(k + block, n)
        if k > 0:
            B[k:e].addmm_(L[k:e, :k], B[:k], alpha=-1.0)
        B[k:e] = torch.linalg.solve_triangular(torch.tril(L[k:e, k:e]), B[k:e], upper=False)
    return B


def solve_upper_t_(L: torch.Tensor, B: torch.Tensor, block: int = SOLVE_BLOCK) -> torch.Tensor:
    """Overwrite B (n × c) with L⁻ᵀ B, reading only L's lower triangle."""
    n = L.shape[0]
    starts = list(range(0, n, block))
    for k in reversed(starts):
        e = min(k + block, n)
        if e < n:
            B[k:e].addmm_(L[e:, k:e].mT, B[e:], alpha=-1.0)
        B[k:e] = torch.linalg.solve_triangular(torch.tril(L[k:e, k:e]).mT, B[k:e], upper=True)
    return B


def lean_posterior(model, X, y, Xs, prior_var: float, noise: float, device: torch.device, timings: dict | None = None):
    """Return (mean, noise-free variance) at Xs of the linearized GP, float64, one n×n matrix in memory."""
    timings = {} if timings is None else timings
    lm = LinearizedModel(model, dtype=torch.float64, device=device)
    X, Xs = lm.prepare(X), lm.prepare(Xs)
    y = torch.as_tensor(y).to(device, torch.float64).reshape(-1)
    n = X.shape[0]

    def stage(name, fn):
        out, sec = common.timed(fn, device)
        timings[name] = round(sec, 3)
        return out

    F = stage("features", lambda: _features(lm, X))
    Fs = stage("test_features", lambda: _features(lm, Xs))
    f_X = stage("forward", lambda: lm.forward(X)[:, 0])
    f_s = lm.forward(Xs)[:, 0]
    A = torch.empty(n, n, dtype=torch.float64, device=device)

    def build():
        for s in range(0, n, ROW_BLOCK):
            rows = slice(s, min(s + ROW_BLOCK, n))
            kernel_rows(F, F, rows, A[rows])
        A.mul_(prior_var)
        A.diagonal().add_(noise)

    stage("kernel", build)
    stage("cholesky", lambda: cholesky_inplace_(A))
    r = (y - f_X).unsqueeze(1).clone()
    alpha = stage("alpha", lambda: solve_upper_t_(A, solve_lower_(A, r)))[:, 0]
    Kxs = stage("cross_kernel", lambda: kernel_rows(F, Fs, slice(0, n), torch.empty(n, Xs.shape[0], dtype=torch.float64,
                                                                                 device=device)).mul_(prior_var))
    mean = f_s + Kxs.T @ alpha
    V = stage("variance_solve", lambda: solve_lower_(A, Kxs))
    var = prior_var * kernel_diag(Fs) - (V * V).sum(0)
    del A
    return mean, var


def run(device: torch.device, mode: str, log=print, emit=common.emit) -> dict:
    """The headline problem (gpu_headline.SIZES) by the lean route; emits each stage's result."""
    import gpu_headline

    s = gpu_headline.SIZES[mode]
    width = prob.width_for_params(s["P"])
    out = {"n": s["n"], "m": s["m"], "width": width, "P": prob.mlp_params(width), "dtype": "float64",
           "route": "lean function-space Cholesky (bench/gpu_lean.py)", "target_s": gpu_headline.TARGET_S,
           "matrix_gib": round(s["n"] ** 2 * 8 / common.GIB, 2)}
    # Warm-up (imports, CUDA context, cuBLAS/cuSOLVER kernels) on a tiny problem.
    (_, warm_s) = common.timed(lambda: lean_posterior(prob.mlp(4).to(device), *prob.data(16, 1), prob.data(4, 2)[0],
                                                      prob.PRIOR_VAR, prob.NOISE, device), device)
    out["warmup_s"] = round(warm_s, 2)
    emit(**out)
    X, y = prob.data(s["n"], prob.TRAIN_SEED)
    Xs, _ = prob.data(s["m"], prob.TEST_SEED)
    model = prob.mlp(width)
    timings: dict = {}
    start = time.perf_counter()
    try:
        with common.Meter(device) as meter:
            (mean, var), total = common.timed(
                lambda: lean_posterior(model, X, y, Xs, prob.PRIOR_VAR, prob.NOISE, device, timings), device)
            v = var.double().reshape(-1)
            out.update(status="ok", total_s=round(total, 2), stages=timings, peak_mib=meter.peak_mib(),
                       var_min=float(v.min()), var_max=float(v.max()), var_nonpositive=int((v <= 0).sum()),
                       mean_finite=bool(torch.isfinite(mean).all()), under_target=total < gpu_headline.TARGET_S)
            log(f"lean headline: {total:.1f} s {timings}")
            if mode != "full":  # small enough for the engine's own Cholesky route: compare
                from ntk_studio.core import LinearizedGP

                gp = LinearizedGP(prob.mlp(width), prior_var=prob.PRIOR_VAR, noise=prob.NOISE, space="function",
                                  solver="cholesky", device=device, memory_budget=64 * common.GIB).fit(X, y)
                em, ev = gp.predict(Xs)
                out["engine_var_max_rel"] = prob.relative_errors(v.cpu(), ev.double().cpu().reshape(-1))["max_rel"]
                out["engine_mean_max_abs"] = float((mean.cpu() - em.double().cpu().reshape(-1)).abs().max())
    except Exception as exc:  # noqa: BLE001 — the distance to the headline is the result
        out.update(status="oom" if common.is_oom(exc) else "error", reason=common.describe_exc(exc), stages=timings,
                   failed_after_s=round(time.perf_counter() - start, 1))
    emit(**{k: v for k, v in out.items() if k not in ("n", "m", "width", "P")})
    return out


def table(result: dict) -> str:
    r = result
    head = ["n", "P", "test points", "route", "n×n matrix", "stages", "total", "peak MiB", "under 60 s",
            "vs engine (small n)", "status"]
    stages = ", ".join(f"{k} {common.fmt_s(v)}" for k, v in (r.get("stages") or {}).items()) or "–"
    vs = ("–" if "engine_var_max_rel" not in r
          else f"var {r['engine_var_max_rel']:.1e}, mean {r['engine_mean_max_abs']:.1e}")
    status = r.get("status", "?")
    if status == "timeout":
        status = f"did not finish in {r.get('timeout_s', '?')} s"
    elif r.get("reason"):
        status = f"{status}: {r['reason']}"
    row = [f"{r.get('n', 0):,}", f"{r.get('P', 0):,}", f"{r.get('m', 0):,}", r.get("route", "lean"),
           f"{r.get('matrix_gib', '–')} GiB", stages, common.fmt_s(r.get("total_s")), common.fmt_mib(r.get("peak_mib")),
           {True: "yes", False: "no"}.get(r.get("under_target"), "–"), vs, status]
    return common.md_table(head, [row])
