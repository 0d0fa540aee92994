"""Calibration: quantile calibration for regression, the reliability diagram for classification."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt

from .style import (BACKGROUND, FINETUNED_COLOR, FOREGROUND, GP_COLOR, PRETRAINED_COLOR, SMALL_POINT, curve_data,
                    legend, pen, style)

LEGEND_OFFSET = (10, 10)  # top-left: calibrated curves run along the diagonal
AXIS_MARGIN = 0.02
SERIES = (("gp", GP_COLOR, "o"), ("finetuned", FINETUNED_COLOR, "s"), ("unadapted", PRETRAINED_COLOR, "t"))
REGRESSION_NAMES = {"gp": "linearized GP", "finetuned": "fine-tuned (residual σ)", "unadapted": "unadapted (residual σ)"}
CLASSIFICATION_NAMES = {"gp": "linearized classifier", "finetuned": "fine-tuned", "unadapted": "pretrained (unadapted)"}


class CalibrationPlot(pg.PlotWidget):
    """Observed against expected frequency for each method, with the diagonal of perfect calibration."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent, background=BACKGROUND)
        self.legend = legend(self, LEGEND_OFFSET)
        self.setRange(xRange=(0, 1), yRange=(0, 1), padding=AXIS_MARGIN)
        self.diagonal = self.plot([0, 1], [0, 1], pen=pen(FOREGROUND, 1, style=Qt.PenStyle.DashLine),
                                  name="perfectly calibrated")
        self.series = {key: self.plot([], [], pen=pen(color), symbol=symbol, symbolSize=SMALL_POINT, symbolBrush=color,
                                      symbolPen=None) for key, color, symbol in SERIES}
        self._named: set[str] = set()
        self.set_task("regression")

    def set_task(self, task: str) -> None:
        """Label the axes for 'regression' (quantile levels) or 'classification' (confidence bins)."""
        if task != getattr(self, "task", None) and self._named:  # legend names belong to the task
            for key in self._named:
                self.legend.removeItem(self.series[key])
            self._named.clear()
        self.task = task
        if task == "classification":
            style(self, "Reliability (held-out examples)", "confidence (mean max-probability per bin)",
                  "accuracy in the bin")
        else:
            style(self, "Calibration (held-out rows)", "expected fraction below the predictive quantile",
                  "observed fraction")

    def set_series(self, key: str, expected: np.ndarray, observed: np.ndarray) -> None:
        """Show one method's curve; empty (NaN) bins are left out."""
        expected, observed = np.asarray(expected, float), np.asarray(observed, float)
        keep = np.isfinite(expected) & np.isfinite(observed)
        self.series[key].setData(expected[keep], observed[keep])
        if key not in self._named:
            names = CLASSIFICATION_NAMES if self.task == "classification" else REGRESSION_NAMES
            self.legend.addItem(self.series[key], names[key])
            self._named.add(key)

    def clear_data(self) -> None:
        """Empty every method's curve."""
        for item in self.series.values():
            item.setData([], [])

    def curve_data(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """Return (expected, observed) shown for one method."""
        return curve_data(self.series[key])
