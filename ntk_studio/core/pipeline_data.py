"""Data shaped for the model: the task decided (and explained), images read with the model's channels
and size, and the up-front checks every front end shares (channels, input shape, outputs vs classes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..pipeline_defaults import TASK_CHOICES
from .data import load_dataset
from .data._common import class_order
from .data.arrays import SUPPORTED_EXTENSIONS as ARRAY_EXTENSIONS
from .data.dataset import Dataset
from .data.images import CHANNEL_MODES
from .errors import DataLoadError, ShapeError
from .models.summary import check_model

IMAGE_NDIMS = (3, 4)  # (n, H, W) and (n, C, H, W)
CONV_WEIGHT_NDIM = 4  # a Conv2d weight: (out, in / groups, kh, kw)
RGB, RGBA = 3, 4
# ITU-R 601-2 luma, the weights Pillow uses for RGB -> "L", so arrays and image folders agree.
LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class PreparedData:
    """A dataset ready for the model: its task, why that task was chosen, and what was reshaped."""

    dataset: Dataset
    task: str
    task_reason: str
    notes: tuple[str, ...] = ()


def expected_channels(model: nn.Module) -> int | None:
    """Return the input channels of the model's first 2-D convolution (None without one)."""
    for _, p in model.named_parameters():
        if p.dim() == CONV_WEIGHT_NDIM:
            return int(p.shape[1])
    return None


def _check_channel_override(model: nn.Module, channels: int | None) -> int | None:
    want = expected_channels(model)
    if channels is not None and want is not None and channels != want:
        raise ShapeError(
            f"The model expects {want} input channel(s) (its first convolution), but the data was asked "
            f"for {channels}; drop the channel override or use {want}."
        )
    return channels if channels is not None else want


def shape_images(X: torch.Tensor, channels: int | None, size: tuple[int, int] | None) -> tuple[torch.Tensor, list[str]]:
    """Return image arrays (n, C, H, W) with `channels` and (H, W) = `size`, plus notes on what changed.

    (n, H, W) gets a channel axis; RGBA drops alpha; RGB -> 1 channel by luma; 1 -> 3 repeats.
    """
    notes: list[str] = []
    if X.dim() == 3:
        X = X.unsqueeze(1)
        notes.append("(n, H, W) images given a channel axis: (n, 1, H, W)")
    X = X.float() if not X.is_floating_point() else X
    have = X.shape[1]
    if channels is not None and have != channels:
        if have == RGBA:
            X, have = X[:, :RGB], RGB
            notes.append("RGBA images: alpha channel dropped")
        if have == channels:
            pass
        elif have == RGB and channels == 1:
            luma = torch.tensor(LUMA, dtype=X.dtype).view(1, RGB, 1, 1)
            X = (X * luma).sum(1, keepdim=True)
            notes.append("RGB images converted to grayscale (luma) for the 1-channel model")
        elif have == 1 and channels == RGB:
            X = X.repeat(1, RGB, 1, 1)
            notes.append("grayscale images repeated to 3 channels for the RGB model")
        else:
            raise ShapeError(f"The model expects {channels} input channel(s), the images have {have}; "
                             "give images with that many channels.")
    if size is not None and tuple(X.shape[-2:]) != tuple(size):
        notes.append(f"images resized from (H, W) = {tuple(X.shape[-2:])} to {tuple(size)} (bilinear)")
        X = F.interpolate(X, size=tuple(size), mode="bilinear", align_corners=False)
    return X.contiguous(), notes


def _integer_labels(y: torch.Tensor) -> np.ndarray | None:
    """Return y as int64 labels when it is 1-D and integer-valued, else None."""
    if y.dim() != 1 or y.numel() == 0:
        return None
    arr = y.detach().cpu().numpy()
    if arr.dtype.kind == "f" and not (np.isfinite(arr).all() and np.array_equal(arr, np.round(arr))):
        return None
    return arr.astype(np.int64)


def _as_classes(ds: Dataset, labels: np.ndarray, outputs: int) -> tuple[Dataset, str]:
    """Return ds with int64 class indices: the labels themselves when they fit 0..outputs-1."""
    if labels.min() >= 0 and labels.max() < outputs:
        names = tuple(str(i) for i in range(outputs))
        return replace(ds, y=torch.from_numpy(labels), class_names=names), "labels are the class indices"
    order = class_order(str(v) for v in labels)
    index = {int(c): i for i, c in enumerate(order)}
    y = torch.tensor([index[int(v)] for v in labels], dtype=torch.int64)
    return replace(ds, y=y, class_names=tuple(order)), f"labels {order[0]}…{order[-1]} mapped to indices 0…{len(order) - 1}"


def model_outputs(model: nn.Module, X: torch.Tensor) -> int:
    """Return the model's outputs per row on the first rows of X (ShapeError, one line, if it cannot run)."""
    shape = check_model(model, X)
    return int(math.prod(shape[1:])) if len(shape) > 1 else 1


