"""A main window on the sine example, loaded and idle: the starting point of most window tests."""

from __future__ import annotations

LOAD_TIMEOUT_MS = 90_000  # a fresh worker process: imports, example load, first summary


def sine_window(qtbot, tmp_path):
    """Return a shown MainWindow whose worker has loaded the sine example and is idle."""
    from ntk_studio.app.main_window import MainWindow
    from ntk_studio.app.recent import Store

    win = MainWindow("sine", interactive_errors=False, store=Store(tmp_path / "settings.json"))
    qtbot.addWidget(win)
    with qtbot.waitSignal(win.loaded, timeout=LOAD_TIMEOUT_MS):
        win.show()
    qtbot.waitUntil(lambda: not win.running, timeout=LOAD_TIMEOUT_MS)
    return win
