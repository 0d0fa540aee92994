"""Function-space CG variances (issue #17): a factor of the stored kernel or one block solve per chunk, a rigorous bound.

The reference below is independent of the engine: per-sample Jacobians by torch.func, the dense
kernel, torch.linalg.cholesky. Every CG-route variance must lie within its reported bound of it.
Three variance routes: the stored kernel's Cholesky factor (when it fits beside the kernel and is
cheaper by estimate), block CG on the stored kernel (a budget that holds the kernel but no factor),
block CG matrix-free (a budget that holds no kernel).
"""

import copy

import pytest
import torch
from torch.func import functional_call, jacrev, vmap

from models import MODELS, inputs
from ntk_studio.core import LinearizedGP, cg_variance
from ntk_studio.core.errors import Cancelled, SolverWarning
from ntk_studio.core.progress import CancelToken

EPS = torch.finfo(torch.float64).eps
REF_ULPS = 8  # the reference's own rounding of prior − correction, in ulps of the prior


def dense_variances(model, X, Xs, prior_var, noise, independent=False):
    """Return (m, K) noise-free posterior variances from dense per-sample Jacobians and a Cholesky."""
    model = copy.deepcopy(model).double().eval()
    params = {k: v.detach() for k, v in model.named_parameters()}

    def f(p, x):
        return functional_call(model, p, (x.unsqueeze(0),)).reshape(-1)

    def jac(Z):
        J = vmap(jacrev(f), in_dims=(None, 0))(params, Z)
        return torch.cat([J[k].reshape(Z.shape[0], J[k].shape[1], -1) for k in params], dim=2)  # (n, K, P)

    J, Js = jac(X), jac(Xs)
    n, K, _ = J.shape
    m = Xs.shape[0]
    if independent:  # K[(i,a),(j,b)] = δ_ab J_a(x_i)·J_a(x_j)
        out = torch.empty(m, K, dtype=torch.float64)
        for a in range(K):
            Kxx = prior_var * (J[:, a] @ J[:, a].T)
            Kxx.diagonal().add_(noise)
            L = torch.linalg.cholesky(Kxx)
            V = torch.linalg.solve_triangular(L, prior_var * (J[:, a] @ Js[:, a].T), upper=False)
            out[:, a] = prior_var * (Js[:, a] * Js[:, a]).sum(-1) - (V * V).sum(0)
        return out, prior_var * (Js * Js).sum(-1)
    Jf, Jsf = J.reshape(n * K, -1), Js.reshape(m * K, -1)
    A = prior_var * (Jf @ Jf.T)
    A.diagonal().add_(noise)
    L = torch.linalg.cholesky(A)
    V = torch.linalg.solve_triangular(L, prior_var * (Jf @ Jsf.T), upper=False)
    prior = prior_var * (Jsf * Jsf).sum(-1)
    return (prior - (V * V).sum(0)).reshape(m, K), prior.reshape(m, K)


