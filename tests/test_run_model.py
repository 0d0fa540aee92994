"""The window's job chains without Qt: `RunModel` driven by a fake worker and a fake clock.

The first test proves the module and everything it imports load with PySide6 unavailable.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from ntk_studio.app.run_model import STALE_AFTER_S, RunModel
from ntk_studio.app.run_records import FinetuneResult, GpResult, parse_result


class FakeWorker:
    """Hands out job ids, records submits and cancels; tests play the worker's events back."""

    def __init__(self) -> None:
        self.restarts = 0
        self.submitted: list[tuple[str, str, dict]] = []
        self.cancelled: list[str] = []

    def submit(self, cmd: str, **args) -> str:
        job = f"j{len(self.submitted) + 1}"
        self.submitted.append((job, cmd, args))
        return job

    def cancel(self, job_id: str) -> None:
        self.cancelled.append(job_id)

    @property
    def last(self) -> tuple[str, str, dict]:
        return self.submitted[-1]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _session(example: str = "sine") -> dict:
    return {"example": example, "task": "regression", "model": {"total_params": 10}, "data": {"n_rows": 5}}


def _model(events: list | None = None):
    worker, clock = FakeWorker(), Clock()
    model = RunModel(worker, clock)
    if events is not None:
        for name in ("cleared", "loaded", "result", "finished", "failed", "progress_changed", "epoch"):
            getattr(model, name).connect(lambda *a, _n=name: events.append((_n, *a)))
    return model, worker, clock


def _load(model: RunModel, worker: FakeWorker) -> None:
    model.start("load", [{"cmd": "load_example", "args": {"name": "sine"}}])
    job = worker.last[0]
    model.handle({"id": job, "type": "result", "session": _session()})


RUN_STEPS = [{"cmd": "fit_gp", "args": {"params": "head"}}, {"cmd": "finetune", "args": {"params": "head", "epochs": 10}}]
GP = {"task": "regression", "route": "function/cholesky", "prior_var": 1.0, "noise": 0.01, "wall_time": 0.5,
      "metrics": {"rmse": 0.1}, "unadapted_metrics": {"rmse": 0.9}}


