"""Helpers shared by the loaders: reading a file once, hashing it, and wording errors."""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ntk_studio.safe_io import check_sha256, read_regular

from ..errors import DataLoadError

# A dataset needs at least two rows: one row cannot be split, standardized or fitted.
MIN_ROWS = 2
# How many offending rows/values an error message lists before it says "and N more".
MAX_LISTED = 5
# How many close matches a "did you mean" hint offers.
MAX_SUGGESTIONS = 3
# The largest data file read into memory at once (tables stream; arrays and images are read whole).
MAX_DATA_FILE_BYTES = 8 * 1024**3
MAX_IMAGE_FILE_BYTES = 256 * 1024**2


def check_data_path(p: Path, extensions: Sequence[str], kind: str) -> Path:
    """Return `p` if it has one of `extensions` and exists; DataLoadError saying what to do otherwise."""
    if p.suffix.lower() not in extensions:
        raise DataLoadError(
            f"{p.name!r} has extension {p.suffix or '(none)'!r}, but {kind} files must end in "
            f"{', '.join(extensions)}. Rename the file or pick the matching loader."
        )
    if not p.exists():
        raise DataLoadError(f"No such file: {str(p)!r}. Check the path and try again.")
    return p


def read_file(path: str | Path, extensions: Sequence[str], kind: str,
              expected_sha256: str | None = None) -> tuple[Path, bytes, str]:
    """Return (path, bytes, SHA-256 hex) of a readable, non-empty file with an allowed extension.

    The file is read exactly once, in binary, so that the hash describes the very bytes that
    are parsed and the input is never opened for writing. With ``expected_sha256`` a file whose
    bytes hash otherwise is a DataLoadError before anything parses them.
    """
    p = check_data_path(Path(path), extensions, kind)
    # Regular files only (a FIFO would block, /dev/zero never ends), and at most the size limit.
    data = read_regular(p, DataLoadError, f"{kind} file", MAX_DATA_FILE_BYTES)
    digest = hashlib.sha256(data).hexdigest()
    check_sha256(digest, expected_sha256, p, DataLoadError, "data file")
    if not data or data.isspace():
        raise DataLoadError(f"{p.name!r} is empty. Choose a {kind} file that contains data.")
    return p, data, digest


def listing(items: Iterable[object], limit: int = MAX_LISTED) -> str:
    """Return up to `limit` items joined by commas, with "and N more" for the rest."""
    items = list(items)
    shown = ", ".join(str(i) for i in items[:limit])
    return shown if len(items) <= limit else f"{shown} and {len(items) - limit} more"


def did_you_mean(name: str, choices: Sequence[str]) -> str:
    """Return a " Did you mean ...?" sentence for close matches of `name`, or ""."""
    lowered = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(name, choices, n=MAX_SUGGESTIONS, cutoff=0.6)
    # difflib is case-sensitive; "price" should still find "Price".
    if name.lower() in lowered and lowered[name.lower()] not in close:
        close.insert(0, lowered[name.lower()])
    if not close:
        return ""
    return " Did you mean " + " or ".join(repr(c) for c in close[:MAX_SUGGESTIONS]) + "?"


def missing_name_error(what: str, name: str, available: Sequence[str], where: str) -> DataLoadError:
    """Return the error for a column/key that does not exist, listing what does."""
    shown = listing((repr(a) for a in available), limit=30)
    return DataLoadError(
        f"{what} {name!r} is not in {where}.{did_you_mean(name, available)} "
        f"Available: {shown}."
    )


def nonfinite_rows(values: np.ndarray) -> np.ndarray:
    """Return the indices of rows (first axis) that hold any NaN or infinity."""
    flat = values.reshape(values.shape[0], -1) if values.ndim > 1 else values.reshape(-1, 1)
    return np.flatnonzero(~np.isfinite(flat).all(axis=1))


def class_order(labels: Iterable[str]) -> list[str]:
    """Return the distinct labels sorted, numerically when every label is a number.

    Numeric sorting keeps integer labels 0..K-1 at class index == label ("10" after "9"),
    which plain string sorting would not.
    """
    distinct = sorted(set(labels))
    try:
        return sorted(distinct, key=lambda s: (float(s), s))
    except ValueError:
        return distinct
