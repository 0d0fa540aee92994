"""`WorkerClient`: runs the worker as a child process and turns its output into a queue of events.

The worker starts in a fresh interpreter (spawn semantics, safe with CUDA). A reader thread
decodes its stdout; a second thread keeps the tail of its stderr for crash reports. A crash
(EOF on stdout that nobody asked for) becomes an ``error`` event with ``error_type
"WorkerCrashed"`` for every unfinished job, and a fresh worker takes over.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from .protocol import MAX_EVENT_CHARS, TERMINAL_TYPES, ProtocolError, decode_event, encode, read_line, request

CANCEL_GRACE_S = 2.0  # cooperative cancel gets this long before the process is killed
CLOSE_TIMEOUT_S = 5.0  # shutdown gets this long before the process is killed
KILL_WAIT_S = 5.0  # how long to wait for a killed process to be reaped
STDERR_TAIL_LINES = 40  # lines of worker stderr kept for crash reports
MAX_FAILED_STARTS = 3  # workers in a row that die before saying anything: stop restarting (broken setup)
INTERNAL_PREFIX = "_"  # ids of the client's own requests (cancel, shutdown); their replies are not events
WORKER_COMMAND = [sys.executable, "-m", "ntk_studio.jobs.worker"]
# The worker runs an architecture file's factory isolated, under this time limit, before loading it
# (the variable core.models.architecture reads): a hang there becomes an error event, not a stuck job.
ARCH_TIMEOUT_ENV = "NTK_STUDIO_ARCH_TIMEOUT_S"
WORKER_ARCH_TIMEOUT_S = "120"

log = logging.getLogger("ntk_studio.jobs.client")


class _Process:
    """One worker process with its reader threads; `expected_exit` marks exits we caused."""

    def __init__(self, client: WorkerClient, command: list[str]) -> None:
        # Its own process group, so a kill reaches every process of a ranked (torchrun) worker.
        env = {**os.environ, ARCH_TIMEOUT_ENV: os.environ.get(ARCH_TIMEOUT_ENV) or WORKER_ARCH_TIMEOUT_S}
        self.popen = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, bufsize=1, env=env,
                                      start_new_session=os.name == "posix")
        self.expected_exit = False
        self.spoke = False  # set on the first line received: it started, so a later death is not a setup bug
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._stderr_thread = threading.Thread(target=self._drain_stderr, daemon=True, name="worker-stderr")
        self._stderr_thread.start()
        threading.Thread(target=client._read, args=(self,), daemon=True, name="worker-stdout").start()

    def _drain_stderr(self) -> None:
        # Always drained: a full stderr pipe would block the worker mid-job.
        for line in self.popen.stderr:
            self.stderr_tail.append(line)
        self.popen.stderr.close()

    def stderr_text(self, timeout: float = 1.0) -> str:
        """Return the last lines the worker wrote to stderr (waits briefly for the pipe to close)."""
        self._stderr_thread.join(timeout)
        return "".join(self.stderr_tail)

    def close_stdin(self) -> None:
        """Close our end of the worker's stdin (ignoring a pipe the worker already broke)."""
        try:
            self.popen.stdin.close()
        except (OSError, ValueError):
            pass

    def kill(self) -> int | None:
        """Kill the process; return its exit code (None if it could not be reaped in time)."""
        self.expected_exit = True
        try:
            if os.name == "posix":
                os.killpg(self.popen.pid, signal.SIGKILL)
            else:
                self.popen.kill()
        except (ProcessLookupError, PermissionError):
            self.popen.kill()
        try:
            return self.popen.wait(KILL_WAIT_S)
        except subprocess.TimeoutExpired:
            return None


