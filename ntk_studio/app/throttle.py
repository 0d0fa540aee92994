"""`PlotThrottle`: coalesces plot updates so the plots redraw at most ``MAX_REDRAWS_PER_S`` times a second.

Workers already send at most 20 events a second, but several streams (progress, epochs) can
interleave; each update is stored under a key and only the latest one per key is drawn at the
next tick. Final results call `flush` so nothing waits for the timer.
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QObject, QTimer

MAX_REDRAWS_PER_S = 20
TICK_MS = 1000 // MAX_REDRAWS_PER_S


class PlotThrottle(QObject):
    """Keeps the latest pending update per key and applies them all at most once per tick."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._pending: dict[str, Callable[[], None]] = {}
        self._timer = QTimer(self)
        self._timer.setInterval(TICK_MS)
        self._timer.timeout.connect(self.flush)
        self.flushes = 0  # redraw rounds done (for tests and the rate bound)

    def submit(self, key: str, update: Callable[[], None]) -> None:
        """Schedule ``update`` (replacing any pending one under ``key``) for the next tick."""
        self._pending[key] = update
        if not self._timer.isActive():
            self._timer.start()

    def flush(self) -> None:
        """Apply every pending update now; the timer stops when nothing is pending."""
        pending, self._pending = self._pending, {}
        if not pending:
            self._timer.stop()
            return
        self.flushes += 1
        for update in pending.values():
            update()

    def discard(self) -> None:
        """Drop pending updates (a cancelled job's late data must not be drawn)."""
        self._pending.clear()
        self._timer.stop()
