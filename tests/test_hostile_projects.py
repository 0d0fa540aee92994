"""Hostile .ntkproj files: no code runs on open, no path leaves the folder, every failure is a ProjectError."""

from __future__ import annotations

import json
import os
import time
import zipfile
from pathlib import Path

import pytest
import torch
from test_hostile_support import (
    arch_payload,
    pickle_payload,
    project_header,
    refused,
    sha256,
    write_project,
)

from ntk_studio.app.project import Project, ProjectError, load_project, save_project
from ntk_studio.app.session import Inputs
from ntk_studio.core.errors import NTKStudioError, UntrustedPickleError
from ntk_studio.core.models import load_model

BOMB_SECONDS = 2.0


def _model_entry(path: Path, **extra) -> dict:
    return {"path": str(path), "relative_path": path.name, "arch": None, "sha256": sha256(path), **extra}


def _run_load_steps(project: Project) -> None:
    """Do in this process what the worker does with the project's load steps (model loads only)."""
    for cmd, args in project.inputs.load_steps():
        if cmd == "load_model":
            load_model(args["path"], arch=args["arch"], trust_pickle=args["trust_pickle"])


# ---------------------------------------------------------------- code execution (regressions)

def test_trust_flag_in_a_project_file_is_ignored(tmp_path):
    marker = tmp_path / "pwned"
    evil = pickle_payload(tmp_path / "evil.pt", marker)
    proj = write_project(tmp_path / "p.ntkproj",
                         project_header({"model": _model_entry(evil, trust_pickle=True)}))
    project = load_project(proj)
    assert [args["trust_pickle"] for cmd, args in project.inputs.load_steps() if cmd == "load_model"] == [False]
    assert [c.kind for c in project.code_to_run] == ["pickle"]
    with pytest.raises(UntrustedPickleError):
        _run_load_steps(project)
    assert not marker.exists()


def test_trust_is_not_saved(tmp_path):
    model = tmp_path / "m.pt"
    torch.save(torch.nn.Linear(2, 1).state_dict(), model)
    inputs = Inputs(model={"path": str(model), "arch": None, "trust_pickle": True, "sha256": sha256(model)})
    written = save_project(tmp_path / "p.ntkproj", Project(inputs))
    with zipfile.ZipFile(written) as zf:
        assert "trust_pickle" not in zf.read("project.json").decode()


def test_arch_file_named_by_a_project_is_not_run_on_open(tmp_path):
    marker = tmp_path / "pwned"
    arch = arch_payload(tmp_path / "arch.py", marker)
    weights = tmp_path / "w.pt"
    torch.save(torch.nn.Linear(3, 1).state_dict(), weights)
    entry = _model_entry(weights, arch=f"{arch}:make", arch_sha256=sha256(arch))
    project = load_project(write_project(tmp_path / "p.ntkproj", project_header({"model": entry})))
    assert not marker.exists()
    (code,) = project.code_to_run
    assert code.kind == "architecture" and code.path == arch.resolve() and code.sha256 == sha256(arch)
    assert "open(" in code.first_lines


def test_changed_arch_file_stops_the_load(tmp_path):
    marker = tmp_path / "pwned"
    arch = arch_payload(tmp_path / "arch.py", marker)
    weights = tmp_path / "w.pt"
    torch.save(torch.nn.Linear(3, 1).state_dict(), weights)
    entry = _model_entry(weights, arch=f"{arch}:make", arch_sha256="0" * 64)
    proj = write_project(tmp_path / "p.ntkproj", project_header({"model": entry}))
    with refused(ProjectError, "arch.py", "SHA-256", inputs=(proj, arch, weights)):
        load_project(proj)
    assert not marker.exists()


def test_changed_model_file_stops_the_load(tmp_path):
    weights = tmp_path / "w.pt"
    torch.save(torch.nn.Linear(3, 1).state_dict(), weights)
    entry = _model_entry(weights, sha256="f" * 64)
    proj = write_project(tmp_path / "p.ntkproj", project_header({"model": entry}))
    with refused(ProjectError, "w.pt", "changed", inputs=(proj, weights)):
        load_project(proj)


