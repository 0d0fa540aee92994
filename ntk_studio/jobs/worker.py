"""The worker process: reads protocol requests on stdin, runs one job at a time, writes events.

The reading loop stays on the main thread and jobs run on a background thread, so ``ping`` and
``cancel`` are answered while a job runs. Cancel is cooperative (the job's CancelToken); a client
that needs a hard stop kills the process. stdout carries protocol lines only; logs go to stderr.
Run it as ``python -m ntk_studio.jobs.worker`` or ``ntk-studio-cli worker``.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from dataclasses import dataclass
from typing import IO, Any

from ntk_studio.core import CancelToken
from ntk_studio.core.errors import Cancelled

from .protocol import (
    IMMEDIATE_COMMANDS,
    MAX_LINE_CHARS,
    ProtocolError,
    decode_request,
    encode,
    error_event,
    read_line,
)
from .ranked import ALL_RANKS, STOP, RankBroadcaster, follow, init_ranks
from .tasks import JOBS, WorkerState

UNKNOWN_ID = "?"  # the id of replies to lines too broken to carry their own
SHUTDOWN_JOIN_S = 5.0  # how long shutdown waits for a cancelled job to reach its next check
DEFAULT_THREADS = 1  # two cores shared with the GUI: more intra-op threads stall under load
THREADS_ENV = "NTK_STUDIO_WORKER_THREADS"

log = logging.getLogger("ntk_studio.worker")


@dataclass
class _Job:
    id: str
    token: CancelToken
    thread: threading.Thread | None = None


class Worker:
    """Dispatches decoded requests; owns the warm state and the single job slot."""

    def __init__(self, out: IO[str], broadcaster=None) -> None:
        self._out = out
        self.broadcaster = broadcaster  # rank 0 of a ranked worker: sends all-ranks jobs to the others
        self._write_lock = threading.Lock()
        self._slot_lock = threading.Lock()
        self._job: _Job | None = None
        self.state = WorkerState()

    def send(self, message: dict[str, Any]) -> None:
        """Write one protocol line and flush it (thread-safe)."""
        line = encode(message)
        with self._write_lock:
            self._out.write(line)
            self._out.flush()

    def handle(self, line: str) -> bool:
        """Handle one request line; return False when the worker should stop."""
        try:
            req = decode_request(line)
        except Exception as exc:  # noqa: BLE001 - a bad line never ends the worker; it gets a ProtocolError reply
            if not isinstance(exc, ProtocolError):
                log.exception("decoding a request failed")
                exc = ProtocolError(f"Unreadable message ({type(exc).__name__}: {exc}).")
            self.send(error_event(exc.request_id or UNKNOWN_ID, exc, "ProtocolError"))
            return True
        rid, cmd, args = req["id"], req["cmd"], req["args"]
        if cmd in IMMEDIATE_COMMANDS:
            return getattr(self, f"_{cmd}")(rid, args)
        with self._slot_lock:
            running, job = self._job, None
            if running is None:
                job = self._job = _Job(rid, CancelToken())
                job.thread = threading.Thread(target=self._run, args=(job, cmd, args), name=f"job-{rid}", daemon=True)
        if job is None:
            self.send({"id": rid, "type": "error", "error_type": "Busy", "details": "",
                       "message": f"The worker is busy with job {running.id!r}; cancel it or wait for it."})
            return True
        if self.broadcaster is not None and cmd in ALL_RANKS:
            self.broadcaster.send(cmd, args)
        job.thread.start()
        return True

    def _ping(self, rid: str, args: dict) -> bool:
        job = self._job
        example = self.state.example
        self.send({"id": rid, "type": "result", "pong": True, "pid": os.getpid(),
                   "busy": job.id if job else None, "example": example.name if example else None})
        return True

    def _cancel(self, rid: str, args: dict) -> bool:
        job = self._job
        if job is None or job.id != args["job"]:
            # Not an error worth alarming anyone: the job may just have finished.
            self.send({"id": rid, "type": "error", "error_type": "NotRunning", "details": "",
                       "message": f"No running job {args['job']!r} to cancel."})
        else:
            job.token.cancel()  # the job thread reports `cancelled` at its next check
        return True

    def _shutdown(self, rid: str, args: dict) -> bool:
        self.stop()
        self.send({"id": rid, "type": "result", "shutdown": True})
        return False

    def stop(self, timeout: float = SHUTDOWN_JOIN_S) -> None:
        """Cancel the running job, if any, and wait up to ``timeout`` s for it to stop."""
        job = self._job
        if job is not None and job.thread is not None:
            job.token.cancel()
            job.thread.join(timeout)

    def _run(self, job: _Job, cmd: str, args: dict) -> None:
        self.send({"id": job.id, "type": "started", "cmd": cmd})
        try:
            gen = JOBS[cmd](self.state, args, job.token)
            while True:
                try:
                    kind, payload = next(gen)
                except StopIteration as stop:
                    final = {"id": job.id, "type": "result", **(stop.value or {})}
                    break
                self.send({"id": job.id, "type": kind, **payload})
        except Cancelled:
            final = {"id": job.id, "type": "cancelled", "hard": False}
        except Exception as exc:  # noqa: BLE001 - every failure becomes an error event, never a dead worker
            log.exception("job %s (%s) failed", job.id, cmd)
            final = error_event(job.id, exc)
        # Free the slot before the terminal event: a client that submits on `result` must not see "busy".
        with self._slot_lock:
            self._job = None
        try:
            self.send(final)
        except (TypeError, ValueError) as exc:  # a payload JSON cannot hold: report it instead
            self.send(error_event(job.id, exc, "EncodeError"))


def serve(stdin: IO[str], stdout: IO[str], worker: Worker | None = None) -> int:
    """Serve requests from ``stdin`` until shutdown or EOF; return the exit code (0)."""
    worker = worker or Worker(stdout)
    while True:
        # readline, not iteration: iteration may read ahead and delay cancel. Bounded while reading:
        # a 300 MB line is skipped in pieces, never held whole.
        line, cut = read_line(stdin, MAX_LINE_CHARS)
        if not line:
            worker.stop()  # client went away: stop the job instead of computing for nobody
            break
        if cut:
            exc = ProtocolError(f"A message longer than {MAX_LINE_CHARS} characters was skipped; "
                                "requests are a few hundred bytes.")
            worker.send(error_event(UNKNOWN_ID, exc, "ProtocolError"))
            continue
        if line.strip() and not worker.handle(line):
            break
    if worker.broadcaster is not None:
        worker.broadcaster.send(STOP, {})
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the worker on this process's stdin/stdout (``--ranked``: as one rank of a torchrun job)."""
    import torch

    ranked = "--ranked" in (sys.argv[1:] if argv is None else argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="worker %(levelname)s: %(message)s")
    torch.set_num_threads(int(os.environ.get(THREADS_ENV, DEFAULT_THREADS)))
    protocol_out = sys.stdout
    sys.stdout = sys.stderr  # a stray print in a library must not corrupt the protocol stream
    if not ranked:
        return serve(sys.stdin, protocol_out)
    shard, rank = init_ranks()
    if rank != 0:
        state = WorkerState()
        state.shard = shard
        return follow(state, JOBS)
    worker = Worker(protocol_out, broadcaster=RankBroadcaster())
    worker.state.shard = shard
    return serve(sys.stdin, protocol_out, worker)


if __name__ == "__main__":
    sys.exit(main())
