"""`ntk-studio-cli export`: adapt (GP or classifier), then write a verified ONNX / torch.export file."""

from __future__ import annotations

import argparse
from pathlib import Path

from .adapt import add_data_arguments, add_method_arguments, load_inputs, split_rows
from .output import write_json

DTYPES = ("float64", "float32")


def add_parser(sub) -> None:
    """Register the export subcommand."""
    p = sub.add_parser("export", help="adapt, then export mean and variance as a verified ONNX file")
    src = add_data_arguments(p)
    src.add_argument("--standardize-x", action="store_true",
                     help="standardize inputs with the adaptation split's statistics (applied inside the file)")
    split = p.add_argument_group("split")
    split.add_argument("--n-adapt", type=int, help="labelled rows to adapt on (default: 70%% of the rows)")
    split.add_argument("--per-class", type=int, help="classification: labelled rows per class")
    split.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    add_method_arguments(p, "method")
    out = p.add_argument_group("output")
    out.add_argument("--onnx", type=Path, help="write the ONNX file here")
    out.add_argument("--native", type=Path, help="write a torch.export program (.pt2) here")
    out.add_argument("--dtype", choices=DTYPES, default="float64",
                     help="precision of the exported graph (default float64; float32 halves the size)")
    out.add_argument("--json", type=Path, help="write the export report (sizes, verification errors) here")
    p.set_defaults(run=run)


def _inputs(args):
    """Return (model, dataset, standardizer or None, datasets-are-standardized, provenance)."""
    if args.example:
        from ntk_studio.core.errors import DataLoadError
        from ntk_studio.core.examples.registry import load_example

        if args.model or args.data:
            raise DataLoadError("Use either --example or --model/--data, not both.")
        ex = load_example(args.example)
        return ex.model, ex.target, ex.standardizer, ex.standardizer is not None, {"example": ex.name}
    model, dataset, info = load_inputs(args)
    return model, dataset, None, False, info


def run(args: argparse.Namespace) -> int:
    """Fit on the adaptation split, export, verify on the held-out split; return the exit code."""
    import torch

    from ntk_studio.core.classify import LinearizedClassifier
    from ntk_studio.core.data import Standardizer
    from ntk_studio.core.errors import DataLoadError
    from ntk_studio.core.export import export_predictor
    from ntk_studio.core.gp import LinearizedGP

    if args.onnx is None and args.native is None:
        raise DataLoadError("Nothing to write: give --onnx FILE and/or --native FILE.")
    model, dataset, stats, stored_standardized, info = _inputs(args)
    train, test = split_rows(dataset, args)
    if stored_standardized:
        X_check = stats.inverse_x(test.X)  # users feed raw units; the file standardizes them
    else:
        X_check = test.X
        if args.standardize_x:
            stats = Standardizer.fit(train).inputs_only()
            train = stats.transform(train)
    if dataset.is_classification:
        predictor = LinearizedClassifier(model, params=args.params, prior_var=args.prior_var)
        what = f"Laplace classifier ({len(dataset.class_names or ())} classes)"
    else:
        predictor = LinearizedGP(model, params=args.params, prior_var=args.prior_var, noise=args.noise)
        what = "GP regression"
    if not args.quiet:
        print(f"adapting ({what}) on {len(train)} rows, {predictor.lm.num_params:,} linearized parameters")
    predictor.fit(train.X, train.y)
    if args.fit_hyper and not dataset.is_classification:
        predictor.fit_hyperparameters()
    if not args.quiet:
        print(f"exporting and checking against {len(test)} held-out rows at batch sizes 1, 7, 1000 …")
    report = export_predictor(
        predictor, X_check, args.onnx, args.native, standardizer=stats,
        feature_names=dataset.feature_names, class_names=dataset.class_names,
        source_sha256=info.get("model_sha256"), dtype=getattr(torch, args.dtype),
    )
    for fmt, path, size in (("ONNX", report.onnx_path, report.onnx_bytes),
                            ("torch.export", report.native_path, report.native_bytes)):
        if path is not None:
            worst = max(e for b in report.errors["onnx" if fmt == "ONNX" else "native"].values() for e in b.values())
            print(f"{fmt}: {path} ({size / 1024**2:.2f} MiB), verified: max relative error {worst:.1e}")
    print(f"outputs: {', '.join(report.outputs)}; precision {report.dtype}; posterior rank {report.posterior_rank} "
          f"of {report.num_params:,} parameters; {report.seconds:.1f} s")
    if args.json:
        write_json(args.json, {**report.to_json(), "inputs": info})
    return 0
