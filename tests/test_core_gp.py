"""LinearizedGP against the closed form (dense float64 J), across routes, outputs and hyperparameters."""

import math

import pytest
import torch

from models import MODELS, inputs
from ntk_studio.core import (
    CancelToken,
    Cancelled,
    LinearizedGP,
    LinearizedModel,
    MemoryBudgetError,
    NotFittedError,
    SettingsError,
    ShapeError,
)

ROUTES = [("function", "cholesky"), ("function", "cg"), ("weight", "cholesky"), ("weight", "cg")]
S2, NOISE = 0.7, 0.05


def closed_form(model, X, y, Xs, s2=S2, noise=NOISE, independent=False):
    """Return (mean, var, log marginal likelihood) from the materialized Jacobian."""
    lm = LinearizedModel(model, "all")
    n, K = y.shape
    J = lm.jacobian(X).reshape(n * K, -1)
    Js = lm.jacobian(Xs).reshape(Xs.shape[0] * K, -1)
    Kxx, Ksx, Kss = J @ J.T, Js @ J.T, (Js * Js).sum(1)
    if independent:
        mask = torch.eye(K, dtype=torch.float64)
        Kxx = (Kxx.reshape(n, K, n, K) * mask.view(1, K, 1, K)).reshape(n * K, n * K)
        Ksx = (Ksx.reshape(-1, K, n, K) * mask.view(1, K, 1, K)).reshape(-1, n * K)
    A = s2 * Kxx + noise * torch.eye(n * K, dtype=torch.float64)
    r = (y - lm.forward(X)).reshape(-1)
    mean = lm.forward(Xs).reshape(-1) + s2 * Ksx @ torch.linalg.solve(A, r)
    var = s2 * Kss - s2**2 * (Ksx * torch.linalg.solve(A, Ksx.T).T).sum(1)
    mll = -0.5 * (r @ torch.linalg.solve(A, r) + torch.logdet(A) + n * K * math.log(2 * math.pi))
    return mean.reshape(-1, K), var.reshape(-1, K), float(mll)


