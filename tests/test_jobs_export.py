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
