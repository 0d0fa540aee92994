"""Delimited text tables (CSV, TSV, TXT) with a header row, loaded into a Dataset."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import DataLoadError
from ._columns import ParsedColumn, parse_column, parse_labels
from ._common import MIN_ROWS, listing, missing_name_error
from ._stream import SNIFF_CANDIDATES, SUPPORTED_EXTENSIONS, TableScan, scan_table
from .dataset import Dataset

ROW_HINT = "lines are counted from 1, with the header on line 1"


def load_table(
    path: str | Path,
    target: str | Sequence[str],
    features: Sequence[str] | None = None,
    one_hot: bool = False,
    delimiter: str | None = None,
    group_column: str | None = None,
    classification: bool = False,
    expected_sha256: str | None = None,
) -> Dataset:
    """Return the table at `path` as a Dataset: float64 X (n, d) and y (n,) or (n, K).

    A single target name gives y of shape (n,); a list of names gives (n, K). With
    `classification`, the one target becomes int64 class indices and `class_names` is set.
    With `expected_sha256`, the bytes read must hash to it (DataLoadError naming the file otherwise).
    """
    p = Path(path)
    if classification and not isinstance(target, str) and len(_names(target, "target")) != 1:
        targets = _names(target, "target")
        raise DataLoadError(
            f"classification=True needs exactly one target column, got {len(targets)}: "
            f"{listing(repr(t) for t in targets)}. Pick the column that holds the class labels."
        )

    def plan(header: list[str], delim: str) -> tuple[list[str], list[str]]:
        targets, feats = _resolve_columns(header, target, features, group_column, p.name, delim)
        text = ([targets[0]] if classification else []) + ([group_column] if group_column is not None else [])
        return [*targets, *feats], text

    table = scan_table(p, delimiter, plan, MIN_ROWS, expected_sha256)
    targets, feats = _resolve_columns(table.header, target, features, group_column, p.name, table.delimiter)
    notes, lines = table.notes, table.lines
    cells = _ColumnCells(table)
    problems: list[str] = []
    blocks, names = [], []
    for name in feats:
        parsed = cells.parse(name, one_hot=one_hot, role="feature")
        problems += parsed.problems
        blocks.append(parsed.values)
        names += parsed.names
        notes += parsed.notes
    class_names = None
    if classification:
        y, class_names, target_problems = parse_labels(targets[0], table.text[targets[0]], lines)
        problems += target_problems
    else:
        ys = []
        for name in targets:
            parsed = cells.parse(name, one_hot=False, role="target")
            problems += parsed.problems
            ys.append(parsed.values[:, 0])
        y = ys[0] if isinstance(target, str) else np.column_stack(ys)
    if problems:
        hint = f" ({ROW_HINT})" if any("line" in m for m in problems) else ""
        raise DataLoadError(f"{p.name!r}: " + " ".join(problems) + hint)

    X = np.column_stack(blocks).astype(np.float64, copy=False)
    groups = None
    if group_column is not None:
        groups = np.array([c.strip() for c in table.text[group_column]], dtype=str)
    return Dataset(
        X=torch.from_numpy(np.ascontiguousarray(X)),
        y=torch.from_numpy(np.ascontiguousarray(y)),
        feature_names=tuple(names),
        target_name=",".join(targets),
        class_names=class_names,
        groups=groups,
        source=str(p),
        sha256=table.sha256,
        notes=tuple(notes),
    )


def _names(value: str | Sequence[str] | None, what: str) -> list[str]:
    """Return a list of column names from a name or a sequence of names, checking types."""
    if value is None:
        return []
    names = [value] if isinstance(value, str) else list(value) if isinstance(value, Sequence) else [value]
    if not all(isinstance(n, str) for n in names):
        raise DataLoadError(f"{what} must be column names (strings), got {value!r}.")
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise DataLoadError(f"{what} lists {listing(repr(d) for d in duplicated)} twice. Name each column once.")
    return names


def _resolve_columns(
    header: list[str], target, features, group_column, name: str, delim: str
) -> tuple[list[str], list[str]]:
    """Return (target columns, feature columns), checked against the header."""
    targets = _names(target, "target")
    if not targets:
        raise DataLoadError("No target column given. Name the column to predict, e.g. target='price'.")
    where = f"the header of {name!r}"
    for t in targets:
        if t not in header:
            err = missing_name_error("Target column", t, header, where)
            raise DataLoadError(str(err) + _header_hint(header, delim)) from None
    if group_column is not None:
        if not isinstance(group_column, str) or group_column not in header:
            raise missing_name_error("Group column", str(group_column), header, where)
        if group_column in targets:
            raise DataLoadError(f"{group_column!r} cannot be both the target and the group column.")
    if features is None:
        feats = [h for h in header if h not in targets and h != group_column]
    else:
        feats = _names(features, "features")
        for f in feats:
            if f not in header:
                raise missing_name_error("Feature column", f, header, where)
        both = [f for f in feats if f in targets]
        if both:
            raise DataLoadError(
                f"{listing(repr(b) for b in both)} is both a feature and the target; a model "
                "would see the answer. Remove it from features."
            )
    if not feats:
        raise DataLoadError(
            f"{name!r} has no feature columns left besides the target"
            + (" and group column" if group_column else "")
            + ". The table needs at least one input column."
        )
    return targets, feats


def _header_hint(header: list[str], delim: str) -> str:
    """Return a hint when the header suggests a wrong delimiter or a missing header row."""
    if len(header) == 1:
        others = [c for c in SNIFF_CANDIDATES if c != delim and c in header[0]]
        if others:
            return (f" The file was split on {delim!r} into one column; pass "
                    f"delimiter={others[0]!r} if that is its delimiter.")
    try:
        [float(h) for h in header]
    except ValueError:
        return ""
    return (" The first row holds numbers, not column names: the file needs a header row "
            "naming the columns.")


class _ColumnCells:
    """Parses a scanned column: clean numbers as they are, other columns through parse_column."""

    def __init__(self, table: TableScan) -> None:
        self.table = table

    def parse(self, name: str, one_hot: bool, role: str):
        numbers = self.table.numbers.get(name)
        if numbers is not None:
            return ParsedColumn(numbers.reshape(-1, 1), [name])
        return parse_column(name, self.table.text[name], self.table.lines, one_hot=one_hot, role=role)


def load_feature_columns(path: str | Path, features: Sequence[str], delimiter: str | None = None) -> np.ndarray:
    """Return the named numeric columns of a table as float64 (n, d), in the order given (no target needed)."""
    p = Path(path)
    names = _names(list(features), "features")

    def plan(header: list[str], delim: str) -> tuple[list[str], list[str]]:
        for name in names:
            if name not in header:
                raise missing_name_error("Feature column", name, header, f"the header of {p.name!r}")
        return names, []

    # Predictions need one row, not the two that fitting needs.
    table = scan_table(p, delimiter, plan, 1)
    cells = _ColumnCells(table)
    problems: list[str] = []
    blocks = []
    for name in names:
        parsed = cells.parse(name, one_hot=False, role="feature")
        problems += parsed.problems
        blocks.append(parsed.values)
    if problems:
        raise DataLoadError(f"{p.name!r}: " + " ".join(problems) + f" ({ROW_HINT})")
    return np.column_stack(blocks).astype(np.float64, copy=False)
