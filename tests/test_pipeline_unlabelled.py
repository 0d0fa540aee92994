"""Rows grouped 'unlabelled' reach the regression GP's hyperparameter search: the pipeline, the worker's
fit job and `export` pass their inputs, so the search scales the covariance for where the model is used
(selection 'shift'); without such rows nothing changes ('floor')."""

import numpy as np
import pytest
import torch
from torch import nn

from job_runner import run as run_job
from ntk_studio.core.data.dataset import UNLABELLED_GROUP, Dataset
from ntk_studio.core.pipeline import RunSettings, run, unlabelled_inputs
from ntk_studio.jobs.tasks import WorkerState

N_LABELLED, N_UNLABELLED = 40, 30
SETTINGS = RunSettings(task="regression", params="all", n_adapt=30, seed=0, prior_var=1.0)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 1)).double()


def _data(unlabelled: bool = True) -> Dataset:
    """1-D regression: labelled inputs in [-2, 0]; the unlabelled ones in [1, 3] (the model extrapolates)."""
    g = torch.Generator().manual_seed(1)
    x_lab = -2 + 2 * torch.rand(N_LABELLED, 1, generator=g, dtype=torch.float64)
    x_unl = 1 + 2 * torch.rand(N_UNLABELLED, 1, generator=g, dtype=torch.float64)
    X = torch.cat([x_lab, x_unl]) if unlabelled else x_lab
    y = torch.sin(2 * X) + 0.3 * X**2 + 0.05 * torch.randn(X.shape, generator=g, dtype=torch.float64)
    groups = np.array(["labelled"] * N_LABELLED + ([UNLABELLED_GROUP] * N_UNLABELLED if unlabelled else []))
    return Dataset(X, y, ("x",), "y", groups=groups)


def test_unlabelled_inputs_are_the_rows_grouped_unlabelled():
    ds = _data()
    torch.testing.assert_close(unlabelled_inputs(ds), ds.X[N_LABELLED:], rtol=0, atol=0)
    assert unlabelled_inputs(_data(unlabelled=False)) is None
    assert unlabelled_inputs(Dataset(ds.X, ds.y, ("x",), "y")) is None


def test_pipeline_sizes_the_intervals_for_the_unlabelled_rows_and_the_worker_agrees():
    model, ds = _model(), _data()
    lib = run(model, ds, SETTINGS)
    hyper = lib.hyper
    assert hyper["selection"] == "shift", hyper["selection"]
    assert hyper["cov_scale"] >= 1.0 and hyper["noise_floor"] is not None
    # 'shift' multiplies the floor's s² and σ² by the same τ
    search = hyper["search"]
    assert hyper["prior_var"] == pytest.approx(search["base_prior_var"] * hyper["cov_scale"], rel=1e-12)
    assert hyper["noise"] == pytest.approx(search["base_noise"] * hyper["cov_scale"], rel=1e-12)

    state = WorkerState(model=model, data=ds, task="regression")
    _, fit = run_job(state, "fit_gp", params=SETTINGS.params, n_adapt=SETTINGS.n_adapt, seed=SETTINGS.seed,
                     prior_var=SETTINGS.prior_var, noise=None, fit_hyper=True, device="cpu")
    assert fit["hyper"]["selection"] == "shift"
    assert fit["hyper"]["cov_scale"] == pytest.approx(hyper["cov_scale"], rel=1e-10)
    lib_m = lib.record("linearized GP").metrics
    for key, value in lib_m.items():
        if value is not None:
            assert fit["metrics"][key] == pytest.approx(value, rel=1e-10, abs=1e-12), key


def test_without_unlabelled_rows_the_search_is_the_floor():
    hyper = run(_model(), _data(unlabelled=False), SETTINGS).hyper
    assert hyper["selection"] == "floor" and hyper["cov_scale"] is None
