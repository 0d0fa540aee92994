"""Architectures given as 'file.py:factory', and strict loading of state dicts into them."""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ntk_studio.safe_io import read_regular

from ..errors import ModelLoadError

ARCH_SPEC_HELP = "Write the architecture as 'path/to/file.py:factory', where factory() returns the torch.nn.Module."
USER_MODULE_PREFIX = "ntk_studio_user_arch"
# Checkpoint dicts often wrap the weights under one of these keys (Lightning, common training loops).
CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "net", "module")
DATA_PARALLEL_PREFIX = "module."  # what nn.DataParallel / DDP put in front of every key
MAX_LISTED = 8  # names listed in a message before it says "and N more"

MAX_ARCH_FILE_BYTES = 16 * 1024 * 1024  # a Python source file; more is not an architecture
# Seconds the isolated first run of 'file.py:factory' may take (import + factory()). Read from this
# environment variable when load_architecture is not given a timeout; unset: run in-process only
# (the worker process is already isolated; the CLI sets it for the length of its run).
ARCH_TIMEOUT_ENV = "NTK_STUDIO_ARCH_TIMEOUT_S"
PROBE_OK = "NTK_STUDIO_ARCH_PROBE_OK"
PROBE_TAIL_CHARS = 400
# The probe imports the file and calls the factory in a fresh interpreter, then says what it got.
PROBE_CODE = f"""
import importlib.util, sys
path, factory = sys.argv[1], sys.argv[2]
sys.path.insert(0, sys.argv[3])
spec = importlib.util.spec_from_file_location("ntk_studio_arch_probe", path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
model = getattr(module, factory)()
import torch  # after the factory: the time limit is for the user's code (their file imports torch itself)
print("{PROBE_OK}", isinstance(model, torch.nn.Module), flush=True)
"""

_import_counter = itertools.count()


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED])
    return shown + (f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else "")


def parse_arch_spec(spec: str) -> tuple[Path, str]:
    """Return (python file, factory name) from 'file.py:factory'."""
    if not isinstance(spec, str) or not spec.strip():
        raise ModelLoadError(f"No architecture given. {ARCH_SPEC_HELP}")
    # rpartition: a Windows drive letter ('C:\\nets\\mlp.py:make') has a colon of its own.
    file_part, sep, factory = spec.strip().rpartition(":")
    if not sep or not factory.isidentifier() or not file_part:
        raise ModelLoadError(
            f"Cannot read the architecture {spec!r}: it needs ':factory' after the file name. {ARCH_SPEC_HELP}"
        )
    return Path(file_part).expanduser(), factory


def _import_file(path: Path):
    # A fresh, unique module name per import: the same file may be edited and loaded again, and two
    # users' files called model.py must not replace each other in sys.modules.
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
    name = f"{USER_MODULE_PREFIX}_{digest}_{next(_import_counter)}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"Python cannot import {path}. {ARCH_SPEC_HELP}")
    module = importlib.util.module_from_spec(spec)
    # Registered so that dataclasses, pickling and typing inside the user's file can find their module.
    sys.modules[name] = module
    # The file's folder goes on the path while it runs, so it can import its sibling files.
    folder = str(path.parent)
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        sys.modules.pop(name, None)
        hint = ""
        if isinstance(exc, ImportError):
            hint = " Install the missing package into NTK Studio's environment, or remove the import."
        elif isinstance(exc, SyntaxError):
            hint = f" Fix the syntax error (line {exc.lineno})."
        raise ModelLoadError(
            f"Running the architecture file {path} failed with {type(exc).__name__}: {exc}.{hint}"
        ) from exc
    finally:
        try:
            sys.path.remove(folder)
        except ValueError:
            pass
    return module


def _timeout_from_env() -> float | None:
    text = os.environ.get(ARCH_TIMEOUT_ENV, "").strip()
    try:
        value = float(text) if text else 0.0
    except ValueError:
        return None
    return value if value > 0 else None


def probe_architecture(path: Path, factory_name: str, timeout: float) -> None:
    """Run ``factory()`` of ``path`` once in a child process; ModelLoadError if it hangs, dies or fails.

    User code may loop forever or call ``os._exit``; in a child that becomes a clear error instead
    of a frozen or silently ended program. The in-process load that follows runs the same code.
    """
    try:
        done = subprocess.run([sys.executable, "-c", PROBE_CODE, str(path), factory_name, str(path.parent)],
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              env={**os.environ, ARCH_TIMEOUT_ENV: ""})
    except subprocess.TimeoutExpired:
        raise ModelLoadError(
            f"Building the model with {factory_name}() from {path.name} did not finish within {timeout:g} s "
            "(it may loop forever or wait for input). Fix the file, or allow more time with --arch-timeout."
        ) from None
    if f"{PROBE_OK} True" in done.stdout:
        return
    if f"{PROBE_OK} False" in done.stdout:
        return  # not a module: the in-process load below says so with the full message
    tail = (done.stderr.strip().splitlines() or [""])[-1][-PROBE_TAIL_CHARS:]
    if done.returncode != 0 and tail:
        return  # an exception: the in-process load below raises it with its usual message and hint
    raise ModelLoadError(
        f"Running {path.name} ended its process (exit code {done.returncode}) before {factory_name}() returned "
        "a model — the file calls exit or os._exit, or crashed. Remove that from the file."
    )


