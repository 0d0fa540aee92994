"""Delimited text tables (CSV, TSV, TXT) with a header row, loaded into a Dataset."""

from __future__ import annotations

import codecs
import csv
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import DataLoadError
from ._columns import parse_column, parse_labels
from ._common import MIN_ROWS, listing, missing_name_error, read_file
from .dataset import Dataset

SUPPORTED_EXTENSIONS = (".csv", ".tsv", ".txt")
# Delimiters the sniffer may choose from; anything else in a header is more likely data.
SNIFF_CANDIDATES = ",\t;| "
# The sniffer only needs a sample; the whole file would make its regexes slow.
SNIFF_CHARS = 64 * 1024
ROW_HINT = "lines are counted from 1, with the header on line 1"


def load_table(
    path: str | Path,
    target: str | Sequence[str],
    features: Sequence[str] | None = None,
    one_hot: bool = False,
    delimiter: str | None = None,
    group_column: str | None = None,
    classification: bool = False,
) -> Dataset:
    """Return the table at `path` as a Dataset: float64 X (n, d) and y (n,) or (n, K).

    A single target name gives y of shape (n,); a list of names gives (n, K). With
    `classification`, the one target becomes int64 class indices and `class_names` is set.
    """
    p, data, digest = read_file(path, SUPPORTED_EXTENSIONS, "table (CSV/TSV)")
    text = _decode(data, p.name)
    delim = _pick_delimiter(text, p.suffix.lower(), delimiter)
    header, rows, lines, notes = _read_rows(text, delim, p.name)
    targets, feats = _resolve_columns(header, target, features, group_column, p.name, delim)
    if classification and len(targets) != 1:
        raise DataLoadError(
            f"classification=True needs exactly one target column, got {len(targets)}: "
            f"{listing(repr(t) for t in targets)}. Pick the column that holds the class labels."
        )

    column = {name: i for i, name in enumerate(header)}
    cells = {name: [r[column[name]] for r in rows] for name in (*targets, *feats)}
    problems: list[str] = []
    blocks, names = [], []
    for name in feats:
        parsed = parse_column(name, cells[name], lines, one_hot=one_hot, role="feature")
        problems += parsed.problems
        blocks.append(parsed.values)
        names += parsed.names
        notes += parsed.notes
    class_names = None
    if classification:
        y, class_names, target_problems = parse_labels(targets[0], cells[targets[0]], lines)
        problems += target_problems
    else:
        ys = []
        for name in targets:
            parsed = parse_column(name, cells[name], lines, one_hot=False, role="target")
            problems += parsed.problems
            ys.append(parsed.values[:, 0])
        y = ys[0] if isinstance(target, str) else np.column_stack(ys)
    if problems:
        hint = f" ({ROW_HINT})" if any("line" in m for m in problems) else ""
        raise DataLoadError(f"{p.name!r}: " + " ".join(problems) + hint)

    X = np.column_stack(blocks).astype(np.float64, copy=False)
    groups = None
    if group_column is not None:
        groups = np.array([r[column[group_column]].strip() for r in rows], dtype=str)
    return Dataset(
        X=torch.from_numpy(np.ascontiguousarray(X)),
        y=torch.from_numpy(np.ascontiguousarray(y)),
        feature_names=tuple(names),
        target_name=",".join(targets),
        class_names=class_names,
        groups=groups,
        source=str(p),
        sha256=digest,
        notes=tuple(notes),
    )


