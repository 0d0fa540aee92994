"""Plot-level checks that need no worker: the Qt binding's refcounts, throttling, ETA, the CSV copy."""

from __future__ import annotations

import sys

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")
pytest.importorskip("pytestqt")

from ntk_studio.app.comparison_table import ComparisonTable  # noqa: E402
from ntk_studio.app.eta import eta_seconds, format_eta  # noqa: E402
from ntk_studio.app.throttle import MAX_REDRAWS_PER_S, PlotThrottle  # noqa: E402
from ntk_studio.app.views.regression_1d import FitPlot  # noqa: E402

REDRAWS = 300


def test_redraws_do_not_over_release_none(qtbot):
    # PySide6 6.12.0 on Python 3.11 drops a reference to None on every pyqtgraph redraw until the
    # interpreter aborts ("none_dealloc"); pyproject caps PySide6 below it. This catches a bad upgrade.
    plot = FitPlot()
    qtbot.addWidget(plot)
    plot.show()
    x = np.linspace(0, 1, 50)
    before = sys.getrefcount(None)
    for i in range(REDRAWS):
        plot.set_gp(x, np.sin(x * i), np.full_like(x, 0.1))
        plot.repaint()
    assert sys.getrefcount(None) >= before


def test_throttle_keeps_only_the_latest_update_per_key(qtbot):
    throttle = PlotThrottle()
    drawn: list[int] = []
    for i in range(50):
        throttle.submit("curve", lambda i=i: drawn.append(i))
    qtbot.waitUntil(lambda: drawn == [49], timeout=1000)
    assert throttle.flushes == 1
    throttle.submit("curve", lambda: drawn.append(-1))
    throttle.discard()
    throttle.flush()
    assert drawn == [49] and MAX_REDRAWS_PER_S <= 20


def test_eta_needs_evidence_then_extrapolates():
    assert eta_seconds(0.01, 10.0) is None and eta_seconds(0.5, 0.1) is None and eta_seconds(1.0, 5.0) is None
    assert eta_seconds(0.25, 3.0) == pytest.approx(9.0)
    assert format_eta(9.4) == "9 s" and format_eta(185) == "3 min 5 s" and format_eta(None) == ""


def test_comparison_table_copies_full_precision_csv(qtbot):
    table = ComparisonTable()
    qtbot.addWidget(table)
    table.set_row("gp", {"rmse": 0.1234567, "nll": -0.5, "coverage95": 0.95, "calibration_error": 0.01}, 1.5)
    assert table.text("gp", "rmse") == "0.123" and table.text("finetuned", "rmse") == "—"
    lines = table.copy_csv().splitlines()
    assert lines[0] == "method,rmse,nll,coverage95,calibration_error,time"
    assert lines[2] == "linearized GP,0.1234567,-0.5,0.95,0.01,1.5"
    from PySide6.QtWidgets import QApplication

    assert QApplication.clipboard().text().splitlines() == lines
    table.set_task("classification")
    assert table.to_csv().splitlines()[0] == "method,accuracy,nll,brier,ece,time"
