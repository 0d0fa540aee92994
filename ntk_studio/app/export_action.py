"""File → Export adapted model: the worker writes the last fit as a verified ONNX file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QFileDialog

from .numbers import fmt, fmt_bytes, fmt_seconds

EXPORT_SHORTCUT = "Ctrl+E"
EXPORT_TIP = ("Write the adapted model (mean and variance, raw inputs, any batch size) as ONNX; the worker "
              "checks the file against these predictions at batch sizes 1, 7 and 1000 before it reports done")


class Exporter(QObject):
    """Owns the export action: enabled after a fit, disabled when new inputs are loaded."""

    exported = Signal(dict)  # the worker's export report

    def __init__(self, window) -> None:
        super().__init__(window)
        self.window = window
        self.action = QAction("Export adapted model (ONNX)…", window)
        self.action.setShortcut(QKeySequence(EXPORT_SHORTCUT))
        self.action.setStatusTip(EXPORT_TIP)
        self.action.setToolTip(EXPORT_TIP)
        self.action.setEnabled(False)
        self.action.triggered.connect(self.ask)
        window.gp_done.connect(lambda _event: self.action.setEnabled(True))
        window.loaded.connect(lambda _event: self.action.setEnabled(False))

    def ask(self) -> None:
        """Ask where to write the file, then export."""
        start = self.window.project_path.with_suffix(".onnx") if self.window.project_path else Path.home() / "adapted.onnx"
        path, _ = QFileDialog.getSaveFileName(self.window, "Export adapted model", str(start), "ONNX model (*.onnx)")
        if path:
            self.export(path if path.endswith(".onnx") else f"{path}.onnx")

    def export(self, path: str | Path, native: str | Path | None = None, dtype: str = "float64") -> bool:
        """Start the export job for the current split; return False when a job is already running."""
        w = self.window
        if w.running:
            return False
        args: dict[str, Any] = {**w.data_panel.values(), "onnx": str(path),
                                "native": None if native is None else str(native), "dtype": dtype}
        w._start("export", [{"cmd": "export", "args": args}])
        return True

    def show(self, event: dict) -> None:
        """Log the verified export and tell listeners."""
        self.window._log(f"exported {event.get('onnx')} ({fmt_bytes(event.get('onnx_bytes') or 0)}, "
                         f"{event.get('dtype')}, posterior rank {event.get('posterior_rank')}); checked at batch sizes "
                         f"1, 7, 1000: max relative error {fmt(float(event.get('max_relative_error') or 0.0), digits=2)}; "
                         f"{fmt_seconds(event.get('seconds') or 0)}")
        self.exported.emit(event)
