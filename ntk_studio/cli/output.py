"""CLI outputs: checked before the run, written atomically, and committed together at its end.

An output that is the same file as an input, or a folder, is refused before any work. Inside
:func:`committed_together`, ``write_json``/``write_csv`` write temporary files next to their
targets and nothing is renamed into place until the whole run has succeeded; a failed run removes
them, and files other writers replaced (the ONNX export) are put back as they were. Errors name the
user's path, never a temporary file.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from contextvars import ContextVar
from pathlib import Path

from ntk_studio.errors import NTKStudioError
from ntk_studio.safe_io import temp_beside

# Which arguments name files the command reads, and which it writes (by subcommand; "*" for all).
INPUT_ARGS = {"*": ("data", "model", "checkpoint"), "predict": ("onnx",)}
OUTPUT_ARGS = {"*": ("json", "predictions", "native"), "export": ("onnx",)}
BACKUP_SUFFIX = ".ntk-backup"

_staged: ContextVar[list[tuple[Path, Path]] | None] = ContextVar("ntk_studio_staged_outputs", default=None)


class OutputError(NTKStudioError, ValueError):
    """An output path cannot be written (same file as an input, a folder, no permission)."""


def _paths(args, names: Iterable[str]) -> list[tuple[str, Path]]:
    found = []
    for name in names:
        value = getattr(args, name, None)
        if isinstance(value, (str, Path)) and str(value):
            found.append((name, Path(value)))
    return found


def declared(args, table: dict[str, tuple[str, ...]]) -> list[tuple[str, Path]]:
    """Return the (argument, path) pairs ``table`` names for this subcommand."""
    return _paths(args, (*table.get("*", ()), *table.get(getattr(args, "command", ""), ())))


def _arch_file(args) -> list[tuple[str, Path]]:
    arch = getattr(args, "arch", None)
    return [("arch", Path(arch.rpartition(":")[0]))] if isinstance(arch, str) and ":" in arch else []


def _same(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_outputs(args) -> list[tuple[str, Path]]:
    """Return the command's outputs after refusing any that is an input, a folder or written twice."""
    try:
        return _check_outputs(args)
    except OSError as exc:  # a name too long, a loop of links: say which path
        raise OutputError(f"Cannot use the output path {exc.filename}: {exc.strerror or exc}.") from None


def _check_outputs(args) -> list[tuple[str, Path]]:
    inputs = declared(args, INPUT_ARGS) + _arch_file(args)
    outputs = declared(args, OUTPUT_ARGS)
    for name, out in outputs:
        flag = f"--{name.replace('_', '-')}"
        for in_name, src in inputs:
            if _same(out, src) or (src.is_dir() and _inside(out, src) and in_name == "data"):
                raise OutputError(f"{flag} {out} is the {'--' + in_name} input{'' if _same(out, src) else ' folder'}; "
                                  "an output never overwrites an input. Choose another output path.")
        if out.is_dir():
            raise OutputError(f"{flag} {out} is a folder; give a file name, e.g. {out / ('out' + _suffix(name))}.")
        if out.exists() and not out.is_file():
            raise OutputError(f"{flag} {out} is not a regular file; give a file path to write.")
    seen: dict[str, str] = {}
    for name, out in outputs:
        key = os.path.realpath(out)
        if key in seen:
            raise OutputError(f"--{name} and --{seen[key]} both name {out}; give each output its own file.")
        seen[key] = name
    return outputs


def _inside(path: Path, folder: Path) -> bool:
    real, root = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([real, root]) == root


def _suffix(name: str) -> str:
    return {"json": ".json", "predictions": ".csv", "onnx": ".onnx", "native": ".pt2"}.get(name, "")


@contextlib.contextmanager
def committed_together(outputs: Sequence[tuple[str, Path]] = ()) -> Iterator[None]:
    """Stage every write_json/write_csv of the block and commit them together when it succeeds.

    ``outputs`` that other code writes directly (an ONNX export) are moved aside first and put
    back (or removed, when they did not exist) if the block fails; kept aside until the end, an
    old file is never half-overwritten in place.
    """
    staged: list[tuple[Path, Path]] = []
    token = _staged.set(staged)
    backups = [(path, _backup(path)) for _, path in outputs]
    try:
        yield
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        for path, backup in backups:
            _restore(path, backup)
        raise
    else:
        for path, backup in backups:
            if backup is not None and not path.exists():
                os.replace(backup, path)  # the run did not write it: the old file stays
        try:
            for i, (tmp, path) in enumerate(staged):
                try:
                    os.replace(tmp, path)
                except OSError as exc:
                    for rest, _ in staged[i:]:
                        rest.unlink(missing_ok=True)
                    raise OutputError(f"Cannot write {path}: {exc.strerror or exc}.") from None
        finally:
            for _, backup in backups:
                if backup is not None:
                    backup.unlink(missing_ok=True)
    finally:
        _staged.reset(token)


def _backup(path: Path) -> Path | None:
    """Move an existing output file aside (same folder, a rename); return where, None when there is none."""
    if not path.is_file():
        return None
    backup = path.with_name(f".{path.name}{BACKUP_SUFFIX}")
    try:
        os.replace(path, backup)
    except OSError as exc:
        raise OutputError(f"Cannot replace {path}: {exc.strerror or exc}.") from None
    return backup


def _restore(path: Path, backup: Path | None) -> None:
    if backup is not None:
        os.replace(backup, path)
    else:
        path.unlink(missing_ok=True)


def _atomic_write(path: Path, write) -> None:
    try:
        if path.is_dir():
            raise OutputError(f"{path} is a folder; give a file name to write.")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = temp_beside(path)
    except OSError as exc:
        raise OutputError(f"Cannot write {path}: {exc.strerror or exc}.") from None
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            write(fh)
        staged = _staged.get()
        if staged is None:
            os.replace(tmp, path)
        else:
            staged.append((Path(tmp), path))
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"Cannot write {path}: {exc.strerror or exc}.") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, payload: dict) -> None:
    """Write `payload` as indented JSON to `path` atomically (committed at the end of the run)."""
    _atomic_write(Path(path), lambda fh: json.dump(payload, fh, indent=2))


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    """Write a CSV with `header` and `rows` to `path` atomically (committed at the end of the run)."""

    def write(fh) -> None:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)

    _atomic_write(Path(path), write)
