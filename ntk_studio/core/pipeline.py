"""The one adaptation pipeline every front end calls (CLI `adapt`/`compare`, the worker's jobs, the app).

split → fit the linearized model (GP for regression, Laplace classifier for classification),
hyperparameters by evidence → fine-tune the same parameter subset → score every method with one
rule → :class:`~ntk_studio.core.records.ComparisonRecord` per method.

How methods are scored (``SCORING_RULE``, stated once): the linearized GP by its Gaussian
predictive (noise included); classifiers by their class probabilities; point predictors (the
unadapted and the fine-tuned model) by a Gaussian whose variance is their own mean squared
residual on the adaptation rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from ..pipeline_defaults import NOISE_FRACTION, SCORING_RULE, RunSettings, settings_for
from . import prefix as _prefix
from . import regression_hyper
from .classify import LinearizedClassifier
from .records import ComparisonRecord, classification_record, regression_record
from .data import adaptation_split
from .data.dataset import UNLABELLED_GROUP, Dataset
from .errors import DataLoadError, ShapeError
from .finetune import EpochEvent, FineTuneResult, FineTuneSettings, finetune_ensemble, finetune_iter, predict
from .gp import LinearizedGP
from .hyper import PRIOR_VAR_GRID
from .params import ParamSubset
from .pipeline_data import PreparedData, load_data_for, model_outputs, prepare, resolve_task
from .plan import Plan, make_plan
from .progress import CancelToken, ProgressEvent
from .linearized import DEFAULT_MEMORY_BUDGET

MIN_RESIDUAL_VAR = 1e-12  # a point predictor that fits the adaptation rows exactly is not certain
METHODS = ("linearized", "fine-tuned", "ensemble")
PLAN_ITEMSIZE = 8  # solves run in float64
LINEARIZED_NAMES = {"regression": "linearized GP", "classification": "linearized classifier"}
POINT_RULE = "Gaussian, var = own adaptation MSE"  # short form of SCORING_RULE for point predictors
FLOOR_ACTIVE_RTOL = 1e-6  # σ² within this of the floor: the floor, not the evidence, set it

__all__ = [
    "METHODS", "PRIOR_VAR_GRID", "SCORING_RULE", "PreparedData", "RunResult", "RunSettings", "drain", "fine_tune_iter",
    "fit_linearized_iter", "load_data_for", "plan_run", "prepare", "resolve_task", "run", "run_split", "score_linearized",
    "score_point", "settings_for", "split", "unlabelled_inputs",
]


@dataclass
class RunResult:
    """Every method's record on the test rows, the fitted objects, the resolved hyperparameters and plan."""

    task: str
    task_reason: str
    settings: RunSettings
    n_adapt: int
    n_test: int
    plan: Plan | None  # the linearized fit's route (None when only fine-tuning ran)
    hyper: dict[str, Any]
    records: list[ComparisonRecord]
    predictions: dict[str, dict[str, torch.Tensor]]
    y_test: torch.Tensor
    fitted: LinearizedGP | LinearizedClassifier | None = None
    finetuned: FineTuneResult | None = None
    notes: list[str] = field(default_factory=list)

    def record(self, key: str) -> ComparisonRecord:
        """Return the record of 'unadapted', 'linearized', 'fine-tuned' or 'ensemble'."""
        name = {"linearized": LINEARIZED_NAMES[self.task], "ensemble": "fine-tuned ensemble"}.get(key, key)
        return next(r for r in self.records if r.method == name or r.method.startswith(f"{name} "))

    def to_json(self) -> dict[str, Any]:
        """Return the run as JSON-ready data (records, hyperparameters, plan, settings, scoring rule)."""
        metrics = {"unadapted": self.record("unadapted").metrics}
        if any(r.method == LINEARIZED_NAMES[self.task] for r in self.records):
            metrics["gp"] = self.record("linearized").metrics  # the key older readers use
        out = {"task": self.task, "task_reason": self.task_reason, "settings": self.settings.to_dict(),
               "n_adapt": self.n_adapt, "n_test": self.n_test,
               "plan": None if self.plan is None else self.plan.describe(),
               "route": None if self.plan is None else f"{self.plan.space}/{self.plan.solver}",
               "hyper": self.hyper, "scoring_rule": SCORING_RULE,
               "metrics": metrics, "records": [r.to_dict() for r in self.records], "notes": self.notes}
        if self.fitted is not None:
            out["gp"] = self.fit_info()  # the key older readers use for the linearized model's details
        return out

    def fit_info(self) -> dict[str, Any]:
        """Return the linearized fit's route, size, hyperparameters, solver residual and ranks."""
        f = self.fitted
        info = {"route": f"{f.plan.space}/{f.plan.solver}", "plan": f.plan.describe(), "kernel_path": f.kernels.path,
                "num_params": f.lm.num_params, "prior_var": f.prior_var, "n_train": self.n_adapt,
                "n_test": self.n_test, "ranks": f.lm.shard.world_size}
        if self.task == "classification":
            return {**info, "residual": f.map_info.grad_norm, "iterations": f.map_info.iterations}
        solve = f.solve_info
        return {**info, "noise": f.noise, "residual": solve.residual if solve else None,
                "iterations": solve.iterations if solve else 0}


