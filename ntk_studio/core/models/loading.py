"""Load a user's pretrained model: TorchScript, torch.export, state dicts (+ architecture), trusted pickles.

The file is read once into memory and never written; its SHA-256 is of exactly the bytes loaded, and
the format is detected from the content (the extension only has to be one a model file can have).
"""

from __future__ import annotations

import hashlib
import io
import pickle
import re
import struct
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ntk_studio.safe_io import check_sha256, read_regular

from ..errors import ModelLoadError, NTKStudioError, UntrustedPickleError
from .architecture import load_architecture, load_state_dict_strict, unwrap_checkpoint
from .exported import load_exported
from .torchscript import TorchScriptModule, load_torchscript

__all__ = ["LoadedModel", "load_architecture", "load_model"]

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")
TORCHSCRIPT_SUFFIXES = (".ts", ".jit", ".torchscript")
EXPORT_SUFFIXES = (".pt2",)
SAFETENSORS_SUFFIXES = (".safetensors",)
MODEL_SUFFIXES = TORCH_SUFFIXES + TORCHSCRIPT_SUFFIXES + EXPORT_SUFFIXES + SAFETENSORS_SUFFIXES
OTHER_FORMAT_HINTS = {
    ".onnx": "ONNX models carry no PyTorch autograd; load the PyTorch model it was exported from",
    ".h5": "this is a Keras/HDF5 file; NTK Studio needs a PyTorch model",
    ".keras": "this is a Keras file; NTK Studio needs a PyTorch model",
    ".pb": "this is a TensorFlow graph; NTK Studio needs a PyTorch model",
    ".tflite": "this is a TensorFlow Lite model; NTK Studio needs a PyTorch model",
    ".csv": "this looks like data; load it as the dataset, not as the model",
    ".npz": "this looks like data; load it as the dataset, not as the model",
    ".npy": "this looks like data; load it as the dataset, not as the model",
}
MAX_MODEL_BYTES = 32 * 1024**3  # read whole into memory; a bigger "model" is a mistake (or /dev/zero)
SAFETENSORS_HEADER_BYTES = 8  # little-endian u64 length of the JSON header that follows
PICKLE_PROTO = 0x80  # first byte of a binary pickle (torch.save's legacy, non-zip format)
ZIP_MAGIC = b"PK"
FORMAT_LABELS = {
    "torchscript": "a TorchScript archive",
    "exported": "a torch.export program",
    "torch_zip": "a torch.save file",
    "torch_legacy": "a legacy torch.save file",
    "safetensors": "a safetensors file",
}
EXPECTED_BY_SUFFIX = {
    **{s: ("torch_zip", "torch_legacy", "torchscript") for s in TORCH_SUFFIXES},
    **{s: ("torchscript",) for s in TORCHSCRIPT_SUFFIXES},
    **{s: ("exported",) for s in EXPORT_SUFFIXES},
    **{s: ("safetensors",) for s in SAFETENSORS_SUFFIXES},
}
# torch's weights_only unpickler names the refused global in one of two wordings (a blocked module,
# such as os/posix/subprocess, gets the second); either way the file needs full unpickling.
UNSUPPORTED_GLOBAL_RE = re.compile(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)")
MODE_SENSITIVE = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)
MODE_SENSITIVE_SCRIPT_NAMES = ("BatchNorm", "Dropout")


@dataclass(frozen=True)
class LoadedModel:
    """A loaded model in eval mode, where it came from, and what was done to it."""

    module: nn.Module
    path: Path | None
    format: str  # "torchscript" | "exported" | "state_dict" | "safetensors" | "pickle"
    sha256: str
    notes: tuple[str, ...] = ()


def _read(path: Path) -> bytes:
    if not path.exists():
        raise ModelLoadError(f"No model file at {path}. Check the path.")
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.suffix.lower() in MODEL_SUFFIXES)[:5]
        hint = f" Model files in it: {', '.join(inside)}." if inside else ""
        raise ModelLoadError(f"{path} is a folder; choose the model file inside it.{hint}")
    suffix = path.suffix.lower()
    if suffix not in MODEL_SUFFIXES:
        why = OTHER_FORMAT_HINTS.get(suffix, f"{suffix or 'no extension'} is not a model file extension")
        raise ModelLoadError(
            f"Cannot load {path.name} as a model: {why}. NTK Studio reads TorchScript and torch.save files "
            "(.pt, .pth, .ts), torch.export programs (.pt2) and safetensors weights (.safetensors)."
        )
    data = read_regular(path, ModelLoadError, "model file", MAX_MODEL_BYTES)  # regular files only, bounded
    if not data:
        raise ModelLoadError(f"{path.name} is empty (0 bytes); the save probably failed. Save the model again.")
    return data


