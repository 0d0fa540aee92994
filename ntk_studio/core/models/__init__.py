"""Models in: TorchScript, torch.export programs, state dicts with an architecture, summaries."""

from .loading import LoadedModel, load_architecture, load_model
from .summary import LayerInfo, ModelSummary, check_model, summarize
from .torchscript import TorchScriptModule

__all__ = [
    "LayerInfo",
    "LoadedModel",
    "ModelSummary",
    "TorchScriptModule",
    "check_model",
    "load_architecture",
    "load_model",
    "summarize",
]
