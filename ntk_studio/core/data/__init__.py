"""Datasets in: tabular files, arrays, image folders, standardization and splits."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from ..errors import DataLoadError
from .arrays import SUPPORTED_EXTENSIONS as ARRAY_EXTENSIONS
from .arrays import load_arrays
from .dataset import Dataset
from .images import load_image_folder
from .prep import Split, Standardizer, adaptation_split, random_split, source_target_split
from .tabular import SUPPORTED_EXTENSIONS as TABLE_EXTENSIONS
from .tabular import load_table

SUPPORTED_FORMATS = (
    f"tables ({', '.join(TABLE_EXTENSIONS)}), arrays ({', '.join(ARRAY_EXTENSIONS)}), "
    "or a folder of images with one subfolder per class"
)


def load_dataset(path: str | Path, **kwargs: Any) -> Dataset:
    """Return the Dataset at `path`, choosing the loader by extension (a folder means images)."""
    p = Path(path)
    if p.is_dir():
        loader = load_image_folder
    elif p.suffix.lower() in TABLE_EXTENSIONS:
        loader = load_table
    elif p.suffix.lower() in ARRAY_EXTENSIONS:
        loader = load_arrays
    elif not p.exists():
        raise DataLoadError(f"No such file or folder: {str(p)!r}. Check the path.")
    else:
        raise DataLoadError(
            f"{p.name!r} is not a supported dataset format ({p.suffix or 'no extension'}). "
            f"Supported: {SUPPORTED_FORMATS}."
        )
    # Options come from the CLI or the app; a wrong one should read as a data error, not a TypeError.
    params = inspect.signature(loader).parameters
    unknown = sorted(set(kwargs) - set(params) - {"path"})
    if unknown:
        allowed = ", ".join(n for n in params if n != "path")
        raise DataLoadError(
            f"Option(s) {', '.join(unknown)} do not apply to {p.name!r}; {loader.__name__} takes: {allowed}."
        )
    required = [n for n, prm in params.items() if prm.default is inspect.Parameter.empty and n != "path"]
    missing = [n for n in required if n not in kwargs]
    if missing:
        raise DataLoadError(
            f"Loading {p.name!r} needs {', '.join(missing)}, e.g. target='price' (the column to predict)."
        )
    return loader(p, **kwargs)


__all__ = [
    "Dataset",
    "Split",
    "Standardizer",
    "adaptation_split",
    "load_arrays",
    "load_dataset",
    "load_image_folder",
    "load_table",
    "random_split",
    "source_target_split",
]
