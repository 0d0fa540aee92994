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
