"""The four window bugs of issue #18, against a real worker (offscreen Qt; waits on signals, never sleeps).

- a forced cancel (the worker killed) must not reset the Model tab's parameter selection: the panel
  and the jobs it starts must always agree;
- Esc cancels at every stage of a run, whichever widget has the focus, like the Cancel button;
- the progress bar shows no time-left estimate once a run was cancelled;
- a new run, a new model or new data takes the previous results off the screen.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")
pytest.importorskip("pytestqt")

from app_windows import sine_window  # noqa: E402

from PySide6.QtCore import QEvent, Qt  # noqa: E402
from PySide6.QtWidgets import QLineEdit  # noqa: E402

from ntk_studio.app.main_window import MainWindow  # noqa: E402

LOAD_TIMEOUT_MS = 90_000
RUN_TIMEOUT_MS = 60_000
EVENT_TIMEOUT_MS = 20_000
LONG_EPOCHS = 1_000_000
SHORT_EPOCHS = 10
EMPTY = "—"


@pytest.fixture
def window(qtbot, tmp_path):
    win = sine_window(qtbot, tmp_path)
    win.activateWindow()
    yield win
    win.close()


def _start_long_run(qtbot, win: MainWindow) -> None:
    win.method_panel.epochs.setValue(LONG_EPOCHS)
    with qtbot.waitSignal(win.gp_done, timeout=RUN_TIMEOUT_MS):
        win.adapt_button.click()
    qtbot.waitSignal(win.bridge.epoch, timeout=EVENT_TIMEOUT_MS, check_params_cb=lambda job, ev: ev["epoch"] > 0).wait()


def _short_run(qtbot, win: MainWindow) -> bool:
    win.method_panel.epochs.setValue(SHORT_EPOCHS)
    with qtbot.waitSignal(win.run_finished, timeout=RUN_TIMEOUT_MS) as done:
        win.adapt_button.click()
    return done.args[0]


def test_forced_cancel_keeps_the_parameter_selection(qtbot, window, monkeypatch):
    window.model_panel.select_last()
    chosen = window.model_panel.spec()
    assert chosen not in ("all", "")
    submitted: list[tuple[str, dict]] = []
    submit = window.bridge.submit
    monkeypatch.setattr(window.bridge, "submit", lambda cmd, **a: submitted.append((cmd, a)) or submit(cmd, **a))
    cancel = window.bridge.cancel
    monkeypatch.setattr(window.bridge, "cancel", lambda job, grace_s=0.0: cancel(job, 0.0))  # no grace: a kill
    _start_long_run(qtbot, window)
    with qtbot.waitSignal(window.run_finished, timeout=EVENT_TIMEOUT_MS) as done:
        window.cancel_button.click()
    assert done.args[0] is False and window.bridge.restarts == 1
    assert window.model_panel.spec() == chosen
    submitted.clear()
    assert _short_run(qtbot, window) is True  # the fresh worker is given the example again first
    fits = [a for cmd, a in submitted if cmd == "fit_gp"]
    assert fits and fits[-1]["params"] == chosen
    assert window.model_panel.spec() == chosen  # the panel still says what the job used


@pytest.mark.parametrize("focus", ["table", "log", "plot", "tree"])
def test_escape_cancels_after_the_posterior_is_ready(qtbot, window, focus):
    _start_long_run(qtbot, window)  # the GP is done; fine-tuning runs
    target = {"table": window.view.table, "log": window.view.log, "plot": window.view.fit_plot,
              "tree": window.model_panel.tree}[focus]
    target.setFocus()
    with qtbot.waitSignal(window.run_finished, timeout=EVENT_TIMEOUT_MS) as done:
        qtbot.keyClick(window.focusWidget() or window, Qt.Key.Key_Escape)
    assert done.args[0] is False and not window.running


class _EscapeTaker(QLineEdit):
    """A widget that claims Esc for itself (as editors and some item views do): the Cancel shortcut never fires."""

    def event(self, e):  # noqa: D102
        if e.type() == QEvent.Type.ShortcutOverride and e.key() == Qt.Key.Key_Escape:
            e.accept()
            return True
        return super().event(e)


def test_escape_cancels_even_from_a_widget_that_takes_esc(qtbot, window):
    taker = _EscapeTaker()
    window.view.layout().addWidget(taker)
    _start_long_run(qtbot, window)
    taker.setFocus()
    with qtbot.waitSignal(window.run_finished, timeout=EVENT_TIMEOUT_MS) as done:
        qtbot.keyClick(taker, Qt.Key.Key_Escape)
    assert done.args[0] is False and not window.running


def test_escape_cancels_while_the_gp_fits(qtbot, window):
    window.method_panel.epochs.setValue(LONG_EPOCHS)
    with qtbot.waitSignal(window.bridge.started, timeout=RUN_TIMEOUT_MS,
                          check_params_cb=lambda job, ev: ev.get("cmd") == "fit_gp"):
        window.adapt_button.click()
    with qtbot.waitSignal(window.run_finished, timeout=EVENT_TIMEOUT_MS) as done:
        qtbot.keyClick(window.focusWidget() or window, Qt.Key.Key_Escape)
    assert done.args[0] is False and not window.running


def test_progress_bar_shows_no_time_left_after_a_cancel(qtbot, window):
    _start_long_run(qtbot, window)
    with qtbot.waitSignal(window.run_finished, timeout=EVENT_TIMEOUT_MS):
        window.cancel_button.click()
    text = window.progress_bar.text()
    assert "left" not in text and "ancel" in text


def test_a_new_run_clears_the_previous_results(qtbot, window):
    assert _short_run(qtbot, window) is True
    assert window.view.table.text("gp", "rmse") != EMPTY and len(window.view.fit_plot.curve_data("gp_mean")[0])
    seen: list[tuple[str, int]] = []

    def at_start(job, event) -> None:  # what the screen shows when the new run's first job starts
        if event.get("cmd") == "fit_gp":
            seen.append((window.view.table.text("gp", "rmse"), len(window.view.fit_plot.curve_data("gp_mean")[0])))

    window.bridge.started.connect(at_start)
    assert _short_run(qtbot, window) is True
    assert seen == [(EMPTY, 0)]


def test_a_new_model_clears_the_previous_results(qtbot, window, tmp_path):
    torch = pytest.importorskip("torch")
    assert _short_run(qtbot, window) is True
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    path = tmp_path / "other.pt"
    torch.jit.script(net).save(str(path))
    with qtbot.waitSignal(window.loaded, timeout=LOAD_TIMEOUT_MS):
        window.open_model(str(path))
    assert window.view.table.text("gp", "rmse") == EMPTY
    assert window.view.table.text("finetuned", "rmse") == EMPTY
    assert len(window.view.fit_plot.curve_data("gp_mean")[0]) == 0
    assert len(window.view.fit_plot.curve_data("finetuned")[0]) == 0
    assert not window.results.get("fit_gp")
    assert np.isfinite(len(window.view.loss_plot.curve_data()[0]))
