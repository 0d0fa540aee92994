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
import pickletools
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ntk_studio import __version__
from ntk_studio.errors import NTKStudioError
from ntk_studio.jobs.protocol import loads_bounded
from ntk_studio.pipeline_defaults import TASK_CHOICES
from ntk_studio.safe_io import head, inside, open_regular, read_regular, sha256_file, temp_beside

from .session import PROJECT_SUFFIX, Inputs

FORMAT_NAME = "ntk-studio-project"
FORMAT_VERSION = 1
PROJECT_MEMBER = "project.json"
RESULTS_MEMBER = "results.json"
MAX_MEMBER_BYTES = 256 * 1024 * 1024  # a project holds settings and plot data; more is not a project
MAX_TOTAL_BYTES = 320 * 1024 * 1024  # all members together, from the zip directory, before extracting
MAX_PROJECT_FILE_BYTES = MAX_TOTAL_BYTES
MAX_MEMBERS = 16  # NTK Studio writes two
MAX_COMPRESSION_RATIO = 100  # JSON of numbers deflates ~3-10x; a bomb deflates ~1000x
RATIO_CHECK_BYTES = 1024 * 1024  # small members may compress very well (a settings dict of zeros)
ZIP_ENCRYPTED = 0x1  # general-purpose flag bit 0
MAX_ARCH_BYTES = 16 * 1024 * 1024
MAX_PICKLE_SCAN_BYTES = 1024 * 1024 * 1024  # the pickle of a torch.save file is small; the weights are apart
HEAD_LINES = 12  # lines of a file shown to the person deciding whether it may run
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# version -> function upgrading a project.json dict of that version to version + 1.
MIGRATIONS: dict[int, Any] = {}


class ProjectError(NTKStudioError, ValueError):
    """A project file cannot be read or written (damaged, foreign, newer format, disk error)."""


@dataclass(frozen=True)
class CodeToRun:
    """Code that loading the project's model would run; the person decides, never the file."""

    kind: str  # "architecture" (a .py file is imported) | "pickle" (the model file is unpickled)
    path: Path
    sha256: str
    first_lines: str

    def describe(self) -> str:
        """Return the text shown when asking: what runs, from where, its SHA-256 and first lines."""
        what = ("Python file (imported and run)" if self.kind == "architecture"
                else "pickled model (unpickling runs code from the file)")
        return f"{what}:\n{self.path}\nSHA-256 {self.sha256}\n\n{self.first_lines}"


@dataclass
class Project:
    """A saved session: what was loaded, the panel settings, and the results shown."""

    inputs: Inputs
    settings: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    version: int = FORMAT_VERSION
    app_version: str = __version__
    warnings: list[str] = field(default_factory=list)  # e.g. an input file found only by its absolute path
    code_to_run: list[CodeToRun] = field(default_factory=list)  # to be allowed by the person before loading

    def load_steps(self) -> list[tuple[str, dict[str, Any]]]:
        """Return the worker commands that load this project's inputs, each file's load carrying the SHA-256
        the project recorded (``expected_sha256``; an image folder's manifest): the worker hashes the very
        bytes it parses, so a file swapped after :func:`load_project` checked it is refused, never loaded."""
        steps = []
        for cmd, args in self.inputs.load_steps():
            part = {"load_model": self.inputs.model, "load_data": self.inputs.data}.get(cmd)
            if part is not None:
                args = {**args, "expected_sha256": part.get("sha256")}
            steps.append((cmd, args))
        return steps


# Schema of format version 1: key -> (accepted types, required). Unknown keys are refused.
_STR, _OPT_STR, _BOOL = (str,), (str, type(None)), (bool,)
_NAMES = (str, list, type(None))
SCHEMA_V1 = {
    "header": {"format": (_STR, True), "version": ((int,), True), "app_version": (_STR, False),
               "inputs": ((dict,), False), "settings": ((dict,), False)},
    "inputs": {"example": (_OPT_STR, False), "model": ((dict, type(None)), False),
               "data": ((dict, type(None)), False), "extra": ((dict, type(None)), False)},
    "model": {"path": (_STR, True), "relative_path": (_OPT_STR, False), "arch": (_OPT_STR, False),
              "sha256": (_OPT_STR, False), "arch_sha256": (_OPT_STR, False), "needs_pickle": (_BOOL, False),
              "trust_pickle": ((bool, type(None)), False)},  # read from old files and ignored
    "data": {"path": (_STR, True), "relative_path": (_OPT_STR, False), "target": (_NAMES, False),
             "features": (_NAMES, False), "classification": (_BOOL, False), "sha256": (_OPT_STR, False),
             "task": (_OPT_STR, False)},  # auto | regression | classification (the Data tab's choice)
}


