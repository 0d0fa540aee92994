"""Jobs that load things into the worker (examples, model files, data files) and the route estimate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ntk_studio.core import CancelToken
from ntk_studio.core.data import load_dataset
from ntk_studio.core.errors import DataLoadError, NTKStudioError, ShapeError
from ntk_studio.core.data.tabular import SUPPORTED_EXTENSIONS as TABLE_EXTENSIONS
from ntk_studio.core.examples.registry import load_example
from ntk_studio.core.models import load_model
from ntk_studio.core.params import ParamSubset
from ntk_studio.core.pipeline import PreparedData, RunSettings, load_data_for, plan_run, prepare
from ntk_studio.core.plan import make_plan
from ntk_studio.pipeline_defaults import settings_for

from .state import WorkerState, available_devices
from .summaries import data_summary, model_summary, plot_inputs_1d, points_1d, table_columns

PLAN_ITEMSIZE = 8  # the GP solves in float64


def _session(state: WorkerState) -> dict[str, Any]:
    """Return what the window shows after a load: model tree, data preview, task and devices."""
    model = None if state.model is None else model_summary(state.model, state.data)
    standardizer = getattr(state.example, "standardizer", None)
    data = None if state.data is None else data_summary(state.data, standardizer)
    points = None
    if model is not None and data is not None and model["mismatch"] is None and plot_inputs_1d(state.data) \
            and state.task == "regression":
        # The default split's adaptation rows, drawn before the first Adapt (the app's request, #18).
        defaults = settings_for(state.example.name if state.example is not None else None)
        n_adapt = defaults.n_adapt if defaults.n_adapt is not None and defaults.n_adapt < len(state.data) else None
        adapt, _ = state.split(n_adapt, defaults.seed)
        points = points_1d(state.model, state.data, adapt)
    return {"model": model, "data": data, "task": state.task, "task_reason": state.task_reason, "points": points,
            "devices": available_devices(),
            "example": state.example.name if state.example is not None else None}


def load_example_job(state: WorkerState, args: dict, cancel: CancelToken) -> dict[str, Any]:
    """Load a built-in example (model and data); return its summary and the session."""
    example = load_example(args["name"])
    cancel.raise_if_cancelled()
    state.forget_fits()
    state.example, state.model, state.data, state.task = example, example.model, example.target, example.task
    state.task_reason, state.data_source = "the example's task", None
    state.truth, state.model_source = example.truth, f"built-in example '{example.name}'"
    state.model_sha256 = ""
    target = example.target
    x_range = [float(target.X.min()), float(target.X.max())]
    return {"name": example.name, "task": example.task, "description": example.description,
            "n_rows": len(target), "input_shape": list(target.X.shape[1:]), "x_range": x_range,
            "notes": list(example.notes), "session": _session(state)}


def load_model_job(state: WorkerState, args: dict, cancel: CancelToken) -> dict[str, Any]:
    """Load a model file; return its format, SHA-256, notes and the session (data kept)."""
    # expected_sha256 (sent when a project is opened): the bytes loaded must be the bytes the project recorded.
    loaded = load_model(args["path"], arch=args["arch"], trust_pickle=args["trust_pickle"],
                        expected_sha256=args.get("expected_sha256"))
    cancel.raise_if_cancelled()
    state.forget_fits()
    state.model, state.model_source, state.model_sha256 = loaded.module, str(loaded.path), loaded.sha256
    notes = list(loaded.notes)
    try:
        _read_data(state)  # a data file is re-read shaped for this model (channels, size, task)
    except NTKStudioError as exc:  # the session's summary shows the mismatch; the model stays loaded
        notes.append(f"The loaded data do not fit this model: {exc}")
    return {"path": str(loaded.path), "format": loaded.format, "sha256": loaded.sha256,
            "notes": notes, "session": _session(state)}


def load_data_job(state: WorkerState, args: dict, cancel: CancelToken) -> dict[str, Any]:
    """Load a data file shaped for the loaded model (image channels and size, task); a table without a
    chosen target returns its columns instead. Args ``task`` (auto|regression|classification),
    ``channels`` and ``image_size`` override what the model says; ``classification`` is the old flag."""
    path = Path(args["path"]).expanduser()
    is_table = path.suffix.lower() in TABLE_EXTENSIONS and not path.is_dir()
    if is_table and not args["target"]:
        return table_columns(path)
    table: dict[str, Any] = {}
    if is_table:
        if not all(isinstance(f, str) for f in args["features"] or []):
            raise DataLoadError("features must be a list of column names.")
        table.update(target=args["target"], features=args["features"] or None)
    task = args.get("task") or "auto"
    if task == "auto" and args.get("classification"):
        task = "classification"
    size = args.get("image_size")
    options = {"task": task, "channels": args.get("channels"), "image_size": tuple(size) if size else None,
               "table": table, "sha256": args.get("expected_sha256")}  # re-checked on every re-read
    previous = (state.data_source, state.data, state.task, state.task_reason, state.example)
    state.data_source, state.example = (str(path), options), None
    try:
        _read_data(state)
    except Exception:
        state.data_source, state.data, state.task, state.task_reason, state.example = previous
        raise
    cancel.raise_if_cancelled()
    state.forget_fits()
    state.truth = None
    return {"needs_columns": False, "path": str(path), "sha256": state.data.sha256, "task": state.task,
            "task_reason": state.task_reason, "session": _session(state)}


def _read_data(state: WorkerState) -> None:
    """(Re)read the data file for the loaded model: channels, size and task decided against it."""
    if state.data_source is None:
        return
    path, o = state.data_source
    mismatch = None
    if state.model is not None:
        try:
            prepared = load_data_for(state.model, path, o["task"], o["channels"], o["image_size"],
                                     expected_sha256=o.get("sha256"), **o["table"])
        except ShapeError as exc:
            if o["task"] != "auto":
                raise
            # Model and data may arrive in either order: the data still load, the model panel shows why
            # they do not fit (session.model.mismatch) and Adapt stays off until they do.
            mismatch = str(exc)
        else:
            state.data, state.task, state.task_reason = prepared.dataset, prepared.task, prepared.task_reason
            return
    # No model yet: read as the data say; the task is settled when a model arrives.
    p = Path(path)
    extra: dict[str, Any] = dict(o["table"])
    if o.get("sha256") is not None:
        extra["expected_sha256"] = o["sha256"]
    if p.is_dir():
        extra.update(channels=o["channels"] or 3, size=o["image_size"])
    elif o["task"] == "classification":
        extra["classification"] = True
    data = load_dataset(p, **extra)
    state.data, state.task = data, "classification" if data.is_classification else "regression"
    state.task_reason = ("from the data alone (no model loaded yet)" if mismatch is None
                         else f"from the data alone: the model does not fit them ({mismatch})")


def _dense_jacobian(model: nn.Module, subset: ParamSubset) -> bool:
    modules = dict(model.named_modules())
    # The structured kernel covers nn.Linear layers; anything else needs per-sample Jacobians.
    return not all(isinstance(modules.get(name), nn.Linear) for name in subset.modules())


def plan_job(state: WorkerState, args: dict, cancel: CancelToken) -> dict[str, Any]:
    """Return the route, system size and memory the GP would use with these settings (nothing is fitted)."""
    model, data = state.require_model(), state.require_data()
    outputs = model_summary(model, data)
    if outputs["mismatch"] is None:
        settings = RunSettings(params=args["params"], n_adapt=args["n_adapt"], seed=args["seed"],
                               space=args["space"], solver=args["solver"])
        plan = plan_run(model, PreparedData(data, state.task, state.task_reason), settings)
    else:  # the model cannot run on the data: still show a route, for one output
        adapt, _ = state.split(args["n_adapt"], args["seed"])
        subset = ParamSubset.from_spec(model, args["params"])
        plan = make_plan(len(adapt), 1, subset.numel, args["space"], args["solver"], itemsize=PLAN_ITEMSIZE,
                         dense_jacobian=_dense_jacobian(model, subset))
    return {"describe": plan.describe(), "space": plan.space, "solver": plan.solver, "n": plan.n,
            "outputs": plan.outputs, "params": plan.params, "est_bytes": plan.est_bytes,
            "est_products": plan.est_products, "budget_bytes": plan.budget_bytes,
            "mismatch": outputs["mismatch"]}
