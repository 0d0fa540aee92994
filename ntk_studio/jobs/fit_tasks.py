"""Jobs that adapt the loaded model: the linearized GP (or classifier), fine-tuning, the GD trajectory.

Each payload carries what the window plots: predictions on an even grid for 1-D inputs, on the
held-out rows otherwise (predicted vs true), class probabilities and reliability for classifiers,
calibration and solver convergence, and the metrics of the comparison table.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from typing import Any

import numpy as np
import torch

from ntk_studio.core import LinearizedTrajectory
from ntk_studio.core.data.dataset import Dataset
from ntk_studio.core.errors import MemoryBudgetError, ShapeError, SolverError
from ntk_studio.core.metrics_regression import calibration_curve, interval_coverage
from ntk_studio.core.metrics_classification import reliability_diagram
from ntk_studio.core.pipeline import (
    SCORING_RULE, RunSettings, fine_tune_iter, fit_linearized_iter, hyper_info, point_predictions, score_finetuned,
    score_linearized, score_point, unlabelled_inputs,
)
from ntk_studio.core.progress import MAX_EVENTS_PER_SECOND, CancelToken

from .state import WorkerState, resolve_device
from .summaries import held_out_rows, plot_inputs_1d

MAX_GRID_POINTS = 100_000  # a plot needs a few hundred; more is a typo that would eat memory
TRAJECTORY_POINTS = 60  # slider positions
TRAJECTORY_MAX_STEPS = 10**6
TRAJECTORY_DECAY = 5.0  # run until the slowest non-null mode has decayed by e^-5 (or MAX_STEPS)
# Nominal levels of the coverage curve (central predictive intervals): every 5 %, and 99 %.
COVERAGE_LEVELS = tuple(k / 20 for k in range(1, 20)) + (0.99,)

JobGen = Generator[tuple[str, dict[str, Any]], None, dict[str, Any]]


def plot_inputs(data: Dataset, test: Dataset, grid_points: int) -> tuple[torch.Tensor, bool]:
    """Return (inputs to predict for the plot, whether they are an even 1-D grid)."""
    if plot_inputs_1d(data):
        if not 2 <= grid_points <= MAX_GRID_POINTS:
            raise ShapeError(f"grid_points must be between 2 and {MAX_GRID_POINTS}, got {grid_points}.")
        lo, hi = float(data.X.min()), float(data.X.max())
        return torch.linspace(lo, hi, grid_points, dtype=data.X.dtype).unsqueeze(-1), True
    return test.X, False


def _progress(event) -> dict[str, Any]:
    return {"stage": event.stage, "progress": event.progress, "matvecs": event.matvecs,
            "residual": event.residual, "elapsed": event.elapsed, "message": event.message}


def run_settings(state: WorkerState, args: dict) -> RunSettings:
    """Return the pipeline's RunSettings for a job's arguments (the same settings the CLI builds)."""
    keys = ("params", "n_adapt", "seed", "prior_var", "noise", "fit_hyper", "space", "solver", "epochs", "lr",
            "batch_size")
    given = {k: args[k] for k in keys if k in args}
    return RunSettings(task=state.task, **{k: v for k, v in given.items() if v is not None or k in ("n_adapt", "noise")})


def _calibration(curve) -> dict[str, Any]:
    return {"expected": curve.expected, "observed": curve.observed, "error": curve.error}


def _coverage(mean: torch.Tensor, var: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """Return the coverage curve: the fraction of held-out targets inside each central predictive interval."""
    mean, var, y = mean.double().reshape(-1), var.double().reshape(-1), y.double().reshape(-1)
    if not (torch.isfinite(mean).all() and torch.isfinite(y).all()) or var.isnan().any():  # a diverged fit
        return {"level": list(COVERAGE_LEVELS), "observed": [float("nan")] * len(COVERAGE_LEVELS)}
    return {"level": list(COVERAGE_LEVELS), "observed": [interval_coverage(mean, var, y, p) for p in COVERAGE_LEVELS]}


def _fit_events(fit, convergence: list) -> JobGen:
    """Relay a core fit's progress events, recording (products, residual) pairs; return the fitted object."""
    while True:
        try:
            event = next(fit)
        except StopIteration as stop:
            return stop.value
        if event.residual is not None:
            convergence.append([event.matvecs, event.residual])
        yield "progress", _progress(event)


