"""`RunModel`: the window's job chains and their state, without Qt.

Work is organised in chains of worker jobs: a *load* chain (example, model file, data file, project),
a *run* chain (Adapt: GP fit, GD trajectory, fine-tuning), an *export* chain and quiet *plan* jobs
(the route estimate). One job runs at a time; a chain asked for while a plan job is in flight starts
when it ends. A fresh worker (after a crash or a forced cancel) is first given the user's inputs
again; those *restore* steps change nothing the panels show, so the panels and the next job agree.

The model talks to a duck-typed worker (``submit(cmd, **args) -> job id``, ``cancel(job)``,
``restarts``), is fed the worker's event dicts through :meth:`RunModel.handle`, and tells its
listeners through plain callbacks (:class:`Notifier`). `MainWindow` renders it; tests drive it with
a fake worker and no Qt at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .eta import eta_seconds, format_eta
from .run_records import Epoch, LoadResult, PlanResult, Record, parse_result
from .session import Inputs

# Share of the progress bar per run step (normalised over the steps of a run).
STEP_WEIGHTS = {"fit_gp": 0.45, "trajectory": 0.05, "finetune": 0.5, "export": 1.0}
STEP_NAMES = {"fit_gp": "GP fit", "trajectory": "linearized GD", "finetune": "fine-tuning", "export": "export"}
LOAD_COMMANDS = ("load_example", "load_model", "load_data")
RESULT_COMMANDS = ("fit_gp", "trajectory", "finetune")  # what a run leaves on screen (and in a project)
# A time-left estimate older than this (no progress report since) is no longer shown: the job is
# in a stage that does not report (e.g. predictions after "posterior ready").
STALE_AFTER_S = 2.0


class Worker(Protocol):
    """What the model needs of a worker (`WorkerBridge` in the app, a fake in tests)."""

    restarts: int

    def submit(self, cmd: str, **args: Any) -> str: ...

    def cancel(self, job_id: str) -> object: ...


class Notifier:
    """A list of callbacks: ``connect(fn)``, then ``emit(*args)`` calls each in order."""

    def __init__(self) -> None:
        self._slots: list[Callable[..., None]] = []

    def connect(self, slot: Callable[..., None]) -> None:
        """Call ``slot`` on every later emit."""
        self._slots.append(slot)

    def disconnect(self, slot: Callable[..., None]) -> None:
        """Stop calling ``slot``."""
        self._slots.remove(slot)

    def emit(self, *args: Any) -> None:
        """Call every connected slot with ``args``."""
        for slot in list(self._slots):
            slot(*args)


@dataclass
class Step:
    """One worker job of a chain. ``restore``: it rebuilds a fresh worker's inputs (the panels stay)."""

    cmd: str
    args: dict[str, Any]
    restore: bool = False
    project: bool = False
    defaults: bool = False

    @classmethod
    def of(cls, d: dict[str, Any] | Step) -> Step:
        """Return a Step from the dict form callers use ({'cmd', 'args', flags…})."""
        if isinstance(d, Step):
            return d
        return cls(d["cmd"], dict(d.get("args") or {}), bool(d.get("restore")), bool(d.get("project")),
                   bool(d.get("defaults")))


@dataclass(frozen=True)
class Progress:
    """What the progress bar shows: ``fraction`` in [0, 1] (None: leave the bar), ``text``, ``state``.

    ``state``: 'idle', 'running', 'cancelling', 'cancelled', 'done', 'failed'.
    """

    fraction: float | None
    text: str
    state: str


@dataclass
class _Run:
    """Bookkeeping of the chain in flight."""

    kind: str
    weights: dict[str, tuple[float, float]] = field(default_factory=dict)
    started: float = 0.0
    fraction: float = 0.0
    updated: float = 0.0
    stage: str = ""