def load_architecture(spec: str, timeout: float | None = None) -> nn.Module:
    """Return the nn.Module that factory() in 'file.py:factory' builds (the file is imported by path).

    With ``timeout`` (or the NTK_STUDIO_ARCH_TIMEOUT_S environment variable), the file is first run
    in a child process under that time limit, so a hang or an exit becomes a ModelLoadError.
    """
    path, factory_name = parse_arch_spec(spec)
    if not path.exists():
        raise ModelLoadError(f"No architecture file at {path}. Check the path in {spec!r}. {ARCH_SPEC_HELP}")
    if path.suffix != ".py":
        raise ModelLoadError(f"The architecture must be a Python file ending in .py; got {path}. {ARCH_SPEC_HELP}")
    read_regular(path, ModelLoadError, "architecture file", MAX_ARCH_FILE_BYTES)  # no FIFO, no 1 GB "source"
    timeout = timeout if timeout is not None else _timeout_from_env()
    if timeout is not None:
        probe_architecture(path.resolve(), factory_name, timeout)
    module = _import_file(path.resolve())
    factory = getattr(module, factory_name, None)
    if factory is None:
        defined = sorted(
            n for n, v in vars(module).items()
            if callable(v) and not n.startswith("_") and getattr(v, "__module__", None) == module.__name__
        )
        raise ModelLoadError(
            f"{path.name} defines no {factory_name!r}. Callables it defines: {_listing(defined) or 'none'}. "
            f"Name one of them after the colon, e.g. '{path.name}:{defined[0] if defined else 'make_model'}'."
        )
    if not callable(factory):
        raise ModelLoadError(f"{factory_name!r} in {path.name} is a {type(factory).__name__}, not a function or class.")
    try:
        model = factory()
    except (Exception, SystemExit) as exc:
        hint = ""
        if isinstance(exc, TypeError) and "argument" in str(exc):
            hint = (
                f" The factory is called with no arguments; add one that does, e.g. "
                f"'def make_model(): return {factory_name}(...)', and name it after the colon."
            )
        raise ModelLoadError(f"{factory_name}() in {path.name} raised {type(exc).__name__}: {exc}.{hint}") from exc
    if not isinstance(model, nn.Module):
        raise ModelLoadError(
            f"{factory_name}() in {path.name} returned a {type(model).__name__}, not a torch.nn.Module. "
            "It must build and return the model (weights are loaded into it afterwards)."
        )
    return model


def unwrap_checkpoint(obj: object) -> tuple[Mapping[str, torch.Tensor], list[str]]:
    """Return (state dict, notes) from a state dict or a checkpoint dict that holds one."""
    notes: list[str] = []
    if not isinstance(obj, Mapping):
        raise ModelLoadError(
            f"The file holds a {type(obj).__name__}, not a state dict or a model. "
            "Save the weights with torch.save(model.state_dict(), 'model.pt') or save the model with torch.export."
        )
    if obj and not any(torch.is_tensor(v) for v in obj.values()):
        for key in CHECKPOINT_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and any(torch.is_tensor(v) for v in inner.values()):
                notes.append(f"The file is a checkpoint; used the weights stored under {key!r}.")
                obj = inner
                break
    bad = [str(k) for k, v in obj.items() if not torch.is_tensor(v) or not isinstance(k, str)]
    if not obj or bad:
        what = "is empty" if not obj else f"has entries that are not tensors: {_listing(bad)}"
        raise ModelLoadError(
            f"The state dict {what}. Save the weights with torch.save(model.state_dict(), 'model.pt')."
        )
    return obj, notes


def load_state_dict_strict(module: nn.Module, state: Mapping[str, torch.Tensor], arch: str) -> list[str]:
    """Copy `state` into `module` (all keys and shapes must match); return notes."""
    notes: list[str] = []
    expected = module.state_dict()
    if set(state) != set(expected) and all(k.startswith(DATA_PARALLEL_PREFIX) for k in state):
        stripped = {k[len(DATA_PARALLEL_PREFIX):]: v for k, v in state.items()}
        if set(stripped) == set(expected):
            notes.append("The weights were saved from nn.DataParallel/DDP; removed the 'module.' key prefix.")
            state = stripped
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} (file {tuple(state[k].shape)}, model {tuple(expected[k].shape)})"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing from the file: {_listing(missing)}")
    if unexpected:
        problems.append(f"in the file but not in the model: {_listing(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch for {_listing(mismatched)}")
    if problems:
        raise ModelLoadError(
            f"The weights do not fit the architecture {arch!r}: " + "; ".join(problems) + ". "
            "Make the factory build exactly the model the weights were saved from (same layer names and sizes)."
        )
    try:
        module.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ModelLoadError(f"Copying the weights into the architecture {arch!r} failed: {exc}") from exc
    return notes
