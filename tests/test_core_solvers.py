"""The one solver layer: CG against dense float64 solves, and every inexact solve raising or warning (issue #14)."""

import pytest
import torch

from models import MODELS, inputs, two_output
from ntk_studio.core import LinearizedClassifier, LinearizedGP, NTKStudioError, SolverError
from ntk_studio.core.errors import SolverWarning
from ntk_studio.core.solvers import JitterWarning, NegativeVarianceWarning, cg, solve_cg


def spd(N=30, cond=1e4, seed=0):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(N, N, generator=g, dtype=torch.float64))
    return (Q * torch.logspace(0, torch.log10(torch.tensor(cond)), N, dtype=torch.float64)) @ Q.T


@pytest.mark.parametrize("jacobi", [False, True])
def test_block_cg_matches_a_dense_solve_column_by_column(jacobi):
    A = spd()
    A = A + torch.diag(torch.linspace(0, 50, 30, dtype=torch.float64))  # a diagonal Jacobi can exploit
    B = torch.randn(30, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    B[:, 2] = 0.0  # a zero column must come back exactly zero (TINY guards its divisions)
    d = A.diagonal()
    X, info = solve_cg(lambda V: A @ V, B, 1e-12, 500, precond=(lambda R: R / d[:, None]) if jacobi else None)
    ref = torch.linalg.solve(A, B)
    assert float((X - ref).norm() / ref.norm()) < 1e-9
    assert torch.equal(X[:, 2], torch.zeros(30, dtype=torch.float64))
    assert info.converged and info.residual <= 1e-12 and 0 < info.iterations <= 500
    # The reported residual is the true one, ‖AX − B‖/‖B‖, not CG's recurrence.
    true = max(float((A @ X[:, j] - B[:, j]).norm() / B[:, j].norm()) for j in (0, 1, 3))
    assert info.residual == pytest.approx(true, rel=1e-6)


def test_cg_resumed_from_its_state_reaches_the_uninterrupted_answer():
    A, b = spd(seed=3), torch.ones(30, 1, dtype=torch.float64)
    states = []
    x_full, it_full, ok = cg(lambda V: A @ V, b, 1e-10, 500, on_iteration=states.append)
    assert ok
    x, it, ok = cg(lambda V: A @ V, b, 1e-10, 500, state=states[it_full // 2 - 1])
    assert ok and it == it_full and torch.equal(x, x_full)


def _regression(n=40):
    g = torch.Generator().manual_seed(0)
    return inputs("mlp", n, seed=1), torch.randn(n, 1, generator=g, dtype=torch.float64)


def test_unconverged_gp_cg_fit_raises_naming_what_to_change():
    X, y = _regression()
    gp = LinearizedGP(MODELS["mlp"](), solver="cg", space="function", noise=1e-6, precond_rank=0, cg_max_iter=25)
    with pytest.raises(SolverError, match="cg_max_iter") as err:
        gp.fit(X, y)
    assert "noise" in str(err.value) and "cg_tol" in str(err.value)


def test_best_effort_gp_fit_warns_and_still_predicts():
    X, y = _regression()
    # memory_budget=1: no stored kernel, so the variances are matrix-free block CG (this test's subject)
    gp = LinearizedGP(MODELS["mlp"](), solver="cg", space="function", noise=1e-6, precond_rank=0, cg_max_iter=25,
                      best_effort=True, memory_budget=1)
    with pytest.warns(SolverWarning, match="did not converge"):
        gp.fit(X, y)
    assert not gp.solve_info.converged and gp.solve_info.residual > gp.cg_tol
    with pytest.warns(SolverWarning):
        mean, var = gp.predict(X[:4])
    assert torch.isfinite(mean).all() and (var >= 0).all()


def test_tiny_cg_iteration_limit_raises_a_typed_error_not_gpytorch_runtime_error():
    X, y = _regression()
    gp = LinearizedGP(MODELS["mlp"](), solver="cg", space="function", precond_rank=0, cg_max_iter=5)
    with pytest.raises(NTKStudioError):
        gp.fit(X, y)


def test_variance_solves_report_their_residual():
    X, y = _regression()
    # memory_budget=1: matrix-free block CG (a stored kernel is factored instead; tests/test_core_cg_variances.py)
    gp = LinearizedGP(MODELS["mlp"](), solver="cg", space="function", cg_tol=1e-9, memory_budget=1).fit(X, y)
    _, var = gp.predict(X[:6])
    info = gp.variance_solve_info
    assert info.solver == "cg" and info.converged and 0 < info.residual <= 1e-9 and info.iterations >= 1
    dense = LinearizedGP(MODELS["mlp"](), solver="cholesky", space="function").fit(X, y)
    torch.testing.assert_close(var, dense.predict(X[:6])[1], rtol=1e-6, atol=1e-12)


def test_jitter_added_to_a_cholesky_is_reported():
    n = 100  # more rows than the model's 65 parameters: the kernel is singular
    X, y = inputs("mlp", n, seed=1), torch.randn(n, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    gp = LinearizedGP(MODELS["mlp"](), space="function", solver="cholesky", noise=1e-30)
    with pytest.warns(JitterWarning, match="jitter"):
        gp.fit(X, y)
    assert gp.solve_info.jitter > 0


def test_negative_variances_beyond_rounding_are_reported_when_clamped():
    # float32 with a tiny noise: the correction term's rounding exceeds the posterior variance.
    n = 100
    X = inputs("mlp", n, seed=1).float()
    y = torch.randn(n, 1, generator=torch.Generator().manual_seed(0))
    gp = LinearizedGP(MODELS["mlp"](), space="function", solver="cholesky", noise=1e-6, dtype=torch.float32).fit(X, y)
    with pytest.warns(NegativeVarianceWarning, match="clamped"):
        _, var = gp.predict(X)
    assert (var >= 0).all()


def _classification(n=24):
    X = inputs("mlp", n, seed=1)
    return X, (X[:, 0] + 0.5 * X[:, 1] > 0).long()


def test_newton_that_does_not_converge_raises_and_warns_under_best_effort():
    X, y = _classification()
    with pytest.raises(SolverError, match="max_newton"):
        LinearizedClassifier(two_output(), max_newton=1).fit(X, y)
    with pytest.warns(SolverWarning, match="Newton"):
        clf = LinearizedClassifier(two_output(), max_newton=1, best_effort=True).fit(X, y)
    assert not clf.map_info.converged and clf.map_info.iterations == 1


@pytest.mark.parametrize("space", ["weight", "function"])
def test_classifier_covariance_cg_that_misses_its_tolerance_raises(space):
    X, y = _classification()
    clf = LinearizedClassifier(two_output(), space=space, solver="cg", cg_max_iter=3).fit(X, y)
    assert clf.map_info.converged  # the inexact Newton steps still reach the MAP
    with pytest.raises(SolverError, match="covariance solve did not converge"):
        clf.predict_proba(X[:3])
    ok = LinearizedClassifier(two_output(), space=space, solver="cg").fit(X, y)
    ok.predict_proba(X[:3])
    assert ok.variance_solve_info.converged and ok.variance_solve_info.residual <= ok.cg_tol


def test_gpytorch_failures_in_the_hyperparameter_search_leave_as_solver_errors():
    # GPyTorch's stochastic evidence raises a bare RuntimeError when its CG budget is below its Lanczos
    # budget; the engine re-raises it typed, and the previous fit stays in place.
    gpytorch = pytest.importorskip("gpytorch")
    X, y = _regression(60)
    gp = LinearizedGP(MODELS["mlp"](), space="function", solver="cg", cg_tol=1e-6).fit(X, y)
    before = gp.predict(X[:3])[0]
    with gpytorch.settings.max_cg_iterations(5), pytest.raises(SolverError, match="tridiagonalization"):
        gp.fit_hyperparameters(iters=2)
    assert (gp.prior_var, gp.noise) == (1.0, 0.1)
    torch.testing.assert_close(gp.predict(X[:3])[0], before, rtol=0, atol=0)


def test_both_predictors_report_their_training_solve_as_a_solve_info():
    X, y = _classification()
    clf = LinearizedClassifier(two_output(), space="weight", solver="cg").fit(X, y)
    info, m = clf.solve_info, clf.map_info
    assert info.solver == "newton/cg" and info.converged and info.iterations == m.iterations
    assert info.residual == m.grad_norm <= clf.grad_tol and info.products == m.cg_iterations > 0
    Xr, yr = _regression()
    gp = LinearizedGP(MODELS["mlp"](), space="weight", solver="cg").fit(Xr, yr)
    assert gp.solve_info.solver == "cg" and gp.solve_info.converged and gp.solve_info.residual <= gp.cg_tol