# ---------------------------------------------------------------- paths stay inside (regressions)

@pytest.mark.parametrize("part", ["model", "data"])
@pytest.mark.parametrize("relative", ["../../../../etc/passwd", "../outside.csv", "sub/../../outside.csv"])
def test_relative_path_outside_the_folder_is_refused(tmp_path, part, relative):
    folder = tmp_path / "proj"
    folder.mkdir()
    outside = tmp_path / "outside.csv"
    outside.write_text("x,y\n1,2\n3,4\n")
    entry = {"path": "/nonexistent/x", "relative_path": relative, "sha256": sha256(outside)}
    proj = write_project(folder / "p.ntkproj", project_header({part: entry}))
    with refused(ProjectError, "outside", inputs=(proj, outside)):
        load_project(proj)


def test_symlink_out_of_the_project_folder_is_refused(tmp_path):
    folder = tmp_path / "proj"
    folder.mkdir()
    secret = tmp_path / "secret.csv"
    secret.write_text("x,y\n1,2\n3,4\n")
    (folder / "data.csv").symlink_to(secret)
    entry = {"path": "/nonexistent/x", "relative_path": "data.csv", "sha256": sha256(secret)}
    proj = write_project(folder / "p.ntkproj", project_header({"data": entry}))
    with refused(ProjectError, "outside", inputs=(proj, secret)):
        load_project(proj)


# ---------------------------------------------------------------- archives (regressions)

def test_zip_bomb_is_refused_before_extraction(tmp_path):
    bomb = b"{" + b" " * (300 * 1024 * 1024) + b"}"
    proj = write_project(tmp_path / "bomb.ntkproj", project_header(), results=bomb)
    assert proj.stat().st_size < 1024 * 1024
    start = time.monotonic()
    with refused(ProjectError, "results.json", inputs=(proj,)):
        load_project(proj)
    assert time.monotonic() - start < BOMB_SECONDS


def test_every_project_failure_is_a_project_error(tmp_path):
    proj = write_project(tmp_path / "deep.ntkproj", "[" * 100_000 + "]" * 100_000)
    with refused(ProjectError, "nested", inputs=(proj,)):
        load_project(proj)
    assert issubclass(ProjectError, NTKStudioError)


def test_version_true_is_refused(tmp_path):
    proj = write_project(tmp_path / "v.ntkproj", project_header(version=True))
    with refused(ProjectError, "version", inputs=(proj,)):
        load_project(proj)


