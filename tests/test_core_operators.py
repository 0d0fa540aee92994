"""Every operator against a dense float64 reference built from the materialized Jacobian."""

import pytest
import torch
from torch.func import functional_call

from models import MODELS, autograd_jacobian, inputs
from ntk_studio.core import KernelBuilder, LinearizedModel, ParameterSelectionError
from ntk_studio.core.gpytorch_bridge import GGNOperator, JacobianKernelOperator

RTOL = 1e-8
N = 9


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))




CASES = [(name, spec) for name in MODELS for spec in ("all", "last:1")] + [("cnn", "conv,bn")]


@pytest.fixture(params=CASES, ids=[f"{m}-{s}" for m, s in CASES])
def case(request):
    name, spec = request.param
    model = MODELS[name]()
    lm = LinearizedModel(model, spec, chunk_size=4, prefix_dtype="engine")  # chunk < n: every loop crosses chunk edges
    X = inputs(name, N)
    J = autograd_jacobian(MODELS[name](), X, lm.subset.names)
    return lm, X, J


def test_forward_matches_model(case):
    lm, X, _ = case
    ref = lm.model.double().eval()(X)
    assert rel_err(lm.forward(X), ref.reshape(X.shape[0], -1)) < 1e-12


def test_dense_jacobian(case):
    lm, X, J = case
    assert rel_err(lm.jacobian(X), J) < RTOL


def test_jvp_and_vjp(case):
    lm, X, J = case
    g = torch.Generator().manual_seed(5)
    v = torch.randn(lm.num_params, generator=g, dtype=torch.float64)
    V = torch.randn(3, lm.num_params, generator=g, dtype=torch.float64)
    assert rel_err(lm.jvp(X, v), J @ v) < RTOL
    assert rel_err(lm.jvp(X, V), torch.einsum("nkp,cp->cnk", J, V)) < RTOL
    u = torch.randn(N, J.shape[1], generator=g, dtype=torch.float64)
    U = torch.randn(4, N, J.shape[1], generator=g, dtype=torch.float64)
    assert rel_err(lm.vjp(X, u), torch.einsum("nkp,nk->p", J, u)) < RTOL
    assert rel_err(lm.vjp(X, U), torch.einsum("nkp,cnk->cp", J, U)) < RTOL


