"""Forward the engine's SolverWarnings out of a job as ``("warning", {"message", "category"})`` events.

The engine warns when it adds jitter to a factorization (JitterWarning), clamps negative predictive
variances (NegativeVarianceWarning) or goes on after an unconverged best-effort solve
(SolverWarning). A job wrapped by :func:`forward_warnings` yields each of them, once per message,
before the job's next event (or its result or error), so a front end can log and show them.

The capture sets the process's warning hooks while the job's code runs; the worker runs one job at
a time and its reading thread does not warn.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Generator
from typing import Any

from ntk_studio.core.warning_capture import solver_warnings_to

WARNING_EVENT = "warning"

Job = Callable[..., Generator[tuple[str, dict[str, Any]], None, dict[str, Any]] | dict[str, Any]]


def forward_warnings(job: Job) -> Job:
    """Return ``job`` as a generator that also yields a ``warning`` event per distinct SolverWarning.

    ``job`` is a generator function (its events pass through) or a plain function that returns the
    result payload (then the wrapper yields only the warning events).
    """

    @functools.wraps(job)
    def forwarding(state, args, cancel):
        seen: set[tuple[str, str]] = set()
        pending: list[dict[str, str]] = []

        def captured(step: Callable[[], Any]):
            try:
                with solver_warnings_to(pending.append, seen):
                    value = step()
            except BaseException:
                yield from _drain(pending)  # a failing job still tells what it warned about first
                raise
            yield from _drain(pending)
            return value

        started = yield from captured(lambda: job(state, args, cancel))  # a plain job does all its work here
        if not inspect.isgenerator(started):
            return started
        while True:
            done, value = yield from captured(lambda: _next(started))
            if done:
                return value
            yield value

    forwarding.forwards_warnings = True
    return forwarding


def _next(gen: Generator) -> tuple[bool, Any]:
    """Return (False, next event) or (True, the generator's return value)."""
    try:
        return False, next(gen)
    except StopIteration as stop:
        return True, stop.value


def _drain(pending: list[dict[str, str]]):
    while pending:
        yield WARNING_EVENT, pending.pop(0)
