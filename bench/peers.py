"""Benchmark 1: our routes against laplace-torch and the dense-NTK baseline on one regression problem.

MLP 8-128-128-1 (17,793 parameters, all linearized), n training and m test points of the problem in
``_problem.py`` (s² = 1, σ² = 0.01 fixed for every method). Per method, in a fresh child process
under a memory and time limit: wall time of fit and of predict (mean and noise-free variance at
the test points), peak extra RSS, and the max / median relative error of the predictive variance
against the float64 dense reference. Every method runs in its default dtype (ours: float64;
laplace-torch and the dense baseline: the model's float32), plus float64 rows for the two
laplace-torch methods that are exact in exact arithmetic, to separate dtype error from method error.

Run through ``bench/run.py``; ``python bench/peers.py --child METHOD ...`` is one measurement.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import _problem as prob
from _limits import GIB, emit, run_limited
from _measure import measured_call, peak_extra_mib

THREADS = 1
LAPLACE_BATCH = 100  # DataLoader batch size handed to laplace-torch
CG_TOL = 1e-6
CG_PRECOND_RANK = 32
CG_VAR_POINTS = 50  # CG routes: variance at the first 50 test points (one CG solve per point)
WARMUP_WIDTH = 4  # warm-up fits use the same code path on an 8-4-4-1 MLP, never a P×P object
WARMUP_N = 16
FLOAT32_BYTES, FLOAT64_BYTES = 4, 8
CHOLESKY_COPIES = 4
# (n train, m test, MLP width): quick mode uses 8-32-32-1 (P = 1,377) so that every method runs.
SIZES = {"full": (2000, 1000, prob.DEFAULT_WIDTH), "quick": (400, 200, 32)}
LIMITS = {"full": (600.0, 8 * GIB), "quick": (60.0, 4 * GIB)}  # per child: seconds, RSS bytes


@dataclass(frozen=True)
class Method:
    """One row of the table: who implements it, its label and how to estimate its memory."""

    key: str
    family: str  # "ours", "laplace-torch", "torch.func"
    label: str
    dtype: str


METHODS = (
    Method("reference", "torch.func", "dense NTK (vmap(jacrev) + Cholesky), float64 = reference", "float64"),
    Method("dense_f32", "torch.func", "dense NTK (vmap(jacrev) + Cholesky)", "float32"),
    Method("ours_fn_chol", "ours", "function space, Cholesky (auto route)", "float64"),
    Method("ours_fn_cg", "ours", "function space, CG", "float64"),
    Method("ours_w_chol", "ours", "weight space, Cholesky", "float64"),
    Method("ours_w_cg", "ours", "weight space, CG", "float64"),
    Method("la_full", "laplace-torch", "FullLaplace (default backend: curvlinops)", "float32"),
    Method("la_full_backpack", "laplace-torch", "FullLaplace, BackPackGGN backend", "float32"),
    Method("la_kron", "laplace-torch", "KronLaplace (KFAC)", "float32"),
    Method("la_diag", "laplace-torch", "DiagLaplace", "float32"),
    Method("la_functional", "laplace-torch", "FunctionalLaplace (GP, n_subset = n)", "float32"),
    Method("la_functional_f64", "laplace-torch", "FunctionalLaplace (GP, n_subset = n)", "float64"),
    Method("la_full_f64", "laplace-torch", "FullLaplace, BackPackGGN backend", "float64"),
)
BY_KEY = {m.key: m for m in METHODS}


def estimate_bytes(key: str, n: int, m: int, P: int, width: int) -> int:
    """Return the memory a method is expected to need (the skip rule; the watchdog is the backstop)."""
    d = FLOAT64_BYTES if BY_KEY[key].dtype == "float64" else FLOAT32_BYTES
    if key in ("reference", "dense_f32"):
        return (n + m) * P * d + 2 * n * n * d + 2 * n * m * d
    # Our Cholesky routes hold 4 system-sized matrices at the peak (measured: the kernel or JᵀJ, the
    # system matrix, its factor, and the identity solvers.cholesky allocates), not the planner's 2-3.
    if key == "ours_fn_chol":
        return CHOLESKY_COPIES * n * n * d + n * m * d * 2
    if key == "ours_w_chol":
        return CHOLESKY_COPIES * P * P * d + min(n, 1024) * P * d
    if key in ("ours_fn_cg", "ours_w_cg"):
        return CG_VAR_POINTS * P * d * 4 + 64 * n * d
    if key == "la_full":
        # torch.eye(P), the GGN-times-identity result and H, plus the batched tangents curvlinops
        # pushes through each layer (batch × width × P columns).
        return 3 * P * P * d + 3 * LAPLACE_BATCH * width * P * d
    if key in ("la_full_backpack", "la_full_f64"):
        return 3 * P * P * d + 2 * LAPLACE_BATCH * P * d
    if key in ("la_functional", "la_functional_f64"):
        return 2 * n * n * d + (m + 2 * LAPLACE_BATCH) * P * d
    return 4 * P * d + m * P * d  # Kron, Diag: factors or a diagonal, plus the test Jacobians


# ===================================================================== child side
def _ours(key: str, width: int):
    from ntk_studio.core import LinearizedGP

    space, solver = {"ours_fn_chol": ("function", "cholesky"), "ours_fn_cg": ("function", "cg"),
                     "ours_w_chol": ("weight", "cholesky"), "ours_w_cg": ("weight", "cg")}[key]
    model = prob.mlp(width)

    def fit(X, y):
        gp = LinearizedGP(model, prior_var=prob.PRIOR_VAR, noise=prob.NOISE, space=space, solver=solver,
                          cg_tol=CG_TOL, precond_rank=CG_PRECOND_RANK, memory_budget=16 * GIB)
        return gp.fit(X, y)

    def predict(gp, Xs):
        return gp.predict(Xs)

    return fit, predict


def _laplace(key: str, width: int):
    import laplace
    from laplace.curvature import BackPackGGN
    from torch.utils.data import DataLoader, TensorDataset

    dtype = torch.float64 if BY_KEY[key].dtype == "float64" else torch.float32
    model = prob.mlp(width).to(dtype)

    def fit(X, y):
        loader = DataLoader(TensorDataset(X.to(dtype), y.to(dtype).unsqueeze(-1)), batch_size=LAPLACE_BATCH)
        common = {"sigma_noise": prob.NOISE**0.5, "prior_precision": 1.0 / prob.PRIOR_VAR}
        if key in ("la_functional", "la_functional_f64"):
            la = laplace.FunctionalLaplace(model, "regression", n_subset=X.shape[0], **common)
        elif key == "la_full":
            la = laplace.FullLaplace(model, "regression", **common)
        elif key in ("la_full_backpack", "la_full_f64"):
            la = laplace.FullLaplace(model, "regression", backend=BackPackGGN, **common)
        elif key == "la_kron":
            la = laplace.KronLaplace(model, "regression", **common)
        else:
            la = laplace.DiagLaplace(model, "regression", **common)
        la.fit(loader)
        return la

    def predict(la, Xs):
        # Both are the linearized (GLM) predictive; FunctionalLaplace calls it "gp".
        pred_type = "gp" if isinstance(la, laplace.FunctionalLaplace) else "glm"
        mean, var = la(Xs.to(dtype), pred_type=pred_type)
        return mean.reshape(-1), var.reshape(-1)

    return fit, predict


def _dense(key: str, width: int):
    dtype = torch.float64 if key == "reference" else torch.float32
    model = prob.mlp(width)
    state = {}

    def fit(X, y):
        state.update(X=X, y=y)  # the baseline has no separate fit: its posterior needs the test points
        return state

    def predict(st, Xs):
        return prob.dense_ntk_posterior(model, st["X"], st["y"], Xs, dtype)

    return fit, predict


def _runner(key: str, width: int):
    if key.startswith("ours_"):
        return _ours(key, width)
    if key.startswith("la_"):
        return _laplace(key, width)
    return _dense(key, width)


def run_child(key: str, n: int, m: int, width: int, workdir: Path) -> None:
    """Measure one method: warm up, fit, predict; save (mean, var) to workdir; emit JSON lines."""
    torch.set_num_threads(THREADS)
    X, y = prob.data(n, prob.TRAIN_SEED)
    Xs, _ = prob.data(m, prob.TEST_SEED)
    if key in ("ours_fn_cg", "ours_w_cg"):
        Xs = Xs[:CG_VAR_POINTS]
    wfit, wpred = _runner(key, WARMUP_WIDTH)
    wpred(wfit(X[:WARMUP_N], y[:WARMUP_N]), Xs[:WARMUP_N])
    fit, predict = _runner(key, width)
    state, fit_s, base = measured_call(fit, X, y)
    emit(fit_s=round(fit_s, 3), fit_peak_extra_mib=peak_extra_mib(base))
    start = time.perf_counter()
    mean, var = predict(state, Xs)
    predict_s = time.perf_counter() - start
    torch.save({"mean": mean.detach().double(), "var": var.detach().double()}, workdir / f"{key}.pt")
    emit(predict_s=round(predict_s, 3), test_points=int(Xs.shape[0]),
         peak_extra_mib=peak_extra_mib(base), baseline_mib=round(base / 1024, 1))


# ===================================================================== parent side
def laplace_available() -> str | None:
    """Return None when laplace-torch imports here, else why not."""
    try:
        import laplace  # noqa: F401
    except Exception as exc:  # any import failure means the peer cannot run here
        return f"laplace-torch not importable ({type(exc).__name__}); run `make bench-peers`"
    return None


def run(mode: str, workdir: Path, only: set[str] | None = None, log=print) -> dict:
    """Return {"settings", "rows"}: one measured (or skipped) row per method, errors vs the reference."""
    n, m, width = SIZES[mode]
    timeout_s, mem_limit = LIMITS[mode]
    P = prob.mlp_params(width)
    no_laplace = laplace_available()
    rows = []
    for method in METHODS:
        if only and method.key not in only and method.key != "reference":
            continue
        row = {"key": method.key, "family": method.family, "label": method.label, "dtype": method.dtype}
        est = estimate_bytes(method.key, n, m, P, width)
        row["estimate_gib"] = round(est / GIB, 2)
        if method.family == "laplace-torch" and no_laplace:
            row.update(status="skipped", reason=no_laplace)
        elif est > mem_limit:
            row.update(status="skipped", reason=f"does not fit (estimate {est / GIB:.1f} GiB > {mem_limit / GIB:.0f} GiB budget)")
        else:
            args = [str(Path(__file__).resolve()), "--child", method.key, "--n", str(n), "--m", str(m),
                    "--width", str(width), "--workdir", str(workdir)]
            row.update(run_limited(args, timeout_s, mem_limit))
            _describe_failure(row, timeout_s, mem_limit)
        log(f"peers {method.key}: {row['status']} ({row.get('wall_s', 0)} s)")
        rows.append(row)
    _add_errors(rows, workdir)
    return {"settings": {"n": n, "m": m, "width": width, "params": P, "prior_var": prob.PRIOR_VAR,
                         "noise": prob.NOISE, "laplace_batch": LAPLACE_BATCH, "cg_tol": CG_TOL,
                         "cg_var_points": CG_VAR_POINTS, "timeout_s": timeout_s,
                         "mem_limit_gib": mem_limit / GIB, "variance": "noise-free function-space variance"},
            "rows": rows}


def _describe_failure(row: dict, timeout_s: float, mem_limit: int) -> None:
    status = row["status"]
    if status == "timeout":
        row["reason"] = f"did not finish in {timeout_s:.0f} s"
    elif status in ("killed", "oom"):
        row["reason"] = f"ran out of the {mem_limit / GIB:.0f} GiB memory limit after {row['wall_s']:.0f} s"
    elif status == "error":
        tail = row.get("stderr_tail", "").strip().splitlines()
        row["reason"] = "error: " + (tail[-1] if tail else "no message")[:160]


def _add_errors(rows: list[dict], workdir: Path) -> None:
    ref_path = workdir / "reference.pt"
    if not ref_path.exists():
        return
    ref = torch.load(ref_path)
    for row in rows:
        path = workdir / f"{row['key']}.pt"
        if row.get("status") != "ok" or not path.exists():
            continue
        out = torch.load(path)
        k = out["var"].numel()
        row["var_error"] = prob.relative_errors(out["var"], ref["var"][:k])
        row["var_negative"] = int((out["var"] <= 0).sum())
        if row["family"] != "laplace-torch":  # laplace-torch's GLM mean is f(x; θ*), not the GP mean
            row["mean_max_abs_error"] = float((out["mean"] - ref["mean"][:k]).abs().max())


def main(argv: list[str] | None = None) -> None:
    """Child entry point: measure one method (the parent is bench/run.py)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", required=True, choices=[m.key for m in METHODS])
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--m", type=int, required=True)
    ap.add_argument("--width", type=int, default=prob.DEFAULT_WIDTH)
    ap.add_argument("--workdir", type=Path, required=True)
    args = ap.parse_args(argv)
    run_child(args.child, args.n, args.m, args.width, args.workdir)


if __name__ == "__main__":
    main()
