"""User-facing options of the predictors as string enums, validated when a predictor is built.

Every value is a `StrEnum`, so plain strings keep working (`space="function"` equals
`Space.FUNCTION`) and a wrong one fails at construction with a :class:`SettingsError` that names
the allowed values, not later inside a fit with an unrelated error type.
"""

from __future__ import annotations

import math
import numbers
from enum import StrEnum
from typing import TypeVar

import torch

from .errors import SettingsError


class Space(StrEnum):
    """Where the linear system is solved: n·K × n·K (function) or P × P (weight); auto picks the smaller."""

    AUTO = "auto"
    FUNCTION = "function"
    WEIGHT = "weight"


class Solver(StrEnum):
    """How it is solved: dense Cholesky, matrix-free CG, or auto from the memory budget."""

    AUTO = "auto"
    CHOLESKY = "cholesky"
    CG = "cg"


class Outputs(StrEnum):
    """Multi-output regression: one GP over all outputs (full) or one kernel block per output (independent)."""

    FULL = "full"
    INDEPENDENT = "independent"


class ProbaMethod(StrEnum):
    """Classifier predictive: per-class probit, pairwise probit, Monte Carlo, or auto (by class count)."""

    AUTO = "auto"
    PROBIT = "probit"
    PAIRWISE = "pairwise"
    MC = "mc"


class TrajectoryMode(StrEnum):
    """Gradient-descent trajectory: whole steps of size η (discrete) or continuous time ηt (flow)."""

    DISCRETE = "discrete"
    FLOW = "flow"


E = TypeVar("E", bound=StrEnum)


def choice(enum: type[E], value: object, name: str) -> E:
    """Return `value` as a member of `enum`; raise SettingsError naming the allowed values."""
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in enum)
        raise SettingsError(f"{name} must be one of {allowed}; got {value!r}.") from None


def positive(value: object, name: str) -> float:
    """Return `value` as a float if it is finite and > 0; raise SettingsError naming the bad value."""
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise SettingsError(f"{name} must be a finite positive number; got {value!r}.") from None
    if not (math.isfinite(x) and x > 0):
        raise SettingsError(f"{name} must be a finite positive number; got {value!r}.")
    return x


def count(value: object, name: str, minimum: int = 1) -> int:
    """Return `value` as an int ≥ minimum; raise SettingsError naming the bad value."""
    whole = isinstance(value, numbers.Integral) or (isinstance(value, numbers.Real) and float(value).is_integer())
    if isinstance(value, bool) or not whole or int(value) < minimum:
        raise SettingsError(f"{name} must be an integer ≥ {minimum}; got {value!r}.")
    return int(value)


def float_dtype(dtype: object) -> torch.dtype:
    """Return `dtype` if it is a torch floating dtype; raise SettingsError otherwise."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise SettingsError(f"dtype must be a torch floating dtype (torch.float64 recommended); got {dtype!r}.")
    return dtype


def device(value: object) -> torch.device | None:
    """Return `value` as a torch.device that this machine has, or None (follow the data); else SettingsError."""
    if value is None:
        return None
    try:
        dev = torch.device(value)  # type: ignore[arg-type]
    except (RuntimeError, TypeError):
        raise SettingsError(
            f"device must be None, 'cpu', 'cuda', 'cuda:N' or 'mps'; got {value!r}."
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SettingsError(f"device {value!r} is not available: this torch build or machine has no CUDA; use 'cpu'.")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise SettingsError(f"device {value!r} does not exist: {torch.cuda.device_count()} CUDA device(s) visible.")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise SettingsError(f"device {value!r} is not available on this machine; use 'cpu'.")
    return dev
