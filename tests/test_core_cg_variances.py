"""Function-space CG variances (issue #17): one block solve per chunk, a rigorous bound, checked against dense float64.

The reference below is independent of the engine: per-sample Jacobians by torch.func, the dense
kernel, torch.linalg.cholesky. Every CG variance must lie within its reported bound of it.
"""

import copy

import pytest
import torch
from torch.func import functional_call, jacrev, vmap

from models import MODELS, inputs
from ntk_studio.core import LinearizedGP, cg_variance
from ntk_studio.core.errors import Cancelled
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


def _check_within_bound(gp, var, ref, prior):
    """Assert every variance is within its reported bound of the dense reference; return the errors (m, K)."""
    bound = gp.variance_error_bound
    assert bound is not None and bound.shape == var.shape
    var, bound = var.reshape(ref.shape), bound.reshape(ref.shape)
    err = (var - ref).abs()
    assert bool((err <= bound + REF_ULPS * EPS * prior).all()), float((err - bound).max())
    return err


CASES = [("mlp", 1, "full"), ("cnn", 1, "full"), ("two_output", 2, "full"), ("two_output", 2, "independent")]


@pytest.mark.parametrize("stored", [True, False], ids=["stored-kernel", "matrix-free"])
@pytest.mark.parametrize("name,K,outputs", CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_cg_variances_match_dense_float64_within_their_reported_bound(name, K, outputs, stored):
    X, y, Xs = _data(name, 40, 17, K)
    model = MODELS[name]()
    budget = {} if stored else {"memory_budget": 1}  # 1 byte: no kernel may be stored, products stay matrix-free
    gp = LinearizedGP(model, space="function", solver="cg", noise=1e-3, outputs=outputs, **budget).fit(X, y)
    assert ("Kxx" in gp._state) == stored
    _, var = gp.predict(Xs)
    ref, prior = dense_variances(model, X, Xs, 1.0, 1e-3, independent=outputs == "independent")
    err = _check_within_bound(gp, var, ref, prior)
    info = gp.variance_solve_info
    assert info.converged and info.max_relative_error_bound <= gp.variance_rtol == 1e-6
    assert float((err / ref).max()) <= 1e-6


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_ill_conditioned_cg_variances_meet_the_bound_the_old_residual_test_missed(name):
    # s² = 100, σ² = 1e-6, test points next to training points: a residual of cg_tol·‖k‖ alone left the
    # old route's variances off by 290 % (MLP) and 0.4 % (CNN); the bound-driven stop keeps them ≤ 1e-6.
    X, y, _ = _data(name, 80, 1)
    Xs = X[:10] + 0.01 * inputs(name, 10, seed=5)
    model = MODELS[name]()
    gp = LinearizedGP(model, space="function", solver="cg", noise=1e-6, prior_var=100.0).fit(X, y)
    _, var = gp.predict(Xs)
    ref, prior = dense_variances(model, X, Xs, 100.0, 1e-6)
    err = _check_within_bound(gp, var, ref, prior)
    assert float((err / ref).max()) <= 1e-6


def test_a_tighter_variance_rtol_gives_a_tighter_bound_and_more_iterations():
    X, y, Xs = _data("mlp", 40, 12)
    model = MODELS["mlp"]()
    infos = {}
    for rtol in (1e-4, 1e-8):  # 1e-8 stays above the rounding floor (8 ulps of the prior ≈ 1e-10 of these variances)
        gp = LinearizedGP(model, space="function", solver="cg", noise=1e-4, cg_tol=1e-3, variance_rtol=rtol).fit(X, y)
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
    gp = LinearizedGP(MODELS["mlp"](), space="function", solver="cg", noise=1e-3, chunk_size=10).fit(X, y)
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
    gp = LinearizedGP(MODELS["mlp"](), space="function", solver="cg", noise=1e-4).fit(X, y)
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
