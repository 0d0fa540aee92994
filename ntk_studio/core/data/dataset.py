"""The in-memory dataset every loader returns and every consumer (GP, CLI, app) takes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

# Rows whose group is this are never adaptation rows: the one split rule (core.pipeline.split) always
# scores them (e.g. the rotation example's faces at angles outside the labelled range).
UNLABELLED_GROUP = "unlabelled"


@dataclass(frozen=True)
class Dataset:
    """Features X (n, ...) and targets y (n,) or (n, K), with names and provenance.

    X is float64 for tabular data and float32 (n, C, H, W) for images. y is float64 for
    regression and int64 class indices for classification (then `class_names` is set).
    `groups` holds the values of an optional grouping column (e.g. year) for source/target
    splits; `source` says where the data came from and `sha256` identifies the file's bytes.
    """

    X: torch.Tensor
    y: torch.Tensor
    feature_names: tuple[str, ...]
    target_name: str
    class_names: tuple[str, ...] | None = None
    groups: np.ndarray | None = None
    source: str = ""
    sha256: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)

    def __len__(self) -> int:
        return int(self.X.shape[0])

    @property
    def is_classification(self) -> bool:
        """Return whether y holds class indices."""
        return self.class_names is not None

    def subset(self, index: np.ndarray | torch.Tensor) -> Dataset:
        """Return the rows at `index` (groups included) as a new Dataset."""
        idx = torch.as_tensor(np.asarray(index), dtype=torch.long)
        groups = None if self.groups is None else self.groups[idx.numpy()]
        return Dataset(
            self.X[idx], self.y[idx], self.feature_names, self.target_name, self.class_names,
            groups, self.source, self.sha256, self.notes,
        )
