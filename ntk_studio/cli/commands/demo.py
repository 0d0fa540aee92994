"""`ntk-studio-cli demo`: the built-in sine-transfer example, headless."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from ntk_studio.pipeline_defaults import settings_for

from ..output import write_json
from ..progress import progress_bar


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


def run_sine_demo(
    n_train: int = 10,
    seed: int = 0,
    params: str = "all",
    fit_hyper: bool = True,
    on_event: Callable | None = None,
) -> dict:
    """Return metrics (RMSE, NLL, 95% coverage, wall time) for the GP and the unadapted network.

    The one pipeline (core.pipeline.run_split) on the paper's fixed split: the labelled points lie
    in [-4, 1], the test points cover [-5, 5]. Scoring follows the pipeline's one rule.
    """
    from ntk_studio.core.data.dataset import Dataset
    from ntk_studio.core.examples.sine import TARGET_TASK, load_pretrained_sine, target_task_data
    from ntk_studio.core.pipeline import run_split

    data = target_task_data(n_train=n_train, seed=seed)
    model = load_pretrained_sine()
    adapt = Dataset(data.x_train, data.y_train.double(), ("x",), "y")
    test = Dataset(data.x_test, data.y_test.double(), ("x",), "y")
    settings = settings_for("sine").replace(params=params, seed=seed, n_adapt=n_train).replace(fit_hyper=fit_hyper)
    result = run_split(model, "regression", adapt, test, settings, ("linearized",), on_event=on_event)
    gp = result.fitted
    base, lin = result.record("unadapted"), result.record("linearized")
    return {
        "example": "sine",
        "target_task": {"amplitude": TARGET_TASK.amplitude, "phase": TARGET_TASK.phase},
        "n_train": n_train,
        "n_test": int(data.y_test.numel()),
        "seed": seed,
        "params": params,
        "scoring_rule": result.notes[-1],
        "unadapted": {**base.metrics, "wall_time_s": base.wall_time_s},
        "gp": {
            **lin.metrics,
            "wall_time_s": lin.wall_time_s,
            "prior_var": gp.prior_var,
            "noise": gp.noise,
            "initial_noise": result.hyper["initial_noise"],
            "log_marginal_likelihood": gp.log_marginal_likelihood(),
            "route": f"{gp.plan.space}/{gp.plan.solver}",
            "kernel_path": gp.kernels.path,
            "num_params": gp.lm.num_params,
            "residual": gp.solve_info.residual,
        },
    }


def run(args: argparse.Namespace) -> int:
    """Run the demo; return the exit code."""
    with progress_bar(not args.quiet) as on_event:
        result = run_sine_demo(
            n_train=args.n_train, seed=args.seed, params=args.params, fit_hyper=not args.no_fit_hyper, on_event=on_event
        )
    _print_table(result)
    if args.json:
        write_json(args.json, result)
        print(f"metrics written to {args.json}")
    return 0
