"""The closed-form linearized GD trajectory against explicit GD steps, the GP limit and its stability rule."""

import pytest
import torch

from models import MODELS, inputs
from ntk_studio.core import CancelToken, Cancelled, LinearizedGP, LinearizedModel, SettingsError, ShapeError, SolverError
from ntk_studio.core.finetune import FineTuneSettings, finetune, predict
from ntk_studio.core.trajectory import LinearizedTrajectory

# (model, outputs K, n): every case has n·K < P, so K = J Jᵀ is invertible.
CASES = [("mlp", 1, 20), ("two_output", 2, 12), ("cnn", 1, 15)]


def problem(name, K, n, m=7, seed=0):
    X, Xs = inputs(name, n, seed=seed + 1), inputs(name, m, seed=seed + 2)
    y = torch.randn(n, K, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return X, (y[:, 0] if K == 1 else y), Xs


def rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("name, K, n", CASES)
def test_converged_trajectory_is_the_noiseless_gp_mean(name, K, n):
    X, y, Xs = problem(name, K, n)
    tr = LinearizedTrajectory(MODELS[name](), X, y)
    assert n * K < tr.lm.num_params and not tr.null.any()
    change = tr.predict(Xs, float("inf")) - tr.lm.forward(Xs).reshape(tr.predict(Xs, 0).shape)
    # Against the dense closed form f0 + K(x*, X) K⁻¹ r0 (float64 solve).
    lm = LinearizedModel(MODELS[name](), "all")
    J, Js = lm.jacobian(X).reshape(n * K, -1), lm.jacobian(Xs).reshape(-1, lm.num_params)
    dense = (Js @ J.T @ torch.linalg.solve(J @ J.T, tr.r0)).reshape(change.shape)
    assert rel(change, dense) < 1e-7
    # Against LinearizedGP with noise 1e-10 of the mean kernel eigenvalue. The GP's own distance from
    # the noiseless limit is about σ²/λ_min (relative), so that is the tolerance, with a margin.
    gaps = []
    for relative_noise in (1e-10, 1e-12):
        noise = relative_noise * float(tr.eigenvalues.mean())
        gp = LinearizedGP(MODELS[name](), prior_var=1.0, noise=noise, space="function", solver="cholesky").fit(X, y)
        gp_change = gp.predict_mean(Xs) - gp.lm.forward(Xs).reshape(change.shape)
        gaps.append(rel(change, gp_change))
        assert gaps[-1] < max(10 * noise / float(tr.eigenvalues[0]), 1e-8)
    assert gaps[0] / gaps[1] == pytest.approx(100, rel=0.05)  # the GP approaches it linearly in σ²


@pytest.mark.parametrize("name, K, n", CASES + [("mlp-last2", 1, 20)])
def test_first_steps_match_explicit_gradient_descent(name, K, n):
    params = "last:2" if name.endswith("last2") else "all"
    name = name.split("-")[0]
    X, y, Xs = problem(name, K, n)
    lm = LinearizedModel(MODELS[name](), params)
    J, Js = lm.jacobian(X).reshape(n * K, -1), lm.jacobian(Xs).reshape(-1, lm.num_params)
    f0, f0s, target = lm.forward(X).reshape(-1), lm.forward(Xs).reshape(-1), y.reshape(-1)
    eta = 0.9 / float(torch.linalg.eigvalsh(J @ J.T)[-1])
    tr = LinearizedTrajectory(MODELS[name](), X, y, params=params, lr=eta)
    delta = torch.zeros(lm.num_params, dtype=torch.float64)
    for step in range(1, 6):
        delta = delta - eta * J.T @ (f0 + J @ delta - target)  # θ_{t+1} = θ_t − η Jᵀ(f_lin − y)
        if step in (1, 2, 5):
            pred = tr.predict(Xs, step).reshape(-1)
            assert rel(pred - f0s, Js @ delta) <= 1e-10, step
            assert tr.train_residual(step) == pytest.approx(float((target - f0 - J @ delta).norm()), rel=1e-10)
    many = tr.predict(Xs, torch.tensor([1.0, 2.0, 5.0]))
    assert many.shape == ((3, 7) if K == 1 else (3, 7, K))
    assert torch.equal(tr.predict(Xs, 0), f0s.reshape(many.shape[1:]))


def test_flow_and_discrete_agree_for_small_steps():
    X, y, Xs = problem("mlp", 1, 20)
    lam_max = LinearizedTrajectory(MODELS["mlp"](), X, y).lambda_max
    errors = []
    for fraction in (1e-2, 1e-3):
        eta, steps = fraction / lam_max, round(20 / fraction)  # the same time ηt = 20/λ_max
        disc = LinearizedTrajectory(MODELS["mlp"](), X, y, lr=eta).predict(Xs, steps)
        flow = LinearizedTrajectory(MODELS["mlp"](), X, y, lr=eta, mode="flow")
        errors.append(rel(disc - flow.predict(Xs, 0), flow.predict(Xs, steps) - flow.predict(Xs, 0)))
    assert errors[1] < 1e-5
    assert errors[0] / errors[1] == pytest.approx(10, rel=0.05)  # first order in η


@pytest.mark.parametrize("fraction", [0.5, 1.0, 1.99])
def test_train_residual_is_monotone_below_the_stability_limit(fraction):
    X, y, _ = problem("two_output", 2, 12)
    lam_max = LinearizedTrajectory(MODELS["two_output"](), X, y).lambda_max
    tr = LinearizedTrajectory(MODELS["two_output"](), X, y, lr=fraction / lam_max)
    res = tr.train_residual(torch.arange(0, 400, dtype=torch.float64))
    assert (res[1:] <= res[:-1]).all() and res[0] == pytest.approx(float(tr.r0.norm()))
    assert tr.train_residual(float("inf")) < 1e-8 * float(res[0])  # K invertible: it interpolates
    assert float((y - tr.predict(X, 7)).norm()) == pytest.approx(float(res[7]), rel=1e-8)


@pytest.mark.parametrize("factor", [2.0, 3.0])
def test_too_large_a_step_raises_solver_error(factor):
    X, y, _ = problem("mlp", 1, 20)
    lam_max = LinearizedTrajectory(MODELS["mlp"](), X, y).lambda_max
    with pytest.raises(SolverError, match="λ_max") as err:
        LinearizedTrajectory(MODELS["mlp"](), X, y, lr=factor / lam_max)
    assert f"{2 / lam_max:.6g}" in str(err.value) and f"{lam_max:.6g}" in str(err.value)
    LinearizedTrajectory(MODELS["mlp"](), X, y, lr=factor / lam_max, mode="flow")  # gradient flow is always stable


def test_rank_deficient_kernel_uses_the_pseudo_inverse():
    # Four inputs repeated with conflicting targets: K has an exact 4-dimensional null space.
    Xd, Xs = inputs("mlp", 10, seed=1), inputs("mlp", 9, seed=2)
    X = torch.cat([Xd, Xd[:4]])
    y = torch.randn(14, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    tr = LinearizedTrajectory(MODELS["mlp"](), X, y)
    assert int(tr.null.sum()) == 4
    lm = LinearizedModel(MODELS["mlp"](), "all")
    J, Js = lm.jacobian(X).reshape(14, -1), lm.jacobian(Xs).reshape(9, -1)
    delta = torch.linalg.pinv(J, rtol=1e-10) @ tr.r0  # the minimum-norm least-squares step
    f0s = lm.forward(Xs)[:, 0]
    for t in (float("inf"), 1e12):
        pred = tr.predict(Xs, t)
        assert torch.isfinite(pred).all() and rel(pred - f0s, Js @ delta) < 1e-9
    at_train = tr.predict(X, float("inf"))
    assert torch.allclose(at_train[:4], (y[:4] + y[10:]) / 2, atol=1e-9)  # the conflict is averaged
    irreducible = float((y[:4] - y[10:]).norm()) / 2**0.5
    assert tr.train_residual(float("inf")) == pytest.approx(irreducible, rel=1e-9)


def test_bad_times_are_shape_errors_and_bad_modes_settings_errors():
    X, y, Xs = problem("mlp", 1, 20)
    tr = LinearizedTrajectory(MODELS["mlp"](), X, y)
    with pytest.raises(ShapeError, match="whole steps"):
        tr.predict(Xs, 2.5)
    with pytest.raises(ShapeError, match="≥ 0"):
        tr.train_residual(-1)
    with pytest.raises(SettingsError, match="mode must be one of 'discrete', 'flow'; got 'euler'"):
        LinearizedTrajectory(MODELS["mlp"](), X, y, mode="euler")
    flow = LinearizedTrajectory(MODELS["mlp"](), X, y, mode="flow")
    assert flow.predict(Xs, 2.5).shape == (7,)


def test_full_batch_sgd_fine_tuning_follows_the_trajectory_at_first():
    # Plain full-batch GD on the MSE is GD on ½‖f − y‖² with η = 2·lr/(n·K); for small steps the
    # network stays close to its linearization, so the two agree to second order in the step.
    X, y, Xs = problem("mlp", 1, 20)
    lr, epochs = 0.05, 5
    s = FineTuneSettings(optimizer="sgd", momentum=0.0, lr=lr, epochs=epochs, batch_size=20, dtype=torch.float64)
    fine = finetune(MODELS["mlp"](), (X, y), None, s)
    tr = LinearizedTrajectory(MODELS["mlp"](), X, y, lr=LinearizedTrajectory.lr_for_mse(lr, 20))
    f0 = tr.predict(Xs, 0)
    assert rel(predict(fine, Xs) - f0, tr.predict(Xs, epochs) - f0) < 1e-2


def test_trajectory_kernel_build_and_predict_check_their_cancel_token():
    X, y, Xs = problem("mlp", 1, 40)
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        LinearizedTrajectory(MODELS["mlp"](), X, y, cancel=token)
    tr = LinearizedTrajectory(MODELS["mlp"](), X, y)
    with pytest.raises(Cancelled):
        tr.predict(Xs, 3, cancel=token)
    assert tr.predict(Xs, 3).shape == (Xs.shape[0],)  # a later call without a token is unaffected
