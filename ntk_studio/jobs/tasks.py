"""The jobs a worker runs, as generators over the warm :class:`WorkerState`.

Each job yields ``(event type, payload)`` pairs and returns the result payload; it raises
:class:`~ntk_studio.core.errors.Cancelled` when its cancel token fires. No I/O happens here, so the
jobs can be driven in-process (tests, a thread) as well as by the worker's protocol loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import torch

from ntk_studio.core import CancelToken, FineTuneSettings, LinearizedGP, finetune_iter
from ntk_studio.core.data import adaptation_split
from ntk_studio.core.data.dataset import Dataset
from ntk_studio.core.errors import DataLoadError, ShapeError
from ntk_studio.core.examples.registry import Example, load_example
from ntk_studio.core.finetune import evaluate
from ntk_studio.core.metrics import regression_report
from ntk_studio.core.progress import MAX_EVENTS_PER_SECOND

MAX_GRID_POINTS = 100_000  # a plot needs a few hundred; more is a typo that would eat memory

JobGen = Generator[tuple[str, dict[str, Any]], None, dict[str, Any]]


@dataclass
class WorkerState:
    """What the worker keeps warm between jobs: the example, its splits and the last fits."""

    example: Example | None = None
    gp: LinearizedGP | None = None
    finetuned: torch.nn.Module | None = None
    splits: dict[tuple[int | None, int], tuple[Dataset, Dataset]] = field(default_factory=dict)

    def require_example(self) -> Example:
        """Return the loaded example; raise DataLoadError when none is loaded."""
        if self.example is None:
            raise DataLoadError("No example is loaded: send load_example first.")
        return self.example

    def split(self, n_adapt: int | None, seed: int) -> tuple[Dataset, Dataset]:
        """Return the (adaptation, test) datasets for this n_adapt and seed, cached."""
        key = (n_adapt, seed)
        if key not in self.splits:
            adapt, test = adaptation_split(len(self.require_example().target), n_adapt, seed)
            target = self.require_example().target
            self.splits[key] = (target.subset(adapt), target.subset(test))
        return self.splits[key]


def plot_inputs(target: Dataset, test: Dataset, grid_points: int) -> tuple[torch.Tensor, bool]:
    """Return (inputs to predict for the plot, whether they are an even 1-D grid)."""
    if target.X.dim() == 2 and target.X.shape[1] == 1:
        if not 2 <= grid_points <= MAX_GRID_POINTS:
            raise ShapeError(f"grid_points must be between 2 and {MAX_GRID_POINTS}, got {grid_points}.")
        lo, hi = float(target.X.min()), float(target.X.max())
        return torch.linspace(lo, hi, grid_points, dtype=target.X.dtype).unsqueeze(-1), True
    return test.X, False


def load_example_job(state: WorkerState, args: dict, cancel: CancelToken) -> JobGen:
    """Load a built-in example into the state; return its summary."""
    example = load_example(args["name"])
    cancel.raise_if_cancelled()
    state.example, state.gp, state.finetuned, state.splits = example, None, None, {}
    target = example.target
    return {"name": example.name, "task": example.task, "description": example.description,
            "n_rows": len(target), "input_shape": list(target.X.shape[1:]),
            "x_range": [float(target.X.min()), float(target.X.max())], "notes": list(example.notes)}
    yield  # pragma: no cover - makes this a generator like the other jobs


def _progress_payload(event) -> dict[str, Any]:
    return {"stage": event.stage, "progress": event.progress, "matvecs": event.matvecs,
            "residual": event.residual, "elapsed": event.elapsed, "message": event.message}


def fit_gp_job(state: WorkerState, args: dict, cancel: CancelToken) -> JobGen:
    """Fit the linearized GP on the adaptation split; return grid mean/std, test metrics, plan."""
    example = state.require_example()
    if example.task != "regression":
        raise ShapeError(f"fit_gp handles regression examples; '{example.name}' is {example.task}.")
    adapt, test = state.split(args["n_adapt"], args["seed"])
    X_plot, is_grid = plot_inputs(example.target, test, args["grid_points"])
    start = time.perf_counter()
    gp = LinearizedGP(example.model, params=args["params"], prior_var=args["prior_var"], noise=args["noise"],
                      space=args["space"], solver=args["solver"])
    fit = gp.fit_iter(adapt.X, adapt.y, cancel=cancel)
    for event in fit:
        yield "progress", _progress_payload(event)
    cancel.raise_if_cancelled()
    if args["fit_hyper"]:
        yield "progress", {"stage": "hyperparameters", "progress": 0.0, "message": "marginal likelihood"}
        gp.fit_hyperparameters()
        cancel.raise_if_cancelled()
    mean, var = gp.predict(X_plot, cancel=cancel)
    cancel.raise_if_cancelled()
    test_mean, test_var = gp.predict(test.X, include_noise=True, cancel=cancel)
    state.gp = gp
    return {
        "x": X_plot[:, 0] if is_grid else None, "grid": is_grid,
        "mean": mean, "std": var.clamp_min(0).sqrt(),  # std of f (no noise); add noise for y
        "metrics": regression_report(test_mean, test_var, test.y),
        "plan": gp.plan.describe(), "route": f"{gp.plan.space}/{gp.plan.solver}",
        "prior_var": gp.prior_var, "noise": gp.noise,
        "residual": gp.solve_info.residual if gp.solve_info else None,
        "n_adapt": len(adapt), "n_test": len(test), "wall_time": time.perf_counter() - start,
        "train_x": adapt.X[:, 0] if is_grid else None, "train_y": adapt.y if is_grid else None,
        "truth": example.truth(X_plot[:, 0]) if is_grid and example.truth is not None else None,
    }


def finetune_job(state: WorkerState, args: dict, cancel: CancelToken) -> JobGen:
    """Fine-tune a copy of the model on the adaptation split; return grid predictions and test metrics."""
    example = state.require_example()
    adapt, test = state.split(args["n_adapt"], args["seed"])
    X_plot, is_grid = plot_inputs(example.target, test, args["grid_points"])
    settings = FineTuneSettings(params=args["params"], lr=args["lr"], epochs=args["epochs"],
                                batch_size=args["batch_size"], seed=args["seed"], task=example.task)
    start = time.perf_counter()
    run = finetune_iter(example.model, adapt, None, settings, grid=X_plot, cancel=cancel,
                        max_rate=MAX_EVENTS_PER_SECOND)
    while True:
        try:
            event = next(run)
        except StopIteration as stop:
            result = stop.value
            break
        yield "epoch", {"epoch": event.epoch, "train_loss": event.train_loss, "elapsed": event.elapsed,
                        "grid_pred": event.grid_pred}
    state.finetuned = result.model
    test_loss, metrics = evaluate(result, test)
    final = result.history[-1]
    return {"x": X_plot[:, 0] if is_grid else None, "grid": is_grid, "grid_pred": final.grid_pred,
            "train_loss": final.train_loss, "test_loss": test_loss, "metrics": metrics,
            "epochs_run": final.epoch, "n_adapt": len(adapt), "n_test": len(test),
            "wall_time": time.perf_counter() - start}


JOBS: dict[str, Callable[[WorkerState, dict, CancelToken], JobGen]] = {
    "load_example": load_example_job,
    "fit_gp": fit_gp_job,
    "finetune": finetune_job,
}
