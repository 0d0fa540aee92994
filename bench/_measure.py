"""Measurement helpers for the benchmarks: robust timings, memory readings, machine info, child runs.

Timings are medians over interleaved rounds (every operation once per round), so slow drift in the
load of a shared machine hits all operations alike and ratios measured in one run stay comparable.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone

import torch

MIN_SAMPLE_S = 0.05  # a timed sample repeats a fast operation until it lasts at least this long
KIB = 1024
MIB = 1024**2
GIB = 1024**3


def _time_once(fn: Callable[[], object], inner: int) -> float:
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - start) / inner


def interleaved_medians(
    ops: dict[str, Callable[[], object]], rounds: int | Callable[[float], int]
) -> dict[str, dict[str, float]]:
    """Return {name: {"median_s", "min_s", "samples"}} per call of each op, timed in interleaved rounds.

    Every op is called once as warm-up; that call also sets how many calls one sample averages
    (enough to last MIN_SAMPLE_S). `rounds` is a count, or a function of the warm-up round's
    duration in seconds returning one (to fit a time budget).
    """
    warm = {name: _time_once(fn, 1) for name, fn in ops.items()}
    inner = {name: max(1, math.ceil(MIN_SAMPLE_S / max(t, 1e-9))) for name, t in warm.items()}
    n_rounds = rounds(sum(warm.values())) if callable(rounds) else rounds
    samples: dict[str, list[float]] = {name: [] for name in ops}
    for _ in range(n_rounds):
        for name, fn in ops.items():
            samples[name].append(_time_once(fn, inner[name]))
    return {
        name: {"median_s": statistics.median(s), "min_s": min(s), "samples": len(s)}
        for name, s in samples.items()
    }


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Return the median wall time in seconds of `repeats` calls after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    return statistics.median(_time_once(fn, 1) for _ in range(repeats))


def rss_kib() -> int:
    """Return the current resident set size (VmRSS) of this process in KiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("VmRSS not found in /proc/self/status")


def peak_rss_kib() -> int:
    """Return this process's peak resident set size in KiB (ru_maxrss is KiB on Linux)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def mem_available_bytes() -> int:
    """Return MemAvailable from /proc/meminfo in bytes (what new allocations can use without swap)."""
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * KIB
    raise RuntimeError("MemAvailable not found in /proc/meminfo")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(threads: int) -> dict:
    """Return the machine and software facts a benchmark result depends on."""
    return {
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "mem_total_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB, 1),
        "torch_version": torch.__version__,
        "torch_threads": threads,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "timestamp_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def run_child(args: list[str], timeout_s: float) -> dict:
    """Run `python <args>` in a fresh process; return the JSON object it prints last, or a status.

    The result carries "status": "ok" (from the child), "timeout" or "error" (with stderr's tail),
    and "wall_s", the child's total lifetime including start-up.
    """
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, *args], capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "timeout_s": timeout_s, "wall_s": round(time.perf_counter() - start, 1)}
    wall = round(time.perf_counter() - start, 1)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout)[-800:]
        return {"status": "error", "returncode": proc.returncode, "stderr_tail": tail, "wall_s": wall}
    result = json.loads(lines[-1])
    result.setdefault("status", "ok")
    result["wall_s"] = wall
    return result
