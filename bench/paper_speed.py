"""The paper's speed setting (issue #17): an MLP 2-1000-800-1 (804,601 parameters), n from 300 upwards.

Maddox et al. (AISTATS 2021) time their linearized GP on a synthetic regression problem with an
MLP of ~800k parameters for n = 300 … 100,000. Here: a tanh MLP 2-1000-800-1 at fixed random
weights, inputs X ~ N(0, I₂), targets y = sin(2x₁) + cos(x₂) + 0.1·ε, s² = 1, σ² = 0.01 (the
noise's variance), function-space CG (solver='cg' forced), then 1,000 test variances. Each size
runs in a fresh process (cold caches, its own peak RSS, VmHWM). Reported per size: fit and
variance times, true relative residual of the training solve, the variance solves' worst
relative error bound, iterations, peak memory; for n ≤ CHECK_MAX_N the CG variances are also
compared with the Cholesky route's.

Run ``.venv/bin/python bench/paper_speed.py [--sizes 300,1000,3000,10000]``; results go to
bench/results/paper_speed.json and a markdown table is printed.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import machine_info, peak_rss_kib, reset_peak_rss, rss_kib, run_child  # noqa: E402

THREADS = 1
WIDTHS = (2, 1000, 800, 1)
MODEL_SEED, TRAIN_SEED, TEST_SEED = 0, 1, 2
PRIOR_VAR, NOISE, NOISE_STD = 1.0, 0.01, 0.1
TEST_POINTS = 1000
SIZES = (300, 1000, 3000, 10000)
CHECK_MAX_N = 1000  # sizes up to this are also solved by Cholesky and the variances compared
CHILD_TIMEOUT_S = 900.0
RESULTS_PATH = Path(__file__).resolve().parent / "results" / "paper_speed.json"


def model() -> nn.Module:
    """Return the tanh MLP 2-1000-800-1 at fixed random weights (804,601 parameters)."""
    torch.manual_seed(MODEL_SEED)
    layers: list[nn.Module] = []
    for a, b in zip(WIDTHS[:-1], WIDTHS[1:]):
        layers += [nn.Linear(a, b), nn.Tanh()]
    return nn.Sequential(*layers[:-1]).eval()


def data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return X ~ N(0, I₂) (n, 2) and y = sin(2x₁) + cos(x₂) + 0.1·ε (n,), float64."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, WIDTHS[0], generator=g, dtype=torch.float64)
    y = torch.sin(2 * X[:, 0]) + torch.cos(X[:, 1]) + NOISE_STD * torch.randn(n, generator=g, dtype=torch.float64)
    return X, y


def child(n: int) -> dict:
    """Fit and predict at size n in this (fresh) process; return the measurements."""
    from ntk_studio.core import LinearizedGP

    torch.set_num_threads(THREADS)
    X, y = data(n, TRAIN_SEED)
    Xs, _ = data(TEST_POINTS, TEST_SEED)
    net = model()
    # Warm torch.func's lazy imports on a 10-point problem so the first timed call does not pay them.
    LinearizedGP(model(), prior_var=PRIOR_VAR, noise=NOISE, space="function", solver="cg").fit(X[:10], y[:10])
    gc.collect()
    base = rss_kib()
    reset_peak_rss()
    gp = LinearizedGP(net, prior_var=PRIOR_VAR, noise=NOISE, space="function", solver="cg")
    start = time.perf_counter()
    gp.fit(X, y)
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    _, var = gp.predict(Xs)
    var_s = time.perf_counter() - start
    peak = peak_rss_kib()
    info, vinfo = gp.solve_info, gp.variance_solve_info
    out = {
        "n": n, "P": gp.lm.num_params, "fit_s": fit_s, "variances_s": var_s, "total_s": fit_s + var_s,
        "peak_rss_mib": round(peak / 1024, 1), "peak_extra_mib": round((peak - base) / 1024, 1),
        "stored_kernel": "Kxx" in gp._state, "kernel_path": gp.kernels.path,
        "fit_residual": info.residual, "fit_iterations": info.iterations, "fit_converged": info.converged,
        "var_residual": vinfo.residual, "var_iterations": vinfo.iterations, "var_products": vinfo.products,
        "var_bound": vinfo.max_relative_error_bound, "var_converged": vinfo.converged,
        "precond_rank": gp._state.get("var_precond_rank"), "cg_tol": gp.cg_tol, "variance_rtol": gp.variance_rtol,
    }
    if n <= CHECK_MAX_N:
        ref = LinearizedGP(model(), prior_var=PRIOR_VAR, noise=NOISE, space="function", solver="cholesky").fit(X, y)
        _, rvar = ref.predict(Xs)
        out["max_rel_diff_vs_cholesky"] = float(((var - rvar).abs() / rvar).max())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=RESULTS_PATH)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child)), flush=True)
        return
    info = machine_info(THREADS)
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        res = run_child([__file__, "--child", str(n)], CHILD_TIMEOUT_S)
        res.setdefault("n", n)
        res["load_average"] = [round(x, 2) for x in __import__("os").getloadavg()]
        rows.append(res)
        print(json.dumps(res), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"machine": info, "widths": WIDTHS, "test_points": TEST_POINTS, "rows": rows}, indent=1))
    print(f"\nMLP {'-'.join(map(str, WIDTHS))}, {TEST_POINTS} test variances, {THREADS} thread(s), load at start "
          f"{info['load_average_at_start']}")
    print("| n | fit (s) | 1,000 variances (s) | peak RSS (MiB) | training residual | fit / variance iterations | "
          "variance bound (rel.) | Nyström rank |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r.get("status") != "ok":
            print(f"| {r['n']:,} | {r.get('status')} after {r.get('wall_s')} s | | | | | | |")
            continue
        print(f"| {r['n']:,} | {r['fit_s']:.1f} | {r['variances_s']:.1f} | {r['peak_rss_mib']:,.0f} | {r['fit_residual']:.1e} | "
              f"{r['fit_iterations']} / {r['var_iterations']} | {r['var_bound']:.1e} | {r['precond_rank']} |")


if __name__ == "__main__":
    main()
