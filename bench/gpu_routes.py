"""GPU check, parts 2b–3: our four exact routes and the dense NTK on the device.

- ``peers_free``: the peers benchmark without laplace-torch (bench/peers.py): MLP 8-128-128-1, n = 2,000
  train and m = 1,000 test points of ``_problem.py``; every route in float64 and float32 against the
  float64 dense-NTK reference (variance error, mean error, time, peak device memory).
- ``scaling``: the scaling benchmark (bench/scaling.py): time and peak memory as n grows (P = 17,793)
  and as P grows (n = 1,000), every route, float64 and float32. A point is skipped when the time
  extrapolated from the route's previous points (scaling._projected_s) exceeds the per-point cap, or
  when the planner says it does not fit the device's memory budget.
- ``limits``: for each route the largest n (P = 17,793) and the largest P (n = 1,000) that fit, by
  doubling until a probe fails (out of memory, the planner's refusal, or over the time cap), then
  bisecting between the last success and the first failure.

Everything runs in this process on the device (CUDA out-of-memory is recoverable); the caller runs
the whole part in a child process with a hard time limit (bench/gpu_check.py).
"""

from __future__ import annotations

import math
import time

import torch

import _problem as prob
import gpu_common as common
import scaling
from ntk_studio.core.device import memory_budget

ROUTES = tuple(scaling.ROUTES)  # ours_fn_chol, ours_fn_cg, ours_w_chol, ours_w_cg, dense
LABELS = scaling.ROUTES
CG_TOL = scaling.CG_TOL
CG_PRECOND_RANK = scaling.CG_PRECOND_RANK
CG_VAR_POINTS = 50  # as bench/peers.py: CG routes predict variances at the first 50 test points
DTYPES = (torch.float64, torch.float32)
BUDGET_FRACTION = 0.9  # of the device's free memory, handed to the planner
QUICK_CPU_BUDGET = 2 * common.GIB

PEERS_SIZES = {"full": (2000, 1000, prob.DEFAULT_WIDTH), "quick": (200, 40, 16), "tiny": (24, 4, 4)}
SCALING = {
    "full": {"n": (1000, 10000, 100000), "width": prob.DEFAULT_WIDTH,
             "P": (10**4, 10**5, 10**6), "n_for_P": 1000, "m": scaling.M_TEST, "cap_s": 10.0},
    "quick": {"n": (100, 300), "width": 16, "P": (10**3, 3 * 10**3), "n_for_P": 100, "m": 5, "cap_s": 10.0},
    "tiny": {"n": (20,), "width": 4, "P": (100,), "n_for_P": 20, "m": 3, "cap_s": 5.0},
}
LIMITS = {
    "full": {"n0": 4096, "P0": 2**14, "n_for_P": 1000, "width": prob.DEFAULT_WIDTH, "m": scaling.M_TEST,
             "cap_s": 5.0, "bisect": 1, "n_max": 2**23, "P_max": 2**28},
    "quick": {"n0": 64, "P0": 2**9, "n_for_P": 32, "width": 16, "m": 4,
              "cap_s": 2.0, "bisect": 1, "n_max": 2**10, "P_max": 2**13},
    "tiny": {"n0": 16, "P0": 2**6, "n_for_P": 8, "width": 4, "m": 2,
             "cap_s": 1.0, "bisect": 1, "n_max": 32, "P_max": 2**7},
}


def budget_bytes(device: torch.device, mode: str) -> int:
    """Return the planner's memory budget on the device (capped on CPU in quick mode)."""
    b = memory_budget(device, BUDGET_FRACTION)
    return min(b, QUICK_CPU_BUDGET) if device.type == "cpu" and mode != "full" else b


def dense_bytes(n: int, P: int, m: int, itemsize: int) -> int:
    """Return the dense-NTK baseline's memory (scaling.estimate_bytes, scaled to the dtype)."""
    return scaling.estimate_bytes("dense", n, P, m) * itemsize // 8


