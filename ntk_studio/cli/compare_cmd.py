"""`ntk-studio-cli compare`: the GP and fine-tuning of the same parameters on the same split."""

from __future__ import annotations

import argparse
from pathlib import Path

from .adapt import add_data_arguments, load_inputs, split_rows
from .output import write_json


def add_parser(sub) -> None:
    """Register the compare subcommand."""
    p = sub.add_parser("compare", help="compare the linearized GP with fine-tuning on the same split")
    add_data_arguments(p)
    p.add_argument("--n-adapt", type=int, help="labelled rows to adapt on (default: 70%% of the rows)")
    p.add_argument("--per-class", type=int, help="classification: labelled rows per class to adapt on")
    p.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    p.add_argument("--params", default="all", help="parameters linearized and fine-tuned")
    p.add_argument("--prior-var", type=float, default=1.0, help="prior variance s² (default 1)")
    p.add_argument("--noise", type=float, default=0.1, help="noise variance σ² (default 0.1)")
    p.add_argument("--no-fit-hyper", action="store_true", help="keep s² and σ² as given")
    p.add_argument("--epochs", type=int, default=300, help="fine-tuning epochs (default 300)")
    p.add_argument("--lr", type=float, default=1e-3, help="fine-tuning learning rate (default 1e-3)")
    p.add_argument("--batch-size", type=int, default=32, help="fine-tuning batch size (default 32)")
    p.add_argument("--ensemble", type=int, default=0, help="also fine-tune an ensemble of this many copies")
    p.add_argument("--json", type=Path, help="write the comparison records to this JSON file")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the comparison and print the table; return the exit code."""
    from ntk_studio.core.compare import CompareSettings, compare
    from ntk_studio.core.comparison import format_table
    from ntk_studio.core.finetune import FineTuneSettings

    model, dataset, info = load_inputs(args)
    train, test = split_rows(dataset, args)
    settings = CompareSettings(
        params=args.params, prior_var=args.prior_var, noise=args.noise, fit_hyper=not args.no_fit_hyper,
        finetune=FineTuneSettings(lr=args.lr, epochs=args.epochs, batch_size=args.batch_size, patience=None, seed=args.seed),
        ensemble_members=args.ensemble,
    )
    records = compare(model, train, test, settings)
    print(f"{len(train)} labelled rows, {len(test)} test rows")
    print(format_table(records))
    if args.json:
        write_json(args.json, {"inputs": info, "n_train": len(train), "n_test": len(test),
                               "records": [r.to_dict() for r in records]})
        print(f"records written to {args.json}")
    return 0
