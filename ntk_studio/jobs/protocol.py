"""The JSON-lines protocol between a client (the GUI, a test) and the worker process.

One message per line, UTF-8 JSON objects, no embedded newlines.

Requests (client → worker)::

    {"id": "<request id>", "cmd": "<command>", "args": {...}}

Commands and their arguments (defaults filled in by :func:`decode_request`): see ``COMMANDS``.
``cancel`` names the job to stop in ``args.job``; ``ping`` and ``cancel`` are answered at once,
even while a job runs; every other command is a job, and a second job while one runs is refused
with an ``error`` whose ``error_type`` is ``"Busy"``.

Events (worker → client)::

    {"id": "<job id>", "type": "started" | "progress" | "epoch" | "result" | "error" | "cancelled", ...}

A job ends with exactly one of ``result``, ``error`` or ``cancelled``. Errors carry
``error_type``, ``message`` and ``details`` (traceback text). Tensors and arrays travel as
(nested) lists of floats.
"""

from __future__ import annotations

import json
import math
import re
import sys
import traceback
from typing import Any

import numpy as np

# Not ntk_studio.core: importing it loads torch, and the GUI process must start without torch.
from ntk_studio.errors import NTKStudioError
from ntk_studio.pipeline_defaults import DEFAULT_SETTINGS as _D  # the one set of run defaults (torch-free)

# A "warning" event carries {"message", "category"}: an engine SolverWarning (jobs/warning_events.py).
EVENT_TYPES = ("started", "progress", "epoch", "warning", "result", "error", "cancelled")
TERMINAL_TYPES = frozenset({"result", "error", "cancelled"})
# Commands answered by the reading loop itself, never queued behind a running job.
IMMEDIATE_COMMANDS = frozenset({"ping", "cancel", "shutdown"})
MAX_LINE_CHARS = 1_000_000  # a request is a few hundred bytes; a huge line is a bug, not data
MAX_EVENT_CHARS = 512 * 1024 * 1024  # events carry plot data and predictions: bounded, but generously
MAX_JSON_DEPTH = 64  # protocol messages nest a few levels; Python's json recurses (and dies) near 1,000
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_JSON_BRACKET = re.compile(r"[\[\]{}]")

_REQUIRED = object()
# The adaptation split every job that fits or plans shares: labelled rows and the permutation seed.
_SPLIT = {"n_adapt": ((int, type(None)), None), "seed": ((int,), 0)}
# cmd -> {arg: (accepted types, default)}; _REQUIRED marks arguments without a default.
COMMANDS: dict[str, dict[str, tuple[tuple[type, ...], Any]]] = {
    "ping": {},
    "shutdown": {},
    "cancel": {"job": ((str,), _REQUIRED)},
    "load_example": {"name": ((str,), _REQUIRED)},
    "load_model": {"path": ((str,), _REQUIRED), "arch": ((str, type(None)), None), "trust_pickle": ((bool,), False),
                   "expected_sha256": ((str, type(None)), None)},  # a project's recorded hash: mismatch = error
    "load_data": {
        "path": ((str,), _REQUIRED),
        "target": ((str, type(None)), None),  # a table without a target answers with its columns
        "features": ((list, type(None)), None),
        "classification": ((bool,), False),  # old flag: the same as task="classification"
        "task": ((str,), "auto"),  # auto | regression | classification (core.pipeline_data.resolve_task)
        "channels": ((int, type(None)), None),  # image channels to read (None: the model's first conv)
        "image_size": ((list, type(None)), None),  # [H, W] to resize images to (None: their own size)
        "expected_sha256": ((str, type(None)), None),  # a project's recorded hash (image folder: manifest)
    },
    "plan": {**_SPLIT, "params": ((str,), "all"), "space": ((str,), "auto"), "solver": ((str,), "auto")},
    "fit_gp": {
        **_SPLIT,
        "params": ((str,), "all"),
        "prior_var": ((float, int), _D.prior_var),
        "noise": ((float, int, type(None)), _D.noise),  # None: NOISE_FRACTION × variance of the adaptation targets
        "space": ((str,), "auto"),
        "solver": ((str,), "auto"),
        "grid_points": ((int,), 200),
        "fit_hyper": ((bool,), _D.fit_hyper),
        "device": ((str,), "auto"),
    },
    "finetune": {
        **_SPLIT,
        "params": ((str,), "all"),
        "epochs": ((int,), _D.epochs),
        "lr": ((float, int), _D.lr),
        "batch_size": ((int,), _D.batch_size),
        "grid_points": ((int,), 200),
        "device": ((str,), "auto"),
    },
    "trajectory": {**_SPLIT, "params": ((str,), "all"), "grid_points": ((int,), 200)},
    # Writes the last fit (same split) as ONNX, optionally also as a torch.export program; verified.
    "export": {
        **_SPLIT, "onnx": ((str,), _REQUIRED), "native": ((str, type(None)), None), "dtype": ((str,), "float64"),
    },
}

# arg -> (lowest, highest) accepted value; a job must not start with a value no run can use.
MAX_GRID_POINTS = 100_000
MAX_EPOCHS = 1_000_000
RANGES: dict[str, tuple[float, float]] = {
    "prior_var": (math.ulp(0.0), math.inf), "noise": (math.ulp(0.0), math.inf), "lr": (math.ulp(0.0), math.inf),
    "epochs": (1, MAX_EPOCHS), "batch_size": (1, 2**31 - 1), "grid_points": (2, MAX_GRID_POINTS),
    "n_adapt": (1, 2**63 - 1), "seed": (0, 2**32 - 1),
}


