"""`ntk-studio-cli predict`: run an exported ONNX file with onnxruntime on a table, arrays or images."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..output import write_json

BATCH_ROWS = 1024  # rows per onnxruntime call: bounds the (batch, K, P) Jacobian inside the graph
MAX_SAMPLE_ELEMENTS = 100_000_000  # one input row; the metadata of a real export is far below this
MAX_DIM = 1_000_000
MAX_LISTED_ROWS = 5
DTYPES = ("float32", "float64")


def add_parser(sub) -> None:
    """Register the predict subcommand."""
    p = sub.add_parser("predict", help="predict with an exported ONNX file (onnxruntime only)")
    p.add_argument("--onnx", type=Path, required=True, help="a file written by `ntk-studio-cli export`")
    p.add_argument("--data", type=Path, required=True, help="CSV/TSV (feature columns by name), .npy/.npz (X), or an image folder")
    p.add_argument("--features", nargs="+", help="table columns to use (default: the names stored in the file)")
    p.add_argument("--json", type=Path, help="write every output per row to this JSON file")
    p.set_defaults(run=run)


def _features(args, meta: dict, shape: list):
    """Return the input rows as a float64 array, (n, ...), in raw units."""
    from ntk_studio.core.data import load_image_folder
    from ntk_studio.core.data.tabular import SUPPORTED_EXTENSIONS, load_feature_columns
    from ntk_studio.core.errors import DataLoadError

    path = args.data
    if path.is_dir():
        if len(shape) != 4:
            raise DataLoadError(f"{args.onnx.name} takes inputs of shape {shape}, not images.")
        return load_image_folder(path, size=tuple(shape[2:]), channels=shape[1]).X.numpy()
    suffix = path.suffix.lower()
    if suffix in SUPPORTED_EXTENSIONS:
        names = args.features or json.loads(meta.get("feature_names", "null"))  # checked by input_spec
        if not names:
            raise DataLoadError("The file stores no feature names: pass --features COL ... in the model's order.")
        return load_feature_columns(path, names)
    if suffix in (".npy", ".npz"):
        return _read_arrays(path)
    raise DataLoadError(f"{path.name}: use a CSV/TSV table, .npy/.npz arrays or an image folder.")


def _read_arrays(path):
    """Return X from a .npy file or the 'X' array of a .npz, as a float64 array; DataLoadError otherwise."""
    import io
    import zipfile

    import numpy as np

    from ntk_studio.core.data._common import MAX_DATA_FILE_BYTES
    from ntk_studio.core.errors import DataLoadError
    from ntk_studio.safe_io import read_regular

    data = read_regular(path, DataLoadError, "array file", MAX_DATA_FILE_BYTES)
    try:
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                if "X" not in loaded.files:
                    raise DataLoadError(f"{path.name} has no array named 'X' (arrays: {', '.join(loaded.files) or 'none'}).")
                loaded = loaded["X"]
    except DataLoadError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, RecursionError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        hint = " Object arrays need pickle, which is refused: save plain numbers." if "pickle" in first else ""
        raise DataLoadError(f"Cannot read {path.name}: {first}.{hint} Save X with numpy.save/numpy.savez.") from None
    except Exception as exc:  # noqa: BLE001 - numpy and zlib raise many types for damaged files
        raise DataLoadError(f"{path.name} is damaged ({type(exc).__name__}); save X again with numpy.savez.") from None
    return loaded


def check_rows(X, source: str):
    """Return ``X`` as float64 after refusing text, complex, empty and non-finite input by name."""
    import numpy as np

    from ntk_studio.core.errors import DataLoadError

    X = np.asarray(X)
    if X.dtype.kind == "c":
        raise DataLoadError(f"{source} holds complex numbers; the model takes real inputs. Pass the real part "
                            "(or real and imaginary parts as separate features).")
    if X.dtype.kind not in "biuf":
        raise DataLoadError(f"{source} holds {X.dtype} values, not numbers. Save the inputs as a numeric array.")
    if X.ndim == 0 or X.shape[0] == 0 or X.size == 0:
        raise DataLoadError(f"{source} holds no rows (shape {X.shape}). Give at least one input row.")
    X = X.astype(np.float64, copy=False)
    bad = np.flatnonzero(~np.isfinite(X.reshape(len(X), -1)).all(axis=1))
    if len(bad):
        shown = ", ".join(str(int(i)) for i in bad[:MAX_LISTED_ROWS]) + (" …" if len(bad) > MAX_LISTED_ROWS else "")
        raise DataLoadError(f"{source} has NaN or infinite values in {len(bad)} row(s) (rows {shown}, counted "
                            "from 0). Replace them with finite numbers or remove those rows.")
    return X


def input_spec(meta: dict, onnx_name: str) -> tuple[list[int], str]:
    """Return (input shape with the batch first, dtype) from the file's metadata, checked; ExportError if tampered."""
    import math

    from ntk_studio.core.errors import ExportError

    def bad(what: str) -> ExportError:
        return ExportError(f"{onnx_name} has damaged NTK Studio metadata ({what}); export the model again.")

    try:
        spec = json.loads(meta["input"])
    except (KeyError, ValueError, RecursionError):
        raise bad("ntk_studio.input is not valid JSON") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("shape"), list) or spec.get("dtype") not in DTYPES:
        raise bad("ntk_studio.input needs a 'shape' list and a 'dtype' of float32/float64")
    shape = spec["shape"]
    dims = shape[1:]
    if not 1 <= len(dims) <= 3 or not all(isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= MAX_DIM
                                          for d in dims):
        raise bad(f"input shape {shape!r:.80} is not a batch plus 1 to 3 positive sizes")
    if math.prod(dims) > MAX_SAMPLE_ELEMENTS:
        raise bad(f"input shape {shape!r:.80} is larger than any model input")
    for key in ("feature_names", "class_names"):
        if key in meta:
            try:
                names = json.loads(meta[key])
            except (ValueError, RecursionError):
                raise bad(f"ntk_studio.{key} is not valid JSON") from None
            if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
                raise bad(f"ntk_studio.{key} must be a list of names")
    return shape, spec["dtype"]


