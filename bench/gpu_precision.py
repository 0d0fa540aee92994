"""GPU check, part 2c: what float32 costs in posterior variance against the float64 reference.

For an MLP 8-128-128-1 (P = 17,793; regression problem of _problem.py) and the small CNN of
bench/operators.py (P = 5,418, 10 outputs, 3×32×32 inputs), three precisions of the same GP:

- ``float64``: LinearizedGP(dtype=float64), the reference (exact to ~1e-12 against the dense form,
  tests/test_device_routes.py);
- ``float32``: LinearizedGP(dtype=float32): network, Jacobian products, kernel, solve and variances in
  float32 (what `dtype=torch.float32` gives today), on the function-space Cholesky and CG routes;
- ``float32 products + float64 solves`` (the policy core.device.choose_precision picks on GPUs with
  slow float64): kernel K(X, X), K(X*, X), the prior diagonal and f(X) computed in float32 by the
  engine's own operators, cast to float64, then the Cholesky solve and the variance in float64.

Reported: max and median relative error of the noise-free variance, and the max absolute error of
the mean over the test points, at σ² = 0.01 (the benchmarks' noise) and σ² = 1e-4 (a harder,
nearly interpolating fit).
"""

from __future__ import annotations

import warnings

import torch

import _problem as prob
import gpu_common as common
import operators as ops_bench
from ntk_studio.core import KernelBuilder, LinearizedGP, LinearizedModel
from ntk_studio.core.errors import SolverWarning

NOISES = {"full": (1e-2, 1e-4), "quick": (1e-2, 1e-4), "tiny": (1e-2,)}
SIZES = {"full": {"mlp": (2000, 500), "cnn": (300, 50)}, "quick": {"mlp": (200, 40), "cnn": (16, 4)},
         "tiny": {"mlp": (30, 5), "cnn": (2, 1)}}
MLP_WIDTH = {"full": prob.DEFAULT_WIDTH, "quick": 64, "tiny": 8}
CG_TOL = 1e-6
CG_VAR_POINTS = 50  # as bench/peers.py
CG_MAX_ITER = {"full": 400, "quick": 200, "tiny": 20}  # float32 CG at σ² = 1e-4 stalls; reported as is


def problem(name: str, n: int, m: int, mode: str):
    """Return (model factory, X, y, Xs) in float64 on the CPU."""
    if name == "mlp":
        X, y = prob.data(n, prob.TRAIN_SEED)
        Xs, _ = prob.data(m, prob.TEST_SEED)
        return (lambda: prob.mlp(MLP_WIDTH[mode])), X, y, Xs
    X = ops_bench.model_inputs("cnn", n, seed=1)
    Xs = ops_bench.model_inputs("cnn", m, seed=2)
    with torch.no_grad():
        f = ops_bench.build_cnn()(X.float()).double()
    g = torch.Generator().manual_seed(3)
    y = f + 0.3 * torch.randn(f.shape, generator=g, dtype=torch.float64)  # a shifted task, 10 outputs
    return ops_bench.build_cnn, X, y, Xs