def fit_gp_job(state: WorkerState, args: dict, cancel: CancelToken) -> JobGen:
    """Fit the linearized GP (regression) or classifier through the pipeline; return plots, metrics, plan."""
    model, data = state.require_model(), state.require_data()
    settings = run_settings(state, args)
    adapt, test = state.split(settings.n_adapt, settings.seed)
    device = resolve_device(args["device"])
    start = time.perf_counter()
    convergence: list = []
    fitted = yield from _fit_events(fit_linearized_iter(model, state.task, adapt, settings, cancel, device,
                                                        state.shard, unlabelled=unlabelled_inputs(test)), convergence)
    cancel.raise_if_cancelled()
    fit_time = time.perf_counter() - start
    record, preds = score_linearized(fitted, state.task, test, fit_time)
    base_test = point_predictions(model, test.X, state.task)
    base_adapt = None if state.task == "classification" else point_predictions(model, adapt.X, state.task)
    base_record, base_preds = score_point("unadapted", state.task, base_test, base_adapt, adapt, test, 0.0)
    state.gp = fitted
    if state.task == "classification":
        result = _classifier_payload(state, fitted, test, preds, base_preds, convergence)
    else:
        result = _regression_payload(state, fitted, data, adapt, test, args, preds, base_preds, convergence, cancel)
    result.update(metrics=record.metrics, unadapted_metrics=base_record.metrics,
                  records=[base_record.to_dict(), record.to_dict()],
                  hyper=hyper_info(fitted, adapt, settings, state.task),
                  task_reason=state.task_reason, scoring_rule=SCORING_RULE,
                  plan=fitted.plan.describe(), route=f"{fitted.plan.space}/{fitted.plan.solver}",
                  prior_var=fitted.prior_var, num_params=fitted.lm.num_params,
                  n_adapt=len(adapt), n_test=len(test), wall_time=time.perf_counter() - start,
                  device=str(device), task=state.task)
    adapt_index, test_index = state.split_indices(settings.n_adapt, settings.seed)
    result["test_rows"] = held_out_rows(data, test_index, getattr(state.example, "standardizer", None))
    if result.get("grid"):  # the 1-D plot's labelled points are the adaptation rows
        result["adapt_index"] = [int(i) for i in adapt_index]
    return result


def _regression_payload(state, gp, data, adapt, test, args, preds, base_preds, convergence, cancel) -> dict[str, Any]:
    X_plot, is_grid = plot_inputs(data, test, args["grid_points"])
    mean, var = gp.predict(X_plot, cancel=cancel)
    info = gp.solve_info
    test_mean, test_var = preds["mean"], preds["var"]
    base_test, base_var = base_preds["mean"], base_preds["var"]
    return {
        "x": X_plot[:, 0] if is_grid else None, "grid": is_grid,
        "mean": mean, "std": var.clamp_min(0).sqrt(),  # std of f (no noise); add noise for y
        "noise": gp.noise, "residual": info.residual if info else None,
        "convergence": {"solver": gp.plan.solver, "points": convergence,
                        "iterations": info.iterations if info else 0, "products": info.products if info else 0},
        "train_x": adapt.X[:, 0] if is_grid else None, "train_y": adapt.y if is_grid else None,
        "truth": state.truth(X_plot[:, 0]) if is_grid and state.truth is not None else None,
        "test_y": test.y, "test_mean": test_mean, "test_std": test_var.clamp_min(0).sqrt(),
        "test_base": base_test,
        "calibration": _calibration(calibration_curve(test_mean, test_var, test.y)),
        "base_calibration": _calibration(calibration_curve(base_test, base_var, test.y)),
        "coverage": _coverage(test_mean, test_var, test.y), "base_coverage": _coverage(base_test, base_var, test.y),
    }


def _classifier_payload(state, clf, test, preds, base_preds, convergence) -> dict[str, Any]:
    probs, base = preds["probs"], base_preds["probs"]
    return {
        "grid": False, "class_names": list(state.data.class_names or []), "test_y": test.y, "probs": probs,
        "base_probs": base, "reliability": reliability_diagram(probs, test.y)._asdict(),
        "base_reliability": reliability_diagram(base, test.y)._asdict(), "noise": None,
        "residual": clf.map_info.grad_norm,
        "convergence": {"solver": "newton", "points": convergence, "iterations": clf.map_info.iterations,
                        "products": 0},
    }


