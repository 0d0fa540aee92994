"""`ntk-studio-cli`: the console front end (imports core and jobs only)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_THREADS = 1  # two shared cores: more intra-op threads thrash on small problems


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ntk-studio-cli", description="NTK Studio command line.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")
    demo = sub.add_parser("demo", help="adapt the built-in sine MLP to a new sine task, headless")
    demo.add_argument("--json", type=Path, help="write the metrics to this JSON file")
    demo.add_argument("--n-train", type=int, default=10, help="labelled points of the new task (default 10)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the target-task sample (default 0)")
    demo.add_argument("--params", default="all", help="linearized parameters: all, last:K, or module names")
    demo.add_argument("--no-fit-hyper", action="store_true", help="keep s² = 1 and σ² = true noise")
    demo.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="torch intra-op threads")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _progress_bar(quiet: bool):
    if quiet or not sys.stderr.isatty():
        return None, lambda event: None
    from tqdm import tqdm

    bar = tqdm(total=100, file=sys.stderr, leave=False, bar_format="{desc:<12} {bar} {percentage:3.0f}%")

    def on_event(event) -> None:
        bar.set_description_str(event.stage)
        bar.n = int(100 * event.progress)
        bar.refresh()

    return bar, on_event


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
    print("(the unadapted network is scored with the true noise variance as its predictive variance)")


def _demo(args: argparse.Namespace) -> int:
    import torch

    from ntk_studio.core import NTKStudioError
    from ntk_studio.core.examples.demo import run_sine_demo

    torch.set_num_threads(max(1, args.threads))
    bar, on_event = _progress_bar(args.quiet)
    try:
        result = run_sine_demo(
            n_train=args.n_train, seed=args.seed, params=args.params, fit_hyper=not args.no_fit_hyper, on_event=on_event
        )
    except NTKStudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if bar is not None:
            bar.close()
    _print_table(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_suffix(args.json.suffix + ".tmp")
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(args.json)
        print(f"metrics written to {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the process exit code."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from ntk_studio import __version__

        print(__version__)
        return 0
    if args.command == "demo":
        return _demo(args)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
