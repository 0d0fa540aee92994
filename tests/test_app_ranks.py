"""Worker processes > 1 in the method panel: the window's worker becomes 2 gloo ranks and plots the same GP."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")
pytest.importorskip("pytestqt")
pytest.importorskip("torch.distributed")

from ntk_studio.app.main_window import MainWindow  # noqa: E402
from ntk_studio.app.recent import Store  # noqa: E402

LOAD_TIMEOUT_MS = 30_000
RUN_TIMEOUT_MS = 180_000  # two ranks start and import torch before the first job
EXACT_TOL = 1e-10


def test_two_rank_worker_plots_the_same_gp(qtbot, tmp_path):
    win = MainWindow("sine", interactive_errors=False, store=Store(tmp_path / "settings.json"))
    qtbot.addWidget(win)
    with qtbot.waitSignal(win.loaded, timeout=LOAD_TIMEOUT_MS):
        win.show()
    qtbot.waitUntil(lambda: not win.running, timeout=RUN_TIMEOUT_MS)
    win.method_panel.epochs.setValue(5)
    win.method_panel.solver.setCurrentText("cholesky")
    with qtbot.waitSignal(win.run_finished, timeout=RUN_TIMEOUT_MS) as one:
        win.adapt_button.click()
    assert one.args[0] is True
    x1, mean1 = (np.asarray(a) for a in win.view.fit_plot.curve_data("gp_mean"))
    win.method_panel.ranks.setValue(2)
    assert win.bridge.client.ranked and win.bridge.ranks == 2
    with qtbot.waitSignal(win.run_finished, timeout=RUN_TIMEOUT_MS) as two:
        win.adapt_button.click()  # the fresh worker gets the example again first
    assert two.args[0] is True, win.errors
    x2, mean2 = (np.asarray(a) for a in win.view.fit_plot.curve_data("gp_mean"))
    assert np.array_equal(x1, x2)
    assert np.abs(mean2 - mean1).max() / np.abs(mean1).max() < EXACT_TOL
    win.close()
