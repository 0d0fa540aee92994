"""The headless sine-transfer demo: the pretrained MLP adapted to a new sine task from 10 points.

It runs the one pipeline (core.pipeline.run_split) on the paper's fixed split: the labelled points
lie in [-4, 1], the test points cover [-5, 5]. Scoring follows the pipeline's one rule.
"""

from __future__ import annotations

from collections.abc import Callable

from ...pipeline_defaults import settings_for
from ..data.dataset import Dataset
from ..pipeline import run_split
from ..progress import ProgressEvent
from .sine import TARGET_TASK, load_pretrained_sine, target_task_data


def run_sine_demo(
    n_train: int = 10,
    seed: int = 0,
    params: str = "all",
    fit_hyper: bool = True,
    on_event: Callable[[ProgressEvent], None] | None = None,
) -> dict:
    """Return metrics (RMSE, NLL, 95% coverage, wall time) for the GP and the unadapted network."""
    data = target_task_data(n_train=n_train, seed=seed)
    model = load_pretrained_sine()
    adapt = Dataset(data.x_train, data.y_train.double(), ("x",), "y")
    test = Dataset(data.x_test, data.y_test.double(), ("x",), "y")
    settings = settings_for("sine").replace(params=params, seed=seed, n_adapt=n_train).replace(fit_hyper=fit_hyper)
    result = run_split(model, "regression", adapt, test, settings, ("linearized",), on_event=on_event)
    gp = result.fitted
    base, lin = result.record("unadapted"), result.record("linearized")
    return {
        "example": "sine",
        "target_task": {"amplitude": TARGET_TASK.amplitude, "phase": TARGET_TASK.phase},
        "n_train": n_train,
        "n_test": int(data.y_test.numel()),
        "seed": seed,
        "params": params,
        "scoring_rule": result.notes[-1],
        "unadapted": {**base.metrics, "wall_time_s": base.wall_time_s},
        "gp": {
            **lin.metrics,
            "wall_time_s": lin.wall_time_s,
            "prior_var": gp.prior_var,
            "noise": gp.noise,
            "initial_noise": result.hyper["initial_noise"],
            "log_marginal_likelihood": gp.log_marginal_likelihood(),
            "route": f"{gp.plan.space}/{gp.plan.solver}",
            "kernel_path": gp.kernels.path,
            "num_params": gp.lm.num_params,
            "residual": gp.solve_info.residual,
        },
    }


__all__ = ["run_sine_demo"]
