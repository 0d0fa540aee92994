"""`ntk-studio-cli export`: adapt (GP or classifier), then write a verified ONNX / torch.export file."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..output import write_json
from ..progress import progress_bar
from ..run_options import add_data_arguments, add_method_arguments, load_inputs, run_settings
from ..run_report import print_header

DTYPES = ("float64", "float32")


def add_parser(sub) -> None:
    """Register the export subcommand."""
    p = sub.add_parser("export", help="adapt, then export mean and variance as a verified ONNX file")
    src = add_data_arguments(p)
    src.add_argument("--standardize-x", action="store_true",
                     help="standardize inputs with the adaptation split's statistics (applied inside the file)")
    add_method_arguments(p, "method")
    out = p.add_argument_group("output")
    out.add_argument("--onnx", type=Path, help="write the ONNX file here")
    out.add_argument("--native", type=Path, help="write a torch.export program (.pt2) here")
    out.add_argument("--dtype", choices=DTYPES, default="float64",
                     help="precision of the exported graph (default float64; float32 halves the size)")
    out.add_argument("--json", type=Path, help="write the export report (sizes, verification errors) here")
    p.set_defaults(run=run, space=None, solver=None)


def run(args: argparse.Namespace) -> int:
    """Fit on the adaptation split, export, verify on the held-out split; return the exit code."""
    import torch

    from ntk_studio.core.data import Standardizer
    from ntk_studio.core.errors import DataLoadError
    from ntk_studio.core.export import export_predictor
    from ntk_studio.core.pipeline import check_exportable, drain, fit_linearized_iter, plan_run, split, unlabelled_inputs

    if args.onnx is None and args.native is None:
        raise DataLoadError("Nothing to write: give --onnx FILE and/or --native FILE.")
    model, data, info, defaults, stats = load_inputs(args)
    check_exportable(model)  # before any fitting: a model that cannot be exported fails in a second
    settings = run_settings(args, defaults)
    train, test = split(data.dataset, settings)
    # An example's data are stored standardized; users feed raw units, and the file standardizes them.
    X_check = stats.inverse_x(test.X) if stats is not None else test.X
    unlabelled = unlabelled_inputs(test)  # rows without targets: the GP's covariance is scaled for them
    if stats is None and args.standardize_x:
        stats = Standardizer.fit(train).inputs_only()
        train = stats.transform(train)
        unlabelled = unlabelled_inputs(stats.transform(test))
    if not args.quiet:
        print_header(data, plan_run(model, data, settings), len(train), len(test))
    with progress_bar(not args.quiet) as on_event:
        predictor = drain(fit_linearized_iter(model, data.task, train, settings, unlabelled=unlabelled), on_event)
    if not args.quiet:
        print_hyper_of(predictor, data.task, settings)
    if not args.quiet:
        print(f"exporting and checking against {len(test)} held-out rows at batch sizes 1, 7, 1000 …")
    report = export_predictor(
        predictor, X_check, args.onnx, args.native, standardizer=stats,
        feature_names=data.dataset.feature_names, class_names=data.dataset.class_names,
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


def print_hyper_of(predictor, task: str, settings) -> None:
    """Print the fitted (or given) hyperparameters of the exported predictor."""
    how = "fitted" if settings.fit_hyper else "as given"
    noise = "" if task == "classification" else f", σ² = {predictor.noise:.4g}"
    print(f"hyperparameters {how}: s² = {predictor.prior_var:.4g}{noise}")
