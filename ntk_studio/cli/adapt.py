"""`ntk-studio-cli adapt`: load a model and data (or a built-in example), adapt with the GP, score it."""

from __future__ import annotations

import argparse
from pathlib import Path

from .output import write_csv, write_json
from .progress import progress_bar

# The defaults of core.distributed and core.checkpoint, repeated so that building the parser (and
# --help) does not import torch; tests/test_distributed_cli.py checks that they agree.
DIST_BACKENDS = ("auto", "gloo", "nccl")
DEFAULT_DIST_TIMEOUT_S = 300.0
DEFAULT_CHECKPOINT_INTERVAL_S = 60.0


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """Add --model/--arch/--trust-pickle (shared with inspect)."""
    p.add_argument("--model", type=Path, help="TorchScript, torch.export (.pt2), state dict (.pt/.safetensors)")
    p.add_argument("--arch", help="architecture for state dicts: path/to/file.py:factory")
    p.add_argument(
        "--trust-pickle", action="store_true",
        help="load a pickled whole nn.Module (runs code from the file: only for files you trust)",
    )


def add_data_arguments(p: argparse.ArgumentParser):
    """Add the model/data/example arguments shared by adapt and compare; return the group."""
    src = p.add_argument_group("model and data")
    src.add_argument("--example", help="a built-in example instead of --model/--data (see `examples`)")
    add_model_arguments(src)
    src.add_argument("--data", type=Path, help="CSV/TSV, NPZ/NPY, or an image folder")
    src.add_argument("--target", help="target column of a table")
    src.add_argument("--features", nargs="+", help="feature columns (default: all but target/group)")
    src.add_argument("--one-hot", action="store_true", help="one-hot encode categorical feature columns")
    src.add_argument("--group-column", help="column whose value selects the target rows (e.g. year)")
    src.add_argument("--target-value", help="adapt to the rows whose group column has this value")
    return src


def add_method_arguments(p: argparse.ArgumentParser, title: str):
    """Add --params, --prior-var, --noise and --fit-hyper (shared with export); return the group."""
    g = p.add_argument_group(title)
    g.add_argument("--params", default="all", help="linearized parameters: all, last:K, or module names")
    g.add_argument("--prior-var", type=float, default=1.0, help="prior variance s² of θ − θ* (default 1)")
    g.add_argument("--noise", type=float, default=0.1, help="noise variance σ² (default 0.1; regression)")
    g.add_argument("--fit-hyper", action="store_true", help="fit s² and σ² by marginal likelihood (regression)")
    return g


def add_parser(sub) -> None:
    """Register the adapt subcommand."""
    p = sub.add_parser("adapt", help="adapt a pretrained model to new data with the linearized GP")
    src = add_data_arguments(p)
    src.add_argument(
        "--standardize-x", action="store_true",
        help="standardize inputs with statistics of the adaptation split (only if the model expects that)",
    )
    split = p.add_argument_group("split")
    split.add_argument("--n-adapt", type=int, help="labelled rows to adapt on (default: 70%% of the rows)")
    split.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    gp = add_method_arguments(p, "GP")
    gp.add_argument("--space", default="auto", choices=["auto", "function", "weight"])
    gp.add_argument("--solver", default="auto", choices=["auto", "cholesky", "cg"])
    out = p.add_argument_group("output")
    out.add_argument("--json", type=Path, help="write metrics to this JSON file")
    out.add_argument("--predictions", type=Path, help="write per-point mean and std to this CSV file")
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
    """Return (model, dataset, provenance dict) from --example or --model/--data."""
    from ntk_studio.core.errors import DataLoadError

    if args.example:
        if args.model or args.data:
            raise DataLoadError("Use either --example or --model/--data, not both.")
        from ntk_studio.core.examples.registry import load_example

        ex = load_example(args.example)
        return ex.model, ex.target, {"example": ex.name, "notes": list(ex.notes)}
    if not args.model or not args.data:
        raise DataLoadError("Give --model and --data (or --example NAME). See `ntk-studio-cli adapt --help`.")
    from ntk_studio.core.data import load_dataset
    from ntk_studio.core.models import load_model

    loaded = load_model(args.model, arch=args.arch, trust_pickle=args.trust_pickle)
    kwargs = {}
    is_table = not args.data.is_dir() and args.data.suffix.lower() not in (".npz", ".npy")
    if is_table:
        if args.target is None:
            raise DataLoadError("Tables need --target COLUMN (the column to predict).")
        kwargs = {"target": args.target, "features": args.features, "one_hot": args.one_hot,
                  "group_column": args.group_column}
    dataset = load_dataset(args.data, **kwargs)
    info = {"model": str(args.model), "model_sha256": loaded.sha256, "model_format": loaded.format,
            "data": str(args.data), "data_sha256": dataset.sha256, "notes": list(loaded.notes) + list(dataset.notes)}
    return loaded.module, dataset, info


