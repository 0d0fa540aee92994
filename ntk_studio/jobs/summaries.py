"""What the window shows about a model and a dataset, as small JSON-ready dicts built in the worker."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ntk_studio.core.data.dataset import Dataset
from ntk_studio.core.errors import DataLoadError, ShapeError, UnsupportedExportError
from ntk_studio.core.finetune import predict
from ntk_studio.core.pipeline import check_exportable
from ntk_studio.safe_io import open_regular
from ntk_studio.core.models import check_model

PREVIEW_ROWS = 50  # rows of the data preview table
PREVIEW_DECIMALS = 6
THUMBNAILS = 8  # image thumbnails in a data summary
THUMBNAIL_SIDE = 32  # pixels, the longest side of a thumbnail
HELD_OUT_ROWS = 300  # held-out rows whose inputs a fit result carries (click a point to see one)
HELD_OUT_IMAGES = 200  # of image data: 32×32 RGB thumbnails, ~12 kB of JSON each
GRID_POINTS = 200  # the plotting grid of a 1-D regression (the fit job's default grid_points)
SNIFF_BYTES = 64 * 1024  # enough text to read a table's header and first rows
DELIMITERS = ",\t;| "


def module_rows(model: nn.Module) -> list[dict[str, Any]]:
    """Return one row per module holding parameters (itself or below): name, kind, total and own counts."""
    rows = []
    for name, module in model.named_modules():
        total = sum(p.numel() for p in module.parameters())
        if total == 0:
            continue
        own = sum(p.numel() for p in module.parameters(recurse=False))
        rows.append({"name": name, "kind": type(module).__name__, "params": total, "own": own})
    return rows


def model_summary(model: nn.Module, data: Dataset | None) -> dict[str, Any]:
    """Return the module tree rows, the parameter total and, with data, the output shape or the mismatch."""
    out: dict[str, Any] = {"modules": module_rows(model), "total_params": sum(p.numel() for p in model.parameters()),
                           "output_shape": None, "mismatch": None, "export_refusal": export_refusal(model)}
    if data is not None:
        try:
            out["output_shape"] = list(check_model(model, data.X))[1:]
        except ShapeError as exc:  # the model and data may arrive in either order: report, do not refuse
            out["mismatch"] = str(exc)
    return out


def export_refusal(model: nn.Module) -> str | None:
    """Return why this model cannot be exported (None when it can), so the app can say so before a save dialog."""
    try:
        check_exportable(model)
    except UnsupportedExportError as exc:
        return str(exc)
    return None


def _cell(value: float) -> str:
    return f"{value:.{PREVIEW_DECIMALS}g}"


def data_summary(data: Dataset, standardizer=None) -> dict[str, Any]:
    """Return the columns, task, classes, shapes and the first rows of ``data`` as preview text.

    With the example's ``standardizer`` the preview shows raw units (the stored data are standardized).
    Image data also get up to THUMBNAILS small RGB thumbnails ([h][w][3] uint8 lists).
    """
    tabular = data.X.dim() == 2
    task = "classification" if data.is_classification else "regression"
    shown = data.subset(range(min(PREVIEW_ROWS, len(data))))
    X, Y = shown.X, shown.y
    if standardizer is not None and tabular:
        X = torch.as_tensor(standardizer.inverse_x(X.double()))
        if not data.is_classification:
            Y = torch.as_tensor(standardizer.inverse_y_mean(Y.double()))
    rows = []
    for i in range(len(shown)):
        y = Y[i]
        label = data.class_names[int(y)] if data.is_classification else ", ".join(_cell(float(v)) for v in y.reshape(-1))
        features = [_cell(float(v)) for v in X[i]] if tabular else [data.class_names[int(y)] if data.is_classification
                                                                      else "image " + "×".join(map(str, X.shape[1:]))]
        rows.append([*features, label])
    header = [*data.feature_names] if tabular else ["input"]
    extra = {"thumbnails": thumbnails(data.X)} if data.X.dim() == 4 else {}
    return {**extra, "n_rows": len(data), "task": task, "feature_names": list(data.feature_names),
            "target_name": data.target_name, "class_names": list(data.class_names or []),
            "input_shape": list(data.X.shape[1:]), "preview_header": [*header, data.target_name],
            "preview": rows, "source": data.source, "sha256": data.sha256, "notes": list(data.notes),
            "x_range": [float(data.X.min()), float(data.X.max())] if tabular else None}


def held_out_rows(data: Dataset, index, standardizer=None, cap: int = HELD_OUT_ROWS) -> dict[str, Any]:
    """Return the inputs of the first ``cap`` rows ``index`` of ``data`` (the held-out split, in its order).

    ``index``: the rows' positions in ``data``; tabular rows as raw feature values (with the example's
    ``standardizer``), image rows (at most HELD_OUT_IMAGES) as ≤ THUMBNAIL_SIDE px thumbnails.
    """
    index = [int(i) for i in list(index)[:min(cap, HELD_OUT_IMAGES) if data.X.dim() == 4 else cap]]
    X = data.X[index]
    if X.dim() == 4:
        return {"index": index, "thumbnails": thumbnails(X, count=len(index))}
    if standardizer is not None and X.dim() == 2:
        X = torch.as_tensor(standardizer.inverse_x(X.double()))
    return {"index": index, "feature_names": list(data.feature_names),
            "inputs": X.double().reshape(len(index), -1).tolist()}


def thumbnails(X: torch.Tensor, count: int = THUMBNAILS, side: int = THUMBNAIL_SIDE) -> list:
    """Return up to `count` images of X (n, C, H, W) as [h][w][3] uint8 lists, at most side×side, min-max scaled."""
    imgs = X[:count].double()
    if imgs.shape[1] == 1:
        imgs = imgs.repeat(1, 3, 1, 1)
    imgs = imgs[:, :3]
    h, w = imgs.shape[-2:]
    scale = min(1.0, side / max(h, w))
    if scale < 1.0:
        imgs = F.interpolate(imgs, size=(max(1, round(h * scale)), max(1, round(w * scale))), mode="area")
    lo = imgs.amin(dim=(1, 2, 3), keepdim=True)
    hi = imgs.amax(dim=(1, 2, 3), keepdim=True)
    imgs = (imgs - lo) / (hi - lo).clamp_min(1e-12) * 255.0
    return imgs.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).tolist()


def points_1d(model: nn.Module, data: Dataset, adapt: Dataset, grid_points: int = GRID_POINTS) -> dict[str, Any]:
    """Return the adaptation rows and the pretrained curve on an even grid, for a 1-D regression plot."""
    grid = torch.linspace(float(data.X.min()), float(data.X.max()), grid_points, dtype=data.X.dtype).unsqueeze(-1)
    with torch.no_grad():
        pre = predict(model, grid).double().reshape(grid_points, -1)[:, 0]
    return {"x": adapt.X[:, 0].tolist(), "y": adapt.y.double().reshape(len(adapt), -1)[:, 0].tolist(),
            "grid_x": grid[:, 0].tolist(), "pretrained": pre.tolist()}


def table_columns(path: Path) -> dict[str, Any]:
    """Return a table file's column names and first rows (text), for choosing target and features."""
    try:
        with open_regular(path, DataLoadError, "table file") as f:  # a FIFO or device never hangs the worker
            head = f.read(SNIFF_BYTES)
    except OSError as exc:
        raise DataLoadError(f"Cannot read {path}: {exc.strerror or exc}.") from None
    text = head.decode("utf-8-sig", errors="replace")
    if len(head) == SNIFF_BYTES and "\n" in text:
        text = text[: text.rindex("\n")]  # drop the partial last line
    try:
        dialect = csv.Sniffer().sniff(text.splitlines()[0] if text else "", delimiters=DELIMITERS)
        delimiter = dialect.delimiter
    except csv.Error:
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    lines = list(csv.reader(io.StringIO(text), delimiter=delimiter))
    lines = [ln for ln in lines if any(cell.strip() for cell in ln)]
    if not lines:
        raise DataLoadError(f"{path.name} is empty: a table needs a header line and data rows.")
    header = [c.strip() for c in lines[0]]
    return {"needs_columns": True, "path": str(path), "columns": header, "preview_header": header,
            "preview": lines[1 : PREVIEW_ROWS + 1]}


def plot_inputs_1d(data: Dataset) -> bool:
    """Return whether the data has one numeric input column (then plots use an even grid)."""
    return data.X.dim() == 2 and data.X.shape[1] == 1 and data.X.is_floating_point() and bool(torch.isfinite(data.X).all())
