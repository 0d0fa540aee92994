"""The main window's file side: settings, projects, file dialogs, recent files and drag-and-drop.

A mixin of :class:`~ntk_studio.app.main_window.MainWindow`: it uses the window's panels, store,
inputs and job chains, and keeps the window module to its layout, job chains and worker events.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtWidgets import QFileDialog

from .project import Project, ProjectError, load_project, save_project
from .recent import forget, recent_files, remember
from .session import DATA_SUFFIXES, MODEL_SUFFIXES, PROJECT_SUFFIX, Inputs, file_kind

STATUS_MS = 0  # status messages stay until replaced


class FileActions:
    """Projects, file dialogs, recent files and drops for the main window."""

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
        """Open a project: reload its inputs in the worker, then restore settings and results."""
        if self.running:
            return
        try:
            project = load_project(path)
        except ProjectError as exc:
            self.show_error("Project not opened", str(exc))
            return
        for warning in project.warnings:
            self._log(f"warning: {warning}")
        self._pending_project = project
        self.project_path = Path(path)
        remember(self.store, str(Path(path).resolve()))
        self.inputs = Inputs()
        steps = [{"cmd": cmd, "args": args, "project": True} for cmd, args in project.inputs.load_steps()]
        self._start("load", steps)

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
            self._action(self.recent_menu, path, self._recent_action).setData(path)

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
