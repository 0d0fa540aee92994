"""The NTK Studio engine: linearized-network Gaussian processes with matrix-free Jacobian products.

No Qt, no printing, no global state. See :class:`LinearizedGP` for the scikit-learn-shaped API.
"""

from .errors import (
    Cancelled,
    MemoryBudgetError,
    NotFittedError,
    NTKStudioError,
    ParameterSelectionError,
    ShapeError,
    SolverError,
)
from .gp import LinearizedGP
from .kernels import KernelBuilder
from .linearized import LinearizedModel
from .params import ParamSubset, parameter_layers
from .plan import Plan, make_plan
from .progress import CancelToken, ProgressEvent, Reporter

__all__ = [
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
    "ShapeError",
    "SolverError",
    "make_plan",
    "parameter_layers",
]