def finetune_job(state: WorkerState, args: dict, cancel: CancelToken) -> JobGen:
    """Fine-tune the linearized subset on the adaptation split (pipeline); stream epochs; return metrics."""
    model, data = state.require_model(), state.require_data()
    settings = run_settings(state, args)
    adapt, test = state.split(settings.n_adapt, settings.seed)
    device = resolve_device(args["device"])
    classify = state.task == "classification"
    X_plot, is_grid = plot_inputs(data, test, args["grid_points"])
    # Class probabilities of every held-out image each epoch would cost a forward pass of the body
    # per epoch: classifiers get their test predictions once, at the end.
    grid = None if classify else X_plot
    start = time.perf_counter()
    run = fine_tune_iter(model, state.task, adapt, settings, grid=grid, cancel=cancel,
                         max_rate=MAX_EVENTS_PER_SECOND, device=device)
    while True:
        try:
            event = next(run)
        except StopIteration as stop:
            result = stop.value
            break
        yield "epoch", {"epoch": event.epoch, "train_loss": event.train_loss, "elapsed": event.elapsed,
                        "grid_pred": event.grid_pred, "grid": is_grid}
    state.finetuned = result.model
    record, preds = score_finetuned(result, state.task, adapt, test, time.perf_counter() - start)
    final = result.history[-1]
    out = {"x": X_plot[:, 0] if is_grid else None, "grid": is_grid, "grid_pred": final.grid_pred,
           "train_loss": final.train_loss, "epochs_run": final.epoch, "n_adapt": len(adapt),
           "n_test": len(test), "wall_time": time.perf_counter() - start, "task": state.task,
           "metrics": record.metrics, "record": record.to_dict(), "scoring_rule": SCORING_RULE,
           # Every epoch, not only the throttled events, so a saved project redraws the whole run.
           "start_pred": result.history[0].grid_pred,
           "history": [[e.epoch, e.train_loss] for e in result.history]}
    if classify:
        probs = preds["probs"]
        out.update(probs=probs, test_y=test.y, reliability=reliability_diagram(probs, test.y)._asdict())
        out["test_loss"] = out["metrics"]["nll"]
    else:
        pred_test, var = preds["mean"], preds["var"]
        out.update(test_pred=pred_test, calibration=_calibration(calibration_curve(pred_test, var, test.y)),
                   coverage=_coverage(pred_test, var, test.y))
        out["test_loss"] = float(((pred_test - test.y.double()) ** 2).mean())
    return out


def trajectory_steps(lambda_max: float, eigenvalues: torch.Tensor, points: int = TRAJECTORY_POINTS) -> np.ndarray:
    """Return increasing integer GD steps from 0, log-spaced up to where the slowest mode has decayed."""
    positive = eigenvalues[eigenvalues > 0]
    slowest = float(positive.min()) if positive.numel() else lambda_max
    t_max = int(min(TRAJECTORY_MAX_STEPS, np.ceil(TRAJECTORY_DECAY * lambda_max / slowest)))
    steps = np.unique(np.round(np.geomspace(1, max(t_max, 1), points - 1)).astype(np.int64))
    return np.concatenate([[0], steps])


def trajectory_job(state: WorkerState, args: dict, cancel: CancelToken) -> dict[str, Any]:
    """Return the linearized model's predictions along gradient descent on the adaptation split."""
    model, data = state.require_model(), state.require_data()
    if state.task == "classification":
        raise ShapeError("The closed-form trajectory is for squared error (regression) only.")
    adapt, test = state.split(args["n_adapt"], args["seed"])
    X_plot, is_grid = plot_inputs(data, test, args["grid_points"])
    try:
        traj = LinearizedTrajectory(model, adapt.X, adapt.y, params=args["params"])
    except (MemoryBudgetError, SolverError) as exc:  # an optional view: say why it is missing, fail nothing
        return {"skipped": str(exc)}
    cancel.raise_if_cancelled()
    steps = trajectory_steps(traj.lambda_max, traj.eigenvalues)
    times = torch.as_tensor(steps, dtype=torch.float64)
    return {"x": X_plot[:, 0] if is_grid else None, "grid": is_grid, "steps": steps,
            "preds": traj.predict(X_plot, times), "train_residual": traj.train_residual(times),
            "lr": traj.lr, "lambda_max": traj.lambda_max, "skipped": None}
