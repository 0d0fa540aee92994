"""The worker as a real subprocess behind WorkerClient: jobs, streaming, cancel, busy, crash and restart."""

from __future__ import annotations

import os
import signal
import sys
import time

import numpy as np
import pytest
import torch

from ntk_studio.core import LinearizedGP
from ntk_studio.core.examples.registry import load_example
from ntk_studio.core.metrics_regression import regression_report
from ntk_studio.jobs.client import CANCEL_GRACE_S, MAX_FAILED_STARTS, WORKER_COMMAND, WorkerClient

JOB_TIMEOUT_S = 60.0  # generous: a cold worker imports torch first
LONG_EPOCHS = 10**6  # a fine-tune that never ends on its own within a test
REL_TOL = 1e-10


@pytest.fixture(scope="module")
def client():
    c = WorkerClient()
    yield c
    c.close()
    assert c.process.returncode is not None


def _finish(client: WorkerClient, job: str) -> list[dict]:
    events = client.wait_for(job, timeout=JOB_TIMEOUT_S)
    assert events[-1]["type"] in ("result", "error", "cancelled")
    return events


def _load_sine(client: WorkerClient) -> None:
    events = _finish(client, client.submit("load_example", name="sine"))
    assert events[-1]["type"] == "result", events[-1]
    assert events[-1]["name"] == "sine" and events[-1]["input_shape"] == [1]


def _start_long_finetune(client: WorkerClient) -> str:
    job = client.submit("finetune", epochs=LONG_EPOCHS, n_adapt=10, grid_points=16)
    events = client.wait_for(job, "epoch", timeout=JOB_TIMEOUT_S)
    assert [e["type"] for e in events] == ["started", "epoch"], events
    return job


def test_ping_and_unknown_command_keep_the_worker_serving(client):
    pid = client.process.pid
    bad = _finish(client, client.submit("explode", x=1))
    assert bad[-1]["type"] == "error" and bad[-1]["error_type"] == "ProtocolError"
    assert "explode" in bad[-1]["message"]
    pong = _finish(client, client.submit("ping"))[-1]
    assert pong["type"] == "result" and pong["pong"] is True and pong["pid"] == pid == client.process.pid


