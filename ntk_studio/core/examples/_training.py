"""Helpers shared by the reproducible pretraining scripts of the built-in examples."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


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
