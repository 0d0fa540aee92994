"""TorchScript models as plain nn.Modules, so that torch.func can linearize them."""

from __future__ import annotations

import io

import torch
from torch import nn

from ..errors import ModelLoadError

# TorchScript ops whose train/eval behaviour is an argument, and that argument's position.
# torch.jit.trace records `self.training` as a constant, so a model traced in train mode keeps
# batch statistics and dropout whatever mode it is later put in.
TRAIN_FLAG_INPUT = {
    "aten::batch_norm": 5,
    "aten::dropout": 2,
    "aten::dropout_": 2,
    "aten::feature_dropout": 2,
    "aten::feature_dropout_": 2,
    "aten::alpha_dropout": 2,
    "aten::alpha_dropout_": 2,
    "aten::feature_alpha_dropout": 2,
    "aten::feature_alpha_dropout_": 2,
}


class TorchScriptModule(nn.Module):
    """A TorchScript module behind a plain nn.Module with the same parameter names.

    ``torch.func.functional_call`` refuses script modules outright ("The stateless API can't be used
    with Jitted modules"). This wrapper shares the script module's own parameter, buffer and child
    tables, so names match the original model and functional_call's swaps land in the TorchScript
    object that the compiled code reads.
    """

    def __init__(self, script: torch.jit.ScriptModule) -> None:
        super().__init__()
        object.__setattr__(self, "_parameters", script._parameters)
        object.__setattr__(self, "_buffers", script._buffers)
        object.__setattr__(self, "_modules", script._modules)
        object.__setattr__(self, "_script", script)
        self.training = bool(getattr(script, "training", False))

    @property
    def script(self) -> torch.jit.ScriptModule:
        """Return the wrapped TorchScript module."""
        return self._script

    def _get_name(self) -> str:
        return f"TorchScript[{getattr(self._script, 'original_name', 'Module')}]"

    def train(self, mode: bool = True) -> TorchScriptModule:
        """Return self with the TorchScript module (root included) in train or eval mode."""
        self._script.train(mode)
        self.training = mode
        return self

    def forward(self, *args, **kwargs):
        """Return the TorchScript module's output."""
        # The optimizing executor differentiates with TorchScript's own symbolic autodiff, whose
        # backward reads `.data` and fails under vmap ("accessing `data` under vmap transform is not
        # allowed"). The plain interpreter sends every op through ordinary autograd, which torch.func
        # transforms exactly. The flag is thread-local.
        with torch.jit.optimized_execution(False):
            return self._script(*args, **kwargs)


def baked_train_ops(script: torch.jit.ScriptModule) -> list[str]:
    """Return the ops whose train flag is fixed to True in the compiled graph."""
    try:
        graph = script.inlined_graph
    except (AttributeError, RuntimeError):
        return []
    found = []
    for kind, index in TRAIN_FLAG_INPUT.items():
        for node in graph.findAllNodes(kind, True):
            inputs = list(node.inputs())
            if index < len(inputs) and inputs[index].node().kind() == "prim::Constant":
                if inputs[index].toIValue() is True:
                    found.append(kind.split("::")[1].rstrip("_"))
    return sorted(set(found))


def load_torchscript(data: bytes) -> tuple[nn.Module, list[str]]:
    """Return (a torch.func-compatible module, notes) from TorchScript archive bytes."""
    script = torch.jit.load(io.BytesIO(data), map_location="cpu")
    if not any(True for _ in script.parameters()):
        raise ModelLoadError(
            "This TorchScript model has no parameters: it was probably frozen (torch.jit.freeze or "
            "optimize_for_inference), which turns the weights into constants, so there is nothing to "
            "linearize. Save the model before freezing, or save a state dict with its architecture."
        )
    baked = baked_train_ops(script)
    if baked:
        raise ModelLoadError(
            f"This TorchScript model was traced in train mode: its {', '.join(baked)} always runs in "
            "training behaviour (batch statistics, random dropout) and eval() cannot change that. "
            "Call model.eval() before torch.jit.trace and save again, or better, save a state dict or "
            "a torch.export program."
        )
    notes = [
        "TorchScript is deprecated in PyTorch 2.13; it runs here through TorchScript's unoptimized "
        "interpreter so that torch.func can differentiate it. Prefer a torch.export program (.pt2) or a "
        "state dict with its architecture."
    ]
    return TorchScriptModule(script), notes
