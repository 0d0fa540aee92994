"""`ntk-studio-cli inspect`: print a model's layers, parameter counts and output size."""

from __future__ import annotations

import argparse

from ..arg_types import input_shape
from ..run_options import add_model_arguments


def add_parser(sub) -> None:
    """Register the inspect subcommand."""
    p = sub.add_parser("inspect", help="print a model summary (layers, parameters, output size)")
    add_model_arguments(p)
    p.add_argument("--example", help="inspect a built-in example's model instead")
    p.add_argument("--input-shape", type=input_shape,
                   help="one sample's input shape, e.g. 8 or 3,32,32, to report the output size")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print the summary; return the exit code."""
    import torch

    from ntk_studio.core.errors import DataLoadError
    from ntk_studio.core.models import load_model, summarize

    notes: list[str] = []
    example_input = None
    if args.example:
        from ntk_studio.core.examples.registry import load_example

        ex = load_example(args.example)
        module, example_input = ex.model, ex.target.X[:2]
    elif args.model:
        loaded = load_model(args.model, arch=args.arch, trust_pickle=args.trust_pickle)
        module, notes = loaded.module, list(loaded.notes)
        print(f"{args.model}  [{loaded.format}]  sha256 {loaded.sha256[:16]}…")
    else:
        raise DataLoadError("Give --model PATH (or --example NAME).")
    if args.input_shape:  # checked by arg_types.input_shape: positive sizes, bounded element count
        example_input = torch.zeros(2, *args.input_shape)
    summary = summarize(module, example_input)
    print(summary.format_table())
    for note in notes + list(summary.notes):
        print(f"note: {note}")
    return 0
