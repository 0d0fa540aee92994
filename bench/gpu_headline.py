"""GPU check, part 4: the headline — n = 100,000 training points, a 1,000,000-parameter network, exact
posterior mean and variance at 1,000 test points, in under a minute on one GPU.

The problem is _problem.py's (y = sin(Σx) + 0.1·ε, s² = 1, σ² = 0.01) with the MLP 8-w-w-1 whose P is
closest to 10⁶ (w = 995, P = 1,000,971). The engine runs as a user would run it: LinearizedGP with
space and solver 'auto', the memory budget from the device's free memory, float64 (or the precision
core.device.choose_precision picks). It reports the plan the engine chose, then the fit, then the
prediction at the first PILOT test points (so a run that cannot finish still measures its rate), then
the prediction at all test points. Each stage is emitted as a JSON line as soon as it is done; the
caller (bench/gpu_check.py) runs this in a child process with a hard time limit.

``--quick`` is the same pipeline scaled down for a CPU check: n = 2,000, P ≈ 10,000, 100 test points.
"""

from __future__ import annotations

import time

import torch

import _problem as prob
import gpu_common as common
from ntk_studio.core import LinearizedGP
from ntk_studio.core.device import choose_precision, memory_budget

SIZES = {"full": {"n": 100_000, "P": 1_000_000, "m": 1_000}, "quick": {"n": 2_000, "P": 10_000, "m": 100},
         "tiny": {"n": 50, "P": 300, "m": 12}}
TARGET_S = 60.0
PILOT = 10
BUDGET_FRACTION = 0.9


PROGRESS_EVERY_S = 5.0


def _fit_reporting(gp: LinearizedGP, X: torch.Tensor, y: torch.Tensor, emit, record: dict) -> LinearizedGP:
    """Fit through fit_iter, emitting the latest progress event every PROGRESS_EVERY_S seconds.

    A run killed at its time limit still tells how far the fit got (stage, products, residual).
    """
    start = last = time.perf_counter()
    gen = gp.fit_iter(X, y)
    while True:
        try:
            ev = next(gen)
        except StopIteration:
            return gp
        now = time.perf_counter()
        if now - last >= PROGRESS_EVERY_S or ev.stage == "plan":
            last = now
            record["fit_progress"] = {"stage": ev.stage, "progress": round(ev.progress, 4), "matvecs": ev.matvecs,
                                      "residual": ev.residual, "elapsed_s": round(now - start, 1),
                                      "message": ev.message[:200]}
            emit(fit_progress=record["fit_progress"])


