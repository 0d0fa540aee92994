"""What a model is made of (layers, parameter counts, shapes) and a one-forward check against the data."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ShapeError
from ..params import parameter_layers
from .torchscript import TorchScriptModule

CHECK_ROWS = 2  # rows of the example input check_model runs; 2 so batch-coupled outputs show up
ROOT_LABEL = "(root)"  # how the table shows the top-level module (its name is "")
MAX_ERROR_CHARS = 300
LINEAR_RE = re.compile(r"mat1 and mat2 shapes cannot be multiplied \((\d+)x(\d+) and (\d+)x(\d+)\)")
CHANNELS_RE = re.compile(r"expected input\[[\d, ]+\] to have (\d+) channels, but got (\d+) channels")
CONV_DIMS_RE = re.compile(r"Expected (\d+)D \(unbatched\) or (\d+)D \(batched\) input to (\w+)")
NORM_SIZE_RE = re.compile(r"running_mean should contain (\d+) elements not (\d+)")
EXPORT_DIM_RE = re.compile(r"shape\[(\d+)\] to be equal to (\d+), but got (\d+)")
EXPORT_GUARD_RE = re.compile(r"size\(\)\[(\d+)\] == (\d+)")


@dataclass(frozen=True)
class LayerInfo:
    """One module that owns parameters directly."""

    name: str
    kind: str  # class name
    params: int  # scalars in the module's direct parameters
    trainable: int  # of those, with requires_grad


@dataclass(frozen=True)
class ModelSummary:
    """The layers with parameters, the total, and the input/output shapes seen on an example."""

    layers: tuple[LayerInfo, ...]
    total_params: int
    input_shape: tuple[int, ...] | None
    output_shape: tuple[int, ...] | None
    notes: tuple[str, ...] = ()
    trainable_params: int | None = None  # shared weights counted once; None: sum over the layers

    def format_table(self) -> str:
        """Return the summary as a fixed-width text table with totals at the bottom."""
        header = ("layer", "kind", "params", "trainable")
        rows = [
            (layer.name or ROOT_LABEL, layer.kind, f"{layer.params:,}", f"{layer.trainable:,}") for layer in self.layers
        ]
        trainable = self.trainable_params
        if trainable is None:
            trainable = sum(layer.trainable for layer in self.layers)
        total = ("total", "", f"{self.total_params:,}", f"{trainable:,}")
        widths = [max(len(r[i]) for r in [header, total, *rows]) for i in range(4)]

        def line(r: tuple[str, ...]) -> str:
            return f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:>{widths[3]}}".rstrip()

        rule = "-" * (sum(widths) + 6)
        out = [line(header), rule, *(line(r) for r in rows), rule, line(total)]
        if self.input_shape is not None or self.output_shape is not None:
            out.append(f"input {self.input_shape} -> output {self.output_shape}")
        out.extend(f"note: {n}" for n in self.notes)
        return "\n".join(out)


def _graph_kinds(module: nn.Module) -> dict[str, str]:
    # An exported program's module() keeps the hierarchy but not the classes (every submodule is a
    # plain Module); the graph's nn_module_stack metadata still names the original class.
    kinds: dict[str, str] = {}
    graph = getattr(module, "graph", None)
    for node in getattr(graph, "nodes", ()):
        for path, cls in (node.meta.get("nn_module_stack") or {}).values():
            kinds.setdefault(str(path), str(getattr(cls, "__name__", cls)).rsplit(".", 1)[-1])
    return kinds


def _kind(name: str, module: nn.Module, graph_kinds: dict[str, str]) -> str:
    if isinstance(module, TorchScriptModule):
        return module._get_name()
    original = getattr(module, "original_name", None)  # TorchScript submodules
    if isinstance(original, str):
        return original
    kind = type(module).__name__
    return graph_kinds.get(name, kind) if kind == "Module" else kind


def summarize(module: nn.Module, example_input: torch.Tensor | None = None) -> ModelSummary:
    """Return the model's layers with parameters, their counts and, given an example, the output shape."""
    modules = dict(module.named_modules())
    graph_kinds = _graph_kinds(module)
    layers = []
    for name in parameter_layers(module):
        direct = list(modules[name].parameters(recurse=False))
        layers.append(
            LayerInfo(
                name=name,
                kind=_kind(name, modules[name], graph_kinds),
                params=sum(p.numel() for p in direct),
                trainable=sum(p.numel() for p in direct if p.requires_grad),
            )
        )
    params = list(module.parameters())
    total = sum(p.numel() for p in params)
    notes = []
    if not params:
        notes.append("The model has no parameters: there is nothing to linearize.")
    shared = sum(layer.params for layer in layers) - total
    if shared > 0:
        notes.append(f"{shared:,} parameters are shared between layers; the total counts them once.")
    frozen = sum(p.numel() for p in params if not p.requires_grad)
    if frozen:
        notes.append(f"{frozen:,} parameters have requires_grad=False; NTK Studio can still linearize them.")
    input_shape = output_shape = None
    if example_input is not None:
        x = _as_batch(example_input)
        input_shape = tuple(x.shape)
        output_shape = tuple(_checked_output(module, x).shape)
    return ModelSummary(tuple(layers), total, input_shape, output_shape, tuple(notes), total - frozen)


