"""The main window's file side: settings, projects, file dialogs, recent files and drag-and-drop.

A mixin of :class:`~ntk_studio.app.main_window.MainWindow`: it uses the window's panels, store,
inputs and job chains, and keeps the window module to its layout, job chains and worker events.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QThread, Signal
from PySide6.QtWidgets import QFileDialog, QMessageBox

from .project import CodeToRun, Project, ProjectError, load_project, save_project
from .recent import describe_recent, forget, recent_files, remember
from .session import DATA_SUFFIXES, MODEL_SUFFIXES, PROJECT_SUFFIX, Inputs, file_kind

STATUS_MS = 0  # status messages stay until replaced
PROGRESS_STEPS = 1000  # the progress bar's range (as in the window)


_READING: set[ProjectReader] = set()  # readers outlive a window closed while they hash: no parent, kept here


class ProjectReader(QThread):
    """Reads and checks a project off the GUI thread (hashing a large model takes seconds)."""

    progressed = Signal(float, str)
    finished_reading = Signal(object)  # a Project, or the ProjectError that stopped it

    def __init__(self, path: str | Path, parent=None) -> None:
        super().__init__(parent)
        self.path = path

    def run(self) -> None:  # noqa: D102 - QThread override
        try:
            result: Project | ProjectError = load_project(self.path, progress=self.progressed.emit)
        except ProjectError as exc:
            result = exc
        except Exception as exc:  # noqa: BLE001 - never a silent dead thread: the window shows it
            result = ProjectError(f"{Path(self.path).name} could not be read ({type(exc).__name__}: {exc}).")
        self.finished_reading.emit(result)


class FileActions:
    """Projects, file dialogs, recent files and drops for the main window."""

    # Decides whether a project may run code (a pickle, an architecture .py): called with the list of
    # CodeToRun, returns True to allow. None: ask with a dialog whose default is "No" (and refuse
    # without asking when the window shows no dialogs). Tests set it to answer for the person.
    code_prompt: Callable[[list[CodeToRun]], bool] | None = None
    _project_reader: ProjectReader | None = None

    # ------------------------------------------------------------------ settings and projects
    def settings(self) -> dict[str, Any]:
        """Return every panel setting (split, parameter subset, method)."""
        return {"data": self.data_panel.values(), "params": self.model_panel.spec(),
                "method": self.method_panel.values()}

    def apply_settings(self, settings: dict[str, Any]) -> None:
        """Set the panels from ``settings`` (as returned by :meth:`settings`)."""
        self.data_panel.set_values(settings.get("data") or {})
        if settings.get("params"):
            self.model_panel.set_spec(settings["params"])
        self.method_panel.set_values(settings.get("method") or {})
        self.method_panel.set_task(self.session.get("task", "regression"))

    def save(self) -> Path | None:
        """Save to the current project file (asking for one the first time); return the path written."""
        if self.project_path is None:
            return self._ask_save_as()
        return self.save_project(self.project_path)

    def save_project(self, path: str | Path) -> Path | None:
        """Write the project (inputs, settings, results) to ``path``; return the path, None on failure."""
        try:
            written = save_project(path, Project(self.inputs, self.settings(), self.results))
        except ProjectError as exc:
            self.show_error("Project not saved", str(exc))
            return None
        self.project_path = written
        remember(self.store, str(written))
        self._update_title()
        self.statusBar().showMessage(f"Saved {written}", STATUS_MS)
        self._log(f"saved project {written}")
        return written

    def open_project(self, path: str | Path) -> None:
        """Open a project: read and check it off the GUI thread, ask before any code runs, then reload its
        inputs in the worker and restore settings and results."""
        if self.running or self._project_reader is not None:
            return
        reader = self._project_reader = ProjectReader(path)
        _READING.add(reader)
        reader.finished.connect(lambda: _READING.discard(reader))
        # Bound methods: Qt drops the connection if the window is gone when the reader finishes.
        reader.progressed.connect(self._project_progress)
        reader.finished_reading.connect(self._project_read)
        self._set_busy(True)
        self.statusBar().showMessage(f"Reading {Path(path).name}…", STATUS_MS)
        reader.start()

    def _project_progress(self, fraction: float, text: str) -> None:
        self.progress_bar.setValue(int(fraction * PROGRESS_STEPS))
        self.statusBar().showMessage(f"Opening project: {text}…", STATUS_MS)

    def _project_read(self, result: Project | ProjectError) -> None:
        reader, self._project_reader = self._project_reader, None
        path = reader.path if reader is not None else ""
        if reader is not None:
            reader.wait()
            reader.deleteLater()
        self._set_busy(False)
        if isinstance(result, ProjectError):
            self.statusBar().showMessage("Project not opened.", STATUS_MS)
            self.show_error("Project not opened", str(result))
            return
        project = result
        if project.code_to_run:
            if not self.allow_code(project.code_to_run):
                self._log(f"not opened: running the code {path} needs was not allowed")
                self.statusBar().showMessage("Project not opened: its model needs code you did not allow.", STATUS_MS)
                return
            if any(c.kind == "pickle" for c in project.code_to_run):
                project.inputs.model["trust_pickle"] = True  # the person's answer, for this session only
        for warning in project.warnings:
            self._log(f"warning: {warning}")
        self._pending_project = project
        self.project_path = Path(path)
        remember(self.store, str(Path(path).resolve()))
        self.inputs = Inputs()
        # Each file load carries the SHA-256 the project recorded: the worker refuses a file changed since
        # the check above (a ModelLoadError/DataLoadError naming it, shown in a dialog), nothing is loaded.
        steps = [{"cmd": cmd, "args": args, "project": True} for cmd, args in project.load_steps()]
        self._start("load", steps)

    def allow_code(self, code: list[CodeToRun]) -> bool:
        """Return whether the person allows ``code`` to run; asks with "No" as the default."""
        if self.code_prompt is not None:
            return bool(self.code_prompt(code))
        if not self.interactive_errors:
            self._log("refused to run a project's code: no one was asked (dialogs are off)")
            return False
        box = QMessageBox(QMessageBox.Icon.Warning, "Run code from this project?",
                          "Opening this project runs code on this computer. Only allow it if you trust "
                          "where these files came from.", parent=self)
        box.setInformativeText("\n\n".join(c.describe() for c in code))
        box.setStandardButtons(QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No)
        box.setDefaultButton(QMessageBox.StandardButton.No)
        box.setEscapeButton(QMessageBox.StandardButton.No)
        return box.exec() == QMessageBox.StandardButton.Yes

    def _finish_project(self, project: Project) -> None:
        self.apply_settings(project.settings)
        results = project.results
        if results.get("fit_gp"):
            self._show("fit_gp", results["fit_gp"])
        if results.get("trajectory"):
            self._show("trajectory", results["trajectory"])
        if results.get("finetune"):
            self._show("finetune", results["finetune"])
        self.results = dict(results)
        self._update_title()
        self.statusBar().showMessage(f"Opened {self.project_path}", STATUS_MS)

    # ------------------------------------------------------------------ file dialogs
    def _ask_model(self) -> None:
        patterns = " ".join(f"*{s}" for s in MODEL_SUFFIXES)
        path, _ = QFileDialog.getOpenFileName(self, "Open model", "", f"PyTorch models ({patterns});;All files (*)")
        if path:
            remember(self.store, path)
            self.open_model(path)

    def _ask_data(self) -> None:
        patterns = " ".join(f"*{s}" for s in DATA_SUFFIXES)
        path, _ = QFileDialog.getOpenFileName(self, "Open data", "", f"Data ({patterns});;All files (*)")
        if path:
            remember(self.store, path)
            self.open_data(path)

    def _ask_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open image folder (one subfolder per class)")
        if path:
            self.open_data(path, classification=True)

    def _ask_project(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open project", "", f"NTK Studio projects (*{PROJECT_SUFFIX})")
        if path:
            self.open_project(path)

    def _ask_save_as(self) -> Path | None:
        path, _ = QFileDialog.getSaveFileName(self, "Save project", "", f"NTK Studio projects (*{PROJECT_SUFFIX})")
        return self.save_project(path) if path else None

    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        paths = recent_files(self.store)
        if not paths:
            self.recent_menu.addAction("(none)").setEnabled(False)
        for path in paths:
            text, tip = describe_recent(path)
            action = self._action(self.recent_menu, text, self._recent_action, tip=tip)
            action.setToolTip(tip)
            action.setData(path)
        self.recent_menu.setToolTipsVisible(True)

    def _example_action(self) -> None:
        self.load_example(self.sender().data())

    def _recent_action(self) -> None:
        self._open_recent(self.sender().data())

    def _open_recent(self, path: str) -> None:
        if not Path(path).exists():
            forget(self.store, path)
            self.show_error("File not found", f"{path} no longer exists; it was removed from the recent files.")
            return
        self.open_path(path)

    # ------------------------------------------------------------------ drag and drop
    def dragEnterEvent(self, event) -> None:  # noqa: N802 - Qt override
        """Accept drops of local files NTK Studio can open."""
        urls = event.mimeData().urls()
        if urls and all(u.isLocalFile() and file_kind(u.toLocalFile(), Path(u.toLocalFile()).is_dir()) for u in urls):
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:  # noqa: N802 - Qt override
        """Open the dropped file (the first one; a model and data file dropped together load both)."""
        paths = [u.toLocalFile() for u in event.mimeData().urls()]
        for path in sorted(paths, key=lambda p: file_kind(p, Path(p).is_dir()) != "model"):
            remember(self.store, path)
            if file_kind(path, Path(path).is_dir()) == "model":
                self.open_model(path)
            else:
                self.open_path(path)
                break
        event.acceptProposedAction()
