"""The GPU check: one run that proves and measures the engine on a device (issue 19).

Steps, in order of importance (each but `device` in a child process with a hard time limit, all
under one global budget so the whole run stays under MAX_TOTAL_S):

1. ``device``     the device's facts (core.device.device_info), the precision policy and its measured
                  float64/float32 matmul ratio, the software versions;
2. ``tests``      pytest --device DEV on tests/test_device.py and tests/test_device_routes.py: every
                  operator and route against the dense float64 reference, the classifier, ONNX export
                  of a model fitted on the device (junit XML kept);
3. ``headline``   n = 100,000, P = 10⁶, exact mean and variance at 1,000 test points, by the engine as
                  a user runs it (auto route; bench/gpu_headline.py);
4. ``lean``       the same problem by a memory-lean exact route, one n×n matrix (bench/gpu_lean.py);
5. ``peers``      every route in float64 and float32 vs the float64 dense NTK (bench/gpu_routes.py);
6. ``operators``  operator costs in forward passes, float64 and float32 (bench/gpu_operators.py);
7. ``precision``  the variance error float32 costs (bench/gpu_precision.py);
8. ``scaling``    time and memory as n and P grow, float64 and float32 (bench/gpu_routes.py);
9. ``limits``     the largest n and P per route, doubling then bisecting (bench/gpu_routes.py).

Results: ``$OUT`` (default bench/results/gpu): ``results.json`` (every step), ``<step>.json``,
``results.md`` (Markdown tables), ``tests.xml`` and ``logs/<step>.log``.

    python3 bench/gpu_check.py --device cuda            # the GPU run (bench/gpu_check.sh wraps it)
    python3 bench/gpu_check.py --device cpu --quick     # the CPU check of the same code, ~2 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

STEPS = ("device", "tests", "headline", "lean", "peers", "operators", "precision", "scaling", "limits")
# Per step: (internal time budget, hard child timeout) in seconds; full (GPU) and quick (CPU) runs.
BUDGETS = {
    "full": {"tests": (None, 150), "headline": (None, 90), "lean": (None, 90), "peers": (30, 45),
             "operators": (15, 35), "precision": (15, 35), "scaling": (30, 45), "limits": (100, 120)},
    "quick": {"tests": (None, 480), "headline": (None, 120), "lean": (None, 90), "peers": (30, 90), "operators": (20, 90),
              "precision": (30, 90), "scaling": (30, 90), "limits": (20, 90)},
    # tiny (tests/test_gpu_check.py): no internal budgets, so every row exists even on a loaded machine
    "tiny": {"tests": (None, 120), "headline": (None, 60), "lean": (None, 60), "peers": (None, 60), "operators": (None, 60),
             "precision": (None, 60), "scaling": (None, 60), "limits": (None, 60)},
}
MAX_TOTAL_S = {"full": 470.0, "quick": 1200.0, "tiny": 900.0}  # the global budget (the GPU target is < 8 minutes)
TEST_FILES = ("tests/test_device.py", "tests/test_device_routes.py")
DEFAULT_OUT = HERE / "results" / "gpu"
STEP_TITLES = {
    "device": "Device and precision policy",
    "tests": "Engine tests on the device (dense float64 reference)",
    "headline": "Headline: n = 100,000, P = 10⁶, mean and variance at 1,000 test points (engine, auto route)",
    "lean": "Headline by the lean exact route (one n×n matrix)",
    "peers": "Routes vs the dense NTK (peers-free), float64 and float32",
    "operators": "Operator cost in forward passes",
    "precision": "What float32 costs in variance (against float64)",
    "scaling": "Scaling in n and in P",
    "limits": "Largest n and P per route",
}


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ===================================================================== step bodies (run in the child)
def step_device(device, mode: str) -> dict:
    import torch

    from ntk_studio.core.device import choose_precision, device_info

    info = device_info(device)
    precision = choose_precision(device)
    versions = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    for mod in ("gpytorch", "linear_operator", "numpy", "scipy", "onnx", "onnxruntime", "onnxscript", "sklearn"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception as exc:  # noqa: BLE001 — recorded: a missing optional package skips its tests
            versions[mod] = f"unavailable ({type(exc).__name__})"
    return {"status": "ok", "info": info.to_dict(), "describe": info.describe(), "precision": precision.to_dict(),
            "versions": versions, "cpu_count": os.cpu_count()}


def step_body(step: str, device, mode: str, budget: float | None) -> dict:
    """Run one measurement step in this process and return its result."""
    import gpu_common as common

    deadline = common.Deadline(budget) if budget else None
    if step == "device":
        return step_device(device, mode)
    if step == "headline":
        import gpu_headline

        return gpu_headline.run(device, mode, log=_log)
    if step == "lean":
        import gpu_lean

        return gpu_lean.run(device, mode, log=_log)
    if step == "peers":
        import gpu_routes

        return gpu_routes.peers_free(device, mode, deadline, log=_log)
    if step == "operators":
        import gpu_operators

        return gpu_operators.run(device, mode, deadline, log=_log)
    if step == "precision":
        import gpu_precision

        return gpu_precision.run(device, mode, deadline, log=_log)
    if step == "scaling":
        import gpu_routes

        return gpu_routes.scaling_sweeps(device, mode, deadline, log=_log)
    if step == "limits":
        import gpu_routes

        return gpu_routes.limits(device, mode, deadline or common.Deadline(60), log=_log)
    raise ValueError(f"unknown step {step!r}")


def child_main(step: str, device_spec: str, mode: str, budget: float | None, result_path: Path) -> None:
    """Child entry: run one step and write its result as JSON."""
    import torch

    from ntk_studio.core.device import resolve_device

    device = resolve_device(device_spec)
    if device.type == "cpu":
        torch.set_num_threads(1)  # as every CPU benchmark here: the machine is shared
    started = time.perf_counter()
    result = step_body(step, device, mode, budget)
    result.setdefault("status", "ok")
    result["seconds"] = round(time.perf_counter() - started, 1)
    result_path.write_text(json.dumps(result, indent=1, default=str) + "\n")


# ===================================================================== parent side
def _env() -> dict:
    path = [str(ROOT), str(HERE)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path)}


def _run(cmd: list[str], timeout_s: float, log_path: Path) -> tuple[str, float, int | None]:
    """Run cmd with stdout captured and stderr to the log; return (stdout, seconds, returncode or None on timeout)."""
    start = time.perf_counter()
    with open(log_path, "w") as log:
        try:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, text=True, timeout=timeout_s,
                                  env=_env(), cwd=ROOT, check=False)
            return proc.stdout, time.perf_counter() - start, proc.returncode
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            return out, time.perf_counter() - start, None


def _tail(path: Path, n: int = 800) -> str:
    try:
        return path.read_text()[-n:]
    except OSError:
        return ""


def parse_junit(path: Path) -> dict:
    """Return counts and the failing tests (name and first message line) from a junit XML file."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failing, skipped = [], []
    for suite in suites:
        for key in counts:
            counts[key] += int(suite.get(key, 0))
        for case in suite.iter("testcase"):
            name = f"{case.get('classname', '')}::{case.get('name', '')}"
            for tag in ("failure", "error"):
                el = case.find(tag)
                if el is not None:
                    msg = (el.get("message") or el.text or "").strip().splitlines()
                    failing.append({"test": name, "kind": tag, "message": (msg[0] if msg else "")[:300]})
            el = case.find("skipped")
            if el is not None:
                skipped.append({"test": name, "reason": (el.get("message") or "")[:200]})
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {**counts, "failing": failing, "skipped_tests": skipped}


