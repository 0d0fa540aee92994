"""Backward ops written with forward ops, so a per-sample Jacobian program exports to ONNX.

The exported predictor evaluates J(x) inside the graph (reverse mode, one vjp per output). ONNX
has no operators for ``convolution_backward`` or the pooling backward ops, and torch's
decomposition tables leave them alone, so :func:`decomposition_table` supplies our own: each is
the adjoint of a linear map, written with ops ONNX has (transposed convolution, im2col/col2im,
scatter-add, broadcasting). Cases they do not cover raise :class:`NotImplementedError`, which the
exporter turns into :class:`~ntk_studio.core.errors.UnsupportedExportError`.
"""

from __future__ import annotations

import torch
from torch._decomp import core_aten_decompositions

aten = torch.ops.aten


def _pair(v) -> tuple[int, int]:
    v = list(v)
    return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])


def convolution_backward(grad_out, x, weight, bias_sizes, stride, padding, dilation, transposed,
                         output_padding, groups, output_mask):
    """Return (grad input, grad weight, grad bias) of a 2-D convolution, entries None where unmasked."""
    if transposed or x.dim() != 4 or weight.dim() != 4:
        raise NotImplementedError("only 2-D, non-transposed convolutions are exported")
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    kh, kw = weight.shape[-2:]
    gi = gw = gb = None
    if output_mask[0]:
        # The adjoint of a convolution in its input is the transposed convolution with the same
        # weight; output_padding restores rows the forward stride dropped.
        extra = []
        for d, size in enumerate(x.shape[-2:]):
            k = (kh, kw)[d]
            covered = (grad_out.shape[2 + d] - 1) * stride[d] - 2 * padding[d] + dilation[d] * (k - 1) + 1
            extra.append(size - covered)
        gi = aten.convolution(grad_out, weight, None, stride, padding, dilation, True, extra, groups)
    if output_mask[1]:
        n, c_in = x.shape[:2]
        c_out = grad_out.shape[1]
        cols = torch.nn.functional.unfold(x, (kh, kw), dilation=dilation, padding=padding, stride=stride)
        cols = cols.reshape(n, groups, (c_in // groups) * kh * kw, -1)
        g = grad_out.reshape(n, groups, c_out // groups, -1)
        gw = torch.einsum("bgol,bgcl->goc", g, cols).reshape(weight.shape)
    if output_mask[2]:
        gb = grad_out.sum(dim=(0, 2, 3))
    return gi, gw, gb


def max_pool2d_backward(grad_out, x, kernel_size, stride, padding, dilation, ceil_mode, indices):
    """Return the gradient of max pooling: each output's gradient added at its argmax."""
    lead = x.shape[:-2]
    flat = x.shape[-2] * x.shape[-1]
    g = grad_out.reshape(*lead, -1)
    idx = indices.reshape(*lead, -1)
    out = torch.zeros(*lead, flat, dtype=grad_out.dtype, device=grad_out.device)
    return out.scatter_add(-1, idx, g).reshape(x.shape)


def avg_pool2d_backward(grad_out, x, kernel_size, stride, padding, ceil_mode, count_include_pad,
                        divisor_override):
    """Return the gradient of average pooling (fixed divisor): col2im of the spread output gradient."""
    kh, kw = _pair(kernel_size)
    stride = _pair(stride) if len(stride) else (kh, kw)
    padding = _pair(padding)
    if ceil_mode:
        raise NotImplementedError("average pooling with ceil_mode=True is not exported")
    if divisor_override:
        divisor = divisor_override
    elif count_include_pad or padding == (0, 0):
        divisor = kh * kw
    else:
        raise NotImplementedError("average pooling with padding and count_include_pad=False is not exported")
    unbatched = x.dim() == 3
    g4 = grad_out.unsqueeze(0) if unbatched else grad_out
    n, c = g4.shape[:2]
    cols = (g4.reshape(n, c, 1, -1) / divisor).expand(n, c, kh * kw, g4.shape[2] * g4.shape[3])
    gi = torch.nn.functional.fold(cols.reshape(n, c * kh * kw, -1), tuple(x.shape[-2:]), (kh, kw),
                                  padding=padding, stride=stride)
    return gi[0] if unbatched else gi


def adaptive_avg_pool2d_backward(grad_out, x):
    """Return the gradient of adaptive average pooling when the output size divides the input size."""
    H, W = x.shape[-2:]
    oh, ow = grad_out.shape[-2:]
    if H % oh or W % ow:
        raise NotImplementedError("adaptive average pooling exports only when the output size divides the input")
    kh, kw = H // oh, W // ow
    lead = grad_out.shape[:-2]
    g = (grad_out / (kh * kw)).reshape(*lead, oh, 1, ow, 1).expand(*lead, oh, kh, ow, kw)
    return g.reshape(x.shape)


def decomposition_table() -> dict:
    """Return torch's core-ATen decompositions plus ours for the backward ops ONNX lacks."""
    table = dict(core_aten_decompositions())
    table[aten.convolution_backward.default] = convolution_backward
    table[aten.max_pool2d_with_indices_backward.default] = max_pool2d_backward
    table[aten.avg_pool2d_backward.default] = avg_pool2d_backward
    table[aten._adaptive_avg_pool2d_backward.default] = adaptive_avg_pool2d_backward
    return table
