"""Calibration: the reliability diagram (classification) or the interval coverage curve (regression),
with each method's ECE or 50/90/95 % coverage side by side and the hyperparameters behind the fit.

Projects saved before the coverage curve existed carry only the quantile calibration curve; the
regression plot then shows that (with its own axis labels) instead of an empty plot.
"""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, Qt
from PySide6.QtGui import QColor, QIcon, QPainter, QPixmap, QPolygonF
from PySide6.QtWidgets import (QAbstractItemView, QHBoxLayout, QHeaderView, QLabel, QTableWidget, QTableWidgetItem,
                               QVBoxLayout, QWidget)

from ..numbers import EMPTY, fmt
from ..run_records import HyperChoice, MethodCalibration
from .style import (BACKGROUND, FINETUNED_COLOR, FOREGROUND, GP_COLOR, PRETRAINED_COLOR, SMALL_POINT, curve_data, pen,
                    style)

# The legend is the summary table beside the plot (each method's colour and symbol, with its numbers)
# and a line under it for the diagonal: a legend inside the plot covered curves at 1024 × 640.
AXIS_MARGIN = 0.02
SERIES = (("gp", GP_COLOR, "o"), ("finetuned", FINETUNED_COLOR, "s"), ("unadapted", PRETRAINED_COLOR, "t"))
REGRESSION_NAMES = {"gp": "linearized GP", "finetuned": "fine-tuned (residual σ)", "unadapted": "unadapted (residual σ)"}
CLASSIFICATION_NAMES = {"gp": "linearized classifier", "finetuned": "fine-tuned", "unadapted": "pretrained (unadapted)"}
SHORT_NAMES = {"gp": "linearized", "finetuned": "fine-tuned", "unadapted": "unadapted"}
SYMBOLS = {key: symbol for key, _, symbol in SERIES}
ICON_PX = 10
DIAGONAL_KEY = "╍╍ diagonal: perfectly calibrated"
COLORS = {key: color for key, color, _ in SERIES}
# What the plot shows: 'classification' (reliability), 'coverage' (regression), 'quantile' (older regression projects).
LABELS = {
    "classification": ("Reliability (held-out examples)", "confidence (mean max-probability per bin)",
                       "accuracy in the bin"),
    "coverage": ("Interval coverage (held-out rows)", "nominal level of the central predictive interval",
                 "fraction of targets inside"),
    "quantile": ("Calibration (held-out rows)", "expected fraction below the predictive quantile", "observed fraction"),
}
COVERAGE_MARKS = (0.5, 0.9, 0.95)  # the levels the table reports get a faint vertical line
MARK_ALPHA = 70
SIDE_WIDTH = (272, 340)  # the summary beside the plot: three number columns at 1024 × 640, more room when wide
SIDE_SHARE = 0.3
DIGITS = 3
# A coverage below level − 0.05 is called too narrow; above level + min(0.05, 0.8·(1 − level)) too
# wide: for 95 % that is the band 0.90–0.99.
COVERAGE_SLACK = 0.05
WIDE_SHARE = 0.8

ECE_TIP = ("Expected calibration error: the held-out examples are put in 10 bins by their confidence (the largest "
           "class probability); ECE is the average, weighted by the bin's size, of |accuracy − confidence|. 0 is "
           "perfectly calibrated; 0.05 means the stated confidence is off by 5 points on average.")
CONFIDENCE_TIP = ("Mean confidence (largest class probability) over the held-out examples. Above the accuracy: "
                  "overconfident; below it: underconfident.")
ACCURACY_TIP = "Fraction of held-out examples whose most probable class is the true one."
COVERAGE_TIP = ("Fraction of held-out targets inside the central {level} % predictive interval (mean ± z·σ, the "
                "Gaussian predictive, noise included). A calibrated model covers {level} %: less means the "
                "intervals are too narrow (overconfident), more means too wide.")
POINT_TIP = ("Point predictors are scored with a Gaussian whose variance is their mean squared residual on the "
             "adaptation rows.")
