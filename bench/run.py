"""Run the NTK Studio benchmarks and regenerate their tables and plots.

1. peers       our routes vs laplace-torch and the dense-NTK baseline (MLP 8-128-128-1, n = 2,000)
2. scaling     our routes vs dense NTK as n (to 100,000) and P (to 10⁶) grow, with where each falls over
3. operators   kernel- and GGN-product cost in forward passes, MLP and CNN (bench/operators.py, part 1)
4. adaptation  linearized GP / classifier vs fine-tuning on sine, hprice3 and faces

Run with the benchmark environment, which has the peers and matplotlib (``make bench-peers``):

    bench/.venv-peers/bin/python bench/run.py --quick     # < 5 minutes, smaller sizes
    bench/.venv-peers/bin/python bench/run.py             # the documented full run

Results: JSON per benchmark and ``tables.md`` in the output folder (bench/results/full or
bench/results/quick), plots as PNG (docs/images/bench-*.png for the full run, the output folder's
images/ for --quick). Without laplace-torch the peer rows are recorded as skipped; without
matplotlib the plots are skipped. Every measurement uses one torch thread.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import adaptation  # noqa: E402
import operators  # noqa: E402
import peers  # noqa: E402
import plots  # noqa: E402
import scaling  # noqa: E402
import tables  # noqa: E402
from _measure import machine_info  # noqa: E402

THREADS = 1
PARTS = ("peers", "scaling", "operators", "adaptation")
RESULTS = HERE / "results"
DOC_IMAGES = HERE.parent / "docs" / "images"
# --quick leaves out the CNN in float64: its warm-up round alone takes about a minute here.
QUICK_OPERATORS = (("mlp", torch.float32), ("mlp", torch.float64), ("cnn", torch.float32))


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _stamp(result: dict, started: float) -> dict:
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return result


def run_part(part: str, mode: str, work: Path) -> dict:
    """Return one benchmark's result dict (with machine facts, duration and load averages)."""
    started = time.perf_counter()
    result = {"machine": machine_info(THREADS), "mode": mode}
    if part == "peers":
        result.update(peers.run(mode, work, log=_log))
    elif part == "scaling":
        result.update(scaling.run(mode, log=_log))
    elif part == "operators" and mode == "quick":
        result["rows"] = [operators.operator_costs(name, dtype, mode) for name, dtype in QUICK_OPERATORS]
    elif part == "operators":
        result["rows"] = operators.run_operators(mode)
    else:
        result.update(adaptation.run(mode, log=_log))
    return _stamp(result, started)


def render(part: str, result: dict, images: Path) -> str:
    """Return the markdown for one benchmark (and write its plots under `images`)."""
    m = result["machine"]
    header = (f"_{m['timestamp_utc']}, {m['cpu_model']}, {m['logical_cpus']} CPUs, torch {m['torch_version']}, "
              f"{m['torch_threads']} thread; load average {m['load_average_at_start'][0]} at start, "
              f"{result['load_average_at_end'][0]} at end; {result['seconds']:.0f} s ({result['mode']})_\n\n")
    if part == "peers":
        s = result["settings"]
        return header + (f"n = {s['n']:,} train, m = {s['m']:,} test, P = {s['params']:,}; "
                         f"{s['variance']}\n\n") + tables.peers_table(result)
    if part == "operators":
        return header + operators.operators_table(result["rows"])
    if part == "adaptation":
        text = header + tables.adaptation_table(result)
        _plot(lambda: plots.adaptation_png(result, images / "bench-adaptation.png"))
        return text
    s = result["settings"]
    out = [header]
    for P in s["P_for_n"]:
        rows = [r for r in result["n_sweep"] if r["P"] == P]
        out += [f"**In n** (P = {P:,}):\n", tables.scaling_table(rows, "n"), ""]
        _plot(lambda rows=rows, P=P: plots.scaling_png(rows, "n", scaling.ROUTES, f"P = {P:,}",
                                                       images / f"bench-scaling-n-P{P}.png"))
    out += [f"**In P** (n = {s['n_for_P']:,}):\n", tables.scaling_table(result["P_sweep"], "P")]
    _plot(lambda: plots.scaling_png(result["P_sweep"], "P", scaling.ROUTES, f"n = {s['n_for_P']:,}",
                                    images / "bench-scaling-P.png"))
    return "\n".join(out)


def _plot(fn) -> None:
    try:
        _log(f"wrote {fn()}")
    except ImportError:
        _log("matplotlib not installed: plots skipped (run `make bench-peers`)")


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmarks, write JSON, tables.md and plots; return the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes; finishes in under 5 minutes")
    ap.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS), help="benchmarks to run")
    ap.add_argument("--out", type=Path, help="results folder (default bench/results/{full,quick})")
    ap.add_argument("--render", action="store_true", help="only rebuild tables.md and plots from the JSON")
    args = ap.parse_args(argv)
    torch.set_num_threads(THREADS)
    mode = "quick" if args.quick else "full"
    out = args.out or RESULTS / mode
    images = DOC_IMAGES if mode == "full" and args.out is None else out / "images"
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ntk-bench-") as work:
        for part in args.only:
            path = out / f"{part}.json"
            if not args.render:
                _log(f"== {part} ({mode})")
                path.write_text(json.dumps(run_part(part, mode, Path(work)), indent=1) + "\n")
    sections = []
    for part in PARTS:
        path = out / f"{part}.json"
        if path.exists():
            sections.append(f"## {part}\n\n{render(part, json.loads(path.read_text()), images)}\n")
    (out / "tables.md").write_text("\n".join(sections))
    print("\n".join(sections))
    _log(f"wrote {out / 'tables.md'} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
