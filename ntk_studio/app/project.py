"""`.ntkproj` project files: a zip holding a versioned ``project.json`` (inputs, settings) and ``results.json``.

Input files are stored with paths relative to the project file (absolute ones too, as a fallback)
and their SHA-256, so a moved project folder still opens and a changed input is noticed. Results
are the worker payloads the plots were drawn from, so a reopened project shows exactly what was
saved. Files are written atomically: a temporary file in the same folder, flushed, then renamed.
Older format versions are upgraded by the functions in ``MIGRATIONS``. No Qt here.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ntk_studio import __version__
from ntk_studio.errors import NTKStudioError

from .session import PROJECT_SUFFIX, Inputs

FORMAT_NAME = "ntk-studio-project"
FORMAT_VERSION = 1
PROJECT_MEMBER = "project.json"
RESULTS_MEMBER = "results.json"
MAX_MEMBER_BYTES = 256 * 1024 * 1024  # a project holds settings and plot data; more is not a project
# version -> function upgrading a project.json dict of that version to version + 1.
MIGRATIONS: dict[int, Any] = {}


class ProjectError(NTKStudioError, ValueError):
    """A project file cannot be read or written (damaged, foreign, newer format, disk error)."""


@dataclass
class Project:
    """A saved session: what was loaded, the panel settings, and the results shown."""

    inputs: Inputs
    settings: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    version: int = FORMAT_VERSION
    app_version: str = __version__
    warnings: list[str] = field(default_factory=list)  # e.g. an input file found only by its absolute path


def _relative(path: str, base: Path) -> str:
    try:
        return os.path.relpath(path, base)
    except ValueError:  # another drive on Windows
        return path


def _stored_inputs(inputs: Inputs, base: Path) -> dict[str, Any]:
    d = inputs.to_dict()
    for part in ("model", "data"):
        if d.get(part):
            d[part] = dict(d[part], relative_path=_relative(d[part]["path"], base))
    return d


def _resolve_inputs(d: dict[str, Any], base: Path, warnings: list[str]) -> Inputs:
    for part in ("model", "data"):
        entry = d.get(part)
        if not entry:
            continue
        relative = base / entry.get("relative_path", "")
        if entry.get("relative_path") and relative.exists():
            entry["path"] = str(relative.resolve())
        elif Path(entry["path"]).exists():
            warnings.append(f"The {part} file was found at its original path {entry['path']}, not next to the project.")
        else:
            raise ProjectError(f"The project's {part} file is missing: neither {relative} nor {entry['path']} "
                               "exists. Put the file back (or next to the project) and open the project again.")
        entry.pop("relative_path", None)
    return Inputs.from_dict(d)


def save_project(path: str | Path, project: Project) -> Path:
    """Write ``project`` to ``path`` atomically; return the path written (``.ntkproj`` added if missing)."""
    path = Path(path)
    if path.suffix.lower() != PROJECT_SUFFIX:
        path = path.with_name(path.name + PROJECT_SUFFIX)
    base = path.resolve().parent
    header = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "app_version": __version__,
              "inputs": _stored_inputs(project.inputs, base), "settings": project.settings}
    try:
        results = json.dumps(project.results, allow_nan=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=base)
    except (OSError, TypeError, ValueError) as exc:
        raise ProjectError(f"Cannot save the project to {path}: {exc}.") from exc
    try:
        with os.fdopen(fd, "wb") as raw, zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(PROJECT_MEMBER, json.dumps(header, indent=2))
            zf.writestr(RESULTS_MEMBER, results)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise ProjectError(f"Cannot save the project to {path}: {exc.strerror or exc}. Nothing was overwritten.") from exc
    return path


def _read_member(zf: zipfile.ZipFile, name: str, path: Path) -> Any:
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise ProjectError(f"{path.name} is not an NTK Studio project: it has no {name}.") from None
    if info.file_size > MAX_MEMBER_BYTES:
        raise ProjectError(f"{path.name}: {name} is {info.file_size:,} bytes, over the {MAX_MEMBER_BYTES:,} limit.")
    try:
        return json.loads(zf.read(name).decode("utf-8"))
    except (ValueError, UnicodeDecodeError, zipfile.BadZipFile, OSError) as exc:
        raise ProjectError(f"{path.name} is damaged: {name} cannot be read ({exc}).") from None


def migrate(header: dict[str, Any], path: Path) -> dict[str, Any]:
    """Return ``header`` upgraded to ``FORMAT_VERSION``; ProjectError for a newer or unknown version."""
    version = header.get("version")
    if not isinstance(version, int) or version < 1:
        raise ProjectError(f"{path.name} has no valid format version ({version!r}).")
    if version > FORMAT_VERSION:
        raise ProjectError(f"{path.name} was saved by a newer NTK Studio (project format {version}; this version "
                           f"reads up to {FORMAT_VERSION}). Update NTK Studio to open it.")
    while version < FORMAT_VERSION:
        header = MIGRATIONS[version](header)
        version = header["version"] = version + 1
    return header


def load_project(path: str | Path) -> Project:
    """Return the project stored at ``path``; ProjectError when it is missing, damaged or foreign."""
    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise ProjectError(f"No such project file: {path}.") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise ProjectError(f"{path.name} is not an NTK Studio project (not a readable zip archive: {exc}).") from None
    with zf:
        header = _read_member(zf, PROJECT_MEMBER, path)
        if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
            raise ProjectError(f"{path.name} is not an NTK Studio project (its {PROJECT_MEMBER} has another format).")
        header = migrate(header, path)
        results = _read_member(zf, RESULTS_MEMBER, path)
    warnings: list[str] = []
    inputs = _resolve_inputs(dict(header.get("inputs") or {}), path.resolve().parent, warnings)
    return Project(inputs=inputs, settings=dict(header.get("settings") or {}),
                   results=results if isinstance(results, dict) else {}, version=header["version"],
                   app_version=str(header.get("app_version", "?")), warnings=warnings)
