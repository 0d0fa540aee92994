"""Files in the window: a corrupt model gives a dialog and loses nothing; projects reopen identically."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")
pytest.importorskip("pytestqt")

from PySide6.QtWidgets import QMessageBox  # noqa: E402

from ntk_studio.app.main_window import MainWindow  # noqa: E402
from ntk_studio.app.project import FORMAT_VERSION, PROJECT_MEMBER, ProjectError, load_project  # noqa: E402
from ntk_studio.app.recent import Store, recent_files  # noqa: E402

LOAD_TIMEOUT_MS = 30_000
RUN_TIMEOUT_MS = 90_000
EPOCHS = 20
CURVES = ("gp_mean", "upper2", "lower1", "pretrained", "finetuned", "train", "truth", "trajectory")
# The loss curve shows every epoch once the run ends (live it shows the throttled events).


def _window(qtbot, tmp_path, **kw) -> MainWindow:
    win = MainWindow(interactive_errors=False, store=Store(tmp_path / "settings.json"), **kw)
    qtbot.addWidget(win)
    win.show()
    return win


def _wait_idle(qtbot, win: MainWindow) -> None:
    qtbot.waitUntil(lambda: win.job is None, timeout=LOAD_TIMEOUT_MS)


@pytest.fixture
def sine(qtbot, tmp_path):
    """Return a window with the sine example loaded and idle."""
    win = _window(qtbot, tmp_path, example="sine")
    with qtbot.waitSignal(win.run_finished, timeout=LOAD_TIMEOUT_MS):
        pass
    _wait_idle(qtbot, win)
    yield win
    win.close()


def _adapt(qtbot, win: MainWindow) -> None:
    win.method_panel.epochs.setValue(EPOCHS)
    _wait_idle(qtbot, win)
    with qtbot.waitSignal(win.run_finished, timeout=RUN_TIMEOUT_MS) as done:
        win.adapt()
    assert done.args[0] is True, win.errors


def test_corrupt_model_file_shows_a_dialog_and_keeps_the_session(qtbot, sine, tmp_path, monkeypatch):
    shown: list[tuple[str, str, str]] = []
    monkeypatch.setattr(QMessageBox, "exec", lambda box: shown.append(
        (box.windowTitle(), box.text(), box.detailedText())) or 0)
    sine.interactive_errors = True
    _adapt(qtbot, sine)
    before = sine.view.fit_plot.curve_data("gp_mean")[1].copy()
    rows = sine.model_panel.tree.topLevelItemCount()
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 8)
    with qtbot.waitSignal(sine.run_finished, timeout=LOAD_TIMEOUT_MS) as done:
        sine.open_model(str(bad))
    assert done.args[0] is False
    assert len(shown) == 1 and "ModelLoadError" in shown[0][0] and "model.pt" in shown[0][1]
    assert "Traceback" in shown[0][2]  # the details carry the worker's traceback
    # Nothing lost: the same model tree, the same plotted GP, and Adapt still works on the old model.
    assert sine.model_panel.tree.topLevelItemCount() == rows and sine.inputs.model is None
    assert np.array_equal(sine.view.fit_plot.curve_data("gp_mean")[1], before)
    assert sine.adapt_button.isEnabled()
    _adapt(qtbot, sine)
    assert np.allclose(sine.view.fit_plot.curve_data("gp_mean")[1], before, rtol=1e-12, atol=1e-12)


def test_project_saves_and_reopens_with_identical_results(qtbot, sine, tmp_path):
    sine.method_panel.prior_var.setValue(0.5)
    sine.data_panel.n_adapt.setValue(12)
    _adapt(qtbot, sine)
    shown = {key: sine.view.fit_plot.curve_data(key) for key in CURVES}
    table = sine.view.table.to_csv()
    path = sine.save_project(tmp_path / "run")
    assert path == tmp_path / "run.ntkproj" and path.is_file()
    assert not list(tmp_path.glob(".run.ntkproj.*"))  # the atomic write left no temporary file
    assert str(path) in recent_files(sine.store)

    other = _window(qtbot, tmp_path, example=None, project=str(path))
    with qtbot.waitSignal(other.run_finished, timeout=LOAD_TIMEOUT_MS) as opened:
        pass
    assert opened.args[0] is True and other.errors == []
    for key in CURVES:  # the saved results, drawn again: exactly the same numbers
        x, y = other.view.fit_plot.curve_data(key)
        assert np.array_equal(x, shown[key][0]) and np.array_equal(y, shown[key][1]), key
    assert other.view.table.to_csv() == table
    assert np.array_equal(other.view.loss_plot.curve_data()[1], sine.view.loss_plot.curve_data()[1])
    assert len(other.view.loss_plot.curve_data()[0]) == EPOCHS + 1
    assert other.method_panel.prior_var.value() == 0.5 and other.data_panel.n_adapt.value() == 12
    assert other.windowTitle().endswith("run.ntkproj")
    # Running again with the reopened settings reproduces the saved GP.
    _wait_idle(qtbot, other)
    _adapt(qtbot, other)
    for key in ("gp_mean", "upper2", "trajectory"):
        assert np.allclose(other.view.fit_plot.curve_data(key)[1], shown[key][1], rtol=1e-10, atol=1e-12), key
    other.close()


def test_project_errors_are_typed_and_name_the_problem(tmp_path):
    with pytest.raises(ProjectError, match="No such project"):
        load_project(tmp_path / "missing.ntkproj")
    junk = tmp_path / "junk.ntkproj"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ProjectError, match="not an NTK Studio project"):
        load_project(junk)
    newer = tmp_path / "newer.ntkproj"
    with zipfile.ZipFile(newer, "w") as zf:
        zf.writestr(PROJECT_MEMBER, f'{{"format": "ntk-studio-project", "version": {FORMAT_VERSION + 1}}}')
        zf.writestr("results.json", "{}")
    with pytest.raises(ProjectError, match="newer NTK Studio"):
        load_project(newer)


def test_csv_columns_are_picked_then_loaded(qtbot, sine, tmp_path):
    table = tmp_path / "rows.csv"
    rng = np.random.default_rng(0)
    table.write_text("a,b,target\n" + "\n".join(f"{x:.6f},{y:.6f},{x + y:.6f}" for x, y in rng.normal(size=(30, 2))))
    with qtbot.waitSignal(sine.run_finished, timeout=LOAD_TIMEOUT_MS):
        sine.open_data(str(table))
    panel = sine.data_panel
    assert panel.columns_box.isVisibleTo(sine) and panel.target.currentText() == "target"
    assert panel.preview.rowCount() == 30 and panel.preview.columnCount() == 3
    with qtbot.waitSignal(sine.run_finished, timeout=LOAD_TIMEOUT_MS) as done:
        panel.use_columns.click()
    assert done.args[0] is True and sine.inputs.data["features"] == ["a", "b"]
    # The sine model takes 1 input, the table has 2: said in the model panel, Adapt stays off.
    assert "input features" in sine.model_panel.summary.text() and not sine.adapt_button.isEnabled()


# ---------------------------------------------------------------- projects never decide to run code

def _pickle_project(tmp_path):
    import hashlib
    import json

    import torch
    from test_hostile_support import pickle_payload, write_project

    marker = tmp_path / "pwned"
    evil = pickle_payload(tmp_path / "evil.pt", marker)
    entry = {"path": str(evil), "relative_path": "evil.pt", "arch": None, "trust_pickle": True,
             "sha256": hashlib.sha256(evil.read_bytes()).hexdigest()}
    header = {"format": "ntk-studio-project", "version": 1, "inputs": {"model": entry}, "settings": {}}
    assert torch is not None and json is not None
    return write_project(tmp_path / "evil.ntkproj", header), marker


def test_project_asking_for_trust_runs_nothing_when_the_answer_is_no(qtbot, tmp_path, monkeypatch):
    from ntk_studio.app.file_actions import FileActions

    proj, marker = _pickle_project(tmp_path)
    asked: list = []
    monkeypatch.setattr(FileActions, "code_prompt", staticmethod(lambda code: asked.append(code) or False))
    win = _window(qtbot, tmp_path, example=None, project=str(proj))
    qtbot.waitUntil(lambda: bool(asked), timeout=LOAD_TIMEOUT_MS)
    (code,) = asked[0]
    assert code.kind == "pickle" and code.path.name == "evil.pt" and "mkdir" in code.first_lines
    qtbot.waitUntil(lambda: win._project_reader is None, timeout=LOAD_TIMEOUT_MS)
    assert win.job is None and win.inputs.model is None and win.project_path is None
    assert not marker.exists()
    win.close()


def test_code_dialog_defaults_to_no(qtbot, tmp_path, monkeypatch):
    proj, marker = _pickle_project(tmp_path)
    shown: list = []

    def answer(box):
        default_is_no = box.defaultButton() is box.button(QMessageBox.StandardButton.No)
        shown.append((box.text(), box.informativeText(), default_is_no))
        return QMessageBox.StandardButton.No  # what Enter (the default button) answers

    monkeypatch.setattr(QMessageBox, "exec", answer)
    win = _window(qtbot, tmp_path, example=None)
    win.interactive_errors = True
    win.open_project(str(proj))
    qtbot.waitUntil(lambda: bool(shown), timeout=LOAD_TIMEOUT_MS)
    text, detail, default = shown[0]
    assert default is True
    assert "evil.pt" in detail and "SHA-256" in detail and "mkdir" in detail
    qtbot.waitUntil(lambda: win._project_reader is None, timeout=LOAD_TIMEOUT_MS)
    assert not marker.exists() and win.job is None
    win.close()


def test_damaged_project_shows_a_dialog(qtbot, tmp_path):
    from test_hostile_support import write_project

    proj = write_project(tmp_path / "deep.ntkproj", "[" * 50_000)
    win = _window(qtbot, tmp_path, example=None, project=str(proj))
    qtbot.waitUntil(lambda: bool(win.errors), timeout=LOAD_TIMEOUT_MS)
    assert "deep.ntkproj" in win.errors[0][0] and "nested" in win.errors[0][0]
    win.close()
