"""Remaining-time estimate for the progress bar, from the fraction done and the time spent."""

from __future__ import annotations

import math

MIN_FRACTION = 0.02  # below this the rate is noise: no estimate
MIN_ELAPSED_S = 0.5


def eta_seconds(fraction: float, elapsed: float) -> float | None:
    """Return the seconds left at a constant rate, or None while there is too little to go on."""
    if not (MIN_FRACTION <= fraction < 1.0) or elapsed < MIN_ELAPSED_S or not math.isfinite(elapsed):
        return None
    return elapsed * (1.0 - fraction) / fraction


def format_eta(seconds: float | None) -> str:
    """Return '12 s', '3 min 5 s' or '' for no estimate."""
    if seconds is None:
        return ""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, rest = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"
