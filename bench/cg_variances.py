"""CG variances vs the Cholesky route (issue #17): time, accuracy against dense float64, where time goes.

Problem: bench/_problem.py's tanh MLP 8-128-128-1 (P = 17,793), n training points, m test points,
s² = 1, σ² = 0.01. Each route runs on a fresh `LinearizedGP` with every cache cleared
(KernelBuilder.clear_cache(), prefix.clear_cache(), a fresh model copy), fit + predict timed
together; the routes alternate in rounds so drift in the shared machine's load hits both alike, and
the ratio is taken per round (median reported). Variances are compared with a dense float64
reference built independently (per-sample Jacobians, J Jᵀ, torch.linalg.cholesky).

Routes: ``cholesky``; ``cg`` (solver='cg' at the default memory budget: the kernel is stored and, when a
factor fits beside it and is cheaper by estimate, the variances use that factor); ``cg-blockcg`` (a
budget that holds the stored kernel but no factor: block CG with the Nyström preconditioner);
``cg-matrixfree`` (a budget that holds no kernel: block CG on matrix-free products).

Run ``.venv/bin/python bench/cg_variances.py [--n 2000] [--m 1000] [--rounds 3] [--routes cholesky,cg]``;
results go to bench/results/cg_variances.json (or --out) and a markdown table is printed.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import machine_info, peak_extra_mib, rss_kib, reset_peak_rss  # noqa: E402
from _problem import NOISE, PRIOR_VAR, TEST_SEED, TRAIN_SEED, data, dense_ntk_posterior, mlp, relative_errors  # noqa: E402

from ntk_studio.core import LinearizedGP, cg_variance, prefix  # noqa: E402

THREADS = 1
RESULTS_PATH = Path(__file__).resolve().parent / "results" / "cg_variances.json"
ROUTES = ("cholesky", "cg")
ALL_ROUTES = ("cholesky", "cg", "cg-blockcg", "cg-matrixfree")
STAGES = ("_fit_function_cholesky", "_fit_function_cg", "_stored_kernel", "_variance_preconditioner", "_variance_factor",
          "predict_mean", "_variance_chunk", "_cross_kernel", "_bounded_variances", "_variance_cg")


def _timed_stages(gp: LinearizedGP) -> dict[str, float]:
    """Wrap the GP's stage methods so each call's wall time adds to the returned dict (instance-level)."""
    spent: dict[str, float] = {}
    for name in STAGES:
        fn = getattr(gp, name, None)
        if fn is None:
            continue

        def wrapped(*a, _fn=fn, _name=name, **kw):
            start = time.perf_counter()
            try:
                return _fn(*a, **kw)
            finally:
                spent[_name] = spent.get(_name, 0.0) + time.perf_counter() - start

        setattr(gp, name, wrapped)
    return spent


def route_budget(route: str, model, X) -> dict:
    """Return the LinearizedGP memory_budget keyword that puts solver='cg' on `route` (empty: the default)."""
    if route == "cg-matrixfree":
        return {"memory_budget": 1}
    if route == "cg-blockcg":  # the stored kernel fits, a factor beside it does not
        probe = LinearizedGP(copy.deepcopy(model))
        probe.kernels._decide(probe.lm.prepare(X))
        need = cg_variance.stored_kernel_bytes(X.shape[0], 1, probe.lm.num_params, 8, probe.kernels.use_structured)
        return {"memory_budget": need + 8}
    return {}


def run_route(route: str, model, X, y, Xs, cg_tol: float) -> dict:
    """Return fit + predict time, variances and solver facts of one route on a fresh, uncached GP."""
    budget = route_budget(route, model, X)  # before the clock and before the caches are cleared
    prefix.clear_cache()
    gp = LinearizedGP(copy.deepcopy(model), prior_var=PRIOR_VAR, noise=NOISE, space="function",
                      solver="cholesky" if route == "cholesky" else "cg", cg_tol=cg_tol, **budget)
    gp.kernels.clear_cache()
    spent = _timed_stages(gp)
    gc.collect()
    base = rss_kib()
    reset_peak_rss()
    start = time.perf_counter()
    gp.fit(X, y)
    fit_s = time.perf_counter() - start
    mean, var = gp.predict(Xs)
    total = time.perf_counter() - start
    info, vinfo = gp.solve_info, gp.variance_solve_info
    return {
        "route": route, "fit_s": fit_s, "total_s": total, "peak_extra_mib": peak_extra_mib(base),
        "stages_s": {k: round(v, 3) for k, v in spent.items()},
        "fit_iterations": info.iterations, "fit_residual": info.residual,
        "var_iterations": None if vinfo is None else vinfo.iterations,
        "var_residual": None if vinfo is None else vinfo.residual,
        "var_products": None if vinfo is None else vinfo.products,
        "var_bound": getattr(vinfo, "max_relative_error_bound", None),
        "var_solver": None if vinfo is None else vinfo.solver, "var_note": None if vinfo is None else vinfo.note,
        "fit_note": info.note, "plan": gp.plan.describe(),
        "mean": mean, "var": var,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--m", type=int, default=1000)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cg-tol", type=float, default=None, help="default: LinearizedGP's default cg_tol")
    ap.add_argument("--routes", default=",".join(ROUTES), help=f"comma-separated, of {', '.join(ALL_ROUTES)}")
    ap.add_argument("--out", type=Path, default=RESULTS_PATH)
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    model = mlp(args.width)
    P = sum(p.numel() for p in model.parameters())
    X, y = data(args.n, TRAIN_SEED)
    Xs, _ = data(args.m, TEST_SEED)
    cg_tol = args.cg_tol if args.cg_tol is not None else LinearizedGP(mlp(4)).cg_tol
    t = time.perf_counter()
    ref_mean, ref_var = dense_ntk_posterior(copy.deepcopy(model), X, y, Xs, torch.float64)
    ref_s = time.perf_counter() - t
    routes = args.routes.split(",")
    rows: dict[str, list[dict]] = {r: [] for r in routes}
    for _ in range(args.rounds):
        for r in routes:
            res = run_route(r, model, X, y, Xs, cg_tol)
            res["var_err"] = relative_errors(res.pop("var"), ref_var)
            res["mean_err"] = relative_errors(res.pop("mean"), ref_mean)
            rows[r].append(res)
            print(json.dumps(res), flush=True)
    summary = {}
    for r in routes:
        runs = rows[r]
        summary[r] = {
            "total_s_median": statistics.median(x["total_s"] for x in runs),
            "fit_s_median": statistics.median(x["fit_s"] for x in runs),
            **{k: runs[-1][k] for k in ("var_err", "mean_err", "fit_iterations", "var_iterations", "var_residual",
                                         "var_bound", "var_products", "var_solver", "var_note", "stages_s",
                                         "peak_extra_mib")},
        }
    for r in routes:
        if r != "cholesky" and "cholesky" in routes:
            ratios = [c["total_s"] / h["total_s"] for c, h in zip(rows[r], rows["cholesky"])]
            summary[f"{r}_over_cholesky_median"] = statistics.median(ratios)
            summary[f"{r}_over_cholesky_rounds"] = ratios
    out = {"machine": machine_info(THREADS), "n": args.n, "m": args.m, "P": P, "cg_tol": cg_tol,
           "dense_reference_s": ref_s, "runs": rows, "summary": summary}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"\nn = {args.n}, m = {args.m}, P = {P:,}, cg_tol = {cg_tol:g}, load at start "
          f"{out['machine']['load_average_at_start']}, {THREADS} thread(s)")
    print("| route | fit + variances (s, median) | / Cholesky (per round) | variance max rel. error | reported bound | "
          "iterations (fit / var) | peak extra MiB |")
    print("|---|---|---|---|---|---|---|")
    for r in routes:
        s = summary[r]
        bound = "–" if s["var_bound"] is None else f"{s['var_bound']:.1e}"
        ratio = summary.get(f"{r}_over_cholesky_rounds")
        ratio = "–" if ratio is None else f"{summary[f'{r}_over_cholesky_median']:.2f} ({', '.join(f'{x:.2f}' for x in ratio)})"
        print(f"| {r} | {s['total_s_median']:.2f} | {ratio} | {s['var_err']['max_rel']:.1e} | {bound} | "
              f"{s['fit_iterations']} / {s['var_iterations']} | {s['peak_extra_mib']} |")
    for r in routes:
        if summary[r]["var_note"]:
            print(f"{r}: {summary[r]['var_note']}")


if __name__ == "__main__":
    main()
