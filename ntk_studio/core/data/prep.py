"""Preparing a Dataset for adaptation: standardization and train/val/test splits."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from ..errors import DataLoadError, ShapeError
from ._common import listing
from .dataset import Dataset

# Below this (relative to the column's magnitude) a column counts as constant and keeps scale 1,
# so standardizing never divides by (nearly) zero.
CONSTANT_RTOL = 1e-12
# random_split needs one row each for train, val and test.
MIN_SPLIT_ROWS = 3
STANDARDIZER_VERSION = 1


def _as_numpy(a) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def _like(result: np.ndarray, template):
    """Return result as the same kind (tensor or array) and dtype as template."""
    if isinstance(template, torch.Tensor):
        return torch.as_tensor(result, dtype=template.dtype, device=template.device)
    dtype = np.asarray(template).dtype
    return result.astype(dtype if dtype.kind == "f" else np.float64, copy=False)


@dataclass(frozen=True, eq=False)
class Standardizer:
    """Per-feature (or, for images, per-channel) mean and scale of X, and of y for regression.

    Fit it on the training rows only. A constant column gets scale 1 (it is centred, never
    divided by zero) and is listed in `constant`. `y_mean`/`y_scale` are None for
    classification.
    """

    x_mean: np.ndarray
    x_scale: np.ndarray
    y_mean: np.ndarray | None
    y_scale: np.ndarray | None
    per_channel: bool = False
    constant: tuple[int, ...] = ()

    @classmethod
    def fit(cls, dataset: Dataset) -> Standardizer:
        """Return the Standardizer with the mean and standard deviation of `dataset`."""
        X = _as_numpy(dataset.X).astype(np.float64)
        if len(X) == 0:
            raise DataLoadError("Cannot standardize an empty dataset; it needs at least one row.")
        if not np.isfinite(X).all():
            raise DataLoadError("X contains NaN or infinite values; clean the data before standardizing.")
        if X.ndim < 2:
            raise ShapeError(f"X has shape {X.shape}; expected (n, features) or (n, C, H, W).")
        per_channel = X.ndim > 2
        axes = (0, *range(2, X.ndim)) if per_channel else (0,)
        x_mean, x_std = _moments(X, axes)
        constant = tuple(int(i) for i in np.flatnonzero(x_std == 0.0))
        y_mean = y_scale = None
        if not dataset.is_classification:
            Y = _as_numpy(dataset.y).astype(np.float64)
            if not np.isfinite(Y).all():
                raise DataLoadError("y contains NaN or infinite values; clean the data before standardizing.")
            y_mean, y_std = _moments(Y.reshape(len(Y), -1), (0,))
            y_scale = np.where(y_std == 0.0, 1.0, y_std)
        return cls(x_mean, np.where(x_std == 0.0, 1.0, x_std), y_mean, y_scale, per_channel, constant)

    def inputs_only(self) -> Standardizer:
        """Return this standardizer without its target statistics (it then leaves y unchanged)."""
        return replace(self, y_mean=None, y_scale=None)

    def x_shape(self, ndim: int) -> tuple[int, ...]:
        """Return the shape x_mean and x_scale take to broadcast over inputs with `ndim` dimensions."""
        return (1, -1) + (1,) * (ndim - 2) if self.per_channel else (1, -1)

    def transform_x(self, X):
        """Return (X - x_mean) / x_scale, as the same kind (tensor or array) as X."""
        arr = _as_numpy(X).astype(np.float64)
        expected = len(self.x_mean)
        got = arr.shape[1] if arr.ndim >= 2 else None
        if got != expected or (self.per_channel != (arr.ndim > 2)):
            kind = "channels" if self.per_channel else "features"
            raise ShapeError(
                f"The standardizer was fitted on {expected} {kind}, but X has shape {arr.shape}. "
                "Use the standardizer fitted on this kind of data."
            )
        shape = self.x_shape(arr.ndim)
        out = (arr - self.x_mean.reshape(shape)) / self.x_scale.reshape(shape)
        return _like(out, X)

    def inverse_x(self, X):
        """Return X · x_scale + x_mean (standardized inputs back in raw units), same kind as X."""
        arr = _as_numpy(X).astype(np.float64)
        shape = self.x_shape(arr.ndim)
        return _like(arr * self.x_scale.reshape(shape) + self.x_mean.reshape(shape), X)

    def transform_y(self, y):
        """Return (y - y_mean) / y_scale (y itself for classification), same kind as y."""
        if self.y_mean is None:
            return y
        arr = _as_numpy(y).astype(np.float64)
        y_mean, y_scale = self._y_vec(arr)
        return _like((arr - y_mean) / y_scale, y)

    def inverse_y_mean(self, mean):
        """Return a predicted mean in the original units of y."""
        if self.y_mean is None:
            return mean
        arr = _as_numpy(mean).astype(np.float64)
        y_mean, y_scale = self._y_vec(arr)
        return _like(arr * y_scale + y_mean, mean)

    def inverse_y_var(self, var):
        """Return a predicted variance in the original units of y (scaled by y_scale²)."""
        if self.y_scale is None:
            return var
        arr = _as_numpy(var).astype(np.float64)
        return _like(arr * self._y_vec(arr)[1] ** 2, var)

    def _y_vec(self, arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return y_mean, y_scale shaped to broadcast over arr of shape (m,) or (m, K)."""
        k = len(self.y_mean)
        if arr.ndim == 2 and arr.shape[1] == k:
            return self.y_mean, self.y_scale
        if k == 1:
            return self.y_mean[0], self.y_scale[0]
        raise ShapeError(f"y has shape {arr.shape}, but the standardizer was fitted on {k} targets.")

    def transform(self, dataset: Dataset) -> Dataset:
        """Return a copy of `dataset` with X (and y for regression) standardized."""
        note = "standardized X" + ("" if self.y_mean is None else " and y")
        if self.constant:
            names = dataset.feature_names
            shown = listing(repr(names[i]) if i < len(names) else str(i) for i in self.constant)
            note += f"; constant {'channel' if self.per_channel else 'column'}(s) {shown} only centred"
        return replace(dataset, X=self.transform_x(dataset.X), y=self.transform_y(dataset.y),
                       notes=(*dataset.notes, note))

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serializable dict (plain lists) that `from_dict` turns back into self."""
        def lst(a):
            return None if a is None else [float(v) for v in a]
        return {"version": STANDARDIZER_VERSION, "per_channel": self.per_channel, "constant": list(self.constant),
                "x_mean": lst(self.x_mean), "x_scale": lst(self.x_scale),
                "y_mean": lst(self.y_mean), "y_scale": lst(self.y_scale)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Standardizer:
        """Return the Standardizer stored by `to_dict`, checking that it is well formed."""
        try:
            if d["version"] != STANDARDIZER_VERSION:
                raise ValueError(f"unsupported version {d['version']!r}")
            x_mean, x_scale = _stored_pair(d, "x_mean", "x_scale")
            y_mean, y_scale = _stored_pair(d, "y_mean", "y_scale")
            if x_mean is None:
                raise ValueError("x_mean is missing")
            constant = tuple(int(i) for i in d.get("constant", ()))
            return cls(x_mean, x_scale, y_mean, y_scale, bool(d["per_channel"]), constant)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataLoadError(
                f"The stored standardizer is malformed ({exc}); fit it again on the training data."
            ) from exc

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Standardizer):
            return NotImplemented
        pairs = [(getattr(self, f), getattr(other, f)) for f in ("x_mean", "x_scale", "y_mean", "y_scale")]
        same_flags = (self.per_channel, self.constant) == (other.per_channel, other.constant)
        return same_flags and all(
            (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))
            for a, b in pairs)

    __hash__ = None  # mutable-looking numpy contents; not hashable


def _stored_pair(d: dict[str, Any], mean_key: str, scale_key: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Return a stored (mean, scale) pair as float64 vectors, or (None, None); raise ValueError if bad."""
    if d[mean_key] is None and d[scale_key] is None:
        return None, None
    mean = np.asarray(d[mean_key], dtype=np.float64)
    scale = np.asarray(d[scale_key], dtype=np.float64)
    if mean.ndim != 1 or mean.shape != scale.shape:
        raise ValueError(f"{mean_key} and {scale_key} must be lists of equal length")
    if not (np.isfinite(mean).all() and np.isfinite(scale).all() and (scale > 0).all()):
        raise ValueError(f"{mean_key} must be finite and {scale_key} finite and positive")
    return mean, scale


