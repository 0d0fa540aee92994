"""The two plots: predictions with GP bands on the 1-D grid, and the fine-tuning loss per epoch.

Every curve is created once and updated in place with ``setData``, so a run never flashes an
empty plot.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt

BACKGROUND = "w"
FOREGROUND = "k"
GP_COLOR = (31, 119, 180)
BAND1_ALPHA = 90  # ±1σ band opacity (0-255)
BAND2_ALPHA = 45  # ±2σ band opacity
PRETRAINED_COLOR = (127, 127, 127)
FINETUNED_COLOR = (214, 39, 40)
TRUTH_COLOR = (0, 0, 0)
TRAIN_COLOR = (255, 127, 14)
LINE_WIDTH = 2
POINT_SIZE = 9
LEGEND_OFFSET = (-10, -10)  # bottom-right: the sine bands and data leave that corner empty
LEGEND_BRUSH = (255, 255, 255, 220)


def _style(plot: pg.PlotWidget, x_label: str, y_label: str) -> None:
    for name in ("left", "bottom"):
        axis = plot.getAxis(name)
        axis.setPen(FOREGROUND)
        axis.setTextPen(FOREGROUND)
    plot.setLabel("bottom", x_label, color=FOREGROUND)
    plot.setLabel("left", y_label, color=FOREGROUND)
    plot.showGrid(x=True, y=True, alpha=0.2)


def _band_proxy(color: tuple[int, int, int], alpha: int) -> pg.PlotDataItem:
    """Return an empty item whose legend sample is a filled box of the band's colour."""
    return pg.PlotDataItem([], [], pen=pg.mkPen(color + (alpha,)), fillLevel=0, fillBrush=color + (alpha,))


class FitPlot(pg.PlotWidget):
    """Training points, truth, pretrained, GP mean with ±1σ/±2σ bands, fine-tuned prediction."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent, background=BACKGROUND)
        _style(self, "x", "y")
        self.setTitle("Predictions", color=FOREGROUND)
        self.legend = legend = self.addLegend(offset=LEGEND_OFFSET, brush=LEGEND_BRUSH, pen=FOREGROUND,
                                labelTextColor=FOREGROUND)
        pen = lambda color, **kw: pg.mkPen(color, width=LINE_WIDTH, **kw)  # noqa: E731
        self.curves: dict[str, pg.PlotDataItem] = {}
        edge = pg.mkPen(None)
        for key in ("upper2", "lower2", "upper1", "lower1"):
            self.curves[key] = self.plot([], [], pen=edge)
        self.band2 = pg.FillBetweenItem(self.curves["upper2"], self.curves["lower2"],
                                        brush=GP_COLOR + (BAND2_ALPHA,))
        self.band1 = pg.FillBetweenItem(self.curves["upper1"], self.curves["lower1"],
                                        brush=GP_COLOR + (BAND1_ALPHA,))
        for band in (self.band2, self.band1):
            self.addItem(band)
        self.curves["truth"] = self.plot([], [], pen=pen(TRUTH_COLOR, style=Qt.PenStyle.DashLine))
        self.curves["pretrained"] = self.plot([], [], pen=pen(PRETRAINED_COLOR, style=Qt.PenStyle.DotLine),
                                              name="pretrained (unadapted)")
        self.curves["gp_mean"] = self.plot([], [], pen=pen(GP_COLOR), name="linearized GP mean")
        legend.addItem(_band_proxy(GP_COLOR, BAND1_ALPHA), "GP ±1σ")
        legend.addItem(_band_proxy(GP_COLOR, BAND2_ALPHA), "GP ±2σ")
        self.curves["finetuned"] = self.plot([], [], pen=pen(FINETUNED_COLOR), name="fine-tuned")
        self.curves["train"] = self.plot([], [], pen=None, symbol="o", symbolSize=POINT_SIZE,
                                         symbolBrush=TRAIN_COLOR, symbolPen=FOREGROUND)
        # Listed in the legend only once the worker sends them (the jobs layer may not).
        self._late_names = {"truth": "true function", "train": "labelled points"}

    def set_gp(self, x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> None:
        """Show the GP mean and its ±1σ and ±2σ bands."""
        self.curves["gp_mean"].setData(x, mean)
        for k in (1, 2):
            self.curves[f"upper{k}"].setData(x, mean + k * std)
            self.curves[f"lower{k}"].setData(x, mean - k * std)

    def set_curve(self, key: str, x: np.ndarray, y: np.ndarray) -> None:
        """Replace one named curve's data in place."""
        self.curves[key].setData(x, y)
        if key in self._late_names:
            self.legend.addItem(self.curves[key], self._late_names.pop(key))

    def curve_data(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """Return (x, y) currently shown by a named curve."""
        x, y = self.curves[key].getData()
        return (np.asarray([]) if x is None else x), (np.asarray([]) if y is None else y)


class LossPlot(pg.PlotWidget):
    """Fine-tuning training loss against epoch, log y axis."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent, background=BACKGROUND)
        _style(self, "epoch", "training loss (MSE)")
        self.setTitle("Fine-tuning loss", color=FOREGROUND)
        self.setLogMode(x=False, y=True)
        self.curve = self.plot([], [], pen=pg.mkPen(FINETUNED_COLOR, width=LINE_WIDTH),
                               symbol="o", symbolSize=4, symbolBrush=FINETUNED_COLOR, symbolPen=None)
        self._epochs: list[float] = []
        self._losses: list[float] = []

    def reset(self) -> None:
        """Forget the previous run's points (the curve keeps showing them until the next point)."""
        self._epochs, self._losses = [], []

    def add_point(self, epoch: int, loss: float) -> None:
        """Append one epoch's loss (non-positive or non-finite losses are skipped on a log axis)."""
        if not np.isfinite(loss) or loss <= 0:
            return
        self._epochs.append(float(epoch))
        self._losses.append(float(loss))
        self.curve.setData(self._epochs, self._losses)
