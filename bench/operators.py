"""Operator benchmarks for the NTK Studio engine.

1. Kernel-product cost in forward passes: one ``forward``, one kernel-product column
   ``kernel_matmul(X, X, V)`` (1 and 16 columns), ``jvp``, ``vjp`` and ``ggn_matvec`` for an MLP, a
   small CNN and two generic models (the MLP with LayerNorm, the CNN with BatchNorm: no structured
   form) in float32 and float64, each as a ratio to one forward pass of the same batch, for each
   product route: kept structured features ("auto"), the generic kept primal ("primal": J·v by
   forward mode from a traced tangent program), kept graphs with J·v as a double backward
   ("double_backward") and running the network for every product ("recompute"). Kept-state products
   are what a CG iteration pays inside one solve; the solve's first product, which builds the state,
   is timed from emptied caches. ``--part solve`` times whole CG solves; ``--part ggn-repeats``
   repeats the MLP float64 GGN product in separate runs.
2. Dense-J route vs matrix-free route for an MLP 8-128-128-1 in float64 as n grows: the n×n kernel
   from materialized per-sample Jacobians, the structured (Linear-layer) dense kernel, one
   matrix-free kernel product and a full preconditioned-CG fit. Each (route, n) runs in a fresh
   subprocess so its peak RSS can be read.

Run ``.venv/bin/python bench/operators.py [--quick]``; results go to bench/results/operators.json and
markdown tables are printed. All timings use ``torch.set_num_threads(1)``.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import (  # noqa: E402
    GIB,
    interleaved_medians,
    machine_info,
    mem_available_bytes,
    peak_rss_kib,
    reset_peak_rss,
    rss_kib,
    run_child,
)

from ntk_studio.core import KernelBuilder, LinearizedGP, LinearizedModel, prefix  # noqa: E402

THREADS = 1
MODEL_SEED = 0
DATA_SEED = 1
RESULTS_PATH = Path(__file__).resolve().parent / "results" / "operators.json"

# ---- part 1: operator costs in forward passes
MLP_WIDTHS = (8, 128, 128, 1)
CNN_INPUT = (3, 32, 32)
CNN_CLASSES = 10
OPERATOR_BATCH = {"mlp": 512, "cnn": 256, "ln_mlp": 512, "bn_cnn": 256}
OPERATOR_DTYPES = (torch.float32, torch.float64)
MANY_COLUMNS = 16
TARGET_FORWARDS_PER_COLUMN = 3.0  # issue #17: kernel column and GGN product
PRODUCT_ROUTES = ("auto", "primal", "double_backward", "recompute")
OPS_BUDGET_S = {"full": 40.0, "quick": 8.0}  # time for the timed rounds of one (model, dtype)
OPS_ROUNDS = {"full": (3, 9), "quick": (2, 3)}  # (min, max) interleaved rounds

# ---- part 2: dense-J vs matrix-free routes
ROUTE_NS = {"full": (100, 300, 1000, 3000, 10000, 20000), "quick": (100, 300, 1000)}
ROUTES = ("dense_j", "structured", "matfree")
FLOAT64_BYTES = 8
DENSE_J_LIMIT_BYTES = 4 * GIB  # skip the dense-J route when J alone (n·P·8) exceeds this
STRUCTURED_LIMIT_BYTES = 6 * GIB  # skip the structured route when n²·8·2 exceeds this
STRUCTURED_TEMPORARIES = 4  # n×n float64 arrays the structured builder holds at once (measured)
MEMORY_SAFETY = 0.8  # never start a child expected to need more than this share of MemAvailable
CHILD_TIMEOUT_S = {"full": 180.0, "quick": 90.0}
WARMUP_SAMPLES = 32  # each child runs its route once on this many samples before measuring
REPEAT_BELOW_S = 1.0  # a measured call faster than this is repeated and the median kept
FAST_REPEATS = 5
GP_PRIOR_VAR = 1.0
GP_NOISE = 0.01
CG_TOL = 1e-6
CG_PRECOND_RANK = 32
CG_SKIP_ABOVE_N = 10000  # above this n the CG fit is skipped when projected to exceed the limit
CG_FIT_LIMIT_S = 90.0
CG_FIT_OVERHEAD = 1.25  # fit time ≈ products × product time × this (diagonal, preconditioner, vjp)


# ===================================================================== models and data
def build_mlp(seed: int = MODEL_SEED) -> nn.Module:
    """Return the tanh MLP 8-128-128-1 with weights from a fixed seed."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(MLP_WIDTHS[:-1], MLP_WIDTHS[1:])):
        layers.append(nn.Linear(d_in, d_out))
        if i < len(MLP_WIDTHS) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


