"""Reproducibly pretrain the sine MLP shipped as ``weights/sine_mlp.safetensors``.

A shared body (the first four layers of :func:`build_sine_mlp`) is trained jointly with one linear
head per source task, so its 40 features must span sines of every amplitude and phase. The body plus
head 0 (``SOURCE_TASKS[0]``) is then saved as a plain ``build_sine_mlp()`` state dict.

Run: ``python -m ntk_studio.core.examples.train_sine [--out PATH] [--steps N] [--seed S]``
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ntk_studio.core.examples._training import deterministic, training_parser, write_weights
from ntk_studio.core.examples.sine import (
    HIDDEN_WIDTH,
    INPUT_DIM,
    INPUT_RANGE,
    OUTPUT_DIM,
    SOURCE_TASKS,
    WEIGHTS_PATH,
    build_sine_mlp,
)

DEFAULT_STEPS = 6000
DEFAULT_SEED = 0
BATCH_SIZE = 128
LEARNING_RATE = 3e-3
# Cosine decay to a small floor: large steps early, fine convergence at the end.
FINAL_LEARNING_RATE = 1e-5
EVAL_POINTS = 1000
RMSE_TOLERANCE = 0.05
BODY_LAYERS = 4  # Linear, Tanh, Linear, Tanh
# Extra seed offset so the data stream is not the same random stream as the weight init.
DATA_SEED_OFFSET = 1_000_003


def _task_targets(x: torch.Tensor) -> torch.Tensor:
    """Return the (n, n_tasks) noise-free outputs of every source task at ``x`` (n, 1)."""
    return torch.cat([task(x) for task in SOURCE_TASKS], dim=1)


def _predict(body: nn.Module, heads: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    """Return the (n, n_tasks) predictions of every head on the shared features of ``x``."""
    features = body(x)
    return torch.cat([head(features) for head in heads], dim=1)


def _sample_inputs(generator: torch.Generator) -> torch.Tensor:
    """Return a (BATCH_SIZE, 1) minibatch drawn uniformly from ``INPUT_RANGE``."""
    low, high = INPUT_RANGE
    return low + (high - low) * torch.rand(BATCH_SIZE, INPUT_DIM, generator=generator)


@torch.no_grad()
def source_rmses(body: nn.Module, heads: nn.ModuleList) -> list[float]:
    """Return each head's RMSE against its source task on an even grid over ``INPUT_RANGE``."""
    x = torch.linspace(*INPUT_RANGE, EVAL_POINTS).unsqueeze(-1)
    errors = _predict(body, heads, x) - _task_targets(x)
    return errors.pow(2).mean(dim=0).sqrt().tolist()


def train(steps: int = DEFAULT_STEPS, seed: int = DEFAULT_SEED) -> tuple[nn.Sequential, dict]:
    """Return the pretrained ``build_sine_mlp()`` (body + head 0) and a metrics dict."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    with deterministic(seed):
        model = build_sine_mlp()
        body = model[:BODY_LAYERS]
        # Head 0 is the model's own output layer, so nothing needs copying afterwards.
        extra_heads = [nn.Linear(HIDDEN_WIDTH, OUTPUT_DIM) for _ in SOURCE_TASKS[1:]]
        heads = nn.ModuleList([model[BODY_LAYERS], *extra_heads])
        params = [*body.parameters(), *heads.parameters()]

        optimizer = torch.optim.Adam(params, lr=LEARNING_RATE)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=steps, eta_min=FINAL_LEARNING_RATE
        )
        generator = torch.Generator().manual_seed(seed + DATA_SEED_OFFSET)
        for _ in range(steps):
            x = _sample_inputs(generator)
            # Summing per-task MSEs weights every task equally in the shared body's gradient.
            loss = (_predict(body, heads, x) - _task_targets(x)).pow(2).mean(dim=0).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()

        rmses = source_rmses(body, heads)
    metrics = {"seed": seed, "steps": steps, "final_loss": loss.item(), "rmse": rmses}
    return model.eval(), metrics


def save_weights(model: nn.Sequential, metrics: dict, out: Path) -> None:
    """Write ``model``'s float32 state dict and training metadata to ``out`` (safetensors)."""
    metadata = {"seed": str(metrics["seed"]), "steps": str(metrics["steps"])}
    metadata |= {f"rmse_task_{i}": f"{rmse:.6f}" for i, rmse in enumerate(metrics["rmse"])}
    write_weights(model, metadata, out)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Return the parsed command-line options."""
    parser = training_parser(__doc__.splitlines()[0], DEFAULT_STEPS, DEFAULT_SEED)
    parser.add_argument("--out", type=Path, default=WEIGHTS_PATH, help="output .safetensors path")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Train, save and report; return 1 if any source task misses ``RMSE_TOLERANCE``."""
    args = _parse_args(argv)
    start = time.perf_counter()
    model, metrics = train(steps=args.steps, seed=args.seed)
    elapsed = time.perf_counter() - start
    save_weights(model, metrics, args.out)

    for i, (task, rmse) in enumerate(zip(SOURCE_TASKS, metrics["rmse"])):
        print(f"task {i}: amplitude={task.amplitude:.2f} phase={task.phase:.2f} rmse={rmse:.4f}")
    print(f"trained {args.steps} steps (seed {args.seed}) in {elapsed:.1f} s -> {args.out}")
    worst = max(metrics["rmse"])
    if worst >= RMSE_TOLERANCE:
        print(f"warning: worst RMSE {worst:.4f} >= {RMSE_TOLERANCE}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
