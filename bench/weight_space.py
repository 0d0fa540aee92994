"""Weight space (issue #17): every weight route against function space and a dense float64 reference.

Problem: bench/_problem.py's tanh MLP 8-w-w-1 with w chosen for P ≈ 5,000 and ≈ 20,000, n training
points, m test points with predictive variances, s² = 1, σ² = 0.01, float64, one thread. Routes,
each a fresh ``LinearizedGP`` in its own child process (time limit, fresh caches, no timed call
answered by a cache):

* ``fn_chol``   function-space Cholesky (the reference route for speed);
* ``w_auto``    space='weight', solver left to the planner (what "forced weight space" gets);
* ``w_chol``    the dense P × P route (JᵀJ, Cholesky), when its 3·P² floats fit the budget;
* ``w_cg``      weight-space CG with the rank-r Nyström preconditioner (r = --rank);
* ``w_cg0``     weight-space CG without a preconditioner (precond_rank = 0, what the engine had).

CG routes answer variances by one block solve per chunk; at P = 20k their cost per test point is
large, so they predict variances for --cg-points of the test points (timed, reported per point).
Errors: max |mean − ref| / max |ref|, and max |var − ref| / ref over the points predicted; the
reference is the dense-J float64 posterior of bench/_problem.py (computed once in the parent).

A calibration block measures the planner's constants on this machine in the same run: the matmul
rate, seconds per per-sample Jacobian row per parameter, and per GGN product column per (row ×
parameter), single and 64-column blocks, expressed in flop-equivalents at the measured rate.

    .venv/bin/python bench/weight_space.py [--params 5000 20000] [--n 2000] [--m 1000] [--rounds 1]
        [--routes fn_chol w_auto ...] [--out bench/results/weight_space.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _problem import NOISE, PRIOR_VAR, data, dense_ntk_posterior, mlp, width_for_params  # noqa: E402

ROUTES = {
    "fn_chol": {"space": "function", "solver": "cholesky"},
    "w_auto": {"space": "weight", "solver": "auto"},
    "w_chol": {"space": "weight", "solver": "cholesky"},
    "w_cg": {"space": "weight", "solver": "cg"},
    "w_cg0": {"space": "weight", "solver": "cg", "precond_rank": 0},
}


def _child(route: str, P: int, n: int, m: int, cg_points: int, rank: int, ref_path: str) -> dict:
    from ntk_studio.core.gp import LinearizedGP

    torch.set_num_threads(1)
    ref = torch.load(ref_path)
    model = mlp(width_for_params(P))
    X, y = data(n, 1)
    Xs, _ = data(m, 2)
    opts = {"precond_rank": rank, **ROUTES[route]}
    # Warm-up on other data and another predictor (imports, vmap tracing); nothing it leaves is reused.
    Xw, yw = data(16, 3)
    LinearizedGP(mlp(width_for_params(P)), prior_var=PRIOR_VAR, noise=NOISE, **opts).fit(Xw, yw).predict(Xw[:4])
    gp = LinearizedGP(model, prior_var=PRIOR_VAR, noise=NOISE, cg_tol=1e-8, cg_max_iter=5000, **opts)
    start = time.perf_counter()
    gp.fit(X, y)
    fit_s = time.perf_counter() - start
    plan = gp.plan
    start = time.perf_counter()
    mean = gp.predict_mean(Xs)
    mean_s = time.perf_counter() - start
    k = m if plan.solver == "cholesky" else min(m, cg_points)
    start = time.perf_counter()
    _, var = gp.predict(Xs[:k])
    var_s = time.perf_counter() - start
    info, vinfo = gp.solve_info, gp.variance_solve_info
    return {
        "route": route, "P": gp.lm.num_params, "n": n, "m": m, "variance_points": k,
        "plan": f"{plan.space}/{plan.solver}", "plan_text": plan.describe(), "est_seconds": plan.est_seconds,
        "fit_s": fit_s, "mean_s": mean_s, "var_s": var_s, "var_s_per_point": var_s / k,
        "total_s_all_variances": fit_s + mean_s + var_s * m / k,
        "mean_err": float((mean - ref["mean"]).abs().max() / ref["mean"].abs().max()),
        "var_err": float(((var - ref["var"][:k]).abs() / ref["var"][:k]).max()),
        "iterations": info.iterations, "products": info.products, "residual": info.residual,
        "variance_iterations": vinfo.iterations if vinfo else None,
    }


def _calibrate(P: int, n: int) -> dict:
    """Return the planner's constants measured on this problem (flop-equivalents at the matmul rate)."""
    from ntk_studio.core.gpytorch_bridge import GGNOperator
    from ntk_studio.core.linearized import LinearizedModel
    from ntk_studio.core.plan import flops_per_second

    torch.set_num_threads(1)
    rate = flops_per_second()
    lm = LinearizedModel(mlp(width_for_params(P)))
    X, _ = data(n, 1)
    Pn = lm.num_params
    op = GGNOperator(X, lm=lm)
    out = {"flops_per_second": rate, "P": Pn, "n": n}
    for cols in (1, 64):
        V = torch.randn(Pn, cols, dtype=torch.float64)
        op._matmul(V)  # warm-up (vmap tracing)
        start = time.perf_counter()
        op._matmul(V)
        t = (time.perf_counter() - start) / cols
        out[f"product_s_per_column_{cols}"] = t
        out[f"product_flops_{cols}"] = t * rate / (n * Pn)
    lm.jacobian(X[:64])
    start = time.perf_counter()
    lm.jacobian(X)
    t = time.perf_counter() - start
    out["jacobian_s"] = t
    out["jacobian_flops"] = t * rate / (n * Pn)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=int, nargs="+", default=[5000, 20000])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--m", type=int, default=1000)
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--cg-points", type=int, default=20)
    ap.add_argument("--routes", nargs="+", default=list(ROUTES))
    ap.add_argument("--rounds", type=int, default=1, help="repeat the route list, interleaved (medians in the docs)")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--out", default="bench/results/weight_space.json")
    ap.add_argument("--child", nargs=2, metavar=("ROUTE", "P"))
    ap.add_argument("--ref")
    ap.add_argument("--calibrate-only", action="store_true")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(args.child[0], int(args.child[1]), args.n, args.m, args.cg_points, args.rank, args.ref)))
        return
    torch.set_num_threads(1)
    results = {"load_start": os.getloadavg(), "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "calibration": _calibrate(args.params[0], args.n), "runs": []}
    print(json.dumps(results["calibration"]), flush=True)
    if args.calibrate_only:
        return
    with tempfile.TemporaryDirectory() as tmp:
        for P in args.params:
            X, y = data(args.n, 1)
            Xs, _ = data(args.m, 2)
            start = time.perf_counter()
            mean, var = dense_ntk_posterior(mlp(width_for_params(P)), X, y, Xs, torch.float64)
            ref_s = time.perf_counter() - start
            ref_path = os.path.join(tmp, f"ref{P}.pt")
            torch.save({"mean": mean, "var": var}, ref_path)
            results["runs"].append({"route": "dense_reference", "P": P, "total_s_all_variances": ref_s})
            for rnd, route in ((r, route) for r in range(args.rounds) for route in args.routes):
                cmd = [sys.executable, __file__, "--child", route, str(P), "--n", str(args.n), "--m", str(args.m),
                       "--cg-points", str(args.cg_points), "--rank", str(args.rank), "--ref", ref_path]
                try:
                    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
                    row = (json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0
                           else {"route": route, "P": P, "error": proc.stderr.strip().splitlines()[-1][:300]})
                except subprocess.TimeoutExpired:
                    row = {"route": route, "P": P, "error": f"over the {args.timeout:.0f} s limit"}
                row["load"], row["round"] = os.getloadavg()[0], rnd
                results["runs"].append(row)
                print(json.dumps(row), flush=True)
    results["load_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
