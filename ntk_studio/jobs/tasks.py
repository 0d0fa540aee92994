"""The jobs a worker runs, as generators over the warm :class:`WorkerState`, by command name.

Each job yields ``(event type, payload)`` pairs and returns the result payload; it raises
:class:`~ntk_studio.core.errors.Cancelled` when its cancel token fires. No protocol I/O happens
here, so the jobs can be driven in-process (tests, a thread) as well as by the worker's loop.
"""

from __future__ import annotations

from collections.abc import Callable

from ntk_studio.core import CancelToken

from .export_task import export_job
from .fit_tasks import JobGen, finetune_job, fit_gp_job, plot_inputs, trajectory_job
from .load_tasks import load_data_job, load_example_job, load_model_job, plan_job
from .state import WorkerState

JOBS: dict[str, Callable[[WorkerState, dict, CancelToken], JobGen]] = {
    "load_example": load_example_job,
    "load_model": load_model_job,
    "load_data": load_data_job,
    "plan": plan_job,
    "fit_gp": fit_gp_job,
    "finetune": finetune_job,
    "trajectory": trajectory_job,
    "export": export_job,
}

__all__ = ["JOBS", "JobGen", "WorkerState", "plot_inputs"]
