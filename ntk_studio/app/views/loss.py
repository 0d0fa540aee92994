"""Fine-tuning training loss against epoch (log y axis), appended live."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg

from .style import BACKGROUND, FINETUNED_COLOR, LINE_WIDTH, curve_data, pen, style

LOSS_NAMES = {"regression": "training loss (MSE)", "classification": "training loss (cross-entropy)"}
MARKER_SIZE = 4


class LossPlot(pg.PlotWidget):
    """Fine-tuning training loss per epoch; the previous run stays visible until the next one's first point."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent, background=BACKGROUND)
        style(self, "Fine-tuning loss", "epoch", LOSS_NAMES["regression"])
        self.setLogMode(x=False, y=True)
        self.getAxis("left").enableAutoSIPrefix(False)  # an SI prefix on a log axis garbles the label
        self.curve = self.plot([], [], pen=pen(FINETUNED_COLOR, LINE_WIDTH), symbol="o", symbolSize=MARKER_SIZE,
                               symbolBrush=FINETUNED_COLOR, symbolPen=None)
        self._epochs: list[float] = []
        self._losses: list[float] = []

    def set_task(self, task: str) -> None:
        """Name the loss of ``task``."""
        self.setLabel("left", LOSS_NAMES.get(task, LOSS_NAMES["regression"]))

    def reset(self) -> None:
        """Forget the previous run's points (the curve keeps showing them until the next point)."""
        self._epochs, self._losses = [], []

    def add_point(self, epoch: int, loss: float) -> bool:
        """Record one epoch's loss; return False for a loss a log axis cannot show (skipped)."""
        if not np.isfinite(loss) or loss <= 0:
            return False
        self._epochs.append(float(epoch))
        self._losses.append(float(loss))
        return True

    def refresh(self) -> None:
        """Draw the recorded points (called at most at the window's plot rate)."""
        self.curve.setData(self._epochs, self._losses)

    def curve_data(self) -> tuple[np.ndarray, np.ndarray]:
        """Return (epochs, losses) shown."""
        return curve_data(self.curve)
