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


COVERAGE_KEYS = ((0.5, "coverage50"), (0.9, "coverage90"), (0.95, "coverage95"))  # metrics' interval coverages
EVIDENCE_CHOOSES_S2 = ("evidence", "evidence_tau")  # classifier selections whose s² is the evidence's


def _floats(values: Any) -> list[float] | None:
    """Return ``values`` as a list of floats (NaN where not a number), or None when it is not a list."""
    if not isinstance(values, (list, tuple)):
        return None
    return [math.nan if (v := _float(x)) is None else v for x in values] if values else None


@dataclass(frozen=True)
class MethodCalibration:
    """One method's calibration on the held-out rows, from its metrics.

    Classification: ``ece`` (expected calibration error) and ``accuracy``. Regression: ``coverage``,
    the fraction of targets inside the central 50/90/95 % predictive intervals, and
    ``calibration_error`` (mean |observed − expected| of the quantile curve). Missing values are None.
    """

    ece: float | None = None
    accuracy: float | None = None
    coverage: dict[float, float | None] = field(default_factory=dict)
    calibration_error: float | None = None

    @classmethod
    def from_metrics(cls, metrics: dict[str, Any] | None) -> MethodCalibration:
        """Return the calibration part of a metrics dict (any key may be missing)."""
        m = metrics or {}
        return cls(ece=_float(m.get("ece")), accuracy=_float(m.get("accuracy")),
                   coverage={level: _float(m.get(key)) for level, key in COVERAGE_KEYS},
                   calibration_error=_float(m.get("calibration_error")))


@dataclass(frozen=True)
class HyperCurve:
    """One line of the hyperparameter search: a criterion over the prior variances s² tried."""

    prior_var: list[float]
    value: list[float]
    label: str  # legend text, e.g. 'τ = 1 (plain Laplace)'
    criterion: str  # 'heldout_nll' (lower is better) or 'evidence' (higher is better)


@dataclass(frozen=True)
class HyperChoice:
    """The hyperparameters a fit used, how they were chosen and the numbers behind the choice.

    Parsed from a ``fit_gp`` payload's ``hyper`` dict (pipeline.hyper_info). Projects saved before a
    key existed read it as None (no ``hyper`` at all: the payload's own prior_var and noise).
    ``selection``: 'heldout', 'evidence', 'floor', 'map2', 'as given', … ``floor_active``: σ² sits
    on its floor (the evidence wanted less noise). ``curves``: the search over s², when it was a grid.
    """

    task: str
    fitted: bool | None
    selection: str | None
    method: str | None
    why: str | None
    prior_var: float | None
    noise: float | None
    cov_scale: float | None
    temperature: float | None  # the classifier's logit temperature T (None: none was sent, i.e. T = 1)
    initial_prior_var: float | None
    initial_noise: float | None
    log_evidence: float | None
    initial_log_evidence: float | None
    heldout_nll: float | None
    heldout_nll_unscaled: float | None  # at the chosen s² with τ = 1 (the plain Laplace posterior)
    evidence_prior_var: float | None  # the s² the evidence alone picks, when the search computed it
    folds: int | None
    noise_floor: float | None
    floor_active: bool | None
    curves: tuple[HyperCurve, ...] = ()

    @classmethod
    def from_payload(cls, p: dict[str, Any]) -> HyperChoice:
        """Return the record of a fit_gp payload's hyperparameters (robust to missing keys)."""
        task = str(p.get("task") or "regression")
        h = p.get("hyper") if isinstance(p.get("hyper"), dict) else {}
        search = h.get("search") if isinstance(h.get("search"), dict) else {}
        fitted = h.get("fitted")
        selection = h.get("selection") or search.get("selection")
        if selection is None and fitted is False:
            selection = "as given"
        start = search.get("start") if isinstance(search.get("start"), dict) else {}
        heldout = _float(h.get("heldout_nll"))
        if heldout is None:
            heldout = _float(search.get("chosen_heldout_nll"))
        folds = h.get("folds", search.get("folds"))
        floor_active = h.get("floor_active")
        return cls(
            task=task, fitted=None if fitted is None else bool(fitted), selection=selection,
            method=h.get("method") if h.get("method") != selection else search.get("method"),
            why=h.get("why") or search.get("why"),
            prior_var=_float(h.get("prior_var", p.get("prior_var"))),
            noise=None if task == "classification" else _float(h.get("noise", p.get("noise"))),
            cov_scale=_float(h.get("cov_scale")),  # regression: only 'shift' / 'blocked' report one
            temperature=_float(h.get("temperature")) if task == "classification" else None,
            initial_prior_var=_float(h.get("initial_prior_var")), initial_noise=_float(h.get("initial_noise")),
            log_evidence=_float(h.get("log_evidence")),
            initial_log_evidence=_float(start.get("log_marginal_likelihood")),
            heldout_nll=heldout, heldout_nll_unscaled=_float(search.get("heldout_nll_unscaled")),
            evidence_prior_var=_float(search.get("chosen_evidence_prior_var")),
            folds=None if _float(folds) is None else int(folds),
            noise_floor=_float(h.get("noise_floor")), floor_active=None if floor_active is None else bool(floor_active),
            curves=_search_curves(search, selection))