# ===================================================================== one measurement
def probe(route: str, n: int, width: int, m: int, dtype: torch.dtype, device: torch.device, budget: int,
          keep: bool = False) -> dict:
    """Fit one route on n training points and predict m test points; return times, memory and status.

    status: 'ok', 'oom' (device out of memory, or the planner's refusal: 'planner' in reason) or
    'error'. With keep=True the (mean, var) tensors are returned under "_mean"/"_var" (CPU, float64).
    """
    P = prob.mlp_params(width)
    row = {"route": route, "n": n, "width": width, "P": P, "m": m, "dtype": common.dtype_name(dtype)}
    itemsize = torch.finfo(dtype).bits // 8
    if route == "dense" and dense_bytes(n, P, m, itemsize) > budget:
        row.update(status="oom", reason=f"planner: dense J and kernel need ~{dense_bytes(n, P, m, itemsize) / common.GIB:.1f} GiB "
                                        f"> budget {budget / common.GIB:.1f} GiB")
        return row
    X, y = prob.data(n, prob.TRAIN_SEED)
    Xs, _ = prob.data(m, prob.TEST_SEED)
    X, y, Xs = X.to(device), y.to(device), Xs.to(device)
    model = prob.mlp(width).to(device)
    try:
        with common.Meter(device) as meter:
            if route == "dense":  # one call: the baseline's posterior needs the test points
                (mean, var), fit_s = common.timed(
                    lambda: prob.dense_ntk_posterior(model, X, y, Xs, dtype), device)
                predict_s, info, plan = None, None, None
            else:
                from ntk_studio.core import LinearizedGP

                space = "function" if "_fn_" in route else "weight"
                solver = "cg" if route.endswith("cg") else "cholesky"
                gp = LinearizedGP(model, prior_var=prob.PRIOR_VAR, noise=prob.NOISE, space=space, solver=solver,
                                  cg_tol=CG_TOL, precond_rank=CG_PRECOND_RANK, memory_budget=budget, dtype=dtype,
                                  device=device)
                _, fit_s = common.timed(lambda: gp.fit(X, y), device)
                (mean, var), predict_s = common.timed(lambda: gp.predict(Xs), device)
                info, plan = gp.solve_info, gp.plan
            row.update(status="ok", fit_s=round(fit_s, 4),
                       predict_s=None if predict_s is None else round(predict_s, 4),
                       total_s=round(fit_s + (predict_s or 0.0), 4), peak_mib=meter.peak_mib())
        if info is not None:
            row.update(residual=info.residual, products=getattr(info, "products", None),
                       converged=getattr(info, "converged", True))
        if plan is not None:
            row["plan_mib"] = round(plan.est_bytes / common.MIB, 1)
        row["var_min"] = float(var.min())
        if keep:
            row["_mean"], row["_var"] = mean.detach().double().cpu().reshape(-1), var.detach().double().cpu().reshape(-1)
    except Exception as exc:  # noqa: BLE001 — every failure is a result here
        row.update(status="oom" if common.is_oom(exc) else "error", reason=common.describe_exc(exc))
        if "MemoryBudgetError" in row["reason"]:
            row["reason"] = "planner: " + row["reason"]
    finally:
        del model, X, y, Xs
        common.release(device)
    return row


WARMUP_N, WARMUP_WIDTH, WARMUP_M = 16, 4, 4


def warmup(device: torch.device, mode: str, dtypes=DTYPES) -> float:
    """Run every route once on a tiny problem (imports, CUDA context and kernels); return the seconds.

    On CPU only the first dtype is warmed (there the first call pays imports, not per-dtype kernels).
    """
    start = time.perf_counter()
    if mode == "tiny":  # the test-sized run measures nothing worth warming for
        return 0.0
    for dtype in dtypes if device.type == "cuda" else dtypes[:1]:
        for route in ROUTES:
            probe(route, WARMUP_N, WARMUP_WIDTH, WARMUP_M, dtype, device, budget_bytes(device, mode))
    return round(time.perf_counter() - start, 2)


