"""`MainWindow`: load an example, adapt it (GP, then fine-tuning) on the worker, watch it live."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QKeySequence
from PySide6.QtWidgets import (QHBoxLayout, QHeaderView, QMainWindow, QMessageBox, QPlainTextEdit, QProgressBar, QPushButton,
                               QSplitter, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget)

from .plots import FitPlot, LossPlot
from .settings_panel import SettingsPanel
from .worker_bridge import WorkerBridge

WINDOW_TITLE = "NTK Studio"
WINDOW_SIZE = (1260, 780)
DEFAULT_EXAMPLE = "sine"
LOG_MAX_LINES = 5000
PROGRESS_STEPS = 1000
GP_SHARE = 0.5  # share of the progress bar given to the GP fit; fine-tuning fills the rest
STATUS_MS = 0  # status messages stay until replaced
TABLE_COLUMNS = ("method", "RMSE", "NLL", "95% coverage")
TABLE_ROWS = {"fit_gp": 0, "finetune": 1}
METHOD_NAMES = {"fit_gp": "linearized GP", "finetune": "fine-tuning"}
TABLE_HEIGHT = 90
BOTTOM_SPLIT = (520, 440)  # loss plot : table and log, in pixels


def _fmt(value) -> str:
    return "—" if value is None or not np.isfinite(value) else f"{value:.3g}"


class MainWindow(QMainWindow):
    """The main window; `loaded`, `gp_done`, `run_finished(ok)` let callers and tests follow a run."""

    loaded = Signal(dict)
    gp_done = Signal(dict)
    run_finished = Signal(bool)

    def __init__(self, example: str = DEFAULT_EXAMPLE, bridge: WorkerBridge | None = None,
                 interactive_errors: bool = True) -> None:
        super().__init__()
        self.setWindowTitle(f"{WINDOW_TITLE} — {example}")
        self.resize(*WINDOW_SIZE)
        self.example = example
        self.interactive_errors = interactive_errors
        self.errors: list[tuple[str, str]] = []  # (message, details) of every error shown
        self.bridge = bridge or WorkerBridge(parent=self)
        self.job: str | None = None  # the job the window waits for
        self._queue: list[str] = []  # commands still to run in this Adapt
        self._stopping = False
        self._loaded_at: int | None = None  # bridge.restarts when the example was last loaded
        self._grid_x: np.ndarray | None = None
        self._epochs_planned = 1
        self._build()
        for name in ("started", "progress", "epoch", "result", "failed", "cancelled"):
            getattr(self.bridge, name).connect(getattr(self, f"_on_{name}"))
        self._start(["load_example"])

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        self.settings = SettingsPanel()
        self.adapt_button = QPushButton("Adapt")
        self.adapt_button.setShortcut(QKeySequence("Ctrl+R"))
        self.adapt_button.setToolTip("Fit the linearized GP, then fine-tune for comparison (Ctrl+R).")
        self.adapt_button.clicked.connect(self.adapt)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setShortcut(QKeySequence(Qt.Key.Key_Escape))
        self.cancel_button.setToolTip("Stop the running job (Esc); a job that does not stop in time is killed.")
        self.cancel_button.clicked.connect(self.cancel)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, PROGRESS_STEPS)
        left = QVBoxLayout()
        left.addWidget(self.settings)
        buttons = QHBoxLayout()
        buttons.addWidget(self.adapt_button)
        buttons.addWidget(self.cancel_button)
        left.addLayout(buttons)
        left.addWidget(self.progress_bar)
        left.addStretch(1)

        self.fit_plot, self.loss_plot = FitPlot(), LossPlot()
        self.table = QTableWidget(len(TABLE_ROWS), len(TABLE_COLUMNS))
        self.table.setHorizontalHeaderLabels(TABLE_COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.setFixedHeight(TABLE_HEIGHT)
        for cmd, row in TABLE_ROWS.items():
            self._set_row(cmd, {})
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(LOG_MAX_LINES)
        self.log.setPlaceholderText("Worker events appear here.")
        bottom = QSplitter(Qt.Orientation.Horizontal)
        bottom.addWidget(self.loss_plot)
        right_bottom = QWidget()
        rb = QVBoxLayout(right_bottom)
        rb.setContentsMargins(0, 0, 0, 0)
        rb.addWidget(self.table)
        rb.addWidget(self.log)
        bottom.addWidget(right_bottom)
        bottom.setSizes(list(BOTTOM_SPLIT))
        right = QSplitter(Qt.Orientation.Vertical)
        right.addWidget(self.fit_plot)
        right.addWidget(bottom)
        right.setStretchFactor(0, 3)
        right.setStretchFactor(1, 2)

        central = QWidget()
        layout = QHBoxLayout(central)
        layout.addLayout(left)
        layout.addWidget(right, 1)
        self.setCentralWidget(central)
        self._set_running(True)

    def _set_running(self, running: bool) -> None:
        self.adapt_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        self.settings.setEnabled(not running)

    def _set_row(self, cmd: str, metrics: dict) -> None:
        row = TABLE_ROWS[cmd]
        cells = (METHOD_NAMES[cmd], _fmt(metrics.get("rmse")), _fmt(metrics.get("nll")),
                 _fmt(metrics.get("coverage95")))
        for col, text in enumerate(cells):
            self.table.setItem(row, col, QTableWidgetItem(text))

    def _log(self, text: str) -> None:
        self.log.appendPlainText(text)

    # ------------------------------------------------------------------ running
    @property
    def running(self) -> bool:
        """Return whether a job of this window is in flight."""
        return self.job is not None

    def adapt(self) -> None:
        """Run fit_gp then finetune with the panel's settings (reloading the example after a restart)."""
        if self.running:
            return
        steps = ["fit_gp", "finetune"]
        if self._loaded_at != self.bridge.restarts:
            steps.insert(0, "load_example")  # a fresh worker has nothing loaded
        self.loss_plot.reset()
        self._epochs_planned = max(1, self.settings.epochs.value())
        self._start(steps)

    def cancel(self) -> None:
        """Ask the running job to stop; the UI goes idle when its last event arrives."""
        if not self.running or self._stopping:
            return
        self._stopping = True
        self._queue.clear()
        self.statusBar().showMessage("Cancelling…", STATUS_MS)
        self.bridge.cancel(self.job)

    def _start(self, steps: list[str]) -> None:
        self._queue, self._stopping = list(steps), False
        self.progress_bar.setValue(0)
        self._set_running(True)
        self._next()

    def _next(self) -> None:
        if not self._queue:
            self._finish(True, "Done.")
            return
        cmd = self._queue.pop(0)
        if cmd == "load_example":
            self.job = self.bridge.load_example(self.example)
        elif cmd == "fit_gp":
            self.job = self.bridge.fit_gp(**self.settings.gp_args())
        else:
            self.job = self.bridge.finetune(**self.settings.finetune_args())
        self.statusBar().showMessage(f"Running {cmd}…", STATUS_MS)
        self._log(f"[{self.job}] submit {cmd}")

    def _finish(self, ok: bool, message: str) -> None:
        self.job, self._queue, self._stopping = None, [], False
        self._set_running(False)
        if ok:
            self.progress_bar.setValue(PROGRESS_STEPS)
        self.statusBar().showMessage(message, STATUS_MS)
        self.run_finished.emit(ok)

    def _mine(self, job: str) -> bool:
        return job == self.job

    # ------------------------------------------------------------------ worker events
    def _on_started(self, job: str, event: dict) -> None:
        if self._mine(job):
            self._log(f"[{job}] started {event.get('cmd', '')}")

    def _on_progress(self, job: str, event: dict) -> None:
        if not self._mine(job):
            return
        frac = event.get("progress")
        if frac is not None:
            self.progress_bar.setValue(int(PROGRESS_STEPS * GP_SHARE * min(max(frac, 0.0), 1.0)))
        self._log(f"[{job}] {event.get('stage', '')}: {event.get('message') or ''}".rstrip(": "))

    def _on_epoch(self, job: str, event: dict) -> None:
        if not self._mine(job):
            return
        n, loss = event.get("epoch", 0), event.get("train_loss")
        pred = event.get("grid_pred")
        if pred is not None and self._grid_x is not None and len(pred) == len(self._grid_x):
            self.fit_plot.set_curve("pretrained" if n == 0 else "finetuned", self._grid_x, np.asarray(pred, float))
        if loss is not None:
            self.loss_plot.add_point(n, loss)
        share = min(n / self._epochs_planned, 1.0)
        self.progress_bar.setValue(int(PROGRESS_STEPS * (GP_SHARE + (1 - GP_SHARE) * share)))
        self._log(f"[{job}] epoch {n}  train loss {_fmt(loss)}")

    def _on_result(self, job: str, event: dict) -> None:
        if not self._mine(job):
            return
        cmd = self.bridge.command_of(job)
        if cmd == "load_example":
            self._loaded_at = self.bridge.restarts
            self._log(f"[{job}] loaded '{event.get('name')}': {event.get('description', '')}")
            self.loaded.emit(event)
        elif cmd == "fit_gp":
            self._show_gp(event)
        elif cmd == "finetune":
            self._show_finetune(event)
        if self._stopping:
            self._finish(True, "Stopped after the job finished.")
        else:
            self._next()

    def _show_gp(self, event: dict) -> None:
        if event.get("x") is not None:
            self._grid_x = np.asarray(event["x"], float)
            mean, std = np.asarray(event["mean"], float).ravel(), np.asarray(event["std"], float).ravel()
            self.fit_plot.set_gp(self._grid_x, mean, std)
            self._show_known(event)
        self._set_row("fit_gp", event.get("metrics", {}))
        self._log(f"[{self.job}] GP route {event.get('route')}, s² = {_fmt(event.get('prior_var'))}, "
                  f"σ² = {_fmt(event.get('noise'))}, {_fmt(event.get('wall_time'))} s")
        self.gp_done.emit(event)

    def _show_known(self, event: dict) -> None:
        """Plot the labelled points and the true function when the worker sends them."""
        if event.get("train_x") is not None and event.get("train_y") is not None:
            self.fit_plot.set_curve("train", np.asarray(event["train_x"], float).ravel(),
                                    np.asarray(event["train_y"], float).ravel())
        if event.get("truth") is not None:
            self.fit_plot.set_curve("truth", self._grid_x, np.asarray(event["truth"], float).ravel())

    def _show_finetune(self, event: dict) -> None:
        if event.get("grid_pred") is not None and self._grid_x is not None:
            self.fit_plot.set_curve("finetuned", self._grid_x, np.asarray(event["grid_pred"], float).ravel())
        self._set_row("finetune", event.get("metrics", {}))
        self._log(f"[{self.job}] fine-tuned {event.get('epochs_run')} epochs, test loss "
                  f"{_fmt(event.get('test_loss'))}, {_fmt(event.get('wall_time'))} s")

    def _on_cancelled(self, job: str, event: dict) -> None:
        if self._mine(job):
            how = "killed" if event.get("hard") else "stopped"
            self._log(f"[{job}] cancelled ({how})")
            self._finish(False, f"Cancelled ({how}).")

    def _on_failed(self, job: str, event: dict) -> None:
        if not self._mine(job):
            return
        kind, message = event.get("error_type", "Error"), event.get("message", "")
        self._log(f"[{job}] {kind}: {message}")
        self._finish(False, f"{kind}: {message}")
        self.show_error(kind, message, event.get("details", ""))

    def show_error(self, title: str, message: str, details: str = "") -> None:
        """Record an error and, in interactive mode, show it in a message box with the details."""
        self.errors.append((message, details))
        if not self.interactive_errors:
            return
        box = QMessageBox(QMessageBox.Icon.Critical, f"{WINDOW_TITLE}: {title}", message, parent=self)
        if details:
            box.setDetailedText(details)
        box.exec()

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt override
        """Shut the worker down with the window."""
        self.bridge.shutdown()
        super().closeEvent(event)