def test_kernel_products_full_and_independent(case):
    lm, X, J = case
    n, K, P = J.shape
    X2 = X[:5] * 0.5
    J2 = autograd_jacobian(lm.model, X2, lm.subset.names)
    full = J.reshape(n * K, P) @ J2.reshape(5 * K, P).T
    mask = torch.eye(K, dtype=torch.float64).view(1, K, 1, K)
    indep = (full.reshape(n, K, 5, K) * mask).reshape(n * K, 5 * K)
    V = torch.randn(5 * K, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert rel_err(lm.kernel_matmul(X, X2, V), full @ V) < RTOL
    assert rel_err(lm.kernel_matmul(X, X2, V[:, 0]), full @ V[:, 0]) < RTOL
    assert rel_err(lm.kernel_matmul(X, X2, V, independent=True), indep @ V) < RTOL
    for independent, ref in ((False, full), (True, indep)):
        builder = KernelBuilder(lm, independent=independent)
        assert rel_err(builder.matrix(X, X2), ref) < RTOL
        JJ = J.reshape(n * K, P)
        assert rel_err(builder.diag(X), (J * J).sum(-1)) < RTOL
        op = JacobianKernelOperator(X, X2, lm=lm, independent=independent)
        assert rel_err(op.to_dense(), ref) < RTOL
        assert rel_err(op.mT @ torch.ones(n * K, 1, dtype=torch.float64), ref.T @ torch.ones(n * K, 1, dtype=torch.float64)) < RTOL
    sq = JacobianKernelOperator(X, X, lm=lm)
    assert rel_err(sq.diagonal(), (JJ * JJ).sum(1)) < RTOL
    rows, cols = torch.tensor([0, 3, 3, n * K - 1]), torch.tensor([1, 0, 3, 2])
    assert rel_err(sq._get_indices(rows, cols), (JJ @ JJ.T)[rows, cols]) < RTOL


def test_block_diagonal(case):
    lm, X, J = case
    assert rel_err(lm.ntk_diag(X, block=True), J @ J.transpose(1, 2)) < RTOL


def test_ggn_products(case):
    lm, X, J = case
    n, K, P = J.shape
    JJ = J.reshape(n * K, P)
    g = torch.Generator().manual_seed(7)
    v = torch.randn(P, generator=g, dtype=torch.float64)
    V = torch.randn(3, P, generator=g, dtype=torch.float64)
    assert rel_err(lm.ggn_matvec(X, v), JJ.T @ (JJ @ v)) < RTOL
    assert rel_err(lm.ggn_matvec(X, V), (JJ.T @ (JJ @ V.T)).T) < RTOL
    A = torch.randn(n, K, K, generator=g, dtype=torch.float64)
    Lam = A @ A.transpose(1, 2)
    ref = torch.einsum("nap,nab,nbq,q->p", J, Lam, J, v)
    assert rel_err(lm.ggn_matvec(X, v, weights=Lam), ref) < RTOL
    op = GGNOperator(X, lm=lm)
    assert rel_err(op.to_dense(), JJ.T @ JJ) < RTOL


def test_finite_difference_fisher_error_is_reported_honestly(case):
    lm, X, J = case
    n, K, P = J.shape
    JJ = J.reshape(n * K, P)
    v = torch.randn(P, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    exact = JJ.T @ (JJ @ v)
    approx, estimate = lm.fd_ggn_matvec(X, v)
    actual = rel_err(approx, exact)
    assert actual < 1e-6  # central differences in float64 with the default step
    # The Richardson estimate has the right order of magnitude (or both are at round-off).
    assert estimate < 1e-6
    assert actual < 20 * estimate + 1e-9


def test_structured_path_covers_linear_and_conv_and_refuses_batchnorm_with_a_reason():
    mlp_builder = KernelBuilder(LinearizedModel(MODELS["mlp"](), "all"))
    mlp_builder.diag(inputs("mlp", 4))
    assert mlp_builder.path == "structured"
    conv_builder = KernelBuilder(LinearizedModel(MODELS["cnn"](), "conv,head"))
    conv_builder.diag(inputs("cnn", 4))
    assert conv_builder.path == "structured" and conv_builder.fallback_reason == ""
    cnn_builder = KernelBuilder(LinearizedModel(MODELS["cnn"](), "all"))
    cnn_builder.diag(inputs("cnn", 4))
    assert cnn_builder.path == "jacobian"
    assert cnn_builder.fallback_reason == "parameters of bn are in BatchNorm2d, which has no structured form here (Linear and Conv2d have one)"


def test_structured_path_rejects_weight_sharing():
    lin = torch.nn.Linear(3, 3)
    model = torch.nn.Sequential(lin, torch.nn.Tanh(), lin, torch.nn.Linear(3, 1)).double()
    builder = KernelBuilder(LinearizedModel(model, "all"))
    X = inputs("mlp", 5)
    K = builder.matrix(X)
    J = autograd_jacobian(model, X, LinearizedModel(model, "all").subset.names)
    assert builder.path == "jacobian"
    assert rel_err(K, J.reshape(5, -1) @ J.reshape(5, -1).T) < RTOL


def test_eval_mode_and_user_weights_untouched():
    model = MODELS["cnn"]()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lm = LinearizedModel(model, "all")
    X = inputs("cnn", 3)
    out = lm.forward(X)
    assert model.training  # the caller's flag is restored after every call
    reference = MODELS["cnn"]().double().eval()(X)  # BatchNorm with running statistics
    assert rel_err(out, reference) < 1e-12
    assert rel_err(lm.jvp(X, torch.ones(lm.num_params, dtype=torch.float64)), lm.jacobian(X).sum(-1)) < RTOL
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
        assert v.dtype == before[k].dtype


@pytest.mark.parametrize(
    "spec, names",
    [
        ("last:1", ["4.weight", "4.bias"]),
        ("last:2", ["2.weight", "2.bias", "4.weight", "4.bias"]),
        ("0", ["0.weight", "0.bias"]),
        ("4.bias, 0.weight", ["0.weight", "4.bias"]),
        (["2"], ["2.weight", "2.bias"]),
    ],
)
def test_parameter_subsets(spec, names):
    lm = LinearizedModel(MODELS["mlp"](), spec)
    assert list(lm.subset.names) == names
    model = MODELS["mlp"]()
    assert lm.num_params == sum(dict(model.named_parameters())[n].numel() for n in names)


@pytest.mark.parametrize("spec", ["last:0", "last:9", "last:x", "nope", ""])
def test_bad_parameter_subsets_raise_typed_errors(spec):
    with pytest.raises(ParameterSelectionError):
        LinearizedModel(MODELS["mlp"](), spec)


def test_float32_follows_inputs_dtype():
    lm = LinearizedModel(MODELS["mlp"](), "all", dtype=torch.float32)
    X = inputs("mlp", 4).float()
    assert lm.jvp(X, torch.ones(lm.num_params)).dtype == torch.float32
    out = functional_call(lm.model, {**lm.frozen, **lm.theta}, (X,))
    assert out.dtype == torch.float32


def test_scalar_parameters_are_linearized():
    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 1)
            self.scale = torch.nn.Parameter(torch.tensor(2.0))

        def forward(self, x):
            return self.scale * torch.tanh(self.lin(x))

    torch.manual_seed(0)
    model = Scaled()
    lm = LinearizedModel(model, "all")
    X = inputs("mlp", 4)
    J = autograd_jacobian(model, X, lm.subset.names)
    v = torch.randn(lm.num_params, dtype=torch.float64)
    assert rel_err(lm.jvp(X, v), J @ v) < RTOL
