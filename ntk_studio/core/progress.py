"""Progress events, cancel tokens, and the adapter that turns callback-reporting work into a generator.

Core work reports through a :class:`Reporter`: it checks the cancel token in inner loops (every data
chunk, every CG matvec) and emits throttled :class:`ProgressEvent` records. ``iterate`` runs such
work on a helper thread and yields its events in lockstep, so a consumer that cancels between two
events stops the work before it starts another chunk.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from .errors import Cancelled

MAX_EVENTS_PER_SECOND = 20.0


@dataclass(frozen=True)
class ProgressEvent:
    """One progress report: stage name, fraction done, counters and optional payload."""

    stage: str
    progress: float
    matvecs: int = 0
    residual: float | None = None
    elapsed: float = 0.0
    message: str = ""
    payload: dict[str, Any] = field(default_factory=dict)


class CancelToken:
    """A thread-safe flag that long work checks cooperatively."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        """Ask the work to stop at its next check."""
        self._event.set()

    @property
    def cancelled(self) -> bool:
        """Return whether cancel was requested."""
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        """Raise :class:`Cancelled` when cancel was requested."""
        if self._event.is_set():
            raise Cancelled("The job was cancelled.")


class Reporter:
    """Checks the cancel token and forwards throttled progress events to a sink."""

    def __init__(
        self,
        sink: Callable[[ProgressEvent], None] | None = None,
        cancel: CancelToken | None = None,
        max_rate: float = MAX_EVENTS_PER_SECOND,
    ) -> None:
        self.sink = sink
        self.cancel = cancel or CancelToken()
        self.min_interval = 1.0 / max_rate if max_rate > 0 else 0.0
        self.start = time.perf_counter()
        self.matvecs = 0
        self._last_emit = -float("inf")
        self.stage = "start"
        # When set, every data chunk reports (chunk_stage, fraction of the data done).
        self.chunk_stage: str | None = None

    def check(self) -> None:
        """Raise :class:`Cancelled` when cancel was requested; called once per unit of work."""
        self.cancel.raise_if_cancelled()

    def elapsed(self) -> float:
        """Return seconds since this reporter was created."""
        return time.perf_counter() - self.start

    def emit(self, stage: str, progress: float, force: bool = False, **fields: Any) -> None:
        """Send an event unless one was sent less than 1/max_rate seconds ago (forced ones always go)."""
        self.stage = stage
        now = time.perf_counter()
        if self.sink is None or (not force and now - self._last_emit < self.min_interval):
            self.cancel.raise_if_cancelled()
            return
        self._last_emit = now
        fields.setdefault("matvecs", self.matvecs)
        self.sink(ProgressEvent(stage=stage, progress=min(max(progress, 0.0), 1.0), elapsed=now - self.start, **fields))
        self.cancel.raise_if_cancelled()


_DONE = object()


def iterate(
    work: Callable[[Reporter], Any], cancel: CancelToken | None = None, max_rate: float = MAX_EVENTS_PER_SECOND
) -> Generator[ProgressEvent, None, Any]:
    """Yield the events `work(reporter)` emits, then return its result (``StopIteration.value``).

    The work runs on a helper thread but in lockstep with the consumer: after each event it waits
    until the consumer asks for the next one, and then checks the cancel token. Closing the
    generator early cancels the work and waits for it to stop.
    """
    cancel = cancel or CancelToken()
    to_consumer: queue.Queue = queue.Queue(maxsize=1)
    resume = threading.Semaphore(0)
    outcome: dict[str, Any] = {}

    def sink(event: ProgressEvent) -> None:
        to_consumer.put(event)
        resume.acquire()

    def run() -> None:
        try:
            outcome["result"] = work(Reporter(sink, cancel, max_rate))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer's thread
            outcome["error"] = exc
        to_consumer.put(_DONE)

    thread = threading.Thread(target=run, name="ntk-studio-job", daemon=True)
    thread.start()
    try:
        while True:
            item = to_consumer.get()
            if item is _DONE:
                thread.join()
                break
            yield item
            resume.release()
    finally:
        if thread.is_alive():
            cancel.cancel()
            resume.release()
            # Drain until the work acknowledges the cancel; every pending emit gets released.
            while thread.is_alive():
                try:
                    if to_consumer.get(timeout=0.05) is not _DONE:
                        resume.release()
                except queue.Empty:
                    pass
            thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("result")