# ===================================================================== peers-free comparison
def peers_free(device: torch.device, mode: str, deadline: common.Deadline | None = None, log=print) -> dict:
    """Return every route in float64 and float32 against the float64 dense NTK (variance and mean errors)."""
    n, m, width = PEERS_SIZES[mode]
    budget = budget_bytes(device, mode)
    warm_s = warmup(device, mode)
    ref = probe("dense", n, width, m, torch.float64, device, budget, keep=True)
    ref["reference"] = True
    rows = [ref]
    log(f"peers-free reference: {ref['status']} {ref.get('total_s', '')}")
    for dtype in DTYPES:
        for route in ROUTES:
            if route == "dense" and dtype == torch.float64:
                continue
            if deadline is not None and deadline.left() <= 0:
                rows.append({"route": route, "dtype": common.dtype_name(dtype), "n": n, "status": "skipped",
                             "reason": "step time budget spent"})
                continue
            mm = min(CG_VAR_POINTS, m) if route.endswith("cg") else m
            row = probe(route, n, width, mm, dtype, device, budget, keep=True)
            if row["status"] == "ok" and ref["status"] == "ok":
                k = row["_var"].numel()
                row["var_error"] = prob.relative_errors(row["_var"], ref["_var"][:k])
                row["mean_max_abs_error"] = float((row["_mean"] - ref["_mean"][:k]).abs().max())
                row["var_nonpositive"] = int((row["_var"] <= 0).sum())
            rows.append(row)
            log(f"peers-free {route} {dtype}: {row['status']} {row.get('total_s', row.get('reason', ''))}")
    for r in rows:
        r.pop("_mean", None), r.pop("_var", None)
    return {"settings": {"n": n, "m": m, "width": width, "params": prob.mlp_params(width), "prior_var": prob.PRIOR_VAR,
                         "noise": prob.NOISE, "cg_var_points": min(CG_VAR_POINTS, m), "budget_gib": round(budget / common.GIB, 1),
                         "warmup_s": warm_s},
            "rows": rows}


def peers_table(result: dict) -> str:
    head = ["route", "dtype", "test points", "fit", "predict", "peak MiB", "var max rel err", "var median rel err",
            "mean max abs err", "status"]
    rows = []
    for r in result["rows"]:
        err = r.get("var_error", {})
        rows.append([LABELS.get(r["route"], r["route"]) + (" (reference)" if r.get("reference") else ""), r["dtype"],
                     r.get("m", "–"), common.fmt_s(r.get("fit_s")), common.fmt_s(r.get("predict_s")),
                     common.fmt_mib(r.get("peak_mib")),
                     common.fmt_rel(err.get("max_rel")) if err else ("0 (reference)" if r.get("reference") else "–"),
                     common.fmt_rel(err.get("median_rel")) if err else "–",
                     f"{r['mean_max_abs_error']:.1e}" if "mean_max_abs_error" in r else "–",
                     r["status"] + (f": {r['reason']}" if r.get("reason") else "")])
    return common.md_table(head, rows)


# ===================================================================== scaling sweeps
def _sweep(route, sizes, key, fixed, s, dtype, device, budget, deadline, log) -> list[dict]:
    hist: list[dict] = []
    for x in sizes:
        n, width = (x, s["width"]) if key == "n" else (s["n_for_P"], prob.width_for_params(x))
        P = prob.mlp_params(width)
        base = {"route": route, "n": n, "width": width, "P": P, "dtype": common.dtype_name(dtype), "sweep": key}
        projected = scaling._projected_s(hist, n if key == "n" else P, key)
        if hist and hist[-1]["status"] != "ok":
            row = {**base, "status": "skipped", "reason": "the previous size already fell over"}
        elif projected is not None and projected > s["cap_s"]:
            row = {**base, "status": "skipped", "reason": f"projected ~{projected:,.1f} s > {s['cap_s']:.0f} s cap"}
        elif deadline is not None and deadline.left() <= 0:
            row = {**base, "status": "skipped", "reason": "step time budget spent"}
        else:
            row = probe(route, n, width, s["m"], dtype, device, budget)
            row["sweep"] = key
            if row["status"] == "ok" and row["total_s"] > s["cap_s"]:
                row["over_cap"] = True
        log(f"scaling {route} {common.dtype_name(dtype)} n={n} P={P}: {row['status']} "
            f"{row.get('total_s', row.get('reason', ''))}")
        hist.append(row)
    return hist