PLOT_TIPS = {
    "classification": ("Reliability diagram: held-out examples binned by confidence; each point is a bin's mean "
                       "confidence and accuracy. Points below the diagonal: overconfident; above: underconfident."),
    "coverage": ("Coverage curve: for each nominal level, the fraction of held-out targets inside the central "
                 "predictive interval of that level. Below the diagonal: intervals too narrow (overconfident); "
                 "above: too wide. " + POINT_TIP),
    "quantile": ("Quantile calibration: the fraction of held-out targets below each predictive quantile. This "
                 "project was saved before the coverage curve existed."),
}
# (header, tooltip, value of a MethodCalibration and the payload's diagram) per column.
CLASSIFICATION_COLUMNS = (("ECE", ECE_TIP), ("acc.", ACCURACY_TIP), ("conf.", CONFIDENCE_TIP))
REGRESSION_COLUMNS = (("50 %", COVERAGE_TIP.format(level=50)), ("90 %", COVERAGE_TIP.format(level=90)),
                      ("95 %", COVERAGE_TIP.format(level=95)))
NOTE_TIP = ("How the linearized model's hyperparameters were chosen; the Hyperparameters tab has the numbers and "
            "the search.")


class CalibrationPlot(pg.PlotWidget):
    """Observed against expected frequency for each method, with the diagonal of perfect calibration."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent, background=BACKGROUND)
        self.setRange(xRange=(0, 1), yRange=(0, 1), padding=AXIS_MARGIN)
        self.diagonal = self.plot([0, 1], [0, 1], pen=pen(FOREGROUND, 1, style=Qt.PenStyle.DashLine))
        self.marks = [pg.InfiniteLine(level, angle=90, pen=pen((*PRETRAINED_COLOR, MARK_ALPHA), 1))
                      for level in COVERAGE_MARKS]
        for mark in self.marks:
            self.addItem(mark, ignoreBounds=True)
        self.series = {key: self.plot([], [], pen=pen(color), symbol=symbol, symbolSize=SMALL_POINT, symbolBrush=color,
                                      symbolPen=None) for key, color, symbol in SERIES}
        self.set_task("regression")

    def set_task(self, task: str, kind: str | None = None) -> None:
        """Label the axes for 'classification' (confidence bins) or 'regression'.

        Regression's ``kind`` is 'coverage' (central intervals, the default) or 'quantile' (the
        quantile curve of projects saved before coverage curves existed).
        """
        kind = "classification" if task == "classification" else (kind or "coverage")
        self.task, self.kind = task, kind
        style(self, *LABELS[kind])
        self.setToolTip(PLOT_TIPS[kind])
        for mark in self.marks:
            mark.setVisible(kind == "coverage")

    def set_series(self, key: str, expected: np.ndarray, observed: np.ndarray) -> None:
        """Show one method's curve; empty (NaN) bins are left out."""
        expected, observed = np.asarray(expected, float), np.asarray(observed, float)
        keep = np.isfinite(expected) & np.isfinite(observed)
        self.series[key].setData(expected[keep], observed[keep])

    def clear_data(self) -> None:
        """Empty every method's curve."""
        for item in self.series.values():
            item.setData([], [])

    def curve_data(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """Return (expected, observed) shown for one method."""
        return curve_data(self.series[key])


def mean_confidence(diagram: dict | None) -> float | None:
    """Return the mean max-probability of a reliability diagram payload (count-weighted bin confidences)."""
    if not diagram:
        return None
    conf = np.asarray(diagram.get("confidence") or [], float)
    count = np.asarray(diagram.get("count") or [], float)
    if conf.shape != count.shape or count.sum() <= 0:
        return None
    filled = count > 0
    value = float((conf[filled] * count[filled]).sum() / count[filled].sum())
    return value if math.isfinite(value) else None


def symbol_icon(symbol: str, color: tuple[int, int, int], size: int = ICON_PX) -> QIcon:
    """Return an icon of a plot symbol ('o' circle, 's' square, 't' triangle down) in ``color``."""
    pixmap = QPixmap(size, size)
    pixmap.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pixmap)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.setPen(Qt.PenStyle.NoPen)
    painter.setBrush(QColor(*color))
    if symbol == "s":
        painter.drawRect(1, 1, size - 2, size - 2)
    elif symbol == "t":
        painter.drawPolygon(QPolygonF([QPointF(0, 1), QPointF(size, 1), QPointF(size / 2, size - 1)]))
    else:
        painter.drawEllipse(1, 1, size - 2, size - 2)
    painter.end()
    return QIcon(pixmap)