def split(ds: Dataset, settings: RunSettings) -> tuple[Dataset, Dataset]:
    """Return (adaptation rows, test rows) by the one split rule (see ntk_studio.pipeline_defaults)."""
    a, t = split_rows(ds, settings)
    return ds.subset(a), ds.subset(t)


def split_rows(ds: Dataset, settings: RunSettings) -> tuple[np.ndarray, np.ndarray]:
    """Return the sorted row indices (adaptation, test) of the one split rule.

    Rows whose group is UNLABELLED_GROUP are never adapted on: the seeded split draws from the other
    rows and every unlabelled row is scored. Without such rows this is ``adaptation_split`` unchanged.
    """
    n = len(ds)
    pool = np.arange(n) if ds.groups is None else np.flatnonzero(np.asarray(ds.groups) != UNLABELLED_GROUP)
    # With unlabelled rows the whole pool may adapt: the unlabelled rows still score.
    most = len(pool) if len(pool) < n else n - 1
    if settings.n_adapt is not None and not 1 <= settings.n_adapt <= most:
        where = f" ({n - len(pool)} of them are '{UNLABELLED_GROUP}' and never adapt)" if len(pool) < n else ""
        raise DataLoadError(f"n_adapt (--n-adapt) must be between 1 and {most} (the data has {n} rows{where}), "
                            f"got {settings.n_adapt}.")
    if len(pool) == n:
        return adaptation_split(n, settings.n_adapt, settings.seed)
    if len(pool) < 2 and settings.n_adapt is None:
        raise DataLoadError(f"Only {len(pool)} row(s) may adapt (the others are '{UNLABELLED_GROUP}'); "
                            "at least 2 are needed.")
    if settings.n_adapt == len(pool):
        adapt = pool
    else:
        a, _ = adaptation_split(len(pool), settings.n_adapt, settings.seed)
        adapt = pool[a]
    return adapt, np.setdiff1d(np.arange(n), adapt)


def initial_noise(adapt: Dataset, settings: RunSettings) -> float:
    """Return σ² to start from: the given one, else NOISE_FRACTION × the variance of the adaptation targets."""
    if settings.noise is not None:
        return float(settings.noise)
    y = adapt.y.double()
    var = float(y.var(correction=0)) if y.numel() > 1 else 0.0
    return NOISE_FRACTION * var if var > MIN_RESIDUAL_VAR else NOISE_FRACTION


def _targets(task: str, ds: Dataset) -> torch.Tensor:
    return ds.y if task == "classification" else ds.y.double()


def plan_run(model: nn.Module, data: PreparedData, settings: RunSettings,
             memory_budget: int = DEFAULT_MEMORY_BUDGET) -> Plan:
    """Return the route the linearized fit will take (shown before any work; over budget → CG, with why)."""
    adapt, _ = split(data.dataset, settings)
    subset = ParamSubset.from_spec(model, settings.params)
    K = model_outputs(model, adapt.X)
    modules = dict(model.named_modules())
    dense = not all(isinstance(modules.get(name), nn.Linear) for name in subset.modules())
    plan = make_plan(len(adapt), K, subset.numel, settings.space, settings.solver, memory_budget,
                     itemsize=PLAN_ITEMSIZE, dense_jacobian=dense)
    cut, why = _prefix.choose_split(model, subset.names)
    features = None if cut is None else _prefix.features_per_input(cut, adapt.X)
    return replace(plan, prefix_note=_prefix.describe(cut, why, features))


