"""`ntk-studio-cli compare`: the linearized GP (or classifier) and fine-tuning of the same parameters on
the same split, through core.pipeline, scored with the one rule."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..arg_types import nonnegative_int, positive_float, positive_int
from ..output import write_json
from ..progress import progress_bar
from ..run_options import (
    add_data_arguments, add_device_argument, add_method_arguments, device_of, load_inputs, run_settings,
)
from ..run_report import print_header, print_hyper


def add_parser(sub) -> None:
    """Register the compare subcommand."""
    p = sub.add_parser("compare", help="compare the linearized GP/classifier with fine-tuning on the same split")
    add_data_arguments(p)
    add_device_argument(add_method_arguments(p, "linearized model"))
    ft = p.add_argument_group("fine-tuning (the same parameters; defaults: the example's, else 300 / 1e-3 / 32)")
    ft.add_argument("--epochs", type=positive_int, help="fine-tuning epochs")
    ft.add_argument("--lr", type=positive_float, help="fine-tuning learning rate (Adam)")
    ft.add_argument("--batch-size", type=positive_int, help="fine-tuning batch size")
    ft.add_argument("--ensemble", type=nonnegative_int, help="also fine-tune an ensemble of this many copies")
    p.add_argument("--json", type=Path, help="write the comparison records to this JSON file")
    p.set_defaults(run=run, space=None, solver=None)


def run(args: argparse.Namespace) -> int:
    """Run the comparison and print the table; return the exit code."""
    from ntk_studio.core.records import format_table
    from ntk_studio.core.pipeline import SCORING_RULE, plan_run, run, split

    device = device_of(args)  # a bad --device fails before any loading
    model, data, info, defaults, _ = load_inputs(args)
    settings = run_settings(args, defaults)
    plan = plan_run(model, data, settings)
    train, test = split(data.dataset, settings)
    print_header(data, plan, len(train), len(test))
    with progress_bar(not args.quiet) as on_event:
        result = run(model, data, settings, ("linearized", "fine-tuned", "ensemble"), on_event=on_event,
                     device=device)
    print(format_table(result.records))
    print_hyper(result)
    print(f"scoring: {SCORING_RULE}")
    if args.json:
        write_json(args.json, {**result.to_json(), "inputs": info, "n_train": len(train)})
        print(f"records written to {args.json}")
    return 0
