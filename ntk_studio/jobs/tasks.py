"""The jobs a worker runs over the warm :class:`WorkerState`, by command name, as generators.

A job module's function either yields progress and returns the result or just returns it; every
entry of :data:`JOBS` is a generator that yields ``(event type, payload)`` pairs (``warning`` events among them, see
:mod:`.warning_events`) and returns the result payload; it raises
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
from .warning_events import forward_warnings

# A job is a generator of events returning the result, or a plain function returning it (no events).
_JOBS: dict[str, Callable[[WorkerState, dict, CancelToken], JobGen | dict]] = {
    "load_example": load_example_job,
    "load_model": load_model_job,
    "load_data": load_data_job,
    "plan": plan_job,
    "fit_gp": fit_gp_job,
    "finetune": finetune_job,
    "trajectory": trajectory_job,
    "export": export_job,
}
# Every job forwards the engine's SolverWarnings as ("warning", {"message", "category"}) events.
JOBS: dict[str, Callable[[WorkerState, dict, CancelToken], JobGen]] = {
    name: forward_warnings(job) for name, job in _JOBS.items()}

__all__ = ["JOBS", "JobGen", "WorkerState", "plot_inputs"]