def build_cnn(seed: int = MODEL_SEED) -> nn.Module:
    """Return Conv(3,16,3)-ReLU-Conv(16,32,3)-ReLU-AvgPool-Linear(32,10) with weights from a fixed seed."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(CNN_INPUT[0], 16, 3), nn.ReLU(),
        nn.Conv2d(16, 32, 3), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(32, CNN_CLASSES),
    )


def build_ln_mlp(seed: int = MODEL_SEED) -> nn.Module:
    """Return 8-128-LayerNorm-tanh-128-LayerNorm-tanh-1 (LayerNorm has no structured form: the generic path)."""
    torch.manual_seed(seed)
    d, h = MLP_WIDTHS[0], MLP_WIDTHS[1]
    model = nn.Sequential(nn.Linear(d, h), nn.LayerNorm(h), nn.Tanh(), nn.Linear(h, h), nn.LayerNorm(h), nn.Tanh(),
                          nn.Linear(h, 1))
    with torch.no_grad():  # LayerNorm starts at the identity affine map: give it generic values
        for m in model:
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return model


def build_bn_cnn(seed: int = MODEL_SEED) -> nn.Module:
    """Return the CNN with a BatchNorm2d after each conv (eval mode, non-trivial statistics): the generic path."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(CNN_INPUT[0], 16, 3), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(32, CNN_CLASSES),
    )
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return model


MODELS = {"mlp": build_mlp, "cnn": build_cnn, "ln_mlp": build_ln_mlp, "bn_cnn": build_bn_cnn}
GENERIC_MODELS = ("ln_mlp", "bn_cnn")  # "auto" is the generic route there: "primal" would repeat it


def model_inputs(name: str, n: int, seed: int = DATA_SEED) -> torch.Tensor:
    """Return n standard-normal inputs for the named model (float64; the engine casts them)."""
    g = torch.Generator().manual_seed(seed)
    shape = (n, MLP_WIDTHS[0]) if name.endswith("mlp") else (n, *CNN_INPUT)
    return torch.randn(shape, generator=g, dtype=torch.float64)


