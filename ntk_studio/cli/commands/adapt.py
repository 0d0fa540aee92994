"""`ntk-studio-cli adapt`: load a model and data (or a built-in example), adapt with the linearized
GP or classifier through core.pipeline, score it with the one rule; also the argument helpers
`compare` and `export` share."""

from __future__ import annotations

import argparse
from pathlib import Path

from ntk_studio.pipeline_defaults import TASK_CHOICES

from ..arg_types import bounded_int, nonnegative_int, positive_float, positive_int
from ..output import write_csv, write_json
from ..progress import progress_bar

# The defaults of core.distributed and core.checkpoint, repeated so that building the parser (and
# --help) does not import torch; tests/test_distributed_cli.py checks that they agree.
DIST_BACKENDS = ("auto", "gloo", "nccl")
DEFAULT_DIST_TIMEOUT_S = 300.0
DEFAULT_CHECKPOINT_INTERVAL_S = 60.0
MAX_CHANNELS = 4
MAX_IMAGE_SIDE = 8192


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """Add --model/--arch/--trust-pickle (shared with inspect)."""
    p.add_argument("--model", type=Path, help="TorchScript, torch.export (.pt2), state dict (.pt/.safetensors)")
    p.add_argument("--arch", help="architecture for state dicts: path/to/file.py:factory")
    p.add_argument(
        "--trust-pickle", action="store_true",
        help="load a pickled whole nn.Module (runs code from the file: only for files you trust)",
    )


def add_data_arguments(p: argparse.ArgumentParser):
    """Add the model/data/example and input-shaping arguments shared by adapt, compare and export."""
    src = p.add_argument_group("model and data")
    src.add_argument("--example", help="a built-in example instead of --model/--data (see `examples`)")
    add_model_arguments(src)
    src.add_argument("--data", type=Path, help="CSV/TSV, NPZ/NPY, or an image folder")
    src.add_argument("--target", help="target column of a table")
    src.add_argument("--features", nargs="+", help="feature columns (default: all but target/group)")
    src.add_argument("--one-hot", action="store_true", help="one-hot encode categorical feature columns")
    src.add_argument("--group-column", help="column whose value selects the target rows (e.g. year)")
    src.add_argument("--target-value", help="adapt to the rows whose group column has this value")
    src.add_argument("--task", choices=TASK_CHOICES, default="auto",
                     help="auto: class labels, or integer labels 0…K−1 with a K-output model, are classification "
                          "(the output says what it decided)")
    src.add_argument("--channels", type=bounded_int(1, MAX_CHANNELS),
                     help="image channels to read (default: the model's first convolution; 1 grayscale, 3 RGB)")
    src.add_argument("--image-size", type=bounded_int(1, MAX_IMAGE_SIDE), nargs=2, metavar=("H", "W"),
                     help="resize images to this (height, width) (default: their own size)")
    split = p.add_argument_group("split (one rule everywhere: the first n-adapt rows of a seeded permutation)")
    split.add_argument("--n-adapt", type=positive_int,
                       help="labelled rows to adapt on (default: the example's setting, else 70%% of the rows)")
    split.add_argument("--seed", type=nonnegative_int, help="split seed (default 0)")
    return src


def add_method_arguments(p: argparse.ArgumentParser, title: str):
    """Add --params, --prior-var, --noise and --fit-hyper/--no-fit-hyper (shared); return the group."""
    g = p.add_argument_group(title)
    g.add_argument("--params", help="linearized (and fine-tuned) parameters: all, last:K, head, or module names "
                                    "(default: the example's subset, else all)")
    g.add_argument("--prior-var", type=positive_float, help="prior variance s² of θ − θ* (start value; default 1)")
    g.add_argument("--noise", type=positive_float,
                   help="noise variance σ² (start value; default 0.1 × variance of the adaptation targets)")
    g.add_argument("--fit-hyper", action=argparse.BooleanOptionalAction, default=None,
                   help="fit the hyperparameters (regression: s², σ² by marginal likelihood; classification: "
                        "the engine's selection of s²) (default: on)")
    return g


def add_device_argument(g) -> None:
    """Add --device (adapt and compare; export fits on the CPU so the file does not depend on a GPU)."""
    g.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the CPU; a distributed run uses its rank's)")


def device_of(args: argparse.Namespace, shard=None):
    """Return the torch device from --device (or the distributed rank's device, else None: the CPU)."""
    if getattr(args, "device", None):
        from ntk_studio.core.device import resolve_device

        return resolve_device(args.device)
    return getattr(shard, "device", None) if shard is not None and shard.world_size > 1 else None


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


