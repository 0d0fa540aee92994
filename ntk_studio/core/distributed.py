"""Data-parallel execution of the engine's data loops on torch.distributed (gloo on CPU, NCCL on GPU).

Every rank runs the same program on the same (replicated) inputs; only the data-chunk loops of
:class:`~ntk_studio.core.linearized.LinearizedModel` are split. Rank r owns the contiguous rows
[r·n/W, (r+1)·n/W) of every data set it visits, so

- sums over data (Jᵀu, JᵀΛJv, JᵀΛJ) are computed on the local rows and combined by one all-reduce;
- per-sample results (f(X), J v, J, diag K) are computed on the local rows and all-gathered.

Every collective returns the same bits on every rank, so solvers, line searches and stopping tests
take the same branches everywhere and ``LinearizedGP``/``LinearizedClassifier`` need no changes.
The one rule: random numbers that feed a data loop (GPyTorch's stochastic log-determinant probes)
must be drawn inside :meth:`SingleProcess.same_random_stream`, or ranks would reduce different vectors.
A collective that fails (a peer died, or did not answer within the timeout) raises
:class:`DistributedError` on the surviving ranks instead of hanging.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import timedelta

import torch

from .errors import DistributedError

DEFAULT_TIMEOUT_S = 300.0  # a collective waits this long for a silent peer before failing
BACKENDS = ("auto", "gloo", "nccl")


class SingleProcess:
    """The default shard: one process owns every row; reductions and gathers are identities."""

    rank = 0
    world_size = 1
    active = False

    def rows(self, n: int) -> slice:
        """Return the rows of an n-row data set this rank processes (all of them)."""
        return slice(0, n)

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Return t summed over ranks (t itself here)."""
        return t

    def gather_rows(self, local: torch.Tensor, n: int, dim: int = 0) -> torch.Tensor:
        """Return the full n-row tensor from every rank's `local` rows along `dim` (local itself here)."""
        return local

    def barrier(self) -> None:
        """Wait for every rank (nothing to wait for here)."""

    def same_random_stream(self):
        """Return a context in which every rank's torch RNG draws the same numbers (a no-op here)."""
        return nullcontext()

    @property
    def is_writer(self) -> bool:
        """Return whether this rank writes outputs and checkpoints (rank 0)."""
        return self.rank == 0


SINGLE_PROCESS = SingleProcess()


