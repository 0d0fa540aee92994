"""The worker's export job, driven in-process: the file it writes predicts what the fit predicted."""

from __future__ import annotations

import numpy as np
import pytest

from job_runner import run
from ntk_studio.core.errors import NotFittedError
from ntk_studio.jobs.tasks import WorkerState

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def test_export_before_a_fit_is_a_clear_error(tmp_path):
    state = WorkerState()
    run(state, "load_example", name="sine")
    with pytest.raises(NotFittedError, match="run Adapt first"):
        run(state, "export", onnx=str(tmp_path / "m.onnx"))
    assert not (tmp_path / "m.onnx").exists()


def test_exported_file_reproduces_the_fit(tmp_path):
    from ntk_studio.core.export import onnx_session

    state = WorkerState()
    run(state, "load_example", name="sine")
    _, fit = run(state, "fit_gp", n_adapt=12, seed=3, noise=0.01)
    events, report = run(state, "export", n_adapt=12, seed=3, onnx=str(tmp_path / "sine.onnx"))
    assert events[0][0] == "progress" and "held-out rows" in events[0][1]["message"]
    assert report["max_relative_error"] <= 1e-4 and report["task"] == "regression"
    session = onnx_session(tmp_path / "sine.onnx")
    x = np.asarray(fit["x"], dtype=np.float64).reshape(-1, 1)
    mean, f_var = session.run(["mean", "f_variance"], {"x": x})
    assert np.abs(mean[:, 0] - np.asarray(fit["mean"])).max() < 1e-8
    assert np.abs(np.sqrt(f_var[:, 0]) - np.asarray(fit["std"])).max() < 1e-8


def test_export_of_a_loaded_model_file_records_its_sha256(tmp_path):
    import hashlib

    import torch

    from models import mlp
    from ntk_studio.core.export import read_onnx_metadata

    (tmp_path / "arch.py").write_text(
        "from torch import nn\n\ndef reg():\n"
        "    return nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 5), nn.GELU(), nn.Linear(5, 1))\n")
    weights = tmp_path / "reg.pt"
    torch.save(mlp().state_dict(), weights)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 3))
    rows = "\n".join(f"{a:.17g},{b:.17g},{c:.17g},{np.sin(a):.17g}" for a, b, c in X)
    (tmp_path / "rows.csv").write_text("a,b,c,y\n" + rows + "\n")
    state = WorkerState()
    run(state, "load_model", path=str(weights), arch=f"{tmp_path / 'arch.py'}:reg")
    run(state, "load_data", path=str(tmp_path / "rows.csv"), target="y", features=["a", "b", "c"])
    run(state, "fit_gp", n_adapt=10, seed=0)
    _, report = run(state, "export", n_adapt=10, seed=0, onnx=str(tmp_path / "m.onnx"))
    assert report["max_relative_error"] <= 1e-4
    meta = read_onnx_metadata(tmp_path / "m.onnx")
    assert meta["source_model_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