def _decode(data: bytes, name: str) -> str:
    """Return the file's text; UTF-8 (with or without BOM), or UTF-16 when it has a BOM."""
    # Excel's "Unicode text" export is UTF-16 with a BOM; it is text, not binary garbage.
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise DataLoadError(f"{name!r} starts like UTF-16 text but is not valid UTF-16. "
                                "Re-save it as 'CSV UTF-8'.") from exc
    if b"\x00" in data:
        raise DataLoadError(
            f"{name!r} contains NUL bytes, so it is a binary file, not delimited text. "
            "Export the data as CSV (UTF-8), or save arrays as .npz/.npy."
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataLoadError(
            f"{name!r} is not UTF-8 text (undecodable byte at offset {exc.start}). If it came "
            "from a spreadsheet, save it as 'CSV UTF-8'; if it is binary data, use .npz/.npy."
        ) from exc


def _pick_delimiter(text: str, suffix: str, delimiter: str | None) -> str:
    """Return the delimiter: the one given, tab for .tsv, else a comma or the sniffed one."""
    if delimiter is not None:
        if not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in "\"\r\n":
            raise DataLoadError(
                f"delimiter must be a single character such as ',' or '\\t', got {delimiter!r}."
            )
        return delimiter
    if suffix == ".tsv":
        return "\t"
    header = next((line for line in text[:SNIFF_CHARS].splitlines() if line.strip()), "")
    if suffix == ".csv" and "," in header:
        return ","
    try:
        sniffed = csv.Sniffer().sniff(text[:SNIFF_CHARS], delimiters=SNIFF_CANDIDATES).delimiter
    except csv.Error:
        sniffed = ""
    if sniffed and sniffed in SNIFF_CANDIDATES:
        return sniffed
    # The sniffer gives up on one-column or irregular files; fall back to what the header shows.
    return next((c for c in SNIFF_CANDIDATES if c in header), ",")


def _read_rows(
    text: str, delim: str, name: str, min_rows: int = MIN_ROWS
) -> tuple[list[str], list[list[str]], list[int], list[str]]:
    """Return (header, data rows, file line of each row, notes); the header is stripped, rows are checked."""
    # Space-delimited files (numpy.savetxt) often align columns with runs of spaces.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delim, skipinitialspace=delim == " ")
    rows: list[list[str]] = []
    lines: list[int] = []
    blank = 0
    try:
        for row in reader:
            # Cells stay unstripped here (stripping millions of numbers is slow); the column
            # parsers strip whatever they do not parse directly.
            if not any(c.strip() for c in row):
                blank += 1
                continue
            rows.append(row)
            lines.append(reader.line_num)
    except csv.Error as exc:
        raise DataLoadError(
            f"{name!r} could not be parsed as delimited text near line {reader.line_num}: {exc}. "
            "Check for unbalanced quotes, or that this really is a CSV/TSV file."
        ) from exc
    if not rows:
        raise DataLoadError(f"{name!r} has no rows. Choose a file with a header row and data.")
    header, body, lines = [h.strip() for h in rows[0]], rows[1:], lines[1:]
    notes = [f"delimiter {delim!r}"]
    if blank:
        notes.append(f"skipped {blank} blank line(s)")
    # A trailing delimiter on every line (some exporters do this) adds an empty last column.
    if len(header) > 1 and header[-1] == "" and all(len(r) == len(header) and not r[-1].strip() for r in body):
        header = header[:-1]
        body = [r[:-1] for r in body]
        notes.append("dropped an empty trailing column")
    unnamed = [i + 1 for i, h in enumerate(header) if not h]
    if unnamed:
        raise DataLoadError(
            f"{name!r}: column(s) {listing(unnamed)} have no name in the header row. Give every "
            "column a name (a pandas index saved with index=True looks like this; save with "
            "index=False or name the column)."
        )
    duplicated = sorted({h for h in header if header.count(h) > 1})
    if duplicated:
        raise DataLoadError(
            f"{name!r}: the header names {listing(repr(d) for d in duplicated)} more than once. "
            "Rename the columns so that every name is unique."
        )
    ragged = [(ln, len(r)) for ln, r in zip(lines, body) if len(r) != len(header)]
    if ragged:
        shown = listing(f"line {ln} has {k}" for ln, k in ragged)
        raise DataLoadError(
            f"{name!r}: the header has {len(header)} fields (delimiter {delim!r}) but {shown}. "
            "Fix those rows, or pass the right delimiter."
        )
    if len(body) < min_rows:
        what = "a header but no data rows" if not body else "only one data row"
        raise DataLoadError(
            f"{name!r} has {what}; at least {min_rows} row{'s are' if min_rows > 1 else ' is'} needed. "
            "Add data below the header."
        )
    notes.insert(0, f"read {len(body)} rows x {len(header)} columns")
    return header, body, lines, notes


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


def load_feature_columns(path: str | Path, features: Sequence[str], delimiter: str | None = None) -> np.ndarray:
    """Return the named numeric columns of a table as float64 (n, d), in the order given (no target needed)."""
    p, data, _ = read_file(path, SUPPORTED_EXTENSIONS, "table (CSV/TSV)")
    text = _decode(data, p.name)
    # Predictions need one row, not the two that fitting needs.
    header, rows, lines, _ = _read_rows(text, _pick_delimiter(text, p.suffix.lower(), delimiter), p.name, 1)
    names = _names(list(features), "features")
    column = {name: i for i, name in enumerate(header)}
    for name in names:
        if name not in column:
            raise missing_name_error("Feature column", name, header, f"the header of {p.name!r}")
    problems: list[str] = []
    blocks = []
    for name in names:
        parsed = parse_column(name, [r[column[name]] for r in rows], lines, one_hot=False, role="feature")
        problems += parsed.problems
        blocks.append(parsed.values)
    if problems:
        raise DataLoadError(f"{p.name!r}: " + " ".join(problems) + f" ({ROW_HINT})")
    return np.column_stack(blocks).astype(np.float64, copy=False)
