"""Typed records of what the worker sends back, parsed from its JSON dicts. No Qt here.

Each record names the fields the window reads and keeps the whole dict as ``payload`` (the plots
take their arrays from it and projects store it as sent), so a field the worker adds later is
carried along without a change here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


def _float(value: Any) -> float | None:
    """Return ``value`` as a finite float, or None when it is missing or not a number."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


@dataclass(frozen=True)
class GpResult:
    """A ``fit_gp`` result: the route, the hyperparameters used, scores and timing."""

    task: str
    route: str | None
    prior_var: float | None
    noise: float | None
    wall_time: float | None
    metrics: dict[str, Any]
    unadapted_metrics: dict[str, Any]
    payload: dict[str, Any] = field(repr=False)

    @classmethod
    def from_event(cls, e: dict[str, Any]) -> GpResult:
        """Return the record of a worker result event."""
        return cls(task=str(e.get("task") or "regression"), route=e.get("route"), prior_var=_float(e.get("prior_var")),
                   noise=_float(e.get("noise")), wall_time=_float(e.get("wall_time")),
                   metrics=dict(e.get("metrics") or {}), unadapted_metrics=dict(e.get("unadapted_metrics") or {}),
                   payload=e)


@dataclass(frozen=True)
class TrajectoryResult:
    """A ``trajectory`` result: the linearized GD steps, or why there are none."""

    skipped: str | None
    steps: list[int]
    payload: dict[str, Any] = field(repr=False)

    @classmethod
    def from_event(cls, e: dict[str, Any]) -> TrajectoryResult:
        """Return the record of a worker result event."""
        return cls(skipped=e.get("skipped"), steps=[int(s) for s in e.get("steps") or []], payload=e)


@dataclass(frozen=True)
class FinetuneResult:
    """A ``finetune`` result: epochs run, held-out loss, scores and timing."""

    task: str
    epochs_run: int
    test_loss: float | None
    wall_time: float | None
    metrics: dict[str, Any]
    payload: dict[str, Any] = field(repr=False)

    @classmethod
    def from_event(cls, e: dict[str, Any]) -> FinetuneResult:
        """Return the record of a worker result event."""
        return cls(task=str(e.get("task") or "regression"), epochs_run=int(e.get("epochs_run") or 0),
                   test_loss=_float(e.get("test_loss")), wall_time=_float(e.get("wall_time")),
                   metrics=dict(e.get("metrics") or {}), payload=e)


@dataclass(frozen=True)
class ExportResult:
    """An ``export`` result: the verified ONNX file and how closely it matches."""

    onnx: str | None
    onnx_bytes: int
    dtype: str | None
    posterior_rank: int | None
    max_relative_error: float | None
    seconds: float | None
    payload: dict[str, Any] = field(repr=False)

    @classmethod
    def from_event(cls, e: dict[str, Any]) -> ExportResult:
        """Return the record of a worker result event."""
        rank = e.get("posterior_rank")
        return cls(onnx=e.get("onnx"), onnx_bytes=int(e.get("onnx_bytes") or 0), dtype=e.get("dtype"),
                   posterior_rank=None if rank is None else int(rank),
                   max_relative_error=_float(e.get("max_relative_error")), seconds=_float(e.get("seconds")), payload=e)


@dataclass(frozen=True)
class PlanResult:
    """A ``plan`` result: the route estimate in words, or why the model and data do not fit."""

    describe: str
    mismatch: str | None
    payload: dict[str, Any] = field(repr=False)

    @classmethod
    def from_event(cls, e: dict[str, Any]) -> PlanResult:
        """Return the record of a worker result event."""
        return cls(describe=str(e.get("describe") or ""), mismatch=e.get("mismatch"), payload=e)


@dataclass(frozen=True)
class LoadResult:
    """A load result: the worker's session (model and data summaries), or a table's columns to choose."""

    needs_columns: bool
    session: dict[str, Any]
    path: str | None
    sha256: str | None
    description: str
    payload: dict[str, Any] = field(repr=False)

    @classmethod
    def from_event(cls, e: dict[str, Any]) -> LoadResult:
        """Return the record of a worker result event."""
        return cls(needs_columns=bool(e.get("needs_columns")), session=dict(e.get("session") or {}), path=e.get("path"),
                   sha256=e.get("sha256"), description=str(e.get("description") or e.get("path") or ""), payload=e)


@dataclass(frozen=True)
class Epoch:
    """One fine-tuning epoch event: its number, training loss and (1-D data) grid predictions."""

    epoch: int
    train_loss: float | None
    payload: dict[str, Any] = field(repr=False)

    @classmethod
    def from_event(cls, e: dict[str, Any]) -> Epoch:
        """Return the record of a worker epoch event."""
        return cls(epoch=int(e.get("epoch") or 0), train_loss=_float(e.get("train_loss")), payload=e)


Record = GpResult | TrajectoryResult | FinetuneResult | ExportResult | PlanResult | LoadResult
RECORDS: dict[str, type] = {"fit_gp": GpResult, "trajectory": TrajectoryResult, "finetune": FinetuneResult,
                            "export": ExportResult, "plan": PlanResult, "load_example": LoadResult,
                            "load_model": LoadResult, "load_data": LoadResult}


def parse_result(cmd: str, event: dict[str, Any]) -> Record:
    """Return the typed record of ``cmd``'s result event (a KeyError names an unknown command)."""
    return RECORDS[cmd].from_event(event)