def check_model(module: nn.Module, example_input: torch.Tensor) -> torch.Size:
    """Return the output shape of one eval-mode forward on the first rows of `example_input`."""
    x = _as_batch(example_input)[:CHECK_ROWS]
    return _checked_output(module, x).shape


def _as_batch(example_input: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(example_input):
        raise ShapeError(f"The example input must be a torch.Tensor; got {type(example_input).__name__}.")
    if example_input.dim() == 0 or example_input.shape[0] == 0:
        raise ShapeError(
            f"The example input has shape {tuple(example_input.shape)}; it needs a leading sample "
            "dimension with at least one row, e.g. shape (n, d)."
        )
    return example_input


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    # Flags are saved and restored so a check leaves the caller's module as it found it.
    mods = list(module.modules())
    if isinstance(module, TorchScriptModule):
        mods.append(module.script)
    saved = [(m, m.training) for m in mods]
    try:
        module.eval()
    except NotImplementedError:  # an exported program's module() straight from torch: flags only
        for m in mods:
            m.training = False
    try:
        yield
    finally:
        for m, flag in saved:
            m.training = flag


def _model_dtype_device(module: nn.Module) -> tuple[torch.dtype | None, torch.device | None]:
    for t in list(module.parameters()) + list(module.buffers()):
        if t.is_floating_point():
            return t.dtype, t.device
    return None, None


def _checked_output(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    dtype, device = _model_dtype_device(module)
    if x.is_floating_point() and dtype is not None:
        x = x.to(dtype=dtype, device=device)  # the check is about shapes; dtypes are the engine's job
    with _eval_mode(module), torch.no_grad():
        try:
            out = module(x)
        except Exception as exc:  # noqa: BLE001 - any failure here means the model cannot take this input
            raise ShapeError(_explain_forward_error(exc, tuple(x.shape[1:]))) from exc
    return _check_output(out, x.shape[0])


def _describe(value: object) -> str:
    if torch.is_tensor(value):
        return f"Tensor {tuple(value.shape)}"
    return type(value).__name__


def _check_output(out: object, rows: int) -> torch.Tensor:
    if isinstance(out, dict):
        keys = ", ".join(repr(k) for k in list(out)[:6])
        raise ShapeError(
            f"The model returned a dict (keys {keys}); NTK Studio needs one tensor of outputs. Wrap the "
            "model so forward returns the tensor you want to adapt, e.g. forward(x) = model(x)['logits']."
        )
    if isinstance(out, tuple | list):
        parts = ", ".join(_describe(v) for v in out[:4]) + (", …" if len(out) > 4 else "")
        raise ShapeError(
            f"The model returned a {type(out).__name__} of {len(out)} items ({parts}); NTK Studio needs one "
            "tensor of outputs. Wrap the model so forward returns the one you want to adapt, e.g. model(x)[0]."
        )
    if not torch.is_tensor(out):
        raise ShapeError(
            f"The model returned a {type(out).__name__}, not a tensor. Wrap the model so forward returns "
            "one tensor of outputs, one row per input row."
        )
    if out.dim() == 0 or out.shape[0] != rows:
        raise ShapeError(
            f"The model returned shape {tuple(out.shape)} for {rows} input rows; it must return one row of "
            "outputs per input row (does it average or sum over the batch?)."
        )
    if not (out.is_floating_point() or out.is_complex()):
        raise ShapeError(
            f"The model returns {out.dtype} values, which have no derivatives. Return the scores or "
            "logits (floating point) instead of labels or indices."
        )
    if not bool(torch.isfinite(out).all()):
        raise ShapeError(
            "The model's output contains NaN or infinity on the example rows. Check the input scaling "
            "(standardize the columns) and that the weights loaded correctly."
        )
    return out


def _explain_forward_error(exc: Exception, row_shape: tuple[int, ...]) -> str:
    """Return a message for a failed forward; `row_shape` is the shape of one input row."""
    text = str(exc)
    rows = f"each data row has shape {row_shape}"
    if m := LINEAR_RE.search(text):
        return (
            f"The model expects {m.group(3)} input features, the data has {m.group(2)}. "
            "Choose the feature columns the model was trained on."
        )
    if m := CHANNELS_RE.search(text):
        return f"The model expects {m.group(1)} input channels, the data has {m.group(2)} ({rows})."
    if m := CONV_DIMS_RE.search(text):
        return (
            f"The model's {m.group(3)} layer expects {m.group(2)}-D input (batch, channels, ...), but {rows}. "
            "Give the data the layout the model was trained on."
        )
    if m := NORM_SIZE_RE.search(text):
        return f"The model expects {m.group(1)} features at its normalization layer, the data gives {m.group(2)}."
    if m := EXPORT_DIM_RE.search(text) or EXPORT_GUARD_RE.search(text):
        dim, want = int(m.group(1)), int(m.group(2))
        have = row_shape[dim - 1] if 0 < dim <= len(row_shape) else "another size"
        return f"The exported model expects size {want} in input dimension {dim}, the data has {have} ({rows})."
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    # TorchScript errors put the original message after a TorchScript traceback: its last line.
    detail = (lines[-1] if lines else type(exc).__name__)[:MAX_ERROR_CHARS]
    return (
        f"The model could not run on the data ({rows}): {type(exc).__name__}: {detail}. Check that the "
        "data has the columns (or image size and channels) the model was trained on."
    )
