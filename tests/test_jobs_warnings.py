"""The engine's SolverWarnings leave a worker job as typed `warning` events the app can show."""

from __future__ import annotations

import json
import warnings

import pytest

from job_runner import run
from ntk_studio.core import CancelToken
from ntk_studio.core.solvers import NegativeVarianceWarning
from ntk_studio.jobs.protocol import decode_event, encode
from ntk_studio.jobs.tasks import JOBS, WorkerState
from ntk_studio.jobs.warning_events import forward_warnings

# 60 points and the 41-parameter head of the sine MLP: a singular kernel that σ² = 1e-300 cannot lift.
RANK_DEFICIENT = dict(params="last:1", n_adapt=60, noise=1e-300, fit_hyper=False, space="function",
                      solver="cholesky")


def test_jitter_in_a_worker_fit_is_a_warning_event():
    state = WorkerState()
    run(state, "load_example", name="sine")
    events, result = run(state, "fit_gp", **RANK_DEFICIENT)
    warned = [payload for kind, payload in events if kind == "warning"]
    assert len(warned) == 1, events
    assert warned[0]["category"] == "JitterWarning"
    assert warned[0]["message"].startswith("Cholesky of the system matrix needed jitter")
    assert result["route"] == "function/cholesky"  # the fit itself went on


def test_warning_events_pass_the_protocol():
    line = encode({"id": "j1", "type": "warning", "message": "clamped", "category": "NegativeVarianceWarning"})
    assert decode_event(line) == json.loads(line)


def test_forwarded_before_the_events_that_follow_and_once_per_message():
    def job(state, args, cancel):
        warnings.warn("clamped", NegativeVarianceWarning)
        warnings.warn("clamped", NegativeVarianceWarning)
        yield "progress", {"stage": "a"}
        warnings.warn("late", NegativeVarianceWarning)
        return {"done": True}

    gen = forward_warnings(job)(WorkerState(), {}, CancelToken())
    seen = []
    with pytest.raises(StopIteration) as stop:
        while True:
            seen.append(next(gen))
    assert seen == [("warning", {"message": "clamped", "category": "NegativeVarianceWarning"}),
                    ("progress", {"stage": "a"}),
                    ("warning", {"message": "late", "category": "NegativeVarianceWarning"})]
    assert stop.value.value == {"done": True}


def test_every_job_forwards_warnings():
    assert all(getattr(job, "forwards_warnings", False) for job in JOBS.values())


def test_a_real_worker_sends_the_warning_before_the_result():
    from ntk_studio.jobs.client import WorkerClient

    client = WorkerClient()
    try:
        client.wait_for(client.submit("load_example", name="sine"), timeout=60.0)
        events = client.wait_for(client.submit("fit_gp", **RANK_DEFICIENT), timeout=60.0)
    finally:
        client.close()
    kinds = [e["type"] for e in events]
    assert kinds[-1] == "result" and kinds.count("warning") == 1, kinds
    warning = events[kinds.index("warning")]
    assert warning["category"] == "JitterWarning" and "jitter" in warning["message"]


def test_a_plain_job_without_events_forwards_its_warnings_and_result():
    def job(state, args, cancel):  # no events: a plain function returning the result
        warnings.warn("jittered", NegativeVarianceWarning)
        return {"done": 1}

    gen = forward_warnings(job)(WorkerState(), {}, CancelToken())
    assert next(gen) == ("warning", {"message": "jittered", "category": "NegativeVarianceWarning"})
    with pytest.raises(StopIteration) as stop:
        next(gen)
    assert stop.value.value == {"done": 1}


def test_a_failing_job_sends_its_warnings_before_the_error():
    def job(state, args, cancel):
        warnings.warn("clamped", NegativeVarianceWarning)
        raise ValueError("boom")

    gen = forward_warnings(job)(WorkerState(), {}, CancelToken())
    assert next(gen)[0] == "warning"
    with pytest.raises(ValueError, match="boom"):
        next(gen)