def _data(name, n, m, outputs=1):
    X, Xs = inputs(name, n, seed=1), inputs(name, m, seed=5)
    y = torch.randn(n, outputs, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return X, y, Xs


def kernel_only_budget(model, X, K=1):
    """Return a memory budget that stores the training kernel but no factor beside it (block CG on the stored kernel)."""
    gp = LinearizedGP(model)
    gp.kernels._decide(gp.lm.prepare(X))
    return cg_variance.stored_kernel_bytes(X.shape[0], K, gp.lm.num_params, 8, gp.kernels.use_structured) + 8


ROUTE_BUDGETS = {"factored": lambda model, X, K: {}, "stored-block-cg": lambda model, X, K: {
    "memory_budget": kernel_only_budget(model, X, K)}, "matrix-free": lambda model, X, K: {"memory_budget": 1}}


def _check_within_bound(gp, var, ref, prior):
    """Assert every variance is within its reported bound of the dense reference; return the errors (m, K)."""
    bound = gp.variance_error_bound
    assert bound is not None and bound.shape == var.shape
    var, bound = var.reshape(ref.shape), bound.reshape(ref.shape)
    err = (var - ref).abs()
    assert bool((err <= bound + REF_ULPS * EPS * prior).all()), float((err - bound).max())
    return err


CASES = [("mlp", 1, "full"), ("cnn", 1, "full"), ("two_output", 2, "full"), ("two_output", 2, "independent")]


ROUTE_NOTES = {"factored": "stored kernel factored once", "stored-block-cg": "block CG on the stored kernel (a factor",
               "matrix-free": "block CG, matrix-free"}


@pytest.mark.parametrize("route", list(ROUTE_BUDGETS))
@pytest.mark.parametrize("name,K,outputs", CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_cg_variances_match_dense_float64_within_their_reported_bound(name, K, outputs, route):
    X, y, Xs = _data(name, 40, 17, K)
    model = MODELS[name]()  # a float32 module; the engine works in float64
    gp = LinearizedGP(model, space="function", solver="cg", noise=1e-3, outputs=outputs,
                      **ROUTE_BUDGETS[route](model, X, K)).fit(X, y)
    assert ("Kxx" in gp._state) == (route != "matrix-free")
    _, var = gp.predict(Xs)
    ref, prior = dense_variances(model, X, Xs, 1.0, 1e-3, independent=outputs == "independent")
    err = _check_within_bound(gp, var, ref, prior)
    info = gp.variance_solve_info
    assert info.converged and info.max_relative_error_bound <= gp.variance_rtol == 1e-6
    assert float((err / ref).max()) <= 1e-6
    assert info.note.startswith("variances: " + ROUTE_NOTES[route]) and ROUTE_NOTES[route] in gp.plan.reason
    assert info.solver == ("cholesky" if route == "factored" else "cg")
    assert ("var_factor" in gp._state) == (route == "factored")


@pytest.mark.parametrize("n", [30, 90, 200])
@pytest.mark.parametrize("name,K,outputs", [("mlp", 1, "full"), ("two_output", 2, "full"), ("cnn", 1, "full")])
def test_factored_variances_match_dense_float64_and_cost_one_product_per_column(name, K, outputs, n):
    # The fit factors s²K + σ²I once (it preconditions the fit's CG too); every test column then costs two
    # triangular solves and one product for its true residual, and the error is at rounding level.
    X, y, Xs = _data(name, n, 23, K)
    model = MODELS[name]()
    gp = LinearizedGP(model, space="function", solver="cg", noise=1e-3, prior_var=2.0, outputs=outputs).fit(X, y)
    assert gp.solve_info.iterations <= 2 and "Cholesky factor" in gp.solve_info.note
    _, var = gp.predict(Xs)
    ref, prior = dense_variances(model, X, Xs, 2.0, 1e-3)
    err = _check_within_bound(gp, var, ref, prior)
    info = gp.variance_solve_info
    assert info.solver == "cholesky" and info.iterations == 0 and info.products == 23 * K
    assert info.converged and info.max_relative_error_bound <= 1e-6
    assert float((err / ref).max()) <= 1e-9  # a factor, not an iteration: far inside the bound
    L = gp._state["var_factor"][1]
    A = 2.0 * gp._state["Kxx"]
    A.diagonal().add_(1e-3)
    torch.testing.assert_close(L @ L.T, A, rtol=0, atol=1e-12 * float(A.diagonal().max()))


@pytest.mark.parametrize("route", ["factored", "stored-block-cg"])
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_ill_conditioned_cg_variances_meet_the_bound_the_old_residual_test_missed(name, route):
    # s² = 100, σ² = 1e-6, test points next to training points: a residual of cg_tol·‖k‖ alone left the
    # old route's variances off by 290 % (MLP) and 0.4 % (CNN); the bound-driven stop keeps them ≤ 1e-6,
    # on the factored route too (its true residual is checked like CG's).
    X, y, _ = _data(name, 80, 1)
    Xs = X[:10] + 0.01 * inputs(name, 10, seed=5)
    model = MODELS[name]()
    gp = LinearizedGP(model, space="function", solver="cg", noise=1e-6, prior_var=100.0,
                      **ROUTE_BUDGETS[route](model, X, 1)).fit(X, y)
    _, var = gp.predict(Xs)
    assert gp.variance_solve_info.solver == ("cholesky" if route == "factored" else "cg")
    ref, prior = dense_variances(model, X, Xs, 100.0, 1e-6)
    err = _check_within_bound(gp, var, ref, prior)
    assert float((err / ref).max()) <= 1e-6


def test_a_tighter_variance_rtol_gives_a_tighter_bound_and_more_iterations():
    X, y, Xs = _data("mlp", 40, 12)
    model = MODELS["mlp"]()
    infos = {}
    budget = kernel_only_budget(model, X)  # block CG on the stored kernel
    for rtol in (1e-4, 1e-8):  # 1e-8 stays above the rounding floor (8 ulps of the prior ≈ 1e-10 of these variances)
        gp = LinearizedGP(model, space="function", solver="cg", noise=1e-4, cg_tol=1e-3, variance_rtol=rtol,
                          memory_budget=budget).fit(X, y)
        _, var = gp.predict(Xs)
        infos[rtol] = gp.variance_solve_info
        ref, prior = dense_variances(model, X, Xs, 1.0, 1e-4)
        _check_within_bound(gp, var, ref, prior)
        assert infos[rtol].max_relative_error_bound <= rtol
    assert infos[1e-8].iterations > infos[1e-4].iterations


def test_cross_kernel_and_variances_take_no_product_per_test_column(monkeypatch):
    # The old route built K(X, x*) by one vjp and one jvp over the training set per test column
    # (kernel_matmul with an m×m identity) and sketched nothing; now the kernel builder makes it in one
    # pass and the block solve multiplies the stored kernel; the Nyström sketch is built once per fit.
    X, y, Xs = _data("mlp", 50, 30)
    gp = LinearizedGP(MODELS["mlp"](), space="function", solver="cg", noise=1e-3, chunk_size=10,
                      memory_budget=kernel_only_budget(MODELS["mlp"](), X)).fit(X, y)
    calls = {"kernel_matmul": 0, "nystrom": 0}
    real_km, real_ny = gp.lm.kernel_matmul, cg_variance.nystrom

    def km(*a, **k):
        calls["kernel_matmul"] += 1
        return real_km(*a, **k)

    def ny(*a, **k):
        calls["nystrom"] += 1
        return real_ny(*a, **k)

    monkeypatch.setattr(gp.lm, "kernel_matmul", km)
    monkeypatch.setattr(cg_variance, "nystrom", ny)
    _, var = gp.predict(Xs)  # three chunks of 10 test points
    assert calls == {"kernel_matmul": 0, "nystrom": 0}  # the fit's sketch serves every chunk
    gp.fit(X, y)
    assert calls["nystrom"] >= 1  # a refit sketches again (new state)
    ref, prior = dense_variances(MODELS["mlp"](), X, Xs, 1.0, 1e-3)
    _check_within_bound(gp, var, ref, prior)


def test_cancel_stops_the_variance_block_solve_and_a_later_predict_works():
    X, y, Xs = _data("mlp", 40, 12)
    gp = LinearizedGP(MODELS["mlp"](), space="function", solver="cg", noise=1e-4,
                      memory_budget=kernel_only_budget(MODELS["mlp"](), X)).fit(X, y)
    token = CancelToken()
    op = gp._state["op"]
    real = op._matmul
    products = []

    def cancelling(V):
        products.append(V.shape[-1])
        if len(products) == 2:
            token.cancel()
        return real(V)

    op._matmul = cancelling
    with pytest.raises(Cancelled):
        gp.predict(Xs, cancel=token)
    assert len(products) == 2  # the check before the third product raised
    del op._matmul
    _, var = gp.predict(Xs)
    ref, prior = dense_variances(MODELS["mlp"](), X, Xs, 1.0, 1e-4)
    _check_within_bound(gp, var, ref, prior)


def test_bound_identity_holds_for_an_arbitrary_iterate():
    # quadratic_forms' bound rests on bᵀA⁻¹b − (bᵀw + wᵀr) = rᵀA⁻¹r ∈ [0, ‖r‖²/λ_min] for any w.
    from ntk_studio.core.solvers import quadratic_forms

    g = torch.Generator().manual_seed(3)
    Q, _ = torch.linalg.qr(torch.randn(30, 30, generator=g, dtype=torch.float64))
    lam = torch.logspace(-2, 3, 30, dtype=torch.float64)
    A = (Q * lam) @ Q.T
    B = torch.randn(30, 5, generator=g, dtype=torch.float64)
    exact = (B * torch.linalg.solve(A, B)).sum(0)
    for iters in (1, 3, 8):
        q, bound, info = quadratic_forms(lambda V: A @ V, B, 1e-2, iters, lambda q, b: torch.zeros_like(b, dtype=torch.bool),
                                         restarts=0)
        gap = exact - q
        assert bool((gap >= -1e-12 * exact.abs()).all()) and bool((gap <= bound * (1 + 1e-12)).all())
        assert not info.converged and info.iterations == iters


def test_the_factor_is_made_once_per_fit_and_serves_every_chunk_and_call(monkeypatch):
    X, y, Xs = _data("mlp", 50, 30)
    calls = []
    real = cg_variance.factor_system

    def counted(*a, **k):
        calls.append(a[1:])
        return real(*a, **k)

    monkeypatch.setattr(cg_variance, "factor_system", counted)
    gp = LinearizedGP(MODELS["mlp"](), space="function", solver="cg", noise=1e-3, chunk_size=10).fit(X, y)
    assert calls == [(1.0, 1e-3)]  # made at the fit (it preconditions the fit's CG)
    _, var = gp.predict(Xs)  # three chunks
    ref, prior = dense_variances(MODELS["mlp"](), X, Xs, 1.0, 1e-3)
    _check_within_bound(gp, var, ref, prior)
    _, var2 = gp.predict(Xs[:5])
    assert len(calls) == 1 and gp.variance_solve_info.solver == "cholesky"
    torch.testing.assert_close(var2, var[:5], rtol=1e-10, atol=0)


def test_a_new_prior_or_noise_makes_a_new_factor_not_a_stale_one():
    # fit_hyperparameters refits in place (same stored kernel, new s² and σ²). A factor cache keyed on the
    # kernel alone would hand the old factor back: the variances would still land within their bound (CG,
    # preconditioned by the stale factor, corrects them) but only after CG iterations, and L Lᵀ would be the
    # old system. Both are asserted here.
    X, y, Xs = _data("mlp", 40, 9)
    model = MODELS["mlp"]()
    gp = LinearizedGP(model, space="function", solver="cg", noise=1e-3, prior_var=1.0).fit(X, y)
    gp.predict(Xs)
    old = gp._state["var_factor"][1]
    Kxx = gp._state["Kxx"]
    gp.fit_hyperparameters(iters=8, selection="evidence")
    s2, noise = gp.prior_var, gp.noise
    assert gp._state["Kxx"] is Kxx and (abs(s2 / 1.0 - 1) > 0.05 or abs(noise / 1e-3 - 1) > 0.05)
    _, var = gp.predict(Xs)
    L = gp._state["var_factor"][1]
    assert L is not old
    A = s2 * Kxx
    A.diagonal().add_(noise)
    torch.testing.assert_close(L @ L.T, A, rtol=0, atol=1e-12 * float(A.diagonal().max()))
    info = gp.variance_solve_info
    assert info.solver == "cholesky" and info.iterations == 0
    ref, prior = dense_variances(model, X, Xs, s2, noise)
    err = _check_within_bound(gp, var, ref, prior)
    assert float((err / ref).max()) <= 1e-9


def test_an_in_place_change_of_the_stored_kernel_makes_a_new_factor():
    X, y, Xs = _data("mlp", 40, 9)
    gp = LinearizedGP(MODELS["mlp"](), space="function", solver="cg", noise=1e-3).fit(X, y)
    old = gp._variance_factor("")
    assert gp._variance_factor("") is old
    gp._state["Kxx"].mul_(2.0)  # bumps the version: the key no longer matches
    new = gp._variance_factor("")
    assert new is not old
    torch.testing.assert_close(new @ new.T, old @ old.T + gp._state["Kxx"] / 2, rtol=1e-12, atol=1e-12)


def test_a_factor_that_fails_in_float32_is_reported_and_block_cg_answers():
    # 100 rows, 65 parameters: the kernel has rank ≤ 65, so s²K + σ²I with σ² = 1e-6 is not positive definite
    # in float32 rounding (the leading minor where it fails is named); the route says so and falls back.
    n = 100
    X, y, Xs = _data("mlp", n, 6)
    gp = LinearizedGP(MODELS["mlp"](), space="function", solver="cg", noise=1e-6, dtype=torch.float32,
                      cg_tol=1e-3, variance_rtol=1e-2, best_effort=True)
    with pytest.warns(SolverWarning, match="training solve did not converge: relative residual nan"):
        gp.fit(X.float(), y.float())  # float32 CG on this system breaks down too (it was reported converged)
    assert "var_factor" not in gp._state and "not positive definite in float32" in gp._state["var_factor_failed"][1]
    assert "var_precond" in gp._state and "the stored kernel's factorization failed" in gp.solve_info.note  # Nyström
    with pytest.warns(SolverWarning):
        gp.predict(Xs.float())
    info = gp.variance_solve_info
    assert info.solver == "cg" and info.note.startswith("variances: block CG on the stored kernel (its factorization "
                                                        "failed: s²K + σ²I is not positive definite in float32")


def test_route_choice_follows_the_cheaper_estimate_and_the_memory_budget():
    N, itemsize, start, tol = 20_000, 8, 128, 1e-8
    stored = N * N * itemsize
    few = cg_variance.variance_route(N, 20, itemsize, 3 * stored, stored, 1, tol, start)
    many = cg_variance.variance_route(N, 2000, itemsize, 3 * stored, stored, 1, tol, start)
    # N³/3 = 2.7e12 flops against 20 columns × 11 iterations × 2N² ≈ 1.8e11 plus the sketch: block CG;
    # 2,000 columns make block CG ≈ 1.8e13: the factor.
    assert cg_variance.block_cg_flops(N, 20, tol, start) < cg_variance.factored_flops(N, 20)
    assert cg_variance.block_cg_flops(N, 2000, tol, start) > cg_variance.factored_flops(N, 2000)
    assert not few.factored and "vs factoring" in few.note and "for 20 variances" in few.note
    assert many.factored and "factored once" in many.note and "for 2,000 variances" in many.note
    assert not cg_variance.variance_route(N, 2000, itemsize, 2 * stored - 1, stored, 1, tol, start).factored
    assert not cg_variance.variance_route(N, 2000, itemsize, 3 * stored, stored, 2, tol, start).factored
    assert cg_variance.planned_cg_iterations(1e-8) == 11  # measured 11-12 at n = 2,000 (docs/benchmarks.md)


def test_predict_decides_by_the_variances_asked_when_the_fit_made_no_factor(monkeypatch):
    # precond_rank=0: the fit runs plain CG and makes nothing; the first prediction chooses by its own count.
    X, y, Xs = _data("mlp", 40, 6)
    gp = LinearizedGP(MODELS["mlp"](), space="function", solver="cg", noise=1e-3, precond_rank=0).fit(X, y)
    assert "var_factor" not in gp._state and "var_precond" not in gp._state
    _, var = gp.predict(Xs)
    info = gp.variance_solve_info
    assert info.solver == "cholesky" and "for 6 variances, asked of this fit so far" in info.note
    ref, prior = dense_variances(MODELS["mlp"](), X, Xs, 1.0, 1e-3)
    _check_within_bound(gp, var, ref, prior)


def test_cg_reports_a_residual_that_turned_nan_as_not_converged():
    # The float32 fit above reached a NaN residual and cg called it converged (NaN > target is False).
    from ntk_studio.core.solvers import cg

    B = torch.ones(5, 2, dtype=torch.float64)
    x, it, converged = cg(lambda V: V * float("nan"), B, 1e-8, 50)
    assert not converged and it == 1
    x, it, converged = cg(lambda V: 2.0 * V, B, 1e-8, 50)
    assert converged and torch.allclose(x, B / 2)


def test_a_factor_short_of_the_bound_is_corrected_by_cg_preconditioned_by_it():
    # The factored route never trusts the factor: W's true residual decides. A factor of a 1 % different
    # system (standing in for one whose rounding is too coarse) leaves every column short of the bound, and
    # CG preconditioned by that factor finishes them within variance_rtol of the dense float64 reference.
    X, y, Xs = _data("mlp", 60, 8)
    gp = LinearizedGP(MODELS["mlp"](), space="function", solver="cg", noise=1e-3).fit(X, y)
    key, _, note = gp._state["var_factor"]
    off = gp._state["Kxx"] * 1.01
    off.diagonal().add_(1e-3)
    gp._state["var_factor"] = (key, torch.linalg.cholesky(off), note)
    _, var = gp.predict(Xs)
    info = gp.variance_solve_info
    assert info.solver == "cholesky" and info.iterations >= 1 and info.products > 8
    assert info.converged and info.max_relative_error_bound <= 1e-6
    ref, prior = dense_variances(MODELS["mlp"](), X, Xs, 1.0, 1e-3)
    err = _check_within_bound(gp, var, ref, prior)
    assert float((err / ref).max()) <= 1e-6


def test_the_stored_kernel_of_several_outputs_is_sized_n_k_squared():
    # Two outputs, n rows: the stored kernel is 2n × 2n. A budget of 2·n² entries holds an n × n matrix
    # but not it: the route must be matrix-free (it used to size the kernel n × n and store 4n² entries).
    assert cg_variance.stored_kernel_bytes(10, 3, 100, 8, True) == 30 * 30 * 8
    assert cg_variance.stored_kernel_bytes(10, 3, 100, 8, False) == 30 * 30 * 8 + 30 * 100 * 8
    X, y, Xs = _data("two_output", 40, 5, 2)
    model = MODELS["two_output"]()
    gp = LinearizedGP(model, space="function", solver="cg", noise=1e-3, memory_budget=2 * 40 * 40 * 8).fit(X, y)
    assert gp.kernels.use_structured and "Kxx" not in gp._state
    _, var = gp.predict(Xs)
    assert gp.variance_solve_info.note.startswith("variances: block CG, matrix-free")
    ref, prior = dense_variances(model, X, Xs, 1.0, 1e-3)
    _check_within_bound(gp, var, ref, prior)


def test_the_plan_costs_the_cg_route_as_it_runs_on_a_stored_kernel():
    from ntk_studio.core import plan as plan_mod

    n, P = 2000, 17_793
    free = plan_mod.estimate_flops("function", "cg", n, 1, P, False, 50, 1000)  # matrix-free (no budget given)
    flops, nbytes = plan_mod.stored_cg_flops(n, 1, P, False, 1000, 2 * 1024**3, 8)
    # The kernel and a factor fit 2 GiB: fill + cross kernel + factored variances, not 1,000 matrix-free CG solves.
    assert nbytes == 2 * n * n * 8 and flops == pytest.approx(
        plan_mod._kernel_flops(n, P, False) * 1.5 + cg_variance.factored_flops(n, 1000) + 4.0 * n * n)
    assert flops < free / 100
    p = plan_mod.make_plan(n, 1, P, "function", "cg", dense_jacobian=False)
    assert p.est_bytes >= nbytes and p.est_seconds == pytest.approx(flops / plan_mod.flops_per_second())
    # A kernel over the budget is matrix-free, costed as before.
    assert plan_mod.stored_cg_flops(n, 1, P, False, 1000, n * n * 8 - 1, 8) is None
    small = plan_mod.make_plan(n, 1, P, "function", "cg", budget_bytes=n * n * 8 - 1, dense_jacobian=False)
    assert small.est_seconds == pytest.approx(free / plan_mod.flops_per_second())