class CalibrationSummary(QTableWidget):
    """Each method's calibration numbers, side by side: ECE (classification) or 50/90/95 % coverage (regression)."""

    def __init__(self, parent=None) -> None:
        super().__init__(len(SERIES), 1, parent)
        self.verticalHeader().setVisible(False)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.values: dict[str, list[float | None]] = {}
        self.set_task("regression")

    def set_task(self, task: str) -> None:
        """Switch the columns to ``task``'s numbers and empty every row."""
        self.task = task
        columns = CLASSIFICATION_COLUMNS if task == "classification" else REGRESSION_COLUMNS
        self.setColumnCount(1 + len(columns))
        self.setHorizontalHeaderLabels(["method", *(header for header, _ in columns)])
        for col, (_, tip) in enumerate(columns, start=1):
            self.horizontalHeaderItem(col).setToolTip(tip)
        self.horizontalHeaderItem(0).setToolTip(POINT_TIP)
        header = self.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        self.values = {}
        for key, _, _ in SERIES:
            self.set_row(key, None)
        self.setFixedHeight(self._height())

    def _height(self) -> int:
        self.resizeRowsToContents()
        rows = sum(self.rowHeight(r) for r in range(self.rowCount()))
        return self.horizontalHeader().sizeHint().height() + rows + 2 * self.frameWidth()

    def set_row(self, key: str, cal: MethodCalibration | None, diagram: dict | None = None) -> None:
        """Fill one method's row ('gp', 'finetuned', 'unadapted'); None empties it."""
        cal = cal or MethodCalibration()
        if self.task == "classification":
            values = [cal.ece, cal.accuracy, mean_confidence(diagram)]
            tips = [ECE_TIP, ACCURACY_TIP, CONFIDENCE_TIP]
        else:
            values = [cal.coverage.get(level) for level in COVERAGE_MARKS]
            tips = [_coverage_tip(level, v) for level, v in zip(COVERAGE_MARKS, values)]
        self.values[key] = values
        row = [k for k, _, _ in SERIES].index(key)
        name = QTableWidgetItem(symbol_icon(SYMBOLS[key], COLORS[key]), SHORT_NAMES[key])
        name.setToolTip((CLASSIFICATION_NAMES if self.task == "classification" else REGRESSION_NAMES)[key])
        self.setItem(row, 0, name)
        for col, (value, tip) in enumerate(zip(values, tips), start=1):
            item = QTableWidgetItem(fmt(value, digits=DIGITS))
            item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            item.setToolTip(tip)
            self.setItem(row, col, item)

    def text(self, key: str, column: int) -> str:
        """Return the cell of method ``key`` in number column ``column`` (0 = the first number)."""
        return self.item([k for k, _, _ in SERIES].index(key), 1 + column).text()


def _coverage_tip(level: float, value: float | None) -> str:
    tip = COVERAGE_TIP.format(level=round(100 * level))
    if value is None:
        return tip
    if value < level - COVERAGE_SLACK:
        return f"{tip}\n\nHere {fmt(value, digits=DIGITS)} < {level:g}: too narrow (overconfident)."
    if value > level + min(COVERAGE_SLACK, WIDE_SHARE * (1.0 - level)):
        return f"{tip}\n\nHere {fmt(value, digits=DIGITS)} > {level:g}: too wide (underconfident)."
    return f"{tip}\n\nHere {fmt(value, digits=DIGITS)}: close to {level:g}."


# How each selection chose, in a few words (the Hyperparameters tab has the search and the reason in full).
SHORT_HOW = {"heldout": "by {folds}held-out NLL", "evidence_tau": "s² by the evidence, τ by {folds}held-out NLL",
             "heldout_1se": "by held-out NLL against the evidence (1-SE rule)", "evidence": "by the Laplace evidence",
             "floor": "by the evidence, σ² ≥ its floor",
             "shift": "by the evidence, σ² ≥ its floor, τ for the unlabelled rows",
             "blocked": "by the evidence, σ² ≥ its floor, τ by blocked held-out NLL", "map2": "by the evidence with a weak prior",
             "loo": "by leave-one-out likelihood"}


