"""Options and inputs shared by `adapt`, `compare`, `export` and `inspect`: the model, data, method and
device argument groups, loading the model and data they name, and the run settings they give."""

from __future__ import annotations

import argparse
from pathlib import Path

from ntk_studio.pipeline_defaults import TASK_CHOICES

from .arg_types import bounded_int, nonnegative_int, positive_float, positive_int

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
