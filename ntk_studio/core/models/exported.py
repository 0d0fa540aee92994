"""torch.export programs (.pt2): a pickle check before loading, and checks that the engine can use them."""

from __future__ import annotations

import io
import json
import types
import zipfile

import torch
from torch import nn

from ..errors import ModelLoadError, UntrustedPickleError

# torch.export.load unpickles some payloads with weights_only=False (pickled weights and constants,
# sample inputs as a fallback) and loads AOTInductor packages as native code. These are the archive
# places where that happens, relative to the archive's top folder.
NATIVE_CODE_DIRS = ("data/aotinductor/", "data/executorch/", "data/mtia")
PICKLE_CONFIG_SUFFIXES = ("_weights_config.json", "_constants_config.json")
PYTHON_PICKLE_PREFIXES = ("custom_obj_", "opaque_obj_")  # unpickled by pickle.loads / torchbind
TRAIN_ARG_NAMES = ("training", "train")  # the schema argument that selects train behaviour
DYNAMIC_BATCH_HELP = (
    "Export with a dynamic batch dimension and an example batch of at least 2 rows: "
    "torch.export.export(model.eval(), (x,), dynamic_shapes={'x': {0: torch.export.Dim('batch')}}) "
    "(use the name of forward's argument instead of 'x')."
)


def _inner_name(name: str) -> str:
    # torch.save/export archives put everything under one top folder named after the file.
    return name.split("/", 1)[1] if "/" in name else name


def _loads_weights_only(payload: bytes) -> bool:
    try:
        torch.load(io.BytesIO(payload), weights_only=True, map_location="cpu")
    except Exception:  # noqa: BLE001 - any failure means the payload needs more than tensors
        return False
    return True


def pickled_payloads(archive: zipfile.ZipFile) -> list[str]:
    """Return the archive entries that torch.export.load would unpickle or run and that are not plain tensors."""
    names = archive.namelist()
    inner = {_inner_name(n): n for n in names}
    risky: list[str] = []
    for rel, full in inner.items():
        if rel.startswith(NATIVE_CODE_DIRS):
            risky.append(rel)
        elif rel.endswith(".pt") and not _loads_weights_only(archive.read(full)):
            risky.append(rel)
    for rel, full in inner.items():
        if not rel.endswith(PICKLE_CONFIG_SUFFIXES):
            continue
        folder = rel.rsplit("/", 1)[0] + "/"
        try:
            config = json.loads(archive.read(full))["config"]
            entries = list(config.values())
        except (ValueError, KeyError, TypeError, AttributeError):
            risky.append(rel)  # a config we cannot read might point anywhere: treat it as unsafe
            continue
        for entry in entries:
            if not isinstance(entry, dict) or not entry.get("use_pickle"):
                continue
            target = folder + str(entry.get("path_name", ""))
            if str(entry.get("path_name", "")).startswith(PYTHON_PICKLE_PREFIXES) or target not in inner:
                risky.append(target)
            elif not _loads_weights_only(archive.read(inner[target])):
                risky.append(target)
    return sorted(set(risky))


def _user_input_nodes(ep: torch.export.ExportedProgram) -> list[torch.fx.Node]:
    wanted = set(ep.graph_signature.user_inputs)
    return [n for n in ep.graph.nodes if n.op == "placeholder" and n.name in wanted]


def _train_mode_ops(ep: torch.export.ExportedProgram) -> list[str]:
    found = set()
    for node in ep.graph.nodes:
        schema = getattr(node.target, "_schema", None)
        if node.op != "call_function" or schema is None:
            continue
        for index, arg in enumerate(schema.arguments):
            if arg.name not in TRAIN_ARG_NAMES:
                continue
            value = node.args[index] if index < len(node.args) else node.kwargs.get(arg.name)
            if value is True:
                found.add(str(getattr(node.target, "__name__", node.target)).split(".")[0])
    return sorted(found)


def check_program(ep: torch.export.ExportedProgram) -> None:
    """Raise ModelLoadError unless the program takes one batched tensor and runs in eval behaviour."""
    inputs = _user_input_nodes(ep)
    if len(inputs) != 1:
        raise ModelLoadError(
            f"The exported program takes {len(inputs)} inputs; NTK Studio calls the model with one tensor "
            "(a batch of rows). Wrap the model so forward(x) takes a single tensor, then export again."
        )
    value = inputs[0].meta.get("val")
    shape = getattr(value, "shape", None)
    if shape is None or len(shape) == 0:
        raise ModelLoadError(f"The exported program's input is not a batched tensor. {DYNAMIC_BATCH_HELP}")
    if isinstance(shape[0], int):
        raise ModelLoadError(
            f"The program was exported for batches of exactly {shape[0]} rows, but NTK Studio evaluates "
            f"the model on batches of any size. {DYNAMIC_BATCH_HELP}"
        )
    train_ops = _train_mode_ops(ep)
    if train_ops or ep.graph_signature.buffers_to_mutate:
        what = ", ".join(train_ops) if train_ops else "buffer updates"
        raise ModelLoadError(
            f"The program was exported in train mode ({what}): it would use batch statistics and random "
            "dropout, and an exported graph cannot be switched to eval. Call model.eval() before "
            "torch.export.export and save again."
        )


def _set_mode(self: nn.Module, mode: bool = True) -> nn.Module:
    # Exported graphs have train/eval behaviour fixed at export (checked to be eval), so the flag
    # changes nothing; accept it so that code calling model.eval() (the engine does) works.
    return nn.Module.train(self, mode)


def load_exported(data: bytes, trust_pickle: bool) -> tuple[nn.Module, list[str]]:
    """Return (the program's module, notes) from .pt2 archive bytes, refusing hidden pickles unless trusted."""
    notes: list[str] = []
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        risky = pickled_payloads(archive)
    if risky and not trust_pickle:
        raise UntrustedPickleError(
            "This torch.export archive contains payloads that torch.export.load would unpickle or run as "
            f"native code ({', '.join(risky[:5])}); unpickling can run arbitrary code. Load it only if you "
            "trust where it came from: pass trust_pickle=True (CLI: --trust-pickle). Or export again from "
            "a plain model (tensors only), or save a state dict."
        )
    if risky:
        notes.append(f"Loaded with trust_pickle: the archive unpickles {', '.join(risky[:5])}.")
    ep = torch.export.load(io.BytesIO(data))
    check_program(ep)
    module = ep.module()
    # ExportedProgram.module() installs train()/eval() that raise NotImplementedError.
    module.train = types.MethodType(_set_mode, module)
    module.eval = types.MethodType(lambda self: _set_mode(self, False), module)
    return module, notes
