"""Every engine route on the test device (`pytest --device cuda`; default cpu) against a dense float64
reference computed on the CPU, independently of the engine (jacrev on the whole batch).

Covered: the operators (forward, jvp, vjp, kernel columns, kernel diagonal, dense and structured kernel
matrices, GGN product and matrix), the four GP routes (function/weight × Cholesky/CG), the classifier's
four routes, and ONNX export from a model fitted on the device. Each also checks that the fitted
state and the predictions stay on the device (results go back to the CPU only when the caller asks).
"""

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev

from models import cnn, inputs, mlp, two_output
from ntk_studio.core import KernelBuilder, LinearizedGP, LinearizedModel
from ntk_studio.core.classify import LinearizedClassifier

ROUTES = [("function", "cholesky"), ("function", "cg"), ("weight", "cholesky"), ("weight", "cg")]
S2, NOISE = 0.7, 0.05
N, M = 14, 6
MODELS = {"mlp": mlp, "two_output": two_output, "cnn": cnn, "cnn3": lambda: cnn(outputs=3)}


def mlp3(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 3))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def dense(model: nn.Module, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (f(X) (n, K), J (n, K, P)) on the CPU in float64 by jacrev over the whole batch."""
    model = model.double().eval()
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: b.detach() for k, b in model.named_buffers()}
    X = X.cpu().double()

    def f(p):
        return functional_call(model, {**p, **buffers}, (X,)).reshape(X.shape[0], -1)

    jac = jacrev(f)(params)
    out = f(params).detach()
    n, K = out.shape
    return out, torch.cat([jac[k].reshape(n, K, -1) for k in params], dim=-1)


def kind(name: str) -> str:
    return "cnn" if name.startswith("cnn") else "mlp"


def on(device: torch.device, *tensors: torch.Tensor) -> bool:
    return all(t.device.type == device.type for t in tensors)


def state_on(device: torch.device, state: dict) -> bool:
    return all(on(device, t) for t in state.values() if torch.is_tensor(t))


# ----------------------------------------------------------------------------- operators
@pytest.mark.parametrize("name", ["mlp", "two_output", "cnn"])
def test_operators_match_the_dense_reference(device, name):
    X = inputs(kind(name), N)
    f0, J = dense(MODELS[name](), X)
    n, K, P = J.shape
    Jf = J.reshape(n * K, P)
    lm = LinearizedModel(MODELS[name](), device=device, chunk_size=4)  # chunk < n: loops cross chunk edges
    Xd = X.to(device)
    g = torch.Generator().manual_seed(3)
    v = torch.randn(P, generator=g, dtype=torch.float64)
    u = torch.randn(n, K, generator=g, dtype=torch.float64)
    V = torch.randn(n * K, 3, generator=g, dtype=torch.float64)
    out = {
        "forward": (lm.forward(Xd), f0),
        "jacobian": (lm.jacobian(Xd), J),
        "jvp": (lm.jvp(Xd, v.to(device)), J @ v),
        "vjp": (lm.vjp(Xd, u.to(device)), torch.einsum("nkp,nk->p", J, u)),
        "kernel column": (lm.kernel_matmul(Xd, Xd, V[:, 0].to(device)), Jf @ (Jf.T @ V[:, 0])),
        "kernel 3 columns": (lm.kernel_matmul(Xd, Xd, V.to(device)), Jf @ (Jf.T @ V)),
        "kernel diagonal": (lm.ntk_diag(Xd), (J * J).sum(-1)),
        "ggn product": (lm.ggn_matvec(Xd, v.to(device)), Jf.T @ (Jf @ v)),
        "ggn matrix": (lm.ggn_matrix(Xd), Jf.T @ Jf),
    }
    paths = []
    for structured in (None, False):  # structured where the model allows it, then the generic path
        kb = KernelBuilder(lm, structured=structured)
        out[f"kernel matrix ({structured})"] = (kb.matrix(Xd), Jf @ Jf.T)
        out[f"kernel diag ({structured})"] = (kb.diag(Xd), (J * J).sum(-1))
        paths.append(kb.path)
    assert paths == (["jacobian", "jacobian"] if name == "cnn" else ["structured", "jacobian"])
    for what, (got, ref) in out.items():
        assert on(device, got), f"{what} came back on {got.device}"
        assert rel(got, ref) < 1e-10, what


# ----------------------------------------------------------------------------- GP routes
def closed_form(name: str, X, y, Xs):
    """Return (mean, variance) of the GP posterior from the dense float64 J."""
    f0, J = dense(MODELS[name](), X)
    fs, Js = dense(MODELS[name](), Xs)
    n, K, P = J.shape
    Jf, Jsf = J.reshape(n * K, P), Js.reshape(-1, P)
    A = S2 * Jf @ Jf.T + NOISE * torch.eye(n * K, dtype=torch.float64)
    Ksx = S2 * Jsf @ Jf.T
    mean = fs.reshape(-1) + Ksx @ torch.linalg.solve(A, (y - f0).reshape(-1))
    var = S2 * (Jsf * Jsf).sum(1) - (Ksx * torch.linalg.solve(A, Ksx.T).T).sum(1)
    return mean.reshape(-1, K), var.reshape(-1, K)


def regression(name: str, n: int = N, m: int = M):
    K = 2 if name == "two_output" else 1
    g = torch.Generator().manual_seed(0)
    return inputs(kind(name), n, seed=1), torch.randn(n, K, generator=g, dtype=torch.float64), inputs(kind(name), m, seed=2)


@pytest.mark.parametrize("space, solver", ROUTES)
@pytest.mark.parametrize("name", ["mlp", "two_output", "cnn"])
def test_gp_routes_match_the_closed_form(device, name, space, solver):
    X, y, Xs = regression(name)
    mean_ref, var_ref = closed_form(name, X, y, Xs)
    gp = LinearizedGP(MODELS[name](), prior_var=S2, noise=NOISE, space=space, solver=solver, chunk_size=5,
                      device=device)
    gp.fit(X, y)  # CPU inputs: the GP moves them to its device
    mean, var = gp.predict(Xs)
    assert (gp.plan.space, gp.plan.solver) == (space, solver)
    assert gp.lm.device.type == device.type and on(device, mean, var, gp.delta_theta)
    assert state_on(device, gp._state)
    tol = 1e-9 if solver == "cholesky" else 1e-6
    assert rel(mean, mean_ref) < tol and rel(var, var_ref) < tol
    assert gp.solve_info.residual < (1e-11 if solver == "cholesky" else 1e-7)
    assert np.isfinite(gp.log_marginal_likelihood())


def test_gp_follows_device_inputs_without_a_device_argument(device):
    """device=None: the data's device wins (what a caller holding CUDA tensors expects)."""
    X, y, Xs = regression("mlp", n=40, m=8)
    mean_ref, var_ref = closed_form("mlp", X, y, Xs)
    gp = LinearizedGP(mlp(), prior_var=S2, noise=NOISE).fit(X.to(device), y.to(device))
    mean, var = gp.predict(Xs.to(device))
    assert gp.lm.device.type == device.type and on(device, mean, var)
    assert rel(mean, mean_ref) < 1e-9 and rel(var, var_ref) < 1e-9


def test_gp_in_float32_on_the_device_is_close_but_not_exact(device):
    """float32 products and solves: the mean stays close, the variance error is measured (docs/gpu.md)."""
    X, y, Xs = regression("mlp", n=60, m=20)
    mean_ref, var_ref = closed_form("mlp", X, y, Xs)
    gp = LinearizedGP(mlp(), prior_var=S2, noise=NOISE, dtype=torch.float32, device=device).fit(X, y)
    mean, var = gp.predict(Xs)
    assert mean.dtype == torch.float32 and on(device, mean)
    assert rel(mean, mean_ref) < 1e-3
    assert 1e-9 < rel(var, var_ref) < 0.5  # not float64-exact, but not garbage


# ----------------------------------------------------------------------------- classifier
def classifier_reference(make, X, y, Xs, s2=S2, steps=60):
    """Return (Δθ, logit mean, logit covariance) of the Laplace posterior by dense Newton in float64."""
    F0, J = dense(make(), X)
    Fs, Js = dense(make(), Xs)
    n, C, P = J.shape
    d = torch.zeros(P, dtype=torch.float64)
    eye = torch.eye(P, dtype=torch.float64)

    def grad_hess(d):
        p = torch.softmax(F0 + J @ d, -1)
        grad = torch.einsum("ncp,nc->p", J, p - nn.functional.one_hot(y, C).double()) + d / s2
        lam = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
        return grad, torch.einsum("nap,nab,nbq->pq", J, lam, J) + eye / s2

    for _ in range(steps):
        grad, H = grad_hess(d)
        if grad.norm() < 1e-13:
            break
        d = d - torch.linalg.solve(H, grad)
    _, H = grad_hess(d)
    cov = torch.einsum("map,pq,mbq->mab", Js, torch.linalg.inv(H), Js)
    return d, Fs + Js @ d, cov


@pytest.mark.parametrize("space, solver", ROUTES)
@pytest.mark.parametrize("name", ["mlp3", "cnn3"])
def test_classifier_routes_match_dense_newton(device, name, space, solver):
    make = mlp3 if name == "mlp3" else MODELS["cnn3"]
    X, Xs = inputs(kind(name), 16, seed=1), inputs(kind(name), 5, seed=2)
    y = torch.arange(16) % 3
    d_ref, mean_ref, cov_ref = classifier_reference(make, X, y, Xs)
    clf = LinearizedClassifier(make(), prior_var=S2, space=space, solver=solver, chunk_size=7, device=device)
    clf.fit(X, y)
    mean, cov = clf.predict_logits(Xs)
    proba = clf.predict_proba(Xs)
    assert (clf.plan.space, clf.plan.solver) == (space, solver)
    assert clf.lm.device.type == device.type and on(device, mean, cov, proba, clf.delta_theta)
    assert clf.map_info.converged
    assert rel(clf.delta_theta, d_ref) < 1e-7
    assert rel(mean, mean_ref) < 1e-8 and rel(cov, cov_ref) < 1e-7
    assert torch.allclose(proba.sum(-1).cpu(), torch.ones(5, dtype=proba.dtype), atol=1e-10)


# ----------------------------------------------------------------------------- export
@pytest.mark.parametrize("task", ["regression", "classification"])
def test_onnx_export_from_a_device_fitted_model(device, task, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from ntk_studio.core.export import export_predictor, onnx_session

    if task == "regression":
        X, y, Xs = regression("two_output", n=20, m=9)
        predictor = LinearizedGP(two_output(), prior_var=S2, noise=NOISE, device=device).fit(X, y)
        ref_mean, ref_var = closed_form("two_output", X, y, Xs)
        names = ["mean", "f_variance"]
        refs = [ref_mean, ref_var]
    else:
        X, Xs = inputs("mlp", 16, seed=1), inputs("mlp", 9, seed=2)
        y = torch.arange(16) % 3
        predictor = LinearizedClassifier(mlp3(), prior_var=S2, device=device).fit(X, y)
        _, ref_mean, ref_cov = classifier_reference(mlp3, X, y, Xs)
        names = ["logits", "logits_covariance"]
        refs = [ref_mean, ref_cov]
    assert predictor.lm.device.type == device.type
    path = tmp_path / f"{task}.onnx"
    report = export_predictor(predictor, Xs, path)  # raw CPU check inputs, as the app passes them
    assert path.exists() and report.max_error() <= 1e-6
    got = onnx_session(path).run(names, {"x": Xs.numpy()})
    for name, g, r in zip(names, got, refs):
        assert rel(torch.as_tensor(g), r) < 1e-8, name
