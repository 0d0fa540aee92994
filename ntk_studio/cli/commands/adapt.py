"""`ntk-studio-cli adapt`: load a model and data (or a built-in example), adapt with the linearized
GP or classifier through core.pipeline, score it with the one rule."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..output import write_csv, write_json
from ..progress import progress_bar
from ..run_options import (
    add_data_arguments, add_device_argument, add_method_arguments, device_of, load_inputs, run_settings,
)
from ..run_report import print_header, print_hyper, print_per_class

# The defaults of core.distributed and core.checkpoint, repeated so that building the parser (and
# --help) does not import torch; tests/test_distributed_cli.py checks that they agree.
DIST_BACKENDS = ("auto", "gloo", "nccl")
DEFAULT_DIST_TIMEOUT_S = 300.0
DEFAULT_CHECKPOINT_INTERVAL_S = 60.0


def add_parser(sub) -> None:
    """Register the adapt subcommand."""
    p = sub.add_parser("adapt", help="adapt a pretrained model to new data with the linearized GP or classifier")
    add_data_arguments(p)
    p.add_argument(
        "--standardize-x", action="store_true",
        help="standardize inputs with statistics of the adaptation split (only if the model expects that)",
    )
    gp = add_method_arguments(p, "linearized model")
    add_device_argument(gp)
    gp.add_argument("--space", default="auto", choices=["auto", "function", "weight"])
    gp.add_argument("--solver", default="auto", choices=["auto", "cholesky", "cg"])
    out = p.add_argument_group("output")
    out.add_argument("--json", type=Path, help="write metrics and records to this JSON file")
    out.add_argument("--predictions", type=Path,
                     help="write per-row predictions to this CSV (mean and std, or class probabilities)")
    add_distributed_arguments(p)
    p.set_defaults(run=run)


def add_distributed_arguments(p: argparse.ArgumentParser) -> None:
    """Add --distributed, its backend and timeout, and --checkpoint (resumable CG solves)."""
    d = p.add_argument_group("scale-out and long runs")
    d.add_argument(
        "--distributed", action="store_true",
        help="split the data loops across the ranks of a torchrun launch "
             "(torchrun --nproc-per-node N -m ntk_studio.cli adapt ... --distributed); rank 0 writes the outputs",
    )
    d.add_argument("--dist-backend", default="auto", choices=DIST_BACKENDS, help="auto: NCCL on GPUs, gloo on CPU")
    d.add_argument(
        "--dist-timeout", type=float, default=DEFAULT_DIST_TIMEOUT_S,
        help=f"seconds a rank waits for a silent peer before failing (default {DEFAULT_DIST_TIMEOUT_S:.0f})",
    )
    d.add_argument("--checkpoint", type=Path, help="save CG state and Δθ here; a rerun with the same file resumes")
    d.add_argument(
        "--checkpoint-interval", type=float, default=DEFAULT_CHECKPOINT_INTERVAL_S,
        help=f"seconds between checkpoint writes (default {DEFAULT_CHECKPOINT_INTERVAL_S:.0f})",
    )


def write_predictions(path: Path, result, class_names) -> None:
    """Write per-row predictions: mean/std (regression) or class probabilities (classification)."""
    y = result.y_test.tolist()
    p = result.predictions
    if result.task == "classification":
        probs = p["linearized"]["probs"]
        names = list(class_names or range(probs.shape[1]))
        header = ["row", "y", "predicted", *(f"p_{c}" for c in names), "unadapted_predicted"]
        base = p["unadapted"]["probs"].argmax(1).tolist()
        rows = [[i, y[i], int(probs[i].argmax()), *probs[i].tolist(), base[i]] for i in range(len(y))]
    else:
        mean, std = p["linearized"]["mean"], p["linearized"]["var"].clamp_min(0).sqrt()
        header = ["row", "y", "mean", "std", "unadapted"]
        rows = zip(range(len(y)), y, mean.tolist(), std.tolist(), p["unadapted"]["mean"].tolist())
    write_csv(path, header, rows)


def run(args: argparse.Namespace) -> int:
    """Run an adaptation; return the exit code."""
    from ntk_studio.core.distributed import SINGLE_PROCESS, init_distributed, shutdown_distributed

    shard = SINGLE_PROCESS
    if args.distributed:
        shard = init_distributed(args.dist_backend, timeout_s=args.dist_timeout)
    try:
        return _run(args, shard)
    finally:
        if args.distributed:
            shutdown_distributed()


def _run(args: argparse.Namespace, shard) -> int:
    import dataclasses

    from ntk_studio.core.checkpoint import Checkpoint
    from ntk_studio.core.records import format_table
    from ntk_studio.core.data import Standardizer
    from ntk_studio.core.pipeline import SCORING_RULE, plan_run, run, split

    # Every rank loads the same data and runs the same program; only rank 0 talks and writes.
    writer = shard.is_writer
    device = device_of(args, shard)  # a bad --device fails before any loading
    model, data, info, defaults, _ = load_inputs(args)
    settings = run_settings(args, defaults)
    if args.standardize_x:
        # Inputs only, with the adaptation rows' statistics: the model predicts y in its own units.
        train, _ = split(data.dataset, settings)
        stats = Standardizer.fit(train).inputs_only()
        data = dataclasses.replace(data, dataset=stats.transform(data.dataset))
        info["standardizer"] = stats.to_dict()
    plan = plan_run(model, data, settings)
    train, test = split(data.dataset, settings)
    if writer:
        print_header(data, plan, len(train), len(test))
    checkpoint = None
    if args.checkpoint:
        checkpoint = Checkpoint(args.checkpoint, interval_s=args.checkpoint_interval, writer=writer)
    with progress_bar(writer and not args.quiet) as on_event:
        result = run(model, data, settings, ("linearized",), on_event=on_event, device=device,
                     shard=shard, checkpoint=checkpoint)
    if not writer:
        return 0
    if shard.world_size > 1:
        print(f"distributed: {shard.world_size} ranks ({shard.backend})")
    if checkpoint is not None and checkpoint.resumed.get("cg"):
        print(f"resumed the solve from {args.checkpoint} at CG iteration {checkpoint.resumed['cg']}")
    print(format_table(result.records))
    print_hyper(result)
    if result.task == "classification":
        print_per_class(result, data.dataset.class_names)
    print(f"scoring: {SCORING_RULE}")
    for note in info.get("notes", []):
        print(f"note: {note}")
    if args.json:
        write_json(args.json, {**result.to_json(), "inputs": info})
        print(f"metrics written to {args.json}")
    if args.predictions:
        write_predictions(args.predictions, result, data.dataset.class_names)
        print(f"predictions written to {args.predictions}")
    return 0
