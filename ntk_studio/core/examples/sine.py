"""Built-in "sine transfer" toy example.

From "Fast Adaptation with Linearized Neural Networks" (Maddox et al., AISTATS 2021): a small MLP is
pretrained on a few sine waves (see :mod:`ntk_studio.core.examples.train_sine`) and then adapted to
an unseen sine (``TARGET_TASK``) from a handful of noisy observations via the linearized network's
Gaussian process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

INPUT_DIM = 1
HIDDEN_WIDTH = 40
OUTPUT_DIM = 1

# Kept next to this module (package data) so importlib.resources/packagers find it.
WEIGHTS_FILENAME = "sine_mlp.safetensors"
WEIGHTS_PATH = Path(__file__).resolve().parent / "weights" / WEIGHTS_FILENAME

INPUT_RANGE = (-5.0, 5.0)
GRID_POINTS = 400


def build_sine_mlp() -> nn.Sequential:
    """Return a freshly initialised float32 1-40-40-1 tanh MLP."""
    return nn.Sequential(
        nn.Linear(INPUT_DIM, HIDDEN_WIDTH, dtype=torch.float32),
        nn.Tanh(),
        nn.Linear(HIDDEN_WIDTH, HIDDEN_WIDTH, dtype=torch.float32),
        nn.Tanh(),
        nn.Linear(HIDDEN_WIDTH, OUTPUT_DIM, dtype=torch.float32),
    )


def load_pretrained_sine() -> nn.Module:
    """Return the shipped pretrained sine MLP (fits ``SOURCE_TASKS[0]``) in eval mode."""
    model = build_sine_mlp()
    model.load_state_dict(load_file(str(WEIGHTS_PATH)), strict=True)
    return model.eval()


@dataclass(frozen=True)
class SineTask:
    """A regression task ``y = amplitude * sin(x + phase)``."""

    amplitude: float
    phase: float

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Return the noise-free task output, same shape and dtype as ``x``."""
        return self.amplitude * torch.sin(x + self.phase)


# Spread over amplitude [0.5, 2.0] x phase [0, pi] so the shared body must represent both the
# sin and cos components at several scales; task 0 is the plain sine the shipped head fits.
SOURCE_TASKS: tuple[SineTask, ...] = (
    SineTask(amplitude=1.0, phase=0.0),
    SineTask(amplitude=0.5, phase=1.3),
    SineTask(amplitude=2.0, phase=0.5),
    SineTask(amplitude=1.4, phase=2.9),
    SineTask(amplitude=0.7, phase=2.1),
    SineTask(amplitude=1.8, phase=1.7),
    SineTask(amplitude=0.6, phase=math.pi),
    SineTask(amplitude=1.2, phase=0.9),
)

# Deliberately not a source task: the pretrained model must be adapted to fit it.
TARGET_TASK = SineTask(amplitude=1.6, phase=2.2)


@dataclass(frozen=True)
class SineTransferData:
    """Noisy train/test observations of ``TARGET_TASK`` plus a noise-free grid for plotting."""

    x_train: torch.Tensor  # (n, 1)
    y_train: torch.Tensor  # (n,)
    x_test: torch.Tensor  # (m, 1)
    y_test: torch.Tensor  # (m,)
    x_grid: torch.Tensor  # (g, 1)
    y_grid_true: torch.Tensor  # (g,)
    noise_std: float


def _uniform(
    n: int, bounds: tuple[float, float], generator: torch.Generator, dtype: torch.dtype
) -> torch.Tensor:
    """Return an (n, 1) tensor drawn uniformly from ``[low, high)``."""
    low, high = bounds
    return low + (high - low) * torch.rand(n, INPUT_DIM, generator=generator, dtype=dtype)


def _noisy_target(
    x: torch.Tensor, noise_std: float, generator: torch.Generator
) -> torch.Tensor:
    """Return ``TARGET_TASK(x)`` flattened to (n,) plus Gaussian noise of std ``noise_std``."""
    noise = torch.randn(x.shape[0], generator=generator, dtype=x.dtype)
    return TARGET_TASK(x[:, 0]) + noise_std * noise


def target_task_data(
    n_train: int = 10,
    n_test: int = 200,
    noise_std: float = 0.1,
    seed: int = 0,
    train_range: tuple[float, float] = (-4.0, 1.0),
    dtype: torch.dtype = torch.float64,
) -> SineTransferData:
    """Return seeded noisy observations of ``TARGET_TASK`` (train inside ``train_range``)."""
    if n_train < 1 or n_test < 1:
        raise ValueError(f"n_train and n_test must be >= 1, got {n_train} and {n_test}")
    if noise_std < 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std}")
    if not train_range[0] < train_range[1]:
        raise ValueError(f"train_range must be (low, high) with low < high, got {train_range}")

    # A local generator keeps the draw reproducible without touching the global RNG.
    generator = torch.Generator().manual_seed(seed)
    x_train = _uniform(n_train, train_range, generator, dtype)
    y_train = _noisy_target(x_train, noise_std, generator)
    x_test = _uniform(n_test, INPUT_RANGE, generator, dtype)
    y_test = _noisy_target(x_test, noise_std, generator)

    x_grid = torch.linspace(*INPUT_RANGE, GRID_POINTS, dtype=dtype).unsqueeze(-1)
    return SineTransferData(
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        x_grid=x_grid,
        y_grid_true=TARGET_TASK(x_grid[:, 0]),
        noise_std=float(noise_std),
    )
