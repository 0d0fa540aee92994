"""The worker's jobs driven in-process: loading files, the route estimate, classification, trajectories."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from job_runner import run
from models import mlp, two_output
from ntk_studio.core import LinearizedClassifier, LinearizedGP, LinearizedTrajectory
from ntk_studio.core.errors import ModelLoadError, ShapeError
from ntk_studio.core.metrics_regression import calibration_curve
from ntk_studio.jobs.fit_tasks import trajectory_steps
from ntk_studio.jobs.tasks import WorkerState

REL_TOL = 1e-10
N_ROWS = 40
N_ADAPT = 12
# The architectures of tests/models.py's mlp and two_output, as a user's file.py:factory.
ARCH_SOURCE = """from torch import nn

def reg():
    return nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 5), nn.GELU(), nn.Linear(5, 1))

def clf():
    return nn.Sequential(nn.Linear(3, 7), nn.Tanh(), nn.Linear(7, 2))
"""


@pytest.fixture
def files(tmp_path):
    """Return paths of a TorchScript 3-input regressor, a 2-class one, and CSVs they fit."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N_ROWS, 3))
    y = np.sin(X[:, 0]) + 0.1 * X[:, 1]
    label = (X[:, 0] > 0).astype(int)
    table = tmp_path / "rows.csv"
    lines = ["a,b,c,y,label"] + [f"{r[0]:.17g},{r[1]:.17g},{r[2]:.17g},{t:.17g},{c}" for r, t, c in zip(X, y, label)]
    table.write_text("\n".join(lines) + "\n")
    (tmp_path / "arch.py").write_text(ARCH_SOURCE)
    reg, clf = tmp_path / "reg.pt", tmp_path / "clf.pt"
    torch.save(mlp().state_dict(), reg)
    torch.save(two_output().state_dict(), clf)
    return {"table": table, "reg": reg, "clf": clf, "X": X, "y": y, "label": label,
            "reg_arch": f"{tmp_path / 'arch.py'}:reg", "clf_arch": f"{tmp_path / 'arch.py'}:clf"}


def test_table_without_target_answers_with_its_columns_then_loads(files):
    state = WorkerState()
    _, cols = run(state, "load_data", path=str(files["table"]))
    assert cols["needs_columns"] is True and cols["columns"] == ["a", "b", "c", "y", "label"]
    assert len(cols["preview"]) == N_ROWS and float(cols["preview"][0][3]) == pytest.approx(files["y"][0])
    assert state.data is None
    _, loaded = run(state, "load_data", path=str(files["table"]), target="y", features=["a", "b", "c"])
    data = loaded["session"]["data"]
    assert data["n_rows"] == N_ROWS and data["feature_names"] == ["a", "b", "c"] and data["task"] == "regression"
    assert len(data["sha256"]) == 64 and loaded["session"]["model"] is None


def test_corrupt_model_file_fails_and_keeps_the_loaded_model(files, tmp_path):
    state = WorkerState()
    run(state, "load_model", path=str(files["reg"]), arch=files["reg_arch"])
    kept = state.model
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"PK\x03\x04 this is not a model" * 10)
    with pytest.raises(ModelLoadError):
        run(state, "load_model", path=str(bad))
    assert state.model is kept


def test_model_tree_counts_and_data_mismatch_are_reported(files):
    state = WorkerState()
    _, first = run(state, "load_data", path=str(files["table"]), target="y", features=["a", "b"])
    _, loaded = run(state, "load_model", path=str(files["reg"]), arch=files["reg_arch"])
    model = loaded["session"]["model"]
    rows = {r["name"]: r for r in model["modules"]}
    assert rows[""]["params"] == model["total_params"] == sum(p.numel() for p in mlp().parameters())
    assert rows["0"]["params"] == rows["0"]["own"] == 3 * 6 + 6 and rows[""]["own"] == 0
    assert "3 input features, the data has 2" in model["mismatch"]
    _, fixed = run(state, "load_data", path=str(files["table"]), target="y", features=["a", "b", "c"])
    assert fixed["session"]["model"]["mismatch"] is None and fixed["session"]["model"]["output_shape"] == [1]


