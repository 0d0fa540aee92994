"""`MainWindow`: panels on the left, results on the right, every computation on the worker process.

The job chains and their state live in :class:`~ntk_studio.app.run_model.RunModel` (no Qt); this
module lays out the widgets, turns user actions into model calls and renders what the model tells.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from PySide6.QtCore import QByteArray, QEvent, QObject, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (QApplication, QHBoxLayout, QMainWindow, QMessageBox, QProgressBar, QPushButton,
                               QScrollArea, QSplitter, QTabWidget, QVBoxLayout, QWidget)

from .defaults import EXAMPLE_DEFAULTS
from .export_action import Exporter
from .file_actions import STATUS_MS, FileActions
from .numbers import fmt, fmt_seconds
from .panels.data_panel import DataPanel
from .panels.method_panel import GRID_POINTS, MethodPanel
from .panels.model_panel import ModelPanel
from .project import Project
from .recent import SPLITTER_KEY, Store
from .result_exports import ResultExports
from .results_view import ResultsView
from .run_model import Progress, RunModel
from .session import Inputs, file_kind
from .throttle import PlotThrottle
from .worker_bridge import WorkerBridge

log = logging.getLogger("ntk_studio.app")

WINDOW_TITLE = "NTK Studio"
WINDOW_SIZE = (1280, 800)
MIN_SIZE = (1024, 640)  # every widget stays legible down to this size
DEFAULT_EXAMPLE = "sine"
PROGRESS_STEPS = 1000
PANEL_MIN_WIDTH = 300
MAIN_SPLIT = (360, 920)  # left panels : results, in pixels, until the user moves the handle
MAIN_SPLITTER_KEY = "main_splitter"
PLAN_DELAY_MS = 300  # settings edits are coalesced before the route estimate is asked for
TICK_MS = 1000  # the progress text's clock (time left, or time elapsed in a stage without reports)


class EscapeCancels(QObject):
    """Esc cancels a run from any widget of the window, also one that takes Esc for itself.

    The Run → Cancel action's shortcut covers most of the window; a focus widget that accepts
    Esc as a shortcut override (and so swallows the action's shortcut) still gets the key press,
    which this filter turns into the same cancel. Popups (menus, combo lists) are other windows:
    Esc still closes them.
    """

    def __init__(self, window: MainWindow) -> None:
        super().__init__(window)
        self.window = window

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt override
        """Turn an Esc key press inside the window into a cancel while a chain runs."""
        if (event.type() == QEvent.Type.KeyPress and event.key() == Qt.Key.Key_Escape and self.window.running
                and isinstance(obj, QWidget) and obj.window() is self.window):
            self.window.cancel()
            return True
        return False


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
        self.ask_before_close = interactive_errors  # closing with unsaved results asks (not in scripted runs)
        self.errors: list[tuple[str, str]] = []  # (message, details) of every error shown
        self.store = store if store is not None else Store()
        self.bridge = bridge or WorkerBridge(parent=self)
        self.model = RunModel(self.bridge)
        self.project_path: Path | None = None
        self.session: dict[str, Any] = {}
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
        self._tick = QTimer(self)
        self._tick.setInterval(TICK_MS)
        self._tick.timeout.connect(self.model.tick)
        self._connect_model()
        self._escape = EscapeCancels(self)
        QApplication.instance().installEventFilter(self._escape)
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
        self.cancel_button.setToolTip("Stop the running job at any stage (Esc); a job that does not stop within 2 s "
                                      "is killed and the worker restarted.")
        self.cancel_button.clicked.connect(self.cancel)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, PROGRESS_STEPS)
        self.progress_bar.setFormat("")
        self.progress_bar.setToolTip("Progress of the whole run, with the estimated time left.")
        buttons = QHBoxLayout()
        buttons.addWidget(self.adapt_button)
        buttons.addWidget(self.cancel_button)
        left = QVBoxLayout()
        left.setContentsMargins(0, 0, 0, 0)
        left.addWidget(self.panels, 1)
        left.addLayout(buttons)
        left.addWidget(self.progress_bar)
        left_widget = QWidget()
        left_widget.setLayout(left)
        left_widget.setMinimumWidth(PANEL_MIN_WIDTH)
        self.view = ResultsView(self.throttle)
        self.view.example_selected.connect(self.data_panel.select_row)
        self.main_splitter = QSplitter(Qt.Orientation.Horizontal)
        self.main_splitter.addWidget(left_widget)
        self.main_splitter.addWidget(self.view)
        self.main_splitter.setStretchFactor(0, 0)
        self.main_splitter.setStretchFactor(1, 1)
        self.main_splitter.setChildrenCollapsible(False)
        self.main_splitter.setSizes(list(MAIN_SPLIT))
        central = QWidget()
        layout = QVBoxLayout(central)
        layout.setContentsMargins(6, 6, 6, 0)
        layout.addWidget(self.main_splitter)
        self.setCentralWidget(central)
        self.setMinimumSize(*MIN_SIZE)

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
        self.exports = ResultExports(self)
        file.addAction(self.exports.predictions_action)
        file.addAction(self.exports.plot_action)
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
        for key, splitter in ((SPLITTER_KEY, self.view.splitter), (MAIN_SPLITTER_KEY, self.main_splitter)):
            state = self.store.get_bytes(key)
            if state is not None:
                splitter.restoreState(QByteArray(state))

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

    # ------------------------------------------------------------------ run model
    @property
    def running(self) -> bool:
        """Return whether a load, run or export chain is in flight (quiet plan jobs do not count)."""
        return self.model.running

    @property
    def job(self) -> str | None:
        """Return the id of the worker job in flight (None when idle)."""
        return self.model.job

    @property
    def inputs(self) -> Inputs:
        """Return what the user has loaded (held by the run model)."""
        return self.model.inputs

    @inputs.setter
    def inputs(self, value: Inputs) -> None:
        self.model.inputs = value

    @property
    def results(self) -> dict[str, Any]:
        """Return the last run's results as a project stores them."""
        return self.model.results

    @results.setter
    def results(self, value: dict[str, Any]) -> None:
        self.model.set_results(value)

    @property
    def _pending_project(self) -> Project | None:
        return self.model.pending_project

    @_pending_project.setter
    def _pending_project(self, project: Project | None) -> None:
        self.model.pending_project = project

    def _start(self, kind: str, steps: list[dict[str, Any]]) -> None:
        self.model.start(kind, steps)

    def _connect_model(self) -> None:
        m = self.model
        for name in ("started", "progress", "epoch", "result", "failed", "cancelled", "warning"):
            getattr(self.bridge, name).connect(lambda _job, event: self.model.handle(event))
        m.busy_changed.connect(lambda busy: busy and self._set_busy(True))
        m.progress_changed.connect(self._show_progress)
        m.logged.connect(self._log)
        m.status.connect(lambda text: self.statusBar().showMessage(text, STATUS_MS))
        m.cleared.connect(self._clear_results)
        m.loaded.connect(self._loaded)
        m.columns_needed.connect(self._columns_needed)
        m.result.connect(lambda cmd, record: self._show(cmd, record.payload))
        m.planned.connect(self._planned)
        m.epoch.connect(lambda record: self.view.show_epoch(record.payload))
        m.finished.connect(self._finished)
        m.failed.connect(self._failed)
        m.plan_due.connect(self.request_plan)
        m.warned.connect(lambda text: self.statusBar().showMessage(text, STATUS_MS))

    # ------------------------------------------------------------------ user actions
    def load_example(self, name: str) -> None:
        """Load a built-in example (model and data) in the worker."""
        self._start("load", [{"cmd": "load_example", "args": {"name": name}, "defaults": True}])

    def open_model(self, path: str, arch: str | None = None, trust_pickle: bool | None = None) -> None:
        """Load a model file in the worker (the data stays)."""
        arch = arch if arch is not None else (self.model_panel.arch.text().strip() or None)
        trust = self.model_panel.trust.isChecked() if trust_pickle is None else trust_pickle
        self._start("load", [{"cmd": "load_model", "args": {"path": str(path), "arch": arch, "trust_pickle": trust}}])

    def open_data(self, path: str, target: str | None = None, features: list[str] | None = None,
                  classification: bool = False, task: str | None = None) -> None:
        """Load a data file as ``task`` (default: the Data tab's choice); a table first answers with its columns."""
        task = task or ("classification" if classification else self.data_panel.task())
        args = {"path": str(path), "target": target, "features": features, "task": task}
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
        if gp["noise"] is None:  # 'auto': the worker's own default (σ² from the adaptation targets' variance)
            del gp["noise"]
        ft = {**common, "epochs": m["epochs"], "lr": m["lr"], "batch_size": m["batch_size"], "device": m["device"],
              "grid_points": GRID_POINTS}
        steps = [{"cmd": "fit_gp", "args": gp}]
        if self.session.get("task") != "classification":
            steps.append({"cmd": "trajectory", "args": {**common, "grid_points": GRID_POINTS}})
        steps.append({"cmd": "finetune", "args": ft})
        if self.model.run(steps, self.settings(), m["epochs"]):  # clears the previous results first
            self.view.loss_plot.reset(max(1, m["epochs"]))  # then fixes the epoch axis to this run

    def cancel(self) -> None:
        """Stop the running chain at whatever stage it is (Esc, the Cancel button, Run → Cancel)."""
        if self.model.cancel():
            self.throttle.discard()

    def _use_ranks(self, ranks: int) -> None:
        if self.running:  # switching would kill the job: keep the running worker
            self.method_panel.ranks.blockSignals(True)
            self.method_panel.ranks.setValue(self.bridge.ranks)
            self.method_panel.ranks.blockSignals(False)
            self.statusBar().showMessage("Finish or cancel the run before changing worker processes.", STATUS_MS)
            return
        self.bridge.use_ranks(ranks)
        self.model.abandon_plan()  # its answer would come from the worker just replaced
        self._log(f"worker restarted as {ranks} data-parallel process{'es' if ranks > 1 else ''}; "
                  "inputs are reloaded with the next job")

    def request_plan(self) -> None:
        """Ask the worker for the route estimate of the current settings (when idle and ready)."""
        if not self._ready():
            return
        args = {"params": self.model_panel.spec(), **self.data_panel.values(),
                "space": self.method_panel.space.currentText(), "solver": self.method_panel.solver.currentText()}
        self.model.request_plan(args)

    # ------------------------------------------------------------------ rendering the model
    def _show_progress(self, progress: Progress) -> None:
        if progress.fraction is not None:
            self.progress_bar.setValue(int(PROGRESS_STEPS * progress.fraction))
        self.progress_bar.setFormat(progress.text.replace("%", "%%") if progress.text else "")
        if progress.state == "running":
            self._tick.start()
        else:
            self._tick.stop()

    def _clear_results(self, why: str) -> None:
        self.throttle.discard()
        self.view.clear_results(keep_model_curves=why == "run")
        self.exporter.action.setEnabled(False)

    def _planned(self, record) -> None:
        self.method_panel.show_estimate(record.payload)
        self.plan_shown.emit(record.payload)

    def _finished(self, chain: str, ok: bool, message: str, project: Project | None) -> None:
        self.throttle.flush()
        if project is not None:
            self._finish_project(project)
        self._set_busy(False)
        self.statusBar().showMessage(message, STATUS_MS)
        self.run_finished.emit(ok)

    def _failed(self, chain: str, kind: str, message: str, details: str) -> None:
        if chain == "plan":  # an estimate that cannot be made says why in its place, not in a dialog
            self.method_panel.estimate.setText(f"⚠ {message}")
        else:
            self.show_error(kind, message, details)

    def _show(self, cmd: str, event: dict) -> None:
        if cmd == "fit_gp":
            self.view.show_gp(event)
            noise = f", σ² = {fmt(event.get('noise'))}" if event.get("noise") is not None else ""
            self._log(f"GP route {event.get('route')}, s² = {fmt(event.get('prior_var'))}{noise}, "
                      f"{fmt_seconds(event.get('wall_time'))}")
            self.gp_done.emit(event)
        elif cmd == "trajectory":
            self.view.show_trajectory(event)
        elif cmd == "export":
            self.exporter.show(event)
        elif cmd == "finetune":
            self.view.show_finetune(event)
            self._log(f"fine-tuned {event.get('epochs_run')} epochs, test loss {fmt(event.get('test_loss'))}, "
                      f"{fmt_seconds(event.get('wall_time'))}")

    def _columns_needed(self, record) -> None:
        event = record.payload
        self.data_panel.show_columns(event["path"], event["columns"], event["preview_header"], event["preview"])
        self.panels.setCurrentIndex(0)
        self._log(f"{event['path']}: choose the columns")

    def _loaded(self, step, record) -> None:
        cmd, args, event = step.cmd, step.args, record.payload
        if cmd == "load_example" and not step.project:
            self.project_path = None  # a new session, no longer the project's
        previous_data = (self.session.get("data") or {}).get("sha256"), (self.session.get("data") or {}).get("source")
        session = self.session = record.session
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
        self.view.show_inputs(session)
        self.method_panel.set_devices(session.get("devices") or ["cpu"])
        self.method_panel.set_task(session.get("task", "regression"))
        if step.defaults and args.get("name") in EXAMPLE_DEFAULTS:
            self.apply_settings(EXAMPLE_DEFAULTS[args["name"]])
        if model and model.get("mismatch"):
            self._log(f"warning: the model does not fit the data: {model['mismatch']}")
        self._log(f"[{self.job}] loaded {cmd.removeprefix('load_')}: {record.description}")
        self._update_title()
        self.loaded.emit(event)

    def show_error(self, title: str, message: str, details: str = "") -> None:
        """Record an error and, in interactive mode, show it in a message box with the details."""
        self.errors.append((message, details))
        if not self.interactive_errors:
            return
        box = QMessageBox(QMessageBox.Icon.Critical, f"{WINDOW_TITLE}: {title}", message, parent=self)
        if details:
            box.setDetailedText(details)
        box.exec()

    def save_project(self, path: str | Path) -> Path | None:
        """Write the project (see FileActions.save_project); the results then count as saved."""
        written = super().save_project(path)
        if written is not None:
            self.model.mark_saved()
        return written

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt override
        """Ask before unsaved results are lost; remember the layout and shut the worker down with the window."""
        if self.ask_before_close and self.model.has_results and not self.model.saved and not self._may_discard():
            event.ignore()
            return
        QApplication.instance().removeEventFilter(self._escape)
        self.store.set_bytes(SPLITTER_KEY, self.view.splitter.saveState().data())
        self.store.set_bytes(MAIN_SPLITTER_KEY, self.main_splitter.saveState().data())
        self.bridge.shutdown()
        super().closeEvent(event)

    def _may_discard(self) -> bool:
        """Ask whether to save the run's results before closing; return False to keep the window open."""
        box = QMessageBox(QMessageBox.Icon.Question, WINDOW_TITLE, "Save the results of this run before closing?",
                          parent=self)
        box.setInformativeText("They are not in a project file yet.")
        buttons = QMessageBox.StandardButton
        box.setStandardButtons(buttons.Save | buttons.Discard | buttons.Cancel)
        box.setDefaultButton(buttons.Save)
        answer = box.exec()
        if answer == buttons.Save:
            return self.save() is not None
        return answer == buttons.Discard
