"""Checkpoints of long solves: CG state and Δθ, written atomically so a killed job resumes.

A :class:`Checkpoint` is one file holding named entries (e.g. ``"cg"`` for the state of the training
solve and ``"delta_theta"`` for its result), each under a fingerprint of the problem it belongs to
(data, targets, route, hyperparameters, tolerance): a state is only ever resumed by the same problem,
and a file from another problem is simply not used. Only the writer rank (rank 0) writes; every rank
holds the same state, so a run on any number of ranks can resume it.

:func:`resumable_cg` is the engine's CG (:func:`.solvers.cg`) whose whole state (x, r, z, p, rᵀz, iteration) goes into
the checkpoint every `interval_s` seconds; a resumed run continues the same iteration, so it reaches
the same answer as an uninterrupted one (bit for bit in the same process layout).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from .errors import CheckpointError
from .solvers import cg

CHECKPOINT_VERSION = 1
DEFAULT_INTERVAL_S = 60.0  # seconds between CG checkpoints: bounds the work lost to a kill
MAX_ENTRIES = 8  # oldest states are dropped beyond this (e.g. many refits while fitting hyperparameters)


def fingerprint(*parts: object) -> str:
    """Return a SHA-256 hex digest of tensors (their dtype, shape and bytes) and plain values."""
    h = hashlib.sha256()
    for part in parts:
        if torch.is_tensor(part):
            t = part.detach().to("cpu").contiguous()
            h.update(f"tensor{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.numpy().tobytes() if t.numel() else b"")
        else:
            h.update(repr(part).encode())
        h.update(b"|")
    return h.hexdigest()


class Checkpoint:
    """Named solve states in one file at `path`; `save` writes at most every `interval_s` seconds."""

    def __init__(self, path: str | os.PathLike, interval_s: float = DEFAULT_INTERVAL_S, writer: bool = True) -> None:
        self.path = Path(path)
        self.interval_s = float(interval_s)
        self.writer = writer
        self.saves = 0
        self.resumed: dict[str, int] = {}  # entry name -> iteration it resumed from, in this run
        self._last_save = time.monotonic()
        self._entries: dict[str, dict] = self._read()

    def _read(self) -> dict[str, dict]:
        if not self.path.exists():
            return {}
        try:
            data = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same advice
            raise CheckpointError(
                f"The checkpoint {self.path} cannot be read ({type(exc).__name__}: {exc}). Delete it to start over."
            ) from exc
        if not isinstance(data, dict) or data.get("version") != CHECKPOINT_VERSION:
            raise CheckpointError(
                f"{self.path} is not an NTK Studio checkpoint of version {CHECKPOINT_VERSION}; delete it or pick another path."
            )
        return dict(data["entries"])

    def load(self, name: str, key: str) -> dict | None:
        """Return the saved state of entry `name` for the problem `key` (tensors on the CPU), or None."""
        entry = self._entries.get(f"{name}:{key}")
        if entry is not None:
            self.resumed[name] = int(entry.get("iteration", 0))
        return entry

    def save(self, name: str, key: str, state: dict, force: bool = False) -> bool:
        """Store `state` under (`name`, `key`); write the file if `interval_s` has passed or `force`; return whether it wrote."""
        slot = f"{name}:{key}"
        self._entries.pop(slot, None)  # re-inserted last: the dict's order is the age order
        self._entries[slot] = {k: _cpu(v) for k, v in state.items()}
        while len(self._entries) > MAX_ENTRIES:
            self._entries.pop(next(iter(self._entries)))
        now = time.monotonic()
        if not force and now - self._last_save < self.interval_s:
            return False
        self._last_save = now
        if self.writer:
            self._write()
        return True

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as fh:
                torch.save({"version": CHECKPOINT_VERSION, "entries": self._entries}, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)  # atomic: a kill leaves the previous checkpoint intact
        finally:
            if tmp.exists():
                tmp.unlink()
        self.saves += 1


def _cpu(v):
    return v.detach().to("cpu").clone() if torch.is_tensor(v) else v


def resumable_cg(matmul: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, tol: float, max_iter: int,
                 checkpoint: Checkpoint | None = None, key: str = "", name: str = "cg",
                 **cg_options) -> tuple[torch.Tensor, bool, int]:
    """Return (A⁻¹ b by the engine's CG, converged, total iterations), checkpointing its state.

    b is (N, c); every column stops at ‖r‖ ≤ tol·‖b‖. With a checkpoint, a saved state of entry
    `name` whose fingerprint is `key` is continued instead of starting from x = 0. ``cg_options``
    are :func:`.solvers.cg`'s precond and check.
    """
    saved = checkpoint.load(name, key) if checkpoint is not None else None
    hook = (lambda state: checkpoint.save(name, key, state)) if checkpoint is not None else None
    last: dict = {}

    def on_iteration(state: dict) -> None:
        last.update(state)
        if hook is not None:
            hook(state)

    x, it, converged = cg(matmul, b, tol, max_iter, state=saved, on_iteration=on_iteration, **cg_options)
    if checkpoint is not None and last:
        checkpoint.save(name, key, last, force=True)
    return x, converged, it
