"""The comparison table (unadapted, linearized GP or classifier, fine-tuned), filled in live; copy as CSV."""

from __future__ import annotations

import csv
import io

from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QApplication, QHeaderView, QTableWidget, QTableWidgetItem

from .numbers import fmt as fmt_number

ROWS = ("unadapted", "gp", "finetuned")
ROW_NAMES = {"regression": {"unadapted": "unadapted", "gp": "linearized GP", "finetuned": "fine-tuned"},
             "classification": {"unadapted": "unadapted", "gp": "linearized classifier", "finetuned": "fine-tuned"}}
# (metric key, header) per task; time is the job's wall time.
COLUMNS = {"regression": (("rmse", "RMSE"), ("nll", "NLL"), ("coverage95", "95% cov."),
                          ("calibration_error", "cal. error"), ("time", "time (s)")),
           "classification": (("accuracy", "accuracy"), ("nll", "NLL"), ("brier", "Brier"), ("ece", "ECE"),
                              ("time", "time (s)"))}
EMPTY = "—"
MIN_COLUMN_PX = 44
METHOD_COLUMN_PX = (92, 150)  # "linearized classifier" on two lines when narrow, one when there is room
METHOD_COLUMN_SHARE = 0.22
SIGNIFICANT = 3
TOOLTIP = ("Scores on the held-out rows. Point predictors (unadapted, fine-tuned) are scored with a Gaussian "
           "whose variance is their mean squared residual on the adaptation rows. Ctrl+Shift+C copies as CSV.")


def fmt(value) -> str:
    """Return a metric as 3 significant digits (numbers.fmt), or an em dash when missing or not finite."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    return fmt_number(value, digits=SIGNIFICANT)


class ComparisonTable(QTableWidget):
    """One row per method, one column per metric of the task; cells fill in as results arrive."""

    def __init__(self, parent=None) -> None:
        super().__init__(len(ROWS), 1, parent)
        self.verticalHeader().setVisible(False)
        self.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.horizontalHeader().setMinimumSectionSize(MIN_COLUMN_PX)
        self.setWordWrap(True)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.setToolTip(TOOLTIP)
        self.copy_action = QAction("Copy table as CSV", self)
        self.copy_action.setShortcut(QKeySequence("Ctrl+Shift+C"))
        self.copy_action.triggered.connect(self.copy_csv)
        self.setContextMenuPolicy(Qt.ContextMenuPolicy.ActionsContextMenu)
        self.addAction(self.copy_action)
        self.values: dict[str, dict] = {}
        self.set_task("regression")

    def set_task(self, task: str) -> None:
        """Switch the columns to ``task``'s metrics and clear every row."""
        self.task = task
        columns = COLUMNS[task]
        self.setColumnCount(1 + len(columns))
        self.setHorizontalHeaderLabels(["method", *(header for _, header in columns)])
        self.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Fixed)
        self._fit_method_column()
        self.values = {}
        for row in ROWS:
            self.set_row(row, {})

    def _fit_method_column(self) -> None:
        lo, hi = METHOD_COLUMN_PX
        self.setColumnWidth(0, int(min(max(self.viewport().width() * METHOD_COLUMN_SHARE, lo), hi)))

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt override
        """Give the method names more room on a wide table."""
        super().resizeEvent(event)
        self._fit_method_column()

    def set_row(self, row: str, metrics: dict, seconds: float | None = None) -> None:
        """Fill one method's row (``metrics`` from a payload; ``seconds`` its wall time)."""
        values = dict(metrics, time=seconds) if seconds is not None else dict(metrics)
        self.values[row] = values
        cells = [ROW_NAMES[self.task][row], *(fmt(values.get(key)) for key, _ in COLUMNS[self.task])]
        for col, text in enumerate(cells):
            self.setItem(ROWS.index(row), col, QTableWidgetItem(text))

    def text(self, row: str, key: str) -> str:
        """Return the cell of ``row`` (a ROWS key) under metric ``key``."""
        columns = [k for k, _ in COLUMNS[self.task]]
        return self.item(ROWS.index(row), 1 + columns.index(key)).text()

    def to_csv(self) -> str:
        """Return the table as CSV: a header line, then one line per method with full-precision numbers."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["method", *(key for key, _ in COLUMNS[self.task])])
        for row in ROWS:
            values = self.values.get(row, {})
            writer.writerow([ROW_NAMES[self.task][row],
                             *("" if values.get(key) is None else repr(float(values[key])) for key, _ in COLUMNS[self.task])])
        return out.getvalue()

    def copy_csv(self) -> str:
        """Put the CSV on the clipboard; return it."""
        text = self.to_csv()
        QApplication.clipboard().setText(text)
        return text
