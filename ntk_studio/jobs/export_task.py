"""The worker's export job: write the last fit as a verified ONNX file (and optionally a .pt2 program)."""

from __future__ import annotations

from ntk_studio.core import CancelToken
from ntk_studio.core.errors import NotFittedError, ShapeError
from ntk_studio.core.export import export_predictor

from .fit_tasks import JobGen
from .state import WorkerState

DTYPES = ("float64", "float32")


def export_job(state: WorkerState, args: dict, cancel: CancelToken) -> JobGen:
    """Export the warm GP or classifier; verify on the held-out split; return the export report."""
    import torch

    predictor = state.gp
    if args["dtype"] not in DTYPES:
        raise ShapeError(f"dtype must be one of {DTYPES}, got {args['dtype']!r}.")
    if predictor is None:
        raise NotFittedError("Nothing to export yet: run Adapt first, then export the adapted model.")
    _, test = state.split(args["n_adapt"], args["seed"])
    example = state.example
    stats = getattr(example, "standardizer", None) if example is not None else None
    X_check = stats.inverse_x(test.X) if stats is not None else test.X  # files take raw units
    yield "progress", {"stage": "export", "progress": 0.0,
                       "message": f"tracing, writing and checking on {len(test)} held-out rows"}
    cancel.raise_if_cancelled()
    data = state.require_data()
    report = export_predictor(
        predictor, X_check, args["onnx"], args["native"], standardizer=stats,
        feature_names=data.feature_names, class_names=data.class_names,
        source_sha256=state.model_sha256 or None,
        dtype=torch.float32 if args["dtype"] == "float32" else torch.float64,
    )
    cancel.raise_if_cancelled()
    return report.to_json()
