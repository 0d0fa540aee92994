"""Class probabilities on the held-out examples: GP (Laplace), fine-tuned and unadapted, one class at a time."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from .inspect import ExampleGallery
from .style import (BACKGROUND, FINETUNED_COLOR, FOREGROUND, GP_COLOR, PRETRAINED_COLOR, SMALL_POINT, curve_data,
                    legend, pen, style)

LEGEND_OFFSET = (-10, 10)  # top-right
Y_MARGIN = 0.05
SERIES = (("unadapted", PRETRAINED_COLOR, "pretrained (unadapted)", "t"),
          ("finetuned", FINETUNED_COLOR, "fine-tuned", "s"),
          ("gp", GP_COLOR, "linearized classifier", "o"))


EMPTY_NOTE = "Adapt shows each held-out example's predicted class probabilities here."


class ClassProbView(QWidget):
    """P(class k) per held-out example, examples sorted by true class then by the classifier's P(k)."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.class_box = QComboBox()
        self.class_box.setToolTip("Which class's predicted probability to show.")
        self.class_box.currentIndexChanged.connect(self._class_changed)
        self.plot = pg.PlotWidget(background=BACKGROUND)
        style(self.plot, "Class probabilities (held-out examples)", "held-out example (sorted by true class, then P)",
              "predicted probability")
        self.plot.setYRange(-Y_MARGIN, 1 + Y_MARGIN)
        self.legend = legend(self.plot, LEGEND_OFFSET)
        self.truth = self.plot.plot([], [], pen=pen(FOREGROUND, 1, style=Qt.PenStyle.DashLine), name="true class is k")
        self.series = {key: self.plot.plot([], [], pen=None, symbol=symbol, symbolSize=SMALL_POINT, symbolBrush=color,
                                           symbolPen=None, name=name) for key, color, name, symbol in SERIES}
        self.message = pg.TextItem(EMPTY_NOTE, color=FOREGROUND, anchor=(0.5, 0.5))
        self.message.setParentItem(self.plot.getViewBox())
        self.plot.getViewBox().sigResized.connect(self._place_message)
        top = QHBoxLayout()
        top.addWidget(QLabel("Class k:"))
        top.addWidget(self.class_box, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(top)
        self.gallery = ExampleGallery()  # beside the plot: a few held-out images (image data only)
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.plot, 1)
        row.addWidget(self.gallery, 0, Qt.AlignmentFlag.AlignTop)
        layout.addLayout(row, 1)
        self._labels = np.zeros(0, dtype=int)
        self._probs: dict[str, np.ndarray] = {}

    def _place_message(self, *_: object) -> None:
        self.message.setPos(self.plot.getViewBox().boundingRect().center())

    def _class_changed(self, _index: int) -> None:
        self._redraw()

    def set_classes(self, names: list[str]) -> None:
        """Offer the data's class names (keeps the choice when the names are unchanged)."""
        current = [self.class_box.itemText(i) for i in range(self.class_box.count())]
        if current != list(names):
            self.class_box.blockSignals(True)
            self.class_box.clear()
            self.class_box.addItems(list(names))
            self.class_box.blockSignals(False)

    def set_probs(self, key: str, labels: np.ndarray, probs: np.ndarray) -> None:
        """Store one method's (m, C) probabilities for the held-out labels and redraw."""
        self._labels = np.asarray(labels, dtype=int)
        self._probs[key] = np.asarray(probs, dtype=float)
        self._redraw()

    def clear_data(self) -> None:
        """Forget every method's probabilities."""
        self._probs = {}
        self.gallery.set_examples([], np.zeros(0), np.zeros((0, 0)), [])
        self._redraw()

    def probs(self) -> dict[str, np.ndarray]:
        """Return each method's (m, C) probabilities shown."""
        return dict(self._probs)

    def class_names(self) -> list[str]:
        """Return the class names offered."""
        return [self.class_box.itemText(i) for i in range(self.class_box.count())]

    def held_out_row(self, position: int) -> int:
        """Return the held-out row drawn at x = ``position`` (the plot sorts the rows)."""
        return int(self.order()[position])

    def order(self) -> np.ndarray:
        """Return the plotting order: by true class (class k first), then by the classifier's P(k)."""
        k = max(self.class_box.currentIndex(), 0)
        ref = self._probs.get("gp", self._probs.get("unadapted"))
        p = ref[:, k] if ref is not None and ref.shape[1] > k else np.zeros(len(self._labels))
        return np.lexsort((-p, self._labels != k))

    def _redraw(self) -> None:
        k = max(self.class_box.currentIndex(), 0)
        empty = len(self._labels) == 0 or not self._probs
        self.message.setVisible(empty)  # before a run: say what will appear, not an empty frame
        if empty:
            for item in (self.truth, *self.series.values()):
                item.setData([], [])
            return
        idx = self.order()
        x = np.arange(len(idx), dtype=float)
        self.truth.setData(x, (self._labels[idx] == k).astype(float))
        for key, item in self.series.items():
            probs = self._probs.get(key)
            if probs is None or probs.shape[1] <= k:
                item.setData([], [])
            else:
                item.setData(x, probs[idx, k])

    def curve_data(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """Return (example position, P(k)) shown for one method."""
        return curve_data(self.series[key])
