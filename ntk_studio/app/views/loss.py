"""Fine-tuning training loss against epoch (log y axis), appended live."""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg

from .log_axis import LogAxis
from .style import BACKGROUND, FINETUNED_COLOR, FOREGROUND, LINE_WIDTH, curve_data, pen, set_title, style

LOSS_NAMES = {"regression": "training loss (MSE)", "classification": "training loss (cross-entropy)"}
MARKER_SIZE = 4
TITLE = "Fine-tuning loss"
DECADE_PADDING = 0.02
EMPTY_DECADES = (-3, 0)
# Markers for short runs only: thousands of scatter symbols cost more per redraw than the line.
MAX_MARKED_POINTS = 100


class LossPlot(pg.PlotWidget):
    """Fine-tuning training loss per epoch; the previous run stays visible until the next one's first point."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent, background=BACKGROUND, axisItems={"left": LogAxis("left")})
        style(self, TITLE, "epoch", LOSS_NAMES["regression"])
        self.setLogMode(x=False, y=True)
        self.getAxis("left").enableAutoSIPrefix(False)  # an SI prefix on a log axis garbles the label
        self.curve = self.plot([], [], pen=pen(FINETUNED_COLOR, LINE_WIDTH), symbol="o", symbolSize=MARKER_SIZE,
                               symbolBrush=FINETUNED_COLOR, symbolPen=None)
        self._epochs: list[float] = []
        self._losses: list[float] = []
        self._decades: tuple[int, int] | None = None
        self._title = TITLE
        self.setYRange(*EMPTY_DECADES, padding=DECADE_PADDING)

    def set_task(self, task: str) -> None:
        """Name the loss of ``task``."""
        self.setLabel("left", LOSS_NAMES.get(task, LOSS_NAMES["regression"]))

    def reset(self, planned_epochs: int | None = None) -> None:
        """Forget the previous run's points (the curve keeps showing them until the next point).

        With `planned_epochs` the epoch axis is fixed to the whole run, so it is not rescaled (and
        its labels redrawn) on every live update.
        """
        self._epochs, self._losses = [], []
        self._decades = None
        if planned_epochs:
            self.setXRange(0, planned_epochs, padding=0.02)
        else:
            self.enableAutoRange(axis="x")
        self.setYRange(*EMPTY_DECADES, padding=DECADE_PADDING)  # until the first loss: 0.001 … 1

    def add_point(self, epoch: int, loss: float) -> bool:
        """Record one epoch's loss; return False for a loss a log axis cannot show (skipped)."""
        if not np.isfinite(loss) or loss <= 0:
            return False
        self._epochs.append(float(epoch))
        self._losses.append(float(loss))
        return True

    def refresh(self) -> None:
        """Draw the recorded points (called at most at the window's plot rate)."""
        marked = len(self._epochs) <= MAX_MARKED_POINTS
        self.curve.setData(self._epochs, self._losses, symbol="o" if marked else None)
        title = TITLE if self._epochs else f"{TITLE} (runs with Adapt)"
        if title != self._title:  # a title change relays out the plot: only when it changes
            self._title = title
            set_title(self, title)
        if self._losses:
            # Whole decades, moved only when the loss leaves them: the log axis (labels and grid, the
            # costly part of a repaint) is then redrawn a few times per run, not at every update.
            lo = math.floor(math.log10(min(self._losses)))
            hi = max(math.ceil(math.log10(max(self._losses))), lo + 1)
            if (lo, hi) != self._decades:
                self._decades = (lo, hi)
                self.setYRange(lo, hi, padding=DECADE_PADDING)

    def curve_data(self) -> tuple[np.ndarray, np.ndarray]:
        """Return (epochs, losses) shown."""
        return curve_data(self.curve)