def run_tests(device: str, out: Path, timeout_s: float, k: str | None) -> dict:
    """Run the device tests with pytest in a child process; return counts, failures and the command."""
    xml = out / "tests.xml"
    xml.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--device", device,
           f"--junitxml={xml}", "-W", "ignore::DeprecationWarning", *TEST_FILES]
    if k:
        cmd += ["-k", k]
    stdout, sec, rc = _run(cmd, timeout_s, out / "logs" / "tests.log")
    (out / "logs" / "tests.log").write_text(stdout + "\n" + _tail(out / "logs" / "tests.log", 100000))
    result = {"command": " ".join(cmd[1:]), "seconds": round(sec, 1), "returncode": rc}
    if rc is None:
        result.update(status="timeout", timeout_s=timeout_s, reason=f"did not finish in {timeout_s:.0f} s")
    if xml.exists():
        result.update(parse_junit(xml))
        if rc is not None:
            result["status"] = "ok" if rc == 0 else "failed"
            if rc != 0:
                result["reason"] = f"{result['failures']} failed, {result['errors']} errors"
    elif rc is not None:
        result.update(status="error", reason=stdout[-600:] or _tail(out / "logs" / "tests.log"))
    return result


def run_step(step: str, device: str, mode: str, out: Path, timeout_s: float, budget: float | None,
             in_process: bool) -> dict:
    """Run one measurement step (in a child unless in_process) and return its result with a status."""
    path = out / f"{step}.json"
    path.unlink(missing_ok=True)
    if in_process:
        from ntk_studio.core.device import resolve_device

        started = time.perf_counter()
        try:
            result = step_body(step, resolve_device(device), mode, budget)
            result.setdefault("status", "ok")
        except Exception as exc:  # noqa: BLE001 — one failing step must not stop the others
            result = {"status": "error", "reason": f"{type(exc).__name__}: {exc}"[:600]}
        result["seconds"] = round(time.perf_counter() - started, 1)
        return result
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", step, "--device", device,
           "--result", str(path)] + ({"quick": ["--quick"], "tiny": ["--tiny"]}.get(mode, []))
    if budget:
        cmd += ["--budget", str(budget)]
    stdout, sec, rc = _run(cmd, timeout_s, out / "logs" / f"{step}.log")
    if rc == 0 and path.exists():
        return json.loads(path.read_text())
    from _limits import parse_lines

    partial = parse_lines(stdout)
    if rc is None:
        return {**partial, "status": "timeout", "timeout_s": round(timeout_s), "seconds": round(sec, 1),
                "reason": f"did not finish in {timeout_s:.0f} s", "log_tail": _tail(out / "logs" / f"{step}.log")}
    return {**partial, "status": "error", "returncode": rc, "seconds": round(sec, 1),
            "reason": (_tail(out / "logs" / f"{step}.log", 2000).strip().splitlines() or ["no message"])[-1][:300],
            "log_tail": _tail(out / "logs" / f"{step}.log")}


