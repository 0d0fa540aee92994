"""The adapted predictor as one traced torch program: raw inputs in, mean and variance out.

The program standardizes the inputs, evaluates f(x; θ*) and the per-sample Jacobian rows J(x)
(one backward pass per output through layer probes, see :mod:`.per_sample`), then forms the mean f + JΔθ and the covariance
J Σ Jᵀ from :class:`~.posterior.LinearPosterior`. ``make_fx`` with symbolic shapes turns it into a
graph of ATen ops with a free batch size; backward ops ONNX lacks are decomposed on the way
(see :mod:`.decompositions`). This is the route DESIGN.md points to: exporting ``torch.func``
transforms directly fixes the batch size, and we check every file numerically anyway.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import torch
from torch import nn
from torch.fx.experimental.proxy_tensor import make_fx

from ..classify import PROBIT_APPROXIMATIONS, resolve_proba_method
from ..data.prep import Standardizer
from ..errors import UnsupportedExportError
from ..linearized import LinearizedModel
from ..models.torchscript import TorchScriptModule
from .decompositions import decomposition_table
from .per_sample import PerSampleJacobian
from .posterior import LinearPosterior

REGRESSION_OUTPUTS = ("mean", "variance", "f_variance")
CLASSIFICATION_OUTPUTS = ("probabilities", "logits", "logits_covariance")
TRACE_BATCH = 3  # samples in the example input; any size > 1 keeps the batch dimension symbolic


class _EvalBatchNorm(nn.Module):
    """BatchNorm in eval mode written as plain arithmetic, so its per-sample gradients have a known formula."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        if not bn.track_running_stats or bn.running_mean is None:
            raise UnsupportedExportError(
                f"{type(bn).__name__} without running statistics normalizes by the batch; only "
                "eval-mode BatchNorm with running statistics is exported."
            )
        self.eps = bn.eps
        self.weight, self.bias = bn.weight, bn.bias
        self.register_buffer("running_mean", bn.running_mean)
        self.register_buffer("running_var", bn.running_var)
        self.register_buffer("num_batches_tracked", bn.num_batches_tracked)

    exports_as_eval_batchnorm = True  # per_sample.py computes its per-sample gradients
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        y = (x - self.running_mean.view(shape)) * torch.rsqrt(self.running_var.view(shape) + self.eps)
        if self.weight is not None:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def _exportable_copy(model: nn.Module) -> nn.Module:
    """Return a deep copy of `model` with BatchNorm layers replaced by their eval-mode arithmetic."""
    if isinstance(model, (torch.jit.ScriptModule, TorchScriptModule)):
        raise UnsupportedExportError(
            "TorchScript models cannot be traced for export; load the model as a state dict with its "
            "architecture (--model weights.pt --arch file.py:factory) instead."
        )
    try:
        clone = copy.deepcopy(model)
    except Exception as exc:  # noqa: BLE001 - any failure means the model cannot be copied
        raise UnsupportedExportError(f"The model cannot be copied for export: {exc}") from exc
    for name, module in list(clone.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                setattr(module, child_name, _EvalBatchNorm(child))
    return clone.eval()


def _constant(a, like: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float64)).to(like.device, like.dtype).reshape(shape)


