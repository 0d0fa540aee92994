"""Turning one column of text cells into numbers, one-hot blocks or class indices."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ._common import class_order, listing

# Cell texts that mean "no value" (compared lowercased). Missing values are an error: the GP
# has no notion of them, and silently dropping or imputing rows would change the data.
MISSING_TOKENS = frozenset({"", "na", "n/a", "#n/a", "nan", "null", "none", "?"})
# A column with more distinct text values than this is more likely an identifier or free text
# than a category; one-hot encoding it would add hundreds of useless features.
MAX_ONE_HOT_CATEGORIES = 100
# A classifier needs at least two classes to tell apart.
MIN_CLASSES = 2


@dataclass
class ParsedColumn:
    """The numeric block a column contributes (n, k), its names, notes and any problems."""

    values: np.ndarray
    names: list[str]
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _lines(lines: list[int], idx: np.ndarray) -> str:
    """Return "line 3" / "lines 3, 7 and 2 more" for the rows at idx."""
    return ("line " if len(idx) == 1 else "lines ") + listing(lines[i] for i in idx)


def _missing(cells: list[str]) -> np.ndarray:
    """Return the row indices whose cell means "no value"."""
    return np.flatnonzero([c.lower() in MISSING_TOKENS for c in cells])


def parse_column(name: str, cells: list[str], lines: list[int], one_hot: bool, role: str) -> ParsedColumn:
    """Return the column as float64 (n, 1), or one-hot (n, k) for text when `one_hot` is set."""
    n = len(cells)
    try:
        # Fast path: numpy parses a whole clean column at C speed (surrounding spaces included).
        values = np.array(cells, dtype=np.float64)
        if np.isfinite(values).all():
            return ParsedColumn(values.reshape(n, 1), [name])
    except ValueError:
        pass
    # Slow path, for columns with gaps, text or non-finite values: classify every cell.
    cells = [c.strip() for c in cells]
    values = np.full(n, np.nan)
    text_rows: list[int] = []
    for i, c in enumerate(cells):
        if c.lower() in MISSING_TOKENS:
            continue
        try:
            values[i] = float(c)
        except ValueError:
            text_rows.append(i)
    missing = _missing(cells)
    problems: list[str] = []
    if len(missing):
        problems.append(
            f"Column {name!r} has {len(missing)} empty or missing value(s) ({_lines(lines, missing)}). "
            "Fill them in or remove those rows; missing values are not supported."
        )
    if not text_rows:
        is_missing = np.zeros(n, dtype=bool)
        is_missing[missing] = True
        bad = np.flatnonzero(~np.isfinite(values) & ~is_missing)
        if len(bad):
            problems.append(
                f"Column {name!r} has NaN or infinite values at {_lines(lines, bad)}. "
                "Replace them with finite numbers or remove those rows."
            )
        return ParsedColumn(values.reshape(n, 1), [name], problems=problems)

    text = np.array(text_rows)
    examples = ", ".join(repr(c) for c in list(dict.fromkeys(cells[i] for i in text))[:3])
    n_numeric = n - len(text) - len(missing)
    if n_numeric >= len(text):
        # Mostly numbers with a few stray words: a typo, not a categorical column.
        problems.append(
            f"Column {name!r} is numeric but has non-numeric values at {_lines(lines, text)} "
            f"(e.g. {examples}). Correct those cells or remove the rows."
        )
        return ParsedColumn(values.reshape(n, 1), [name], problems=problems)
    if role == "target":
        problems.append(
            f"Target {name!r} holds text (e.g. {examples}), not numbers. Pass "
            "classification=True to use it as class labels."
        )
        return ParsedColumn(values.reshape(n, 1), [name], problems=problems)
    if not one_hot:
        problems.append(
            f"Feature column {name!r} is not numeric (e.g. {examples}). Pass one_hot=True "
            "(CLI: --one-hot) to encode each category as its own 0/1 column, or leave the "
            "column out with features=[...]."
        )
        return ParsedColumn(np.zeros((n, 1)), [name], problems=problems)
    return _one_hot(name, cells, problems)


def _one_hot(name: str, cells: list[str], problems: list[str]) -> ParsedColumn:
    """Return a 0/1 column per sorted category of a text column."""
    categories, codes = np.unique(np.array(cells, dtype=str), return_inverse=True)
    if len(categories) > MAX_ONE_HOT_CATEGORIES:
        problems.append(
            f"Column {name!r} has {len(categories)} distinct text values, too many to one-hot "
            f"encode (limit {MAX_ONE_HOT_CATEGORIES}); it looks like an identifier or free "
            "text. Leave it out with features=[...]."
        )
        return ParsedColumn(np.zeros((len(cells), 1)), [name], problems=problems)
    block = (codes.reshape(-1, 1) == np.arange(len(categories))).astype(np.float64)
    names = [f"{name}={c}" for c in categories]
    note = f"one-hot encoded {name!r} into {len(categories)} columns"
    return ParsedColumn(block, names, notes=[note], problems=problems)


def parse_labels(name: str, cells: list[str], lines: list[int]) -> tuple[np.ndarray, tuple[str, ...], list[str]]:
    """Return (int64 class indices, sorted class names, problems) for a label column."""
    cells = [c.strip() for c in cells]
    missing = _missing(cells)
    problems: list[str] = []
    if len(missing):
        problems.append(
            f"Target {name!r} has {len(missing)} empty or missing label(s) ({_lines(lines, missing)}). "
            "Give every row a label or remove those rows."
        )
    names = class_order(cells)
    if len(names) < MIN_CLASSES:
        problems.append(
            f"Target {name!r} has only one class ({names[0]!r}). Classification needs at least "
            "two classes; check the target column."
        )
    index = {c: i for i, c in enumerate(names)}
    y = np.array([index[c] for c in cells], dtype=np.int64)
    return y, tuple(names), problems
