"""One way to write a number for people: 3-4 significant digits, scientific when small or large, units.

Used by the log, the spin boxes, the tables and the plots' notes, so the same value reads the same
everywhere. Full precision stays in the data (CSV copies, exports, projects).
"""

from __future__ import annotations

import math

SIGNIFICANT = 4
SMALL, LARGE = 1e-3, 1e5  # outside [SMALL, LARGE) a number is written in scientific notation
EMPTY = "—"


def fmt(value: object, unit: str = "", digits: int = SIGNIFICANT) -> str:
    """Return ``value`` with ``digits`` significant digits ('0.1330', '3e-03', '1.2e+06'), plus ``unit``.

    None and non-finite values read as an em dash; integers print whole, with thousands separators.
    """
    if isinstance(value, bool) or value is None:
        return EMPTY
    if isinstance(value, int):
        text = f"{value:,}"
    else:
        try:
            x = float(value)
        except (TypeError, ValueError):
            return EMPTY
        if not math.isfinite(x):
            return EMPTY
        if x == 0:
            text = "0"
        elif SMALL <= abs(x) < LARGE:
            text = f"{x:.{digits}g}"
        else:
            mantissa, exponent = f"{x:.{max(digits - 1, 0)}e}".split("e")
            mantissa = mantissa.rstrip("0").rstrip(".") if "." in mantissa else mantissa
            text = f"{mantissa}e{int(exponent):+03d}"
    return f"{text} {unit}" if unit else text


def fmt_seconds(seconds: object) -> str:
    """Return a duration: '404 µs', '12.3 ms', '4.56 s', '3 min 5 s'."""
    try:
        s = float(seconds)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return EMPTY
    if not math.isfinite(s) or s < 0:
        return EMPTY
    if s < 1e-3:
        return f"{s * 1e6:.3g} µs"
    if s < 1:
        return f"{s * 1e3:.3g} ms"
    if s < 60:
        return f"{s:.3g} s"
    minutes, rest = divmod(int(round(s)), 60)
    return f"{minutes} min {rest} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def fmt_bytes(n: object) -> str:
    """Return a size in KiB/MiB/GiB with 3 significant digits."""
    try:
        size = float(n)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return EMPTY
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.3g} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return EMPTY  # pragma: no cover - the loop always returns