def scaling_sweeps(device: torch.device, mode: str, deadline: common.Deadline | None = None, log=print) -> dict:
    """Return the n sweep and the P sweep for every route and dtype (scaling.py's sizes, on the device)."""
    s = SCALING[mode]
    budget = budget_bytes(device, mode)
    warm_s = warmup(device, mode)
    n_rows, p_rows = [], []
    for dtype in DTYPES:
        for route in ROUTES:
            n_rows += _sweep(route, s["n"], "n", s["width"], s, dtype, device, budget, deadline, log)
            p_rows += _sweep(route, s["P"], "P", s["n_for_P"], s, dtype, device, budget, deadline, log)
    return {"settings": {"m_test": s["m"], "cap_s": s["cap_s"], "P_for_n": prob.mlp_params(s["width"]),
                         "n_for_P": s["n_for_P"], "budget_gib": round(budget / common.GIB, 1), "warmup_s": warm_s},
            "n_sweep": n_rows, "P_sweep": p_rows}


def scaling_table(rows: list[dict], key: str) -> str:
    head = ["route", "dtype", key, "fit", "predict", "total", "peak MiB", "status"]
    out = []
    for r in rows:
        out.append([LABELS.get(r["route"], r["route"]), r["dtype"], f"{r[key]:,}", common.fmt_s(r.get("fit_s")),
                    common.fmt_s(r.get("predict_s")), common.fmt_s(r.get("total_s")), common.fmt_mib(r.get("peak_mib")),
                    r["status"] + (f": {r['reason']}" if r.get("reason") else "")])
    return common.md_table(head, out)


# ===================================================================== largest n and P
def _size_args(key: str, x: int, s: dict) -> tuple[int, int]:
    """Return (n, width) for a probe of size x on the n or P axis."""
    if key == "n":
        return x, s["width"]
    return s["n_for_P"], prob.width_for_params(x)


