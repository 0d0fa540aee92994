"""What a worker keeps warm between jobs: the model, the data, their splits and the last fits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ntk_studio.core.data.dataset import Dataset
from ntk_studio.core.errors import DataLoadError, ModelLoadError, ShapeError

DEVICES = ("auto", "cpu", "cuda")


def available_devices() -> list[str]:
    """Return the devices this worker can compute on: 'cpu', plus 'cuda' when torch sees a GPU."""
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def resolve_device(name: str) -> torch.device:
    """Return the torch device for a UI choice ('auto' picks CUDA when present); ShapeError if unknown."""
    if name not in DEVICES:
        raise ShapeError(f"device must be one of {DEVICES}, got {name!r}.")
    if name == "cuda" and not torch.cuda.is_available():
        raise ShapeError("CUDA was chosen but this worker sees no GPU; choose 'cpu' or 'auto'.")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


@dataclass
class WorkerState:
    """The loaded model and data (from an example or from files) and what was fitted on them."""

    model: nn.Module | None = None
    data: Dataset | None = None
    task: str = "regression"
    task_reason: str = ""
    # A data file and how to read it (task, channels, image size, table columns): re-read shaped for
    # each newly loaded model, since image channels and the task depend on the model.
    data_source: tuple[str, dict[str, Any]] | None = None
    example: Any = None  # the core Example when one is loaded (its name, truth, notes)
    truth: Any = None  # noise-free target function of a 1-D example, when known
    model_source: str = ""
    model_sha256: str = ""  # of the model file ("" for built-in examples); exports record it
    gp: Any = None  # the last LinearizedGP or LinearizedClassifier
    finetuned: nn.Module | None = None
    splits: dict[tuple[int | None, int], tuple[tuple[np.ndarray, np.ndarray], tuple[Dataset, Dataset]]] = field(default_factory=dict)
    shard: Any = None  # this rank's share of the data in a ranked worker (None: one process)

    def forget_fits(self) -> None:
        """Drop fitted objects and cached splits (the model or the data changed)."""
        self.gp, self.finetuned, self.splits = None, None, {}

    def require_model(self) -> nn.Module:
        """Return the loaded model; raise ModelLoadError when none is loaded."""
        if self.model is None:
            raise ModelLoadError("No model is loaded: load an example or a model file first.")
        return self.model

    def require_data(self) -> Dataset:
        """Return the loaded data; raise DataLoadError when none is loaded."""
        if self.data is None:
            raise DataLoadError("No data is loaded: load an example or a data file first.")
        return self.data

    def split_indices(self, n_adapt: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Return the sorted (adaptation, test) row indices for this n_adapt and seed by the pipeline's one rule."""
        return self._split(n_adapt, seed)[0]

    def split(self, n_adapt: int | None, seed: int) -> tuple[Dataset, Dataset]:
        """Return the (adaptation, test) datasets for this n_adapt and seed by the pipeline's one rule, cached."""
        return self._split(n_adapt, seed)[1]

    def _split(self, n_adapt: int | None, seed: int):
        from ntk_studio.core.pipeline import RunSettings, split_rows

        key = (n_adapt, seed)
        if key not in self.splits:
            data = self.require_data()
            a, t = split_rows(data, RunSettings(n_adapt=n_adapt, seed=seed))
            self.splits[key] = ((a, t), (data.subset(a), data.subset(t)))
        return self.splits[key]