def _check_fields(d: Any, schema: str, where: str, path: Path) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise ProjectError(f"{path.name} is damaged: {where} must be a JSON object, not {type(d).__name__}.")
    fields = SCHEMA_V1[schema]
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ProjectError(f"{path.name} is damaged: {where} has unknown field(s) {', '.join(map(repr, unknown[:5]))}.")
    for key, (types, required) in fields.items():
        if key not in d:
            if required:
                raise ProjectError(f"{path.name} is damaged: {where} has no {key!r}.")
            continue
        value = d[key]
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            names = "/".join("null" if t is type(None) else t.__name__ for t in types)
            raise ProjectError(f"{path.name} is damaged: {where}.{key} must be {names}, not {value!r:.60}.")
        if isinstance(value, list) and not all(isinstance(v, str) for v in value):
            raise ProjectError(f"{path.name} is damaged: {where}.{key} must list column names (text).")
        if key.endswith("sha256") and value is not None and not SHA256_RE.match(value):
            raise ProjectError(f"{path.name} is damaged: {where}.{key} is not a SHA-256 (64 hex digits).")
        if key == "task" and value is not None and value not in TASK_CHOICES:
            raise ProjectError(f"{path.name} is damaged: {where}.task must be one of {', '.join(TASK_CHOICES)}, "
                               f"not {value!r:.60}.")
    return d


def _validate(header: Any, path: Path) -> dict[str, Any]:
    """Return the header upgraded and checked against the schema, with defaults; ProjectError otherwise."""
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise ProjectError(f"{path.name} is not an NTK Studio project (its {PROJECT_MEMBER} has another format).")
    header = migrate(header, path)
    _check_fields(header, "header", PROJECT_MEMBER, path)
    inputs = _check_fields(header.get("inputs") or {}, "inputs", "inputs", path)
    for part in ("model", "data"):
        if inputs.get(part) is not None:
            _check_fields(inputs[part], part, f"inputs.{part}", path)
    return {**header, "inputs": inputs, "settings": dict(header.get("settings") or {})}


def pickle_imports(data: bytes) -> list[str]:
    """Return the 'module.name' globals a pickle (or every pickle in a torch.save zip) imports, without running it."""
    blobs = [data]
    if data[:2] == b"PK":
        import io

        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            blobs = [zf.read(i) for i in zf.infolist() if i.filename.endswith(".pkl") and i.file_size < MAX_MEMBER_BYTES]
    found: list[str] = []
    for blob in blobs:
        strings: list[str] = []
        try:
            for op, arg, _ in pickletools.genops(blob):
                if op.name == "GLOBAL":
                    found.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
        except Exception:  # noqa: BLE001 - a damaged pickle: list what was found before the damage
            pass
    return list(dict.fromkeys(found))


def _relative(path: str, base: Path) -> str | None:
    """Return ``path`` relative to ``base``, or None when it lies outside (then only the absolute path is kept)."""
    if not inside(path, base):
        return None
    try:
        return os.path.relpath(path, base)
    except ValueError:  # another drive on Windows
        return None


