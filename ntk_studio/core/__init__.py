"""The NTK Studio engine: linearized-network Gaussian processes with matrix-free Jacobian products.

No Qt, no printing, no global state. :class:`LinearizedGP` and :class:`LinearizedClassifier` share
one shape (:class:`LinearizedPredictor`); ``NTKRegressor`` / ``NTKClassifier`` are their
scikit-learn estimators, imported on first use (they need scikit-learn, the ``examples`` extra).
"""

from .classify import LinearizedClassifier
from .errors import (
    Cancelled,
    DataLoadError,
    ExampleUnavailableError,
    FineTuneSettingsError,
    ModelLoadError,
    UntrustedPickleError,
    MemoryBudgetError,
    NotFittedError,
    NTKStudioError,
    ParameterSelectionError,
    SettingsError,
    ShapeError,
    SolverError,
    SolverWarning,
)
from .finetune import FineTuneResult, FineTuneSettings, finetune, finetune_ensemble, finetune_iter
from .gp import LinearizedGP
from .kernels import KernelBuilder
from .linearized import LinearizedModel
from .options import Outputs, ProbaMethod, Solver, Space, TrajectoryMode
from .params import ParamSubset, parameter_layers
from .plan import Plan, make_plan
from .predictor import LinearizedPredictor
from .progress import CancelToken, ProgressEvent, Reporter
from .solvers import SolveInfo
from .trajectory import LinearizedTrajectory

_ESTIMATORS = ("NTKClassifier", "NTKRegressor")


def __getattr__(name: str):
    # The estimators import scikit-learn, an optional extra: load them only when asked for.
    if name in _ESTIMATORS:
        from . import estimators

        return getattr(estimators, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "LinearizedPredictor",
    "NTKClassifier",
    "NTKRegressor",
    "Outputs",
    "ProbaMethod",
    "SolveInfo",
    "Solver",
    "Space",
    "TrajectoryMode",
    "DataLoadError",
    "ExampleUnavailableError",
    "FineTuneResult",
    "FineTuneSettings",
    "FineTuneSettingsError",
    "LinearizedClassifier",
    "LinearizedTrajectory",
    "ModelLoadError",
    "UntrustedPickleError",
    "finetune",
    "finetune_ensemble",
    "finetune_iter",
    "Cancelled",
    "CancelToken",
    "KernelBuilder",
    "LinearizedGP",
    "LinearizedModel",
    "MemoryBudgetError",
    "NotFittedError",
    "NTKStudioError",
    "ParameterSelectionError",
    "ParamSubset",
    "Plan",
    "ProgressEvent",
    "Reporter",
    "SettingsError",
    "ShapeError",
    "SolverError",
    "SolverWarning",
    "make_plan",
    "parameter_layers",
]
