"""Run one benchmark measurement in a child process under a wall-time and a memory limit.

The machine is shared (24 GiB for everyone), so a method that would materialize far more than it
should must never take it down. Two guards, both per child:

- a hard cap on the child's private writable memory (``RLIMIT_DATA``): an allocation past it fails
  inside the child, where torch raises "can't allocate memory" and the child reports it;
- a watchdog in the parent that samples the child's resident set (``VmRSS``) and kills the child
  when it passes the limit (a backstop for memory the first guard does not count).

The child speaks JSON lines on stdout: every line that starts with ``{`` is a partial result and
later lines update earlier ones, so a child killed mid-way still reports the stages it finished.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time

KIB = 1024
GIB = 1024**3
POLL_S = 0.05  # watchdog sampling interval
DATA_LIMIT_SLACK = 2 * GIB  # RLIMIT_DATA sits this far above the RSS limit (thread stacks, arenas)
STDERR_TAIL = 800
# One torch thread everywhere: two threads on two shared cores thrash (see docs/benchmarks.md).
CHILD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def _rss_bytes(pid: int) -> int:
    """Return the resident set size of process `pid` in bytes (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * KIB
    except OSError:
        pass
    return 0


def _limit_data(limit_bytes: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (limit_bytes, limit_bytes))

    return apply


def parse_lines(text: str) -> dict:
    """Return the merge of every JSON-object line in `text` (later keys win); {} if there is none."""
    out: dict = {}
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                out.update(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def run_limited(args: list[str], timeout_s: float, mem_limit_bytes: int) -> dict:
    """Run `python <args>` under the limits; return the child's merged JSON lines plus a status.

    "status" is "ok" (exit 0), "timeout", "killed" (RSS over the limit), "oom" (an allocation failed
    under the cap) or "error"; "wall_s" is the child's lifetime and "max_rss_gib" the largest RSS the
    watchdog saw.
    """
    env = {**os.environ, **CHILD_ENV}
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            [sys.executable, *args], stdout=out, stderr=err, text=True, env=env,
            preexec_fn=_limit_data(mem_limit_bytes + DATA_LIMIT_SLACK),
        )
        status, max_rss = None, 0
        while proc.poll() is None:
            rss = _rss_bytes(proc.pid)
            max_rss = max(max_rss, rss)
            if rss > mem_limit_bytes:
                status = "killed"
            elif time.perf_counter() - start > timeout_s:
                status = "timeout"
            if status:
                proc.kill()
                proc.wait()
                break
            time.sleep(POLL_S)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    result = parse_lines(stdout)
    if status is None:
        if proc.returncode == 0:
            status = "ok"
        elif "can't allocate memory" in stderr or "MemoryError" in stderr or "out of memory" in stderr:
            status = "oom"
        else:
            status = "error"
    if status != "ok":
        result["stderr_tail"] = stderr[-STDERR_TAIL:]
    result.update(status=status, wall_s=round(wall, 1), max_rss_gib=round(max_rss / GIB, 2))
    return result


def emit(**fields) -> None:
    """Print one JSON line for the parent (a child's partial result) and flush it."""
    print(json.dumps(fields), flush=True)
