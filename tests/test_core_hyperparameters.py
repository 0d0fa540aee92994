"""Hyperparameter search of both predictors: the classifier's Laplace-evidence grid and cooperative cancel."""

import math

import pytest
import torch

from models import MODELS, inputs, two_output
from ntk_studio.core import CancelToken, Cancelled, LinearizedClassifier, LinearizedGP, LinearizedModel
from ntk_studio.core.hyper import PRIOR_VAR_GRID


class CancelAfter(CancelToken):
    """A token that cancels itself on its `after`-th check: proves the check runs inside the loop."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.after, self.checks = after, 0

    def raise_if_cancelled(self) -> None:
        self.checks += 1
        if self.checks >= self.after:
            self.cancel()
        super().raise_if_cancelled()


def classification_problem(n=24, seed=1):
    X = inputs("mlp", n, seed=seed)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).long()
    return X, y


def dense_laplace_evidence(model, X, y, s2):
    """Return the Laplace evidence from a materialized J and a dense Newton solve (float64)."""
    lm = LinearizedModel(model)
    F0, J = lm.forward(X), lm.jacobian(X)  # (n, C), (n, C, P)
    P = J.shape[-1]
    d = torch.zeros(P, dtype=torch.float64)
    Y = torch.nn.functional.one_hot(y, F0.shape[1]).double()
    for _ in range(100):
        p = torch.softmax(F0 + J @ d, -1)
        lam = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
        H = torch.einsum("iap,iab,ibq->pq", J, lam, J) + torch.eye(P, dtype=torch.float64) / s2
        g = torch.einsum("iap,ia->p", J, p - Y) + d / s2
        if g.norm() < 1e-12:
            break
        d = d - torch.linalg.solve(H, g)
    F = F0 + J @ d
    obj = -torch.log_softmax(F, -1).gather(1, y[:, None]).sum() + d @ d / (2 * s2)
    return -float(obj) - 0.5 * float(torch.logdet(s2 * H))


def test_classifier_fit_hyperparameters_maximizes_the_laplace_evidence_on_the_grid():
    X, y = classification_problem()
    # A tight MAP tolerance: at s² = 100 the default 1e-8 leaves the evidence 3e-8 off (measured).
    clf = LinearizedClassifier(two_output(), prior_var=1.0, grad_tol=1e-12).fit(X, y)
    assert clf.fit_hyperparameters(selection="evidence") is clf
    info = clf.hyper_info
    tried = info["prior_var"]
    assert set(PRIOR_VAR_GRID) <= set(tried) and len(tried) == len(info["evidence"])
    # Each recorded evidence is the dense float64 Laplace evidence at that prior variance.
    for s2, ev in zip(tried, info["evidence"]):
        assert ev == pytest.approx(dense_laplace_evidence(two_output(), X, y, s2), rel=1e-10)
    best = max(range(len(tried)), key=lambda i: info["evidence"][i])
    assert clf.prior_var == tried[best] == info["chosen"]
    # The classifier is refitted at the chosen value: same predictions as a fresh fit there.
    fresh = LinearizedClassifier(two_output(), prior_var=clf.prior_var, grad_tol=1e-12).fit(X, y)
    Xs = inputs("mlp", 5, seed=7)
    torch.testing.assert_close(clf.predict_proba(Xs), fresh.predict_proba(Xs), rtol=1e-10, atol=1e-12)
    assert clf.log_marginal_likelihood() == pytest.approx(max(info["evidence"]), rel=1e-12)


def test_classifier_fit_hyperparameters_accepts_data_and_keeps_a_cg_route():
    X, y = classification_problem()
    clf = LinearizedClassifier(two_output(), solver="cg", grad_tol=1e-12).fit_hyperparameters(X, y)
    assert clf.plan.solver == "cg"  # searched on the dense evidence, refitted on the route asked for
    ref = LinearizedClassifier(two_output(), prior_var=clf.prior_var, solver="cholesky").fit(X, y)
    torch.testing.assert_close(clf.delta_theta, ref.delta_theta, rtol=1e-6, atol=1e-8)


def test_classifier_fit_hyperparameters_cancels_inside_the_search_and_keeps_the_fit():
    X, y = classification_problem()
    clf = LinearizedClassifier(two_output(), prior_var=1.0, chunk_size=4).fit(X, y)
    before = clf.delta_theta.clone()
    token = CancelAfter(after=40)
    with pytest.raises(Cancelled):
        clf.fit_hyperparameters(cancel=token)
    assert token.checks >= 40  # checked repeatedly, not once up front
    assert clf.prior_var == 1.0
    torch.testing.assert_close(clf.delta_theta, before, rtol=0, atol=0)


def _synthetic(n=120, seed=0):
    model = MODELS["mlp"]()
    X = inputs("mlp", n, seed=seed)
    lm = LinearizedModel(model)
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(lm.num_params, generator=g, dtype=torch.float64) * math.sqrt(0.5)
    y = lm.forward(X) + lm.jvp(X, theta) + 0.2 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    return model, X, y


@pytest.mark.parametrize("space, solver", [("function", "cholesky"), ("weight", "cholesky"), ("function", "cg")])
def test_gp_fit_hyperparameters_checks_its_cancel_token_inside_the_optimizer(space, solver):
    model, X, y = _synthetic()
    gp = LinearizedGP(model, prior_var=3.0, noise=1.0, space=space, solver=solver, cg_tol=1e-6).fit(X, y)
    mean_before, _ = gp.predict(X[:5])
    token = CancelAfter(after=5)
    with pytest.raises(Cancelled):
        gp.fit_hyperparameters(cancel=token, iters=60)
    assert token.checks >= 5
    assert (gp.prior_var, gp.noise) == (3.0, 1.0)  # a cancelled search leaves the fitted values
    torch.testing.assert_close(gp.predict(X[:5])[0], mean_before, rtol=0, atol=0)


def test_gp_fit_hyperparameters_records_what_it_found():
    model, X, y = _synthetic()
    gp = LinearizedGP(model, prior_var=3.0, noise=1.0, space="function", solver="cholesky").fit(X, y)
    start = gp.log_marginal_likelihood()
    gp.fit_hyperparameters()
    info = gp.hyper_info
    assert info["prior_var"] == gp.prior_var and info["noise"] == gp.noise
    assert info["start"] == {"prior_var": 3.0, "noise": 1.0, "log_marginal_likelihood": start}
    assert info["log_marginal_likelihood"] == pytest.approx(gp.log_marginal_likelihood(), rel=1e-10)
    assert info["log_marginal_likelihood"] > start