def resolve_task(model: nn.Module, ds: Dataset, choice: str = "auto") -> PreparedData:
    """Return the data with its task decided: 'auto' picks classification for class labels, or for
    integer labels 0…K−1 when the model has K ≥ 2 outputs; regression otherwise. Checks outputs vs y."""
    if choice not in TASK_CHOICES:
        raise ShapeError(f"task must be one of {TASK_CHOICES}, got {choice!r}.")
    K = model_outputs(model, ds.X)
    labels = None if ds.is_classification else _integer_labels(ds.y)
    if ds.is_classification:
        if choice == "regression":
            raise ShapeError("The data holds class labels (folder or text names); regression needs numeric targets.")
        out, task = ds, "classification"
        reason = ("auto: " if choice == "auto" else "chosen; ") + "the data holds class labels"
    elif choice == "classification" or (choice == "auto" and labels is not None and K >= 2
                                         and labels.min() >= 0 and labels.max() < K):
        if labels is None:
            raise ShapeError("Classification needs 1-D integer labels; this target is real-valued or has several columns.")
        out, how = _as_classes(ds, labels, K)
        task = "classification"
        reason = (f"auto: y holds integer labels {labels.min()}…{labels.max()} and the model has {K} outputs"
                  if choice == "auto" else f"chosen; {how}")
    else:
        out, task = ds, "regression"
        if choice == "regression":
            reason = "chosen"
        elif labels is None:
            reason = "auto: y is real-valued"
        else:
            reason = (f"auto: the model has {K} output(s), too few for integer labels up to {labels.max()}; "
                      "pass --task classification if they are classes")
    check_outputs(K, out, task)
    return PreparedData(out, task, reason, out.notes)


def check_outputs(K: int, ds: Dataset, task: str) -> None:
    """Raise a one-line ShapeError when the model's outputs cannot serve the task's targets."""
    if task == "classification":
        C = len(ds.class_names or ())
        if K < 2:
            raise ShapeError("The model has 1 output, but classification needs one logit per class; "
                             "give it a head with one output per class.")
        if int(ds.y.max()) >= K:
            raise ShapeError(f"The data has {C} classes but the model has {K} outputs; "
                             "give the model one output per class.")
        return
    cols = 1 if ds.y.dim() == 1 else int(ds.y.shape[1])
    if K != cols:
        raise ShapeError(f"The model has {K} outputs but y has {cols} column(s); "
                         + ("for class labels use --task classification." if K > 1 and cols == 1
                            else "choose the target column(s) the model predicts."))


def prepare(model: nn.Module, ds: Dataset, task: str = "auto", channels: int | None = None,
            image_size: tuple[int, int] | None = None) -> PreparedData:
    """Return in-memory data shaped for the model (image channels/size) with its task decided."""
    notes: list[str] = []
    if ds.X.dim() in IMAGE_NDIMS and (ds.X.dim() == 3 and expected_channels(model) is not None or ds.X.dim() == 4):
        want = _check_channel_override(model, channels)
        X, notes = shape_images(ds.X, want, image_size)
        if notes:
            names = ("L",) if X.shape[1] == 1 else tuple(f"c{i}" for i in range(X.shape[1]))
            ds = replace(ds, X=X, feature_names=names, notes=(*ds.notes, *notes))
    try:
        return resolve_task(model, ds, task)
    except ShapeError as exc:
        if ds.X.dim() == 4 and image_size is None:
            raise ShapeError(f"{exc} If the model takes another image size, pass it (--image-size H W).") from exc
        raise


def load_data_for(model: nn.Module, path: str | Path, task: str = "auto", channels: int | None = None,
                  image_size: tuple[int, int] | None = None, expected_sha256: str | None = None,
                  **table_options: Any) -> PreparedData:
    """Return the data file at `path` read and shaped for `model` (images: its channels and size).

    With `expected_sha256` (a project's recorded hash; an image folder's manifest) the bytes parsed must
    hash to it: DataLoadError naming the file otherwise, nothing loaded."""
    p = Path(path)
    if expected_sha256 is not None:
        table_options = {**table_options, "expected_sha256": expected_sha256}
    if p.is_dir():
        want = _check_channel_override(model, channels) or RGB
        if want not in CHANNEL_MODES:
            raise ShapeError(f"The model expects {want} input channels; image folders are read as 1 (grayscale) "
                             "or 3 (RGB) channels.")
        digest = {} if expected_sha256 is None else {"expected_sha256": expected_sha256}
        ds = load_dataset(p, channels=want, size=image_size, **digest)
    elif p.suffix.lower() in ARRAY_EXTENSIONS:
        ds = load_dataset(p, **table_options)
    else:
        ds = _load_table(p, task, table_options)
    return prepare(model, ds, task, channels, image_size)


def _load_table(p: Path, task: str, options: dict[str, Any]) -> Dataset:
    if task == "classification":
        return load_dataset(p, classification=True, **options)
    try:
        return load_dataset(p, **options)
    except DataLoadError as first:
        if task == "regression":
            raise
        try:  # auto: a text label column reads as classes
            return load_dataset(p, classification=True, **options)
        except DataLoadError:
            raise first from None
