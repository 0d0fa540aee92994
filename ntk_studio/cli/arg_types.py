"""argparse ``type=`` validators: every option is checked by name before any work starts.

argparse turns the ``ArgumentTypeError`` these raise into ``error: argument --noise: ...`` and exit
code 2, with no traceback; the message says what value would be accepted.
"""

from __future__ import annotations

import argparse
import math
import os

MAX_THREADS_FACTOR = 1  # threads beyond the machine's cores only thrash (and 100,000 crash libgomp)
MAX_INPUT_ELEMENTS = 16_777_216  # one sample of --input-shape (3 x 2365 x 2365): more is a typo, not an input
MAX_SHAPE_DIMS = 8


def _number(text: str, kind=float):
    try:
        value = kind(text)
    except (TypeError, ValueError):
        name = "a number" if kind is float else "a whole number"
        raise argparse.ArgumentTypeError(f"{text!r} is not {name}") from None
    return value


def positive_float(text: str) -> float:
    """Return ``text`` as a finite float > 0 (prior variance, noise, learning rate)."""
    value = _number(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number greater than 0, got {text!r}")
    return value


def nonnegative_float(text: str) -> float:
    """Return ``text`` as a finite float >= 0."""
    value = _number(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of at least 0, got {text!r}")
    return value


def bounded_int(low: int, high: int | None = None):
    """Return a validator for whole numbers in ``[low, high]`` (``high`` None: no upper bound)."""

    def check(text: str) -> int:
        value = _number(text, int)
        if value < low or (high is not None and value > high):
            upper = f" and at most {high:,}" if high is not None else ""
            raise argparse.ArgumentTypeError(f"must be a whole number of at least {low}{upper}, got {text!r}")
        return value

    check.__name__ = f"int[{low},{high if high is not None else 'inf'}]"
    return check


positive_int = bounded_int(1)
nonnegative_int = bounded_int(0)


def max_threads() -> int:
    """Return the most intra-op threads worth asking for on this machine (its usable cores)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, cores * MAX_THREADS_FACTOR)


def thread_count(text: str) -> int:
    """Return ``text`` as a thread count from 1 to the machine's cores."""
    value = _number(text, int)
    limit = max_threads()
    if not 1 <= value <= limit:
        raise argparse.ArgumentTypeError(f"must be from 1 to {limit} (this machine's cores), got {text!r}")
    return value


def input_shape(text: str) -> tuple[int, ...]:
    """Return one sample's shape from '8' or '3,32,32' (or 3x32x32); every size >= 1, not absurdly large."""
    parts = [s for s in text.replace("x", ",").split(",") if s.strip()]
    try:
        shape = tuple(int(s) for s in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be whole numbers like 8 or 3,32,32, got {text!r}") from None
    if not shape or len(shape) > MAX_SHAPE_DIMS or any(d < 1 for d in shape):
        raise argparse.ArgumentTypeError(
            f"must be 1 to {MAX_SHAPE_DIMS} sizes of at least 1, like 8 or 3,32,32; got {text!r}")
    if math.prod(shape) > MAX_INPUT_ELEMENTS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is {math.prod(shape):,} numbers per sample, over the {MAX_INPUT_ELEMENTS:,} limit")
    return shape