def fit_linearized_iter(
    model: nn.Module, task: str, adapt: Dataset, settings: RunSettings, cancel: CancelToken | None = None,
    device=None, shard=None, checkpoint=None, unlabelled: torch.Tensor | None = None,
) -> Generator[ProgressEvent, None, LinearizedGP | LinearizedClassifier]:
    """Yield progress while fitting the GP (regression) or classifier, hyperparameters included; return it.

    `unlabelled`: inputs of rows without usable targets (see :func:`unlabelled_inputs`); a regression GP's
    hyperparameter search then scales its covariance for them (selection 'shift').
    """
    if task == "classification":
        fitted = LinearizedClassifier(model, params=settings.params, prior_var=settings.prior_var,
                                      space=settings.space, solver=settings.solver, device=device, shard=shard)
    else:
        fitted = LinearizedGP(model, params=settings.params, prior_var=settings.prior_var,
                              noise=initial_noise(adapt, settings), space=settings.space, solver=settings.solver,
                              device=device, shard=shard, checkpoint=checkpoint)
    yield from fitted.fit_iter(adapt.X, _targets(task, adapt), cancel=cancel)
    if settings.fit_hyper:
        what = "choosing s², then T and τ" if task == "classification" else "marginal likelihood over s², σ²"
        yield ProgressEvent("hyperparameters", 0.0, message=what)
        if task == "classification":
            fitted.fit_hyperparameters(cancel=cancel)
        else:
            fitted.fit_hyperparameters(cancel=cancel, unlabelled=unlabelled)
    return fitted


def unlabelled_inputs(ds: Dataset) -> torch.Tensor | None:
    """Return the inputs of `ds`'s rows grouped UNLABELLED_GROUP (never adapted on), or None when it has none."""
    if ds.groups is None:
        return None
    rows = np.flatnonzero(np.asarray(ds.groups) == UNLABELLED_GROUP)
    return ds.X[torch.as_tensor(rows)] if len(rows) else None


def drain(gen: Generator, on_event: Callable | None = None):
    """Return what a job generator returns, passing each event it yields to `on_event`."""
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        if on_event is not None:
            on_event(event)


def hyper_info(fitted, adapt: Dataset, settings: RunSettings, task: str) -> dict[str, Any]:
    """Return the hyperparameters used (fitted or given), how and why they were chosen, and the log evidence.

    Flat keys every reader uses: 'fitted', 'selection' ('heldout', 'evidence', 'floor', 'map2', … or
    'as given'), 'method' (in words), 'why' (one line, when the selection gives one), 'prior_var',
    'noise', 'cov_scale' and 'temperature' (classifier's τ and logit T), their starting values, 'log_evidence' at the result;
    classifiers chosen by held-out NLL add 'heldout_nll' (at the chosen s², τ) and 'folds';
    regression with the σ² floor adds 'noise_floor' and 'floor_active'. 'search' is the predictor's
    own record of the search (its candidates and tables), as JSON-ready data.
    """
    try:
        evidence = fitted.log_marginal_likelihood()
    except Exception:  # noqa: BLE001 - CG classifiers have no evidence; the run is still valid
        evidence = None
    info = (getattr(fitted, "hyper_info", None) or {}) if settings.fit_hyper else {}
    selection = (info.get("selection") or info.get("method")) if settings.fit_hyper else "as given"
    out = {"fitted": settings.fit_hyper,
           "selection": selection,
           "method": (info.get("method") or info.get("selection")) if settings.fit_hyper else "as given",
           "why": info.get("why"),
           "prior_var": fitted.prior_var,
           "noise": None if task == "classification" else fitted.noise,
           "cov_scale": getattr(fitted, "cov_scale", None) if task == "classification" else info.get("cov_scale"),
           "temperature": getattr(fitted, "logit_temperature", None),
           "initial_prior_var": settings.prior_var,
           "initial_noise": None if task == "classification" else initial_noise(adapt, settings),
           "log_evidence": evidence,
           "search": _plain(info) if info else None}
    if info.get("chosen_heldout_nll") is not None:
        out.update(heldout_nll=info["chosen_heldout_nll"], folds=info.get("folds"))
    if task == "regression" and selection in ("floor", "shift"):  # 'shift' scales the floor's values by τ
        floor = info.get("noise_floor")
        floor = regression_hyper.noise_floor(adapt.y) if floor is None else float(floor)
        noise = float(info.get("base_noise", fitted.noise))  # 'shift': σ² before its covariance scale τ
        out.update(noise_floor=floor, floor_active=bool(noise <= floor * (1 + FLOOR_ACTIVE_RTOL)))
    return out


