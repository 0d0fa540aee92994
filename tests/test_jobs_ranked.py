"""A ranked worker (2 gloo ranks under torchrun, rank 0 speaking the protocol) fits what one process fits."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from job_runner import run
from ntk_studio.jobs.client import WorkerClient
from ntk_studio.jobs.ranked import ranked_worker_command
from ntk_studio.jobs.tasks import WorkerState

pytest.importorskip("torch.distributed")
RANKS = 2
TIMEOUT_S = 240  # two ranks each import torch on two shared cores
ROUTES = [("function", "cholesky"), ("weight", "cg")]
EXACT_TOL = 1e-10
CG_TOL = 1e-6  # CG stops at cg_tol 1e-8; the ranks sum in another order, so iterates differ at that level


def in_process(state: WorkerState, cmd: str, **args) -> dict:
    return run(state, cmd, **args)[1]


def last(client: WorkerClient, cmd: str, **args) -> dict:
    events = client.wait_for(client.submit(cmd, **args), timeout=TIMEOUT_S)
    assert events[-1]["type"] == "result", events[-1]
    return events[-1]


@pytest.fixture(scope="module")
def ranked():
    client = WorkerClient(ranked_worker_command(RANKS))
    yield client
    client.close()


def test_ranked_fit_equals_one_process(ranked):
    state = WorkerState()
    in_process(state, "load_example", name="sine")
    last(ranked, "load_example", name="sine")
    for space, solver in ROUTES:
        args = {"n_adapt": 14, "seed": 2, "noise": 0.01, "space": space, "solver": solver, "fit_hyper": False}
        one = in_process(state, "fit_gp", **args)
        two = last(ranked, "fit_gp", **args)
        tol = CG_TOL if solver == "cg" else EXACT_TOL
        for key in ("mean", "std", "test_mean"):
            a, b = np.asarray(one[key]), np.asarray(two[key])
            err = np.abs(a - b).max() / np.abs(a).max()
            print(f"{space}/{solver} {key}: relative difference {err:.1e}")
            assert err < tol, (space, solver, key, err)


def test_cancel_kills_every_rank_and_a_fresh_worker_answers(ranked):
    pgid = ranked.process.pid  # the worker runs in its own process group (start_new_session)
    job = ranked.submit("finetune", n_adapt=14, seed=2, epochs=1_000_000)
    ranked.wait_for(job, types="epoch", timeout=TIMEOUT_S)
    assert ranked.cancel(job) is False  # a ranked worker is killed at once, never left waiting
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("processes of the cancelled ranked worker are still alive")
    assert last(ranked, "load_example", name="sine")["session"]
