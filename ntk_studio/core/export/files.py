"""Writing the traced predictor as ONNX (with metadata) or as a torch.export program, and reading metadata back."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from pathlib import Path

import torch

from ntk_studio.safe_io import read_regular, temp_beside

from ..errors import ExportError, UnsupportedExportError
from .program import TracedPredictor, _first_line

ONNX_OPSET = 18
MAX_ONNX_BYTES = 2 * 1024**3  # protobuf's own limit for one ONNX file
METADATA_PREFIX = "ntk_studio."
NATIVE_METADATA_FILE = "ntk_studio.json"
_NOISY_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "onnxscript", "torch.fx.experimental.symbolic_shapes")


class MissingKernelError(ExportError):
    """onnxruntime has no CPU kernel for an operator at this precision (e.g. float64 Conv)."""


@contextlib.contextmanager
def _quiet():
    """Silence the exporters' warnings and log chatter (e.g. 'torchvision is not installed')."""
    levels = {name: logging.getLogger(name).level for name in _NOISY_LOGGERS}
    try:
        for name in _NOISY_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        with warnings.catch_warnings(), open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def _atomic_write(path: Path):
    """Yield a temporary path next to `path` to write; on success it replaces `path` (os.replace, atomic).

    Same file system, so a kill leaves the previous file intact; an OSError names the user's path,
    never the temporary file, and the temporary file never outlives the block.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = temp_beside(path, suffix=path.suffix)  # the user's umask, not mkstemp's 0600
        os.close(fd)
    except OSError as exc:
        raise ExportError(f"Cannot write {path}: {exc.strerror or exc}.") from None
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        raise ExportError(f"Cannot write {path}: {exc.strerror or exc}.") from None
    finally:
        tmp.unlink(missing_ok=True)


def export_program(module: TracedPredictor, example: torch.Tensor) -> torch.export.ExportedProgram:
    """Return the torch.export program of `module` with a dynamic batch dimension."""
    batch = torch.export.Dim("batch", min=1)
    try:
        with _quiet():
            return torch.export.export(module, (example,), dynamic_shapes={"x": {0: batch}}, strict=False)
    except Exception as exc:  # noqa: BLE001 - torch.export fails in many ways on unsupported code
        raise UnsupportedExportError(
            f"torch.export could not capture the predictor with a free batch size: {type(exc).__name__}: "
            f"{_first_line(exc)}"
        ) from exc


def write_onnx(program: torch.export.ExportedProgram, path: Path, output_names: tuple[str, ...],
               metadata: dict[str, str], doc: str) -> int:
    """Write the program as ONNX (atomically) with metadata; return the file size in bytes."""
    import onnx

    with _atomic_write(path) as tmp:
        try:
            with _quiet():
                onnx_program = torch.onnx.export(
                    program, input_names=["x"], output_names=list(output_names), opset_version=ONNX_OPSET,
                    dynamo=True, optimize=True, verify=False,
                )
        except Exception as exc:  # noqa: BLE001 - conversion errors name the missing operator
            raise UnsupportedExportError(
                f"An operation of this model has no ONNX equivalent: {type(exc).__name__}: {_missing_op(exc)}"
            ) from exc
        proto = onnx_program.model_proto
        proto.doc_string = doc
        del proto.metadata_props[:]
        for key, value in metadata.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = METADATA_PREFIX + key, value
        onnx.checker.check_model(proto, full_check=False)
        onnx.save_model(proto, str(tmp))
    return path.stat().st_size


def _missing_op(exc: BaseException) -> str:
    for line in str(exc).splitlines():
        if "No ONNX function found" in line or "Error when translating" in line:
            return line.strip()[:300]
    return _first_line(exc)


def write_native(program: torch.export.ExportedProgram, path: Path, metadata: dict[str, str]) -> int:
    """Write the torch.export program as .pt2 (atomically) with metadata; return the size in bytes."""
    with _atomic_write(path) as tmp, _quiet():
        torch.export.save(program, str(tmp), extra_files={NATIVE_METADATA_FILE: json.dumps(metadata)})
    return path.stat().st_size


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """Return the NTK Studio metadata of an exported ONNX file (keys without the prefix)."""
    import onnx

    data = read_regular(path, ExportError, "ONNX file", MAX_ONNX_BYTES)  # a FIFO or /dev/zero is refused
    try:
        proto = onnx.load_model_from_string(data)
    except Exception as exc:  # noqa: BLE001 - protobuf decode errors
        raise ExportError(f"{path} is not a readable ONNX file: {_first_line(exc)}") from exc
    return {p.key[len(METADATA_PREFIX):]: p.value for p in proto.metadata_props if p.key.startswith(METADATA_PREFIX)}


def onnx_session(path: str | Path, threads: int = 1):
    """Return an onnxruntime CPU session for `path` with `threads` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    data = read_regular(path, ExportError, "ONNX file", MAX_ONNX_BYTES)
    try:
        return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        if "NOT_IMPLEMENTED" in str(exc):
            raise MissingKernelError(f"onnxruntime has no kernel for a node of {path}: {_first_line(exc)}") from exc
        raise ExportError(f"onnxruntime cannot load {path}: {_first_line(exc)}") from exc
