"""Regression metrics for predictive distributions (Gaussian mean and variance per point)."""

from __future__ import annotations

import math

import torch

from .errors import ShapeError


def _check(mean: torch.Tensor, y: torch.Tensor) -> None:
    if mean.shape != y.shape:
        raise ShapeError(f"Predictions {tuple(mean.shape)} and targets {tuple(y.shape)} differ in shape.")


def rmse(mean: torch.Tensor, y: torch.Tensor) -> float:
    """Return the root mean squared error."""
    _check(mean, y)
    return float(((mean - y) ** 2).mean().sqrt())


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


def regression_report(mean: torch.Tensor, var: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Return RMSE, NLL and 95% coverage in one dict."""
    return {
        "rmse": rmse(mean, y),
        "nll": gaussian_nll(mean, var, y),
        "coverage95": interval_coverage(mean, var, y, 0.95),
    }
