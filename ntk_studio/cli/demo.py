"""`ntk-studio-cli demo`: the built-in sine-transfer example, headless."""

from __future__ import annotations

import argparse
from pathlib import Path

from .output import write_json
from .progress import progress_bar


def add_parser(sub) -> None:
    """Register the demo subcommand."""
    demo = sub.add_parser("demo", help="adapt the built-in sine MLP to a new sine task, headless")
    demo.add_argument("--json", type=Path, help="write the metrics to this JSON file")
    demo.add_argument("--n-train", type=int, default=10, help="labelled points of the new task (default 10)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the target-task sample (default 0)")
    demo.add_argument("--params", default="all", help="linearized parameters: all, last:K, or module names")
    demo.add_argument("--no-fit-hyper", action="store_true",
                      help="keep s² = 1 and σ² = 0.1 × variance of the labelled targets (no evidence fit)")
    demo.set_defaults(run=run)


def _print_table(result: dict) -> None:
    rows = [("unadapted network", result["unadapted"]), ("linearized GP", result["gp"])]
    print(f"sine transfer: {result['n_train']} labelled points, {result['n_test']} test points")
    print(f"{'method':<20}{'RMSE':>9}{'NLL':>10}{'cover95':>9}{'time (s)':>10}")
    for name, m in rows:
        print(f"{name:<20}{m['rmse']:>9.3f}{m['nll']:>10.3f}{m['coverage95']:>9.2f}{m['wall_time_s']:>10.3f}")
    gp = result["gp"]
    print(
        f"GP: route {gp['route']} ({gp['kernel_path']} kernel), P = {gp['num_params']:,}, "
        f"s² = {gp['prior_var']:.3g}, σ² = {gp['noise']:.3g}, residual {gp['residual']:.1e}"
    )
    print(f"scoring: {result['scoring_rule']}")


def run(args: argparse.Namespace) -> int:
    """Run the demo; return the exit code."""
    from ntk_studio.core.examples.demo import run_sine_demo

    with progress_bar(not args.quiet) as on_event:
        result = run_sine_demo(
            n_train=args.n_train, seed=args.seed, params=args.params, fit_hyper=not args.no_fit_hyper, on_event=on_event
        )
    _print_table(result)
    if args.json:
        write_json(args.json, result)
        print(f"metrics written to {args.json}")
    return 0
