"""An engine warning during a run reaches the window: a log line and the status bar; the run goes on."""

from __future__ import annotations

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")
pytest.importorskip("pytestqt")

from app_windows import sine_window  # noqa: E402


RUN_TIMEOUT_MS = 60_000
EVENT_TIMEOUT_MS = 20_000
LONG_EPOCHS = 1_000_000  # fine-tuning stays busy until the test stops it
MESSAGE = "Cholesky of the system matrix needed jitter 1e-10 × its mean diagonal"


def test_a_worker_warning_is_logged_and_shown_in_the_status_bar(qtbot, tmp_path):
    win = sine_window(qtbot, tmp_path)
    win.method_panel.epochs.setValue(LONG_EPOCHS)
    win.adapt_button.click()
    qtbot.waitSignal(win.bridge.epoch, timeout=RUN_TIMEOUT_MS, check_params_cb=lambda job, ev: ev["epoch"] > 0).wait()
    job = win.model.job
    # The event as the worker sends it (jobs/warning_events.py), through the bridge's signal.
    win.bridge.warning.emit(job, {"id": job, "type": "warning", "message": MESSAGE, "category": "JitterWarning"})
    qtbot.waitUntil(lambda: MESSAGE in win.statusBar().currentMessage(), timeout=EVENT_TIMEOUT_MS)
    assert win.statusBar().currentMessage() == f"warning: {MESSAGE}"
    assert f"[{job}] warning: {MESSAGE}" in win.view.log.toPlainText()
    assert win.running  # a warning is not a failure
    with qtbot.waitSignal(win.run_finished, timeout=EVENT_TIMEOUT_MS) as done:
        win.cancel_button.click()
    assert done.args[0] is False
    win.close()
