"""`ntk-studio-cli predict`: run an exported ONNX file with onnxruntime on a table, arrays or images."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .output import write_json

BATCH_ROWS = 1024  # rows per onnxruntime call: bounds the (batch, K, P) Jacobian inside the graph


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
    import numpy as np

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
        names = args.features or json.loads(meta.get("feature_names", "null"))
        if not names:
            raise DataLoadError("The file stores no feature names: pass --features COL ... in the model's order.")
        return load_feature_columns(path, names)
    if suffix in (".npy", ".npz"):
        try:
            loaded = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataLoadError(f"Cannot read {path}: {exc}") from exc
        if suffix == ".npz":
            if "X" not in loaded.files:
                raise DataLoadError(f"{path.name} has no array named 'X' (arrays: {', '.join(loaded.files)}).")
            loaded = loaded["X"]
        return np.asarray(loaded, dtype=np.float64)
    raise DataLoadError(f"{path.name}: use a CSV/TSV table, .npy/.npz arrays or an image folder.")


def run(args: argparse.Namespace) -> int:
    """Predict every row; print a summary and write the outputs; return the exit code."""
    import numpy as np

    from ntk_studio.core.errors import DataLoadError
    from ntk_studio.core.export import onnx_session, read_onnx_metadata

    meta = read_onnx_metadata(args.onnx)
    if "task" not in meta:
        raise DataLoadError(f"{args.onnx} was not written by NTK Studio (no ntk_studio.* metadata).")
    spec = json.loads(meta["input"])
    X = _features(args, meta, spec["shape"])
    expected = [int(d) for d in spec["shape"][1:]]
    if list(X.shape[1:]) != expected:
        raise DataLoadError(f"The data has rows of shape {list(X.shape[1:])}; {args.onnx.name} expects {expected}.")
    session = onnx_session(args.onnx)
    names = [o.name for o in session.get_outputs()]
    dtype = np.float64 if spec["dtype"] == "float64" else np.float32
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
