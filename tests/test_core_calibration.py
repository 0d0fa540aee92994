"""Calibrated classification (#16): held-out (s², τ) search, per-module priors, predictive maps.

References are dense float64: a materialized Jacobian, a Newton solve in weight space, and a
brute-force K-fold loop over fresh engine classifiers.
"""

import math

import pytest
import torch
from torch import nn

from ntk_studio.core import LinearizedClassifier, LinearizedModel
from ntk_studio.core.classify import pairwise_probit_proba
from ntk_studio.core.predictive import PROBA_MAPS, laplace_bridge_proba
from ntk_studio.core.prior_selection import (
    COV_SCALES, DEFAULT_SELECTION, HELDOUT_GRID, S2_BOUNDS, TEMP_BOUNDS, best_calibration, evidence_search, fit_dense,
    fold_predictions, gather_rows, heldout_search, laplace_loo, log_search, loo_folds, module_kernels, predict_dense,
    row_nll, select, stratified_folds, temperature_penalty,
)
from ntk_studio.core.errors import SettingsError
from ntk_studio.core.laplace import softmax_stats
from ntk_studio.core.hyper import PRIOR_VAR_GRID

GRID = (0.1, 1.0, 10.0)
SCALES = (0.01, 0.1, 1.0)


def three_class(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))


def problem(n: int = 18, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 3, generator=g, dtype=torch.float64)
    score = torch.stack([X[:, 0], X[:, 1], -X[:, 0] - X[:, 1]], 1) + 0.5 * torch.randn(n, 3, generator=g, dtype=torch.float64)
    return X, score.argmax(1)


def dense_weight_laplace(model, X, y, Xs, w):
    """Return (mean, cov) of test logits for the prior Δθ ~ N(0, diag(w)), weight-space Newton (float64)."""
    lm = LinearizedModel(model)
    F0, J = lm.forward(X), lm.jacobian(X)
    P = J.shape[-1]
    Y = torch.nn.functional.one_hot(y, F0.shape[1]).double()
    d = torch.zeros(P, dtype=torch.float64)
    for _ in range(200):
        p = torch.softmax(F0 + J @ d, -1)
        lam = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
        H = torch.einsum("iap,iab,ibq->pq", J, lam, J) + torch.diag(1.0 / w)
        g = torch.einsum("iap,ia->p", J, p - Y) + d / w
        if g.norm() < 1e-13:
            break
        d = d - torch.linalg.solve(H, g)
    Js = lm.jacobian(Xs)
    mean = lm.forward(Xs) + Js @ d
    cov = torch.einsum("iap,pq,ibq->iab", Js, torch.linalg.inv(H), Js)
    return mean, cov


