"""NumPy array files (.npz with X and y, .npy with the target in the last column)."""

from __future__ import annotations

import io
import math
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..errors import DataLoadError
from ._common import MIN_ROWS, class_order, listing, missing_name_error, nonfinite_rows, read_file
from .dataset import Dataset

SUPPORTED_EXTENSIONS = (".npz", ".npy")
NPY_MAGIC = b"\x93NUMPY"
# Local-file header and empty-archive signatures: every .npz is a zip archive.
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
# dtype kinds that are plain numbers: bool, signed/unsigned int, float.
NUMERIC_KINDS = "biuf"
# Arrays with more dimensions than (n, features) are image-like and kept in float32, as images are.
TABULAR_NDIM = 2
# Parsing untrusted bytes: numpy reads .npy headers with tokenize/ast and zipfile decompresses
# with zlib, and between them they raise a long, version-dependent list of exception types
# (ValueError, SyntaxError, tokenize.TokenError, zlib.error, RecursionError, MemoryError, ...).
# Every one of them means "this file is damaged", so all are wrapped into DataLoadError.
FORMAT_ERRORS = (Exception,)


def load_arrays(
    path: str | Path, target_key: str = "y", feature_key: str = "X", classification: bool = False,
    expected_sha256: str | None = None,
) -> Dataset:
    """Return the arrays at `path` as a Dataset: X (n, ...) and y (n,) or (n, K).

    `.npz` reads `feature_key` and `target_key`; `.npy` holds one 2-D array whose last column
    is the target. With `classification`, y (1-D, integer-valued) becomes class indices.
    """
    p, data, digest = read_file(path, SUPPORTED_EXTENSIONS, "array (.npz/.npy)", expected_sha256)
    notes: list[str] = []
    if p.suffix.lower() == ".npy":
        arr = _read_npy(data, p.name)
        if arr.ndim != TABULAR_NDIM or arr.shape[1] < 2:
            raise DataLoadError(
                f"{p.name!r} holds an array of shape {arr.shape}; a .npy dataset must be 2-D "
                "(rows, columns) with at least two columns, the last being the target. For "
                "other layouts save X and y together with numpy.savez(path, X=X, y=y)."
            )
        X, y = arr[:, :-1], arr[:, -1]
        feature_key, target_key = "x", "y"
        notes.append(f"last column of the .npy array is the target; {X.shape[1]} feature column(s)")
    else:
        X, y = _read_npz(data, p.name, feature_key, target_key)
    X, y, class_names = _check(X, y, p.name, feature_key, target_key, classification)
    if X.ndim == TABULAR_NDIM:
        names = tuple(f"{feature_key}{i}" for i in range(X.shape[1]))
    else:
        names = tuple(f"c{i}" for i in range(X.shape[1]))
        notes.append(f"{X.ndim}-D features kept as float32 (image-like); feature names are channels")
    return Dataset(
        X=torch.from_numpy(X), y=torch.from_numpy(y), feature_names=names, target_name=target_key,
        class_names=class_names, source=str(p), sha256=digest, notes=tuple(notes),
    )


def _object_error(name: str, what: str) -> DataLoadError:
    return DataLoadError(
        f"{what} in {name!r} is an object (pickled) array, which could run code when loaded and "
        "is refused. Save numeric arrays instead, e.g. numpy.savez(path, X=X.astype(float), y=y)."
    )


def _read_npy(data: bytes, name: str, what: str = "The array") -> np.ndarray:
    """Return the array stored in .npy bytes, refusing pickles and truncated data."""
    if not data.startswith(NPY_MAGIC):
        raise DataLoadError(f"{name!r} is not a NumPy .npy file (wrong signature). Save it with numpy.save.")
    fp = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(fp)
        # Reading the header first lets us refuse pickles and truncation before numpy
        # allocates whatever size a damaged header claims.
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
        else:
            shape, dtype = None, None
        if dtype is not None and dtype.hasobject:
            raise _object_error(name, what)
        if shape is not None and math.prod(shape) * dtype.itemsize > len(data) - fp.tell():
            raise DataLoadError(f"{what} in {name!r} is truncated: the file is shorter than its "
                                f"header ({shape}, {dtype}) says. Save it again.")
        fp.seek(0)
        return np.load(fp, allow_pickle=False)
    except DataLoadError:
        raise
    except FORMAT_ERRORS as exc:
        if "allow_pickle" in str(exc):
            raise _object_error(name, what) from exc
        raise DataLoadError(f"{what} in {name!r} could not be read ({exc}). The file is damaged "
                            "or not a .npy file; save it again with numpy.save.") from exc