def run(device: torch.device, mode: str, log=print, emit=common.emit) -> dict:
    """Fit and predict the headline problem on the device; return (and emit, stage by stage) the result."""
    s = SIZES[mode]
    width = prob.width_for_params(s["P"])
    P = prob.mlp_params(width)
    precision = choose_precision(device)
    dtype = precision.solves if not precision.mixed else torch.float32
    budget = memory_budget(device, BUDGET_FRACTION)
    out = {"n": s["n"], "m": s["m"], "width": width, "P": P, "dtype": common.dtype_name(dtype),
           "precision_policy": precision.to_dict(), "budget_gib": round(budget / common.GIB, 1),
           "target_s": TARGET_S}
    # Warm-up on a tiny problem (imports, CUDA context, kernels): the worker process is persistent,
    # so a user's fit does not pay this; it is reported separately.
    (_, _), warm_s = common.timed(lambda: LinearizedGP(prob.mlp(4).to(device), dtype=dtype, device=device).fit(
        *(t.to(device) for t in prob.data(16, prob.TRAIN_SEED))).predict(prob.data(4, prob.TEST_SEED)[0].to(device)), device)
    out["warmup_s"] = round(warm_s, 2)
    emit(**out)
    X, y = prob.data(s["n"], prob.TRAIN_SEED)
    Xs, _ = prob.data(s["m"], prob.TEST_SEED)
    X, y, Xs = X.to(device), y.to(device), Xs.to(device)
    model = prob.mlp(width).to(device)
    gp = LinearizedGP(model, prior_var=prob.PRIOR_VAR, noise=prob.NOISE, dtype=dtype, device=device,
                      memory_budget=budget)
    start = time.perf_counter()
    try:
        with common.Meter(device) as meter:
            _, fit_s = common.timed(lambda: _fit_reporting(gp, X, y, emit, out), device)
            info = gp.solve_info
            stage = {"plan": gp.plan.describe(), "space": gp.plan.space, "solver": gp.plan.solver,
                     "fit_s": round(fit_s, 2), "residual": info.residual,
                     "products": getattr(info, "products", None), "fit_peak_mib": meter.peak_mib()}
            out.update(stage)
            emit(**stage)
            log(f"headline fit: {fit_s:.1f} s ({gp.plan.describe()})")
            (_, pv), pilot_s = common.timed(lambda: gp.predict(Xs[:PILOT]), device)
            stage = {"pilot_points": PILOT, "pilot_predict_s": round(pilot_s, 3),
                     "projected_predict_s": round(pilot_s * s["m"] / PILOT, 1)}
            out.update(stage)
            emit(**stage)
            log(f"headline pilot prediction ({PILOT} points): {pilot_s:.2f} s")
            (mean, var), pred_s = common.timed(lambda: gp.predict(Xs), device)
            wall = time.perf_counter() - start
            total = fit_s + pred_s  # what a user waits for: the fit and one prediction of all test points
            v = var.double().reshape(-1)
            stage = {"predict_s": round(pred_s, 2), "total_s": round(total, 2), "wall_s": round(wall, 2),
                     "peak_mib": meter.peak_mib(),
                     "var_min": float(v.min()), "var_max": float(v.max()),
                     "var_nonpositive": int((v <= 0).sum()),
                     "prior_var_bound_ok": bool((v <= prob.PRIOR_VAR * gp.kernels.diag(Xs).double().reshape(-1) + 1e-9).all()),
                     "mean_finite": bool(torch.isfinite(mean).all()), "under_target": total < TARGET_S,
                     "status": "ok"}
            out.update(stage)
            emit(**stage)
            log(f"headline fit + predict: {total:.1f} s ({wall:.1f} s with the pilot and checks)")
    except Exception as exc:  # noqa: BLE001 — the distance to the headline is the result
        out.update(status="oom" if common.is_oom(exc) else "error", reason=common.describe_exc(exc),
                   failed_after_s=round(time.perf_counter() - start, 1))
        emit(status=out["status"], reason=out["reason"], failed_after_s=out["failed_after_s"])
    return out


def table(result: dict) -> str:
    head = ["n", "P", "test points", "dtype", "route", "fit", f"predict ({PILOT} pts)", "predict (all)", "fit + predict (all)",
            "peak MiB", "under 60 s", "status"]
    r = result
    status = r.get("status", "?")
    if status == "timeout":
        status = f"did not finish in {r.get('timeout_s', '?')} s"
    elif r.get("reason"):
        status = f"{status}: {r['reason']}"
    row = [f"{r.get('n', 0):,}", f"{r.get('P', 0):,}", f"{r.get('m', 0):,}", r.get("dtype", "–"),
           f"{r.get('space', '–')} {r.get('solver', '')}".strip(), common.fmt_s(r.get("fit_s")),
           common.fmt_s(r.get("pilot_predict_s")), common.fmt_s(r.get("predict_s")), common.fmt_s(r.get("total_s")),
           common.fmt_mib(r.get("peak_mib") or r.get("fit_peak_mib")),
           {True: "yes", False: "no"}.get(r.get("under_target"), "–"), status]
    text = common.md_table(head, [row])
    if r.get("plan"):
        text += f"\n\nPlan: {r['plan']}"
    if r.get("fit_progress") and r.get("fit_s") is None:
        p = r["fit_progress"]
        text += (f"\n\nThe fit did not finish: last progress after {p['elapsed_s']} s: stage {p['stage']}, "
                 f"{p['progress']:.0%}, {p['matvecs']} products, residual {p['residual']} ({p['message']}).")
    if r.get("projected_predict_s") is not None and r.get("predict_s") is None:
        text += f"\n\nPrediction projected from the pilot: ~{r['projected_predict_s']:,.0f} s for {r['m']:,} points."
    return text
