"""Shared pieces of the GPU check (bench/gpu_check.py): device-synchronized timing, peak device memory,
out-of-memory detection, deadlines and Markdown tables.

Everything here works on CPU too (``--device cpu``): there the peak is the process's peak RSS
(VmHWM, see _measure.py) and synchronization is a no-op.
"""

from __future__ import annotations

import gc
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _measure import peak_rss_kib, reset_peak_rss, rss_kib  # noqa: E402
from tables import fmt_mib, fmt_rel, fmt_s  # noqa: E402

MIB = 1024**2
GIB = 1024**3
__all__ = ["GIB", "MIB", "Deadline", "Meter", "dtype_name", "emit", "fmt_mib", "fmt_rel", "fmt_s", "is_oom",
           "md_table", "release", "sync", "timed"]


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA kernels run asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> tuple[object, float]:
    """Return (fn(), wall seconds) with the device synchronized before and after."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def release(device: torch.device) -> None:
    """Free what Python and the CUDA caching allocator hold (between probes).

    A full collection only on CUDA, where cycles can pin device memory the next probe's peak would
    count. On CPU tensors are freed by reference counting; a full collection walks every object of the
    process (seconds each in a long test session on this VM), so only the youngest generation.
    """
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
    else:
        gc.collect(0)


class Meter:
    """Peak memory of a block over its start, in MiB: CUDA allocator peak on GPUs, peak RSS on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.base = 0

    def __enter__(self) -> Meter:
        release(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            reset_peak_rss()
            self.base = rss_kib() * 1024
        return self

    def __exit__(self, *exc) -> None:
        return None

    def peak_mib(self) -> float:
        """Return the peak since __enter__ above the memory in use then, in MiB (one decimal)."""
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = peak_rss_kib() * 1024
        return round(max(0, peak - self.base) / MIB, 1)


def is_oom(exc: BaseException) -> bool:
    """Return whether an exception means 'does not fit': CUDA/CPU out of memory or the planner's refusal."""
    from ntk_studio.core.errors import MemoryBudgetError

    if isinstance(exc, (MemoryError, MemoryBudgetError, torch.OutOfMemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def describe_exc(exc: BaseException) -> str:
    """Return 'Type: first line of the message' (at most 240 characters)."""
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}"[:240]


class Deadline:
    """A time budget: `left()` seconds remain, `spent()` seconds are used."""

    def __init__(self, seconds: float) -> None:
        self.seconds = float(seconds)
        self.start = time.perf_counter()

    def spent(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.seconds - self.spent()


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def emit(**fields) -> None:
    """Print one JSON line (a step's partial result; the parent merges them) and flush it."""
    print(json.dumps(fields, default=_jsonable), flush=True)


def _jsonable(x):
    if isinstance(x, torch.dtype):
        return dtype_name(x)
    if isinstance(x, torch.device):
        return str(x)
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return str(x)


def md_table(headers: list[str], rows: list[list[object]]) -> str:
    """Return a Markdown table (header, separator, one line per row)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt_int(x: int | None) -> str:
    return "–" if x is None else f"{int(x):,}"
