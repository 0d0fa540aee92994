"""File → Export predictions (CSV) and File → Save plot (PNG or SVG) for the results on screen.

`predictions_table` is plain Python over the run's result dicts; the actions write through
`file_output.write_atomic` (the user's umask applies). SVG is rendered through QtSvg's
`QSvgGenerator` (pyqtgraph's own SVG exporter fails on this Qt version).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QBuffer, QByteArray, QIODevice, QObject, QRect, QSize
from PySide6.QtGui import QAction, QKeySequence, QPainter
from PySide6.QtSvg import QSvgGenerator
from PySide6.QtWidgets import QFileDialog, QWidget

from .file_output import write_atomic

PREDICTIONS_TIP = "Write the held-out rows with the target and every method's prediction as CSV"
PLOT_TIP = "Save the plot on screen as PNG (pixels) or SVG (vector)"


def _column(values: Any) -> np.ndarray:
    return np.asarray([] if values is None else values, dtype=float)


def predictions_table(results: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """Return (header, rows) of the held-out predictions in ``results`` (empty when there is no GP fit)."""
    gp = results.get("fit_gp") or {}
    ft = results.get("finetune") or {}
    if not gp:
        return [], []
    if gp.get("task") == "classification":
        y = _column(gp.get("test_y")).astype(int)
        names = list(gp.get("class_names") or [str(k) for k in range(_column(gp.get("probs")).shape[-1])])
        header, columns = ["row", "label"], [np.arange(len(y)), [names[k] if k < len(names) else k for k in y]]
        for tag, probs in (("unadapted", gp.get("base_probs")), ("linearized", gp.get("probs")),
                           ("finetuned", ft.get("probs"))):
            p = _column(probs)
            if p.ndim == 2 and len(p) == len(y):
                header += [f"p_{tag}[{name}]" for name in names]
                columns += [p[:, k] for k in range(p.shape[1])]
        return header, [list(r) for r in zip(*columns, strict=True)]
    y = _column(gp.get("test_y")).reshape(len(_column(gp.get("test_y"))), -1)[:, 0]
    header = ["row", "target", "unadapted", "gp_mean", "gp_std"]
    columns = [np.arange(len(y)), y, _column(gp.get("test_base")).ravel(), _column(gp.get("test_mean")).ravel(),
               _column(gp.get("test_std")).ravel()]
    tuned = _column(ft.get("grid_pred")).ravel()
    if not gp.get("grid") and len(tuned) == len(y):  # fine-tuned predictions on the same held-out rows
        header.append("finetuned")
        columns.append(tuned)
    keep = [c for c in columns if len(c) == len(y)]
    header = [h for h, c in zip(header, columns, strict=True) if len(c) == len(y)]
    return header, [list(r) for r in zip(*keep, strict=True)]


def predictions_csv(results: dict[str, Any]) -> str:
    """Return the held-out predictions as CSV text (full precision)."""
    header, rows = predictions_table(results)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([repr(float(v)) if isinstance(v, (float, np.floating)) else v for v in row])
    return out.getvalue()


def plot_png(widget: QWidget) -> bytes:
    """Return a PNG of ``widget`` as shown."""
    buffer = QBuffer()
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    widget.grab().save(buffer, "PNG")
    return bytes(buffer.data())


def plot_svg(widget: QWidget, title: str = "NTK Studio plot") -> bytes:
    """Return an SVG of ``widget`` rendered through QtSvg (vector text and lines)."""
    data = QByteArray()
    buffer = QBuffer(data)
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    generator = QSvgGenerator()
    generator.setOutputDevice(buffer)
    size = widget.size()
    generator.setSize(QSize(size.width(), size.height()))
    generator.setViewBox(QRect(0, 0, size.width(), size.height()))
    generator.setTitle(title)
    painter = QPainter(generator)
    widget.render(painter)
    painter.end()
    buffer.close()
    return bytes(data)


class ResultExports(QObject):
    """The File menu's 'Export predictions (CSV)…' and 'Save plot…' actions."""

    def __init__(self, window) -> None:
        super().__init__(window)
        self.window = window
        self.predictions_action = QAction("Export predictions (CSV)…", window)
        self.predictions_action.setStatusTip(PREDICTIONS_TIP)
        self.predictions_action.setEnabled(False)
        self.predictions_action.triggered.connect(self.ask_predictions)
        self.plot_action = QAction("Save plot as PNG or SVG…", window)
        self.plot_action.setShortcut(QKeySequence("Ctrl+Shift+S"))
        self.plot_action.setStatusTip(PLOT_TIP)
        self.plot_action.triggered.connect(self.ask_plot)
        window.gp_done.connect(lambda _event: self.predictions_action.setEnabled(True))
        window.model.cleared.connect(lambda _why: self.predictions_action.setEnabled(False))

    def _start_dir(self, suffix: str) -> str:
        w = self.window
        return str(w.project_path.with_suffix(suffix) if w.project_path else Path.home() / f"predictions{suffix}")

    def ask_predictions(self) -> None:
        """Ask where to write the CSV, then write it."""
        path, _ = QFileDialog.getSaveFileName(self.window, "Export predictions", self._start_dir(".csv"), "CSV (*.csv)")
        if path:
            self.save_predictions(path if path.lower().endswith(".csv") else f"{path}.csv")

    def save_predictions(self, path: str | Path) -> Path:
        """Write the held-out predictions of the results on screen to ``path``; return it."""
        written = write_atomic(path, predictions_csv(self.window.results).encode())
        self.window._log(f"wrote predictions {written}")
        return written

    def ask_plot(self) -> None:
        """Ask for a PNG or SVG file name, then save the plot on screen."""
        path, chosen = QFileDialog.getSaveFileName(self.window, "Save plot", self._start_dir(".png"),
                                                   "PNG image (*.png);;SVG vector image (*.svg)")
        if path:
            if not path.lower().endswith((".png", ".svg")):
                path += ".svg" if "svg" in chosen.lower() else ".png"
            self.save_plot(path)

    def save_plot(self, path: str | Path, widget: QWidget | None = None) -> Path:
        """Save ``widget`` (default: the plot on screen) as PNG or SVG by the suffix of ``path``; return it."""
        widget = widget or self.window.view.current_plot()
        plot_item = widget.getPlotItem() if hasattr(widget, "getPlotItem") else None
        if plot_item is not None:
            plot_item.hideButtons()  # pyqtgraph's auto-range "A" button is not part of the figure
        try:
            data = plot_svg(widget) if str(path).lower().endswith(".svg") else plot_png(widget)
        finally:
            if plot_item is not None:
                plot_item.showButtons()
        written = write_atomic(path, data)
        self.window._log(f"saved plot {written}")
        return written
