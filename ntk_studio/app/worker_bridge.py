"""`WorkerBridge`: the worker process seen from the GUI thread, as Qt signals.

A `WorkerClient` runs the engine in a child process. A reader `QThread` waits on its event queue
and hands each event to the GUI thread through a queued signal, so the GUI never blocks on the
worker. `cancel` blocks for up to the client's grace period, so it runs on a helper thread.
"""

from __future__ import annotations

import threading
from typing import Any

from PySide6.QtCore import QObject, QThread, Signal, Slot

from ntk_studio.jobs.client import CANCEL_GRACE_S, WorkerClient
from ntk_studio.jobs.ranked import ranked_worker_command

POLL_S = 0.1  # how long the reader waits for an event before checking whether it should stop
READER_JOIN_MS = 2000  # how long shutdown waits for the reader thread to notice the stop flag
CLOSE_TIMEOUT_S = 3.0  # how long shutdown waits for the worker to exit before killing it


class _EventReader(QThread):
    """Moves events from the client's queue to the GUI thread (one signal per event)."""

    event = Signal(dict)

    def __init__(self, client: WorkerClient, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._client = client
        self._stop = threading.Event()

    def stop(self) -> None:
        """Ask the loop to end at its next poll."""
        self._stop.set()

    def run(self) -> None:  # noqa: D102 - QThread entry point
        while not self._stop.is_set():
            try:
                event = self._client.next_event(POLL_S)
            except TimeoutError:
                continue
            self.event.emit(event)


class WorkerBridge(QObject):
    """Owns a worker process and its reader thread; turns worker events into Qt signals."""

    started = Signal(str, dict)
    progress = Signal(str, dict)
    epoch = Signal(str, dict)
    result = Signal(str, dict)
    failed = Signal(str, dict)
    cancelled = Signal(str, dict)
    warning = Signal(str, dict)  # an engine warning the job went on after (e.g. a best-effort solve)

    def __init__(self, client: WorkerClient | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.client = client or WorkerClient()
        self.commands: dict[str, str] = {}  # job id -> command, so listeners know what a result is
        self._signals = {"started": self.started, "progress": self.progress, "epoch": self.epoch,
                         "result": self.result, "error": self.failed, "cancelled": self.cancelled,
                         "warning": self.warning}
        self.ranks = 1
        self._restart_base = 0  # restarts of workers this bridge replaced (use_ranks)
        self._reader = self._start_reader()
        self._closed = False

    def _start_reader(self) -> _EventReader:
        reader = _EventReader(self.client, self)
        reader.event.connect(self._dispatch)
        reader.start()
        return reader

    def use_ranks(self, ranks: int) -> None:
        """Replace the worker by one of `ranks` data-parallel processes (torchrun; 1: a plain worker).

        The new worker has nothing loaded, which `restarts` reports like a crash restart. The old
        one is shut down on a helper thread, so the GUI does not wait for it.
        """
        ranks = max(1, int(ranks))
        if ranks == self.ranks or self._closed:
            return
        base = self.restarts + 1
        self._reader.stop()
        self._reader.wait(READER_JOIN_MS)
        old = self.client
        threading.Thread(target=old.close, args=(CLOSE_TIMEOUT_S,), daemon=True, name="old-worker-close").start()
        self.client = WorkerClient(ranked_worker_command(ranks) if ranks > 1 else None)
        self.ranks, self._restart_base = ranks, base
        self._reader = self._start_reader()

    # ------------------------------------------------------------------ jobs
    def submit(self, cmd: str, **args: Any) -> str:
        """Send a job to the worker; return its job id (events arrive later as signals)."""
        job = self.client.submit(cmd, **args)
        self.commands[job] = cmd
        return job

    def load_example(self, name: str) -> str:
        """Load a built-in example in the worker; return the job id."""
        return self.submit("load_example", name=name)

    def fit_gp(self, **args: Any) -> str:
        """Fit the linearized GP (protocol arguments of ``fit_gp``); return the job id."""
        return self.submit("fit_gp", **args)

    def finetune(self, **args: Any) -> str:
        """Fine-tune the same model (protocol arguments of ``finetune``); return the job id."""
        return self.submit("finetune", **args)

    def cancel(self, job_id: str, grace_s: float = CANCEL_GRACE_S) -> threading.Thread:
        """Cancel ``job_id`` on a helper thread (soft, then a hard kill); return that thread."""
        thread = threading.Thread(target=self.client.cancel, args=(job_id, grace_s), daemon=True,
                                  name=f"cancel-{job_id}")
        thread.start()
        return thread

    def command_of(self, job_id: str) -> str | None:
        """Return the command that started ``job_id`` (None for an unknown id)."""
        return self.commands.get(job_id)

    @property
    def restarts(self) -> int:
        """Return how many times the worker was restarted (a fresh worker has nothing loaded)."""
        return self._restart_base + self.client.restarts

    def shutdown(self) -> None:
        """Stop the reader thread and the worker process (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._reader.stop()
        self._reader.wait(READER_JOIN_MS)
        self.client.close(CLOSE_TIMEOUT_S)

    # ------------------------------------------------------------------ events
    @Slot(dict)
    def _dispatch(self, event: dict) -> None:
        signal = self._signals.get(event.get("type"))
        if signal is not None and not self._closed:
            signal.emit(event["id"], event)
