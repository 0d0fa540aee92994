"""Helpers for the hostile-input suite (this file holds no tests).

Every hostile case checks the same promise: the failure is the typed error (library) or exit code 2
with one ``error:`` line (CLI), no traceback, the inputs are byte-identical afterwards, no output
is left behind, and it ends within a time bound.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import time
import zipfile
from pathlib import Path

import pytest

CASE_SECONDS = 20.0  # one hostile case, in-process; generous for two shared cores
EXIT_USER_ERROR = 2


def snapshot(*paths: Path) -> dict[str, bytes | None]:
    """Return every regular file under ``paths`` (recursively) mapped to its bytes (None: a non-file)."""
    files: dict[str, bytes | None] = {}
    for root in paths:
        if root is None or not (root.exists() or root.is_symlink()):
            continue
        entries = [root] if not root.is_dir() or root.is_symlink() else [root, *sorted(root.rglob("*"))]
        for p in entries:
            if p.is_symlink() or not p.is_file():
                files[str(p)] = None
            else:
                files[str(p)] = p.read_bytes()
    return files


def listing(folder: Path) -> set[str]:
    """Return the names of everything under ``folder`` (to show nothing new appeared)."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run ``ntk-studio-cli argv`` in this process; return (exit code, stdout, stderr)."""
    from ntk_studio.cli.main import main

    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse errors
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def assert_cli_refuses(argv: list[str], capsys, folder: Path, *phrases: str, inputs: tuple[Path, ...] = ()) -> str:
    """Assert the CLI exits 2 with one ``error:`` line naming the phrases; inputs and ``folder`` unchanged."""
    before, names = snapshot(*inputs), listing(folder)
    start = time.monotonic()
    code, out, err = run_cli(argv, capsys)
    elapsed = time.monotonic() - start
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    error_lines = [ln for ln in lines if "error:" in ln]
    assert code == EXIT_USER_ERROR, (code, out, err)
    assert "Traceback" not in err and "Traceback" not in out, err
    assert len(error_lines) == 1, err
    for phrase in phrases:
        assert phrase.lower() in error_lines[0].lower(), (phrase, error_lines[0])
    assert snapshot(*inputs) == before, "an input changed"
    assert listing(folder) == names, f"left behind: {listing(folder) - names}"
    assert elapsed < CASE_SECONDS, elapsed
    return error_lines[0]


@contextlib.contextmanager
def refused(error: type[BaseException], *phrases: str, inputs: tuple[Path, ...] = (), folder: Path | None = None):
    """Assert the block raises ``error`` (a one-line message naming phrases), quickly, changing nothing."""
    before = snapshot(*inputs)
    names = listing(folder) if folder is not None else None
    start = time.monotonic()
    with pytest.raises(error) as info:
        yield info
    assert time.monotonic() - start < CASE_SECONDS
    message = str(info.value)
    assert message and "\n" not in message.strip(), message
    assert "Traceback" not in message
    for phrase in phrases:
        assert phrase.lower() in message.lower(), (phrase, message)
    assert snapshot(*inputs) == before, "an input changed"
    if folder is not None:
        assert listing(folder) == names, f"left behind: {listing(folder) - names}"


# ---------------------------------------------------------------- payloads

class MarkerPayload:
    """Unpickling this object creates ``marker`` (the pickle calls os.mkdir(marker))."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def pickle_payload(path: Path, marker: Path) -> Path:
    """Write a torch.save file whose unpickling creates ``marker``; return ``path``."""
    import torch

    torch.save({"model": MarkerPayload(str(marker))}, path)
    return path


def arch_payload(path: Path, marker: Path, body: str = "") -> Path:
    """Write an architecture file that creates ``marker`` when imported; return ``path``."""
    path.write_text(
        "import torch\n"
        f"open({str(marker)!r}, 'w').close()\n"
        f"{body}\n"
        "def make():\n"
        "    return torch.nn.Linear(3, 1)\n"
    )
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def project_header(inputs: dict | None = None, **extra) -> dict:
    """Return a valid project.json dict (format 1) with ``inputs``."""
    return {"format": "ntk-studio-project", "version": 1, "app_version": "0", "inputs": inputs or {},
            "settings": {}, **extra}


def write_project(path: Path, header: dict | str | bytes, results: str | bytes = "{}",
                  compression: int = zipfile.ZIP_DEFLATED, extra: dict[str, bytes] | None = None) -> Path:
    """Write a .ntkproj zip with ``header`` as project.json (dict → JSON) and ``results``."""
    data = json.dumps(header) if isinstance(header, dict) else header
    with zipfile.ZipFile(path, "w", compression) as zf:
        zf.writestr("project.json", data)
        zf.writestr("results.json", results)
        for name, content in (extra or {}).items():
            zf.writestr(name, content)
    return path


def zip_bytes(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, content in members.items():
            zf.writestr(name, content)
    return buf.getvalue()


def make_fifo(path: Path) -> Path:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    os.mkfifo(path)
    return path
