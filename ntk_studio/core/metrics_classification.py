"""Classification metrics for predicted class probabilities: accuracy, NLL, Brier, ECE, reliability.

Inputs are `probs` (m, C), rows of class probabilities (softmax outputs, not logits), and integer
labels `y` (m,). The predicted class is the argmax (the first one on ties) and its probability is
the confidence. Non-finite probabilities (a diverged fine-tune, say) give NaN metrics instead of an
error, so a comparison still lists the method and shows that it failed.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from .errors import SettingsError, ShapeError

DEFAULT_BINS = 10
# Rows must sum to 1 up to float32 softmax round-off and probabilities stored with a few decimals;
# much larger gaps mean logits or unnormalised scores were passed.
PROB_SUM_TOL = 1e-3


def _prepare(probs: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Return (probs as float64, labels as int64, whether every probability is finite) after checks."""
    if probs.dim() != 2:
        raise ShapeError(f"Class probabilities must have shape (m, C); got {tuple(probs.shape)}.")
    if y.dim() != 1 or y.shape[0] != probs.shape[0]:
        raise ShapeError(
            f"Labels must have shape ({probs.shape[0]},) to match the probabilities; got {tuple(y.shape)}."
        )
    if probs.shape[0] == 0 or probs.shape[1] == 0:
        raise ShapeError("Metrics need at least one prediction and one class; got an empty tensor.")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ShapeError(f"Labels must be integer class indices (int64); got dtype {y.dtype}.")
    n_classes = probs.shape[1]
    if bool(((y < 0) | (y >= n_classes)).any()):
        raise ShapeError(f"Labels must lie in 0..{n_classes - 1} for {n_classes} classes.")
    p = probs.double()
    if not bool(torch.isfinite(p).all()):
        return p, y.long(), False
    # `not (gap <= tol)` rather than `gap > tol` so that nothing slips through as NaN.
    if bool((p < 0).any()) or not bool(((p.sum(dim=1) - 1).abs() <= PROB_SUM_TOL).all()):
        raise ShapeError("Each row of probs must be non-negative and sum to 1: apply softmax to logits first.")
    return p, y.long(), True


def accuracy(probs: torch.Tensor, y: torch.Tensor) -> float:
    """Return the fraction of points whose most probable class is the label."""
    p, y, finite = _prepare(probs, y)
    if not finite:
        return math.nan
    return float((p.argmax(dim=1) == y).double().mean())


def categorical_nll(probs: torch.Tensor, y: torch.Tensor) -> float:
    """Return the mean negative log probability of the true class."""
    p, y, finite = _prepare(probs, y)
    if not finite:
        return math.nan
    # A zero probability means "below what the input precision can hold": floor it at that
    # precision's smallest normal number (−log = 87.3 for float32, 708.4 for float64), not at 0 (+inf).
    floor = torch.finfo(probs.dtype if probs.is_floating_point() else torch.float64).tiny
    p_true = p.gather(1, y[:, None])[:, 0].clamp_min(floor)
    return float(-p_true.log().mean())


def brier(probs: torch.Tensor, y: torch.Tensor) -> float:
    """Return the mean over points of Σ_c (p_c − onehot_c)², between 0 (perfect) and 2."""
    p, y, finite = _prepare(probs, y)
    if not finite:
        return math.nan
    onehot = torch.nn.functional.one_hot(y, p.shape[1]).double()
    return float(((p - onehot) ** 2).sum(dim=1).mean())


class ReliabilityDiagram(NamedTuple):
    """Per confidence bin: edges, mean confidence, accuracy (NaN where a bin is empty) and count."""

    edges: np.ndarray  # (bins + 1,): bin b is (edges[b], edges[b+1]], the first one also holds 0
    confidence: np.ndarray  # (bins,) mean max-probability of the points in the bin
    accuracy: np.ndarray  # (bins,) fraction of those points predicted correctly
    count: np.ndarray  # (bins,) int64 number of points in the bin


def _check_bins(bins: int) -> None:
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise SettingsError(f"bins must be a positive integer; got {bins!r}.")


def reliability_diagram(probs: torch.Tensor, y: torch.Tensor, bins: int = DEFAULT_BINS) -> ReliabilityDiagram:
    """Return equal-width confidence bins with each bin's mean confidence, accuracy and count."""
    _check_bins(bins)
    p, y, finite = _prepare(probs, y)
    # k / bins is correctly rounded, so an edge equals the literal a user writes (0.7 is 7/10);
    # linspace's start + k·step can land one ulp off and move points sitting on an edge.
    edges = torch.arange(int(bins) + 1, dtype=torch.float64) / int(bins)
    if not finite:
        nan = np.full(int(bins), np.nan)
        return ReliabilityDiagram(edges.numpy(), nan, nan.copy(), np.zeros(int(bins), dtype=np.int64))
    conf, pred = p.max(dim=1)
    correct = (pred == y).double()
    # Right-closed bins (lo, hi], as in Guo et al. (2017): a confidence of exactly 0.5 falls in
    # (0.4, 0.5]. Bucketizing against the same edges we report keeps edges and counts consistent.
    index = torch.bucketize(conf, edges[1:-1], right=False)
    count = torch.bincount(index, minlength=int(bins))
    conf_sum = torch.bincount(index, weights=conf, minlength=int(bins))
    correct_sum = torch.bincount(index, weights=correct, minlength=int(bins))
    with np.errstate(invalid="ignore", divide="ignore"):  # empty bins are NaN by design
        mean_conf = conf_sum.numpy() / count.numpy()
        acc = correct_sum.numpy() / count.numpy()
    return ReliabilityDiagram(edges.numpy(), mean_conf, acc, count.numpy().astype(np.int64))


def expected_calibration_error(probs: torch.Tensor, y: torch.Tensor, bins: int = DEFAULT_BINS) -> float:
    """Return Σ_bins (count/m)·|accuracy − mean confidence| over equal-width confidence bins."""
    diagram = reliability_diagram(probs, y, bins)
    if np.isnan(diagram.confidence).all():  # non-finite input; real diagrams have ≥ 1 non-empty bin
        return math.nan
    filled = diagram.count > 0
    weights = diagram.count[filled] / diagram.count.sum()
    return float(np.sum(weights * np.abs(diagram.accuracy[filled] - diagram.confidence[filled])))


def classification_report(probs: torch.Tensor, y: torch.Tensor, bins: int = DEFAULT_BINS) -> dict[str, float]:
    """Return accuracy, NLL, Brier score and ECE in one dict."""
    return {
        "accuracy": accuracy(probs, y),
        "nll": categorical_nll(probs, y),
        "brier": brier(probs, y),
        "ece": expected_calibration_error(probs, y, bins),
    }
