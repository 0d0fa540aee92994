"""Predictions over a 1-D input: GP mean with ±1σ/±2σ bands, data, truth, pretrained, fine-tuned, GD step.

Every curve is created once and updated in place with ``setData``, so a run never flashes an
empty plot.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt

from .style import (BACKGROUND, BAND1_ALPHA, BAND2_ALPHA, FINETUNED_COLOR, FOREGROUND, GP_COLOR, POINT_SIZE,
                    PRETRAINED_COLOR, TRAIN_COLOR, TRAJECTORY_COLOR, TRUTH_COLOR, RangeHold, curve_data, legend, pen,
                    style)

LEGEND_OFFSET = (-10, -10)  # bottom-right: the sine bands and data leave that corner empty
LEGEND_COLUMNS = 2  # a wide, short legend stays below the curves
LEGEND_ROOM = 0.4  # the y range extends this share below the data, so the legend covers no curve
LATE_NAMES = {"truth": "true function", "train": "labelled points", "trajectory": "linearized GD at step t"}


def _band_proxy(color: tuple[int, int, int], alpha: int) -> pg.PlotDataItem:
    """Return an empty item whose legend sample is a filled box of the band's colour."""
    return pg.PlotDataItem([], [], pen=pg.mkPen(color + (alpha,)), fillLevel=0, fillBrush=color + (alpha,))


class FitPlot(RangeHold, pg.PlotWidget):
    """Training points, truth, pretrained, GP mean with ±1σ/±2σ bands, fine-tuned, GD trajectory."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent, background=BACKGROUND)
        style(self, "Predictions", "x", "y")
        self.legend = legend(self, LEGEND_OFFSET)
        self.legend.setColumnCount(LEGEND_COLUMNS)
        self.curves: dict[str, pg.PlotDataItem] = {}
        edge = pg.mkPen(None)
        for key in ("upper2", "lower2", "upper1", "lower1"):
            self.curves[key] = self.plot([], [], pen=edge)
        self.band2 = pg.FillBetweenItem(self.curves["upper2"], self.curves["lower2"], brush=GP_COLOR + (BAND2_ALPHA,))
        self.band1 = pg.FillBetweenItem(self.curves["upper1"], self.curves["lower1"], brush=GP_COLOR + (BAND1_ALPHA,))
        for band in (self.band2, self.band1):
            self.addItem(band)
        self.curves["truth"] = self.plot([], [], pen=pen(TRUTH_COLOR, style=Qt.PenStyle.DashLine))
        self.curves["pretrained"] = self.plot([], [], pen=pen(PRETRAINED_COLOR, style=Qt.PenStyle.DotLine),
                                              name="pretrained (unadapted)")
        self.curves["gp_mean"] = self.plot([], [], pen=pen(GP_COLOR), name="linearized GP mean")
        self.legend.addItem(_band_proxy(GP_COLOR, BAND1_ALPHA), "GP ±1σ")
        self.legend.addItem(_band_proxy(GP_COLOR, BAND2_ALPHA), "GP ±2σ")
        self.curves["finetuned"] = self.plot([], [], pen=pen(FINETUNED_COLOR), name="fine-tuned")
        self.curves["trajectory"] = self.plot([], [], pen=pen(TRAJECTORY_COLOR, style=Qt.PenStyle.DashDotLine))
        self.curves["train"] = self.plot([], [], pen=None, symbol="o", symbolSize=POINT_SIZE,
                                         symbolBrush=TRAIN_COLOR, symbolPen=FOREGROUND)
        # Listed in the legend only once the worker sends them (not every data set has them).
        self._late_names = dict(LATE_NAMES)

    def set_labels(self, x_label: str, y_label: str) -> None:
        """Name the axes after the data's columns."""
        self.setLabel("bottom", x_label, color=FOREGROUND)
        self.setLabel("left", y_label, color=FOREGROUND)

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

    def hold_range(self) -> None:
        """Fit the view to the data with room for the legend below it, then keep it while live curves change."""
        box = self.getViewBox()
        box.enableAutoRange()
        box.autoRange()
        (_, _), (y0, y1) = box.viewRange()
        if y1 > y0:
            box.setYRange(y0 - LEGEND_ROOM * (y1 - y0), y1, padding=0)
        box.disableAutoRange()

    def follow_data(self) -> None:
        """After a run: the same fit (the curves no longer change while the user reads them)."""
        if any(len(curve_data(c)[0]) for c in self.curves.values()):
            self.hold_range()
        else:
            self.getViewBox().enableAutoRange()

    def show_range(self, x_range: list[float] | None) -> None:
        """Before any curve: span the data's input range (or follow the data when unknown)."""
        if x_range and x_range[1] > x_range[0]:
            self.setXRange(float(x_range[0]), float(x_range[1]), padding=0.05)
            self.getViewBox().enableAutoRange(axis="y")
        else:
            self.follow_data()

    def clear_data(self) -> None:
        """Empty every curve (a different data set was loaded; old curves would mislead)."""
        for curve in self.curves.values():
            curve.setData([], [])
        self.follow_data()

    def curve_data(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """Return (x, y) currently shown by a named curve."""
        return curve_data(self.curves[key])