def block(n: int, rank: int, world_size: int) -> slice:
    """Return rank's contiguous block of n rows; block sizes differ by at most one."""
    return slice(rank * n // world_size, (rank + 1) * n // world_size)


class TorchDistributed(SingleProcess):
    """A shard over an initialized torch.distributed process group (see :func:`init_distributed`)."""

    active = True

    def __init__(self, group=None, device: torch.device | str = "cpu", timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            raise DistributedError(
                "torch.distributed has no initialized process group: call init_distributed() first "
                "(or launch with torchrun and pass --distributed)."
            )
        self._dist = dist
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.backend = str(dist.get_backend(group))
        self.device = torch.device(device)
        self.timeout_s = float(timeout_s)

    def __repr__(self) -> str:
        return f"TorchDistributed(rank={self.rank}, world_size={self.world_size}, backend={self.backend!r})"

    def rows(self, n: int) -> slice:
        """Return this rank's contiguous block of an n-row data set."""
        return block(n, self.rank, self.world_size)

    def _run(self, what: str, fn) -> None:
        try:
            fn()
        except (RuntimeError, ValueError) as exc:  # DistBackendError/DistNetworkError are RuntimeErrors
            raise DistributedError(
                f"rank {self.rank}/{self.world_size}: the {what} across ranks failed ({_first_line(exc)}). "
                f"Another rank probably died or stalled for more than {self.timeout_s:.0f} s; check its "
                "log, then rerun (a run with a checkpoint resumes where it stopped)."
            ) from exc

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Return t summed over all ranks (a new contiguous tensor; t is not modified)."""
        out = t.contiguous().clone()
        self._run("all-reduce", lambda: self._dist.all_reduce(out, group=self.group))
        return out

    def gather_rows(self, local: torch.Tensor, n: int, dim: int = 0) -> torch.Tensor:
        """Return the n-row tensor assembled from every rank's block of rows along `dim`."""
        sizes = [block(n, r, self.world_size) for r in range(self.world_size)]
        longest = max(s.stop - s.start for s in sizes)
        moved = local.movedim(dim, 0)
        if moved.shape[0] != sizes[self.rank].stop - sizes[self.rank].start:
            raise DistributedError(
                f"rank {self.rank}: gathered block has {moved.shape[0]} rows, expected "
                f"{sizes[self.rank].stop - sizes[self.rank].start} (ranks visited different data)."
            )
        padded = moved.new_zeros((longest, *moved.shape[1:]))
        padded[: moved.shape[0]] = moved
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        self._run("all-gather", lambda: self._dist.all_gather(parts, padded, group=self.group))
        full = torch.cat([p[: s.stop - s.start] for p, s in zip(parts, sizes)])
        return full.movedim(0, dim)

    def barrier(self) -> None:
        """Wait until every rank reaches this point (fails after the timeout)."""
        self._run("barrier", lambda: self._dist.barrier(group=self.group))

    @contextmanager
    def same_random_stream(self) -> Iterator[None]:
        """Within the block every rank's torch RNG is seeded alike (rank 0's draw); restored afterwards."""
        mine = torch.randint(0, 2**62, (1,), dtype=torch.int64) if self.rank == 0 else torch.zeros(1, dtype=torch.int64)
        seed = int(self.all_reduce(mine.to(self.device))[0])
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed)
            yield


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def init_distributed(
    backend: str = "auto",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    init_method: str | None = None,
    rank: int | None = None,
    world_size: int | None = None,
) -> TorchDistributed:
    """Return a shard over a new process group (NCCL on GPUs, gloo on CPU), with a collective timeout.

    Without `init_method` the rendezvous comes from torchrun's environment (RANK, WORLD_SIZE,
    MASTER_ADDR, MASTER_PORT, LOCAL_RANK). With NCCL each process uses GPU LOCAL_RANK; the shard's
    `device` is where the engine must keep its tensors.
    """
    import torch.distributed as dist

    if backend not in BACKENDS:
        raise DistributedError(f"backend must be one of {BACKENDS}, got {backend!r}.")
    if not dist.is_available():
        raise DistributedError("This torch build has no torch.distributed support; run in one process.")
    if init_method is None and "RANK" not in os.environ:
        raise DistributedError(
            "No distributed environment found (RANK/WORLD_SIZE unset). Launch with "
            "`torchrun --nproc-per-node N -m ntk_studio.cli adapt ... --distributed`."
        )
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
    device = torch.device("cpu")
    if backend == "nccl":
        local = int(os.environ.get("LOCAL_RANK", rank if rank is not None else 0))
        if not torch.cuda.is_available() or local >= torch.cuda.device_count():
            raise DistributedError(
                f"NCCL needs a GPU per process; local rank {local} has none. Use --dist-backend gloo."
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    kwargs = {"backend": backend, "timeout": timedelta(seconds=timeout_s)}
    if init_method is not None:
        kwargs.update(init_method=init_method, rank=rank, world_size=world_size)
    try:
        if not dist.is_initialized():
            dist.init_process_group(**kwargs)
    except (RuntimeError, ValueError) as exc:
        raise DistributedError(
            f"Could not start the process group ({backend}): {_first_line(exc)}. Check that every "
            f"rank was started with the same MASTER_ADDR/MASTER_PORT and that they can reach each other "
            f"(timeout {timeout_s:.0f} s)."
        ) from exc
    return TorchDistributed(device=device, timeout_s=timeout_s)


def shutdown_distributed() -> None:
    """Destroy the default process group if one is initialized (safe to call after a failure)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except (RuntimeError, ValueError):  # a broken group cannot always be torn down cleanly
            pass