def _plain(value: Any) -> Any:
    """Return ``value`` with tensors and NumPy values as Python numbers and lists (JSON-ready)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if hasattr(value, "tolist"):  # NumPy arrays and scalars
        return value.tolist()
    return value


def score_linearized(fitted, task: str, test: Dataset, wall_time_s: float) -> tuple[ComparisonRecord, dict]:
    """Return the linearized model's record and test predictions (GP: noisy predictive; classifier: probs)."""
    extra = {"route": f"{fitted.plan.space}/{fitted.plan.solver}", "prior_var": fitted.prior_var}
    if task == "classification":
        probs = fitted.predict_proba(test.X).double().cpu()
        rec = classification_record(LINEARIZED_NAMES[task], probs, test.y, wall_time_s, newton=fitted.map_info.iterations, **extra)
        return rec, {"probs": probs}
    mean, var = fitted.predict(test.X, include_noise=True)
    mean, var = mean.cpu(), var.cpu()
    rec = regression_record(LINEARIZED_NAMES[task], mean, var, test.y.double(), wall_time_s,
                            products=fitted.solve_info.products, noise=fitted.noise, **extra)
    return rec, {"mean": mean, "var": var}


def residual_var(pred: torch.Tensor, y: torch.Tensor) -> float:
    """Return a point predictor's mean squared residual (floored): its predictive variance by the rule."""
    return max(float(((pred.double() - y.double().reshape(pred.shape)) ** 2).mean()), MIN_RESIDUAL_VAR)


def score_point(method: str, task: str, pred_test: torch.Tensor, pred_adapt: torch.Tensor | None,
                adapt: Dataset, test: Dataset, wall_time_s: float, **extra) -> tuple[ComparisonRecord, dict]:
    """Return a point predictor's record by the one rule (probabilities, or residual-variance Gaussian)."""
    if task == "classification":
        probs = pred_test.double().cpu()
        return classification_record(method, probs, test.y, wall_time_s, **extra), {"probs": probs}
    mean = pred_test.double().cpu().reshape(test.y.shape)
    var = torch.full_like(mean, residual_var(pred_adapt.cpu(), adapt.y))
    return regression_record(method, mean, var, test.y.double(), wall_time_s, scored_as=POINT_RULE, **extra), \
        {"mean": mean, "var": var}


def point_predictions(model: nn.Module, X: torch.Tensor, task: str) -> torch.Tensor:
    """Return a point predictor's outputs on X: class probabilities, or (n,) / (n, K) regression values."""
    with torch.no_grad():
        out = predict(model, X, task=task)
    return out if task == "classification" else out.reshape(X.shape[0], -1).squeeze(-1)


def fine_tune_settings(task: str, settings: RunSettings) -> FineTuneSettings:
    """Return the fine-tuning settings of a run: the linearized subset, Adam, no early stopping."""
    return FineTuneSettings(params=settings.params, lr=settings.lr, epochs=settings.epochs,
                            batch_size=settings.batch_size, seed=settings.seed, task=task, patience=None)


def fine_tune_iter(model: nn.Module, task: str, adapt: Dataset, settings: RunSettings, grid=None,
                   cancel: CancelToken | None = None, max_rate: float | None = None,
                   device=None) -> Generator[EpochEvent, None, FineTuneResult]:
    """Yield fine-tuning epochs of the linearized subset; return the FineTuneResult."""
    return (yield from finetune_iter(model, adapt, None, fine_tune_settings(task, settings), grid=grid,
                                     cancel=cancel, max_rate=max_rate, device=device))