def regression_data(n: int, seed: int = DATA_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """Return X ~ N(0, 1) of shape (n, 8) and y = sin(Σ X) + 0.1·noise, float64."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, MLP_WIDTHS[0], generator=g, dtype=torch.float64)
    y = torch.sin(X.sum(1)) + 0.1 * torch.randn(n, generator=g, dtype=torch.float64)
    return X, y


# ===================================================================== part 1
def _rounds_for(mode: str):
    """Return a function mapping the warm-up round's seconds to a round count within the mode's budget."""
    lo, hi = OPS_ROUNDS[mode]
    return lambda warm_round_s: max(lo, min(hi, int(OPS_BUDGET_S[mode] / max(warm_round_s, 1e-9))))


def routes_for(name: str) -> tuple[str, ...]:
    """Return the product routes measured for a model ("primal" only where "auto" is the structured route)."""
    return tuple(r for r in PRODUCT_ROUTES if not (name in GENERIC_MODELS and r == "primal"))


def operator_costs(name: str, dtype: torch.dtype, mode: str, routes: tuple[str, ...] | None = None,
                   ops_wanted: tuple[str, ...] | None = None) -> list[dict]:
    """Return, per product route, per-call medians of the products and their ratios to one forward pass.

    Routes (``LinearizedModel.product_route``): "auto" (structured features where the model has
    them, else the generic kept graphs), "forward_mode" (the generic kept primal: J·v by forward mode
    from a traced tangent program, Jᵀ·u from a kept graph; opt-in since session 5, the results below
    were measured when it was "auto"'s generic route), "primal"/"double_backward" (kept graphs, J·v as a
    double backward: the generic path before this change and its fallback) and "recompute" (the
    network runs for every product, as before issue #17). The product columns of the kept routes
    are what one CG iteration pays *inside one solve*: the same X, its state kept from the solve's
    first product. That first product is timed separately, from emptied caches on every call:
    "first_product" also forgets the traced programs (the cold cost), "first_product_programs_kept"
    keeps them (a new input set of the same chunk shapes). All ops of all routes run interleaved, so
    every ratio in a row comes from the same rounds.
    """
    X0 = model_inputs(name, OPERATOR_BATCH[name])
    routes = routes or routes_for(name)
    lms = {route: LinearizedModel(MODELS[name](), dtype=dtype) for route in routes}
    fwd_lm = LinearizedModel(MODELS[name](), dtype=dtype)
    Xf = fwd_lm.prepare(X0)
    ops: dict[str, object] = {"forward": lambda: fwd_lm.forward(Xf)}
    shapes = {}
    inputs_of = {}
    for route, lm in lms.items():
        lm.product_route = route
        X = inputs_of[route] = lm.prepare(X0)
        n, K, P = X.shape[0], lm.forward(X).shape[1], lm.num_params
        shapes = {"n": n, "outputs": K, "params": P}
        g = torch.Generator().manual_seed(DATA_SEED)
        V1 = torch.randn(n * K, 1, generator=g, dtype=dtype)
        Vc = torch.randn(n * K, MANY_COLUMNS, generator=g, dtype=dtype)
        v = torch.randn(P, generator=g, dtype=dtype)
        u = torch.randn(n, K, generator=g, dtype=dtype)
        if route != "recompute":
            def first(lm=lm, X=X, V1=V1, programs=True):
                lm.clear_operator_cache(programs=programs)
                prefix.clear_cache()
                lm.kernel_matmul(X, X, V1)  # leaves the state kept for the products below

            ops[f"{route}:first_product"] = first
            if route in ("auto", "primal") and (route == "primal" or name in GENERIC_MODELS):
                ops[f"{route}:first_product_programs_kept"] = lambda first=first: first(programs=False)
        ops[f"{route}:kernel_1col"] = lambda lm=lm, X=X, V1=V1: lm.kernel_matmul(X, X, V1)
        ops[f"{route}:kernel_{MANY_COLUMNS}col"] = lambda lm=lm, X=X, Vc=Vc: lm.kernel_matmul(X, X, Vc)
        ops[f"{route}:ggn_matvec"] = lambda lm=lm, X=X, v=v: lm.ggn_matvec(X, v)
        ops[f"{route}:jvp"] = lambda lm=lm, X=X, v=v: lm.jvp(X, v)
        ops[f"{route}:vjp"] = lambda lm=lm, X=X, u=u: lm.vjp(X, u)
    if ops_wanted is not None:
        ops = {k: f for k, f in ops.items() if k == "forward" or k.split(":", 1)[1] in ops_wanted}
    timings = interleaved_medians(ops, _rounds_for(mode))
    fwd = timings["forward"]["median_s"]
    rows = []
    for route, lm in lms.items():
        per_call = {k.split(":", 1)[1]: t["median_s"] for k, t in timings.items() if k.startswith(route + ":")}
        if f"kernel_{MANY_COLUMNS}col" in per_call:
            per_call[f"kernel_{MANY_COLUMNS}col_per_col"] = per_call[f"kernel_{MANY_COLUMNS}col"] / MANY_COLUMNS
        cache = lm._product_cache(inputs_of[route], build=False) if route != "recompute" else None
        rows.append({
            "model": name,
            "dtype": str(dtype).removeprefix("torch."),
            **shapes,
            "route": route,
            "cache": type(cache).__name__ if cache is not None else "none",
            "kept_mib": round(cache.nbytes / 2**20, 1) if cache is not None else 0.0,
            "program_state_mib": round(getattr(cache, "state_bytes", 0) / 2**20, 1),
            "note": lm.operator_note,
            "rounds": timings["forward"]["samples"],
            "forward_s": round(fwd, 6),
            "seconds": {k: round(t, 6) for k, t in per_call.items()},
            "sys_share": {k.split(":", 1)[1]: t["sys_share"] for k, t in timings.items() if k.startswith(route + ":")},
            "forwards": {k: round(t / fwd, 2) for k, t in per_call.items()},
        })
    return rows


GGN_REPEATS = 5


def ggn_repeats(repeats: int = GGN_REPEATS) -> list[dict]:
    """Return the MLP float64 structured ("auto") GGN product and kernel column in forward passes, `repeats` separate runs."""
    out = []
    for r in range(repeats):
        row = operator_costs("mlp", torch.float64, "quick", routes=("auto",), ops_wanted=("ggn_matvec", "kernel_1col"))[0]
        out.append({"repeat": r, "ggn_matvec": row["forwards"]["ggn_matvec"], "kernel_1col": row["forwards"]["kernel_1col"],
                    "forward_s": row["forward_s"], "load_average": round(os.getloadavg()[0], 2)})
        _log(f"ggn repeat {r}: {out[-1]}")
    return out


def run_operators(mode: str, models: tuple[str, ...] = tuple(MODELS)) -> list[dict]:
    """Return operator_costs for every model and dtype, printing progress to stderr."""
    rows = []
    for name in models:
        for dtype in OPERATOR_DTYPES:
            start = time.perf_counter()
            rows.extend(operator_costs(name, dtype, mode))
            _log(f"operators {name} {dtype}: {time.perf_counter() - start:.0f} s")
    return rows


# ===================================================================== part 1b: inside one CG solve
SOLVE_CASES = (("mlp", torch.float64), ("cnn", torch.float32), ("ln_mlp", torch.float64), ("bn_cnn", torch.float32))
SOLVE_ITERATIONS = 12  # CG steps per timed solve (tolerance 0: every step runs)
SOLVE_NOISE = 0.1
SOLVE_REPEATS = 2
PROGRAMS_KEPT = "+programs kept"  # a route label suffix: the solve's model traced its programs on another input set


def solve_costs(cases=SOLVE_CASES) -> list[dict]:
    """Return, per model and product route, one CG solve's wall time per product in forward passes.

    Each repeat starts from emptied caches (the operator cache, the prefix cache) and a fresh
    LinearizedModel, then runs SOLVE_ITERATIONS steps of the engine's CG on (J Jᵀ + σ² I) x = b: the
    first product builds the kept state inside the solve, so the per-product cost includes it
    amortized over the solve (and, on the generic forward-mode route, tracing its programs). The
    "+programs kept" rows solve on a model that already traced its programs on another input set of
    the same shape (a second solve of a hyperparameter search, or a new data set): everything else
    is built inside the timed solve. Forward passes are timed in the same process, interleaved.
    """
    from ntk_studio.core.solvers import cg

    rows = []
    for name, dtype in cases:
        X0 = model_inputs(name, OPERATOR_BATCH[name])
        fwd_lm = LinearizedModel(MODELS[name](), dtype=dtype)
        Xf = fwd_lm.prepare(X0)
        fwd_lm.forward(Xf)
        samples: dict[str, list[float]] = {"forward": []}
        products: dict[str, int] = {}
        labels = list(routes_for(name))
        labels.insert(1, "forward_mode" + PROGRAMS_KEPT)
        for rep in range(-1, SOLVE_REPEATS):  # rep -1: an untimed warm-up on WARMUP_SAMPLES (first torch.func calls)
            Xr = X0[:WARMUP_SAMPLES] if rep < 0 else X0
            start = time.perf_counter()
            fwd_lm.forward(Xf)
            if rep >= 0:
                samples["forward"].append(time.perf_counter() - start)
            for label in labels:
                route = label.removesuffix(PROGRAMS_KEPT)
                lm = LinearizedModel(MODELS[name](), dtype=dtype)
                lm.product_route = route
                prefix.clear_cache()
                X = lm.prepare(Xr)
                K = lm.forward(X).shape[1]
                if label.endswith(PROGRAMS_KEPT):  # trace on a copy (another tensor object), then forget its state
                    lm.kernel_matmul(X.clone(), X.clone(), torch.ones(X.shape[0] * K, 1, dtype=dtype))
                    lm.clear_operator_cache(programs=False)
                b = torch.randn(X.shape[0] * K, 1, generator=torch.Generator().manual_seed(DATA_SEED), dtype=dtype)
                count = [0]

                def matmul(V, lm=lm, X=X, count=count):
                    count[0] += V.shape[-1]
                    return lm.kernel_matmul(X, X, V) + SOLVE_NOISE * V

                start = time.perf_counter()
                cg(matmul, b, tol=0.0, max_iter=SOLVE_ITERATIONS)
                if rep >= 0:
                    samples.setdefault(label, []).append(time.perf_counter() - start)
                    products[label] = count[0]
        fwd = statistics.median(samples["forward"])
        for label in labels:
            per = statistics.median(samples[label]) / products[label]
            rows.append({"model": name, "dtype": str(dtype).removeprefix("torch."), "route": label,
                         "products": products[label], "forward_s": round(fwd, 6),
                         "solve_s": round(statistics.median(samples[label]), 4),
                         "per_product_forwards": round(per / fwd, 2)})
        _log(f"solve {name} {dtype}: done")
    return rows


def solve_table(rows: list[dict]) -> str:
    """Return the part-1b markdown table: per-product cost inside one CG solve, in forward passes."""
    lines = ["| model | dtype | route | products per solve | forward | solve | per product (build included) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['dtype']} | {r['route']} | {r['products']} | {_fmt_s(r['forward_s'])} "
                     f"| {_fmt_s(r['solve_s'])} | {r['per_product_forwards']:.2f}× |")
    return "\n".join(lines)


# ===================================================================== part 1c: what the generic path keeps
MEMORY_CASES = (("ln_mlp", 512), ("bn_cnn", 64))


def kept_memory(cases=MEMORY_CASES) -> list[dict]:
    """Return, per generic model and dtype, the MiB kept for products on one chunk, by route.

    The forward-mode route keeps the forward graph's saved activations (Jᵀ·u) and the tangent
    program's primal values (J·v); the double-backward route keeps its two graphs; for comparison,
    ``torch.func.linearize``'s folded constants for the same chunk (parameters of its graph module).
    """
    import warnings

    from torch.func import linearize

    rows = []
    for name, n in cases:
        for dtype in OPERATOR_DTYPES:
            lm, old = LinearizedModel(MODELS[name](), dtype=dtype), LinearizedModel(MODELS[name](), dtype=dtype)
            old.product_route = "double_backward"
            X = lm.prepare(model_inputs(name, n))
            K = lm.forward(X).shape[1]
            for m in (lm, old):
                m.kernel_matmul(X, X, torch.ones(n * K, 1, dtype=dtype))
            new, dbl = lm._product_cache(X, build=False), old._product_cache(X, build=False)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _, push = linearize(lambda th: lm._g(th, X), dict(lm.theta))
                push({k: torch.zeros_like(t) for k, t in lm.theta.items()})  # folds the constants
            gm = next(c.cell_contents for c in push.__closure__ if isinstance(c.cell_contents, torch.fx.GraphModule))
            mib = 2.0**-20
            rows.append({"model": name, "dtype": str(dtype).removeprefix("torch."), "n": n,
                         "forward_mode_graph_mib": round(new.graph_bytes * mib, 2),
                         "forward_mode_program_mib": round(new.state_bytes * mib, 2),
                         "double_backward_mib": round(dbl.nbytes * mib, 2),
                         "linearize_constants_mib": round(sum(p.numel() * p.element_size() for p in gm.parameters()) * mib, 2)})
            _log(f"memory {rows[-1]}")
    return rows


# ===================================================================== part 2: children
def _measure_call(fn, setup=None) -> float:
    """Return the time of fn(); calls faster than REPEAT_BELOW_S are repeated and the median kept.

    `setup` runs untimed before every call: builders cache per-input work (the training Jacobian,
    structured features, prefix features), and a repeat that hits those caches times a matrix
    product, not a kernel build (docs/benchmarks.md §2 once quoted such cached repeats).
    """
    def once() -> float:
        if setup is not None:
            setup()
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    first = once()
    if first >= REPEAT_BELOW_S:
        return first
    return statistics.median(once() for _ in range(FAST_REPEATS))


def _uncached(builder: KernelBuilder):
    """Return a setup that empties every cache a kernel build could hit."""
    def clear() -> None:
        builder.clear_cache()
        prefix.clear_cache()
    return clear


def _baseline_kib() -> int:
    """Return the RSS just before a measured call, with the peak (VmHWM) reset to it."""
    gc.collect()
    reset_peak_rss()
    return rss_kib()


def _extra_mib(baseline_kib: int) -> float:
    """Return peak RSS (VmHWM) minus the baseline in MiB, floored at 0."""
    return max(0.0, round((peak_rss_kib() - baseline_kib) / 1024, 1))


def child_dense(route: str, n: int) -> dict:
    """Return time and peak extra RSS of one dense n×n kernel build (route 'dense_j' or 'structured')."""
    structured = None if route == "structured" else False
    model = build_mlp()
    X, _ = regression_data(n)
    lm = LinearizedModel(model)
    KernelBuilder(lm, structured=structured).matrix(X[:WARMUP_SAMPLES])
    builder = KernelBuilder(lm, structured=structured)
    base = _baseline_kib()
    seconds = _measure_call(lambda: builder.matrix(X), setup=_uncached(builder))
    return {"seconds": round(seconds, 4), "peak_extra_mib": _extra_mib(base), "baseline_mib": round(base / 1024, 1),
            "path": builder.path}


def _fit_cg(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> LinearizedGP:
    gp = LinearizedGP(model, prior_var=GP_PRIOR_VAR, noise=GP_NOISE, space="function", solver="cg",
                      precond_rank=CG_PRECOND_RANK, cg_tol=CG_TOL)
    return gp.fit(X, y)


def child_matfree(n: int, products_estimate: int) -> dict:
    """Return one kernel-product column's time and a full CG fit's time, products and peak extra RSS."""
    model = build_mlp()
    X, y = regression_data(n)
    lm = LinearizedModel(model)
    Xp = lm.prepare(X)
    V = torch.randn(n, 1, generator=torch.Generator().manual_seed(DATA_SEED), dtype=torch.float64)
    lm.kernel_matmul(Xp[:WARMUP_SAMPLES], Xp[:WARMUP_SAMPLES], V[:WARMUP_SAMPLES])
    _fit_cg(model, X[:WARMUP_SAMPLES], y[:WARMUP_SAMPLES])
    base = _baseline_kib()
    # One product from emptied caches (its features built inside the call): never a kept-feature hit.
    product_s = _measure_call(lambda: lm.kernel_matmul(Xp, Xp, V), setup=lm.clear_operator_cache)
    out = {"product_seconds": round(product_s, 5), "product_peak_extra_mib": _extra_mib(base),
           "baseline_mib": round(base / 1024, 1)}
    base = _baseline_kib()
    projected = products_estimate * product_s * CG_FIT_OVERHEAD
    out["cg_projected_seconds"] = round(projected, 1)
    if n > CG_SKIP_ABOVE_N and projected > CG_FIT_LIMIT_S:
        out["cg_skipped"] = (f"skipped: projected ~{projected:.0f} s (~{products_estimate} products × "
                             f"{product_s * 1e3:.0f} ms) > {CG_FIT_LIMIT_S:.0f} s")
        return out
    start = time.perf_counter()
    gp = _fit_cg(model, X, y)
    info = gp.solve_info
    out.update(
        cg_seconds=round(time.perf_counter() - start, 3),
        cg_products=info.products,
        cg_iterations=getattr(info, "iterations", None),
        cg_residual=info.residual,
        cg_converged=info.converged,
        cg_peak_extra_mib=_extra_mib(base),
    )
    return out


def run_child_mode(route: str, n: int, products_estimate: int) -> None:
    """Measure one (route, n) in this fresh process and print its result as one JSON line."""
    torch.set_num_threads(THREADS)
    result = child_matfree(n, products_estimate) if route == "matfree" else child_dense(route, n)
    print(json.dumps({"route": route, "n": n, **result}))


# ===================================================================== part 3: what the cache hid
CACHE_NS = (100, 300, 1000)
CACHE_ROUNDS = 5


def cache_effect(ns=CACHE_NS, rounds: int = CACHE_ROUNDS) -> list[dict]:
    """Return, per (route, n), the median time of an uncached kernel build and of a cached repeat.

    Both in this one process, interleaved round by round (uncached, then cached, for every route and
    n), so the machine's load hits them alike and the ratios are from one run.
    """
    model = build_mlp()
    lm = LinearizedModel(model)
    builders = {route: KernelBuilder(lm, structured=None if route == "structured" else False)
                for route in ("dense_j", "structured")}
    data = {n: regression_data(n)[0] for n in ns}
    for b in builders.values():
        b.matrix(data[ns[0]][:WARMUP_SAMPLES])
    samples: dict[tuple[str, int, str], list[float]] = {}
    for _ in range(rounds):
        for n in ns:
            for route, b in builders.items():
                for kind in ("uncached", "cached"):
                    if kind == "uncached":
                        _uncached(b)()
                    start = time.perf_counter()
                    b.matrix(data[n])
                    samples.setdefault((route, n, kind), []).append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in samples.items()}
    return [{"route": r, "n": n, "uncached_s": round(med[(r, n, "uncached")], 5),
             "cached_s": round(med[(r, n, "cached")], 5)} for r in builders for n in ns]


def cache_table(rows: list[dict]) -> str:
    """Return the part-3 markdown table: uncached vs cached kernel builds and the dense-J/structured ratio."""
    by = {(r["route"], r["n"]): r for r in rows}
    lines = ["| n | dense-J uncached | dense-J cached repeat | structured uncached | structured cached repeat "
             "| dense-J / structured, uncached | same, cached repeats |", "|---|---|---|---|---|---|---|"]
    for n in sorted({r["n"] for r in rows}):
        d, s = by[("dense_j", n)], by[("structured", n)]
        lines.append(f"| {n:,} | {_fmt_s(d['uncached_s'])} | {_fmt_s(d['cached_s'])} | {_fmt_s(s['uncached_s'])} | "
                     f"{_fmt_s(s['cached_s'])} | {d['uncached_s'] / s['uncached_s']:.0f}× | "
                     f"{d['cached_s'] / s['cached_s']:.0f}× |")
    return "\n".join(lines)


# ===================================================================== part 2: parent
def _params() -> int:
    """Return P, the MLP's parameter count."""
    return sum(p.numel() for p in build_mlp().parameters())


def _needed_bytes(route: str, n: int, P: int) -> int:
    """Return the bytes a route is expected to need at n (used to avoid starving the machine)."""
    kernel = n * n * FLOAT64_BYTES
    if route == "dense_j":
        # J twice while torch.cat joins its chunks, then the kernel's row blocks and their concatenation.
        return 2 * n * P * FLOAT64_BYTES + 2 * kernel
    if route == "structured":
        return STRUCTURED_TEMPORARIES * kernel
    return 0


def _skip_reason(route: str, n: int, P: int, last: dict | None, timeout_s: float) -> str | None:
    """Return why (route, n) is not run, or None: the brief's memory rules, free memory, projected time."""
    if route == "dense_j" and n * P * FLOAT64_BYTES > DENSE_J_LIMIT_BYTES:
        return f"skipped: J would need {n * P * FLOAT64_BYTES / GIB:.1f} GiB"
    if route == "structured" and 2 * n * n * FLOAT64_BYTES > STRUCTURED_LIMIT_BYTES:
        return f"skipped: kernel + copy would need {2 * n * n * FLOAT64_BYTES / GIB:.1f} GiB"
    need, avail = _needed_bytes(route, n, P), mem_available_bytes()
    if need > MEMORY_SAFETY * avail:
        return f"skipped: needs ~{need / GIB:.1f} GiB, {avail / GIB:.1f} GiB available"
    if route != "matfree" and last and last.get("status") == "ok":
        projected = last["seconds"] * (n / last["n"]) ** 2
        if projected > timeout_s:
            return f"skipped: projected ~{projected:.0f} s (n² from n={last['n']}) > {timeout_s:.0f} s limit"
    return None


def _products_estimate(last: dict | None, n: int) -> int:
    """Return the CG products expected at n: the last fit's count grown like √n (observed growth)."""
    if not last or "cg_products" not in last:
        return 0
    return int(last["cg_products"] * math.sqrt(n / last["n"]))


def run_routes(mode: str) -> list[dict]:
    """Return one result per (route, n), each measured in a fresh subprocess with a time limit."""
    P, timeout_s = _params(), CHILD_TIMEOUT_S[mode]
    results, last = [], {}
    for route in ROUTES:
        for n in ROUTE_NS[mode]:
            reason = _skip_reason(route, n, P, last.get(route), timeout_s)
            if reason:
                res = {"route": route, "n": n, "status": "skipped", "reason": reason}
            else:
                args = [__file__, "--child", route, str(n), "--products-estimate",
                        str(_products_estimate(last.get(route), n))]
                res = {"route": route, "n": n, **run_child(args, timeout_s)}
                if res["status"] == "timeout":
                    res["reason"] = f"timeout after {timeout_s:.0f} s"
            _log(f"routes {route} n={n}: {res.get('status')} ({res.get('wall_s', 0)} s)")
            results.append(res)
            if res["status"] == "ok":
                last[route] = res
    return results


# ===================================================================== reporting
def _fmt_s(seconds: float) -> str:
    if seconds < 1e-2:
        return f"{seconds * 1e3:.2f} ms"
    if seconds < 1:
        return f"{seconds * 1e3:.0f} ms"
    return f"{seconds:.2f} s"


def operators_table(rows: list[dict]) -> str:
    """Return the part-1 markdown table: each product's cost in forward passes, per product route."""
    many = f"kernel_{MANY_COLUMNS}col_per_col"
    head = ("| model | dtype | n | P | route (kept) | forward | kernel col (1 col) | kernel col (16 cols, per col) "
            "| ggn_matvec | jvp | vjp | first product (builds) | first product, programs kept |")
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f = r["forwards"]
        cell = (lambda key: f"{f[key]:.2f}×" if key in f else "–")
        kept = f"{r['route']} ({r['cache']}, {r['kept_mib']:,.1f} MiB)" if r["cache"] != "none" else r["route"]
        if r.get("program_state_mib"):
            kept = kept[:-1] + f", of which programs {r['program_state_mib']:,.1f} MiB)"
        cells = [r["model"], r["dtype"], str(r["n"]), f"{r['params']:,}", kept, _fmt_s(r["forward_s"]),
                 cell("kernel_1col"), cell(many), cell("ggn_matvec"), cell("jvp"), cell("vjp"), cell("first_product"),
                 cell("first_product_programs_kept")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ok(res: dict | None) -> bool:
    return res is not None and res.get("status") == "ok"


def _time_cell(res: dict | None, key: str) -> str:
    """Return a time, or why there is none (skip reason, timeout, error)."""
    if res is None:
        return "–"
    if not _ok(res):
        return res.get("reason") or str(res.get("status"))
    return _fmt_s(res[key]) if res.get(key) is not None else "–"


def _mib_cell(res: dict | None, key: str) -> str:
    if not _ok(res) or res.get(key) is None:
        return "–"
    return f"{res[key]:,.0f}" if res[key] >= 1 else "<1"


def routes_table(results: list[dict]) -> str:
    """Return the part-2 markdown table: dense-J, structured and matrix-free routes by n."""
    by = {(r["route"], r["n"]): r for r in results}
    head = ("| n | dense-J kernel | dense-J MiB | structured kernel | structured MiB | dense-J / structured "
            "| product (1 col) | CG fit | CG products | CG fit MiB |")
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|"]
    for n in sorted({r["n"] for r in results}):
        d, s, m = by.get(("dense_j", n)), by.get(("structured", n)), by.get(("matfree", n))
        speedup = f"{d['seconds'] / s['seconds']:.0f}×" if _ok(d) and _ok(s) else "–"
        cg_skip = _ok(m) and m.get("cg_skipped")
        cells = [
            f"{n:,}",
            _time_cell(d, "seconds"), _mib_cell(d, "peak_extra_mib"),
            _time_cell(s, "seconds"), _mib_cell(s, "peak_extra_mib"),
            speedup,
            _time_cell(m, "product_seconds"),
            cg_skip or _time_cell(m, "cg_seconds"),
            "–" if cg_skip or not _ok(m) else str(m["cg_products"]),
            "–" if cg_skip else _mib_cell(m, "cg_peak_extra_mib"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _log(msg: str) -> None:
    """Print a progress line to stderr."""
    print(msg, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmarks, write the JSON results and print markdown tables."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: n up to 1000, fewer repeats")
    ap.add_argument("--part", choices=("all", "operators", "solve", "routes", "cache", "ggn-repeats", "memory"), default="all",
                    help="'cache' times uncached vs cached kernel builds in one process (not part of 'all')")
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated models for --part operators/solve")
    ap.add_argument("--out", type=Path, default=RESULTS_PATH, help="JSON results path")
    ap.add_argument("--child", nargs=2, metavar=("ROUTE", "N"), help=argparse.SUPPRESS)
    ap.add_argument("--products-estimate", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        run_child_mode(args.child[0], int(args.child[1]), args.products_estimate)
        return
    torch.set_num_threads(THREADS)
    mode = "quick" if args.quick else "full"
    report = {"machine": machine_info(THREADS), "settings": _settings(mode), "operators": [], "routes": []}
    start = time.perf_counter()
    models = tuple(m for m in args.models.split(",") if m)
    if args.part in ("all", "operators"):
        report["operators"] = run_operators(mode, models)
    if args.part in ("all", "routes"):
        report["routes"] = run_routes(mode)
    if args.part == "cache":
        report["cache_effect"] = cache_effect()
    if args.part == "solve":
        report["solve"] = solve_costs(tuple(c for c in SOLVE_CASES if c[0] in models))
    if args.part == "ggn-repeats":
        report["ggn_repeats"] = ggn_repeats()
    if args.part == "memory":
        report["kept_memory"] = kept_memory()
    report["total_seconds"] = round(time.perf_counter() - start, 1)
    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    if report["operators"]:
        print("\n### Operator cost in forward passes (median, 1 thread)\n")
        print(operators_table(report["operators"]))
    if report["routes"]:
        print(f"\n### Dense-J vs matrix-free, MLP {'-'.join(map(str, MLP_WIDTHS))}, float64\n")
        print(routes_table(report["routes"]))
    if report.get("solve"):
        print(f"\n### Per product inside one CG solve ({SOLVE_ITERATIONS} steps, cold caches, 1 thread)\n")
        print(solve_table(report["solve"]))
    if report.get("kept_memory"):
        print("\n### Kept for products on one chunk (MiB)\n")
        print(json.dumps(report["kept_memory"], indent=1))
    if report.get("ggn_repeats"):
        vals = [r["ggn_matvec"] for r in report["ggn_repeats"]]
        print(f"\n### MLP float64 GGN product (structured), {len(vals)} separate runs: median "
              f"{statistics.median(vals):.2f}×, range {min(vals):.2f}–{max(vals):.2f}× forward passes\n")
        print(json.dumps(report["ggn_repeats"], indent=1))
    if report.get("cache_effect"):
        print(f"\n### Kernel builds: uncached vs cached repeat (median of {CACHE_ROUNDS}, one process)\n")
        print(cache_table(report["cache_effect"]))
    print(f"\nwrote {args.out} in {report['total_seconds']:.0f} s")


def _settings(mode: str) -> dict:
    return {
        "mode": mode,
        "threads": THREADS,
        "operator_batch": OPERATOR_BATCH,
        "many_columns": MANY_COLUMNS,
        "target_forwards_per_column": TARGET_FORWARDS_PER_COLUMN,
        "route_ns": list(ROUTE_NS[mode]),
        "child_timeout_s": CHILD_TIMEOUT_S[mode],
        "gp": {"prior_var": GP_PRIOR_VAR, "noise": GP_NOISE, "cg_tol": CG_TOL, "precond_rank": CG_PRECOND_RANK},
        "mlp_params": _params(),
        "memory": "peak extra = VmHWM (reset via /proc/self/clear_refs just before the call) minus VmRSS "
                  "before the call, in a fresh child process after imports, model/data creation and a warm-up",
    }


if __name__ == "__main__":
    main()