def mixed_posterior(model, X, y, Xs, noise: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (mean, var) with float32 products (the engine's float32 operators) and float64 solves."""
    lm = LinearizedModel(model, dtype=torch.float32, device=device)
    kb = KernelBuilder(lm)
    X32, Xs32 = lm.prepare(X), lm.prepare(Xs)
    Kxx = kb.matrix(X32).double()
    Ksx = kb.matrix(Xs32, X32).double()  # (m·K, n·K)
    prior = kb.diag(Xs32).double().reshape(-1)
    f_X, f_s = lm.forward(X32).double(), lm.forward(Xs32).double()
    s2 = prob.PRIOR_VAR
    A = s2 * Kxx
    A.diagonal().add_(noise)
    L = torch.linalg.cholesky(A)
    r = (y.to(device).reshape(f_X.shape) - f_X).reshape(-1, 1)
    alpha = torch.cholesky_solve(r, L)[:, 0]
    mean = f_s.reshape(-1) + s2 * Ksx @ alpha
    V = torch.linalg.solve_triangular(L, s2 * Ksx.T, upper=False)
    var = s2 * prior - (V * V).sum(0)
    return mean, var


def run(device: torch.device, mode: str, deadline: common.Deadline | None = None, log=print,
        models: tuple[str, ...] = ("mlp", "cnn")) -> dict:
    """Return one row per (model, noise, precision, route) with errors against the float64 fit.

    The CG route predicts the first CG_VAR_POINTS test points only (one CG solve per test point).
    """
    rows = []
    for name in models:
        n, m = SIZES[mode][name]
        make, X, y, Xs = problem(name, n, m, mode)
        for noise in NOISES[mode]:
            if deadline is not None and deadline.left() <= 0:
                rows.append({"model": name, "n": n, "noise": noise, "status": "skipped", "reason": "step time budget spent"})
                continue
            ref = LinearizedGP(make(), prior_var=prob.PRIOR_VAR, noise=noise, space="function", solver="cholesky",
                               device=device, memory_budget=64 * common.GIB).fit(X, y)
            ref_mean, ref_var = (t.double().cpu().reshape(-1) for t in ref.predict(Xs))
            P = ref.lm.num_params
            K = ref.lm.output_dim
            variants = {
                "float32 (cholesky)": lambda: LinearizedGP(
                    make(), prior_var=prob.PRIOR_VAR, noise=noise, space="function", solver="cholesky",
                    dtype=torch.float32, device=device, memory_budget=64 * common.GIB).fit(X, y).predict(Xs),
                "float32 (cg)": lambda: LinearizedGP(
                    make(), prior_var=prob.PRIOR_VAR, noise=noise, space="function", solver="cg", cg_tol=CG_TOL,
                    cg_max_iter=CG_MAX_ITER[mode], dtype=torch.float32, device=device,
                    best_effort=True).fit(X, y),  # a float32 stall is a measurement: its residual is reported
                "float32 products + float64 solves": lambda: mixed_posterior(make(), X, y, Xs, noise, device),
            }
            for label, fn in variants.items():
                row = {"model": name, "n": n, "m": m, "outputs": K, "params": P, "noise": noise, "precision": label}
                if deadline is not None and deadline.left() <= 0:
                    rows.append({**row, "status": "skipped", "reason": "step time budget spent"})
                    continue
                try:
                    with warnings.catch_warnings():  # a best-effort CG stall is recorded below, not an error
                        warnings.simplefilter("ignore", SolverWarning)
                        out, sec = common.timed(fn, device)
                        if isinstance(out, LinearizedGP):  # the CG fit: its convergence is part of the result
                            row.update(cg_converged=out.solve_info.converged, cg_residual=out.solve_info.residual)
                            out, pred_s = common.timed(lambda: out.predict(Xs[:CG_VAR_POINTS]), device)
                            sec += pred_s
                    mean, var = out
                    mean, var = mean.double().cpu().reshape(-1), var.double().cpu().reshape(-1)
                    k = var.numel()
                    err = prob.relative_errors(var, ref_var[:k])
                    row.update(status="ok", seconds=round(sec, 3), var_max_rel=err["max_rel"],
                               var_median_rel=err["median_rel"],
                               mean_max_abs=float((mean - ref_mean[:k]).abs().max()), test_points=k // K,
                               var_nonpositive=int((var <= 0).sum()))
                except Exception as exc:  # noqa: BLE001 — e.g. a float32 Cholesky that is not positive definite
                    row.update(status="error", reason=common.describe_exc(exc))
                rows.append(row)
                log(f"precision {name} σ²={noise} {label}: {row['status']} {row.get('var_max_rel', row.get('reason', ''))}")
            common.release(device)
    return {"settings": {"prior_var": prob.PRIOR_VAR, "noises": list(NOISES[mode]), "sizes": SIZES[mode],
                         "mlp_width": MLP_WIDTH[mode], "reference": "LinearizedGP float64, function-space Cholesky"},
            "rows": rows}


def table(result: dict) -> str:
    head = ["model", "n", "P", "σ²", "precision", "var max rel err", "var median rel err", "mean max abs err",
            "var ≤ 0", "time"]
    out = []
    for r in result["rows"]:
        if r.get("status") != "ok":
            out.append([r["model"], r.get("n", "–"), common.fmt_int(r.get("params")), r["noise"], r.get("precision", "–"),
                        f"{r['status']}: {r.get('reason', '')}", "–", "–", "–", "–"])
            continue
        out.append([r["model"], f"{r['n']:,}", f"{r['params']:,}", f"{r['noise']:g}", r["precision"],
                    common.fmt_rel(r["var_max_rel"]) + ("" if r.get("cg_converged", True) else " (CG not converged)"),
                    common.fmt_rel(r["var_median_rel"]), f"{r['mean_max_abs']:.1e}",
                    r["var_nonpositive"], common.fmt_s(r["seconds"])])
    return common.md_table(head, out)