def score_finetuned(result: FineTuneResult, task: str, adapt: Dataset, test: Dataset,
                    wall_time_s: float) -> tuple[ComparisonRecord, dict]:
    """Return the fine-tuned model's record by the point-predictor rule."""
    pred_te = predict(result, test.X)
    pred_tr = None if task == "classification" else predict(result, adapt.X)
    return score_point("fine-tuned", task, pred_te, pred_tr, adapt, test, wall_time_s,
                       epochs=len(result.history) - 1)


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def run(
    model: nn.Module, data: PreparedData | Dataset, settings: RunSettings | None = None,
    methods: tuple[str, ...] = ("linearized",), on_event: Callable[[ProgressEvent], None] | None = None,
    cancel: CancelToken | None = None, device=None, shard=None, checkpoint=None,
) -> RunResult:
    """Return every requested method's record (plus the unadapted model's) on the test rows of one split."""
    settings = settings or RunSettings()
    if isinstance(data, Dataset):
        data = resolve_task(model, data, settings.task)
    adapt, test = split(data.dataset, settings)
    plan = plan_run(model, data, settings)
    if on_event is not None:
        on_event(ProgressEvent("plan", 0.0, message=plan.describe()))
    result = run_split(model, data.task, adapt, test, settings, methods, on_event, cancel, device, shard, checkpoint)
    result.task_reason = data.task_reason
    result.notes = list(data.notes) + result.notes
    return result


def run_split(
    model: nn.Module, task: str, adapt: Dataset, test: Dataset, settings: RunSettings,
    methods: tuple[str, ...] = ("linearized",), on_event: Callable[[ProgressEvent], None] | None = None,
    cancel: CancelToken | None = None, device=None, shard=None, checkpoint=None,
) -> RunResult:
    """Return the records of :func:`run` on given adaptation and test rows (a fixed split, e.g. the demo's)."""
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ShapeError(f"methods must be among {METHODS}; got {sorted(unknown)}.")
    records, preds = [], {}
    base_te, t = _timed(lambda: point_predictions(model, test.X, task))
    base_tr = None if task == "classification" else point_predictions(model, adapt.X, task)
    rec, preds["unadapted"] = score_point("unadapted", task, base_te, base_tr, adapt, test, t)
    records.append(rec)
    if "fine-tuned" in methods or "ensemble" in methods:
        # Untimed tiny fit first: the first torch.func call in a process warms up ~1.5 s of machinery,
        # which would otherwise be charged to whichever method runs first.
        warm = adapt.subset(range(min(2, len(adapt))))
        drain(fit_linearized_iter(model, task, warm, settings.replace(fit_hyper=False)))
    fitted, hyper, finetuned, plan = None, {}, None, None
    if "linearized" in methods:
        fitted, t_fit = _timed(lambda: drain(fit_linearized_iter(model, task, adapt, settings, cancel, device,
                                                                  shard, checkpoint, unlabelled_inputs(test)), on_event))
        start = time.perf_counter()
        rec, preds["linearized"] = score_linearized(fitted, task, test, 0.0)
        rec = ComparisonRecord(rec.method, rec.task, rec.metrics, t_fit + time.perf_counter() - start, rec.curves, rec.extra)
        records.append(rec)
        hyper = hyper_info(fitted, adapt, settings, task)
        plan = fitted.plan
    if "fine-tuned" in methods:
        finetuned, t_ft = _timed(lambda: drain(fine_tune_iter(model, task, adapt, settings, cancel=cancel, device=device)))
        rec, preds["fine-tuned"] = score_finetuned(finetuned, task, adapt, test, t_ft)
        records.append(rec)
    if "ensemble" in methods and settings.ensemble > 0:
        records.append(_ensemble(model, task, adapt, test, settings, preds))
    return RunResult(task, "", settings, len(adapt), len(test), plan, hyper, records, preds,
                     test.y, fitted, finetuned, [SCORING_RULE])


def _ensemble(model, task, adapt, test, settings: RunSettings, preds: dict) -> ComparisonRecord:
    ens, t = _timed(lambda: finetune_ensemble(model, adapt, None, fine_tune_settings(task, settings),
                                              members=settings.ensemble))
    name = f"fine-tuned ensemble ×{settings.ensemble}"
    if task == "classification":
        probs = ens.predict(test.X).double()
        preds["ensemble"] = {"probs": probs}
        return classification_record(name, probs, test.y, t)
    m_te, v_te = ens.predict(test.X)
    m_tr, _ = ens.predict(adapt.X)
    # The members' spread plus the ensemble mean's own residual variance, by the point-predictor rule.
    var = v_te.double() + residual_var(m_tr, adapt.y)
    preds["ensemble"] = {"mean": m_te.double(), "var": var}
    return regression_record(name, m_te.double(), var, test.y.double(), t, scored_as=f"spread + {POINT_RULE}")


def check_exportable(model: nn.Module) -> None:
    """Raise UnsupportedExportError now (before any fitting) when the model cannot be exported."""
    from .export.program import _exportable_copy

    _exportable_copy(model)