def load_inputs(args: argparse.Namespace):
    """Return (model, PreparedData, provenance dict, default RunSettings, the example's Standardizer or None)."""
    import dataclasses

    from ntk_studio.core.errors import DataLoadError
    from ntk_studio.core.pipeline import load_data_for, prepare, settings_for

    size = tuple(args.image_size) if args.image_size else None
    if args.example:
        if args.model or args.data:
            raise DataLoadError("Use either --example or --model/--data, not both.")
        from ntk_studio.core.examples.registry import load_example

        ex = load_example(args.example)
        data = prepare(ex.model, ex.target, ex.task if args.task == "auto" else args.task, args.channels, size)
        if args.task == "auto":
            data = dataclasses.replace(data, task_reason=f"auto: the {ex.name} example's task")
        return ex.model, data, {"example": ex.name, "notes": list(ex.notes)}, settings_for(ex.name), ex.standardizer
    if not args.model or not args.data:
        raise DataLoadError("Give --model and --data (or --example NAME). See `ntk-studio-cli adapt --help`.")
    from ntk_studio.core.models import load_model

    loaded = load_model(args.model, arch=args.arch, trust_pickle=args.trust_pickle)
    options = {}
    is_table = not args.data.is_dir() and args.data.suffix.lower() not in (".npz", ".npy")
    if is_table:
        if args.target is None:
            raise DataLoadError("Tables need --target COLUMN (the column to predict).")
        options = {"target": args.target, "features": args.features, "one_hot": args.one_hot,
                   "group_column": args.group_column}
    data = load_data_for(loaded.module, args.data, args.task, args.channels, size, **options)
    if args.target_value is not None:
        data = _select_group(loaded.module, data, args)
    info = {"model": str(args.model), "model_sha256": loaded.sha256, "model_format": loaded.format,
            "data": str(args.data), "data_sha256": data.dataset.sha256,
            "notes": list(loaded.notes) + list(data.notes)}
    return loaded.module, data, info, settings_for(None), None


def _select_group(model, data, args):
    """Return the data restricted to the rows whose group column equals --target-value."""
    import dataclasses

    import numpy as np

    from ntk_studio.core.errors import DataLoadError

    ds = data.dataset
    if ds.groups is None:
        raise DataLoadError("--target-value needs --group-column (the column holding the values).")
    rows = np.flatnonzero(np.array([str(g) for g in ds.groups]) == str(args.target_value))
    if rows.size < 2:
        values = sorted({str(g) for g in ds.groups})[:10]
        raise DataLoadError(f"{rows.size} rows have {args.group_column} = {args.target_value!r}; values: {', '.join(values)}.")
    return dataclasses.replace(data, dataset=ds.subset(rows))


def run_settings(args: argparse.Namespace, defaults):
    """Return the RunSettings: the example's (or the user default) with the options given on the command line."""
    return defaults.replace(
        task=args.task, params=getattr(args, "params", None), n_adapt=args.n_adapt, seed=args.seed,
        prior_var=getattr(args, "prior_var", None), noise=getattr(args, "noise", None),
        fit_hyper=getattr(args, "fit_hyper", None), space=getattr(args, "space", None),
        solver=getattr(args, "solver", None), epochs=getattr(args, "epochs", None), lr=getattr(args, "lr", None),
        batch_size=getattr(args, "batch_size", None), ensemble=getattr(args, "ensemble", None),
    )


def print_header(data, plan, n_adapt: int, n_test: int) -> None:
    """Print what was decided before any fitting: the task (and why), the split and the route."""
    print(f"task: {data.task} ({data.task_reason})")
    print(f"adapting on {n_adapt} rows, scoring on {n_test} held-out rows")
    print(f"plan: {plan.describe()}", flush=True)


def print_hyper(result) -> None:
    """Print the hyperparameters used and whether they were fitted."""
    h = result.hyper
    if not h:
        return
    how = f"fitted ({h['method']})" if h["fitted"] else "as given"
    noise = "" if h["noise"] is None else f", σ² = {h['noise']:.4g} (started at {h['initial_noise']:.4g})"
    if h.get("cov_scale") not in (None, 1.0):
        noise += f", logit-covariance scale τ = {h['cov_scale']:.4g}"
    lml = "" if h["log_evidence"] is None else f"; log evidence {h['log_evidence']:.4g}"
    print(f"hyperparameters {how}: s² = {h['prior_var']:.4g} (started at {h['initial_prior_var']:.4g}){noise}{lml}")


def print_per_class(result, class_names) -> None:
    """Print each class's rows and accuracy for every method that has class probabilities."""
    y = result.y_test
    methods = [(k, v["probs"].argmax(1)) for k, v in result.predictions.items() if "probs" in v]
    lines = [["class", "n", *(f"acc {k}" for k, _ in methods)]]
    for c, name in enumerate(class_names or ()):
        rows = y == c
        n = int(rows.sum())
        lines.append([str(name), str(n), *(f"{float((pred[rows] == c).double().mean()):.3f}" if n else "–"
                                           for _, pred in methods)])
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    print("per class:")
    for line in lines:
        print("  " + "  ".join([line[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(line[1:], widths[1:]))]))


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