def data(name="mlp", n=14, m=6, K=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    X, Xs = inputs(name, n, seed=seed + 1), inputs(name, m, seed=seed + 2)
    y = torch.randn(n, K, generator=g, dtype=torch.float64)
    return X, y, Xs


def rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("space, solver", ROUTES)
@pytest.mark.parametrize("name", ["mlp", "two_output", "cnn"])
def test_mean_and_variance_match_closed_form(name, space, solver):
    K = 2 if name == "two_output" else 1
    X, y, Xs = data(name, K=K)
    mean_ref, var_ref, _ = closed_form(MODELS[name](), X, y, Xs)
    gp = LinearizedGP(MODELS[name](), prior_var=S2, noise=NOISE, space=space, solver=solver, chunk_size=5)
    gp.fit(X, y)
    mean, var = gp.predict(Xs)
    assert gp.plan.space == space and gp.plan.solver == solver
    tol = 1e-10 if solver == "cholesky" else 1e-6
    assert rel(mean, mean_ref) < tol
    assert rel(var, var_ref) < tol
    assert gp.solve_info.residual < (1e-12 if solver == "cholesky" else 1e-7)
    if solver == "cg":
        assert gp.solve_info.converged and 1 <= gp.solve_info.iterations <= gp.plan.size + 5


def test_vector_targets_give_vector_outputs_and_delta_theta_is_the_mean_offset():
    X, y, Xs = data()
    gp = LinearizedGP(MODELS["mlp"](), prior_var=S2, noise=NOISE).fit(X, y[:, 0])
    mean, var = gp.predict(Xs)
    assert mean.shape == (6,) and var.shape == (6,)
    lm = gp.lm
    by_hand = lm.forward(Xs)[:, 0] + lm.jacobian(Xs)[:, 0] @ gp.delta_theta
    assert rel(mean, by_hand) < 1e-12
    _, var_noisy = gp.predict(Xs, include_noise=True)
    assert torch.allclose(var_noisy - var, torch.full_like(var, NOISE))


def test_function_space_equals_weight_space():
    X, y, Xs = data("two_output", n=30, K=2)
    f = LinearizedGP(MODELS["two_output"](), prior_var=S2, noise=NOISE, space="function").fit(X, y)
    w = LinearizedGP(MODELS["two_output"](), prior_var=S2, noise=NOISE, space="weight").fit(X, y)
    (mf, vf), (mw, vw) = f.predict(Xs), w.predict(Xs)
    assert rel(mf, mw) < 1e-10 and rel(vf, vw) < 1e-10
    assert rel(f.delta_theta, w.delta_theta) < 1e-8
    assert abs(f.log_marginal_likelihood() - w.log_marginal_likelihood()) < 1e-8


def test_independent_outputs_match_block_diagonal_closed_form():
    X, y, Xs = data("two_output", K=2)
    mean_ref, var_ref, mll_ref = closed_form(MODELS["two_output"](), X, y, Xs, independent=True)
    for solver in ("cholesky", "cg"):
        gp = LinearizedGP(MODELS["two_output"](), prior_var=S2, noise=NOISE, outputs="independent", space="function", solver=solver)
        mean, var = gp.fit(X, y).predict(Xs)
        assert rel(mean, mean_ref) < 1e-7 and rel(var, var_ref) < 1e-7
        assert gp.delta_theta.shape == (2, gp.lm.num_params)
    with pytest.raises(ShapeError, match="function space"):
        LinearizedGP(MODELS["two_output"](), outputs="independent", space="weight").fit(X, y)


@pytest.mark.parametrize("space", ["function", "weight"])
def test_log_marginal_likelihood_matches_closed_form(space):
    X, y, Xs = data("two_output", n=11, K=2)
    _, _, mll_ref = closed_form(MODELS["two_output"](), X, y, Xs)
    gp = LinearizedGP(MODELS["two_output"](), prior_var=S2, noise=NOISE, space=space, solver="cholesky").fit(X, y)
    assert abs(gp.log_marginal_likelihood() - mll_ref) < 1e-9 * abs(mll_ref)


def test_gpytorch_marginal_likelihood_estimate_is_close():
    X, y, _ = data(n=40)
    _, _, mll_ref = closed_form(MODELS["mlp"](), X, y, X[:2])
    gp = LinearizedGP(MODELS["mlp"](), prior_var=S2, noise=NOISE, space="function", solver="cg").fit(X, y)
    torch.manual_seed(0)  # GPyTorch's trace probes
    assert abs(gp.log_marginal_likelihood() - mll_ref) < 0.1 * abs(mll_ref)


def _synthetic(noise_std, n=300, seed=0):
    """Data drawn from the linearized prior itself, so the true s² and σ² are known."""
    model = MODELS["mlp"]()
    X = inputs("mlp", n, seed=seed)
    lm = LinearizedModel(model)
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(lm.num_params, generator=g, dtype=torch.float64) * math.sqrt(0.5)
    y = lm.forward(X) + lm.jvp(X, theta) + noise_std * torch.randn(n, 1, generator=g, dtype=torch.float64)
    return model, X, y


@pytest.mark.parametrize("space", ["function", "weight"])
def test_hyperparameter_fit_recovers_noise_within_20_percent(space):
    model, X, y = _synthetic(noise_std=0.2)
    gp = LinearizedGP(model, prior_var=3.0, noise=1.0, space=space, solver="cholesky")
    before = gp.fit(X, y).log_marginal_likelihood()
    gp.fit_hyperparameters()
    assert abs(gp.noise - 0.04) / 0.04 < 0.2
    assert gp.log_marginal_likelihood() > before
    # At the optimum, nudging either variance lowers the evidence.
    best = gp.log_marginal_likelihood()
    for ds2, dn in ((1.1, 1.0), (0.9, 1.0), (1.0, 1.1), (1.0, 0.9)):
        other = LinearizedGP(model, prior_var=gp.prior_var * ds2, noise=gp.noise * dn, space=space).fit(X, y)
        assert other.log_marginal_likelihood() < best + 1e-9


def test_hyperparameter_fit_through_gpytorch_on_the_matrix_free_route():
    model, X, y = _synthetic(noise_std=0.2, n=200)
    torch.manual_seed(0)
    gp = LinearizedGP(model, prior_var=1.0, noise=0.5, space="function", solver="cg", cg_tol=1e-6)
    gp.fit_hyperparameters(X, y, iters=60)
    assert abs(gp.noise - 0.04) / 0.04 < 0.2


def test_auto_route_follows_the_cost_estimate():
    X, y, _ = data(n=14)
    P = LinearizedModel(MODELS["mlp"]()).num_params  # 65 parameters
    small = LinearizedGP(MODELS["mlp"]()).fit(X, y)
    assert small.plan.space == "function" and small.plan.solver == "cholesky"
    Xb, yb, _ = data(n=P + 20)
    big = LinearizedGP(MODELS["mlp"]()).fit(Xb, yb)
    assert big.plan.space == "weight"
    tight = LinearizedGP(MODELS["mlp"](), memory_budget=1000).fit(X, y)
    assert tight.plan.solver == "cg" and tight.plan.est_bytes > 0
    assert "function-space cg" in tight.plan.describe()
    with pytest.raises(MemoryBudgetError, match="budget"):
        LinearizedGP(MODELS["mlp"](), solver="cholesky", memory_budget=1000).fit(X, y)


def test_errors_are_typed():
    X, y, Xs = data()
    gp = LinearizedGP(MODELS["mlp"]())
    with pytest.raises(NotFittedError):
        gp.predict(Xs)
    with pytest.raises(ShapeError, match="shape"):
        gp.fit(X, y[:5])
    with pytest.raises(ShapeError, match="outputs"):
        gp.fit(X, torch.randn(14, 3, dtype=torch.float64))
    bad = y.clone()
    bad[2] = float("nan")
    with pytest.raises(ShapeError, match="finite"):
        gp.fit(X, bad)
    # A bad setting is a SettingsError (not a ShapeError) that names the setting and its value.
    with pytest.raises(SettingsError, match=r"noise .*-1\.0"):
        LinearizedGP(MODELS["mlp"](), noise=-1.0)


def test_fit_iter_streams_events_and_returns_the_fitted_gp():
    X, y, Xs = data(n=40)
    gp = LinearizedGP(MODELS["mlp"](), space="function", solver="cg", chunk_size=8)
    stream = gp.fit_iter(X, y)
    events = []
    while True:
        try:
            events.append(next(stream))
        except StopIteration as stop:
            result = stop.value
            break
    assert result is gp
    stages = [e.stage for e in events]
    assert stages[0] == "forward" and stages[-1] == "done" and "solve" in stages
    assert events[-1].progress == 1.0 and events[-1].residual < 1e-7
    assert all(b.elapsed >= a.elapsed for a, b in zip(events, events[1:]))
    assert gp.predict(Xs)[0].shape == (6, 1)


class _ChunkCounter:
    """Counts forward calls of the model (one per data chunk in every operator)."""

    def __init__(self, model):
        self.calls = 0
        model.register_forward_pre_hook(self)

    def __call__(self, *args):
        self.calls += 1


@pytest.mark.parametrize("solver", ["cholesky", "cg"])
def test_cancel_stops_fit_iter_within_one_chunk(solver):
    model = MODELS["mlp"]()
    counter = _ChunkCounter(model)
    X, y, _ = data(n=400)
    token = CancelToken()
    gp = LinearizedGP(model, space="function", solver=solver, chunk_size=10, structured=False)
    stream = gp.fit_iter(X, y, cancel=token)
    seen = 0
    with pytest.raises(Cancelled):
        for event in stream:
            seen += 1
            if event.stage in ("kernel", "solve") and not token.cancelled:
                token.cancel()
                calls_at_cancel = counter.calls
    assert seen > 0
    # After cancel, at most the chunk in flight completes (one forward call).
    assert counter.calls - calls_at_cancel <= 1


def test_closing_the_stream_cancels_the_work():
    X, y, _ = data(n=400)
    token = CancelToken()
    gp = LinearizedGP(MODELS["mlp"](), space="function", solver="cg", chunk_size=10)
    stream = gp.fit_iter(X, y, cancel=token)
    next(stream)
    stream.close()
    assert token.cancelled


def test_predict_checks_the_cancel_token():
    X, y, Xs = data(n=20)
    gp = LinearizedGP(MODELS["mlp"](), chunk_size=2).fit(X, y)
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        gp.predict(Xs, cancel=token)
    mean, _ = gp.predict(Xs)  # a later call without a token is unaffected
    assert mean.shape == (6, 1)
