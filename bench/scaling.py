"""Benchmark 2: how our four exact routes and the dense-NTK baseline scale in n and in P (CPU, float64).

Two sweeps of the problem in ``_problem.py`` (s² = 1, σ² = 0.01), every point in a fresh child
process under a memory and time limit:

- in n, for the MLPs 8-27-27-1 (P = 1,027) and 8-128-128-1 (P = 17,793): n = 100 … 100,000;
- in P, for n = 1,000: MLP 8-w-w-1 with w chosen so that P ≈ 10³, 10⁴, 10⁵, 10⁶.

Each point times the fit and a prediction (mean and noise-free variance) at M_TEST test points, and
reads the child's peak extra RSS. A point is skipped, with the reason recorded, when its memory
estimate exceeds the budget ("does not fit") or when the time extrapolated from the route's two
previous points on the same sweep exceeds the child's time limit; that is where a route "falls over".

Run through ``bench/run.py``; ``python bench/scaling.py --child ROUTE N WIDTH`` is one measurement.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

import _problem as prob
from _limits import GIB, emit, run_limited
from _measure import measured_call, peak_extra_mib

THREADS = 1
M_TEST = 10  # test points per prediction: CG routes solve one system per test point
CG_TOL = 1e-6
CG_PRECOND_RANK = 32
WARMUP_WIDTH, WARMUP_N = 4, 16
F64 = 8
CHOLESKY_COPIES = 4  # system-sized matrices at the peak of our Cholesky routes (see peers.estimate_bytes)
ROUTES = {
    "ours_fn_chol": "ours: function space, Cholesky",
    "ours_fn_cg": "ours: function space, CG",
    "ours_w_chol": "ours: weight space, Cholesky",
    "ours_w_cg": "ours: weight space, CG",
    "dense": "dense NTK (vmap(jacrev) + Cholesky)",
}
# "n": sizes swept for each model width in "n_widths" (P = 1,027 and 17,793); "P": parameter
# counts swept at n = "n_for_P".
SWEEPS = {
    "full": {"n": (100, 300, 1000, 3000, 10000, 30000, 100000), "n_widths": (27, prob.DEFAULT_WIDTH),
             "P": (10**3, 10**4, 10**5, 10**6), "n_for_P": 1000},
    "quick": {"n": (100, 1000), "n_widths": (27,), "P": (3 * 10**3,), "n_for_P": 100},
}
LIMITS = {"full": (240.0, 8 * GIB), "quick": (30.0, 4 * GIB)}  # per child: seconds, RSS bytes
SLOPE_BOUNDS = (1.0, 3.0)  # clamp of the log-log slope used to extrapolate time
DEFAULT_SLOPE = 2.0  # used when a route has only one point on a sweep so far


def estimate_bytes(route: str, n: int, P: int, m: int = M_TEST) -> int:
    """Return the float64 bytes a route is expected to hold at its peak."""
    if route == "ours_fn_chol":
        return CHOLESKY_COPIES * n * n * F64 + 2 * n * m * F64
    if route == "ours_w_chol":
        return CHOLESKY_COPIES * P * P * F64 + min(n, 1024) * P * F64
    if route == "dense":
        return (n + m) * P * F64 + 2 * n * n * F64 + prob.DENSE_CHUNK * P * F64
    if route == "ours_fn_cg":
        return (CG_PRECOND_RANK + 8) * n * F64 + 8 * P * F64 + 2 * n * m * F64
    return 16 * P * F64 + 2 * m * P * F64  # ours_w_cg


# ===================================================================== child side
def _fit_predict(route: str, width: int):
    model = prob.mlp(width)
    if route == "dense":
        return lambda X, y: (X, y), lambda st, Xs: prob.dense_ntk_posterior(model, st[0], st[1], Xs, torch.float64)
    from ntk_studio.core import LinearizedGP

    space = "function" if "_fn_" in route else "weight"
    solver = "cg" if route.endswith("cg") else "cholesky"

    def fit(X, y):
        gp = LinearizedGP(model, prior_var=prob.PRIOR_VAR, noise=prob.NOISE, space=space, solver=solver,
                          cg_tol=CG_TOL, precond_rank=CG_PRECOND_RANK, memory_budget=64 * GIB)
        return gp.fit(X, y)

    return fit, lambda gp, Xs: gp.predict(Xs)


def run_child(route: str, n: int, width: int) -> None:
    """Measure one (route, n, width): fit, then predict at M_TEST points; emit JSON lines."""
    torch.set_num_threads(THREADS)
    X, y = prob.data(n, prob.TRAIN_SEED)
    Xs, _ = prob.data(M_TEST, prob.TEST_SEED)
    wfit, wpred = _fit_predict(route, WARMUP_WIDTH)
    wpred(wfit(X[:WARMUP_N], y[:WARMUP_N]), Xs)
    fit, predict = _fit_predict(route, width)
    state, fit_s, base = measured_call(fit, X, y)
    info = getattr(state, "solve_info", None)
    emit(fit_s=round(fit_s, 3), fit_peak_extra_mib=peak_extra_mib(base),
         products=getattr(info, "products", None), residual=getattr(info, "residual", None))
    start = time.perf_counter()
    _, var = predict(state, Xs)
    emit(predict_s=round(time.perf_counter() - start, 3), var_min=float(var.min()),
         peak_extra_mib=peak_extra_mib(base))


# ===================================================================== parent side
def _projected_s(history: list[dict], x: float, key: str) -> float | None:
    """Return the total time at x extrapolated log-log from the last two ok points (None: no data)."""
    ok = [h for h in history if h["status"] == "ok"]
    if not ok:
        return None
    last = ok[-1]
    slope = DEFAULT_SLOPE
    if len(ok) >= 2 and ok[-2]["total_s"] > 0 and ok[-2][key] != last[key]:
        slope = math.log(last["total_s"] / ok[-2]["total_s"]) / math.log(last[key] / ok[-2][key])
    slope = min(max(slope, SLOPE_BOUNDS[0]), SLOPE_BOUNDS[1])
    return last["total_s"] * (x / last[key]) ** slope


def _point(route: str, n: int, width: int, history: list[dict], key: str, limits, log) -> dict:
    timeout_s, mem_limit = limits
    P = prob.mlp_params(width)
    row = {"route": route, "n": n, "width": width, "P": P}
    est = estimate_bytes(route, n, P)
    row["estimate_gib"] = round(est / GIB, 2)
    projected = _projected_s(history, row[key], key)
    if est > mem_limit:
        row.update(status="skipped", reason=f"does not fit (estimate {est / GIB:.1f} GiB)")
    elif history and history[-1]["status"] != "ok":
        row.update(status="skipped", reason="the previous size already fell over")
    elif projected is not None and projected > timeout_s:
        row.update(status="skipped", reason=f"projected ~{projected:,.0f} s > {timeout_s:.0f} s limit")
    else:
        args = [str(Path(__file__).resolve()), "--child", route, str(n), str(width)]
        row.update(run_limited(args, timeout_s, mem_limit))
        if row["status"] == "ok":
            row["total_s"] = round(row["fit_s"] + row["predict_s"], 3)
        elif row["status"] == "timeout":
            row["reason"] = f"did not finish in {timeout_s:.0f} s"
        elif row["status"] in ("killed", "oom"):
            row["reason"] = f"out of the {mem_limit / GIB:.0f} GiB limit"
        else:
            tail = row.get("stderr_tail", "").strip().splitlines()
            row["reason"] = "error: " + (tail[-1] if tail else "no message")[:160]
    log(f"scaling {route} n={n} P={P}: {row['status']} {row.get('reason', '')} ({row.get('wall_s', 0)} s)")
    return row


def run(mode: str, log=print) -> dict:
    """Return {"settings", "n_sweep", "P_sweep"}: one row per (route, size), measured or skipped."""
    sweep, limits = SWEEPS[mode], LIMITS[mode]
    n_rows, p_rows = [], []
    for route in ROUTES:
        for width in sweep["n_widths"]:
            hist: list[dict] = []
            for n in sweep["n"]:
                hist.append(_point(route, n, width, hist, "n", limits, log))
            n_rows += hist
        hist = []
        for target in sweep["P"]:
            hist.append(_point(route, sweep["n_for_P"], prob.width_for_params(target), hist, "P", limits, log))
        p_rows += hist
    return {"settings": {"m_test": M_TEST, "cg_tol": CG_TOL, "precond_rank": CG_PRECOND_RANK,
                         "timeout_s": limits[0], "mem_limit_gib": limits[1] / GIB, "n_for_P": sweep["n_for_P"],
                         "P_for_n": [prob.mlp_params(w) for w in sweep["n_widths"]], "dtype": "float64"},
            "n_sweep": n_rows, "P_sweep": p_rows}


def main(argv: list[str] | None = None) -> None:
    """Child entry point: measure one (route, n, width) (the parent is bench/run.py)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", nargs=3, metavar=("ROUTE", "N", "WIDTH"), required=True)
    args = ap.parse_args(argv)
    route, n, width = args.child
    if route not in ROUTES:
        raise SystemExit(f"unknown route {route!r}; one of {', '.join(ROUTES)}")
    run_child(route, int(n), int(width))


if __name__ == "__main__":
    main()