class RunModel:
    """The job chains, their state and the typed results of the last run; no widgets, no Qt."""

    def __init__(self, worker: Worker, clock: Callable[[], float] = time.monotonic) -> None:
        self.worker = worker
        self.clock = clock
        self.inputs = Inputs()
        self.records: dict[str, Record] = {}  # cmd -> typed result of the last run (or the opened project)
        self.settings: dict[str, Any] | None = None  # the panel settings the last run used
        self.pending_project: Any = None  # a project being opened: its results are shown when its loads end
        self.saved = True  # False once a run left results that no project holds yet
        self.job: str | None = None
        self.chain: str | None = None  # "load" | "run" | "plan" | "export"
        self.step: Step | None = None
        self.queue: list[Step] = []
        self.deferred: tuple[str, list[Step]] | None = None
        self.plan_dirty = False
        self.stopping = False
        self.loaded_at: int | None = None  # worker.restarts when the worker last got our inputs
        self.epochs_planned = 1
        self._run: _Run | None = None
        self.progress = Progress(None, "", "idle")
        # Listeners (all plain callbacks).
        self.busy_changed = Notifier()  # (busy: bool) a load/run/export chain started or ended
        self.progress_changed = Notifier()  # (Progress)
        self.logged = Notifier()  # (text)
        self.status = Notifier()  # (text) one-line status
        self.loaded = Notifier()  # (Step, LoadResult) inputs the user asked for (not restore steps)
        self.columns_needed = Notifier()  # (LoadResult) a table answered with its columns
        self.result = Notifier()  # (cmd, Record) fit_gp / trajectory / finetune / export
        self.planned = Notifier()  # (PlanResult)
        self.epoch = Notifier()  # (Epoch)
        self.cleared = Notifier()  # (why: 'run' | 'inputs') the previous results are no longer valid
        self.finished = Notifier()  # (chain, ok, message, project) a load/run/export chain ended
        self.failed = Notifier()  # (chain, kind, message, details)
        self.warned = Notifier()  # (text) the engine warned and the job went on
        self.plan_due = Notifier()  # () settings changed while busy, or new inputs: a fresh estimate is due

    # ------------------------------------------------------------------ state
    @property
    def running(self) -> bool:
        """Return whether a load, run or export chain is in flight (quiet plan jobs do not count)."""
        return self.job is not None and self.chain != "plan"

    @property
    def results(self) -> dict[str, Any]:
        """Return the last run as a project stores it: {'settings': …, cmd: the worker's dict}."""
        out: dict[str, Any] = {} if self.settings is None else {"settings": self.settings}
        out.update({cmd: rec.payload for cmd, rec in self.records.items()})
        return out

    def set_results(self, results: dict[str, Any]) -> None:
        """Take a project's stored results as the current ones (already drawn by the caller)."""
        self.settings = results.get("settings")
        self.records = {cmd: parse_result(cmd, results[cmd]) for cmd in RESULT_COMMANDS if results.get(cmd)}
        self.saved = True

    @property
    def has_results(self) -> bool:
        """Return whether a run's results are held (the GP at least)."""
        return "fit_gp" in self.records

    def mark_saved(self) -> None:
        """Record that the current results are in a project file."""
        self.saved = True

    # ------------------------------------------------------------------ user actions
    def run(self, steps: list[dict[str, Any]], settings: dict[str, Any], epochs: int) -> bool:
        """Start an Adapt chain; the previous results are dropped at once. Return False when busy."""
        if self.running:
            return False
        plan = [Step.of(s) for s in steps]
        self.epochs_planned = max(1, int(epochs))
        self.records, self.settings, self.saved = {}, settings, True
        self.cleared.emit("run")
        self.start("run", plan)
        return True

    def cancel(self) -> bool:
        """Ask the running chain to stop at any stage; return False when there was nothing to stop."""
        if not self.running or self.stopping:
            return False
        self.stopping = True
        self.queue.clear()
        self.status.emit("Cancelling…")
        self.logged.emit(f"[{self.job}] cancel requested")
        self._set_progress(Progress(None, f"{self._percent()} · cancelling…", "cancelling"))
        self.worker.cancel(self.job)
        return True

    def request_plan(self, args: dict[str, Any]) -> None:
        """Ask for the route estimate now, or once the job in flight ends."""
        if self.job is not None:
            self.plan_dirty = True
            return
        self.start("plan", [Step("plan", args)])

    def abandon_plan(self) -> None:
        """Forget a plan job in flight (its worker was replaced); a chain waiting for it starts."""
        if self.chain == "plan":
            self._finish(True, "")

    # ------------------------------------------------------------------ chains
    def start(self, kind: str, steps: list[dict[str, Any]] | list[Step]) -> None:
        """Start a chain of ``kind`` (or defer it behind a plan job in flight)."""
        plan = [Step.of(s) for s in steps]
        if self.job is not None:
            if self.chain == "plan" and kind != "plan":
                self.deferred = (kind, plan)
            return
        restarted = self.loaded_at is not None and self.loaded_at != self.worker.restarts
        if restarted and self.inputs.load_steps() and plan and plan[0].cmd != "load_example":
            if kind == "plan":
                return  # the next load or run gives the fresh worker our inputs first
            plan = [Step(c, a, restore=True) for c, a in self.inputs.load_steps()] + plan
        self.chain, self.queue, self.stopping = kind, plan, False
        if kind != "plan":
            now = self.clock()
            self._run = _Run(kind, self._weights(plan), started=now, updated=now)
            self._set_progress(Progress(0.0, "0 %", "running"))
            self.busy_changed.emit(True)
        self._next()

    @staticmethod
    def _weights(plan: list[Step]) -> dict[str, tuple[float, float]]:
        weighted = [s.cmd for s in plan if s.cmd in STEP_WEIGHTS]
        total = sum(STEP_WEIGHTS[c] for c in weighted) or 1.0
        out, offset = {}, 0.0
        for cmd in weighted:
            out[cmd] = (offset / total, STEP_WEIGHTS[cmd] / total)
            offset += STEP_WEIGHTS[cmd]
        return out

    def _next(self) -> None:
        if not self.queue:
            self._finish(True, "Ready." if self.chain == "load" else "Done.")
            return
        self.step = self.queue.pop(0)
        self.job = self.worker.submit(self.step.cmd, **self.step.args)
        if self.chain != "plan":
            if self._run is not None:
                self._run.stage = STEP_NAMES.get(self.step.cmd, self.step.cmd.replace("_", " "))
            self.status.emit(f"Running {self.step.cmd}…")
            self.logged.emit(f"[{self.job}] submit {self.step.cmd}")

    def _finish(self, ok: bool, message: str, state: str | None = None) -> None:
        chain, run = self.chain, self._run
        self.job, self.chain, self.queue, self.stopping, self.step, self._run = None, None, [], False, None, None
        if chain == "plan":
            self._after_idle()
            return
        project, self.pending_project = self.pending_project, None
        state = state or ("done" if ok else "failed")
        elapsed = self.clock() - run.started if run is not None else 0.0
        if state == "done":
            text = "Ready" if chain == "load" else f"Done in {format_eta(elapsed) or '0 s'}"
            self._set_progress(Progress(1.0, text, "done"))
        else:
            self._set_progress(Progress(None, message.rstrip("."), state))
        self.busy_changed.emit(False)
        self.finished.emit(chain, ok, message, project if ok else None)
        self.plan_dirty = self.plan_dirty or (ok and chain == "load")
        self._after_idle()

    def _after_idle(self) -> None:
        if self.job is not None:
            return
        if self.deferred is not None:
            kind, steps = self.deferred
            self.deferred = None
            self.start(kind, steps)
        elif self.plan_dirty:
            self.plan_dirty = False
            self.plan_due.emit()  # the window knows the panel settings the estimate is for

    # ------------------------------------------------------------------ progress
    def _percent(self) -> str:
        return f"{int(100 * (self._run.fraction if self._run else 0.0))} %"

    def _set_progress(self, progress: Progress) -> None:
        self.progress = progress
        self.progress_changed.emit(progress)

    def _report(self, cmd: str, fraction: float, stage: str = "") -> None:
        run = self._run
        if run is None or self.stopping:
            return
        offset, share = run.weights.get(cmd, (0.0, 1.0))
        run.fraction = min(max(offset + share * min(max(fraction, 0.0), 1.0), 0.0), 1.0)
        run.updated = self.clock()
        if stage:
            run.stage = stage
        self.tick()

    def tick(self) -> None:
        """Refresh the progress text from the clock (the window calls it about once a second).

        The time left is extrapolated from the last report while it is fresh; when none came for
        ``STALE_AFTER_S`` the bar says what runs and for how long, not a frozen estimate.
        """
        run = self._run
        if run is None or self.stopping or self.chain == "plan":
            return
        now = self.clock()
        elapsed = now - run.started
        if now - run.updated <= STALE_AFTER_S:
            eta = format_eta(eta_seconds(run.fraction, elapsed))
            text = f"{self._percent()} · {eta} left" if eta else self._percent()
        else:
            text = f"{self._percent()} · {run.stage} · {format_eta(elapsed)} elapsed"
        self._set_progress(Progress(run.fraction, text, "running"))

    # ------------------------------------------------------------------ worker events
    def handle(self, event: dict[str, Any]) -> None:
        """Take one worker event ({'id', 'type', …}); events of other jobs are ignored."""
        if event.get("id") != self.job or self.job is None:
            return
        kind = event.get("type")
        handler = {"started": self._on_started, "progress": self._on_progress, "epoch": self._on_epoch,
                   "result": self._on_result, "error": self._on_failed, "cancelled": self._on_cancelled,
                   "warning": self._on_warning}.get(kind)
        if handler is not None:
            handler(event)

    def _on_started(self, event: dict[str, Any]) -> None:
        if self.chain != "plan":
            self.logged.emit(f"[{self.job}] started {event.get('cmd', '')}")

    def _on_progress(self, event: dict[str, Any]) -> None:
        if self.chain not in ("run", "export") or self.stopping:
            return
        stage = str(event.get("stage") or "")
        if event.get("progress") is not None:
            self._report(self.step.cmd, float(event["progress"]), stage)
        self.logged.emit(f"[{self.job}] {stage}: {event.get('message') or ''}".rstrip(": "))

    def _on_warning(self, event: dict[str, Any]) -> None:
        text = f"warning: {event.get('message') or ''}"
        self.logged.emit(f"[{self.job}] {text}")
        self.warned.emit(text)

    def _on_epoch(self, event: dict[str, Any]) -> None:
        if self.stopping:
            return  # a cancelled job's late data is not drawn
        record = Epoch.from_event(event)
        self.epoch.emit(record)
        self._report("finetune", record.epoch / self.epochs_planned, "fine-tuning")

    def _on_result(self, event: dict[str, Any]) -> None:
        step = self.step
        record = parse_result(step.cmd, event)
        if isinstance(record, PlanResult):
            self.planned.emit(record)
        elif isinstance(record, LoadResult):
            self._loaded(step, record)
        else:
            if step.cmd in RESULT_COMMANDS:
                self.records[step.cmd] = record
                self.saved = False
            self.result.emit(step.cmd, record)
        if self.stopping and self.chain != "plan":
            self._finish(False, "Cancelled after the job finished.", "cancelled")
        else:
            self._next()

    def _loaded(self, step: Step, record: LoadResult) -> None:
        self.loaded_at = self.worker.restarts
        if record.needs_columns:
            self.columns_needed.emit(record)
            return
        if step.restore:  # a fresh worker got the inputs back: nothing the user sees changes
            self.logged.emit(f"[{self.job}] restored {step.cmd.removeprefix('load_')} in the fresh worker")
            return
        self._record_input(step, record)
        if self.records or self.settings is not None:
            self.records, self.settings, self.saved = {}, None, True
        self.cleared.emit("inputs")
        self.loaded.emit(step, record)

    def _record_input(self, step: Step, record: LoadResult) -> None:
        expected = None
        if step.cmd == "load_example":
            self.inputs = Inputs(example=step.args["name"])
            return
        project = self.pending_project
        if step.cmd == "load_model":
            held = self.inputs.model if project is None else project.inputs.model
            expected = (held or {}).get("sha256")
            self.inputs.model = {**step.args, "sha256": record.sha256}
        elif step.cmd == "load_data":
            expected = None if project is None else (project.inputs.data or {}).get("sha256")
            self.inputs.data = {**step.args, "sha256": record.sha256}
        if project is not None and expected and expected != record.sha256:
            self.logged.emit(f"warning: {record.path} changed since the project was saved (SHA-256 differs); "
                             "the results shown are the saved ones.")

    def _on_cancelled(self, event: dict[str, Any]) -> None:
        how = "killed" if event.get("hard") else "stopped"
        self.logged.emit(f"[{self.job}] cancelled ({how})")
        self._finish(False, f"Cancelled ({how}).", "cancelled")

    def _on_failed(self, event: dict[str, Any]) -> None:
        chain = self.chain
        kind, message = str(event.get("error_type") or "Error"), str(event.get("message") or "")
        self.logged.emit(f"[{self.job}] {kind}: {message}")
        self.pending_project = None
        self._finish(False, f"{kind}: {message}")
        self.failed.emit(chain, kind, message, str(event.get("details") or ""))
