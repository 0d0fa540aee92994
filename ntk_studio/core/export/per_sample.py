"""Per-sample Jacobian rows J(x) written with batch-shaped ops only, so a trace keeps a free batch size.

``vmap`` over samples cannot be used in the exported program: functorch's convolution batching
rule writes the traced batch size into the graph as a constant. Instead, each layer that owns a
linearized parameter adds a zero "probe" to its output; one backward pass per model output gives
δ = ∂f_k/∂(layer output) for every sample at once (samples do not interact in eval mode), and the
per-sample parameter gradient follows from the layer's own formula (δ ⊗ input for Linear, an
unfolded product for Conv2d, Σ δ·x̂ for the norms). Parameters owned by other layer types are
refused with :class:`~ntk_studio.core.errors.UnsupportedExportError`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import UnsupportedExportError


def _linear(module: nn.Linear, a: torch.Tensor, d: torch.Tensor) -> dict[str, torch.Tensor]:
    B = a.shape[0]
    a3, d3 = a.reshape(B, -1, a.shape[-1]), d.reshape(B, -1, d.shape[-1])
    out = {"weight": torch.einsum("bso,bsi->boi", d3, a3)}
    if module.bias is not None:
        out["bias"] = d3.sum(1)
    return out


def _conv2d(module: nn.Conv2d, a: torch.Tensor, d: torch.Tensor) -> dict[str, torch.Tensor]:
    if module.padding_mode != "zeros" or isinstance(module.padding, str):
        raise UnsupportedExportError("Conv2d layers are exported with numeric zero padding only.")
    B, C = a.shape[:2]
    O, g = d.shape[1], module.groups
    kh, kw = module.kernel_size
    cols = F.unfold(a, (kh, kw), dilation=module.dilation, padding=module.padding, stride=module.stride)
    cols = cols.reshape(B, g, (C // g) * kh * kw, -1)
    dd = d.reshape(B, g, O // g, -1)
    out = {"weight": torch.einsum("bgol,bgcl->bgoc", dd, cols).reshape(B, *module.weight.shape)}
    if module.bias is not None:
        out["bias"] = d.sum(dim=(2, 3))
    return out


def _normalized(module, a: torch.Tensor) -> torch.Tensor:
    if isinstance(module, nn.LayerNorm):
        dims = tuple(range(a.dim() - len(module.normalized_shape), a.dim()))
        mean = a.mean(dims, keepdim=True)
        var = ((a - mean) ** 2).mean(dims, keepdim=True)
        return (a - mean) * torch.rsqrt(var + module.eps)
    shape = (1, -1) + (1,) * (a.dim() - 2)
    return (a - module.running_mean.view(shape)) * torch.rsqrt(module.running_var.view(shape) + module.eps)


def _norm(module, a: torch.Tensor, d: torch.Tensor) -> dict[str, torch.Tensor]:
    xhat = _normalized(module, a)
    B = a.shape[0]
    if isinstance(module, nn.LayerNorm):
        lead = (B, -1, *module.normalized_shape)
        out = {"weight": (d * xhat).reshape(lead).sum(1), "bias": d.reshape(lead).sum(1)}
    else:
        reduce = tuple(range(2, a.dim()))
        out = {"weight": (d * xhat).sum(reduce), "bias": d.sum(reduce)}
    return {k: v for k, v in out.items() if getattr(module, k) is not None}


def _rule(module: nn.Module):
    if isinstance(module, nn.Linear):
        return _linear
    if isinstance(module, nn.Conv2d):
        return _conv2d
    if isinstance(module, nn.LayerNorm) or getattr(module, "exports_as_eval_batchnorm", False):
        return _norm
    return None


class PerSampleJacobian:
    """Callable x -> (f(x) (B, K), J(x) (B, K, P)) for a model copy in eval mode and a parameter subset."""

    def __init__(self, model: nn.Module, names: tuple[str, ...], sizes: tuple[int, ...]) -> None:
        self.model, self.names, self.sizes = model, names, sizes
        owners: dict[str, tuple[nn.Module, list[str]]] = {}
        modules = dict(model.named_modules())
        for name in names:
            owner, _, leaf = name.rpartition(".")
            module = modules[owner]
            if _rule(module) is None:
                raise UnsupportedExportError(
                    f"Parameter {name!r} belongs to a {type(module).__name__} layer; the exporter computes "
                    "per-sample gradients of Linear, Conv2d, BatchNorm and LayerNorm layers. Linearize only "
                    "those (e.g. params='last:1'), or use the CLI without export."
                )
            owners.setdefault(owner, (module, []))[1].append(leaf)
        self.owners = owners
        for p in model.parameters():
            p.requires_grad_(False)
        self._records: dict[str, list] = {}
        self._active = False
        for owner, (module, _) in owners.items():
            module.register_forward_hook(self._hook(owner))

    def _hook(self, owner: str):
        def hook(module, inputs, output):
            if not self._active:
                return None
            probe = torch.zeros_like(output).requires_grad_(True)
            self._records.setdefault(owner, []).append((inputs[0], probe))
            return output + probe

        return hook

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._records, self._active = {}, True
        try:
            with torch.enable_grad():
                out = self.model(x)
        finally:
            self._active = False
        if not torch.is_tensor(out):
            raise UnsupportedExportError(f"The model must return one tensor; it returned {type(out).__name__}.")
        f = out.reshape(x.shape[0], -1)
        records = [(owner, a, probe) for owner, calls in self._records.items() for a, probe in calls]
        probes = [probe for _, _, probe in records]
        rows = []
        for k in range(f.shape[1]):
            deltas = torch.autograd.grad(f[:, k].sum(), probes, retain_graph=True, allow_unused=True)
            grads: dict[str, torch.Tensor] = {}
            for (owner, a, probe), d in zip(records, deltas):
                module, leaves = self.owners[owner]
                d = torch.zeros_like(probe) if d is None else d
                for leaf, g in _rule(module)(module, a, d).items():
                    key = f"{owner}.{leaf}" if owner else leaf
                    grads[key] = grads[key] + g if key in grads else g
            rows.append(torch.cat([self._flat(grads, name, x) for name in self.names], dim=1))
        return f.detach(), torch.stack(rows, dim=1).detach()

    def _flat(self, grads: dict[str, torch.Tensor], name: str, x: torch.Tensor) -> torch.Tensor:
        if name in grads:
            return grads[name].reshape(x.shape[0], -1)
        # A parameter the forward pass never reached: its gradient is zero.
        size = self.sizes[self.names.index(name)]
        return x.new_zeros(x.shape[0], size)
