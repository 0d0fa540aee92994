"""Colours, pens and axis styling shared by every plot, so the views read as one family."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import QGraphicsItem

BACKGROUND = "w"
FOREGROUND = "k"
GP_COLOR = (31, 119, 180)
PRETRAINED_COLOR = (127, 127, 127)
FINETUNED_COLOR = (214, 39, 40)
TRUTH_COLOR = (0, 0, 0)
TRAIN_COLOR = (255, 127, 14)
TRAJECTORY_COLOR = (44, 160, 44)
BAND1_ALPHA = 90  # ±1σ band opacity (0-255)
BAND2_ALPHA = 45  # ±2σ band opacity
LINE_WIDTH = 2
POINT_SIZE = 9
SMALL_POINT = 6
LEGEND_BRUSH = (255, 255, 255, 220)
GRID_ALPHA = 0.2
LEGEND_TEXT_SIZE = "8pt"  # legends stay small beside the curves at 1024 × 640
LEGEND_SPACING = -6
PLOT_MARGINS = (2, 8, 16, 2)  # left, top, right, bottom, in pixels


def pen(color, width: int = LINE_WIDTH, **kw) -> pg.QtGui.QPen:
    """Return a cosmetic pen of ``color`` and ``width`` (extra Qt pen options in ``kw``)."""
    return pg.mkPen(color, width=width, **kw)


def style(plot: pg.PlotWidget, title: str, x_label: str, y_label: str) -> None:
    """Give ``plot`` the house look: white background, black labelled axes, light grid, a title."""
    for name in ("left", "bottom"):
        axis = plot.getAxis(name)
        axis.setPen(FOREGROUND)
        axis.setTextPen(FOREGROUND)
        axis.enableAutoSIPrefix(False)  # "x (x0.001)" reads as a different quantity
        # An axis paints its tick labels and the grid lines across the whole plot: ~10 ms a paint in
        # software rendering, twice per plot, on every live redraw. Cached as a pixmap it is redrawn
        # only when its range or size changes (the live plots hold their ranges during a run).
        axis.setCacheMode(QGraphicsItem.CacheMode.DeviceCoordinateCache)
    plot.getPlotItem().layout.setContentsMargins(*PLOT_MARGINS)  # room for the last tick label's right half
    plot.setLabel("bottom", x_label, color=FOREGROUND)
    plot.setLabel("left", y_label, color=FOREGROUND)
    plot.showGrid(x=True, y=True, alpha=GRID_ALPHA)
    set_title(plot, title)


def set_title(plot: pg.PlotWidget, title: str) -> None:
    """Set the plot's title without letting its length set the plot's minimum width.

    pyqtgraph makes the title's width a minimum of the plot; a long title once shown kept the plot
    wider than its widget (the right part cut off) after the title got shorter again.
    """
    plot.setTitle(title, color=FOREGROUND)
    label = plot.getPlotItem().titleLabel
    label.setMinimumWidth(0)
    item = plot.getPlotItem()
    rect = item.geometry()
    if plot.width() > 0 and rect.width() > plot.width():  # back to the widget's width
        item.setGeometry(rect.x(), rect.y(), plot.width(), rect.height())


def legend(plot: pg.PlotWidget, offset: tuple[int, int]) -> pg.LegendItem:
    """Return a legend with a white box at ``offset`` (negative values anchor right/bottom)."""
    return plot.addLegend(offset=offset, brush=LEGEND_BRUSH, pen=FOREGROUND, labelTextColor=FOREGROUND,
                          labelTextSize=LEGEND_TEXT_SIZE, verSpacing=LEGEND_SPACING)


def arr(values) -> np.ndarray:
    """Return ``values`` (lists from a payload) as a float array; None becomes an empty array."""
    return np.asarray([] if values is None else values, dtype=float)


def curve_data(item: pg.PlotDataItem) -> tuple[np.ndarray, np.ndarray]:
    """Return (x, y) currently shown by a curve (empty arrays when it has none)."""
    x, y = item.getData()
    return (np.asarray([]) if x is None else x), (np.asarray([]) if y is None else y)


class RangeHold:
    """For plot widgets: hold the view range while live curves change, then follow the data again."""

    def hold_range(self) -> None:
        """Fit the view to what is shown now, then keep it: live curves no longer rescale the axes.

        Rescaling redraws every tick label, which was half of each live repaint during fine-tuning.
        """
        box = self.getViewBox()
        box.enableAutoRange()
        box.autoRange()
        box.disableAutoRange()

    def follow_data(self) -> None:
        """Let the view follow the data again (after a run, or for new data)."""
        self.getViewBox().enableAutoRange()