def test_imports_without_qt():
    code = ("import sys; sys.modules['PySide6'] = None; sys.modules['pyqtgraph'] = None\n"
            "import ntk_studio.app.run_model, ntk_studio.app.run_records, ntk_studio.app.numbers\n"
            "assert not [m for m in sys.modules if m.startswith(('PySide6.', 'pyqtgraph.'))]\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_a_run_chains_its_jobs_and_keeps_typed_results():
    events: list = []
    model, worker, clock = _model(events)
    _load(model, worker)
    assert model.inputs.example == "sine" and not model.running
    assert model.run(RUN_STEPS, {"params": "head"}, epochs=10)
    assert model.running and worker.last[1] == "fit_gp"
    model.handle({"id": "other", "type": "result"})  # another job's late event: ignored
    assert worker.last[1] == "fit_gp"
    model.handle({"id": worker.last[0], "type": "result", **GP})
    assert worker.last[1] == "finetune"
    model.handle({"id": worker.last[0], "type": "epoch", "epoch": 5, "train_loss": 0.5})
    assert model.progress.fraction == pytest.approx(0.45 / 0.95 + 0.5 / 0.95 * 0.5)
    model.handle({"id": worker.last[0], "type": "result", "task": "regression", "epochs_run": 10,
                  "test_loss": 0.13296772369788148, "wall_time": 1.5, "metrics": {"rmse": 0.2}})
    assert not model.running and model.progress.state == "done" and model.progress.fraction == 1.0
    assert isinstance(model.records["fit_gp"], GpResult) and model.records["fit_gp"].route == "function/cholesky"
    assert isinstance(model.records["finetune"], FinetuneResult) and model.records["finetune"].epochs_run == 10
    assert model.results["settings"] == {"params": "head"} and model.results["fit_gp"]["metrics"] == {"rmse": 0.1}
    assert not model.saved
    assert ("finished", "run", True, "Done.", None) in events


def test_a_new_run_and_new_inputs_clear_the_previous_results():
    events: list = []
    model, worker, _ = _model(events)
    _load(model, worker)
    model.run(RUN_STEPS, {}, epochs=10)
    model.handle({"id": worker.last[0], "type": "result", **GP})
    events.clear()
    model.cancel()
    model.handle({"id": worker.last[0], "type": "cancelled"})
    assert model.run(RUN_STEPS, {}, epochs=10)
    assert events.index(("cleared", "run")) < len(events) and model.records == {}
    model.handle({"id": worker.last[0], "type": "result", **GP})
    assert model.has_results
    model.cancel()
    model.handle({"id": worker.last[0], "type": "cancelled"})
    model.start("load", [{"cmd": "load_model", "args": {"path": "m.pt"}}])
    model.handle({"id": worker.last[0], "type": "result", "session": _session(), "sha256": "abc"})
    assert model.records == {} and ("cleared", "inputs") in events and model.inputs.model["sha256"] == "abc"


def test_cancel_works_at_every_stage_and_leaves_no_time_left_estimate():
    model, worker, clock = _model()
    _load(model, worker)
    for stage in range(3):  # while the GP fits; after its result (fine-tuning); again after a restart
        model.run(RUN_STEPS, {}, epochs=10)
        if stage >= 1:
            model.handle({"id": worker.last[0], "type": "progress", "progress": 0.5, "stage": "posterior ready"})
            model.handle({"id": worker.last[0], "type": "result", **GP})
        clock.now += 1.0
        model.handle({"id": worker.last[0], "type": "epoch", "epoch": 5, "train_loss": 0.5})
        job = worker.last[0]
        assert model.cancel() and worker.cancelled[-1] == job
        assert not model.cancel()  # a second Esc while stopping does nothing more
        assert model.progress.state == "cancelling"
        model.handle({"id": job, "type": "epoch", "epoch": 6})  # late data of the cancelled job
        model.handle({"id": job, "type": "cancelled", "hard": stage == 2})
        assert not model.running and model.progress.state == "cancelled"
        assert "left" not in model.progress.text and "Cancelled" in model.progress.text
        worker.restarts += stage == 2


def test_the_time_left_estimate_goes_stale_without_reports():
    model, worker, clock = _model()
    _load(model, worker)
    model.run(RUN_STEPS, {}, epochs=10)
    clock.now += 2.0
    model.handle({"id": worker.last[0], "type": "progress", "progress": 1.0, "stage": "posterior ready"})
    assert "left" in model.progress.text and model.progress.text.startswith("47 %")
    clock.now += STALE_AFTER_S + 10.0  # predictions after "posterior ready" send no progress
    model.tick()
    assert "left" not in model.progress.text and "posterior ready" in model.progress.text
    assert "elapsed" in model.progress.text


def test_a_fresh_worker_gets_the_inputs_back_without_touching_the_panels():
    events: list = []
    model, worker, _ = _model(events)
    _load(model, worker)
    model.run(RUN_STEPS, {}, epochs=10)
    model.cancel()
    worker.restarts = 1  # the cancel killed the worker
    model.handle({"id": worker.last[0], "type": "cancelled", "hard": True})
    events.clear()
    model.run(RUN_STEPS, {}, epochs=10)
    assert worker.last[1] == "load_example"  # restore first
    model.handle({"id": worker.last[0], "type": "result", "session": _session()})
    assert worker.last[1] == "fit_gp" and worker.last[2] == {"params": "head"}
    assert not [e for e in events if e[0] == "loaded"]  # panels are not rebuilt: they keep the user's choice


def test_a_chain_asked_for_during_a_plan_job_starts_after_it():
    model, worker, _ = _model()
    _load(model, worker)
    model.request_plan({"params": "all"})
    plan_job = worker.last[0]
    assert model.chain == "plan" and not model.running
    model.run(RUN_STEPS, {}, epochs=10)
    assert worker.last[0] == plan_job  # deferred
    model.handle({"id": plan_job, "type": "result", "describe": "function space, Cholesky"})
    assert worker.last[1] == "fit_gp" and model.running


def test_a_failure_reports_once_and_goes_idle():
    events: list = []
    model, worker, _ = _model(events)
    _load(model, worker)
    model.run(RUN_STEPS, {}, epochs=10)
    model.handle({"id": worker.last[0], "type": "error", "error_type": "SolverError", "message": "no", "details": "tb"})
    assert not model.running and model.progress.state == "failed"
    assert [e for e in events if e[0] == "failed"] == [("failed", "run", "SolverError", "no", "tb")]


def test_records_parse_missing_and_odd_fields():
    rec = parse_result("fit_gp", {"prior_var": "nan", "wall_time": None})
    assert rec.prior_var is None and rec.wall_time is None and rec.task == "regression"
    with pytest.raises(KeyError):
        parse_result("bogus", {})


def test_engine_warnings_are_logged_and_the_run_goes_on():
    model, worker, _ = _model()
    _load(model, worker)
    logged, warned = [], []
    model.logged.connect(logged.append)
    model.warned.connect(warned.append)
    model.run(RUN_STEPS, {}, epochs=10)
    model.handle({"id": worker.last[0], "type": "warning", "message": "CG stopped at residual 1e-3", "category": "x"})
    assert warned == ["warning: CG stopped at residual 1e-3"] and logged[-1].endswith(warned[0])
    assert model.running and worker.last[1] == "fit_gp"
