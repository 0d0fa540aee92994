"""Measurement helpers for the benchmarks: robust timings, memory readings, machine info, child runs.

Timings are medians over interleaved rounds (every operation once per round), so slow drift in the
load of a shared machine hits all operations alike and ratios measured in one run stay comparable.
"""

from __future__ import annotations

import gc
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

from ntk_studio.core.device import cpu_name, meminfo_bytes

MIN_SAMPLE_S = 0.05  # a timed sample repeats a fast operation until it lasts at least this long
GIB = 1024**3


def _time_once(fn: Callable[[], object], inner: int = 1) -> tuple[float, float]:
    """Return (wall seconds, system CPU seconds) per call, averaged over `inner` calls."""
    sys_start = resource.getrusage(resource.RUSAGE_SELF).ru_stime
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    wall = time.perf_counter() - start
    return wall / inner, (resource.getrusage(resource.RUSAGE_SELF).ru_stime - sys_start) / inner


def interleaved_medians(
    ops: dict[str, Callable[[], object]], rounds: int | Callable[[float], int]
) -> dict[str, dict[str, float]]:
    """Return {name: {"median_s", "min_s", "sys_share", "samples"}} per call of each op, in interleaved rounds.

    Every op is called once as warm-up; that call also sets how many calls one sample averages
    (enough to last MIN_SAMPLE_S). `rounds` is a count, or a function of the warm-up round's
    duration in seconds returning one (to fit a time budget). "sys_share" is the median share of
    wall time spent in the kernel (mostly page faults on fresh allocations).
    """
    warm = {name: _time_once(fn)[0] for name, fn in ops.items()}
    inner = {name: max(1, math.ceil(MIN_SAMPLE_S / max(t, 1e-9))) for name, t in warm.items()}
    n_rounds = rounds(sum(warm.values())) if callable(rounds) else rounds
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in ops}
    for _ in range(n_rounds):
        for name, fn in ops.items():
            samples[name].append(_time_once(fn, inner[name]))
    out = {}
    for name, s in samples.items():
        walls = [w for w, _ in s]
        out[name] = {
            "median_s": statistics.median(walls),
            "min_s": min(walls),
            "sys_share": round(statistics.median(sy / w for w, sy in s), 3),
            "samples": len(s),
        }
    return out


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Return the median wall time in seconds of `repeats` calls after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    return statistics.median(_time_once(fn)[0] for _ in range(repeats))


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def rss_kib() -> int:
    """Return the current resident set size (VmRSS) of this process in KiB."""
    return _status_kib("VmRSS")


def peak_rss_kib() -> int:
    """Return the peak resident set size of this process's address space (VmHWM) in KiB.

    Not ``getrusage(RUSAGE_SELF).ru_maxrss``: Linux carries that value across fork/exec, so a child
    started by a large parent reports at least the parent's peak (verified: a parent at 2 GiB gives
    a fresh ``python -c`` child an ru_maxrss of 2 GiB). VmHWM belongs to the new address space.
    """
    return _status_kib("VmHWM")


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0, /proc/self/clear_refs); return whether it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def mem_available_bytes() -> int:
    """Return MemAvailable from /proc/meminfo in bytes (what new allocations can use without swap)."""
    avail = meminfo_bytes("MemAvailable")
    if avail is None:
        raise RuntimeError("MemAvailable not found in /proc/meminfo")
    return avail


def machine_info(threads: int) -> dict:
    """Return the machine and software facts a benchmark result depends on."""
    return {
        "cpu_model": cpu_name(),
        "logical_cpus": os.cpu_count(),
        "mem_total_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB, 1),
        "torch_version": torch.__version__,
        "torch_threads": threads,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
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


def measured_call(fn: Callable[..., object], *args) -> tuple[object, float, int]:
    """Return (fn(*args), wall seconds, RSS in KiB just before) after a GC and a peak-RSS reset."""
    gc.collect()
    base = rss_kib()
    reset_peak_rss()
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start, base


def peak_extra_mib(base_kib: int) -> float:
    """Return the peak RSS since the last reset above `base_kib`, in MiB (one decimal)."""
    return round((peak_rss_kib() - base_kib) / 1024, 1)