def hyper_note(h: HyperChoice) -> str:
    """Return two short lines: the hyperparameters the linearized fit used, and how they were chosen."""
    values = [f"s² = {fmt(h.prior_var)}"]
    if h.task == "classification":
        if h.cov_scale is not None:
            values.append(f"τ = {fmt(h.cov_scale)}")
        if h.temperature is not None and h.temperature != 1.0:
            values.append(f"T = {fmt(h.temperature)}")
    else:
        scaled = h.cov_scale is not None and h.cov_scale != 1.0
        values.append(f"σ² = {fmt(h.noise)}" + ((" (floor × τ)" if scaled else " (floor)") if h.floor_active else ""))
        if scaled:
            values.append(f"τ = {fmt(h.cov_scale)}")
    if h.fitted is False or h.selection == "as given":
        how = "as given (hyperparameter fit off)"
    elif h.selection in SHORT_HOW:
        how = "chosen " + SHORT_HOW[h.selection].format(folds=f"{h.folds}-fold " if h.folds else "")
        if h.heldout_nll is not None:
            how += f": NLL {fmt(h.heldout_nll, digits=DIGITS)}"
            if h.heldout_nll_unscaled is not None:
                plain = "τ = T = 1" if h.temperature is not None else "τ = 1"
                how += f" ({plain}: {fmt(h.heldout_nll_unscaled, digits=DIGITS)})"
        elif h.log_evidence is not None:
            how += f": log evidence {fmt(h.log_evidence, digits=DIGITS)}"
    elif h.method or h.selection:
        how = f"chosen by {h.method or h.selection}"
    else:
        how = ""
    return " · ".join(values) + (f"\n{how}" if how else "")


class CalibrationPage(QWidget):
    """The Calibration tab: the plot, and beside it the numbers per method and the hyperparameters used."""

    def __init__(self, plot: CalibrationPlot, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.plot = plot
        self.summary = CalibrationSummary()
        self.heading = QLabel()
        self.heading.setWordWrap(True)
        self.note = QLabel(EMPTY)
        self.note.setWordWrap(True)
        self.note.setToolTip(NOTE_TIP)
        self.note.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        side = self.side = QWidget()
        side.setFixedWidth(SIDE_WIDTH[0])
        column = QVBoxLayout(side)
        column.setContentsMargins(4, 6, 4, 4)
        column.addWidget(self.heading)
        column.addWidget(self.summary)
        key = QLabel(DIAGONAL_KEY)
        key.setToolTip("The dashed line in the plot: observed equals expected.")
        column.addWidget(key)
        column.addSpacing(6)
        column.addWidget(QLabel("<b>Hyperparameters</b>"))
        column.addWidget(self.note)
        column.addStretch(1)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.setSpacing(0)
        row.addWidget(plot, 1)
        row.addWidget(side)
        self.set_task("regression")

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt override
        """Give the numbers more room on a wide window."""
        super().resizeEvent(event)
        lo, hi = SIDE_WIDTH
        self.side.setFixedWidth(int(min(max(self.width() * SIDE_SHARE, lo), hi)))

    def set_task(self, task: str) -> None:
        """Switch the numbers to ``task`` and empty them (the plot is switched by its owner)."""
        self.summary.set_task(task)
        self.heading.setText("<b>Expected calibration error</b> (held-out)" if task == "classification"
                             else "<b>Interval coverage</b> (held-out; calibrated = nominal)")
        self.heading.setToolTip(ECE_TIP if task == "classification" else COVERAGE_TIP.format(level="p"))
        self.note.setText(EMPTY)

    def clear_data(self) -> None:
        """Empty the numbers (a new run starts)."""
        self.set_task(self.summary.task)

    def set_hyper(self, h: HyperChoice) -> None:
        """Show the hyperparameters of the linearized fit in a line or two."""
        self.note.setText(hyper_note(h))