def test_per_module_priors_equal_the_isotropic_prior_when_all_are_equal():
    X, y = problem()
    Xs = problem(7, seed=5)[0]
    s2 = 0.7
    clf = LinearizedClassifier(three_class(), prior_var=s2, space="function", solver="cholesky", grad_tol=1e-12).fit(X, y)
    lm = clf.lm
    names, Ks = module_kernels(lm, X)
    assert names == ["0", "2", "4"]
    K = torch.einsum("m,mij->ij", torch.full((3,), s2, dtype=torch.float64), Ks)
    torch.testing.assert_close(K, s2 * clf.kernels.matrix(X), rtol=1e-12, atol=1e-12)
    fit = fit_dense(K, lm.forward(X), y, grad_tol=1e-12)
    assert fit.converged
    assert fit.evidence == pytest.approx(clf.log_marginal_likelihood(), rel=1e-10)
    Kc = s2 * clf.kernels.matrix(X, Xs)
    blocks = s2 * lm.ntk_diag(Xs, block=True)
    mean, cov = predict_dense(fit, lm.forward(Xs), Kc, blocks)
    ref_mean, ref_cov = clf.predict_logits(Xs)
    torch.testing.assert_close(mean, ref_mean, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(cov, ref_cov, rtol=1e-9, atol=1e-10)
    # Against the dense weight-space reference with an isotropic diagonal prior.
    P = lm.num_params
    w_mean, w_cov = dense_weight_laplace(three_class(), X, y, Xs, torch.full((P,), s2, dtype=torch.float64))
    torch.testing.assert_close(mean, w_mean, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(cov, w_cov, rtol=1e-9, atol=1e-10)


def test_per_module_priors_match_a_dense_weight_space_laplace_with_unequal_variances():
    X, y = problem()
    Xs = problem(7, seed=5)[0]
    lm = LinearizedModel(three_class())
    variances = [0.05, 2.0, 0.5]
    names, Ks = module_kernels(lm, X)
    fit = fit_dense(torch.einsum("m,mij->ij", torch.tensor(variances, dtype=torch.float64), Ks), lm.forward(X), y,
                    grad_tol=1e-12)
    w = torch.cat([torch.full((size,), variances[["0", "2", "4"].index(n.rpartition(".")[0])], dtype=torch.float64)
                   for n, size in zip(lm.subset.names, lm.subset.sizes)])
    J, Js = lm.jacobian(X).reshape(-1, lm.num_params), lm.jacobian(Xs)
    Kc = (J * w) @ Js.reshape(-1, lm.num_params).T
    blocks = torch.einsum("iap,ibp->iab", Js * w, Js)
    mean, cov = predict_dense(fit, lm.forward(Xs), Kc, blocks)
    ref_mean, ref_cov = dense_weight_laplace(three_class(), X, y, Xs, w)
    torch.testing.assert_close(mean, ref_mean, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(cov, ref_cov, rtol=1e-9, atol=1e-10)


def brute_force_heldout(X, y, folds):
    """Return {(s², τ): mean held-out NLL} from fresh engine classifiers fitted on each fold's complement."""
    table = {}
    for s2 in GRID:
        per_scale = dict.fromkeys(SCALES, 0.0)
        for te in folds:
            tr = torch.tensor([i for i in range(len(y)) if i not in set(te.tolist())])
            clf = LinearizedClassifier(three_class(), prior_var=s2, solver="cholesky", grad_tol=1e-12).fit(X[tr], y[tr])
            mean, cov = clf.predict_logits(X[te])
            for tau in SCALES:
                p = pairwise_probit_proba(mean, tau * cov)
                per_scale[tau] += float(-torch.log(p.gather(1, y[te, None])).sum())
        for tau in SCALES:
            table[(s2, tau)] = per_scale[tau] / len(y)
    return table


def test_heldout_selection_on_a_grid_picks_what_brute_force_picks():
    X, y = problem()
    clf = LinearizedClassifier(three_class(), prior_var=1.0).fit(X, y)
    folds = stratified_folds(y, 3)
    info = select(clf.kernels.matrix(X), clf.lm.forward(X), y, pairwise_probit_proba, "heldout", folds=3,
                  grid=GRID, scales=SCALES)
    assert info["selection"] == "heldout" and info["folds"] == 3
    brute = brute_force_heldout(X, y, folds)
    assert info["prior_var"] == list(GRID) and info["cov_scale"] == list(SCALES)
    for i, s2 in enumerate(GRID):
        for j, tau in enumerate(SCALES):
            assert info["heldout_nll"][i][j] == pytest.approx(brute[(s2, tau)], rel=1e-7)
    best = min(brute, key=brute.get)
    assert (info["chosen"], info["chosen_cov_scale"]) == best
    assert info["chosen_heldout_nll"] == pytest.approx(brute[best], rel=1e-7)


def test_default_selection_refits_at_its_choice_and_explains_it():
    X, y = problem()
    clf = LinearizedClassifier(three_class(), prior_var=1.0).fit(X, y).fit_hyperparameters(folds=3)
    info = clf.hyper_info
    assert info["selection"] == DEFAULT_SELECTION
    assert (clf.prior_var, clf.cov_scale) == (info["chosen"], info["chosen_cov_scale"])
    # The continuous choice, checked against fresh engine classifiers on every fold (dense float64).
    folds = stratified_folds(y, 3)
    nll, T, tau = 0.0, clf.logit_temperature, clf.cov_scale
    for te in folds:
        tr = torch.tensor([i for i in range(len(y)) if i not in set(te.tolist())])
        ref = LinearizedClassifier(three_class(), prior_var=clf.prior_var, solver="cholesky", grad_tol=1e-12).fit(X[tr], y[tr])
        mean, cov = ref.predict_logits(X[te])
        nll += float(-torch.log(pairwise_probit_proba(mean / T, (tau / T**2) * cov).gather(1, y[te, None])).sum())
    assert info["chosen_heldout_nll"] == pytest.approx(nll / len(y), rel=1e-7)
    assert isinstance(info["why"], str) and f"{info['chosen_heldout_nll']:.3f}" in info["why"]
    assert len(info["prior_var"]) == len(info["heldout_nll"]) == len(info["heldout_profile"])
    assert all(o >= h for o, h in zip(info["heldout_profile_objective"], info["heldout_profile"]))  # NLL + T prior
    assert all(len(row) == len(info["cov_scale"]) for row in info["heldout_nll"])
    assert info["chosen_evidence_prior_var"] == clf.prior_var  # the default keeps the evidence's s² (its MAP)
    # Refitted at the winner: the engine's logits are a fresh fit's divided by T, their covariance times τ/T².
    fresh = LinearizedClassifier(three_class(), prior_var=clf.prior_var).fit(X, y)
    Xs = problem(5, seed=9)[0]
    m1, c1 = clf.predict_logits(Xs)
    m2, c2 = fresh.predict_logits(Xs)
    torch.testing.assert_close(m1, m2 / T, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(c1, (tau / T**2) * c2, rtol=1e-10, atol=1e-12)


def test_temperature_stays_finite_when_every_held_out_row_is_right():
    # All held-out rows classified right with a wide margin: the held-out NLL alone falls without limit
    # as T -> 0; with the log-normal prior on T the optimum is interior. Brute force on a fine grid.
    g = torch.Generator().manual_seed(3)
    y = torch.arange(40) % 2
    M = torch.randn(40, 2, generator=g, dtype=torch.float64) * 0.3
    M[torch.arange(40), y] += 1.5
    V = 0.1 * torch.eye(2, dtype=torch.float64).expand(40, 2, 2).clone()
    assert bool((M.argmax(1) == y).all())
    found = best_calibration((M, V), y, pairwise_probit_proba)
    assert found["temperature_edge"] is None and TEMP_BOUNDS[0] < found["temperature"] < 1.0
    brute = min((float(row_nll((M, V), y, pairwise_probit_proba, tau, T).mean()) + temperature_penalty(T, 40), T, tau)
                for T in (10.0 ** (k / 50) for k in range(-50, 51)) for tau in (10.0 ** (k / 10) for k in range(-80, 21)))
    assert found["objective"] <= brute[0] * (1 + 1e-3)  # golden-section stops at 0.05 decades
    assert abs(math.log10(found["temperature"] / brute[1])) < 0.05
    assert float(row_nll((M, V), y, pairwise_probit_proba, 1e-8, 0.1).mean()) < found["nll"]  # what the prior prevents


def test_log_search_finds_an_interior_minimum_and_reports_a_bound():
    found = log_search(lambda x: (math.log10(x) - 1.234) ** 2, 1e-6, 1e6)
    assert found["edge"] is None and abs(math.log10(found["x"]) - 1.234) < 0.03
    assert len(found["evaluated"]) < 30  # 13 coarse points + golden-section to 0.05 decades
    assert log_search(lambda x: -x, 1e-6, 1e6)["edge"] == "upper"
    assert log_search(lambda x: x, 1e-6, 1e6)["edge"] == "lower"


def test_evidence_search_matches_the_engine_evidence_and_beats_a_fine_grid():
    X, y = problem()
    clf = LinearizedClassifier(three_class(), prior_var=1.0).fit(X, y)
    ev = evidence_search(clf.kernels.matrix(X), clf.lm.forward(X), y)
    assert ev["edge"] is None
    engine = {}
    for s2 in [ev["prior_var"], *(10.0 ** (k / 4) for k in range(-8, 13))]:
        ref = LinearizedClassifier(three_class(), prior_var=s2, solver="cholesky", grad_tol=1e-12).fit(X, y)
        engine[s2] = ref.log_marginal_likelihood()
    assert ev["evidence"] == pytest.approx(engine[ev["prior_var"]], rel=1e-8)
    assert ev["evidence"] >= max(engine.values()) - 1e-8


class Temperature(nn.Module):
    """Multiply the logits by a constant (a model whose logits, hence Jacobian, are on a small scale)."""

    def __init__(self, net: nn.Module, scale: float):
        super().__init__()
        self.net, self.scale = net, scale

    def forward(self, x):
        return self.scale * self.net(x)


def test_default_does_not_stop_at_a_grid_edge_when_the_optimum_is_interior():
    # Logits 100x smaller: the kernel J Jᵀ is 1e4 smaller, so the evidence optimum s² (~17 for the
    # unscaled net) moves to ~2e5, beyond the old evidence grid's last value 1e2, which the old
    # default picked; the held-out optimum (~26 unscaled) moves beyond the old held-out grid's 1e4.
    X, y = problem(30)
    model = Temperature(three_class(), 0.01)
    clf = LinearizedClassifier(model, prior_var=1.0).fit(X, y).fit_hyperparameters()
    info = clf.hyper_info
    assert info["selection"] == DEFAULT_SELECTION
    assert info["evidence_edge"] is None and S2_BOUNDS[0] < clf.prior_var < S2_BOUNDS[1]
    assert clf.prior_var > max(PRIOR_VAR_GRID)
    old = LinearizedClassifier(model, prior_var=1.0).fit(X, y).fit_hyperparameters(selection="evidence")
    assert old.prior_var == max(PRIOR_VAR_GRID)  # the old default's choice: the grid's edge
    assert info["chosen_evidence"] > old.hyper_info["chosen_evidence"] + 1e-3
    held = LinearizedClassifier(model, prior_var=1.0).fit(X, y).fit_hyperparameters(selection="heldout")
    assert held.hyper_info["heldout_edge"] is None and S2_BOUNDS[0] < held.prior_var < S2_BOUNDS[1]
    assert held.prior_var > max(HELDOUT_GRID)
    K1, F0 = clf.kernels.matrix(X), clf.lm.forward(X)
    grid = heldout_search(K1, F0, y, HELDOUT_GRID, pairwise_probit_proba, COV_SCALES)
    assert grid["chosen"] == max(HELDOUT_GRID)  # the old held-out choice: the grid's edge
    assert held.hyper_info["chosen_heldout_nll"] < grid["chosen_heldout_nll"] - 1e-3


def test_stratified_folds_partition_the_rows_and_spread_each_class():
    y = torch.tensor([0] * 5 + [1] * 5 + [2] * 5)
    folds = stratified_folds(y, 5)
    assert sorted(torch.cat(folds).tolist()) == list(range(15))
    assert all(sorted(y[f].tolist()) == [0, 1, 2] for f in folds)


def test_default_predictive_matches_monte_carlo_with_many_samples():
    X, y = problem(30)
    clf = LinearizedClassifier(three_class(), prior_var=1.0).fit(X, y).fit_hyperparameters()
    Xs = problem(40, seed=11)[0]
    p = clf.predict_proba(Xs)  # the default: 'auto' = pairwise probit, at the chosen (s², τ)
    mc = clf.predict_proba(Xs, method="mc", samples=400_000, generator=torch.Generator().manual_seed(0))
    # MC standard error ≤ 0.5/√400000 ≈ 8e-4; measured gap 2.4e-3 (the per-class probit's: 8.2e-2).
    assert float((p - mc).abs().max()) <= 4e-3


def test_exported_posterior_carries_the_covariance_scale():
    from ntk_studio.core.export.posterior import posterior_from_classifier

    X, y = problem()
    Xs = problem(6, seed=4)[0]
    clf = LinearizedClassifier(three_class(), prior_var=2.0).fit(X, y)
    clf.cov_scale = 0.03
    post = posterior_from_classifier(clf)
    cov = post.gradient_covariance(clf.lm.jacobian(Xs))
    torch.testing.assert_close(cov, clf.predict_logits(Xs)[1], rtol=1e-9, atol=1e-12)


def test_laplace_bridge_ignores_a_shared_logit_shift_and_tends_to_softmax_when_certain():
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(6, 4, generator=g, dtype=torch.float64)
    A = torch.randn(6, 4, 4, generator=g, dtype=torch.float64)
    cov = A @ A.transpose(-1, -2)
    ones = torch.ones(4, 4, dtype=torch.float64)
    torch.testing.assert_close(laplace_bridge_proba(mean + 3.0, cov + 5.0 * ones), laplace_bridge_proba(mean, cov))
    p = laplace_bridge_proba(mean, cov)
    torch.testing.assert_close(p.sum(-1), torch.ones(6, dtype=torch.float64))
    assert set(PROBA_MAPS) == {"probit", "pairwise", "bridge", "mc", "map"}


def test_leave_one_out_selection_matches_fresh_classifiers_left_out_one_row_at_a_time():
    X, y = problem()
    clf = LinearizedClassifier(three_class(), prior_var=1.0).fit(X, y)
    folds = loo_folds(len(y))
    info = select(clf.kernels.matrix(X), clf.lm.forward(X), y, pairwise_probit_proba, "heldout", grid=GRID,
                  scales=SCALES, cv="loo")
    assert info["cv"] == "loo" and info["folds"] == len(y) and "leave-one-out" in info["why"]
    assert info["fits"] == len(GRID) * (len(y) + 1)  # one fit per row and the full-data start, per s²
    brute = brute_force_heldout(X, y, folds)
    for i, s2 in enumerate(GRID):
        for j, tau in enumerate(SCALES):
            assert info["heldout_nll"][i][j] == pytest.approx(brute[(s2, tau)], rel=1e-7)
    assert (info["chosen"], info["chosen_cov_scale"]) == min(brute, key=brute.get)


def test_laplace_leave_one_out_is_close_to_exact_refits_and_far_from_the_posterior_at_the_row():
    # The cavity of each row in the full fit vs a fresh fit without that row (float64, dense). The
    # posterior marginal at the row itself (the row's own label inside) is the wrong answer it must not be.
    X, y = problem(60)
    clf = LinearizedClassifier(three_class(), prior_var=1.0).fit(X, y)
    K, F0 = clf.kernels.matrix(X), clf.lm.forward(X)
    fit = fit_dense(K, F0, y, grad_tol=1e-12)
    mean, cov = laplace_loo(fit, K)
    exact_mean, exact_cov = gather_rows(fold_predictions(K, F0, y, loo_folds(len(y))), len(y))
    blocks = K.reshape(60, 3, 60, 3).diagonal(dim1=0, dim2=2).permute(2, 0, 1)
    post_mean, post_cov = predict_dense(fit, F0, K, blocks)
    scale = float(exact_mean.abs().max())
    assert float((mean - exact_mean).abs().max()) < 2e-3 * scale  # measured 5e-4 of the largest logit
    assert float((cov - exact_cov).abs().max()) < 1e-2 * float(exact_cov.abs().max())  # measured 3.7e-3
    assert float((post_mean - exact_mean).abs().max()) > 20 * float((mean - exact_mean).abs().max())
    nll = {name: float(row_nll(mv, y, pairwise_probit_proba, 1.0).mean())
           for name, mv in {"laplace": (mean, cov), "exact": (exact_mean, exact_cov), "posterior": (post_mean, post_cov)}.items()}
    assert nll["laplace"] == pytest.approx(nll["exact"], rel=2e-3)
    assert nll["posterior"] < 0.95 * nll["exact"]  # the row's own label makes it look better (measured 0.91×)
    # A Gaussian-site identity: the cavity's precision plus the row's Λ is the posterior marginal's precision.
    lam = softmax_stats(fit.F)[1]
    torch.testing.assert_close(torch.linalg.inv(cov) + lam, torch.linalg.inv(post_cov), rtol=1e-8, atol=1e-8)


def test_laplace_leave_one_out_selection_costs_one_fit_per_prior_variance():
    X, y = problem(30)
    clf = LinearizedClassifier(three_class(), prior_var=1.0).fit(X, y).fit_hyperparameters(cv="laplace_loo")
    info = clf.hyper_info
    assert info["cv"] == "laplace_loo" and info["folds"] == 30 and "Laplace leave-one-out" in info["why"]
    assert info["fits"] == 1 + len(info["evidence_prior_var"])  # the evidence search's fits + one at its s²
    with pytest.raises(SettingsError, match="cv must be one of"):
        LinearizedClassifier(three_class()).fit(X, y).fit_hyperparameters(cv="jackknife")