def find_limit(route: str, key: str, device: torch.device, mode: str, budget: int, seconds: float, log=print,
               dtype: torch.dtype = torch.float64) -> dict:
    """Return the largest size on axis `key` ('n' or 'P') that fits within the time cap, with every probe.

    Doubling from the start size until a probe fails (out of memory, planner refusal, over the time
    cap, or projected over it), then bisection (geometric) between the last success and the first
    failure. `seconds` bounds the whole search; when it runs out the result says so.
    """
    s = LIMITS[mode]
    cap, deadline = s["cap_s"], common.Deadline(seconds)
    x, x_max = (s["n0"], s["n_max"]) if key == "n" else (s["P0"], s["P_max"])
    probes: list[dict] = []
    ok_hist: list[dict] = []
    lo, hi, why = None, None, None

    def attempt(x: int) -> bool | None:
        """Return True (fits), False (fails) or None (not tried: the search's time is spent)."""
        nonlocal why
        n, width = _size_args(key, x, s)
        size = n if key == "n" else prob.mlp_params(width)
        projected = scaling._projected_s(ok_hist, size, key)
        if projected is not None and projected > cap:
            row = {"route": route, key: size, "status": "time", "reason": f"projected ~{projected:.1f} s > {cap:.0f} s cap"}
        elif deadline.left() <= 0 or (projected is not None and projected > deadline.left()):
            log(f"limits {route} {key}={size:,}: not tried, search time budget spent")
            return None
        else:
            row = probe(route, n, width, s["m"], dtype, device, budget)
            row[key] = size
            if row["status"] == "ok" and row["total_s"] > cap:
                row.update(status="time", reason=f"took {row['total_s']:.1f} s > {cap:.0f} s cap")
        probes.append(row)
        log(f"limits {route} {key}={size:,}: {row['status']} {row.get('total_s', row.get('reason', ''))}")
        if row["status"] == "ok":
            ok_hist.append(row)
            return True
        why = row
        return False

    stopped = False
    while x <= x_max:  # doubling
        fits = attempt(x)
        if fits is None:
            stopped = True
            break
        if not fits:
            hi = x
            break
        lo = x
        x *= 2
    steps = 0  # bisection between lo (fits) and hi (does not)
    while not stopped and lo is not None and hi is not None and steps < s["bisect"] and hi / lo > 1.15:
        mid = int(round(math.sqrt(lo * hi)))
        fits = attempt(mid)
        if fits is None:
            stopped = True
        elif fits:
            lo = mid
        else:
            hi = mid
        steps += 1
    last = next((p for p in reversed(probes) if p["status"] == "ok"), None)
    if hi is None:
        limited_by = "search time budget spent" if stopped else "search ceiling reached"
    else:
        limited_by = {"oom": "memory", "time": "time cap", "error": "error"}.get(why["status"], why["status"])
        if why["status"] == "oom" and str(why.get("reason", "")).startswith("planner"):
            limited_by = "memory (planner's estimate)"
    return {"route": route, "axis": key, "largest": None if last is None else last[key],
            "first_failure": None if hi is None else (why or {}).get(key, hi), "limited_by": limited_by,
            "bisection_stopped_early": stopped and hi is not None,
            "failure_reason": None if why is None else why.get("reason"),
            "largest_probe": last, "probes": probes,
            "fixed": {"P": prob.mlp_params(s["width"])} if key == "n" else {"n": s["n_for_P"]}}


def limits(device: torch.device, mode: str, deadline: common.Deadline, log=print) -> dict:
    """Return the largest n and P per route (float64), sharing the step's time budget between searches."""
    budget = budget_bytes(device, mode)
    warm_s = warmup(device, mode, (torch.float64,))
    searches = [(route, key) for key in ("n", "P") for route in ROUTES]
    rows = []
    for i, (route, key) in enumerate(searches):
        share = max(deadline.left(), 0.0) / (len(searches) - i)
        if share <= 0:
            rows.append({"route": route, "axis": key, "largest": None, "limited_by": "step time budget spent",
                         "probes": []})
            continue
        rows.append(find_limit(route, key, device, mode, budget, share, log))
    s = LIMITS[mode]
    return {"settings": {"cap_s": s["cap_s"], "P_for_n": prob.mlp_params(s["width"]), "n_for_P": s["n_for_P"],
                         "m_test": s["m"], "dtype": "float64", "budget_gib": round(budget / common.GIB, 1),
                         "warmup_s": warm_s},
            "rows": rows}


def limits_table(result: dict) -> str:
    head = ["route", "axis", "largest that fits", "its fit + predict", "its peak MiB", "first failure", "limited by"]
    out = []
    for r in result["rows"]:
        lp = r.get("largest_probe") or {}
        out.append([LABELS.get(r["route"], r["route"]), f"{r['axis']} (" + ", ".join(f"{k} = {v:,}" for k, v in r.get("fixed", {}).items()) + ")",
                    common.fmt_int(r.get("largest")), common.fmt_s(lp.get("total_s")), common.fmt_mib(lp.get("peak_mib")),
                    common.fmt_int(r.get("first_failure")),
                    r["limited_by"] + (f" ({r['failure_reason']})" if r.get("failure_reason")
                                       and r["failure_reason"] != r["limited_by"] else "")])
    return common.md_table(head, out)
