"""Rank programs for the distributed tests: started as separate processes (spawn), gloo on loopback.

Each worker writes what it computed to a file in `out_dir`; the test process compares it with the
single-process result computed by the same function (`fit_all`) with the default shard.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import torch

RANK_TIMEOUT_S = 10.0  # collective timeout in the tests: a dead peer must surface well within it
N_TRAIN, N_TEST = 23, 5  # odd sizes: the two ranks get unequal blocks (11 and 12 rows)
CHUNK = 8  # two chunks per rank
S2, NOISE = 0.7, 0.3
CG_TOL = 1e-13  # tight enough that route-independent rounding, not CG tolerance, sets the difference
GP_ROUTES = [("function", "cholesky"), ("function", "cg"), ("weight", "cholesky"), ("weight", "cg")]
KILL_AFTER_PRODUCTS = 6  # the rank that dies does so during this GGN product of the CG solve


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def problem(seed: int = 3):
    """Return (two-output model, X, Y, test X, class labels): the data every rank loads identically."""
    from models import two_output

    model = two_output(seed)
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(N_TRAIN, 3, generator=g, dtype=torch.float64)
    Xs = torch.randn(N_TEST, 3, generator=g, dtype=torch.float64)
    Y = torch.stack([torch.sin(X[:, 0]) + 0.1 * X[:, 1], torch.cos(X[:, 2])], dim=1)
    labels = (X[:, 0] + 0.5 * X[:, 1] > 0).long()
    return model, X, Y, Xs, labels


def fit_all(shard) -> dict[str, torch.Tensor]:
    """Return predictions of every GP and classifier route (float64) computed with `shard`."""
    from ntk_studio.core import LinearizedClassifier, LinearizedGP

    model, X, Y, Xs, labels = problem()
    out = {}
    for space, solver in GP_ROUTES:
        gp = LinearizedGP(model, prior_var=S2, noise=NOISE, space=space, solver=solver, chunk_size=CHUNK,
                          cg_tol=CG_TOL, precond_rank=5, shard=shard).fit(X, Y)
        mean, var = gp.predict(Xs)
        out[f"gp/{space}/{solver}/mean"], out[f"gp/{space}/{solver}/var"] = mean, var
        out[f"gp/{space}/{solver}/delta_theta"] = gp.delta_theta
    for space, solver in GP_ROUTES:
        clf = LinearizedClassifier(model, prior_var=S2, space=space, solver=solver, chunk_size=CHUNK,
                                   cg_tol=CG_TOL, grad_tol=1e-12, shard=shard).fit(X, labels)
        mean, cov = clf.predict_logits(Xs)
        out[f"clf/{space}/{solver}/mean"], out[f"clf/{space}/{solver}/cov"] = mean, cov
    return out


def rows_seen_by_one_vjp(shard) -> int:
    """Return how many samples passed through this rank's model during one J(X)ᵀu."""
    from ntk_studio.core import LinearizedModel

    model, X, Y, _, _ = problem()
    seen = []
    handle = model.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    lm = LinearizedModel(model, chunk_size=CHUNK, shard=shard)
    lm.forward(X[:1])
    seen.clear()
    lm.vjp(X, Y)
    handle.remove()
    return sum(seen)


def _init(rank: int, world: int, port: int):
    from ntk_studio.core.distributed import init_distributed

    torch.set_num_threads(1)
    return init_distributed("gloo", timeout_s=RANK_TIMEOUT_S, init_method=f"tcp://127.0.0.1:{port}",
                            rank=rank, world_size=world)


def ranks_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """Both scenarios in one process start (interpreter start-up dominates the test's time).

    1. Fit every route on this rank's shard; save predictions and the rows one vjp processed.
    2. Solve the checkpointed CG of `kill_gp`; the last rank SIGKILLs itself during product
       KILL_AFTER_PRODUCTS, the others record the error they get and when.
    """
    from ntk_studio.core.distributed import shutdown_distributed

    shard = _init(rank, world, port)
    try:
        result = fit_all(shard)
        result["rows_seen"] = torch.tensor(rows_seen_by_one_vjp(shard))
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
        _kill_scenario(shard, Path(out_dir))
    finally:
        shutdown_distributed()


def kill_gp(shard=None, checkpoint=None):
    """Return the GP the kill/resume test solves: weight-space CG on the MLP, checkpointed."""
    from models import mlp
    from ntk_studio.core import LinearizedGP

    return LinearizedGP(mlp(1), prior_var=S2, noise=1e-2, space="weight", solver="cg", chunk_size=CHUNK,
                        cg_tol=CG_TOL, shard=shard, checkpoint=checkpoint,
                        precond_rank=0)  # unpreconditioned: a CG long enough to be killed mid-way


def kill_data():
    """Return (X, y, test X) of the kill/resume test."""
    g = torch.Generator().manual_seed(5)
    X = torch.randn(40, 3, generator=g, dtype=torch.float64)
    return X, torch.sin(2 * X[:, 0]) * X[:, 1], torch.randn(7, 3, generator=g, dtype=torch.float64)


def _kill_scenario(shard, out_dir: Path) -> None:
    from ntk_studio.core.checkpoint import Checkpoint
    from ntk_studio.core.errors import DistributedError

    rank, world = shard.rank, shard.world_size
    gp = kill_gp(shard, Checkpoint(out_dir / "solve.ckpt", interval_s=0.0, writer=shard.is_writer))
    X, y, _ = kill_data()
    calls = [0]
    inner = gp.lm.ggn_matvec

    def dying_matvec(*args, **kwargs):
        calls[0] += 1
        if rank == world - 1 and calls[0] == KILL_AFTER_PRODUCTS:
            (out_dir / "killed_at").write_text(repr(time.time()))
            os.kill(os.getpid(), signal.SIGKILL)
        return inner(*args, **kwargs)

    gp.lm.ggn_matvec = dying_matvec
    report = {"rank": rank}
    try:
        gp.fit(X, y)
        report["outcome"] = "finished"
    except DistributedError as exc:
        report.update(outcome="DistributedError", message=str(exc), failed_at=time.time(), products=calls[0])
    (out_dir / f"rank{rank}.json").write_text(json.dumps(report))


def run_ranks(target, world: int, args: tuple, timeout_s: float) -> list[int | None]:
    """Start `world` spawned processes target(rank, world, *args); return their exit codes (None: still running, killed)."""
    ctx = torch.multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=target, args=(rank, world, *args), daemon=True) for rank in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout_s
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    codes = [p.exitcode for p in procs]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    return codes
