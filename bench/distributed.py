"""Distributed scaling of the engine's data-parallel products (gloo on CPU ranks, 1 torch thread each).

For W = 1 (one plain process, no collectives) and W = 2 (two spawned gloo ranks on loopback) it times
one GGN product JᵀJv (weight space), one kernel product J(Jᵀv) (function space) and the bare
all-reduce of a P-vector, on an MLP 8-128-128-1 in float64:

- strong scaling: the same n for every W (speedup = t1 / tW);
- weak scaling: n per rank fixed (efficiency = t1 / tW at W times the data).

Times are medians over repeats, each rank timing between barriers; a product's time is the slowest
rank's. Next to wall time each rank's CPU time (``time.process_time``) is recorded: it shows how the
work divides even when other load on a shared machine takes cores away and inflates wall times. Run ``.venv/bin/python bench/distributed.py [--quick]``; results go to
bench/results/distributed.json and a markdown table is printed. On a 2-core machine two ranks use
both cores: anything else running on the machine shows up in the W = 2 numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import machine_info  # noqa: E402

THREADS = 1
WIDTHS = (8, 128, 128, 1)
STRONG_N = {"full": 4000, "quick": 1000}
WEAK_N_PER_RANK = {"full": 2000, "quick": 500}
REPEATS = {"full": 15, "quick": 5}
WORLDS = (1, 2)
RESULTS_PATH = Path(__file__).resolve().parent / "results" / "distributed.json"
SPAWN_TIMEOUT_S = 1200.0
RANK_TIMEOUT_S = 300.0


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for a, b in zip(WIDTHS[:-1], WIDTHS[1:]):
        layers += [nn.Linear(a, b), nn.Tanh()]
    return nn.Sequential(*layers[:-1])


def _median_time(fn, shard, repeats: int) -> tuple[float, float]:
    """Return medians over `repeats` of this rank's (wall, CPU) seconds for fn(), each timed between barriers."""
    fn()  # warm-up
    walls, cpus = [], []
    for _ in range(repeats):
        shard.barrier()
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def _measure(shard, n: int, repeats: int) -> dict[str, float]:
    from ntk_studio.core import LinearizedModel

    g = torch.Generator().manual_seed(1)
    X = torch.randn(n, WIDTHS[0], generator=g, dtype=torch.float64)
    lm = LinearizedModel(_mlp(), shard=shard)
    lm.forward(X[:1])
    v = torch.randn(lm.num_params, generator=g, dtype=torch.float64)
    u = torch.randn(n, generator=g, dtype=torch.float64)
    ops = {
        "ggn_product_s": lambda: lm.ggn_matvec(X, v),
        "kernel_product_s": lambda: lm.kernel_matmul(X, X, u),
        "allreduce_P_s": lambda: shard.all_reduce(v),
    }
    out = {}
    for name, fn in ops.items():
        out[name], out[name.replace("_s", "_cpu_s")] = _median_time(fn, shard, repeats)
    return out


def _rank(rank: int, world: int, port: int, jobs: list[tuple[str, int]], repeats: int, out: str) -> None:
    from ntk_studio.core.distributed import SINGLE_PROCESS, init_distributed, shutdown_distributed

    torch.set_num_threads(THREADS)
    if world == 1:
        shard = SINGLE_PROCESS
    else:
        shard = init_distributed("gloo", RANK_TIMEOUT_S, f"tcp://127.0.0.1:{port}", rank, world)
    results = {label: _measure(shard, n, repeats) for label, n in jobs}
    Path(out, f"w{world}_r{rank}.json").write_text(json.dumps(results))
    if world > 1:
        shutdown_distributed()


def _run_world(world: int, jobs, repeats: int, tmp: Path) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from distributed_workers import free_port, run_ranks

    codes = run_ranks(_rank, world, (free_port(), jobs, repeats, str(tmp)), SPAWN_TIMEOUT_S)
    if codes != [0] * world:
        raise RuntimeError(f"ranks exited with {codes}")
    per_rank = [json.loads((tmp / f"w{world}_r{r}.json").read_text()) for r in range(world)]
    # A product is done when its slowest rank is.
    return {label: {k: max(r[label][k] for r in per_rank) for k in per_rank[0][label]} for label, _ in jobs}


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats (a smoke run)")
    mode = "quick" if parser.parse_args().quick else "full"
    repeats = REPEATS[mode]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for world in WORLDS:
            jobs = [("strong", STRONG_N[mode]), ("weak", WEAK_N_PER_RANK[mode] * world)]
            rows[world] = _run_world(world, jobs, repeats, Path(tmp))
    probe = _mlp()
    P = sum(p.numel() for p in probe.parameters())
    result = {
        "machine": machine_info(THREADS),
        "mode": mode,
        "model": f"MLP {'-'.join(map(str, WIDTHS))} (P = {P:,}), float64",
        "strong_n": STRONG_N[mode],
        "weak_n_per_rank": WEAK_N_PER_RANK[mode],
        "repeats": repeats,
        "worlds": {str(w): rows[w] for w in WORLDS},
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
    }
    RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_PATH.write_text(json.dumps(result, indent=2))
    print(f"{result['model']}, gloo on CPU, {THREADS} thread per rank, median of {repeats}")
    print("| scaling | ranks | n | GGN product | kernel product | all-reduce of P floats | speedup / efficiency (GGN, kernel) | CPU s per rank (GGN, kernel) |")
    print("|---|---|---|---|---|---|---|---|")
    for label in ("strong", "weak"):
        base = rows[1][label]
        for w in WORLDS:
            r = rows[w][label]
            n = STRONG_N[mode] if label == "strong" else WEAK_N_PER_RANK[mode] * w
            ratio = (base["ggn_product_s"] / r["ggn_product_s"], base["kernel_product_s"] / r["kernel_product_s"])
            print(f"| {label} | {w} | {n:,} | {r['ggn_product_s'] * 1e3:.1f} ms | {r['kernel_product_s'] * 1e3:.1f} ms "
                  f"| {r['allreduce_P_s'] * 1e3:.2f} ms | {ratio[0]:.2f}, {ratio[1]:.2f} "
                  f"| {r['ggn_product_cpu_s'] * 1e3:.1f} ms, {r['kernel_product_cpu_s'] * 1e3:.1f} ms |")
    print(f"results written to {RESULTS_PATH}")


if __name__ == "__main__":
    main()
