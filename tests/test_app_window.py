"""The desktop window against a real worker process (offscreen Qt; waits on signals, never sleeps)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")
pytest.importorskip("pytestqt")

from PySide6.QtCore import QTimer  # noqa: E402
from PySide6.QtWidgets import QMessageBox  # noqa: E402

from ntk_studio.app.main import main  # noqa: E402
from ntk_studio.app.main_window import MainWindow  # noqa: E402
from ntk_studio.app.recent import Store  # noqa: E402

LOAD_TIMEOUT_MS = 30_000  # a cold worker imports torch and gpytorch
RUN_TIMEOUT_MS = 60_000
EVENT_TIMEOUT_MS = 20_000
TICK_MS = 10
# DESIGN aims at ≤ 50 ms. The stalls were repaints: each pyqtgraph axis paints its labels *and the
# grid across the plot* (~10 ms in software rendering), and the loss plot's axes were regenerated
# at every live update (its epoch axis followed the data, its log axis the loss). Axes are now
# cached as pixmaps and the loss plot's ranges move only by whole decades. Measured during a
# 3,000-epoch sine run on the two shared cores at load average 11-13 (Xvfb and offscreen alike):
# before, longest 235-378 ms, 99th percentile 188-201 ms, the 10 ms timer serviced ~25 % of its
# ticks; after, longest 87-308 ms (scheduler preemption at that load), 99th percentile 17-110 ms,
# median 10.2 ms, ~95 % of ticks. On the same machine idle (load < 1, three runs): longest 43-64 ms,
# 99th percentile 15-17 ms over 411-453 ticks. The bounds are about 4x the idle measurement: a CI
# machine runs this test alone; at load 11-13 the longest stall alone can exceed them.
MAX_STALL_S = 0.25
MAX_P99_STALL_S = 0.08
LONG_EPOCHS = 1_000_000  # keeps fine-tuning busy until the test stops it
SHORT_EPOCHS = 30
MAIN_TIMEOUT_S = 180  # a fresh app process: imports, worker start, load, run, screenshot
STALL_EPOCHS = 3000  # long enough for a few hundred timer ticks


@pytest.fixture
def window(qtbot, tmp_path):
    """Return a shown window with the sine example loaded (settings in a temporary file)."""
    win = MainWindow("sine", interactive_errors=False, store=Store(tmp_path / "settings.json"))
    qtbot.addWidget(win)
    with qtbot.waitSignal(win.loaded, timeout=LOAD_TIMEOUT_MS) as blocker:
        win.show()
    assert blocker.args[0]["name"] == "sine"
    qtbot.waitUntil(lambda: not win.running, timeout=EVENT_TIMEOUT_MS)
    yield win
    win.close()


def _run(qtbot, win: MainWindow, epochs: int = SHORT_EPOCHS) -> bool:
    win.method_panel.epochs.setValue(epochs)
    with qtbot.waitSignal(win.run_finished, timeout=RUN_TIMEOUT_MS) as blocker:
        win.adapt_button.click()
    return blocker.args[0]


def test_opens_idle_on_sine(window):
    assert window.adapt_button.isEnabled() and not window.cancel_button.isEnabled()
    assert "sine" in window.windowTitle()
    assert window.model_panel.tree.toolTip() and window.method_panel.prior_var.toolTip()


def test_adapt_plots_gp_payload_and_finetune_epochs(qtbot, window):
    window.method_panel.epochs.setValue(SHORT_EPOCHS)
    epochs: list[dict] = []
    window.bridge.epoch.connect(lambda job, ev: epochs.append(ev))
    with qtbot.waitSignal(window.gp_done, timeout=RUN_TIMEOUT_MS) as gp:
        window.adapt_button.click()
    assert window.cancel_button.isEnabled() or not window.running
    payload = gp.args[0]
    x, mean = window.view.fit_plot.curve_data("gp_mean")
    std = np.asarray(payload["std"])
    assert np.allclose(x, payload["x"]) and np.allclose(mean, payload["mean"])
    assert np.allclose(window.view.fit_plot.curve_data("upper2")[1], np.asarray(payload["mean"]) + 2 * std)
    assert np.allclose(window.view.fit_plot.curve_data("lower2")[1], np.asarray(payload["mean"]) - 2 * std)
    assert np.allclose(window.view.fit_plot.curve_data("upper1")[1], np.asarray(payload["mean"]) + std)
    assert std.max() > 0
    with qtbot.waitSignal(window.run_finished, timeout=RUN_TIMEOUT_MS) as done:
        pass
    assert done.args[0] is True and not window.running
    assert epochs[0]["epoch"] == 0 and epochs[-1]["epoch"] > 0
    assert np.allclose(window.view.fit_plot.curve_data("pretrained")[1], epochs[0]["grid_pred"])
    # Live: one loss point per (throttled) event; at the end: every epoch of the run.
    assert list(window.view.loss_plot.curve.getData()[0]) == list(range(SHORT_EPOCHS + 1))
    assert window.view.loss_plot.curve.yData[-1] == pytest.approx(epochs[-1]["train_loss"])  # raw, not log10
    # The pretrained model fits another sine: fine-tuning must move the curve away from it.
    assert not np.allclose(window.view.fit_plot.curve_data("finetuned")[1], epochs[0]["grid_pred"])
    gp_rmse = float(window.view.table.text("gp", "rmse"))
    assert 0 < gp_rmse < 1.0 and window.view.table.text("finetuned", "rmse") != "—"
    assert float(window.view.table.text("unadapted", "rmse")) > gp_rmse


def test_finetune_epoch_updates_curve_in_place(qtbot, window):
    window.method_panel.epochs.setValue(LONG_EPOCHS)
    window.adapt_button.click()
    qtbot.waitSignal(window.gp_done, timeout=RUN_TIMEOUT_MS).wait()
    gp_mean = window.view.fit_plot.curve_data("gp_mean")[1].copy()
    seen: list[dict] = []
    window.bridge.epoch.connect(lambda job, ev: seen.append(ev))
    qtbot.waitSignal(window.bridge.epoch, timeout=EVENT_TIMEOUT_MS,
                     check_params_cb=lambda job, ev: ev["epoch"] > 0).wait()
    # Epochs are drawn at the throttled rate: within a tick the curve shows the latest one seen.
    assert seen[-1]["epoch"] > 0

    def shows_latest() -> bool:
        shown = window.view.fit_plot.curve_data("finetuned")[1]
        return len(shown) == len(seen[-1]["grid_pred"]) and np.allclose(shown, seen[-1]["grid_pred"])

    qtbot.waitUntil(shows_latest, timeout=EVENT_TIMEOUT_MS)
    assert np.allclose(window.view.fit_plot.curve_data("gp_mean")[1], gp_mean)  # not cleared mid-run
    with qtbot.waitSignal(window.run_finished, timeout=EVENT_TIMEOUT_MS) as done:
        window.cancel_button.click()
    assert done.args[0] is False
    assert window.adapt_button.isEnabled() and not window.cancel_button.isEnabled()
    assert _run(qtbot, window) is True  # a second run works after the cancel


def test_killed_worker_reports_error_and_recovers(qtbot, window, monkeypatch):
    shown: list[tuple[str, str]] = []
    monkeypatch.setattr(QMessageBox, "exec", lambda box: shown.append((box.text(), box.detailedText())) or 0)
    window.interactive_errors = True
    window.method_panel.epochs.setValue(LONG_EPOCHS)
    window.adapt_button.click()
    qtbot.waitSignal(window.bridge.epoch, timeout=RUN_TIMEOUT_MS,
                     check_params_cb=lambda job, ev: ev["epoch"] > 0).wait()
    with qtbot.waitSignal(window.run_finished, timeout=EVENT_TIMEOUT_MS) as done:
        window.bridge.client.process.kill()
    assert done.args[0] is False and not window.running
    assert len(shown) == 1 and "exited unexpectedly" in shown[0][0]
    assert window.bridge.restarts == 1
    assert _run(qtbot, window) is True  # the fresh worker gets the example again


def test_event_loop_never_stalls_during_a_run(qtbot, window):
    # One run first: the first paint of a filled band, the table and new glyphs loads fonts and
    # caches once per process; the bound is on the steady state (the cold stall is printed too).
    assert _run(qtbot, window, epochs=SHORT_EPOCHS) is True
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(TICK_MS)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    try:
        assert _run(qtbot, window, epochs=STALL_EPOCHS) is True
    finally:
        timer.stop()
    gaps = np.diff(ticks)
    stall, p99 = float(np.max(gaps)), float(np.percentile(gaps, 99))
    print(f"longest event-loop stall during a run: {stall * 1000:.1f} ms, 99th percentile {p99 * 1000:.1f} ms "
          f"over {len(ticks)} ticks")
    assert len(ticks) > 50 and stall <= MAX_STALL_S and p99 <= MAX_P99_STALL_S


def test_main_runs_screenshots_and_quits(tmp_path):
    # In a child process: once QApplication.exec() has returned, Qt ends every later event loop at
    # once, so running main() in this process would break every window test that comes after it.
    shot = tmp_path / "shot.png"
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    done = subprocess.run([sys.executable, "-m", "ntk_studio.app", "--run", "--screenshot", str(shot), "--quit"],
                          env=env, capture_output=True, text=True, timeout=MAIN_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-2000:]
    assert shot.stat().st_size > 0
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "screenshot" in done.stdout


def test_main_without_display_exits_2_with_a_hint(monkeypatch, capsys):
    monkeypatch.setattr("sys.platform", "linux")
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(name, raising=False)
    assert main([]) == 2
    assert "ntk-studio-cli" in capsys.readouterr().err
