"""`MainWindow`: panels on the left, results on the right, every computation on the worker process.

Work is organised in chains of worker jobs: a *load* chain (example, model file, data file, project),
a *run* chain (Adapt: GP fit, GD trajectory, fine-tuning) and quiet *plan* jobs (the route estimate).
One job runs at a time; a chain asked for while a plan job is in flight starts when it ends.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from PySide6.QtCore import QByteArray, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (QHBoxLayout, QMainWindow, QMessageBox, QProgressBar, QPushButton,
                               QScrollArea, QTabWidget, QVBoxLayout, QWidget)

from .defaults import EXAMPLE_DEFAULTS
from .eta import eta_seconds, format_eta
from .export_action import Exporter
from .file_actions import STATUS_MS, FileActions
from .panels.data_panel import DataPanel
from .panels.method_panel import GRID_POINTS, MethodPanel
from .panels.model_panel import ModelPanel
from .project import Project
from .recent import SPLITTER_KEY, Store
from .results_view import ResultsView
from .session import Inputs, file_kind
from .throttle import PlotThrottle
from .worker_bridge import WorkerBridge

log = logging.getLogger("ntk_studio.app")

WINDOW_TITLE = "NTK Studio"
WINDOW_SIZE = (1280, 800)
DEFAULT_EXAMPLE = "sine"
PROGRESS_STEPS = 1000
PANEL_WIDTH = 340
PLAN_DELAY_MS = 300  # settings edits are coalesced before the route estimate is asked for
STEP_WEIGHTS = {"fit_gp": 0.45, "trajectory": 0.05, "finetune": 0.5, "export": 1.0}  # share of the progress bar per run step
LOAD_COMMANDS = ("load_example", "load_model", "load_data")


class MainWindow(FileActions, QMainWindow):
    """The main window; `loaded`, `gp_done`, `run_finished(ok)`, `plan_shown` let callers and tests follow it."""

    loaded = Signal(dict)
    gp_done = Signal(dict)
    run_finished = Signal(bool)
    plan_shown = Signal(dict)

    def __init__(self, example: str | None = DEFAULT_EXAMPLE, bridge: WorkerBridge | None = None,
                 interactive_errors: bool = True, store: Store | None = None, project: str | None = None) -> None:
        super().__init__()
        self.interactive_errors = interactive_errors
        self.errors: list[tuple[str, str]] = []  # (message, details) of every error shown
        self.store = store if store is not None else Store()
        self.bridge = bridge or WorkerBridge(parent=self)
        self.inputs = Inputs()
        self.results: dict[str, dict] = {}
        self.project_path: Path | None = None
        self.session: dict[str, Any] = {}
        self.job: str | None = None
        self._chain: str | None = None  # "load" | "run" | "plan" | "export"
        self._queue: list[dict[str, Any]] = []
        self._deferred: tuple[str, list[dict[str, Any]]] | None = None
        self._stopping = False
        self._loaded_at: int | None = None  # bridge.restarts when the worker last got our inputs
        self._pending_project: Project | None = None
        self._plan_dirty = False
        self._weights: dict[str, tuple[float, float]] = {}
        self._run_start = 0.0
        self._epochs_planned = 1
        self.throttle = PlotThrottle(self)
        self._build()
        self.exporter = Exporter(self)
        self._build_menus()
        self._set_busy(True)
        self._restore_geometry()
        self._plan_timer = QTimer(self)
        self._plan_timer.setSingleShot(True)
        self._plan_timer.setInterval(PLAN_DELAY_MS)
        self._plan_timer.timeout.connect(self.request_plan)
        for name in ("started", "progress", "epoch", "result", "failed", "cancelled"):
            getattr(self.bridge, name).connect(getattr(self, f"_on_{name}"))
        self.method_panel.ranks_changed.connect(self._use_ranks)
        for signal in (self.model_panel.params_changed, self.data_panel.split_changed,
                       self.method_panel.settings_changed):
            signal.connect(self._plan_timer.start)
        self.setAcceptDrops(True)
        self._update_title()
        if project is not None:
            self.open_project(project)
        elif example is not None:
            self.load_example(example)

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        self.data_panel, self.model_panel, self.method_panel = DataPanel(), ModelPanel(), MethodPanel()
        self.data_panel.example_requested.connect(self.load_example)
        self.data_panel.open_requested.connect(self._ask_data)
        self.data_panel.open_folder_requested.connect(self._ask_folder)
        self.data_panel.columns_chosen.connect(self.open_data)
        self.model_panel.open_requested.connect(self._ask_model)
        self.panels = QTabWidget()
        for panel, name in ((self.data_panel, "Data"), (self.model_panel, "Model"), (self.method_panel, "Method")):
            scroll = QScrollArea()
            scroll.setWidgetResizable(True)
            scroll.setWidget(panel)
            self.panels.addTab(scroll, name)
        self.adapt_button = QPushButton("Adapt")
        self.adapt_button.setToolTip("Fit the linearized GP, then fine-tune the same parameters for comparison (Ctrl+R).")
        self.adapt_button.clicked.connect(self.adapt)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the running job (Esc); a job that does not stop within 2 s is killed and "
                                      "the worker restarted.")
        self.cancel_button.clicked.connect(self.cancel)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, PROGRESS_STEPS)
        self.progress_bar.setToolTip("Progress of the whole run, with the estimated time left.")
        buttons = QHBoxLayout()
        buttons.addWidget(self.adapt_button)
        buttons.addWidget(self.cancel_button)
        left = QVBoxLayout()
        left.addWidget(self.panels, 1)
        left.addLayout(buttons)
        left.addWidget(self.progress_bar)
        left_widget = QWidget()
        left_widget.setLayout(left)
        left_widget.setFixedWidth(PANEL_WIDTH)
        self.view = ResultsView(self.throttle)
        central = QWidget()
        layout = QHBoxLayout(central)
        layout.addWidget(left_widget)
        layout.addWidget(self.view, 1)
        self.setCentralWidget(central)

    def _action(self, menu, text: str, slot, shortcut: str | QKeySequence.StandardKey | None = None,
                tip: str = "") -> QAction:
        action = QAction(text, self)
        if shortcut is not None:
            action.setShortcut(QKeySequence(shortcut))
        action.setStatusTip(tip)
        action.triggered.connect(slot)
        menu.addAction(action)
        return action

    def _build_menus(self) -> None:
        bar = self.menuBar()
        file = bar.addMenu("&File")
        self._action(file, "Open project…", self._ask_project, QKeySequence.StandardKey.Open, "Open a .ntkproj project")
        self.recent_menu = file.addMenu("Open recent")
        self.recent_menu.aboutToShow.connect(self._fill_recent)
        self._action(file, "Save project", self.save, QKeySequence.StandardKey.Save, "Save inputs, settings, results")
        self._action(file, "Save project as…", self._ask_save_as, QKeySequence.StandardKey.SaveAs)
        file.addSeparator()
        self._action(file, "Open model file…", self._ask_model, "Ctrl+M")
        self._action(file, "Open data file…", self._ask_data, "Ctrl+D")
        file.addSeparator()
        file.addAction(self.exporter.action)
        file.addSeparator()
        self._action(file, "Quit", self.close, QKeySequence.StandardKey.Quit)
        edit = bar.addMenu("&Edit")
        edit.addAction(self.view.table.copy_action)
        run = bar.addMenu("&Run")
        self.adapt_action = self._action(run, "Adapt", self.adapt, "Ctrl+R", "Fit the GP, then fine-tune")
        self.cancel_action = self._action(run, "Cancel", self.cancel, Qt.Key.Key_Escape, "Stop the running job")
        examples = bar.addMenu("E&xamples")
        for i, name in enumerate(EXAMPLE_DEFAULTS, start=1):
            self._action(examples, name, self._example_action, f"Ctrl+{i}").setData(name)

    def _restore_geometry(self) -> None:
        # The window geometry is restored by startup.decorate (the app's settings file); this is the default.
        self.resize(*WINDOW_SIZE)
        splitter = self.store.get_bytes(SPLITTER_KEY)
        if splitter is not None:
            self.view.splitter.restoreState(QByteArray(splitter))

    def _update_title(self) -> None:
        name = self.project_path.name if self.project_path else self.inputs.title
        self.setWindowTitle(f"{WINDOW_TITLE} — {name}")

    def _set_busy(self, busy: bool) -> None:
        ready = not busy and self._ready()
        self.adapt_button.setEnabled(ready)
        self.adapt_action.setEnabled(ready)
        self.cancel_button.setEnabled(busy)
        self.panels.setEnabled(not busy)

    def _ready(self) -> bool:
        model = self.session.get("model")
        return bool(model and self.session.get("data") and not model.get("mismatch") and self.model_panel.spec())

    def _log(self, text: str) -> None:
        self.view.append_log(text)
        log.info(text)  # the rotating log file (ntk_studio.logs) keeps what the panel shows, for bug reports

    # ------------------------------------------------------------------ user actions
    @property
    def running(self) -> bool:
        """Return whether a load or run chain is in flight (quiet plan jobs do not count)."""
        return self.job is not None and self._chain != "plan"

    def load_example(self, name: str) -> None:
        """Load a built-in example (model and data) in the worker."""
        self._start("load", [{"cmd": "load_example", "args": {"name": name}, "defaults": True}])

    def open_model(self, path: str, arch: str | None = None, trust_pickle: bool | None = None) -> None:
        """Load a model file in the worker (the data stays)."""
        arch = arch if arch is not None else (self.model_panel.arch.text().strip() or None)
        trust = self.model_panel.trust.isChecked() if trust_pickle is None else trust_pickle
        self._start("load", [{"cmd": "load_model", "args": {"path": str(path), "arch": arch, "trust_pickle": trust}}])

    def open_data(self, path: str, target: str | None = None, features: list[str] | None = None,
                  classification: bool = False) -> None:
        """Load a data file; a table first answers with its columns for the user to choose."""
        args = {"path": str(path), "target": target, "features": features, "classification": classification}
        self._start("load", [{"cmd": "load_data", "args": args}])

    def open_path(self, path: str) -> bool:
        """Open a project, model or data file by its kind; return False for a file of unknown kind."""
        kind = file_kind(path, Path(path).is_dir())
        if kind == "project":
            self.open_project(path)
        elif kind == "model":
            self.open_model(path)
        elif kind == "data":
            self.open_data(path)
        return kind is not None

    def adapt(self) -> None:
        """Run the GP fit, the GD trajectory (regression) and fine-tuning with the panels' settings."""
        if self.running or not self._ready():
            return
        common = {"params": self.model_panel.spec(), **self.data_panel.values()}
        m = self.method_panel.values()
        gp = {**common, "prior_var": m["prior_var"], "noise": m["noise"], "fit_hyper": m["fit_hyper"],
              "space": m["space"], "solver": m["solver"], "device": m["device"], "grid_points": GRID_POINTS}
        ft = {**common, "epochs": m["epochs"], "lr": m["lr"], "batch_size": m["batch_size"], "device": m["device"],
              "grid_points": GRID_POINTS}
        steps = [{"cmd": "fit_gp", "args": gp}]
        if self.session.get("task") != "classification":
            steps.append({"cmd": "trajectory", "args": {**common, "grid_points": GRID_POINTS}})
        steps.append({"cmd": "finetune", "args": ft})
        self._epochs_planned = max(1, m["epochs"])
        total = sum(STEP_WEIGHTS[s["cmd"]] for s in steps)
        offset = 0.0
        for s in steps:
            self._weights[s["cmd"]] = (offset / total, STEP_WEIGHTS[s["cmd"]] / total)
            offset += STEP_WEIGHTS[s["cmd"]]
        self.results = {"settings": self.settings()}
        self.view.loss_plot.reset(self._epochs_planned)
        self._start("run", steps)

    def cancel(self) -> None:
        """Ask the running job to stop; the UI goes idle when its last event arrives."""
        if not self.running or self._stopping:
            return
        self._stopping = True
        self._queue.clear()
        self.throttle.discard()
        self.statusBar().showMessage("Cancelling…", STATUS_MS)
        self.bridge.cancel(self.job)

    def _use_ranks(self, ranks: int) -> None:
        if self.running:  # switching would kill the job: keep the running worker
            self.method_panel.ranks.blockSignals(True)
            self.method_panel.ranks.setValue(self.bridge.ranks)
            self.method_panel.ranks.blockSignals(False)
            self.statusBar().showMessage("Finish or cancel the run before changing worker processes.", STATUS_MS)
            return
        self.bridge.use_ranks(ranks)
        if self._chain == "plan":  # its answer would come from the worker just replaced
            self._finish(True, "")
        self._log(f"worker restarted as {ranks} data-parallel process{'es' if ranks > 1 else ''}; "
                  "inputs are reloaded with the next job")

    def request_plan(self) -> None:
        """Ask the worker for the route estimate of the current settings (when idle and ready)."""
        if not self._ready():
            return
        if self.job is not None:
            self._plan_dirty = True
            return
        args = {"params": self.model_panel.spec(), **self.data_panel.values(),
                "space": self.method_panel.space.currentText(), "solver": self.method_panel.solver.currentText()}
        self._start("plan", [{"cmd": "plan", "args": args}])

    # ------------------------------------------------------------------ chains
    def _start(self, kind: str, steps: list[dict[str, Any]]) -> None:
        if self.job is not None:
            if self._chain == "plan" and kind != "plan":
                self._deferred = (kind, steps)  # after the quick plan job
            return
        restarted = self._loaded_at is not None and self._loaded_at != self.bridge.restarts
        if restarted and self.inputs.load_steps() and steps[0]["cmd"] != "load_example":
            if kind == "plan":
                return  # the next load or run gives the fresh worker our inputs first
            # A fresh worker has nothing loaded: give it our inputs first.
            steps = [{"cmd": c, "args": a, "restore": True} for c, a in self.inputs.load_steps()] + steps
        self._chain, self._queue, self._stopping = kind, list(steps), False
        if kind != "plan":
            self._run_start = time.monotonic()
            self.progress_bar.setValue(0)
            self.progress_bar.setFormat("%p%")
            self._set_busy(True)
        self._next()

    def _next(self) -> None:
        if not self._queue:
            self._finish(True, "Ready." if self._chain == "load" else "Done.")
            return
        step = self._queue.pop(0)
        self._step = step
        self.job = self.bridge.submit(step["cmd"], **step["args"])
        if self._chain != "plan":
            self.statusBar().showMessage(f"Running {step['cmd']}…", STATUS_MS)
            self._log(f"[{self.job}] submit {step['cmd']}")

    def _finish(self, ok: bool, message: str) -> None:
        chain = self._chain
        self.job, self._chain, self._queue, self._stopping = None, None, [], False
        if chain == "plan":
            self._after_idle()
            return
        self.throttle.flush()
        project, self._pending_project = self._pending_project, None
        if ok and project is not None:
            self._finish_project(project)
        self._set_busy(False)
        if ok:
            self.progress_bar.setValue(PROGRESS_STEPS)
            self.progress_bar.setFormat("%p%")
        self.statusBar().showMessage(message, STATUS_MS)
        self.run_finished.emit(ok)
        self._plan_dirty = self._plan_dirty or (ok and chain == "load")
        self._after_idle()

    def _after_idle(self) -> None:
        if self.job is not None:
            return
        if self._deferred is not None:
            kind, steps = self._deferred
            self._deferred = None
            self._start(kind, steps)
        elif self._plan_dirty:
            self._plan_dirty = False
            self.request_plan()

    def _mine(self, job: str) -> bool:
        return job == self.job

    def _progress(self, cmd: str, fraction: float) -> None:
        offset, share = self._weights.get(cmd, (0.0, 1.0))
        total = min(max(offset + share * min(max(fraction, 0.0), 1.0), 0.0), 1.0)
        self.progress_bar.setValue(int(PROGRESS_STEPS * total))
        eta = format_eta(eta_seconds(total, time.monotonic() - self._run_start))
        self.progress_bar.setFormat(f"%p%  ·  {eta} left" if eta else "%p%")

    # ------------------------------------------------------------------ worker events
    def _on_started(self, job: str, event: dict) -> None:
        if self._mine(job) and self._chain != "plan":
            self._log(f"[{job}] started {event.get('cmd', '')}")

    def _on_progress(self, job: str, event: dict) -> None:
        if not self._mine(job) or self._chain not in ("run", "export"):
            return
        if event.get("progress") is not None:
            self._progress(self._step["cmd"], float(event["progress"]))
        self._log(f"[{job}] {event.get('stage', '')}: {event.get('message') or ''}".rstrip(": "))

    def _on_epoch(self, job: str, event: dict) -> None:
        if not self._mine(job):
            return
        self.view.show_epoch(event)
        self._progress("finetune", int(event.get("epoch", 0)) / self._epochs_planned)

    def _on_result(self, job: str, event: dict) -> None:
        if not self._mine(job):
            return
        step = self._step
        cmd = step["cmd"]
        if cmd == "plan":
            self.method_panel.show_estimate(event)
            self.plan_shown.emit(event)
        elif cmd in LOAD_COMMANDS:
            self._loaded(step, event)
        else:
            self.results[cmd] = event
            self._show(cmd, event)
        if self._stopping and self._chain != "plan":
            self._finish(True, "Stopped after the job finished.")
        else:
            self._next()

    def _show(self, cmd: str, event: dict) -> None:
        if cmd == "fit_gp":
            self.view.show_gp(event)
            noise = f", σ² = {event['noise']:.4g}" if event.get("noise") is not None else ""
            self._log(f"GP route {event.get('route')}, s² = {float(event.get('prior_var') or 0):.4g}{noise}, "
                      f"{float(event.get('wall_time') or 0):.3g} s")
            self.gp_done.emit(event)
        elif cmd == "trajectory":
            self.view.show_trajectory(event)
        elif cmd == "export":
            self.exporter.show(event)
        elif cmd == "finetune":
            self.view.show_finetune(event)
            self._log(f"fine-tuned {event.get('epochs_run')} epochs, test loss {event.get('test_loss')}, "
                      f"{float(event.get('wall_time') or 0):.3g} s")

    def _loaded(self, step: dict, event: dict) -> None:
        cmd, args = step["cmd"], step["args"]
        self._loaded_at = self.bridge.restarts
        if cmd == "load_data" and event.get("needs_columns"):
            self.data_panel.show_columns(event["path"], event["columns"], event["preview_header"], event["preview"])
            self.panels.setCurrentIndex(0)
            self._log(f"{event['path']}: choose the columns")
            return
        if not step.get("restore"):
            self._record_input(step, event)
        previous_data = (self.session.get("data") or {}).get("sha256"), (self.session.get("data") or {}).get("source")
        session = self.session = event.get("session") or {}
        data, model = session.get("data"), session.get("model")
        if model:
            from_file = cmd != "load_example" and self.inputs.model
            source = Path(self.inputs.model["path"]).name if from_file else f"example '{session.get('example')}'"
            self.model_panel.show_model(model, source)
        if data:
            self.data_panel.show_data(data)
            if (data.get("sha256"), data.get("source")) != previous_data or cmd == "load_example":
                one_d = len(data["feature_names"]) == 1 and len(data["input_shape"]) == 1
                feature = data["feature_names"][0] if one_d else "x"
                self.view.set_data(data["task"], one_d, feature, data["target_name"], data["class_names"])
        self.method_panel.set_devices(session.get("devices") or ["cpu"])
        self.method_panel.set_task(session.get("task", "regression"))
        if step.get("defaults") and args.get("name") in EXAMPLE_DEFAULTS:
            self.apply_settings(EXAMPLE_DEFAULTS[args["name"]])
        if model and model.get("mismatch"):
            self._log(f"warning: the model does not fit the data: {model['mismatch']}")
        self._log(f"[{self.job}] loaded {cmd.removeprefix('load_')}: {event.get('description') or event.get('path', '')}")
        self._update_title()
        self.loaded.emit(event)

    def _record_input(self, step: dict, event: dict) -> None:
        cmd, args, expected = step["cmd"], step["args"], None
        if cmd == "load_example":
            self.inputs = Inputs(example=args["name"])
            if not step.get("project"):
                self.project_path = None  # a new session, no longer the project's
            return
        if cmd == "load_model":
            expected = (self.inputs.model or {}).get("sha256") if self._pending_project is None else \
                (self._pending_project.inputs.model or {}).get("sha256")
            self.inputs.model = {**args, "sha256": event.get("sha256")}
        elif cmd == "load_data":
            expected = None if self._pending_project is None else (self._pending_project.inputs.data or {}).get("sha256")
            self.inputs.data = {**args, "sha256": event.get("sha256")}
        if self._pending_project is not None and expected and expected != event.get("sha256"):
            self._log(f"warning: {event.get('path')} changed since the project was saved (SHA-256 differs); "
                      "the results shown are the saved ones.")

    def _on_cancelled(self, job: str, event: dict) -> None:
        if self._mine(job):
            how = "killed" if event.get("hard") else "stopped"
            self._log(f"[{job}] cancelled ({how})")
            self._finish(False, f"Cancelled ({how}).")

    def _on_failed(self, job: str, event: dict) -> None:
        if not self._mine(job):
            return
        kind, message = event.get("error_type", "Error"), event.get("message", "")
        quiet = self._chain == "plan"
        self._log(f"[{job}] {kind}: {message}")
        self._pending_project = None
        self._finish(False, f"{kind}: {message}")
        if quiet:  # an estimate that cannot be made says why in its place, not in a dialog
            self.method_panel.estimate.setText(f"⚠ {message}")
        else:
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
        """Remember the plot layout and shut the worker down with the window."""
        self.store.set_bytes(SPLITTER_KEY, self.view.splitter.saveState().data())
        self.bridge.shutdown()
        super().closeEvent(event)

