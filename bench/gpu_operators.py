"""GPU check, part 2a: operator costs in forward passes on the device (float64 and float32).

The same models and inputs as bench/operators.py part 1 (MLP 8-128-128-1 at batch 512, the small CNN
at batch 256), plus a large batch on GPUs (a batch of 512 is launch-bound there). Each operation is
timed with the device synchronized, in interleaved rounds (_measure.interleaved_medians), and reported
as a ratio to one forward pass of the same batch.
"""

from __future__ import annotations

import torch

import gpu_common as common
import operators as ops_bench
from _measure import interleaved_medians
from ntk_studio.core import LinearizedModel

DTYPES = (torch.float64, torch.float32)
# (model, batch) per mode; on CUDA the large batches are added.
BATCHES = {"tiny": {"mlp": (8,), "cnn": (2,)}, "quick": {"mlp": (64,), "cnn": (16,)},
           "full": {"mlp": (ops_bench.OPERATOR_BATCH["mlp"],), "cnn": (ops_bench.OPERATOR_BATCH["cnn"],)}}
CUDA_EXTRA = {"mlp": 16384, "cnn": 2048}
ROUNDS = {"tiny": 1, "quick": 2, "full": 5}
OPS = ("kernel_1col", f"kernel_{ops_bench.MANY_COLUMNS}col_per_col", "jvp", "vjp", "ggn_matvec", "ntk_diag")


def operator_row(name: str, batch: int, dtype: torch.dtype, device: torch.device, rounds: int) -> dict:
    """Return per-call medians of the operators and their ratios to one forward pass."""
    lm = LinearizedModel(ops_bench.MODELS[name](), dtype=dtype, device=device)
    X = lm.prepare(ops_bench.model_inputs(name, batch))
    n, K, P = X.shape[0], lm.forward(X).shape[1], lm.num_params
    g = torch.Generator().manual_seed(ops_bench.DATA_SEED)
    many = ops_bench.MANY_COLUMNS
    V1 = torch.randn(n * K, 1, generator=g, dtype=dtype).to(device)
    Vc = torch.randn(n * K, many, generator=g, dtype=dtype).to(device)
    v = torch.randn(P, generator=g, dtype=dtype).to(device)
    u = torch.randn(n, K, generator=g, dtype=dtype).to(device)

    def synced(fn):
        return lambda: (fn(), common.sync(device))

    calls = {
        "forward": lambda: lm.forward(X),
        "kernel_1col": lambda: lm.kernel_matmul(X, X, V1),
        f"kernel_{many}col": lambda: lm.kernel_matmul(X, X, Vc),
        "jvp": lambda: lm.jvp(X, v),
        "vjp": lambda: lm.vjp(X, u),
        "ggn_matvec": lambda: lm.ggn_matvec(X, v),
        "ntk_diag": lambda: lm.ntk_diag(X),
    }
    timings = interleaved_medians({k: synced(f) for k, f in calls.items()}, rounds)
    sec = {k: t["median_s"] for k, t in timings.items()}
    sec[f"kernel_{many}col_per_col"] = sec[f"kernel_{many}col"] / many
    fwd = sec["forward"]
    return {"model": name, "dtype": common.dtype_name(dtype), "n": n, "outputs": K, "params": P,
            "seconds": {k: round(s, 7) for k, s in sec.items()},
            "forwards": {k: round(s / fwd, 2) for k, s in sec.items() if k != "forward"}}


def run(device: torch.device, mode: str, deadline: common.Deadline | None = None, log=print) -> dict:
    """Return {"rows": [...], "skipped": [...]} for every (model, batch, dtype) the deadline allows."""
    rows, skipped = [], []
    for name in ("mlp", "cnn"):
        batches = list(BATCHES[mode][name]) + ([CUDA_EXTRA[name]] if device.type == "cuda" else [])
        for batch in batches:
            for dtype in DTYPES:
                if deadline is not None and deadline.left() <= 0:
                    skipped.append({"model": name, "n": batch, "dtype": common.dtype_name(dtype),
                                    "reason": "step time budget spent"})
                    continue
                try:
                    rows.append(operator_row(name, batch, dtype, device, ROUNDS[mode]))
                except Exception as exc:  # noqa: BLE001 — recorded, the check goes on
                    if not common.is_oom(exc):
                        raise
                    skipped.append({"model": name, "n": batch, "dtype": common.dtype_name(dtype),
                                    "reason": "out of memory: " + common.describe_exc(exc)})
                common.release(device)
                log(f"operators {name} n={batch} {dtype}: done")
    return {"rows": rows, "skipped": skipped}


def table(result: dict) -> str:
    """Return the Markdown table: forward time and each operator in forward passes."""
    head = ["model", "dtype", "n", "P", "forward", "kernel col (1)", f"kernel col ({ops_bench.MANY_COLUMNS}, per col)",
            "jvp", "vjp", "ggn_matvec", "ntk_diag"]
    rows = []
    for r in result["rows"]:
        f = r["forwards"]
        rows.append([r["model"], r["dtype"], r["n"], f"{r['params']:,}", common.fmt_s(r["seconds"]["forward"]),
                     *(f"{f[k]:.1f}×" for k in OPS)])
    for s in result.get("skipped", []):
        rows.append([s["model"], s["dtype"], s["n"], "–", s["reason"], *("–" for _ in OPS)])
    return common.md_table(head, rows)