def _moments(arr: np.ndarray, axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Return (mean, std) over axes, with std exactly 0 for (numerically) constant columns."""
    mean = arr.mean(axis=axes)
    std = arr.std(axis=axes)
    # A constant column's std comes out as rounding noise (~1e-17 x its value), not 0.
    constant = std <= CONSTANT_RTOL * np.maximum(np.abs(mean), 1.0)
    return mean, np.where(constant, 0.0, std)


@dataclass(frozen=True, eq=False)
class Split:
    """Row indices (int64, sorted) of the train, validation and test parts of a dataset."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Split):
            return NotImplemented
        return all(np.array_equal(getattr(self, f), getattr(other, f)) for f in ("train", "val", "test"))

    __hash__ = None


def random_split(n: int, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0) -> Split:
    """Return a seeded random Split of range(n); parts are disjoint and cover every row.

    Each part with a positive fraction gets at least one row (so all three are non-empty by
    default); train always keeps at least one.
    """
    n = operator.index(n)
    if n < MIN_SPLIT_ROWS:
        raise DataLoadError(f"A train/val/test split needs at least {MIN_SPLIT_ROWS} rows; the dataset has {n}.")
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= f < 1.0:
            raise DataLoadError(f"{name} must be in [0, 1), got {f!r}.")
    if val_fraction + test_fraction >= 1.0:
        raise DataLoadError(
            f"val_fraction + test_fraction = {val_fraction + test_fraction:g} leaves no training rows; keep it below 1."
        )
    sizes = [max(1, round(n * f)) if f > 0 else 0 for f in (val_fraction, test_fraction)]
    while n - sum(sizes) < 1:  # rounding up small parts can eat the training set
        sizes[sizes.index(max(sizes))] -= 1
    perm = np.random.default_rng(seed).permutation(n)
    n_val, n_test = sizes
    val, test, train = perm[:n_val], perm[n_val:n_val + n_test], perm[n_val + n_test:]
    return Split(*(np.sort(part).astype(np.int64) for part in (train, val, test)))


def _group_key(v: object) -> str:
    """Return v as the string groups are compared by: 1978, 1978.0 and "1978" all give "1978"."""
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    if isinstance(v, (bytes, np.bytes_)):
        return v.decode(errors="replace").strip()
    return str(v).strip()


def source_target_split(
    groups: Sequence[object] | np.ndarray | None,
    source_value: object,
    target_value: object,
    target_train_size: int,
    seed: int = 0,
) -> tuple[np.ndarray, Split]:
    """Return (source row indices, Split of the target rows) for transfer from one group to another.

    The Split's train part holds `target_train_size` seeded-random target rows (the adaptation
    set), val is empty and test holds the remaining target rows. Values compare as strings.
    """
    if groups is None:
        raise DataLoadError("The dataset has no group column; load it with group_column=... to split by group.")
    keys = np.array([_group_key(g) for g in np.asarray(groups).ravel()], dtype=str)
    src, tgt = _group_key(source_value), _group_key(target_value)
    if src == tgt:
        raise DataLoadError(f"Source and target are the same group ({src!r}); choose two different groups.")
    present = sorted(set(keys.tolist()))
    absent = [v for v in (src, tgt) if v not in present]
    if absent:
        raise DataLoadError(
            f"Group value(s) {listing(repr(a) for a in absent)} do not occur in the group column. "
            f"Values present: {listing((repr(p) for p in present), limit=20)}."
        )
    source = np.flatnonzero(keys == src).astype(np.int64)
    target = np.flatnonzero(keys == tgt)
    size = operator.index(target_train_size)
    if not 1 <= size <= len(target) - 1 or isinstance(target_train_size, bool):
        raise DataLoadError(
            f"target_train_size must be between 1 and {len(target) - 1} (group {tgt!r} has "
            f"{len(target)} rows, and at least one must stay for testing), got {target_train_size!r}."
        )
    chosen = np.random.default_rng(seed).permutation(len(target))
    train = np.sort(target[chosen[:size]]).astype(np.int64)
    test = np.sort(target[chosen[size:]]).astype(np.int64)
    return source, Split(train, np.empty(0, dtype=np.int64), test)


ADAPT_TEST_FRACTION = 0.3  # default share of rows held out for scoring when n_adapt is not given


def adaptation_split(n: int, n_adapt: int | None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return sorted (adaptation rows, test rows): the first n_adapt of a seeded permutation.

    Without n_adapt, 70% of the rows adapt and 30% score (``random_split``).
    """
    if n_adapt is None:
        split = random_split(n, val_fraction=0.0, test_fraction=ADAPT_TEST_FRACTION, seed=seed)
        return split.train, split.test
    if not 1 <= n_adapt < n:
        raise DataLoadError(f"n_adapt must be between 1 and {n - 1} (the data has {n} rows), got {n_adapt}.")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[:n_adapt]), np.sort(perm[n_adapt:])