def run(args: argparse.Namespace) -> int:
    """Predict every row; print a summary and write the outputs; return the exit code."""
    import numpy as np

    from ntk_studio.core.errors import DataLoadError
    from ntk_studio.core.export import onnx_session, read_onnx_metadata

    meta = read_onnx_metadata(args.onnx)
    if "task" not in meta:
        raise DataLoadError(f"{args.onnx} was not written by NTK Studio (no ntk_studio.* metadata).")
    shape, dtype_name = input_spec(meta, args.onnx.name)
    X = check_rows(_features(args, meta, shape), str(args.data))
    expected = [int(d) for d in shape[1:]]
    if list(X.shape[1:]) != expected:
        raise DataLoadError(f"The data has rows of shape {list(X.shape[1:])}; {args.onnx.name} expects {expected}.")
    session = onnx_session(args.onnx)
    names = [o.name for o in session.get_outputs()]
    dtype = np.float64 if dtype_name == "float64" else np.float32
    parts = [session.run(names, {"x": X[i:i + BATCH_ROWS].astype(dtype)}) for i in range(0, len(X), BATCH_ROWS)]
    outputs = {name: np.concatenate([p[k] for p in parts]) for k, name in enumerate(names)}
    print(f"{len(X)} rows predicted with {args.onnx.name} ({meta['task']})")
    for i in range(min(3, len(X))):
        row = ", ".join(f"{n}={outputs[n][i].ravel().round(4).tolist()}" for n in names if outputs[n][i].size <= 8)
        print(f"  row {i}: {row}")
    if args.json:
        classes = json.loads(meta.get("class_names", "null"))
        write_json(args.json, {"onnx": str(args.onnx), "task": meta["task"], "rows": len(X), "class_names": classes,
                               "outputs": {n: v.tolist() for n, v in outputs.items()}})
        print(f"outputs written to {args.json}")
    return 0
