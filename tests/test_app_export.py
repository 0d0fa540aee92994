"""File → Export from the window: the ONNX file the worker writes predicts the curves the window shows."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")
pytest.importorskip("pytestqt")

from app_windows import sine_window  # noqa: E402
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


RUN_TIMEOUT_MS = 60_000
EXPORT_TIMEOUT_MS = 120_000  # trace, torch.export, ONNX conversion and three verification batches


@pytest.fixture
def window(qtbot, tmp_path):
    win = sine_window(qtbot, tmp_path)
    yield win
    win.close()


def test_export_action_writes_a_file_that_matches_the_plot(qtbot, window, tmp_path):
    from ntk_studio.core.export import onnx_session

    assert not window.exporter.action.isEnabled()  # nothing fitted yet
    window.method_panel.epochs.setValue(20)
    with qtbot.waitSignal(window.run_finished, timeout=RUN_TIMEOUT_MS) as run:
        window.adapt_button.click()
    assert run.args[0] is True and window.exporter.action.isEnabled()
    path = tmp_path / "sine.onnx"
    with qtbot.waitSignal(window.exporter.exported, timeout=EXPORT_TIMEOUT_MS) as done:
        assert window.exporter.export(path)
    report = done.args[0]
    assert report["max_relative_error"] <= 1e-4 and path.exists()
    qtbot.waitUntil(lambda: not window.running, timeout=RUN_TIMEOUT_MS)
    x, shown_mean = window.view.fit_plot.curve_data("gp_mean")
    mean, = onnx_session(path).run(["mean"], {"x": np.asarray(x, np.float64).reshape(-1, 1)})
    assert np.abs(mean[:, 0] - np.asarray(shown_mean)).max() < 1e-6
    log_text = window.view.log.toPlainText()
    assert "exported" in log_text and "max relative error" in log_text