def test_project_without_sha256_for_a_file_is_refused(tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("x,y\n1,2\n3,4\n")
    entry = {"path": str(data), "relative_path": "d.csv"}
    proj = write_project(tmp_path / "p.ntkproj", project_header({"data": entry}))
    with refused(ProjectError, "SHA-256", inputs=(proj, data)):
        load_project(proj)


def test_a_saved_project_still_opens(tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("x,y\n1,2\n3,4\n")
    inputs = Inputs(example="sine", data={"path": str(data), "target": "y", "features": None,
                                          "classification": False, "sha256": sha256(data)})
    written = save_project(tmp_path / "p.ntkproj", Project(inputs, {"method": {"noise": 0.1}}, {"fit_gp": {"a": 1}}))
    project = load_project(written)
    assert project.inputs.data["path"] == str(data.resolve())
    assert project.results == {"fit_gp": {"a": 1}} and project.settings == {"method": {"noise": 0.1}}
    assert project.code_to_run == []
    os.utime(data)  # touching without changing bytes is fine
    assert load_project(written).inputs.example == "sine"
    assert json.loads(zipfile.ZipFile(written).read("project.json"))["version"] == 1


# ---------------------------------------------------------------- every malformed project is a ProjectError

def _member_flags(path: Path, name: str, flag: int = 0, method: int | None = None) -> Path:
    """Rewrite the first member's general-purpose flag / compression method in both zip headers."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        assert zf.infolist()[0].filename == name and zf.infolist()[0].header_offset == 0
    for at, flag_at, method_at in ((0, 6, 8), (data.index(b"PK\x01\x02"), 8, 10)):
        if flag:
            data[at + flag_at] |= flag
        if method is not None:
            data[at + method_at:at + method_at + 2] = method.to_bytes(2, "little")
    path.write_bytes(bytes(data))
    return path


def _header(**change):
    return json.dumps({**project_header(), **change})


MALFORMED = {
    "empty file": (lambda d: (d / "p.ntkproj").write_bytes(b""), "not a readable zip"),
    "not a zip": (lambda d: (d / "p.ntkproj").write_bytes(b"hello"), "not a readable zip"),
    "truncated zip": (lambda d: (d / "p.ntkproj").write_bytes(
        write_project(d / "x.zip", project_header()).read_bytes()[:60]), "p.ntkproj"),
    "no project.json": (lambda d: _zip(d, {"results.json": "{}"}), "no project.json"),
    "no results.json": (lambda d: _zip(d, {"project.json": _header()}), "no results.json"),
    "project.json not utf-8": (lambda d: _zip(d, {"project.json": b"\xff\xfe{}", "results.json": "{}"}), "UTF-8"),
    "project.json not json": (lambda d: _zip(d, {"project.json": "{nope", "results.json": "{}"}), "valid JSON"),
    "project.json an array": (lambda d: _zip(d, {"project.json": "[]", "results.json": "{}"}), "another format"),
    "foreign format": (lambda d: _zip(d, {"project.json": _header(format="zip"), "results.json": "{}"}),
                       "another format"),
    "version true": (lambda d: _zip(d, {"project.json": _header(version=True), "results.json": "{}"}), "version"),
    "version zero": (lambda d: _zip(d, {"project.json": _header(version=0), "results.json": "{}"}), "version"),
    "version text": (lambda d: _zip(d, {"project.json": _header(version="1"), "results.json": "{}"}), "version"),
    "version float": (lambda d: _zip(d, {"project.json": _header(version=1.0), "results.json": "{}"}), "version"),
    "version newer": (lambda d: _zip(d, {"project.json": _header(version=99), "results.json": "{}"}), "newer"),
    "inputs a list": (lambda d: _zip(d, {"project.json": _header(inputs=[1]), "results.json": "{}"}), "inputs"),
    "settings a string": (lambda d: _zip(d, {"project.json": _header(settings="x"), "results.json": "{}"}),
                          "settings"),
    "unknown top field": (lambda d: _zip(d, {"project.json": _header(run="rm"), "results.json": "{}"}), "'run'"),
    "model a string": (lambda d: _zip(d, {"project.json": _header(inputs={"model": "m.pt"}), "results.json": "{}"}),
                       "inputs.model"),
    "model path a number": (lambda d: _zip(d, {"project.json": _header(inputs={"model": {"path": 3}}),
                                               "results.json": "{}"}), "inputs.model.path"),
    "model without path": (lambda d: _zip(d, {"project.json": _header(inputs={"model": {"arch": "a.py:f"}}),
                                              "results.json": "{}"}), "'path'"),
    "sha256 not hex": (lambda d: _zip(d, {"project.json": _header(inputs={"data": {"path": "d.csv", "sha256": "x"}}),
                                          "results.json": "{}"}), "SHA-256"),
    "features numbers": (lambda d: _zip(d, {"project.json": _header(
        inputs={"data": {"path": "d.csv", "features": [1, 2]}}), "results.json": "{}"}), "column names"),
    "classification text": (lambda d: _zip(d, {"project.json": _header(
        inputs={"data": {"path": "d.csv", "classification": "yes"}}), "results.json": "{}"}), "classification"),
    "example a number": (lambda d: _zip(d, {"project.json": _header(inputs={"example": 5}), "results.json": "{}"}),
                         "example"),
    "needs_pickle text": (lambda d: _zip(d, {"project.json": _header(
        inputs={"model": {"path": "m.pt", "needs_pickle": "no"}}), "results.json": "{}"}), "needs_pickle"),
    "results a list": (lambda d: _zip(d, {"project.json": _header(), "results.json": "[]"}), "results.json"),
    "results deep": (lambda d: _zip(d, {"project.json": _header(), "results.json": "[" * 5000}), "nested"),
    "settings deep": (lambda d: _zip(d, {"project.json": _header(settings=_deep(80)), "results.json": "{}"}),
                      "nested"),
    "results NaN text": (lambda d: _zip(d, {"project.json": _header(), "results.json": '{"a": NaX}'}), "valid JSON"),
    "too many members": (lambda d: _zip(d, {"project.json": _header(), "results.json": "{}",
                                           **{f"f{i}": "" for i in range(40)}}), "files"),
    "member declared huge": (lambda d: _zip(d, {"project.json": _header(), "results.json": "{}",
                                               "big": b"0" * (2 * 1024 * 1024)}, ratio_only=True), "unpack"),
    "encrypted member": (lambda d: _member_flags(_zip(d, {"project.json": _header(), "results.json": "{}"}),
                                                 "project.json", flag=0x1), "encrypted"),
    "unknown compression": (lambda d: _member_flags(_zip(d, {"project.json": _header(), "results.json": "{}"}),
                                                    "project.json", method=99), "compression"),
    "bzip2 member": (lambda d: _zip(d, {"project.json": _header(), "results.json": "{}"},
                                    compression=zipfile.ZIP_BZIP2), "compression"),
    "fifo as project": (lambda d: os.mkfifo(d / "p.ntkproj"), "named pipe"),
    "dev zero as project": (lambda d: (d / "p.ntkproj").symlink_to("/dev/zero"), "character device"),
    "folder as project": (lambda d: (d / "p.ntkproj").mkdir(), "folder"),
    "missing project": (lambda d: None, "No such"),
}


def _deep(n: int) -> dict:
    d: dict = {}
    for _ in range(n):
        d = {"a": d}
    return d


def _zip(d: Path, members: dict, compression: int = zipfile.ZIP_DEFLATED, ratio_only: bool = False) -> Path:
    path = d / "p.ntkproj"
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, content in members.items():
            zf.writestr(name, content)
    return path


@pytest.mark.parametrize("case", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_project_is_a_project_error(tmp_path, case):
    make, phrase = case
    make(tmp_path)
    path = tmp_path / "p.ntkproj"
    with refused(ProjectError, phrase, inputs=(path,) if path.is_file() else (), folder=tmp_path):
        load_project(path)


def test_data_fifo_next_to_the_project_is_refused(tmp_path):
    os.mkfifo(tmp_path / "d.csv")
    entry = {"path": str(tmp_path / "d.csv"), "relative_path": "d.csv", "sha256": "a" * 64}
    proj = write_project(tmp_path / "p.ntkproj", project_header({"data": entry}))
    with refused(ProjectError, "named pipe", inputs=(proj,)):
        load_project(proj)


def test_arch_outside_the_folder_by_relative_path_is_refused(tmp_path):
    folder = tmp_path / "proj"
    folder.mkdir()
    weights = folder / "w.pt"
    torch.save(torch.nn.Linear(3, 1).state_dict(), weights)
    arch = arch_payload(tmp_path / "arch.py", tmp_path / "pwned")
    entry = _model_entry(weights, arch="../arch.py:make", arch_sha256=sha256(arch))
    proj = write_project(folder / "p.ntkproj", project_header({"model": entry}))
    with refused(ProjectError, "outside the project's folder", inputs=(proj, arch)):
        load_project(proj)
    assert not (tmp_path / "pwned").exists()