def test_plan_matches_the_route_the_fit_takes_and_multi_input_views(files):
    state = WorkerState()
    run(state, "load_model", path=str(files["reg"]), arch=files["reg_arch"])
    run(state, "load_data", path=str(files["table"]), target="y", features=["a", "b", "c"])
    _, plan = run(state, "plan", params="last:2", n_adapt=N_ADAPT, seed=1)
    _, fit = run(state, "fit_gp", params="last:2", n_adapt=N_ADAPT, seed=1, prior_var=0.7, noise=0.02,
                 fit_hyper=False)
    assert plan["describe"].split(":")[0] == fit["plan"].split(":")[0] and fit["route"] == "function/cholesky"
    assert plan["n"] == N_ADAPT and plan["params"] == fit["num_params"] == 6 * 5 + 5 + 5 + 1
    # Three inputs: no grid; the held-out rows carry predicted vs true with the GP's predictive std.
    assert fit["grid"] is False and fit["x"] is None
    adapt, test = state.split(N_ADAPT, 1)
    gp = LinearizedGP(state.model, params="last:2", prior_var=0.7, noise=0.02).fit(adapt.X, adapt.y)
    mean, var = gp.predict(test.X, include_noise=True)
    got = torch.tensor(fit["test_mean"], dtype=torch.float64)
    assert (got - mean).abs().max() <= REL_TOL * mean.abs().max()
    assert np.allclose(fit["test_std"], var.sqrt().numpy(), rtol=1e-9)
    assert fit["test_y"] == test.y.tolist()
    curve = calibration_curve(mean, var, test.y)
    assert fit["calibration"]["observed"] == pytest.approx(curve.observed.tolist())
    assert fit["convergence"]["solver"] == "cholesky" and fit["convergence"]["points"][-1][1] < 1e-10


def test_classification_fit_matches_the_in_process_classifier(files):
    state = WorkerState()
    run(state, "load_model", path=str(files["clf"]), arch=files["clf_arch"])
    _, loaded = run(state, "load_data", path=str(files["table"]), target="label", features=["a", "b", "c"],
                    classification=True)
    assert loaded["session"]["task"] == "classification" and loaded["session"]["data"]["class_names"] == ["0", "1"]
    _, fit = run(state, "fit_gp", n_adapt=20, seed=2, prior_var=2.0, fit_hyper=False)
    adapt, test = state.split(20, 2)
    clf = LinearizedClassifier(state.model, prior_var=2.0).fit(adapt.X, adapt.y)
    probs = clf.predict_proba(test.X)
    assert np.allclose(fit["probs"], probs.numpy(), rtol=1e-9, atol=1e-12)
    assert fit["reliability"]["count"] and sum(fit["reliability"]["count"]) == len(test)
    assert fit["convergence"]["solver"] == "newton" and len(fit["convergence"]["points"]) >= 1
    assert 0.5 <= fit["metrics"]["accuracy"] <= 1.0
    _, ft = run(state, "finetune", n_adapt=20, seed=2, epochs=5, lr=0.01)
    assert np.allclose(np.sum(ft["probs"], axis=1), 1.0) and "accuracy" in ft["metrics"]
    with pytest.raises(ShapeError):
        run(state, "trajectory", n_adapt=20, seed=2)


def test_trajectory_starts_at_the_model_and_matches_the_core(files):
    state = WorkerState()
    run(state, "load_example", name="sine")
    _, traj = run(state, "trajectory", n_adapt=10, seed=0, grid_points=30)
    adapt, _ = state.split(10, 0)
    ref = LinearizedTrajectory(state.model, adapt.X, adapt.y)
    steps = np.asarray(traj["steps"])
    assert steps[0] == 0 and np.all(np.diff(steps) > 0)
    grid = torch.tensor(traj["x"], dtype=torch.float64).unsqueeze(-1)
    with torch.no_grad():
        start = state.model(grid.float())[:, 0].double()
    assert np.allclose(traj["preds"][0], start.numpy(), atol=1e-6)  # float32 network vs float64 engine
    expected = ref.predict(grid, torch.as_tensor(steps, dtype=torch.float64))
    assert np.allclose(traj["preds"], expected.numpy(), rtol=1e-9, atol=1e-12)
    assert traj["train_residual"][-1] < traj["train_residual"][0]


def test_trajectory_steps_reach_the_slowest_mode():
    steps = trajectory_steps(4.0, torch.tensor([0.0, 0.04, 1.0, 4.0], dtype=torch.float64), points=10)
    assert steps[0] == 0 and steps[-1] == 500  # 5 · λmax / λmin = 5 · 100
    assert len(steps) <= 10 and np.all(np.diff(steps) > 0)
