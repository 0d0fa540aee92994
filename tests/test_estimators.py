"""NTKRegressor / NTKClassifier: scikit-learn's own estimator checks, and agreement with the engine and a dense reference.

Every check of `check_estimator` runs, none is listed as an expected failure; the only skips are
scikit-learn's own (its array-API checks when SCIPY_ARRAY_API is unset). The checks use the default
model (model=None: a tanh MLP sized from the data), because they vary the number of features and
classes; an estimator wrapping one fixed pretrained network only accepts its own input width and
class count, so shape-varying checks do not apply to it, and the tests below cover that case.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")
from sklearn.base import clone  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from torch import nn  # noqa: E402

from ntk_studio.core import LinearizedClassifier, LinearizedGP  # noqa: E402
from ntk_studio.core.estimators import NTKClassifier, NTKRegressor, default_model  # noqa: E402

# Checks expected to fail, with why: none (see the module docstring for the scope of the checks).
EXPECTED_FAILED: dict[str, str] = {}


@parametrize_with_checks([NTKRegressor(fit_hyper=False), NTKClassifier(fit_hyper=False)], expected_failed_checks=lambda est: EXPECTED_FAILED)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def pretrained(n_in=3, n_out=1, seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(n_in, 8), nn.Tanh(), nn.Linear(8, n_out))


def regression_data(n=30, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    return X, np.sin(X.sum(1)) + 0.1 * rng.normal(size=n)


def test_regressor_matches_the_dense_float64_posterior():
    X, y = regression_data()
    Xs = np.random.default_rng(1).normal(size=(7, 3))
    model = pretrained()
    before = [p.detach().clone() for p in model.parameters()]
    est = NTKRegressor(model, prior_var=0.7, noise=0.05, fit_hyper=False).fit(X, y)
    mean, std = est.predict(Xs, return_std=True)
    # Dense reference: materialized J by autograd, the closed-form posterior.
    params = list(model.parameters())

    def jac(A):
        rows = []
        for a in torch.tensor(A):
            out = model(a[None].float())[0, 0]
            rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(out, params)]).double())
        return torch.stack(rows)
    J, Js = jac(X), jac(Xs)
    with torch.no_grad():
        f, fs = model(torch.tensor(X).float())[:, 0].double(), model(torch.tensor(Xs).float())[:, 0].double()
    A = 0.7 * J @ J.T + 0.05 * torch.eye(len(X), dtype=torch.float64)
    ref_mean = fs + 0.7 * Js @ J.T @ torch.linalg.solve(A, torch.tensor(y) - f)
    Ksx = Js @ J.T
    ref_var = 0.7 * (Js * Js).sum(1) - 0.49 * (Ksx * torch.linalg.solve(A, Ksx.T).T).sum(1)
    # The model is float32, so f and J carry float32 rounding: compare at that level.
    np.testing.assert_allclose(mean, ref_mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(std, ref_var.sqrt().numpy(), rtol=1e-4, atol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the user's model is untouched


def test_regressor_hyperparameters_are_the_engines():
    X, y = regression_data(40)
    est = NTKRegressor(pretrained(), prior_var=3.0, noise=1.0).fit(X, y)
    gp = LinearizedGP(pretrained(), prior_var=3.0, noise=1.0).fit(torch.tensor(X), torch.tensor(y)).fit_hyperparameters()
    assert est.prior_var_ == pytest.approx(gp.prior_var, rel=1e-9) and est.noise_ == pytest.approx(gp.noise, rel=1e-9)


def test_classifier_with_string_labels_matches_the_engine():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 3))
    idx = (X[:, 0] + X[:, 1] > 0).astype(int) + (X[:, 2] > 1).astype(int)
    labels = np.array(["cat", "dog", "eel"])[idx]
    est = NTKClassifier(pretrained(n_out=3)).fit(X, labels)
    assert list(est.classes_) == ["cat", "dog", "eel"]
    clf = LinearizedClassifier(pretrained(n_out=3)).fit(torch.tensor(X), torch.tensor(idx)).fit_hyperparameters()
    assert est.prior_var_ == clf.prior_var
    proba = est.predict_proba(X[:5])
    np.testing.assert_allclose(proba, clf.predict_proba(torch.tensor(X[:5])).numpy(), rtol=1e-12, atol=0)
    assert list(est.predict(X[:5])) == list(np.array(["cat", "dog", "eel"])[proba.argmax(1)])
    with pytest.raises(ValueError, match="outputs"):
        NTKClassifier(pretrained(n_out=2)).fit(X, labels)  # 3 classes, 2 logits


def test_grid_search_in_a_pipeline_picks_the_better_prior():
    X, y = regression_data(40)
    pipe = make_pipeline(StandardScaler(), NTKRegressor(pretrained(), fit_hyper=False, noise=0.01))
    search = GridSearchCV(pipe, {"ntkregressor__prior_var": [1e-6, 1.0]}, cv=3).fit(X, y)
    assert search.best_params_ == {"ntkregressor__prior_var": 1.0}  # 1e-6 barely moves the network
    assert search.cv_results_["mean_test_score"][1] > search.cv_results_["mean_test_score"][0]
    assert clone(pipe).get_params()["ntkregressor__noise"] == 0.01


def test_input_shape_feeds_flattened_rows_to_a_cnn():
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 2 * 2, 2))
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 16))
    y = (X[:, :8].sum(1) > 0).astype(int)
    est = NTKClassifier(cnn, input_shape=(1, 4, 4), fit_hyper=False).fit(X, y)
    clf = LinearizedClassifier(cnn).fit(torch.tensor(X).reshape(20, 1, 4, 4), torch.tensor(y))
    np.testing.assert_allclose(est.predict_proba(X), clf.predict_proba(torch.tensor(X).reshape(20, 1, 4, 4)).numpy(),
                               rtol=1e-12, atol=0)


def test_default_model_is_seeded_and_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    a, b = default_model(4, 2, seed=3), default_model(4, 2, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
