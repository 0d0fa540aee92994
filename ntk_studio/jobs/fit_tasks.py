"""Jobs that adapt the loaded model: the linearized GP (or classifier), fine-tuning, the GD trajectory.

Each payload carries what the window plots: predictions on an even grid for 1-D inputs, on the
held-out rows otherwise (predicted vs true), class probabilities and reliability for classifiers,
calibration and solver convergence, and the metrics of the comparison table.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Generator
from typing import Any

import numpy as np
import torch

from ntk_studio.core import FineTuneSettings, LinearizedClassifier, LinearizedGP, LinearizedTrajectory, finetune_iter
from ntk_studio.core.compare import PRIOR_VAR_GRID
from ntk_studio.core.data.dataset import Dataset
from ntk_studio.core.errors import MemoryBudgetError, ShapeError, SolverError
from ntk_studio.core.finetune import predict
from ntk_studio.core.metrics import calibration_curve, regression_report
from ntk_studio.core.metrics_classification import classification_report, reliability_diagram
from ntk_studio.core.progress import MAX_EVENTS_PER_SECOND, CancelToken

from .state import WorkerState, resolve_device
from .summaries import plot_inputs_1d

MAX_GRID_POINTS = 100_000  # a plot needs a few hundred; more is a typo that would eat memory
MIN_RESIDUAL_VAR = 1e-12  # floor of a point predictor's residual variance (a perfect fit is not certainty)
TRAJECTORY_POINTS = 60  # slider positions
TRAJECTORY_MAX_STEPS = 10**6
TRAJECTORY_DECAY = 5.0  # run until the slowest non-null mode has decayed by e^-5 (or MAX_STEPS)

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


def _residual_var(pred: torch.Tensor, y: torch.Tensor) -> float:
    return max(float(((pred.double() - y.double()) ** 2).mean()), MIN_RESIDUAL_VAR)


def point_predictor_report(pred_test: torch.Tensor, pred_adapt: torch.Tensor, adapt: Dataset, test: Dataset) -> dict:
    """Return the regression report of a point predictor scored with its adaptation residual variance."""
    var = torch.full_like(pred_test.double(), _residual_var(pred_adapt, adapt.y))
    return regression_report(pred_test.double().reshape(test.y.shape), var.reshape(test.y.shape), test.y.double())


def _calibration(curve) -> dict[str, Any]:
    return {"expected": curve.expected, "observed": curve.observed, "error": curve.error}


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
    """Fit the linearized GP (regression) or classifier; return plots, metrics, plan and convergence."""
    model, data = state.require_model(), state.require_data()
    adapt, test = state.split(args["n_adapt"], args["seed"])
    device = resolve_device(args["device"])
    start = time.perf_counter()
    if state.task == "classification":
        result = yield from _fit_classifier(state, model, adapt, test, args, cancel, device)
    else:
        result = yield from _fit_regression(state, model, data, adapt, test, args, cancel, device)
    result.update(n_adapt=len(adapt), n_test=len(test), wall_time=time.perf_counter() - start,
                  device=str(device), task=state.task)
    return result


def _fit_regression(state, model, data, adapt, test, args, cancel, device) -> JobGen:
    X_plot, is_grid = plot_inputs(data, test, args["grid_points"])
    gp = LinearizedGP(model, params=args["params"], prior_var=args["prior_var"], noise=args["noise"],
                      space=args["space"], solver=args["solver"], device=device, shard=state.shard)
    convergence: list = []
    yield from _fit_events(gp.fit_iter(adapt.X, adapt.y, cancel=cancel), convergence)
    cancel.raise_if_cancelled()
    if args["fit_hyper"]:
        yield "progress", {"stage": "hyperparameters", "progress": 0.0, "message": "marginal likelihood"}
        gp.fit_hyperparameters()
        cancel.raise_if_cancelled()
    mean, var = gp.predict(X_plot, cancel=cancel)
    test_mean, test_var = gp.predict(test.X, include_noise=True, cancel=cancel)
    base_test = predict(model, test.X).double().reshape(test.y.shape)
    base_adapt = predict(model, adapt.X).double().reshape(adapt.y.shape)
    state.gp = gp
    calib = calibration_curve(test_mean, test_var, test.y)
    base_var = torch.full_like(base_test.double(), _residual_var(base_adapt, adapt.y))
    info = gp.solve_info
    return {
        "x": X_plot[:, 0] if is_grid else None, "grid": is_grid,
        "mean": mean, "std": var.clamp_min(0).sqrt(),  # std of f (no noise); add noise for y
        "metrics": regression_report(test_mean, test_var, test.y),
        "unadapted_metrics": point_predictor_report(base_test, base_adapt, adapt, test),
        "plan": gp.plan.describe(), "route": f"{gp.plan.space}/{gp.plan.solver}",
        "prior_var": gp.prior_var, "noise": gp.noise, "num_params": gp.lm.num_params,
        "residual": info.residual if info else None,
        "convergence": {"solver": gp.plan.solver, "points": convergence,
                        "iterations": info.iterations if info else 0, "products": info.products if info else 0},
        "train_x": adapt.X[:, 0] if is_grid else None, "train_y": adapt.y if is_grid else None,
        "truth": state.truth(X_plot[:, 0]) if is_grid and state.truth is not None else None,
        "test_y": test.y, "test_mean": test_mean, "test_std": test_var.clamp_min(0).sqrt(),
        "test_base": base_test,
        "calibration": _calibration(calib),
        "base_calibration": _calibration(calibration_curve(base_test.double(), base_var, test.y)),
    }


def _fit_classifier(state, model, adapt, test, args, cancel, device) -> JobGen:
    def fit(prior_var: float, solver: str):
        clf = LinearizedClassifier(model, params=args["params"], prior_var=prior_var, space=args["space"],
                                   solver=solver, device=device, shard=state.shard)
        return (yield from _fit_events(clf.fit_iter(adapt.X, adapt.y, cancel=cancel), convergence))

    convergence: list = []
    clf = yield from fit(args["prior_var"], args["solver"])
    if args["fit_hyper"]:  # Laplace evidence over a log grid of prior variances (no closed-form optimum)
        best, best_lml = clf, clf.log_marginal_likelihood()
        for i, prior_var in enumerate(PRIOR_VAR_GRID):
            yield "progress", {"stage": "evidence", "progress": i / len(PRIOR_VAR_GRID),
                               "message": f"prior variance {prior_var:g}"}
            convergence_mark = len(convergence)
            cand = yield from fit(prior_var, args["solver"])
            del convergence[convergence_mark:]  # the plot shows the first fit's Newton steps only
            if (lml := cand.log_marginal_likelihood()) > best_lml:
                best, best_lml = cand, lml
        clf = best
    cancel.raise_if_cancelled()
    probs = clf.predict_proba(test.X).double()
    base = predict(model, test.X, task="classification").double()
    state.gp = clf
    diagram, base_diagram = reliability_diagram(probs, test.y), reliability_diagram(base, test.y)
    return {
        "grid": False, "class_names": list(state.data.class_names or []), "test_y": test.y, "probs": probs,
        "base_probs": base, "metrics": classification_report(probs, test.y),
        "unadapted_metrics": classification_report(base, test.y),
        "reliability": diagram._asdict(), "base_reliability": base_diagram._asdict(),
        "plan": clf.plan.describe(), "route": f"{clf.plan.space}/{clf.plan.solver}",
        "prior_var": clf.prior_var, "noise": None, "num_params": clf.lm.num_params,
        "residual": clf.map_info.grad_norm,
        "convergence": {"solver": "newton", "points": convergence, "iterations": clf.map_info.iterations,
                        "products": 0},
    }


def finetune_job(state: WorkerState, args: dict, cancel: CancelToken) -> JobGen:
    """Fine-tune a copy of the model on the adaptation split; stream epochs; return predictions and metrics."""
    model, data = state.require_model(), state.require_data()
    adapt, test = state.split(args["n_adapt"], args["seed"])
    device = resolve_device(args["device"])
    classify = state.task == "classification"
    X_plot, is_grid = plot_inputs(data, test, args["grid_points"])
    # Class probabilities of every held-out image each epoch would cost a forward pass of the body
    # per epoch: classifiers get their test predictions once, at the end.
    grid = None if classify else X_plot
    settings = FineTuneSettings(params=args["params"], lr=args["lr"], epochs=args["epochs"],
                                batch_size=args["batch_size"], seed=args["seed"], task=state.task, patience=None)
    work = model if device.type == "cpu" else copy.deepcopy(model).to(device)
    start = time.perf_counter()
    run = finetune_iter(work, adapt, None, settings, grid=grid, cancel=cancel, max_rate=MAX_EVENTS_PER_SECOND)
    while True:
        try:
            event = next(run)
        except StopIteration as stop:
            result = stop.value
            break
        yield "epoch", {"epoch": event.epoch, "train_loss": event.train_loss, "elapsed": event.elapsed,
                        "grid_pred": event.grid_pred, "grid": is_grid}
    state.finetuned = result.model
    final = result.history[-1]
    out = {"x": X_plot[:, 0] if is_grid else None, "grid": is_grid, "grid_pred": final.grid_pred,
           "train_loss": final.train_loss, "epochs_run": final.epoch, "n_adapt": len(adapt),
           "n_test": len(test), "wall_time": time.perf_counter() - start, "task": state.task,
           # Every epoch, not only the throttled events, so a saved project redraws the whole run.
           "start_pred": result.history[0].grid_pred,
           "history": [[e.epoch, e.train_loss] for e in result.history]}
    if classify:
        probs = predict(result, test.X).double().cpu()
        out.update(probs=probs, test_y=test.y, metrics=classification_report(probs, test.y),
                   reliability=reliability_diagram(probs, test.y)._asdict())
        out["test_loss"] = out["metrics"]["nll"]
    else:
        pred_test, pred_adapt = predict(result, test.X).cpu(), predict(result, adapt.X).cpu()
        var = torch.full_like(pred_test.double(), _residual_var(pred_adapt, adapt.y))
        out.update(test_pred=pred_test, metrics=point_predictor_report(pred_test, pred_adapt, adapt, test),
                   calibration=_calibration(calibration_curve(pred_test.double(), var, test.y)))
        out["test_loss"] = float(((pred_test.double() - test.y.double()) ** 2).mean())
    return out


def trajectory_steps(lambda_max: float, eigenvalues: torch.Tensor, points: int = TRAJECTORY_POINTS) -> np.ndarray:
    """Return increasing integer GD steps from 0, log-spaced up to where the slowest mode has decayed."""
    positive = eigenvalues[eigenvalues > 0]
    slowest = float(positive.min()) if positive.numel() else lambda_max
    t_max = int(min(TRAJECTORY_MAX_STEPS, np.ceil(TRAJECTORY_DECAY * lambda_max / slowest)))
    steps = np.unique(np.round(np.geomspace(1, max(t_max, 1), points - 1)).astype(np.int64))
    return np.concatenate([[0], steps])


def trajectory_job(state: WorkerState, args: dict, cancel: CancelToken) -> JobGen:
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
    yield  # pragma: no cover