def test_fit_gp_streams_progress_then_matches_the_in_process_fit(client):
    _load_sine(client)
    settings = dict(params="all", prior_var=0.5, noise=0.05, n_adapt=12, seed=3, grid_points=64, fit_hyper=False)
    events = _finish(client, client.submit("fit_gp", **settings))
    types = [e["type"] for e in events]
    assert types[0] == "started" and types[-1] == "result", events[-1]
    assert types.count("progress") >= 2 and set(types[1:-1]) == {"progress"}
    assert [e["stage"] for e in events if e["type"] == "progress"][-1] == "done"
    result = events[-1]

    # The same computation in this process: same rows, same settings, float64 throughout.
    target = load_example("sine")
    model, X, y = target.model, target.target.X, target.target.y
    perm = np.random.default_rng(settings["seed"]).permutation(len(X))
    adapt, test = np.sort(perm[:settings["n_adapt"]]), np.sort(perm[settings["n_adapt"]:])
    gp = LinearizedGP(model, params="all", prior_var=0.5, noise=0.05).fit(X[adapt], y[adapt])
    grid = torch.linspace(float(X.min()), float(X.max()), 64, dtype=torch.float64).unsqueeze(-1)
    mean, var = gp.predict(grid)
    got_mean = torch.tensor(result["mean"], dtype=torch.float64)
    got_std = torch.tensor(result["std"], dtype=torch.float64)
    assert torch.equal(torch.tensor(result["x"], dtype=torch.float64), grid[:, 0])
    assert ((got_mean - mean).abs().max() / mean.abs().max()) <= REL_TOL
    assert ((got_std - var.sqrt()).abs().max() / var.sqrt().max()) <= REL_TOL
    test_mean, test_var = gp.predict(X[test], include_noise=True)
    expected = regression_report(test_mean, test_var, y[test])
    for key, value in expected.items():
        assert result["metrics"][key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert result["n_adapt"] == 12 and result["n_test"] == len(X) - 12
    assert result["prior_var"] == 0.5 and result["noise"] == 0.05
    assert result["route"] == f"{gp.plan.space}/{gp.plan.solver}" and result["plan"] == gp.plan.describe()
    assert result["wall_time"] > 0


def test_finetune_streams_epoch_events_then_a_result(client):
    _load_sine(client)
    start = time.monotonic()
    events = _finish(client, client.submit("finetune", epochs=40, lr=0.01, batch_size=8, n_adapt=10, grid_points=32))
    elapsed = time.monotonic() - start
    types = [e["type"] for e in events]
    assert types[0] == "started" and types[-1] == "result", events[-1]
    epochs = [e for e in events if e["type"] == "epoch"]
    assert len(epochs) >= 2 and set(types[1:-1]) == {"epoch"}
    numbers = [e["epoch"] for e in epochs]
    assert numbers[0] == 0 and numbers[-1] == 40 and numbers == sorted(set(numbers))
    assert len(epochs) <= 20 * elapsed + 2  # throttled to ≤ 20 events/s (first and last always go)
    assert all(len(e["grid_pred"]) == 32 and np.isfinite(e["train_loss"]) for e in epochs)
    result = events[-1]
    assert result["epochs_run"] == 40 and len(result["x"]) == 32
    assert result["grid_pred"] == epochs[-1]["grid_pred"]
    assert result["train_loss"] < epochs[0]["train_loss"]  # lr 0.01 for 40 epochs does learn
    assert result["metrics"]["rmse"] == pytest.approx(np.sqrt(result["test_loss"]))


def test_busy_worker_refuses_a_second_job_and_cancel_frees_it(client):
    _load_sine(client)
    job = _start_long_finetune(client)
    second = _finish(client, client.submit("fit_gp", n_adapt=10))
    assert second[-1]["type"] == "error" and second[-1]["error_type"] == "Busy" and job in second[-1]["message"]
    pong = _finish(client, client.submit("ping"))[-1]  # ping is answered while the job runs
    assert pong["busy"] == job
    start = time.monotonic()
    assert client.cancel(job) is True
    assert time.monotonic() - start < CANCEL_GRACE_S
    last = client.wait_for(job, timeout=1.0)[-1]
    assert last["type"] == "cancelled" and last["hard"] is False


def test_cancelled_job_leaves_a_working_worker(client):
    _load_sine(client)
    pid, restarts = client.process.pid, client.restarts
    job = _start_long_finetune(client)
    assert client.cancel(job, grace_s=CANCEL_GRACE_S) is True
    assert client.wait_for(job, timeout=1.0)[-1]["type"] == "cancelled"
    after = _finish(client, client.submit("fit_gp", n_adapt=10, grid_points=16))
    assert after[-1]["type"] == "result" and len(after[-1]["mean"]) == 16
    assert (client.process.pid, client.restarts) == (pid, restarts)  # same warm worker


def test_killed_worker_is_reported_as_crashed_and_replaced(client):
    _load_sine(client)
    old, restarts = client.process, client.restarts
    job = _start_long_finetune(client)
    old.kill()
    last = client.wait_for(job, timeout=JOB_TIMEOUT_S)[-1]
    assert last["type"] == "error" and last["error_type"] == "WorkerCrashed"
    assert last["exit_code"] == -signal.SIGKILL
    assert client.restarts == restarts + 1 and client.process.pid != old.pid
    pong = _finish(client, client.submit("ping"))[-1]
    assert pong["pid"] == client.process.pid and pong["example"] is None  # fresh: nothing warm
    _load_sine(client)
    assert _finish(client, client.submit("fit_gp", n_adapt=10, grid_points=8))[-1]["type"] == "result"


def test_unresponsive_worker_is_killed_after_the_grace_period(client):
    _load_sine(client)
    old, restarts = client.process, client.restarts
    job = _start_long_finetune(client)
    os.kill(old.pid, signal.SIGSTOP)  # a worker that cannot read the cancel request
    grace = 0.5
    start = time.monotonic()
    assert client.cancel(job, grace_s=grace) is False
    assert grace <= time.monotonic() - start < grace + 5.0
    last = client.wait_for(job, timeout=1.0)[-1]
    assert last["type"] == "cancelled" and last["hard"] is True
    assert old.returncode == -signal.SIGKILL
    assert client.restarts == restarts + 1 and client.process.pid != old.pid
    assert _finish(client, client.submit("ping"))[-1]["pong"] is True


def test_a_worker_that_cannot_start_is_given_up_after_a_few_tries():
    failing = [sys.executable, "-c", "import sys; sys.stderr.write('no torch here\\n'); sys.exit(3)"]
    c = WorkerClient(command=failing)
    try:
        seen = []
        for _ in range(MAX_FAILED_STARTS + 2):  # each ping is lost with one dying worker, or refused
            last = c.wait_for(c.submit("ping"), timeout=JOB_TIMEOUT_S)[-1]
            seen.append(last["error_type"])
            assert last["type"] == "error"
            if last["error_type"] == "WorkerUnavailable":
                break
            assert last["exit_code"] == 3 and "no torch here" in last["details"]
        assert seen[-1] == "WorkerUnavailable" and "no torch here" in c.broken
        assert c.restarts == MAX_FAILED_STARTS - 1
        c.command = list(WORKER_COMMAND)
        c.restart()
        assert c.broken is None
        assert c.wait_for(c.submit("ping"), timeout=JOB_TIMEOUT_S)[-1]["pong"] is True
    finally:
        c.close()


def test_fit_gp_with_marginal_likelihood_reports_training_points_and_truth(client):
    _load_sine(client)
    job = client.submit("fit_gp", n_adapt=10, seed=0, grid_points=50, fit_hyper=True, prior_var=1.0, noise=0.01)
    result = _finish(client, job)[-1]
    assert result["type"] == "result"
    assert len(result["train_x"]) == 10 and len(result["train_y"]) == 10
    assert len(result["truth"]) == 50 and len(result["mean"]) == 50
    # The evidence moves the variances away from the starting values.
    assert result["prior_var"] != 1.0 and result["noise"] != 0.01