class ProtocolError(NTKStudioError, ValueError):
    """A line is not a valid protocol message (bad JSON, unknown command, wrong argument)."""

    def __init__(self, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


def json_depth(text: str, limit: int = MAX_JSON_DEPTH) -> int:
    """Return how deeply ``text``'s arrays/objects nest, stopping early once it passes ``limit``."""
    depth = deepest = 0
    for bracket in _JSON_BRACKET.findall(_JSON_STRING.sub("", text)):
        if bracket in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > limit:
                break
        else:
            depth -= 1
    return deepest


def loads_bounded(text: str, what: str, error: type[Exception], max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Return ``json.loads(text)``; ``error`` (one line naming ``what``) for bad or too deeply nested JSON."""
    if json_depth(text, max_depth) > max_depth:
        raise error(f"{what} is nested more than {max_depth} levels deep; it is not a valid message or file.")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise error(f"Not valid JSON: {what} cannot be parsed ({str(exc).splitlines()[0][:200]}).") from None


def read_line(stream, limit: int) -> tuple[str, bool]:
    """Return (one line of ``stream``, whether it was cut at ``limit`` characters); reads at most ``limit`` + 1.

    A cut line's rest is read and discarded in bounded pieces, so a 300 MB line never sits in memory.
    """
    line = stream.readline(limit + 1)
    if len(line) <= limit or line.endswith("\n"):
        return line, False
    while True:  # skip the rest of the oversized line
        rest = stream.readline(limit)
        if not rest or rest.endswith("\n"):
            return line[:limit], True


def to_jsonable(obj: Any) -> Any:
    """Return ``obj`` with tensors/arrays turned into lists and NumPy scalars into Python numbers."""
    torch = sys.modules.get("torch")  # tensors exist only where torch is already imported
    if torch is not None and isinstance(obj, torch.Tensor):
        return obj.detach().cpu().tolist()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    return obj


def encode(message: dict[str, Any]) -> str:
    """Return one protocol line (with its newline) for ``message``."""
    # allow_nan: a diverged fit has NaN metrics; Python's json reads them back, which is all we need.
    return json.dumps(to_jsonable(message), allow_nan=True, separators=(",", ":")) + "\n"


def _parse(line: str, limit: int = MAX_LINE_CHARS) -> dict[str, Any]:
    if len(line) > limit:
        raise ProtocolError(f"Message of {len(line)} characters exceeds the {limit} limit.")
    msg = loads_bounded(line, "The message", ProtocolError)
    if not isinstance(msg, dict):
        raise ProtocolError(f"A message must be a JSON object, got {type(msg).__name__}.")
    if not isinstance(msg.get("id"), str) or not msg["id"]:
        raise ProtocolError("A message needs a non-empty string 'id'.")
    return msg


def decode_request(line: str) -> dict[str, Any]:
    """Return ``{"id", "cmd", "args"}`` with defaults filled in; raise ProtocolError when invalid."""
    msg = _parse(line)
    rid = msg["id"]
    extra = set(msg) - {"id", "cmd", "args"}
    if extra:
        raise ProtocolError(f"Unknown request fields: {sorted(extra)}.", rid)
    cmd, args = msg.get("cmd"), msg.get("args", {})
    if not isinstance(cmd, str) or cmd not in COMMANDS:  # a list or dict would not even hash
        raise ProtocolError(f"Unknown command {cmd!r:.80}; known: {', '.join(COMMANDS)}.", rid)
    if not isinstance(args, dict):
        raise ProtocolError("'args' must be a JSON object.", rid)
    schema = COMMANDS[cmd]
    unknown = set(args) - set(schema)
    if unknown:
        raise ProtocolError(f"Unknown arguments for {cmd}: {sorted(unknown)}; accepted: {sorted(schema)}.", rid)
    full = {}
    for name, (types, default) in schema.items():
        if name not in args:
            if default is _REQUIRED:
                raise ProtocolError(f"{cmd} needs the argument {name!r}.", rid)
            full[name] = default
            continue
        value = args[name]
        # bool is an int subclass in Python: accept it only where a flag is declared.
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            names = "/".join("null" if t is type(None) else t.__name__ for t in types)
            raise ProtocolError(f"{cmd} argument {name!r} must be {names}, got {value!r}.", rid)
        if isinstance(value, float) and not math.isfinite(value):
            raise ProtocolError(f"{cmd} argument {name!r} must be finite, got {value!r}.", rid)
        low, high = RANGES.get(name, (-math.inf, math.inf))
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not low <= value <= high:
            raise ProtocolError(f"{cmd} argument {name!r} must be from {low:g} to {high:g}, got {value!r}.", rid)
        full[name] = float(value) if float in types and value is not None else value
    return {"id": rid, "cmd": cmd, "args": full}


def decode_event(line: str) -> dict[str, Any]:
    """Return the event dict of a worker line; raise ProtocolError when it is not a valid event."""
    msg = _parse(line, MAX_EVENT_CHARS)
    if not isinstance(msg.get("type"), str) or msg["type"] not in EVENT_TYPES:
        raise ProtocolError(f"Unknown event type {msg.get('type')!r}.", msg["id"])
    return msg


def request(request_id: str, cmd: str, **args: Any) -> dict[str, Any]:
    """Return a request message (not yet validated; the worker validates)."""
    return {"id": request_id, "cmd": cmd, "args": args}


def error_event(job_id: str, exc: BaseException, error_type: str | None = None) -> dict[str, Any]:
    """Return the ``error`` event describing ``exc`` (type name, message, traceback text)."""
    details = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return {"id": job_id, "type": "error", "error_type": error_type or type(exc).__name__,
            "message": str(exc), "details": details}