class WorkerClient:
    """A handle on a worker process: submit jobs, read events, cancel (softly, then hard), restart."""

    def __init__(self, command: list[str] | None = None) -> None:
        self.command = list(command or WORKER_COMMAND)
        self.ranked = "--ranked" in self.command
        self.restarts = 0
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._stash: collections.deque[dict[str, Any]] = collections.deque()  # skipped by wait_for
        self._lock = threading.RLock()
        self._finished = threading.Condition(self._lock)
        self._active: set[str] = set()  # submitted ids without a terminal event yet
        self._ids = itertools.count(1)
        self._closed = False
        self._failed_starts = 0
        self.broken: str | None = None  # why no worker runs any more (see MAX_FAILED_STARTS)
        self._proc = _Process(self, self.command)

    @property
    def process(self) -> subprocess.Popen:
        """Return the current worker's Popen (replaced after a restart)."""
        return self._proc.popen

    # ------------------------------------------------------------------ sending
    def submit(self, cmd: str, **args: Any) -> str:
        """Send a request; return its id (the job id of the events it causes)."""
        rid = f"j{next(self._ids)}"
        with self._lock:
            self._active.add(rid)
            if self.broken is None:
                self._write(request(rid, cmd, **args))
                return rid
        self._fail([rid], "The worker keeps failing to start; call restart() after fixing the setup.",
                   details=self.broken, error_type="WorkerUnavailable")
        return rid

    def _write(self, message: dict[str, Any]) -> None:
        try:
            self._proc.popen.stdin.write(encode(message))
            self._proc.popen.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            # The worker is gone; the reader thread sees EOF and reports the crash for this job too.
            log.warning("worker stdin closed while sending %s", message.get("cmd"))

    # ------------------------------------------------------------------ receiving
    def _read(self, proc: _Process) -> None:
        while True:
            line, cut = read_line(proc.popen.stdout, MAX_EVENT_CHARS)  # bounded while reading
            if not line:
                break
            if cut:
                log.warning("ignoring a worker line longer than %d characters", MAX_EVENT_CHARS)
                continue
            try:
                event = decode_event(line)
            except ProtocolError as exc:
                log.warning("ignoring a bad line from the worker: %s", exc)
                continue
            self._deliver(event, proc)
        proc.popen.stdout.close()
        self._on_exit(proc)

    def _deliver(self, event: dict[str, Any], proc: _Process | None = None) -> None:
        with self._lock:
            if proc is not None:
                if proc is not self._proc:
                    return  # a replaced worker's late lines (e.g. a soft `cancelled` racing the kill)
                proc.spoke = True
                self._failed_starts = 0
            if event["id"].startswith(INTERNAL_PREFIX):
                log.debug("reply to an internal request: %s", event)
                return
            if event["type"] in TERMINAL_TYPES and event["id"] in self._active:
                self._active.discard(event["id"])
                self._finished.notify_all()
            self._events.put(event)

    def _on_exit(self, proc: _Process) -> None:
        try:
            code = proc.popen.wait(KILL_WAIT_S)
        except subprocess.TimeoutExpired:
            code = None
        with self._lock:
            proc.close_stdin()  # under the lock: `_write` must not race a closing pipe
            if proc.expected_exit or proc is not self._proc or self._closed:
                return
            lost = sorted(self._active)
            self._failed_starts = 0 if proc.spoke else self._failed_starts + 1
            tail = proc.stderr_text()
            if self._failed_starts >= MAX_FAILED_STARTS:
                self.broken = tail or f"exit code {code}"
                outcome = "it keeps failing to start, so it was not restarted"
            else:
                self._restart()
                outcome = "a fresh worker was started"
        self._fail(lost, f"The worker process exited unexpectedly (exit code {code}); {outcome}.", code, tail)

    def _fail(self, job_ids: list[str], message: str, code: int | None = None, details: str = "",
              error_type: str = "WorkerCrashed") -> None:
        for job_id in job_ids:
            self._deliver({"id": job_id, "type": "error", "error_type": error_type, "exit_code": code,
                           "message": message, "details": details})

    def _restart(self) -> None:
        with self._lock:
            self._proc = _Process(self, self.command)
            self.restarts += 1

    def restart(self) -> None:
        """Kill the current worker (unfinished jobs get `error` events) and start a fresh one."""
        with self._lock:
            lost = sorted(self._active)
            self._proc.kill()
            self.broken, self._failed_starts = None, 0
            self._restart()
        self._fail(lost, "The worker was restarted on request.")

    def _next(self, deadline: float) -> dict[str, Any]:
        with self._lock:
            if self._stash:
                return self._stash.popleft()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("No worker event arrived in time.")
        try:
            return self._events.get(timeout=remaining)
        except queue.Empty:
            raise TimeoutError("No worker event arrived in time.") from None

    def events(self, timeout: float) -> list[dict[str, Any]]:
        """Return every event that arrives within ``timeout`` s (waits the whole time)."""
        deadline, out = time.monotonic() + timeout, []
        while True:
            try:
                out.append(self._next(deadline))
            except TimeoutError:
                return out

    def next_event(self, timeout: float) -> dict[str, Any]:
        """Return the next event; raise TimeoutError if none arrives within ``timeout`` s."""
        return self._next(time.monotonic() + timeout)

    def wait_for(self, job_id: str, types: tuple[str, ...] | str = tuple(TERMINAL_TYPES),
                 timeout: float = 60.0) -> list[dict[str, Any]]:
        """Return ``job_id``'s events up to the first whose type is in ``types``; TimeoutError otherwise.

        Events of other jobs met on the way are kept for later `next_event`/`events` calls.
        """
        types = (types,) if isinstance(types, str) else tuple(types)
        deadline, mine, skipped = time.monotonic() + timeout, [], []
        try:
            while True:
                event = self._next(deadline)
                if event["id"] != job_id:
                    skipped.append(event)
                    continue
                mine.append(event)
                if event["type"] in types:
                    return mine
        except TimeoutError:
            raise TimeoutError(f"Job {job_id} sent no {'/'.join(types)} event within {timeout} s "
                               f"(got {[e['type'] for e in mine]}).") from None
        finally:
            with self._lock:
                self._stash.extendleft(reversed(skipped))

    # ------------------------------------------------------------------ control
    def cancel(self, job_id: str, grace_s: float = CANCEL_GRACE_S) -> bool:
        """Cancel ``job_id``; return True if it stopped cooperatively, False if the worker was killed.

        A ranked worker is killed at once: ranks waiting in a collective cannot see rank 0's token.
        """
        if self.ranked:
            grace_s = 0.0
        with self._lock:
            if job_id not in self._active:
                return True
            self._write(request(f"{INTERNAL_PREFIX}cancel-{job_id}", "cancel", job=job_id))
            if self._finished.wait_for(lambda: job_id not in self._active, timeout=grace_s):
                return True
            # Stuck in code that does not check the token (or hung): kill it and start afresh.
            proc = self._proc
            lost = sorted(self._active)
            proc.kill()
            self._restart()
        self._deliver({"id": job_id, "type": "cancelled", "hard": True})
        self._fail([i for i in lost if i != job_id], f"The worker was killed to cancel job {job_id}.")
        return False

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Ask the worker to shut down; kill it if it has not exited after ``timeout`` s."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            proc = self._proc
            proc.expected_exit = True
            self._write(request(f"{INTERNAL_PREFIX}shutdown", "shutdown"))
        proc.close_stdin()
        try:
            proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()

    def __enter__(self) -> WorkerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