def _search_curves(search: dict[str, Any], selection: str | None = None) -> tuple[HyperCurve, ...]:
    """Return the lines of the criterion that chose s²: held-out NLL (best τ at each s², and τ = 1) or the evidence.

    The evidence's line when the evidence chose s² ('evidence', 'evidence_tau') or no held-out line
    is there. Reads both forms the classifier has written: a profile over a continuous search
    ('heldout_profile' with a 'heldout_nll' table over 'cov_scale' columns) and the older grid table
    (no profile: the column at the chosen τ). Lines whose lengths do not match are left out.
    """
    grid = _floats(search.get("prior_var"))
    curves: list[HyperCurve] = []
    if grid and selection not in EVIDENCE_CHOOSES_S2:
        profile = _floats(search.get("heldout_profile"))
        if profile and len(profile) == len(grid):
            both = _floats(search.get("heldout_profile_temperature")) is not None
            curves.append(HyperCurve(grid, profile, "best τ, T at each s²" if both else "best τ at each s²",
                                     "heldout_nll"))
        table, scales = search.get("heldout_nll"), _floats(search.get("cov_scale"))
        rows = [_floats(row) for row in table] if isinstance(table, list) and len(table) == len(grid) else []
        if scales and rows and all(row is not None and len(row) == len(scales) for row in rows):
            chosen = _float(search.get("chosen_cov_scale"))
            picks = [] if curves or chosen is None else [j for j, t in enumerate(scales) if math.isclose(t, chosen)]
            picks += [j for j, t in enumerate(scales) if t == 1.0 and j not in picks]
            curves += [HyperCurve(grid, [row[j] for row in rows],
                                  "τ = 1 (plain Laplace)" if scales[j] == 1.0 else f"τ = {_short(scales[j])}",
                                  "heldout_nll") for j in picks]
    if not curves:
        x = _floats(search.get("evidence_prior_var")) or grid
        evidence = _floats(search.get("evidence"))
        if x and evidence and len(evidence) == len(x):
            curves.append(HyperCurve(x, evidence, "log evidence (Laplace)", "evidence"))
    return tuple(curves)


def _short(x: float) -> str:
    return f"{x:.3g}"


@dataclass(frozen=True)
class GpResult:
    """A ``fit_gp`` result: the route, the hyperparameters used, scores, calibration and timing."""

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

    @property
    def hyper(self) -> HyperChoice:
        """Return the chosen hyperparameters and why."""
        return HyperChoice.from_payload(self.payload)

    @property
    def calibration(self) -> MethodCalibration:
        """Return the linearized model's calibration on the held-out rows."""
        return MethodCalibration.from_metrics(self.metrics)

    @property
    def unadapted_calibration(self) -> MethodCalibration:
        """Return the unadapted model's calibration on the held-out rows."""
        return MethodCalibration.from_metrics(self.unadapted_metrics)


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

    @property
    def calibration(self) -> MethodCalibration:
        """Return the fine-tuned model's calibration on the held-out rows."""
        return MethodCalibration.from_metrics(self.metrics)


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
