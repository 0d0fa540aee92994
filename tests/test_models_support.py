"""Shared models and savers for the tests of ntk_studio.core.models (this file holds no tests).

The classes below are the originals; ARCH_SOURCE is their source, written to tmp_path as the user's
'file.py:factory', so the models built from the file are the same code. A whole pickled module
refers to this importable module (test_models_support.MLP).
"""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(4, 8)
        self.bn = nn.BatchNorm1d(8)
        self.drop = nn.Dropout(0.2)
        self.l2 = nn.Linear(8, 2)

    def forward(self, x):
        return self.l2(self.drop(torch.tanh(self.bn(self.l1(x)))))


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.head = nn.Linear(12, 2)

    def forward(self, x):
        return self.head(self.pool(torch.relu(self.bn(self.conv(x)))).flatten(1))


class ScaledMLP(nn.Module):
    """A root-level parameter and buffer; TorchScript's optimizing executor breaks vmap on it."""

    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(4, 8)
        self.bn = nn.BatchNorm1d(8)
        self.drop = nn.Dropout(0.3)
        self.l2 = nn.Linear(8, 2)
        self.scale = nn.Parameter(torch.tensor([2.0]))
        self.register_buffer("shift", torch.tensor(0.5))

    def forward(self, x):
        return self.scale * self.l2(self.drop(torch.tanh(self.bn(self.l1(x))))) + self.shift


def make_mlp():
    return MLP()


def make_cnn():
    return CNN()


def make_scaled():
    return ScaledMLP()


ARCH_SOURCE = "\n\n".join(
    ["import torch\nfrom torch import nn\n"]
    + [inspect.getsource(obj) for obj in (MLP, CNN, ScaledMLP, make_mlp, make_cnn, make_scaled)]
)

FACTORIES = {"mlp": "make_mlp", "cnn": "make_cnn", "scaled": "make_scaled"}
HOWS = ("script", "trace", "export", "state_dict", "safetensors", "pickle")
SUFFIX = {
    "script": ".pt",
    "trace": ".ts",
    "export": ".pt2",
    "state_dict": ".pt",
    "safetensors": ".safetensors",
    "pickle": ".pt",
}
FORMAT = {
    "script": "torchscript",
    "trace": "torchscript",
    "export": "exported",
    "state_dict": "state_dict",
    "safetensors": "safetensors",
    "pickle": "pickle",
}
EXAMPLE_ROWS = 6


def make_model(kind: str, seed: int = 0) -> nn.Module:
    """Return a pretrained-looking model in eval mode, with non-trivial BatchNorm running statistics."""
    torch.manual_seed(seed)
    model = globals()[FACTORIES[kind]]()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-1.0, 1.0)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                m.num_batches_tracked.fill_(100)
    return model.eval()


def example_input(kind: str, rows: int = EXAMPLE_ROWS, seed: int = 1) -> torch.Tensor:
    """Return an input batch for the model kind."""
    gen = torch.Generator().manual_seed(seed)
    shape = (rows, 1, 5, 5) if kind == "cnn" else (rows, 4)
    return torch.randn(shape, generator=gen)


def write_arch(folder: Path) -> Path:
    """Return the path of the architecture file written into `folder`."""
    path = folder / "arch.py"
    path.write_text(ARCH_SOURCE)
    return path


def save_model(
    model: nn.Module, kind: str, how: str, folder: Path, name: str | None = None
) -> tuple[Path, str | None]:
    """Return (file, arch spec or None) with `model` saved the way `how` names."""
    path = folder / (name or f"{kind}_{how}{SUFFIX[how]}")
    arch = f"{write_arch(folder)}:{FACTORIES[kind]}"
    x = example_input(kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates torch.jit
        if how == "script":
            torch.jit.save(torch.jit.script(model), str(path))
        elif how == "trace":
            torch.jit.save(torch.jit.trace(model, x), str(path))
        elif how == "export":
            batch = torch.export.Dim("batch")
            program = torch.export.export(model, (x,), dynamic_shapes={"x": {0: batch}})
            torch.export.save(program, str(path))
        elif how == "state_dict":
            torch.save(model.state_dict(), path)
        elif how == "safetensors":
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        elif how == "pickle":
            torch.save(model, path)
        else:
            raise ValueError(how)
    return path, (arch if how in ("state_dict", "safetensors") else None)
