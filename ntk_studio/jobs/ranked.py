"""The worker as a data-parallel job: N ranks under torchrun, rank 0 speaking the JSON-lines protocol.

Rank 0 runs the ordinary :class:`~ntk_studio.jobs.worker.Worker` loop. Before it starts a job that
uses the sharded engine, it broadcasts the request (``torch.distributed.broadcast_object_list``)
and the other ranks run the same job on the same warm state, each on its block of rows; their
events are dropped. Jobs that do not touch the sharded engine (fine-tuning, the GD trajectory,
the route estimate) run on rank 0 only. A cooperative cancel cannot stop ranks that are waiting in
a collective, so the client cancels a ranked worker by killing its process group (no grace) and
starts a fresh one; the window then reloads its inputs, as after a crash.

The app starts it with :func:`ranked_worker_command`; by hand:
``torchrun --standalone --nproc-per-node 2 -m ntk_studio.jobs.worker --ranked``.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger("ntk_studio.worker")

# Jobs every rank runs (they load inputs into the state, or call collectives through the shard).
ALL_RANKS = frozenset({"load_example", "load_model", "load_data", "fit_gp", "export"})
STOP = "__stop__"
RANKS_TIMEOUT_S = 600.0  # a collective waits this long for a rank before the job fails


def ranked_worker_command(ranks: int) -> list[str]:
    """Return the command that starts a worker of `ranks` processes on this machine (torchrun)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={int(ranks)}",
            "-m", "ntk_studio.jobs.worker", "--ranked"]


class RankBroadcaster:
    """Rank 0's side: sends each all-ranks job (or the stop signal) to the other ranks."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self._dist = dist

    def send(self, cmd: str, args: dict[str, Any]) -> None:
        """Broadcast one request from rank 0."""
        self._dist.broadcast_object_list([(cmd, args)], src=0)


def follow(state, jobs) -> int:
    """Run rank > 0: receive requests from rank 0 and run them on this rank's shard; return 0 at stop."""
    import torch.distributed as dist

    from ntk_studio.core import CancelToken

    scratch = Path(tempfile.mkdtemp(prefix="ntk-studio-rank-"))
    while True:
        box: list[Any] = [None]
        dist.broadcast_object_list(box, src=0)
        cmd, args = box[0]
        if cmd == STOP:
            return 0
        if cmd == "export":  # every rank computes; only rank 0's file is kept
            args = {**args, "onnx": str(scratch / "rank.onnx"),
                    "native": None if args.get("native") is None else str(scratch / "rank.pt2")}
        try:
            for _ in jobs[cmd](state, args, CancelToken()):
                pass
        except Exception:  # noqa: BLE001 - rank 0 reports the error; this rank waits for the next job
            log.warning("rank job %s failed", cmd, exc_info=True)


def init_ranks():
    """Return (shard, rank) of this process under torchrun (gloo on CPU, NCCL with a GPU per rank)."""
    from ntk_studio.core.distributed import init_distributed

    shard = init_distributed("auto", timeout_s=RANKS_TIMEOUT_S)
    return shard, int(os.environ.get("RANK", "0"))
