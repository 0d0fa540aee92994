"""The SHA-256 a project recorded travels with the load itself: the bytes parsed are the bytes checked.

Opening a project hashes its files first, but a file swapped between that check and the worker's read
would otherwise load unchecked. So the worker's load_model / load_data jobs take ``expected_sha256``
and the loaders compare it with the hash of the very bytes they parse (an image folder: its manifest);
a mismatch is a typed error naming the file, nothing is loaded, and nothing in the file runs.
"""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest
import torch
from job_runner import run
from PIL import Image
from test_hostile_support import pickle_payload, project_header, sha256, write_project

from ntk_studio.app.project import Project, ProjectError, load_project, save_project
from ntk_studio.app.session import Inputs
from ntk_studio.core.data import load_arrays, load_dataset, load_image_folder, load_table
from ntk_studio.core.errors import DataLoadError, ModelLoadError
from ntk_studio.core.models import load_model
from ntk_studio.jobs.protocol import ProtocolError, decode_request
from ntk_studio.jobs.tasks import WorkerState

WRONG = "0" * 64


def _script_model(path, inputs: int = 3, outputs: int = 1):
    torch.jit.script(torch.nn.Linear(inputs, outputs)).save(str(path))
    return path


def _table(path, rows: int = 12):
    rng = np.random.default_rng(0)
    lines = ["a,b,c,y"] + [",".join(f"{v:.6f}" for v in rng.normal(size=4)) for _ in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _image_folder(root, size: int = 4):
    rng = np.random.default_rng(1)
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
        for i in range(2):
            pixels = rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    return root


def _model_entry(path) -> dict:
    return {"path": str(path), "relative_path": path.name, "arch": None, "sha256": sha256(path)}


# ---------------------------------------------------------------- the library loaders

def test_model_with_the_expected_hash_loads(tmp_path):
    model = _script_model(tmp_path / "m.pt")
    loaded = load_model(model, expected_sha256=sha256(model))
    assert loaded.sha256 == sha256(model)


def test_model_with_another_hash_is_refused_before_unpickling(tmp_path):
    marker = tmp_path / "pwned"
    evil = pickle_payload(tmp_path / "evil.pt", marker)
    before = evil.read_bytes()
    with pytest.raises(ModelLoadError, match="SHA-256") as info:
        load_model(evil, trust_pickle=True, expected_sha256=WRONG)
    assert str(evil) in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists() and evil.read_bytes() == before


def test_malformed_expected_hash_is_refused(tmp_path):
    model = _script_model(tmp_path / "m.pt")
    with pytest.raises(ModelLoadError, match="64 hex"):
        load_model(model, expected_sha256="abc")


def test_expected_hash_is_case_insensitive(tmp_path):
    model = _script_model(tmp_path / "m.pt")
    assert load_model(model, expected_sha256=sha256(model).upper()).sha256 == sha256(model)


@pytest.mark.parametrize("kind", ["csv", "npz", "npy"])
def test_data_file_hash_is_checked_on_the_bytes_parsed(tmp_path, kind):
    if kind == "csv":
        path, load, options = _table(tmp_path / "d.csv"), load_table, {"target": "y"}
    elif kind == "npz":
        path = tmp_path / "d.npz"
        np.savez(path, X=np.ones((5, 2)), y=np.arange(5.0))
        load, options = load_arrays, {}
    else:
        path = tmp_path / "d.npy"
        np.save(path, np.arange(12.0).reshape(6, 2))
        load, options = load_arrays, {}
    assert load(path, expected_sha256=sha256(path), **options).sha256 == sha256(path)
    with pytest.raises(DataLoadError, match="SHA-256") as info:
        load(path, expected_sha256=WRONG, **options)
    assert path.name in str(info.value)
    # load_dataset passes it through to whichever loader it picks
    with pytest.raises(DataLoadError, match="SHA-256"):
        load_dataset(path, expected_sha256=WRONG, **options)


def test_image_folder_manifest_is_checked(tmp_path):
    folder = _image_folder(tmp_path / "imgs")
    manifest = load_image_folder(folder).sha256
    assert load_image_folder(folder, expected_sha256=manifest).sha256 == manifest
    with pytest.raises(DataLoadError, match="SHA-256") as info:
        load_image_folder(folder, expected_sha256=WRONG)
    assert str(folder) in str(info.value)


def test_image_folder_hash_is_checked_before_decoding(tmp_path):
    folder = _image_folder(tmp_path / "imgs")
    manifest = load_image_folder(folder).sha256
    (folder / "cat" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image any more")
    # the changed folder is named as changed, not as holding a damaged image: nothing was decoded
    with pytest.raises(DataLoadError, match="changed") as info:
        load_image_folder(folder, expected_sha256=manifest)
    assert "Could not read image" not in str(info.value)


# ---------------------------------------------------------------- the worker's jobs

def test_protocol_takes_expected_sha256():
    req = decode_request('{"id": "1", "cmd": "load_model", "args": {"path": "m.pt", "expected_sha256": null}}')
    assert req["args"]["expected_sha256"] is None
    req = decode_request('{"id": "1", "cmd": "load_data", "args": {"path": "d.csv"}}')
    assert req["args"]["expected_sha256"] is None
    with pytest.raises(ProtocolError):
        decode_request('{"id": "1", "cmd": "load_model", "args": {"path": "m.pt", "expected_sha256": 5}}')


def test_worker_refuses_a_model_swapped_after_the_check(tmp_path):
    marker = tmp_path / "pwned"
    model = _script_model(tmp_path / "m.pt")
    recorded = sha256(model)
    pickle_payload(model, marker)  # swapped after the project was checked, before the worker reads it
    state = WorkerState()
    with pytest.raises(ModelLoadError, match="SHA-256") as info:
        run(state, "load_model", path=str(model), trust_pickle=True, expected_sha256=recorded)
    assert str(model) in str(info.value)
    assert state.model is None and not marker.exists()


def test_worker_loads_model_and_data_with_matching_hashes(tmp_path):
    model, table = _script_model(tmp_path / "m.pt"), _table(tmp_path / "d.csv")
    state = WorkerState()
    _, loaded = run(state, "load_model", path=str(model), expected_sha256=sha256(model))
    assert loaded["sha256"] == sha256(model)
    _, data = run(state, "load_data", path=str(table), target="y", features=["a", "b", "c"],
                  expected_sha256=sha256(table))
    assert data["sha256"] == sha256(table) and state.data is not None


def test_worker_refuses_changed_data_and_keeps_the_previous(tmp_path):
    model, table = _script_model(tmp_path / "m.pt"), _table(tmp_path / "d.csv")
    state = WorkerState()
    run(state, "load_model", path=str(model))
    with pytest.raises(DataLoadError, match="SHA-256") as info:
        run(state, "load_data", path=str(table), target="y", features=["a", "b", "c"], expected_sha256=WRONG)
    assert table.name in str(info.value) and state.data is None and state.data_source is None


def test_worker_refuses_a_changed_image_folder(tmp_path):
    folder = _image_folder(tmp_path / "imgs")
    state = WorkerState()
    with pytest.raises(DataLoadError, match="SHA-256") as info:
        run(state, "load_data", path=str(folder), expected_sha256=WRONG)
    assert str(folder) in str(info.value) and state.data is None
    _, data = run(state, "load_data", path=str(folder), expected_sha256=load_image_folder(folder).sha256)
    assert state.data is not None and data["sha256"] == load_image_folder(folder).sha256


def test_data_reread_for_a_new_model_is_checked_again(tmp_path):
    table = _table(tmp_path / "d.csv")
    state = WorkerState()
    run(state, "load_data", path=str(table), target="y", features=["a", "b", "c"], expected_sha256=sha256(table))
    _table(tmp_path / "d.csv", rows=13)  # the file changes under the session
    _, loaded = run(state, "load_model", path=str(_script_model(tmp_path / "m.pt")))
    # the model loads; the data no longer match what was checked, and the session says so
    assert any("SHA-256" in n for n in loaded["notes"])


# ---------------------------------------------------------------- the project flow

def test_project_load_steps_carry_the_recorded_hashes(tmp_path):
    model, table = _script_model(tmp_path / "m.pt"), _table(tmp_path / "d.csv")
    inputs = Inputs(model={"path": str(model), "arch": None, "trust_pickle": False, "sha256": sha256(model)},
                    data={"path": str(table), "target": "y", "features": None, "sha256": sha256(table)})
    project = load_project(save_project(tmp_path / "p.ntkproj", Project(inputs)))
    steps = dict(project.load_steps())
    assert steps["load_model"]["expected_sha256"] == sha256(model)
    assert steps["load_data"]["expected_sha256"] == sha256(table)


def test_step_args_with_expected_sha256_save_and_reopen(tmp_path):
    model = _script_model(tmp_path / "m.pt")
    # what the run model records after a project load: the step's args (with the expected hash) + sha256
    inputs = Inputs(model={"path": str(model), "arch": None, "trust_pickle": False,
                           "expected_sha256": sha256(model), "sha256": sha256(model)})
    project = load_project(save_project(tmp_path / "p.ntkproj", Project(inputs)))
    assert "expected_sha256" not in project.inputs.model


def test_model_swapped_after_the_project_check_is_a_hard_stop(tmp_path):
    marker = tmp_path / "pwned"
    model = _script_model(tmp_path / "m.pt")
    proj = write_project(tmp_path / "p.ntkproj", project_header({"model": _model_entry(model)}))
    project = load_project(proj)  # the pre-check passes
    pickle_payload(model, marker)  # then the file is swapped
    state = WorkerState()
    for cmd, args in project.load_steps():
        with pytest.raises(ModelLoadError, match="SHA-256") as info:
            run(state, cmd, **{**args, "trust_pickle": True})  # even had the person allowed a pickle
        assert str(model) in str(info.value)
    assert state.model is None and not marker.exists()


def test_image_folder_changed_after_saving_stops_the_load(tmp_path):
    folder = _image_folder(tmp_path / "imgs")
    manifest = load_image_folder(folder).sha256
    data = {"path": str(folder), "target": None, "features": None, "classification": True, "sha256": manifest}
    written = save_project(tmp_path / "p.ntkproj", Project(Inputs(data=data)))
    project = load_project(written)
    state = WorkerState()
    steps = project.load_steps()
    assert steps == [("load_data", {**steps[0][1], "expected_sha256": manifest})]
    run(state, steps[0][0], **steps[0][1])  # unchanged: loads
    shutil.copy(folder / "cat" / "0.png", folder / "dog" / "extra.png")  # changed after saving
    state = WorkerState()
    with pytest.raises(DataLoadError, match="changed") as info:
        run(state, "load_data", **load_project(written).load_steps()[0][1])
    assert str(folder) in str(info.value) and state.data is None


def test_project_image_folder_without_a_hash_is_refused(tmp_path):
    folder = _image_folder(tmp_path / "imgs")
    entry = {"path": str(folder), "relative_path": "imgs"}
    proj = write_project(tmp_path / "p.ntkproj", project_header({"data": entry}))
    with pytest.raises(ProjectError, match="SHA-256"):
        load_project(proj)


def test_manifest_hash_is_what_images_py_computes(tmp_path):
    folder = _image_folder(tmp_path / "imgs")
    digest = hashlib.sha256()
    for f in sorted(folder.rglob("*.png")):
        rel = f.relative_to(folder).as_posix()
        digest.update(f"{rel}\0{hashlib.sha256(f.read_bytes()).hexdigest()}\n".encode())
    assert load_image_folder(folder).sha256 == digest.hexdigest()


# ---------------------------------------------------------------- the window: a hard stop with a dialog

LOAD_TIMEOUT_MS = 30_000


def _swapping_reader(monkeypatch, swap):
    """Make the window's project reader swap a file right after the project's own hash check passed."""
    import ntk_studio.app.file_actions as file_actions

    real = file_actions.load_project

    def checked_then_swapped(path, progress=None):
        project = real(path, progress=progress)
        swap()
        return project

    monkeypatch.setattr(file_actions, "load_project", checked_then_swapped)


def _window_opening(qtbot, tmp_path, monkeypatch, proj):
    pytest.importorskip("pytestqt")
    from PySide6.QtWidgets import QMessageBox

    from ntk_studio.app.main_window import MainWindow
    from ntk_studio.app.recent import Store

    shown: list[tuple[str, str]] = []
    monkeypatch.setattr(QMessageBox, "exec", lambda box: shown.append((box.windowTitle(), box.text())) or 0)
    win = MainWindow(interactive_errors=True, store=Store(tmp_path / "settings.json"), example=None)
    qtbot.addWidget(win)
    with qtbot.waitSignal(win.run_finished, timeout=LOAD_TIMEOUT_MS) as done:
        win.open_project(str(proj))
    qtbot.waitUntil(lambda: win.job is None, timeout=LOAD_TIMEOUT_MS)
    return win, done.args[0], shown


def test_window_stops_on_a_model_swapped_after_the_check(qtbot, tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    model = _script_model(tmp_path / "m.pt")
    proj = write_project(tmp_path / "p.ntkproj", project_header({"model": _model_entry(model)}))
    _swapping_reader(monkeypatch, lambda: _script_model(model, inputs=4))
    win, ok, shown = _window_opening(qtbot, tmp_path, monkeypatch, proj)
    try:
        assert ok is False
        (title, text), = shown
        assert "ModelLoadError" in title and str(model) in text and "changed" in text
        assert win.inputs.model is None and not win.session.get("model") and not marker.exists()
        assert not any("warning" in e[0] for e in win.errors)
    finally:
        win.close()


def test_window_stops_on_an_image_folder_changed_after_saving(qtbot, tmp_path, monkeypatch):
    folder = _image_folder(tmp_path / "imgs")
    data = {"path": str(folder), "target": None, "features": None, "classification": True,
            "sha256": load_image_folder(folder).sha256}
    written = save_project(tmp_path / "p.ntkproj", Project(Inputs(data=data)))
    (folder / "dog" / "1.png").unlink()  # changed after saving (load_project cannot see it: a folder)
    win, ok, shown = _window_opening(qtbot, tmp_path, monkeypatch, written)
    try:
        assert ok is False
        (title, text), = shown
        assert "DataLoadError" in title and str(folder) in text
        assert win.inputs.data is None and not win.session.get("data")
    finally:
        win.close()


def test_data_opened_with_a_task_saves_and_reopens(tmp_path):
    table = _table(tmp_path / "d.csv")
    # what the window records after open_data (its args, incl. the Data tab's task) plus the worker's hash
    data = {"path": str(table), "target": "y", "features": None, "task": "regression", "channels": None,
            "image_size": None, "expected_sha256": sha256(table), "sha256": sha256(table)}
    project = load_project(save_project(tmp_path / "p.ntkproj", Project(Inputs(data=data))))
    ((cmd, args),) = project.load_steps()
    assert cmd == "load_data" and args["task"] == "regression" and args["expected_sha256"] == sha256(table)
    state = WorkerState()
    run(state, cmd, **args)
    assert state.data is not None


def test_project_with_an_unknown_task_is_refused(tmp_path):
    table = _table(tmp_path / "d.csv")
    entry = {"path": str(table), "relative_path": "d.csv", "sha256": sha256(table), "task": "__import__"}
    with pytest.raises(ProjectError, match="task"):
        load_project(write_project(tmp_path / "p.ntkproj", project_header({"data": entry})))


def test_restore_steps_for_a_fresh_worker_carry_the_loaded_hashes(tmp_path):
    """After a worker restart the inputs are loaded again: the bytes must be those loaded (and, for a pickle,
    allowed) before, or a file swapped meanwhile would run on the person's earlier "yes"."""
    marker = tmp_path / "pwned"
    model, table = _script_model(tmp_path / "m.pt"), _table(tmp_path / "d.csv")
    inputs = Inputs(model={"path": str(model), "arch": None, "trust_pickle": True, "sha256": sha256(model)},
                    data={"path": str(table), "target": "y", "features": None, "task": "auto",
                          "sha256": sha256(table)})
    steps = dict(inputs.load_steps())
    assert steps["load_model"]["expected_sha256"] == sha256(model)
    assert steps["load_data"]["expected_sha256"] == sha256(table)
    pickle_payload(model, marker)  # swapped while the old worker was running
    with pytest.raises(ModelLoadError, match="changed"):
        run(WorkerState(), "load_model", **steps["load_model"])
    assert not marker.exists()


def test_changed_table_that_no_longer_parses_is_reported_as_changed(tmp_path):
    table = _table(tmp_path / "d.csv")
    recorded = sha256(table)
    table.write_text("a,b,c,y\n1,2\n")  # swapped for something that would not parse either
    with pytest.raises(DataLoadError, match="changed") as info:
        load_table(table, target="y", expected_sha256=recorded)
    assert table.name in str(info.value)