def predictor_function(lm: LinearizedModel, post: LinearPosterior, stats: Standardizer | None, input_ndim: int,
                       method: str = "auto", dtype: torch.dtype | None = None,
                       network_dtype: torch.dtype | None = None):
    """Return fn(x_raw) -> outputs tuple (see REGRESSION_OUTPUTS / CLASSIFICATION_OUTPUTS) in `dtype`.

    `stats` standardizes the raw inputs inside the graph (and maps the targets back when it has
    target statistics); None means the model takes raw inputs.
    The network (f and J) runs in `network_dtype` (default: `dtype`); onnxruntime has no float64
    convolution, so CNNs export with a float32 network and float64 posterior algebra.
    """
    dt = dtype or lm.dtype
    net_dt = network_dtype or dt
    shared = sorted(alias for alias, name in lm._aliases.items() if name in lm.subset.names)
    if shared:
        raise UnsupportedExportError(
            f"Parameters used by several layers (tied weights: {', '.join(shared)}) are not exported; "
            "linearize a subset without them."
        )
    model = _exportable_copy(lm.model).to(device=lm.device, dtype=net_dt)
    jac = PerSampleJacobian(model, lm.subset.names, lm.subset.sizes)
    K = lm.output_dim
    ref = post.delta_theta.to(lm.device, dt)
    x_mean = x_scale = y_mean = y_scale = None
    if stats is not None:
        x_mean = _constant(stats.x_mean, ref, stats.x_shape(input_ndim))
        x_scale = _constant(stats.x_scale, ref, stats.x_shape(input_ndim))
        if stats.y_mean is not None:
            y_mean, y_scale = _constant(stats.y_mean, ref, (1, -1)), _constant(stats.y_scale, ref, (1, -1))
    basis, scale = post.basis.to(lm.device, dt), post.scale.to(lm.device, dt)
    # Scalars as tensors of the program's dtype: a Python float would be stored as a float32 constant.
    s2 = torch.tensor(post.prior_var, dtype=dt, device=lm.device)
    noise = torch.tensor(post.noise if post.noise is not None else 0.0, dtype=dt, device=lm.device)
    post_local = LinearPosterior(post.task, ref, basis, scale, post.prior_var, post.noise, post.logit_scale)
    logit_scale = None if post.logit_scale == 1.0 else torch.tensor(post.logit_scale, dtype=dt, device=lm.device)
    proba = PROBIT_APPROXIMATIONS.get(resolve_proba_method(method, K))
    if proba is None:
        raise UnsupportedExportError(
            f"Export writes closed-form probabilities: use method 'auto', 'probit' or 'pairwise', not {method!r}."
        )

    def fn(x: torch.Tensor):
        x = x.to(dt)
        if x_mean is not None:
            x = (x - x_mean) / x_scale
        f, G = jac(x.to(net_dt))  # (B, K), (B, K, P)
        f, G = f.to(dt), G.to(dt)
        mean = f + G @ ref
        cov = post_local.gradient_covariance(G, s2)
        if post.task == "classification":
            if logit_scale is not None:
                mean = mean * logit_scale
            return proba(mean, cov), mean, cov
        var = cov.diagonal(dim1=-2, dim2=-1)
        if y_scale is not None:
            mean = mean * y_scale + y_mean
            var = var * (y_scale * y_scale)
        return mean, var + (noise * (y_scale * y_scale) if y_scale is not None else noise), var

    return fn


def trace(fn, example: torch.Tensor) -> torch.fx.GraphModule:
    """Return `fn` traced to ATen ops with a symbolic batch size."""
    if example.shape[0] < 2:
        raise UnsupportedExportError("The trace example needs at least two samples.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # functorch's "no batching rule" performance notes
            return make_fx(fn, tracing_mode="symbolic", decomposition_table=decomposition_table(),
                           _allow_non_fake_inputs=True)(example)
    except NotImplementedError as exc:
        raise UnsupportedExportError(f"A layer of this model cannot be exported exactly: {exc}.") from exc
    except Exception as exc:  # noqa: BLE001 - tracing failures come in many types
        raise UnsupportedExportError(
            "The model could not be traced with a free batch size (data-dependent control flow or an "
            f"operation torch cannot trace): {type(exc).__name__}: {_first_line(exc)}"
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


class TracedPredictor(nn.Module):
    """nn.Module around the traced graph, so exporters see an ordinary module with one input."""

    def __init__(self, graph: torch.fx.GraphModule) -> None:
        super().__init__()
        self.graph_module = graph

    def forward(self, x: torch.Tensor):
        return self.graph_module(x)


def example_batch(X: torch.Tensor, size: int = TRACE_BATCH) -> torch.Tensor:
    """Return rows cycled from X for tracing: `size` of them, or more if `size` equals another dimension.

    Symbolic tracing gives equal input sizes one shared symbol ("duck shaping"), so a batch of 3
    images with 3 channels would tie the batch to the channel count and fix it at 3.
    """
    while size in X.shape[1:]:
        size += 1
    idx = torch.arange(size) % X.shape[0]
    return X[idx]