# ===================================================================== Markdown
def render(results: dict) -> str:
    """Return results.md: a header and one section (with its tables) per step."""
    import gpu_common as common

    lines = [f"# GPU check results ({results['mode']}, device {results['device']})", "",
             f"_{results['started_utc']}; {results['seconds']:.0f} s in all; host {results['host']}_", ""]
    steps = results["steps"]
    lines += ["| step | status | seconds |", "|---|---|---|"]
    for name, r in steps.items():
        lines.append(f"| {name} | {r.get('status', '?')}{': ' + str(r['reason'])[:120] if r.get('reason') and r.get('status') != 'ok' else ''} "
                     f"| {r.get('seconds', '–')} |")
    lines.append("")
    for name, r in steps.items():
        lines += [f"## {STEP_TITLES[name]}", ""]
        try:
            lines.append(_render_step(name, r, common))
        except Exception as exc:  # noqa: BLE001 — a partial result still gets its JSON
            lines.append(f"(no table: {r.get('status')}: {r.get('reason', exc)})")
        lines.append("")
    return "\n".join(lines)


def _render_step(name: str, r: dict, common) -> str:
    if r.get("status") in ("skipped",) or (r.get("status") in ("error", "timeout") and name not in ("headline", "lean")):
        return f"{r.get('status')}: {r.get('reason', '')}"
    if name == "device":
        p = r["precision"]
        rows = [["device", r["describe"]], ["precision policy", f"products {p['products']}, solves {p['solves']}"],
                ["why", p["reason"]], ["float64/float32 matmul time", "–" if p["ratio"] is None else f"{p['ratio']:.1f}×"]]
        rows += [[k, v] for k, v in r["versions"].items()]
        return common.md_table(["what", "value"], rows)
    if name == "tests":
        rows = [[r.get("passed", "–"), r.get("failures", "–"), r.get("errors", "–"), r.get("skipped", "–"),
                 r.get("seconds", "–")]]
        text = common.md_table(["passed", "failed", "errors", "skipped", "seconds"], rows)
        if r.get("failing"):
            text += "\n\n" + common.md_table(["failing test", "message"],
                                             [[f["test"], f["message"].replace("|", "\\|")] for f in r["failing"]])
        return text
    if name == "headline":
        import gpu_headline

        return gpu_headline.table(r)
    if name == "lean":
        import gpu_lean

        return gpu_lean.table(r)
    if name == "peers":
        import gpu_routes

        s = r["settings"]
        return (f"n = {s['n']:,} train, m = {s['m']:,} test, P = {s['params']:,}, s² = {s['prior_var']}, "
                f"σ² = {s['noise']}; CG routes: variances at the first {s['cg_var_points']} test points.\n\n"
                + gpu_routes.peers_table(r))
    if name == "operators":
        import gpu_operators

        return gpu_operators.table(r)
    if name == "precision":
        import gpu_precision

        return gpu_precision.table(r)
    if name == "scaling":
        import gpu_routes

        s = r["settings"]
        return (f"**In n** (P = {s['P_for_n']:,}; cap {s['cap_s']:.0f} s per point):\n\n" + gpu_routes.scaling_table(r["n_sweep"], "n")
                + f"\n\n**In P** (n = {s['n_for_P']:,}):\n\n" + gpu_routes.scaling_table(r["P_sweep"], "P"))
    import gpu_routes

    s = r["settings"]
    return (f"float64, {s['m_test']} test points, {s['cap_s']:.0f} s cap per probe, memory budget "
            f"{s['budget_gib']} GiB:\n\n" + gpu_routes.limits_table(r))


