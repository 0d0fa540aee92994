"""The NTK Studio engine: linearized-network Gaussian processes with matrix-free Jacobian products.

No Qt, no printing, no global state. See :class:`LinearizedGP` for the scikit-learn-shaped API.
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
from .params import ParamSubset, parameter_layers
from .plan import Plan, make_plan
from .progress import CancelToken, ProgressEvent, Reporter
from .trajectory import LinearizedTrajectory

__all__ = [
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
