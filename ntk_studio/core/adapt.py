"""One adaptation run: fit the linearized GP on the adaptation split, score it and the unadapted model."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .checkpoint import Checkpoint
from .data.dataset import Dataset
from .distributed import SingleProcess
from .errors import NTKStudioError, ShapeError
from .gp import LinearizedGP
from .metrics import regression_report
from .progress import CancelToken, ProgressEvent, Reporter


@dataclass(frozen=True)
class AdaptSettings:
    """GP settings of a run; noise and prior_var are variances in the model's output units."""

    params: str = "all"
    prior_var: float = 1.0
    noise: float = 0.1
    space: str = "auto"
    solver: str = "auto"
    fit_hyper: bool = False


@dataclass
class AdaptResult:
    """Metrics of the GP and the unadapted model on the test split, plus per-point predictions."""

    settings: AdaptSettings
    metrics: dict[str, dict[str, float]]
    gp_info: dict[str, object]
    mean: torch.Tensor
    var: torch.Tensor
    y_test: torch.Tensor
    base_mean: torch.Tensor
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        """Return a JSON-serializable summary (no per-point arrays)."""
        return {"settings": asdict(self.settings), "metrics": self.metrics, "gp": self.gp_info, "notes": self.notes}


def _targets(ds: Dataset) -> torch.Tensor:
    if ds.is_classification:
        raise NTKStudioError(
            "This dataset is a classification task; the GP adapts regression targets for now "
            "(linearized classification is planned). Load numeric targets instead."
        )
    return ds.y.to(torch.float64)


def adapt(
    model: nn.Module,
    train: Dataset,
    test: Dataset,
    settings: AdaptSettings = AdaptSettings(),
    on_event: Callable[[ProgressEvent], None] | None = None,
    cancel: CancelToken | None = None,
    shard: SingleProcess | None = None,
    checkpoint: Checkpoint | None = None,
) -> AdaptResult:
    """Return the GP's and the unadapted model's test metrics after adapting on `train`.

    With a distributed `shard` every rank must call this with the same data; all get the same result.
    """
    y_train, y_test = _targets(train), _targets(test)
    if len(train) < 1 or len(test) < 1:
        raise ShapeError("Both the adaptation split and the test split need at least one row.")
    gp = LinearizedGP(
        model, params=settings.params, prior_var=settings.prior_var, noise=settings.noise,
        space=settings.space, solver=settings.solver, shard=shard, checkpoint=checkpoint,
        device=getattr(shard, "device", None),
    )
    start = time.perf_counter()
    gp._fit(train.X, y_train, Reporter(on_event, cancel))
    if settings.fit_hyper:
        gp.fit_hyperparameters()
    mean, var = gp.predict(test.X, include_noise=True)
    gp_time = time.perf_counter() - start

    start = time.perf_counter()
    base = gp.lm.forward(test.X)
    base_time = time.perf_counter() - start
    base = base[:, 0] if y_test.dim() == 1 else base
    # The unadapted model has no uncertainty of its own: score it with the GP's noise variance.
    base_report = regression_report(base, torch.full_like(base, gp.noise), y_test)
    return AdaptResult(
        settings=settings,
        metrics={
            "gp": {**regression_report(mean, var, y_test), "wall_time_s": gp_time},
            "unadapted": {**base_report, "wall_time_s": base_time},
        },
        gp_info={
            "route": f"{gp.plan.space}/{gp.plan.solver}",
            "plan": gp.plan.describe(),
            "kernel_path": gp.kernels.path,
            "num_params": gp.lm.num_params,
            "prior_var": gp.prior_var,
            "noise": gp.noise,
            "log_marginal_likelihood": gp.log_marginal_likelihood(),
            "residual": gp.solve_info.residual,
            "iterations": gp.solve_info.iterations,
            "n_train": len(train),
            "n_test": len(test),
            "ranks": gp.lm.shard.world_size,
        },
        mean=mean,
        var=var,
        y_test=y_test,
        base_mean=base,
        notes=["the unadapted model is scored with the GP's noise variance as its predictive variance"],
    )