def _read_npz(data: bytes, name: str, feature_key: str, target_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Return (X, y) from .npz bytes, with an error that lists the keys when one is missing."""
    if not data.startswith(ZIP_MAGICS):
        raise DataLoadError(f"{name!r} is not a NumPy .npz file (not a zip archive). Save it with numpy.savez.")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = {m.removesuffix(".npy"): m for m in archive.namelist()}
    except FORMAT_ERRORS as exc:
        raise DataLoadError(f"{name!r} is a damaged .npz archive ({exc}). Save it again with numpy.savez.") from exc
    where = f"{name!r} (keys: {listing(sorted(members), limit=20) or 'none'})"
    for role, key in (("Feature key", feature_key), ("Target key", target_key)):
        if key not in members:
            hint = "Pass feature_key=/target_key= to name the arrays to use."
            raise DataLoadError(f"{missing_name_error(role, key, sorted(members), where)} {hint}")
    arrays = []
    for key in (feature_key, target_key):
        try:
            raw = archive.read(members[key])
        except FORMAT_ERRORS as exc:
            raise DataLoadError(f"Array {key!r} in {name!r} could not be extracted ({exc}). "
                                "The archive is damaged; save it again.") from exc
        arrays.append(_read_npy(raw, name, what=f"Array {key!r}"))
    return arrays[0], arrays[1]


def _check(X: np.ndarray, y: np.ndarray, name: str, fkey: str, tkey: str, classification: bool):
    """Return (X, y, class_names) converted to Dataset dtypes after shape and value checks."""
    for key, arr in ((fkey, X), (tkey, y)):
        if arr.dtype.kind not in NUMERIC_KINDS:
            raise DataLoadError(
                f"Array {key!r} in {name!r} has dtype {arr.dtype}, not numbers. Convert it to a "
                "numeric dtype (e.g. float64) before saving."
            )
    if X.ndim < TABULAR_NDIM:
        raise DataLoadError(
            f"Features {fkey!r} in {name!r} have shape {X.shape}; they need a row per sample, "
            f"(n, features) or (n, C, H, W). For one feature use {fkey}.reshape(-1, 1)."
        )
    if y.ndim not in (1, 2):
        raise DataLoadError(f"Targets {tkey!r} in {name!r} have shape {y.shape}; they must be (n,) or (n, K).")
    if len(X) != len(y):
        raise DataLoadError(
            f"{fkey!r} has {len(X)} rows but {tkey!r} has {len(y)} in {name!r}. They must match row for row."
        )
    if len(X) < MIN_ROWS:
        raise DataLoadError(f"{name!r} has {len(X)} row(s); at least {MIN_ROWS} are needed.")
    for key, arr in ((fkey, X), (tkey, y)):
        bad = nonfinite_rows(arr)
        if len(bad):
            raise DataLoadError(
                f"Array {key!r} in {name!r} has NaN or infinite values at row index "
                f"{listing(bad)} (0-based). Replace or remove those rows."
            )
    dtype = np.float64 if X.ndim == TABULAR_NDIM else np.float32
    X = np.ascontiguousarray(X, dtype=dtype)
    if not classification:
        return X, np.ascontiguousarray(y, dtype=np.float64), None
    if y.ndim != 1 or not np.array_equal(y, np.round(y)):
        raise DataLoadError(
            f"classification=True needs {tkey!r} to be 1-D integer labels; got shape {y.shape}, "
            f"dtype {y.dtype}. Save the class labels as integers."
        )
    labels = [str(int(v)) for v in y]
    names = class_order(labels)
    if len(names) < 2:
        raise DataLoadError(f"{tkey!r} in {name!r} has a single class; classification needs at least two.")
    index = {c: i for i, c in enumerate(names)}
    return X, np.array([index[c] for c in labels], dtype=np.int64), tuple(names)
