"""Small models shared by the engine tests: an MLP, a CNN with BatchNorm and pooling, a 2-output net."""

import torch
from torch import nn


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 5), nn.GELU(), nn.Linear(5, 1))


def two_output(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 7), nn.Tanh(), nn.Linear(7, 2))


class SmallCNN(nn.Module):
    """Conv → BatchNorm → ReLU → pool → Linear: the layers a CNN classifier body uses."""

    def __init__(self, outputs: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, kernel_size=3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.pool = nn.AvgPool2d(2)
        self.head = nn.Linear(3 * 3 * 3, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(torch.relu(self.bn(self.conv(x))))
        return self.head(h.flatten(1))


def cnn(seed: int = 0, outputs: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    model = SmallCNN(outputs)
    # Non-trivial running statistics so eval-mode BatchNorm is not the identity.
    model.bn.running_mean.uniform_(-0.5, 0.5)
    model.bn.running_var.uniform_(0.5, 2.0)
    return model


def inputs(model_name: str, n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if model_name == "cnn":
        return torch.randn(n, 1, 6, 6, generator=g, dtype=torch.float64)
    return torch.randn(n, 3, generator=g, dtype=torch.float64)


MODELS = {"mlp": mlp, "cnn": cnn, "two_output": two_output}


def autograd_jacobian(model: nn.Module, X: torch.Tensor, names) -> torch.Tensor:
    """J (n, K, P) of the float64 model by plain autograd (no torch.func): one backward per (sample, output).

    A parameter an output does not depend on contributes zeros.
    """
    model = model.double().eval()
    params = dict(model.named_parameters())
    rows = []
    for i in range(X.shape[0]):
        out = model(X[i : i + 1]).reshape(-1)
        for k in range(out.numel()):
            grads = torch.autograd.grad(out[k], [params[n] for n in names], retain_graph=True, allow_unused=True)
            rows.append(torch.cat([(torch.zeros_like(params[n]) if g is None else g).reshape(-1)
                                   for n, g in zip(names, grads)]))
    return torch.stack(rows).reshape(X.shape[0], out.numel(), -1)
