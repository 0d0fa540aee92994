"""Predicted vs true on the held-out rows (inputs with more than one feature), with ±2σ error bars."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt

from .style import (BACKGROUND, FINETUNED_COLOR, FOREGROUND, GP_COLOR, PRETRAINED_COLOR, SMALL_POINT,
                    RangeHold, TRAJECTORY_COLOR, curve_data, legend, pen, style)

ERROR_BAR_SIGMAS = 2.0  # bars span mean ± 2σ of the predictive distribution (≈ 95%)
BAR_ALPHA = 110
LEGEND_OFFSET = (10, 10)  # top-left: points lie along the diagonal, leaving that corner empty


class PredTruePlot(RangeHold, pg.PlotWidget):
    """GP mean ± 2σ against the true target; fine-tuned, unadapted and GD-step points; the y = x line."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent, background=BACKGROUND)
        style(self, "Predicted vs true (held-out rows)", "true y", "predicted y")
        self.legend = legend(self, LEGEND_OFFSET)
        self.diagonal = self.plot([], [], pen=pen(FOREGROUND, 1, style=Qt.PenStyle.DashLine), name="ideal (y = x)")
        self.bars = pg.ErrorBarItem(x=np.zeros(0), y=np.zeros(0), height=np.zeros(0),
                                    pen=pg.mkPen(GP_COLOR + (BAR_ALPHA,), width=1), beam=0.0)
        self.addItem(self.bars)
        self.points: dict[str, pg.PlotDataItem] = {}
        for key, color, name, symbol in (("unadapted", PRETRAINED_COLOR, "pretrained (unadapted)", "t"),
                                         ("finetuned", FINETUNED_COLOR, "fine-tuned", "s"),
                                         ("trajectory", TRAJECTORY_COLOR, "linearized GD at step t", "d"),
                                         ("gp", GP_COLOR, "linearized GP mean ± 2σ", "o")):
            self.points[key] = self.plot([], [], pen=None, symbol=symbol, symbolSize=SMALL_POINT, symbolBrush=color,
                                         symbolPen=None, name=name)

    def set_labels(self, target: str) -> None:
        """Name the axes after the target column."""
        self.setLabel("bottom", f"true {target}", color=FOREGROUND)
        self.setLabel("left", f"predicted {target}", color=FOREGROUND)

    def set_gp(self, y_true: np.ndarray, mean: np.ndarray, std: np.ndarray) -> None:
        """Show the GP's held-out predictions with error bars and the y = x line over their range."""
        self.points["gp"].setData(y_true, mean)
        self.bars.setData(x=y_true, y=mean, height=2 * ERROR_BAR_SIGMAS * std)
        lo = float(min(y_true.min(), (mean - ERROR_BAR_SIGMAS * std).min()))
        hi = float(max(y_true.max(), (mean + ERROR_BAR_SIGMAS * std).max()))
        self.diagonal.setData([lo, hi], [lo, hi])

    def set_points(self, key: str, y_true: np.ndarray, pred: np.ndarray) -> None:
        """Replace one method's held-out predictions ('unadapted', 'finetuned', 'trajectory')."""
        self.points[key].setData(y_true, pred)

    def clear_data(self) -> None:
        """Empty every series."""
        for item in (*self.points.values(), self.diagonal):
            item.setData([], [])
        self.bars.setData(x=np.zeros(0), y=np.zeros(0), height=np.zeros(0))
        self.follow_data()

    def curve_data(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """Return (true, predicted) shown for one method."""
        return curve_data(self.points[key])

    def bar_heights(self) -> np.ndarray:
        """Return the full heights of the error bars (4σ each)."""
        return np.asarray(self.bars.opts["height"], float)
