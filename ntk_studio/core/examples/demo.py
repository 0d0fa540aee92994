"""The headless sine-transfer demo: the pretrained MLP adapted to a new sine task from 10 points."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from ..gp import LinearizedGP
from ..metrics import regression_report
from ..progress import ProgressEvent, Reporter
from .sine import TARGET_TASK, load_pretrained_sine, target_task_data

DEMO_PRIOR_VAR = 1.0


def run_sine_demo(
    n_train: int = 10,
    seed: int = 0,
    params: str = "all",
    fit_hyper: bool = True,
    on_event: Callable[[ProgressEvent], None] | None = None,
) -> dict:
    """Return metrics (RMSE, NLL, 95% coverage, wall time) for the GP and the unadapted network.

    The unadapted network has no uncertainty of its own; it is scored with the true observation
    noise as its predictive variance, which is the most generous choice for it.
    """
    data = target_task_data(n_train=n_train, seed=seed)
    noise_var = data.noise_std**2
    model = load_pretrained_sine()

    start = time.perf_counter()
    with torch.no_grad():
        base_mean = model(data.x_test.float()).double()[:, 0]
    base_time = time.perf_counter() - start
    base = regression_report(base_mean, torch.full_like(base_mean, noise_var), data.y_test)

    start = time.perf_counter()
    gp = LinearizedGP(model, params=params, prior_var=DEMO_PRIOR_VAR, noise=noise_var)
    gp._fit(data.x_train, data.y_train, Reporter(on_event))
    if fit_hyper:
        gp.fit_hyperparameters()
    mean, var = gp.predict(data.x_test, include_noise=True)
    gp_time = time.perf_counter() - start
    report = regression_report(mean, var, data.y_test)

    return {
        "example": "sine",
        "target_task": {"amplitude": TARGET_TASK.amplitude, "phase": TARGET_TASK.phase},
        "n_train": n_train,
        "n_test": int(data.y_test.numel()),
        "seed": seed,
        "params": params,
        "unadapted": {**base, "wall_time_s": base_time},
        "gp": {
            **report,
            "wall_time_s": gp_time,
            "prior_var": gp.prior_var,
            "noise": gp.noise,
            "log_marginal_likelihood": gp.log_marginal_likelihood(),
            "route": f"{gp.plan.space}/{gp.plan.solver}",
            "kernel_path": gp.kernels.path,
            "num_params": gp.lm.num_params,
            "residual": gp.solve_info.residual,
        },
    }