def split_rows(dataset, args):
    """Return (adaptation rows, test rows) per --target-value, --per-class, --n-adapt and --seed."""
    import numpy as np

    from ntk_studio.core.data import adaptation_split
    from ntk_studio.core.errors import DataLoadError

    if args.target_value is not None:
        if dataset.groups is None:
            raise DataLoadError("--target-value needs --group-column (the column holding the values).")
        rows = np.flatnonzero(np.array([str(g) for g in dataset.groups]) == str(args.target_value))
        if rows.size < 2:
            values = sorted({str(g) for g in dataset.groups})[:10]
            raise DataLoadError(f"{rows.size} rows have {args.group_column} = {args.target_value!r}; values: {', '.join(values)}.")
        dataset = dataset.subset(rows)
    n = len(dataset)
    per_class = getattr(args, "per_class", None)
    if per_class is not None:
        if not dataset.is_classification:
            raise DataLoadError("--per-class applies to classification data (class labels).")
        rng = np.random.default_rng(args.seed)
        labels = dataset.y.numpy()
        picked = []
        for c in range(len(dataset.class_names)):
            rows_c = np.flatnonzero(labels == c)
            if rows_c.size <= per_class:
                raise DataLoadError(f"Class {dataset.class_names[c]!r} has {rows_c.size} rows; --per-class must be smaller.")
            picked.extend(rng.choice(rows_c, per_class, replace=False))
        chosen = np.zeros(n, dtype=bool)
        chosen[picked] = True
        return dataset.subset(np.flatnonzero(chosen)), dataset.subset(np.flatnonzero(~chosen))
    if args.n_adapt is not None and not 1 <= args.n_adapt < n:
        raise DataLoadError(f"--n-adapt must be between 1 and {n - 1} (the data has {n} rows).")
    train_rows, test_rows = adaptation_split(n, args.n_adapt, args.seed)
    return dataset.subset(train_rows), dataset.subset(test_rows)


def _print(result, info) -> None:
    m = result.metrics
    g = result.gp_info
    print(f"adaptation on {g['n_train']} rows, scored on {g['n_test']} held-out rows")
    print(f"{'method':<20}{'RMSE':>10}{'NLL':>10}{'cover95':>9}{'time (s)':>10}")
    for name, key in (("unadapted model", "unadapted"), ("linearized GP", "gp")):
        r = m[key]
        print(f"{name:<20}{r['rmse']:>10.4g}{r['nll']:>10.4g}{r['coverage95']:>9.2f}{r['wall_time_s']:>10.3f}")
    print(f"GP: {g['plan']}")
    print(f"    s² = {g['prior_var']:.3g}, σ² = {g['noise']:.3g}, residual {g['residual']:.1e}")
    for note in info.get("notes", []) + result.notes:
        print(f"note: {note}")


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
    from ntk_studio.core.adapt import AdaptSettings, adapt
    from ntk_studio.core.checkpoint import Checkpoint
    from ntk_studio.core.data import Standardizer
    from ntk_studio.core.models import check_model

    # Every rank loads the same data and runs the same program; only rank 0 talks and writes.
    writer = shard.is_writer
    model, dataset, info = load_inputs(args)
    train, test = split_rows(dataset, args)
    if args.standardize_x:
        # Inputs only: the pretrained model predicts y in its own units, so y is left alone.
        stats = Standardizer.fit(train).inputs_only()
        train, test = stats.transform(train), stats.transform(test)
        info["standardizer"] = stats.to_dict()
    check_model(model, train.X[:2])
    settings = AdaptSettings(
        params=args.params, prior_var=args.prior_var, noise=args.noise,
        space=args.space, solver=args.solver, fit_hyper=args.fit_hyper,
    )
    checkpoint = None
    if args.checkpoint:
        checkpoint = Checkpoint(args.checkpoint, interval_s=args.checkpoint_interval, writer=writer)
    with progress_bar(writer and not args.quiet) as on_event:
        result = adapt(model, train, test, settings, on_event=on_event, shard=shard, checkpoint=checkpoint)
    if not writer:
        return 0
    if shard.world_size > 1:
        print(f"distributed: {shard.world_size} ranks ({shard.backend})")
    if checkpoint is not None and checkpoint.resumed.get("cg"):
        print(f"resumed the solve from {args.checkpoint} at CG iteration {checkpoint.resumed['cg']}")
    _print(result, info)
    if args.json:
        write_json(args.json, {**result.to_json(), "inputs": info})
        print(f"metrics written to {args.json}")
    if args.predictions:
        std = result.var.clamp_min(0).sqrt()
        rows = zip(range(len(test)), result.y_test.tolist(), result.mean.tolist(), std.tolist(), result.base_mean.tolist())
        write_csv(args.predictions, ["row", "y", "mean", "std", "unadapted"], rows)
        print(f"predictions written to {args.predictions}")
    return 0
