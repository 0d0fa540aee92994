"""Regression metrics for Gaussian predictive distributions (mean and variance per point): RMSE,
MAE, NLL, interval coverage, calibration. Classification metrics are in :mod:`.metrics_classification`.

Tensors in, floats (or NumPy arrays of floats) out. Regression inputs have shape (m,) or (m, K);
with K > 1 outputs every metric pools all m·K entries, as if they were m·K scalar predictions.
Non-finite predictions (a diverged fine-tune, say) give NaN metrics instead of an error, so a
comparison still lists the method and shows that it failed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from .errors import SettingsError, ShapeError

# The deciles-and-halves grid used for quantile calibration: 0.05, 0.10, ..., 0.95.
DEFAULT_CALIBRATION_LEVELS = np.linspace(0.05, 0.95, 19)
# The central-interval levels a regression report scores.
REPORT_COVERAGE_LEVELS = (0.5, 0.9, 0.95)


def _check(mean: torch.Tensor, y: torch.Tensor) -> None:
    if mean.shape != y.shape:
        raise ShapeError(f"Predictions {tuple(mean.shape)} and targets {tuple(y.shape)} differ in shape.")


def _check_var(mean: torch.Tensor, var: torch.Tensor, y: torch.Tensor) -> None:
    _check(mean, y)
    if var.shape != mean.shape:
        raise ShapeError(f"Variances {tuple(var.shape)} and means {tuple(mean.shape)} differ in shape.")
    if mean.numel() == 0:
        raise ShapeError("Metrics need at least one prediction; got an empty tensor.")


def _finite(mean: torch.Tensor, var: torch.Tensor, y: torch.Tensor) -> bool:
    # An infinite variance is a (useless) valid prediction; NaN anywhere or an infinite mean/target is not.
    return bool(torch.isfinite(mean).all() and torch.isfinite(y).all() and not var.isnan().any())


def rmse(mean: torch.Tensor, y: torch.Tensor) -> float:
    """Return the root mean squared error."""
    _check(mean, y)
    return float(((mean - y) ** 2).mean().sqrt())


def mae(mean: torch.Tensor, y: torch.Tensor) -> float:
    """Return the mean absolute error."""
    _check(mean, y)
    return float((mean.double() - y.double()).abs().mean())


def gaussian_nll(mean: torch.Tensor, var: torch.Tensor, y: torch.Tensor) -> float:
    """Return the mean negative log density of y under N(mean, var), per point."""
    _check(mean, y)
    var = var.clamp_min(1e-300)
    return float((0.5 * (math.log(2 * math.pi) + var.log() + (y - mean) ** 2 / var)).mean())


def interval_coverage(mean: torch.Tensor, var: torch.Tensor, y: torch.Tensor, level: float = 0.95) -> float:
    """Return the fraction of y inside the central `level` Gaussian interval."""
    _check(mean, y)
    z = math.sqrt(2.0) * torch.special.erfinv(torch.tensor(level, dtype=torch.float64)).item()
    return float(((y - mean).abs() <= z * var.clamp_min(0).sqrt()).double().mean())


class CalibrationCurve(NamedTuple):
    """Quantile calibration: at each level p, the fraction of targets below the predictive p-quantile."""

    expected: np.ndarray  # the levels p, (L,)
    observed: np.ndarray  # fraction of y ≤ mean + σ·Φ⁻¹(p), (L,); equals p for a calibrated predictor
    error: float  # mean |observed − expected| over the levels


def _levels(levels: Sequence[float] | np.ndarray | torch.Tensor) -> np.ndarray:
    p = np.asarray(levels.tolist() if isinstance(levels, torch.Tensor) else levels, dtype=np.float64).reshape(-1)
    if p.size == 0 or not np.all((p > 0) & (p < 1)):
        raise SettingsError("Calibration levels must be a non-empty list of probabilities strictly between 0 and 1.")
    return p


def calibration_curve(
    mean: torch.Tensor,
    var: torch.Tensor,
    y: torch.Tensor,
    levels: Sequence[float] | np.ndarray | torch.Tensor = DEFAULT_CALIBRATION_LEVELS,
) -> CalibrationCurve:
    """Return (expected levels, observed fraction of y below each Gaussian predictive quantile, mean |gap|)."""
    _check_var(mean, var, y)
    p = _levels(levels)
    if not _finite(mean, var, y):
        nan = np.full_like(p, np.nan)
        return CalibrationCurve(p, nan, math.nan)
    mean, y = mean.double().reshape(-1), y.double().reshape(-1)
    sd = var.double().reshape(-1).clamp_min(0).sqrt()
    z = torch.special.ndtri(torch.from_numpy(p))
    # One level at a time keeps memory at O(m) for large test sets. A zero variance is a point
    # prediction: its every quantile is the mean. y on the quantile counts as below (≤). The median
    # is the mean even for an infinite σ, where σ·0 would be NaN.
    quantiles = (mean + sd * zi if zi != 0 else mean for zi in z.tolist())
    observed = np.array([float((y <= q).double().mean()) for q in quantiles])
    return CalibrationCurve(p, observed, float(np.abs(observed - p).mean()))


def regression_report(mean: torch.Tensor, var: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Return RMSE, MAE, NLL, 50/90/95% coverage and the quantile calibration error in one dict."""
    report = {
        "rmse": rmse(mean, y),
        "mae": mae(mean, y),
        "nll": gaussian_nll(mean, var, y),
    }
    # A NaN prediction is neither inside nor outside an interval: report NaN, not a low coverage.
    finite = _finite(mean, var, y)
    for level in REPORT_COVERAGE_LEVELS:
        cov = interval_coverage(mean, var, y, level) if finite else math.nan
        report[f"coverage{round(100 * level)}"] = cov
    report["calibration_error"] = calibration_curve(mean, var, y).error
    return report


__all__ = [
    "DEFAULT_CALIBRATION_LEVELS",
    "REPORT_COVERAGE_LEVELS",
    "CalibrationCurve",
    "calibration_curve",
    "gaussian_nll",
    "interval_coverage",
    "mae",
    "regression_report",
    "rmse",
]