def _stored_inputs(inputs: Inputs, base: Path) -> dict[str, Any]:
    d = inputs.to_dict()
    model = d.get("model")
    if model:
        # Trust is the person's decision at open time, never stored: only the fact that the file
        # needed unpickling is kept, so that reopening asks again.
        needs_pickle = bool(model.pop("trust_pickle", False))
        d["model"] = dict(model, needs_pickle=needs_pickle)
        arch = model.get("arch")
        if arch:
            arch_path = _arch_path(arch)
            if arch_path.is_file():
                d["model"]["arch_sha256"] = sha256_file(arch_path, ProjectError, "architecture file")
    for part in ("model", "data"):
        if d.get(part):
            # Only what the schema knows is stored (a load step's other arguments, e.g. expected_sha256, are
            # not part of a project), so every project written here opens again.
            entry = {k: v for k, v in d[part].items() if k in SCHEMA_V1[part] and k != "relative_path"}
            d[part] = dict(entry, relative_path=_relative(entry["path"], base))
    return d


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
        fd, tmp = temp_beside(base / path.name)
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
    with zf.open(info) as member:  # sizes and ratios were checked from the directory before this
        raw = member.read(MAX_MEMBER_BYTES + 1)
    if len(raw) > MAX_MEMBER_BYTES:
        raise ProjectError(f"{path.name}: {name} holds more than the {MAX_MEMBER_BYTES:,} bytes its header says.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProjectError(f"{path.name} is damaged: {name} is not UTF-8 text.") from None
    return loads_bounded(text, f"{path.name}: {name}", ProjectError)


def _check_archive(zf: zipfile.ZipFile, path: Path) -> None:
    """Refuse archives whose directory announces a bomb, encryption or an unknown compression."""
    infos = zf.infolist()
    if len(infos) > MAX_MEMBERS:
        raise ProjectError(f"{path.name} holds {len(infos):,} files; a project holds {MAX_MEMBERS} at most.")
    total = 0
    for info in infos:
        if info.flag_bits & ZIP_ENCRYPTED:
            raise ProjectError(f"{path.name}: {info.filename} is encrypted; NTK Studio projects never are.")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ProjectError(f"{path.name}: {info.filename} uses compression method {info.compress_type}, "
                               "which NTK Studio does not write (only stored and deflated).")
        if info.file_size > MAX_MEMBER_BYTES:
            raise ProjectError(f"{path.name}: {info.filename} unpacks to {info.file_size:,} bytes, over the "
                               f"{MAX_MEMBER_BYTES:,} limit.")
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > RATIO_CHECK_BYTES and ratio > MAX_COMPRESSION_RATIO:
            raise ProjectError(f"{path.name}: {info.filename} would unpack {ratio:,.0f}-fold (limit "
                               f"{MAX_COMPRESSION_RATIO}); it is a zip bomb, not a project.")
        total += info.file_size
    if total > MAX_TOTAL_BYTES:
        raise ProjectError(f"{path.name} unpacks to {total:,} bytes, over the {MAX_TOTAL_BYTES:,} limit.")


def migrate(header: dict[str, Any], path: Path) -> dict[str, Any]:
    """Return ``header`` upgraded to ``FORMAT_VERSION``; ProjectError for a newer or unknown version."""
    version = header.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ProjectError(f"{path.name} has no valid format version ({version!r}); it must be a whole number.")
    if version > FORMAT_VERSION:
        raise ProjectError(f"{path.name} was saved by a newer NTK Studio (project format {version}; this version "
                           f"reads up to {FORMAT_VERSION}). Update NTK Studio to open it.")
    while version < FORMAT_VERSION:
        header = MIGRATIONS[version](header)
        version = header["version"] = version + 1
    return header


def _arch_path(arch: str) -> Path:
    return Path(arch.strip().rpartition(":")[0]).expanduser()


def _first_lines(path: Path, kind: str) -> str:
    """Return what a person needs to judge the code: a .py file's first lines, a pickle's imports."""
    if kind == "architecture":
        text = head(path, ProjectError, "architecture file").decode("utf-8", "replace")
        return "\n".join(text.splitlines()[:HEAD_LINES])
    found = pickle_imports(read_regular(path, ProjectError, "model file", MAX_PICKLE_SCAN_BYTES))
    if not found:
        return "(no imports found in the pickle; it may still run code)"
    return "The pickle imports and calls: " + ", ".join(found[:HEAD_LINES])


def _located(part: str, entry: dict[str, Any], base: Path, warnings: list[str]) -> Path:
    """Return the input file's path: next to the project (inside its folder only), else where it was saved."""
    relative = entry.get("relative_path")
    if relative:
        candidate = base / relative
        if not inside(candidate, base):
            raise ProjectError(f"The project's {part} path {relative!r} points outside the project's folder "
                               f"({base}); a project may only name files inside it. Refused.")
        if candidate.exists():
            return Path(os.path.realpath(candidate))
    original = Path(entry["path"])
    if original.is_absolute() and original.exists():
        warnings.append(f"The {part} file was found at its original path {original}, not next to the project.")
        return original
    where = f"{base / relative} nor {original}" if relative else str(original)
    raise ProjectError(f"The project's {part} file is missing: neither {where} exists. Put the file back "
                       "(or next to the project) and open the project again.")


def _checked(part: str, entry: dict[str, Any], base: Path, warnings: list[str], progress) -> Path:
    """Return the located input file after checking its bytes against the SHA-256 the project recorded."""
    path = _located(part, entry, base, warnings)
    recorded = entry.get("sha256")
    if not recorded:
        what = "image folder" if path.is_dir() else "file"
        raise ProjectError(f"The project names the {part} {what} {path} without its SHA-256, so it cannot "
                           f"be checked before loading. Open the {what} itself instead of the project.")
    if path.is_dir():  # an image folder: the worker checks its manifest hash on the very bytes it decodes
        return path
    actual = sha256_file(path, ProjectError, f"{part} file", progress=progress)
    if actual != recorded:
        raise ProjectError(f"The {part} file {path} changed since the project was saved (its SHA-256 is "
                           f"{actual[:16]}…, the project recorded {recorded[:16]}…). Nothing was loaded; open "
                           "the file itself if the change is expected.")
    return path


def _code_to_run(model: dict[str, Any], path: Path, base: Path) -> list[CodeToRun]:
    code: list[CodeToRun] = []
    arch = model.get("arch")
    if arch:
        arch_file = _arch_path(arch)
        if not arch_file.is_absolute():
            arch_file = base / arch_file
            if not inside(arch_file, base):
                raise ProjectError(f"The project's architecture file {arch!r} points outside the project's folder.")
        arch_file = Path(os.path.realpath(arch_file))
        recorded = model.get("arch_sha256")
        if not recorded:
            raise ProjectError(f"The project names the architecture file {arch_file.name} without its SHA-256, "
                               "so it cannot be checked before it runs. Open the model file itself instead.")
        actual = sha256_file(arch_file, ProjectError, "architecture file", MAX_ARCH_BYTES)
        if actual != recorded:
            raise ProjectError(f"The architecture file {arch_file} changed since the project was saved (its "
                               f"SHA-256 is {actual[:16]}…, the project recorded {recorded[:16]}…). Nothing was run.")
        model["arch"] = f"{arch_file}:{arch.strip().rpartition(':')[2]}"
        code.append(CodeToRun("architecture", arch_file, actual, _first_lines(arch_file, "architecture")))
    if model.get("needs_pickle") or model.get("trust_pickle"):  # an old file's flag: ask, never obey
        code.append(CodeToRun("pickle", path, model["sha256"], _first_lines(path, "pickle")))
    return code


def load_project(path: str | Path, progress=None) -> Project:
    """Return the project stored at ``path``; ProjectError when it is missing, damaged, foreign or unsafe.

    Nothing is loaded or run: the input files are located (inside the project's folder, or where
    they were saved) and checked against their recorded SHA-256, and any code the model needs is
    listed in ``code_to_run`` for the person to allow. ``progress(fraction, text)`` is called while
    hashing. Every failure, whatever the archive holds, is a ProjectError.
    """
    path = Path(path)
    report = progress or (lambda fraction, text: None)
    try:
        with open_regular(path, ProjectError, "project file", MAX_PROJECT_FILE_BYTES) as raw:
            try:
                zf = zipfile.ZipFile(raw)
            except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
                raise ProjectError(f"{path.name} is not an NTK Studio project (not a readable zip archive: "
                                   f"{exc}).") from None
            with zf:
                _check_archive(zf, path)
                report(0.05, "reading project.json")
                header = _read_member(zf, PROJECT_MEMBER, path)
                header = _validate(header, path)
                results = _read_member(zf, RESULTS_MEMBER, path)
                if not isinstance(results, dict):
                    raise ProjectError(f"{path.name} is damaged: {RESULTS_MEMBER} is not a JSON object.")
        base = path.resolve().parent
        inputs, warnings = dict(header["inputs"]), []
        code: list[CodeToRun] = []
        for part in ("model", "data"):
            entry = inputs.get(part)
            if not entry:
                continue
            entry = inputs[part] = dict(entry)
            done = 0.1 if part == "model" else 0.5
            located = _checked(part, entry, base, warnings,
                               lambda n, total, p=part, d=done: report(d + 0.4 * n / max(total, 1), f"checking the {p} file"))
            entry["path"] = str(located)
            entry.pop("relative_path", None)
            if part == "model":
                code = _code_to_run(entry, located, base)
                entry["trust_pickle"] = False  # only the person, asked at open time, sets it
                entry.pop("needs_pickle", None)
                entry.pop("arch_sha256", None)
        report(1.0, "done")
        return Project(inputs=Inputs.from_dict(inputs), settings=header["settings"], results=results,
                       version=header["version"], app_version=str(header.get("app_version", "?")),
                       warnings=warnings, code_to_run=code)
    except ProjectError:
        raise
    except Exception as exc:  # noqa: BLE001 - zipfile, zlib and json raise many types; all mean "damaged"
        raise ProjectError(f"{path.name} is damaged or not an NTK Studio project ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:200] if str(exc) else 'no detail'}).") from None
