"""Helpers shared by the reproducible pretraining scripts of the built-in examples."""

from __future__ import annotations

import argparse
import contextlib
import stat
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

SHARED_READ_BITS = stat.S_IRGRP | stat.S_IROTH


@contextlib.contextmanager
def deterministic(seed: int) -> Iterator[None]:
    """Seed torch and force single-threaded deterministic kernels, restoring the state after."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    # fork_rng restores the global RNG afterwards, so callers (e.g. tests) are not perturbed.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.set_num_threads(1)
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(deterministic)
            torch.set_num_threads(threads)


def write_weights(model: nn.Module, metadata: dict[str, str], out: Path) -> None:
    """Write ``model``'s float32 state dict with ``metadata`` to ``out`` (safetensors), readable by everyone."""
    from safetensors.torch import save_file

    state = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out), metadata=metadata)
    # safetensors writes via a private (0600) temp file; shipped weights must be world-readable.
    out.chmod(out.stat().st_mode | SHARED_READ_BITS)


def training_parser(description: str, steps: int, seed: int) -> argparse.ArgumentParser:
    """Return the argument parser every pretraining script starts from: --steps and --seed."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--steps", type=int, default=steps, help="optimiser steps")
    parser.add_argument("--seed", type=int, default=seed, help="random seed")
    return parser
