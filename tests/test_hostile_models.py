"""Hostile model files at the library level: pickles never run unasked, special files never block."""

from __future__ import annotations

import os

import pytest
import torch
from test_hostile_support import (
    MarkerPayload,
    make_fifo,
    pickle_payload,
    project_header,
    refused,
    sha256,
    write_project,
)

from ntk_studio.core.errors import ModelLoadError, UntrustedPickleError
from ntk_studio.core.models import load_model


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".pkl", ".bin", ".ckpt"])
def test_pickle_payload_does_not_run_without_trust(tmp_path, suffix):
    marker = tmp_path / "pwned"
    evil = pickle_payload(tmp_path / f"evil{suffix}", marker)
    with refused(UntrustedPickleError, "trust", inputs=(evil,)):
        load_model(evil)
    assert not marker.exists()


def test_legacy_format_pickle_payload_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "legacy.pt"
    torch.save({"m": MarkerPayload(str(marker))}, evil, _use_new_zipfile_serialization=False)
    with refused(ModelLoadError, inputs=(evil,)):
        load_model(evil)
    assert not marker.exists()


def test_trusted_pickle_is_the_persons_explicit_choice(tmp_path):
    """The flag works (so the refusals above are the flag's doing, not a broken payload)."""
    marker = tmp_path / "pwned"
    evil = pickle_payload(tmp_path / "evil.pt", marker)
    with pytest.raises(ModelLoadError):
        load_model(evil, trust_pickle=True)  # it unpickles (runs), then is not a model
    assert marker.exists()


SPECIAL = {
    "fifo": lambda d: make_fifo(d / "m.pt"),
    "dev zero": lambda d: (d / "z.pt").symlink_to("/dev/zero") or d / "z.pt",
    "dev null": lambda d: (d / "n.pt").symlink_to("/dev/null") or d / "n.pt",
}


@pytest.mark.parametrize("make", list(SPECIAL.values()), ids=list(SPECIAL))
def test_special_model_files_are_refused_at_once(tmp_path, make):
    path = make(tmp_path)
    with refused(ModelLoadError, "not a regular file", folder=tmp_path):
        load_model(path)


@pytest.mark.slow
def test_project_pickle_through_a_real_worker_runs_nothing(tmp_path):
    """The issue's regression, end to end: load_project + WorkerClient with a trust_pickle: true project."""
    from ntk_studio.app.project import load_project
    from ntk_studio.jobs.client import WorkerClient

    marker = tmp_path / "pwned"
    evil = pickle_payload(tmp_path / "evil.pt", marker)
    entry = {"path": str(evil), "relative_path": "evil.pt", "trust_pickle": True, "sha256": sha256(evil)}
    project = load_project(write_project(tmp_path / "p.ntkproj", project_header({"model": entry})))
    client = WorkerClient()
    try:
        for cmd, args in project.inputs.load_steps():
            events = client.wait_for(client.submit(cmd, **args), timeout=120)
            assert events[-1]["type"] == "error" and events[-1]["error_type"] == "UntrustedPickleError"
    finally:
        client.close()
    assert not marker.exists()
    assert os.path.getsize(evil) > 0


@pytest.mark.slow
def test_architecture_that_hangs_or_exits_is_an_error_event_from_the_worker(tmp_path, monkeypatch):
    from ntk_studio.jobs.client import WorkerClient

    monkeypatch.setenv("NTK_STUDIO_ARCH_TIMEOUT_S", "6")
    weights = tmp_path / "w.pt"
    torch.save(torch.nn.Linear(3, 1).state_dict(), weights)
    bodies = {"hang": "def make():\n    while True:\n        pass\n", "exit": "def make():\n    os._exit(0)\n"}
    client = WorkerClient()
    try:
        for name, body in bodies.items():
            (tmp_path / f"{name}.py").write_text("import os\n" + body)
            job = client.submit("load_model", path=str(weights), arch=f"{tmp_path / name}.py:make")
            last = client.wait_for(job, timeout=120)[-1]
            assert last["type"] == "error" and last["error_type"] == "ModelLoadError", last
            assert ("within 6 s" if name == "hang" else "ended its process") in last["message"]
        assert client.restarts == 0  # the worker itself never hung or died
    finally:
        client.close()
