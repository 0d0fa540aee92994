"""Calibration benchmark (issue #16), regression: how (s², σ²) are chosen vs interval coverage and NLL.

Tasks: the built-in regression examples (sine, diabetes, hprice3; their default n_adapt and a
seeded adaptation split, scored on the other rows) and the paper's toy tasks on the shipped sine
MLP: random sines y = A sin(x + φ) (A ~ U[0.5, 2.5], φ ~ U[0, π]) and mixed sine + linear tasks
(+ m·x, m ~ U[-1, 1]), 10 noisy points (noise std 0.1) on [-5, 5], scored on 200 fresh points.

Selections (core/regression_hyper.py): fixed (s² = 1, σ² = 0.1 var y: the pipeline's starting
values), evidence (type-II ML, as fit_hyperparameters), map2 (weak log-normal prior, one decade),
floor (σ² ≥ 0.01 var y), loo (closed-form leave-one-out likelihood), blocked (the floor's values times a
covariance scale τ ≥ 1 from the held-out NLL of --blocks feature-space blocks). Scored with the predictive
of y (noise included): NLL and 50/90/95 % central-interval coverage, averaged over tasks/seeds.

    .venv/bin/python bench/calibration_regression.py --quick   # 10 toy tasks of each kind, 3 seeds
    .venv/bin/python bench/calibration_regression.py --quick --blocks 5 --out bench/results/calibration_regression_quick_blocks5.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ntk_studio.core import LinearizedGP
from ntk_studio.core.data import adaptation_split
from ntk_studio.core.examples.registry import load_example
from ntk_studio.core.examples.sine import load_pretrained_sine
from ntk_studio.core.metrics_regression import regression_report
from ntk_studio.core.regression_hyper import BLOCKS, SELECTIONS, choose
from ntk_studio.pipeline_defaults import NOISE_FRACTION, settings_for

RESULTS = Path(__file__).resolve().parent / "results"
NOISE_STD = 0.1
N_TOY = 10
N_TOY_TEST = 200
KEYS = ("nll", "rmse", "coverage50", "coverage90", "coverage95")
SHIFT_ON_TEST = "shift, test inputs as unlabelled"
ROWS = (*SELECTIONS, SHIFT_ON_TEST)


def score(model, params: str, X, y, Xs, ys, prior_var: float, blocks: int = BLOCKS) -> dict:
    """Return {selection: report + chosen values} for one adaptation set."""
    y_var = float(y.double().var())
    noise0 = NOISE_FRACTION * y_var
    gp = LinearizedGP(model, params=params, prior_var=prior_var, noise=noise0).fit(X, y)
    Xp = gp._state["X"]
    K1 = gp.kernels.matrix(Xp)
    r = y.double().reshape(-1) - gp.lm.forward(Xp).reshape(-1)
    Xsp = gp.lm.prepare(Xs)
    unlabelled = (gp.kernels.matrix(Xp, Xsp).double().numpy(), gp.kernels.matrix(Xsp).double().numpy())
    out = {}
    for sel in ROWS:
        # SHIFT_ON_TEST: 'shift' told that the scored rows' inputs (never their targets) are unlabelled rows:
        # a check of what it does when the rows it is told about lie among the labelled ones (no shift).
        s2, n2 = choose("shift" if sel == SHIFT_ON_TEST else sel, K1, r, prior_var, noise0, y_var, blocks=blocks,
                        unlabelled=unlabelled if sel == SHIFT_ON_TEST else None)
        g = LinearizedGP(model, params=params, prior_var=s2, noise=n2).fit(X, y)
        mean, var = g.predict(Xs, include_noise=True)
        rep = regression_report(mean, var, ys.double().reshape(mean.shape))
        out[sel] = {**{k: rep[k] for k in KEYS}, "prior_var": s2, "noise": n2}
    return out


def toy_tasks(kind: str, count: int, seed: int = 0):
    """Yield (X, y, Xs, ys) for `count` seeded toy tasks of `kind` ('sine' or 'mixed')."""
    rng = np.random.default_rng(seed + (0 if kind == "sine" else 1000))
    for _ in range(count):
        A, phi = rng.uniform(0.5, 2.5), rng.uniform(0, math.pi)
        m = rng.uniform(-1, 1) if kind == "mixed" else 0.0
        x = rng.uniform(-5, 5, N_TOY + N_TOY_TEST)
        y = A * np.sin(x + phi) + m * x + NOISE_STD * rng.standard_normal(x.shape)
        X = torch.from_numpy(x).unsqueeze(-1)
        Y = torch.from_numpy(y)
        yield X[:N_TOY], Y[:N_TOY], X[N_TOY:], Y[N_TOY:]


def mean_table(rows: list[dict]) -> dict:
    """Return per selection the mean of each metric (and the median chosen values) over rows."""
    out = {}
    for sel in ROWS:
        out[sel] = {k: float(np.mean([r[sel][k] for r in rows])) for k in KEYS}
        out[sel]["median_prior_var"] = float(np.median([r[sel]["prior_var"] for r in rows]))
        out[sel]["median_noise"] = float(np.median([r[sel]["noise"] for r in rows]))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--tasks", type=int, default=None, help="toy tasks of each kind")
    ap.add_argument("--seeds", type=int, default=3, help="adaptation splits per built-in example")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--blocks", type=int, default=BLOCKS, help="feature-space blocks of the 'blocked' selection")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    tasks = args.tasks or (10 if args.quick else 30)
    results = {}
    sine = load_pretrained_sine()
    for kind in ("sine", "mixed"):
        t = time.perf_counter()
        rows = [score(sine, "all", *task, prior_var=1.0, blocks=args.blocks) for task in toy_tasks(kind, tasks)]
        results[f"toy {kind} ({tasks} tasks, 10 points)"] = mean_table(rows)
        print(f"toy {kind}: {time.perf_counter() - t:.0f} s", flush=True)
    for name in ("sine", "diabetes", "hprice3"):
        t = time.perf_counter()
        ex = load_example(name)
        st = settings_for(name)
        rows = []
        for seed in range(args.seeds):
            tr, te = adaptation_split(len(ex.target.y), st.n_adapt, seed)
            ds = ex.target
            rows.append(score(ex.model, st.params, ds.X[tr], ds.y[tr], ds.X[te], ds.y[te], st.prior_var, args.blocks))
        results[f"{name} (n_adapt {st.n_adapt}, {args.seeds} splits)"] = mean_table(rows)
        print(f"{name}: {time.perf_counter() - t:.0f} s", flush=True)
    for task, table in results.items():
        print(f"## {task}")
        for sel, r in table.items():
            print(f"  {sel:9.9s} nll {r['nll']:8.3f} rmse {r['rmse']:.3f} cov50 {r['coverage50']:.2f} "
                  f"cov90 {r['coverage90']:.2f} cov95 {r['coverage95']:.2f}  s2 {r['median_prior_var']:.3g} "
                  f"noise {r['median_noise']:.3g}")
    out = args.out or RESULTS / ("calibration_regression_quick.json" if args.quick else "calibration_regression.json")
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