# ===================================================================== main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    ap.add_argument("--quick", action="store_true", help="small sizes: the CPU check of the same code")
    ap.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tests/test_gpu_check.py
    ap.add_argument("--out", type=Path, default=None, help="results folder (default $OUT or bench/results/gpu)")
    ap.add_argument("--only", nargs="+", choices=STEPS, help="run only these steps")
    ap.add_argument("--skip", nargs="+", choices=STEPS, default=[], help="leave these steps out")
    ap.add_argument("--pytest-k", default=None, help="pass -k EXPR to the tests step")
    ap.add_argument("--in-process", action="store_true", help="run steps in this process (no child time limits)")
    ap.add_argument("--total-s", type=float, default=None, help="global time budget (default by mode)")
    ap.add_argument("--child", choices=STEPS, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--budget", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    if args.child:
        child_main(args.child, args.device, mode, args.budget, args.result)
        return 0

    from ntk_studio.core.device import resolve_device
    from ntk_studio.core.errors import DeviceError

    try:
        device = str(resolve_device(args.device))
    except DeviceError as exc:
        _log(f"gpu_check: {exc}")
        return 2
    out = args.out or Path(os.environ.get("OUT") or DEFAULT_OUT)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    steps = [s for s in (args.only or STEPS) if s not in args.skip]
    total = args.total_s or MAX_TOTAL_S[mode]
    started = time.perf_counter()
    results = {"mode": mode, "device": device, "host": platform.node(), "steps": {},
               "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "max_total_s": total}
    for step in steps:
        left = total - (time.perf_counter() - started)
        budget, hard = BUDGETS[mode].get(step, (None, 60))
        _log(f"== {step} ({left:.0f} s of the global budget left)")
        if left < 10:
            r = {"status": "skipped", "reason": f"global budget of {total:.0f} s spent"}
        elif step == "tests":
            r = run_tests(device, out, min(hard, left), args.pytest_k)
        elif step == "device" and args.in_process:
            r = run_step(step, device, mode, out, left, None, True)
        else:
            hard = min(hard, left)
            r = run_step(step, device, mode, out, hard, min(budget, hard * 0.8) if budget else None, args.in_process)
        results["steps"][step] = r
        (out / f"{step}.json").write_text(json.dumps(r, indent=1, default=str) + "\n")
        _log(f"   {step}: {r.get('status')} in {r.get('seconds', '?')} s")
        results["seconds"] = round(time.perf_counter() - started, 1)
        (out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    results["seconds"] = round(time.perf_counter() - started, 1)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    md = render(results)
    (out / "results.md").write_text(md + "\n")
    print(md)
    _log(f"wrote {out / 'results.json'} and {out / 'results.md'} in {results['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
