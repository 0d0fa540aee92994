"""One comparison record per method (GP, fine-tuning, unadapted network): metrics, curves, time.

A record is what the CLI prints, the GUI plots and a project file stores, so it is plain data:
`to_dict()` is strict JSON (NaN and inf become null) and the curves are lists of small dicts.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from .errors import ShapeError
from .metrics_regression import calibration_curve, regression_report
from .metrics_classification import DEFAULT_BINS, classification_report, reliability_diagram

Task = Literal["regression", "classification"]
TASKS: tuple[str, ...] = ("regression", "classification")

# Table columns per task: (header, metrics key, format). Scale-dependent errors get significant
# digits; bounded quantities (coverage, probabilities, calibration gaps) get fixed decimals.
_COLUMNS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "regression": (
        ("RMSE", "rmse", ".4g"),
        ("MAE", "mae", ".4g"),
        ("NLL", "nll", ".4g"),
        ("cov50", "coverage50", ".3f"),
        ("cov90", "coverage90", ".3f"),
        ("cov95", "coverage95", ".3f"),
        ("cal.err", "calibration_error", ".3f"),
    ),
    "classification": (
        ("acc", "accuracy", ".3f"),
        ("NLL", "nll", ".4g"),
        ("Brier", "brier", ".4f"),
        ("ECE", "ece", ".4f"),
    ),
}
TIME_HEADER, TIME_FORMAT = "time (s)", ".3g"
MISSING = "–"
COLUMN_GAP = "  "


def _jsonable(value: Any) -> Any:
    """Return `value` as JSON-ready Python data: lists, dicts with str keys, finite floats or None."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None  # strict JSON has no NaN/inf
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return _jsonable(value.tolist())
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    raise TypeError(f"{type(value).__name__} is not JSON-friendly; pass numbers, strings, lists or dicts.")


@dataclass(frozen=True)
class ComparisonRecord:
    """One method's scores on one task: metrics, wall time, curves and method-specific extras."""

    method: str
    task: Task
    metrics: dict[str, float]
    wall_time_s: float
    curves: dict[str, list] = field(default_factory=dict)  # "calibration" or "reliability": list of dicts
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. route, matvecs, epochs

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ShapeError(f"task must be one of {TASKS}; got {self.task!r}.")
        if not (math.isfinite(self.wall_time_s) and self.wall_time_s >= 0):
            raise ShapeError(f"wall_time_s must be a finite non-negative number of seconds; got {self.wall_time_s!r}.")

    def to_dict(self) -> dict[str, Any]:
        """Return the record as strict-JSON data (non-finite numbers become None)."""
        return _jsonable(
            {
                "method": self.method,
                "task": self.task,
                "metrics": self.metrics,
                "wall_time_s": self.wall_time_s,
                "curves": self.curves,
                "extra": self.extra,
            }
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ComparisonRecord:
        """Return the record that `to_dict` wrote (None metrics come back as NaN)."""
        metrics = {k: math.nan if v is None else float(v) for k, v in data["metrics"].items()}
        return cls(
            method=data["method"], task=data["task"], metrics=metrics, wall_time_s=float(data["wall_time_s"]),
            curves=dict(data.get("curves", {})), extra=dict(data.get("extra", {})),
        )


def regression_record(
    method: str, mean: torch.Tensor, var: torch.Tensor, y: torch.Tensor, wall_time_s: float, **extra: Any
) -> ComparisonRecord:
    """Return the record of a Gaussian predictive (mean, var) scored against targets y."""
    curve = calibration_curve(mean, var, y)
    points = [{"expected": e, "observed": o} for e, o in zip(curve.expected.tolist(), curve.observed.tolist())]
    return ComparisonRecord(
        method=method, task="regression", metrics=regression_report(mean, var, y), wall_time_s=float(wall_time_s),
        curves={"calibration": _jsonable(points)}, extra=_jsonable(extra),
    )


def classification_record(
    method: str, probs: torch.Tensor, y: torch.Tensor, wall_time_s: float, bins: int = DEFAULT_BINS, **extra: Any
) -> ComparisonRecord:
    """Return the record of class probabilities scored against integer labels y."""
    d = reliability_diagram(probs, y, bins)
    points = [
        {
            "lo": d.edges[b], "hi": d.edges[b + 1],
            "confidence": d.confidence[b], "accuracy": d.accuracy[b], "count": d.count[b],
        }
        for b in range(len(d.count))
    ]
    return ComparisonRecord(
        method=method, task="classification", metrics=classification_report(probs, y, bins),
        wall_time_s=float(wall_time_s), curves={"reliability": _jsonable(points)}, extra=_jsonable(extra),
    )


def _cell(value: float | None, fmt: str) -> str:
    if value is None:
        return MISSING
    return format(value, fmt)  # NaN prints as "nan": a failed method should look failed


def _extra_cell(extra: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={format(v, '.3g') if isinstance(v, float) else v}" for k, v in extra.items())


def _task_table(task: str, records: list[ComparisonRecord]) -> str:
    columns = _COLUMNS[task]
    header = ["method", *(h for h, _, _ in columns), TIME_HEADER]
    rows = [
        [r.method, *(_cell(r.metrics.get(key), fmt) for _, key, fmt in columns), _cell(r.wall_time_s, TIME_FORMAT)]
        for r in records
    ]
    if any(r.extra for r in records):
        header.append("details")
        for row, r in zip(rows, records):
            row.append(_extra_cell(r.extra))
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]
    n_numeric = len(columns) + 1  # the numbers right-aligned; method and details left-aligned

    def line(cells: list[str]) -> str:
        out = [cells[0].ljust(widths[0])]
        out += [c.rjust(w) for c, w in zip(cells[1 : 1 + n_numeric], widths[1 : 1 + n_numeric])]
        out += [c.ljust(w) for c, w in zip(cells[1 + n_numeric :], widths[1 + n_numeric :])]
        return COLUMN_GAP.join(out).rstrip()

    rule = COLUMN_GAP.join("-" * w for w in widths)
    return "\n".join([f"{task}:", line(header), rule, *(line(row) for row in rows)])


def format_table(records: Iterable[ComparisonRecord]) -> str:
    """Return a fixed-width text table, one row per method, one block per task present."""
    records = list(records)
    by_task = {task: [r for r in records if r.task == task] for task in TASKS}
    blocks = [_task_table(task, rows) for task, rows in by_task.items() if rows]
    return "\n\n".join(blocks)
