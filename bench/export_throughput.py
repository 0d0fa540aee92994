"""Prediction throughput of exported files: onnxruntime vs torch eager (the in-app predict) vs torch.export.

For each model a predictor is fitted, exported (ONNX + .pt2, verified by `export_predictor`), and
mean + variance for 1,000 held-out points are timed in interleaved rounds (1 thread everywhere):

- ``torch eager``: the predictor's own ``predict`` / ``predict_logits`` (what the app shows),
- ``onnxruntime``: one ``session.run`` on the ONNX file (1 intra-op thread),
- ``torch.export``: the loaded .pt2 program.

Run ``.venv/bin/python bench/export_throughput.py [--quick]``; results go to
bench/results/export.json and a markdown table is printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import interleaved_medians, machine_info  # noqa: E402

from ntk_studio.core.classify import LinearizedClassifier  # noqa: E402
from ntk_studio.core.examples.registry import load_example  # noqa: E402
from ntk_studio.core.export import export_predictor, onnx_session  # noqa: E402
from ntk_studio.core.gp import LinearizedGP  # noqa: E402

POINTS = 1000
RESULTS = Path(__file__).resolve().parent / "results" / "export.json"


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3),
    ).eval()


def cases(quick: bool):
    """Yield (name, fitted predictor, held-out raw inputs, standardizer, P description)."""
    ex = load_example("sine")
    gp = LinearizedGP(ex.model, noise=0.01).fit(ex.target.X[:20], ex.target.y[:20])
    yield "sine MLP, GP, n = 20", gp, torch.linspace(-4, 4, POINTS, dtype=torch.float64).reshape(-1, 1), None
    ex = load_example("hprice3")
    gp = LinearizedGP(ex.model, noise=0.1).fit(ex.target.X[:10], ex.target.y[:10])
    yield "hprice3 MLP, GP, n = 10", gp, ex.standardizer.inverse_x(ex.target.X[10:]), ex.standardizer
    if quick:
        return
    g = torch.Generator().manual_seed(0)
    X = torch.randn(60, 3, 16, 16, generator=g)
    clf = LinearizedClassifier(small_cnn(), prior_var=1.0).fit(X, torch.randint(0, 3, (60,), generator=g))
    yield "CNN 16×16, classifier, n = 60", clf, torch.randn(200, 3, 16, 16, generator=g, dtype=torch.float64), None


def eager(predictor, X: torch.Tensor, stats):
    Xs = X if stats is None else stats.transform_x(X)
    if isinstance(predictor, LinearizedClassifier):
        return lambda: predictor.predict_logits(Xs)
    return lambda: predictor.predict(Xs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="MLPs only, fewer rounds")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = {"machine": machine_info(1), "points": POINTS, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        for name, predictor, X_check, stats in cases(args.quick):
            onnx_path, native_path = Path(tmp) / "m.onnx", Path(tmp) / "m.pt2"
            report = export_predictor(predictor, X_check, onnx_path, native_path, standardizer=stats)
            f32_path = Path(tmp) / "m32.onnx"
            report32 = export_predictor(predictor, X_check, f32_path, standardizer=stats, dtype=torch.float32)
            X = X_check[torch.arange(POINTS) % X_check.shape[0]]
            session, session32 = onnx_session(onnx_path), onnx_session(f32_path)
            program = torch.export.load(str(native_path)).module()
            x_np = X.numpy().astype(np.float64)
            x32 = x_np.astype(np.float32)

            def run_native(X=X, program=program):
                with torch.no_grad():
                    return program(X)

            times = interleaved_medians(
                {"eager": eager(predictor, X, stats), "onnxruntime": lambda s=session, x=x_np: s.run(None, {"x": x}),
                 "onnxruntime_f32": lambda s=session32, x=x32: s.run(None, {"x": x}), "torch.export": run_native},
                3 if args.quick else 7,
            )
            row = {"case": name, "num_params": report.num_params, "rank": report.posterior_rank,
                   "precision": report.dtype, "onnx_mib": report.onnx_bytes / 1024**2,
                   "export_s": report.seconds, "max_rel_error": report.max_error(),
                   "onnx_f32_mib": report32.onnx_bytes / 1024**2, "max_rel_error_f32": report32.max_error(),
                   **{f"{k}_ms": v["median_s"] * 1e3 for k, v in times.items()}}
            result["rows"].append(row)
            print(json.dumps(row), flush=True)
    result["machine"]["load_average_at_end"] = [round(x, 2) for x in __import__("os").getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print("\n| model | P | rank | ONNX size (f64 / f32) | precision | export + verify | torch eager | onnxruntime f64 "
          "| onnxruntime f32 | torch.export | eager / ORT f64 | eager / ORT f32 | max rel. error f64 / f32 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        print(f"| {r['case']} | {r['num_params']:,} | {r['rank']} | {r['onnx_mib']:.2f} / {r['onnx_f32_mib']:.2f} MiB | "
              f"{r['precision']} | {r['export_s']:.0f} s | {r['eager_ms']:.1f} ms | {r['onnxruntime_ms']:.1f} ms | "
              f"{r['onnxruntime_f32_ms']:.1f} ms | {r['torch.export_ms']:.1f} ms | {r['eager_ms'] / r['onnxruntime_ms']:.2f}× | "
              f"{r['eager_ms'] / r['onnxruntime_f32_ms']:.2f}× | {r['max_rel_error']:.0e} / {r['max_rel_error_f32']:.0e} |")


if __name__ == "__main__":
    main()