def _zip_kind(path: Path, data: bytes) -> str | None:
    """Return the format of a zip archive's content, or None; raise if the archive is damaged."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            # torch.save/export/jit archives put everything under one top folder named after the file.
            names = [n.split("/", 1)[1] if "/" in n else n for n in archive.namelist()]
            # PyTorch's own zip reader does not check CRCs: a flipped byte in the weights would load
            # silently as a different model. testzip reads every entry and checks its CRC-32.
            bad_entry = archive.testzip()
    except Exception as exc:  # noqa: BLE001 - zipfile raises many types for damaged archives
        raise _damaged(path, f"{type(exc).__name__}: {exc}") from exc
    if bad_entry is not None:
        raise _damaged(path, f"the checksum of {bad_entry} does not match its content")
    if any(n == "archive_format" or n.startswith("models/") for n in names) or (
        "serialized_exported_program.json" in names
    ):
        return "exported"
    if any(n.startswith("code/") for n in names) or "constants.pkl" in names:
        return "torchscript"
    if "data.pkl" in names:
        return "torch_zip"
    return None


def _damaged(path: Path, detail: str) -> ModelLoadError:
    return ModelLoadError(
        f"{path.name} is a damaged zip archive ({detail[:200]}). Copy or download it again, or save the model again."
    )


def _sniff(path: Path, data: bytes) -> str | None:
    """Return the format the bytes hold, or None."""
    if zipfile.is_zipfile(io.BytesIO(data)):
        return _zip_kind(path, data)
    if len(data) > SAFETENSORS_HEADER_BYTES and data[SAFETENSORS_HEADER_BYTES : SAFETENSORS_HEADER_BYTES + 1] == b"{":
        (header_len,) = struct.unpack("<Q", data[:SAFETENSORS_HEADER_BYTES])
        if header_len <= len(data) - SAFETENSORS_HEADER_BYTES:
            return "safetensors"
    if data[0] == PICKLE_PROTO:
        return "torch_legacy"
    return None


def _unreadable(path: Path, data: bytes) -> ModelLoadError:
    if zipfile.is_zipfile(io.BytesIO(data)):
        return ModelLoadError(
            f"{path.name} is a zip archive but not a PyTorch model (it has no data.pkl, code/ or models/ "
            "inside). Choose the model file itself, or save the model with torch.export.save or torch.save."
        )
    if data.startswith(ZIP_MAGIC):
        return ModelLoadError(
            f"{path.name} starts like a PyTorch zip archive but is truncated or damaged (its directory is "
            "missing or unreadable). Copy or download it again, or save the model again."
        )
    if data[SAFETENSORS_HEADER_BYTES : SAFETENSORS_HEADER_BYTES + 1] == b"{":
        return ModelLoadError(f"{path.name} looks like a truncated safetensors file. Copy or save it again.")
    return ModelLoadError(
        f"{path.name} is not a PyTorch or safetensors model file (the content matches no supported format). "
        "Save the model with torch.export.save, torch.save(model.state_dict(), ...) or safetensors."
    )


def _torch_load(data: bytes, trust_pickle: bool) -> tuple[object, bool]:
    """Return (the unpickled object, whether full unpickling was needed)."""
    try:
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu"), False
    except pickle.UnpicklingError as exc:
        found = UNSUPPORTED_GLOBAL_RE.search(str(exc))
        if found is None:
            raise
        if not trust_pickle:
            raise UntrustedPickleError(
                f"This file is a full Python pickle (it refers to {found.group(1)}), most likely a whole "
                "model saved with torch.save(model). Unpickling runs arbitrary code from the file, so it is "
                "refused by default. If you trust where the file came from, pass trust_pickle=True (CLI: "
                "--trust-pickle). Safer: re-save it as a state dict, torch.save(model.state_dict(), "
                "'weights.pt'), and give its architecture as 'file.py:factory', or export it with torch.export."
            ) from None
    try:
        return torch.load(io.BytesIO(data), weights_only=False, map_location="cpu"), True
    except (AttributeError, ImportError) as exc:
        # A pickled module stores only the name of its class; the class's code must be importable here.
        raise ModelLoadError(
            f"The pickled model needs code that cannot be found here ({exc}). Make the module that defines "
            "the model class importable, or better, re-save the weights with torch.save(model.state_dict(), "
            "'weights.pt') and give the architecture as 'file.py:factory'."
        ) from exc


def _from_state(state: object, arch: str | None, path: Path) -> tuple[nn.Module, list[str]]:
    weights, notes = unwrap_checkpoint(state)
    if arch is None:
        names = list(weights)
        shown = ", ".join(names[:4]) + (" …" if len(names) > 4 else "")
        raise ModelLoadError(
            f"{path.name} holds only weights (a state dict of {len(names)} tensors: {shown}); it needs its "
            "architecture too. Pass arch='path/to/model.py:factory' (CLI: --arch), where factory() returns "
            "the nn.Module the weights were saved from."
        )
    module = load_architecture(arch)
    notes += load_state_dict_strict(module, weights, arch)
    return module, notes


def _load_by_format(
    kind: str, data: bytes, path: Path, arch: str | None, trust: bool
) -> tuple[nn.Module, str, list[str]]:
    if kind == "torchscript":
        module, notes = load_torchscript(data)
        return module, "torchscript", notes
    if kind == "exported":
        module, notes = load_exported(data, trust)
        return module, "exported", notes
    if kind == "safetensors":
        from safetensors.torch import load as load_safetensors

        module, notes = _from_state(load_safetensors(data), arch, path)
        return module, "safetensors", notes
    obj, full_pickle = _torch_load(data, trust)
    if isinstance(obj, nn.DataParallel | nn.parallel.DistributedDataParallel):
        obj = obj.module
    if isinstance(obj, nn.Module):
        return obj, "pickle", ["Loaded a pickled model because trust_pickle was given."]
    module, notes = _from_state(obj, arch, path)
    if full_pickle:
        notes.append("The weights needed full unpickling (allowed by trust_pickle).")
    return module, "state_dict", notes


def _is_mode_sensitive(module: nn.Module) -> bool:
    if isinstance(module, MODE_SENSITIVE):
        return True
    name = getattr(module, "original_name", "")  # TorchScript submodules keep their class name here
    return isinstance(name, str) and name.startswith(MODE_SENSITIVE_SCRIPT_NAMES)


def _to_eval(module: nn.Module) -> list[str]:
    """Put the module in eval mode; return a note if that changed BatchNorm or dropout behaviour."""
    root = module.script if isinstance(module, TorchScriptModule) else module
    sensitive = sorted(
        {getattr(m, "original_name", type(m).__name__) for m in root.modules() if m.training and _is_mode_sensitive(m)}
    )
    module.eval()
    if not sensitive:
        return []
    return [
        f"The model was in train mode with {', '.join(sensitive)}; switched to eval: BatchNorm uses its "
        "running statistics and dropout is off."
    ]


def load_model(path: str | Path, arch: str | None = None, trust_pickle: bool = False,
               expected_sha256: str | None = None) -> LoadedModel:
    """Return the model in `path` loaded in eval mode, with its format, SHA-256 and notes.

    With ``expected_sha256`` (e.g. the hash a project recorded) the bytes read are hashed and compared
    before anything parses them: a file swapped since it was checked is a ModelLoadError, never loaded.
    """
    path = Path(path).expanduser()
    data = _read(path)
    digest = hashlib.sha256(data).hexdigest()
    check_sha256(digest, expected_sha256, path, ModelLoadError, "model file")
    kind = _sniff(path, data)
    if kind is None:
        raise _unreadable(path, data)
    notes: list[str] = []
    if kind not in EXPECTED_BY_SUFFIX[path.suffix.lower()]:
        notes.append(f"{path.name} is named like another format but holds {FORMAT_LABELS[kind]}; loaded it as that.")
    # Warnings PyTorch raises while loading (deprecations, legacy formats) become notes, not output.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            module, fmt, format_notes = _load_by_format(kind, data, path, arch, trust_pickle)
        except NTKStudioError:
            raise
        except Exception as exc:  # noqa: BLE001 - every other failure of the backends is a bad file
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise ModelLoadError(
                f"{path.name} looks like {FORMAT_LABELS[kind]} but could not be loaded "
                f"({type(exc).__name__}: {first_line}). The file may be truncated or damaged, or written by "
                "an incompatible PyTorch version: save it again."
            ) from exc
    notes += format_notes
    if arch is not None and fmt in ("torchscript", "exported", "pickle"):
        notes.append(f"The architecture {arch!r} was not used: the file contains its own model.")
    if not any(True for _ in module.parameters()):
        raise ModelLoadError(
            f"The model in {path.name} has no parameters, so there is nothing to linearize. Save the "
            "model with its weights as parameters (not constants), or a state dict with its architecture."
        )
    notes += _to_eval(module)
    seen = {str(w.message).strip().splitlines()[0] for w in caught if str(w.message).strip()}
    if fmt == "torchscript":  # the TorchScript note above already says it is deprecated
        seen = {m for m in seen if "torch.jit" not in m}
    notes += [f"PyTorch warned while loading: {m}" for m in sorted(seen)]
    return LoadedModel(module=module, path=path.resolve(), format=fmt, sha256=digest, notes=tuple(notes))
