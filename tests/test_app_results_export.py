"""File → Export predictions and Save plot, the Solver tab of a direct solve, closing with unsaved results,
and `ntk-studio FILE` (offscreen Qt and a real worker; waits on signals, never sleeps)."""

from __future__ import annotations

import argparse
import csv
import os
import stat

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")
pytest.importorskip("pytestqt")

from app_windows import sine_window  # noqa: E402

from PySide6.QtWidgets import QMessageBox  # noqa: E402

from ntk_studio.app import main as app_main  # noqa: E402

RUN_TIMEOUT_MS = 90_000
EPOCHS = 10


@pytest.fixture
def adapted(qtbot, tmp_path):
    win = sine_window(qtbot, tmp_path)
    win.method_panel.epochs.setValue(EPOCHS)
    win.method_panel.solver.setCurrentText("cholesky")
    with qtbot.waitSignal(win.run_finished, timeout=RUN_TIMEOUT_MS) as done:
        win.adapt_button.click()
    assert done.args[0] is True, win.errors
    yield win
    win.ask_before_close = False
    win.close()


def test_predictions_csv_and_plots_are_written_with_the_umask(adapted, tmp_path):
    old = os.umask(0o022)
    try:
        table = adapted.exports.save_predictions(tmp_path / "pred.csv")
        svg = adapted.exports.save_plot(tmp_path / "plot.svg")
        png = adapted.exports.save_plot(tmp_path / "plot.png")
    finally:
        os.umask(old)
    with table.open() as f:
        rows = list(csv.reader(f))
    gp = adapted.results["fit_gp"]
    assert rows[0][:5] == ["row", "target", "unadapted", "gp_mean", "gp_std"]
    assert len(rows) - 1 == len(gp["test_y"])
    assert float(rows[1][3]) == pytest.approx(float(gp["test_mean"][0]), rel=1e-12)
    assert svg.read_bytes().lstrip().startswith(b"<?xml") and b"<svg" in svg.read_bytes()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for path in (table, svg, png):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_solver_tab_of_a_cholesky_fit_says_so_instead_of_one_dot(adapted):
    plot = adapted.view.convergence
    assert len(plot.curve_data()[0]) == 0
    assert "direct solve" in plot.message.toPlainText() and "cholesky" in plot.note


def test_closing_with_unsaved_results_asks(adapted, monkeypatch, tmp_path):
    answers = [QMessageBox.StandardButton.Cancel, QMessageBox.StandardButton.Discard]
    asked: list[str] = []
    monkeypatch.setattr(QMessageBox, "exec", lambda box: asked.append(box.text()) or answers.pop(0))
    adapted.ask_before_close = True
    assert not adapted.close() and adapted.isVisible()  # Cancel keeps the window
    assert adapted.close()  # Discard closes
    assert len(asked) == 2 and "Save the results" in asked[0]


def test_no_question_once_the_results_are_saved(adapted, monkeypatch, tmp_path):
    monkeypatch.setattr(QMessageBox, "exec", lambda box: pytest.fail("asked although saved"))
    assert adapted.save_project(tmp_path / "run.ntkproj") is not None
    adapted.ask_before_close = True
    assert adapted.close()


class _FakeWindow:
    def __init__(self, example, interactive_errors=True, project=None):
        self.example, self.project, self.opened, self.errors = example, project, [], []
        self.run_finished = self

    def connect(self, slot):
        self.slot = slot

    def disconnect(self, slot):
        self.slot = None

    def open_path(self, path):
        self.opened.append(path)

    def show_error(self, title, message):
        self.errors.append(message)


@pytest.mark.parametrize(("path", "example", "project", "opened"), [
    ("run.ntkproj", None, "run.ntkproj", []), ("model.pt", "sine", None, ["model.pt"]),
    ("rows.csv", "sine", None, ["rows.csv"]), (None, "sine", None, []),
])
def test_command_line_file_opens_a_project_or_loads_the_file(path, example, project, opened):
    args = argparse.Namespace(path=path, example="sine", quit=True)
    win = app_main._open_window(_FakeWindow, args)
    assert (win.example, win.project) == (example, project)
    if getattr(win, "slot", None):
        win.slot(True)  # the example finished loading: the file follows
    assert win.opened == opened


def test_command_line_parser_takes_a_file():
    assert app_main._parser().parse_args(["p.ntkproj"]).path == "p.ntkproj"
