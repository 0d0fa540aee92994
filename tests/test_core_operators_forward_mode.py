"""The generic path's J·v by forward mode with the primal kept (issue #17), against a plain-autograd float64 Jacobian.

Models without the structured form (BatchNorm/LayerNorm affine parameters, Embedding, Conv1d, several
outputs, a float32 model) keep per chunk a forward graph (Jᵀ·u) and a traced tangent program's primal
values (J·v); products must equal the dense reference, never be served stale, count everything kept
against the budget, and fall back (stated) when the tangent map cannot be traced.
"""

import pytest
import torch
from torch import nn

from models import autograd_jacobian, cnn
from ntk_studio.core import LinearizedModel
from ntk_studio.core.primal_cache import FORWARD_MODE, PrimalCache
from ntk_studio.core.tangent_program import TraceError, trace

RTOL = 1e-9
N, CHUNK = 11, 4  # chunks of 4, 4, 3: two program shapes, every loop crosses chunk edges


class LayerNormMLP(nn.Module):
    def __init__(self, outputs: int = 1) -> None:
        super().__init__()
        self.inp = nn.Linear(3, 8)
        self.norm = nn.LayerNorm(8)
        self.out = nn.Linear(8, outputs)

    def forward(self, x):
        return self.out(torch.tanh(self.norm(self.inp(x))))


class EmbeddingNet(nn.Module):
    """Token ids (n, 5) → mean of embeddings → Linear: the inputs are integers."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(7, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, ids):
        return self.head(torch.nn.functional.gelu(self.emb(ids).mean(1)))


class Conv1dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 3, kernel_size=3, padding=1)
        self.head = nn.Linear(3 * 6, 3)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).flatten(1))


class ValueBranch(nn.Module):
    """A branch on the values (never taken for these inputs): fake-tensor tracing cannot follow it."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 5)
        self.norm = nn.LayerNorm(5)
        self.b = nn.Linear(5, 1)

    def forward(self, x):
        h = self.norm(self.a(x))
        if float(h.detach().abs().max()) > 1e6:
            h = h * 0.5
        return self.b(torch.tanh(h))


class _NoForwardAD(torch.autograd.Function):
    """x³ with a (differentiable) backward but no forward-mode formula."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x**3

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 3 * x**2 * g


class CustomOp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.norm = nn.LayerNorm(4)
        self.b = nn.Linear(4, 1)

    def forward(self, x):
        return self.b(_NoForwardAD.apply(self.norm(self.a(x))))


def _seeded(factory):
    def build():
        torch.manual_seed(0)
        model = factory()
        with torch.no_grad():  # LayerNorm starts at weight 1, bias 0: perturb so its J is generic
            for m in model.modules():
                if isinstance(m, nn.LayerNorm):
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.3, 0.3)
        return model
    return build


def _inputs(name: str, n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if name == "bn_cnn":
        return torch.randn(n, 1, 6, 6, generator=g, dtype=torch.float64)
    if name == "embedding":
        return torch.randint(0, 7, (n, 5), generator=g)
    if name == "conv1d":
        return torch.randn(n, 2, 6, generator=g, dtype=torch.float64)
    return torch.randn(n, 3, generator=g, dtype=torch.float64)


MODELS = {
    "bn_cnn": lambda: cnn(outputs=2),  # Conv2d → BatchNorm2d (eval, non-trivial running statistics) → pool → Linear
    "layernorm": _seeded(lambda: LayerNormMLP(outputs=1)),
    "layernorm_3out": _seeded(lambda: LayerNormMLP(outputs=3)),
    "embedding": _seeded(EmbeddingNet),
    "conv1d": _seeded(Conv1dNet),
}
CASES = [("bn_cnn", "all"), ("bn_cnn", "bn,head"), ("layernorm", "all"), ("layernorm_3out", "norm,out"),
         ("embedding", "all"), ("conv1d", "all")]


def rel_err(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def _reference(name, lm, X):
    """J (n·K, P) by plain autograd on a float64 copy of the model (no torch.func, no kept state)."""
    J = autograd_jacobian(MODELS[name](), X, lm.subset.names)
    return J.reshape(-1, J.shape[-1]), J.shape[1]


def _check_products(lm, X, JJ, K, seed=2):
    g = torch.Generator().manual_seed(seed)
    n, P = X.shape[0], JJ.shape[1]
    v, V = torch.randn(P, generator=g, dtype=torch.float64), torch.randn(3, P, generator=g, dtype=torch.float64)
    C = torch.randn(n * K, 5, generator=g, dtype=torch.float64)
    u = torch.randn(n, K, generator=g, dtype=torch.float64)
    assert rel_err(lm.kernel_matmul(X, X, C), JJ @ (JJ.T @ C)) < RTOL  # builds the kept state
    assert rel_err(lm.kernel_matmul(X, X, C[:, 0]), JJ @ (JJ.T @ C[:, 0])) < RTOL
    assert rel_err(lm.jvp(X, v), (JJ @ v).reshape(n, K)) < RTOL
    assert rel_err(lm.jvp(X, V), (V @ JJ.T).reshape(3, n, K)) < RTOL
    assert rel_err(lm.vjp(X, u), JJ.T @ u.reshape(-1)) < RTOL
    assert rel_err(lm.ggn_matvec(X, v), JJ.T @ (JJ @ v)) < RTOL
    assert rel_err(lm.ggn_matvec(X, V), (JJ.T @ (JJ @ V.T)).T) < RTOL
    A = torch.randn(n, K, K, generator=g, dtype=torch.float64)
    Lam = A @ A.transpose(1, 2)
    ref = JJ.T @ torch.einsum("nab,nb->na", Lam, (JJ @ v).reshape(n, K)).reshape(-1)
    assert rel_err(lm.ggn_matvec(X, v, weights=Lam), ref) < RTOL


@pytest.mark.parametrize("name, spec", CASES, ids=[f"{m}-{s}" for m, s in CASES])
def test_forward_mode_products_match_the_plain_autograd_jacobian(name, spec):
    lm = LinearizedModel(MODELS[name](), spec, chunk_size=CHUNK, prefix_dtype="engine")  # prefix exact in float64
    lm.product_route = "forward_mode"
    X = _inputs(name, N)
    JJ, K = _reference(name, lm, X)
    _check_products(lm, X, JJ, K)
    cache = lm._product_cache(X, build=False)
    assert isinstance(cache, PrimalCache) and cache.how == FORWARD_MODE
    assert all(ch.program is not None and ch.grads is None for _, ch in cache.chunks)  # no double-backward graph
    assert f"J·v by {FORWARD_MODE}" in lm.operator_note
    assert len(lm._tangent_programs) == 2  # chunk shapes 4 and 3
    # The tangent part writes into its own temporaries only: neither the tangents nor the kept values change.
    v = torch.randn(3, JJ.shape[1], generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    v0, state0 = v.clone(), [t.clone() for _, ch in cache.chunks for t in ch.state]
    first = lm.jvp(X, v)
    assert torch.equal(lm.jvp(X, v), first) and torch.equal(v, v0)
    assert torch.equal(lm.jvp(X, v[0]), lm.jvp(X, v[0])) and rel_err(lm.jvp(X, v[0]), first[0]) < 1e-14
    assert all(torch.equal(a, b) for a, b in zip(state0, [t for _, ch in cache.chunks for t in ch.state]))
    # Another input set of the same shape reuses the programs, with its own primal values (not the first set's).
    X2 = _inputs(name, N, seed=9)
    JJ2, _ = _reference(name, lm, X2)
    programs = dict(lm._tangent_programs)
    _check_products(lm, X2, JJ2, K, seed=3)
    assert lm._tangent_programs == programs


def _fwd_grad_off():
    return torch.autograd.forward_ad._set_fwd_grad_enabled(False)  # as inside an autograd.Function's forward


@pytest.mark.parametrize("context", [torch.no_grad, _fwd_grad_off, torch.enable_grad])
def test_products_built_under_any_grad_mode_are_right(context):
    """A GP fit builds the kept state inside linear_operator's autograd Functions: J must not come out zero there."""
    lm = LinearizedModel(MODELS["bn_cnn"](), "all", chunk_size=CHUNK)
    lm.product_route = "forward_mode"
    X = _inputs("bn_cnn", N)
    JJ, K = _reference("bn_cnn", lm, X)
    C = torch.randn(N * K, 2, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    with context():
        out = lm.kernel_matmul(X, X, C)
    assert rel_err(out, JJ @ (JJ.T @ C)) < RTOL
    assert lm._product_cache(X, build=False).how == FORWARD_MODE
    v = torch.randn(JJ.shape[1], generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    assert rel_err(lm.jvp(X, v), (JJ @ v).reshape(N, K)) < RTOL


def test_a_float32_model_in_either_engine_dtype():
    model = _seeded(lambda: LayerNormMLP(outputs=2))().float()
    X = _inputs("layernorm", N)
    J = autograd_jacobian(_seeded(lambda: LayerNormMLP(outputs=2))(), X, [n for n, _ in model.named_parameters()])
    JJ = J.reshape(-1, J.shape[-1])
    lm = LinearizedModel(model, "all", chunk_size=CHUNK)  # float64 engine: the float32 weights are cast
    lm.product_route = "forward_mode"
    _check_products(lm, X, JJ, 2)
    assert lm._product_cache(X, build=False).how == FORWARD_MODE
    lm32 = LinearizedModel(model, "all", chunk_size=CHUNK, dtype=torch.float32)
    lm32.product_route = "forward_mode"
    X32 = lm32.prepare(X)
    v = torch.randn(JJ.shape[1], generator=torch.Generator().manual_seed(4), dtype=torch.float32)
    C = torch.randn(N * 2, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float32)
    # The float64 reference is of the float32 weights' values: agreement to float32 round-off.
    assert rel_err(lm32.kernel_matmul(X32, X32, C).double(), JJ @ (JJ.T @ C.double())) < 1e-5
    assert rel_err(lm32.ggn_matvec(X32, v).double(), JJ.T @ (JJ @ v.double())) < 1e-5
    cache = lm32._product_cache(X32, build=False)
    assert cache.how == FORWARD_MODE and all(t.dtype == torch.float32 for _, ch in cache.chunks for t in ch.state
                                               if t.is_floating_point())


@pytest.mark.parametrize("factory, reason", [
    (ValueBranch, "could not be traced"),
    (CustomOp, "could not be traced"),
], ids=["value-dependent-branch", "op-without-forward-mode"])
def test_an_untraceable_tangent_map_falls_back_to_the_double_backward_and_says_why(factory, reason):
    build = _seeded(factory)
    lm = LinearizedModel(build(), "all", chunk_size=CHUNK)
    lm.product_route = "forward_mode"
    X = _inputs("mlp", N)
    J = autograd_jacobian(build(), X, lm.subset.names)
    _check_products(lm, X, J.reshape(-1, J.shape[-1]), 1)
    cache = lm._product_cache(X, build=False)
    assert isinstance(cache, PrimalCache)
    assert cache.how.startswith("double backward: the tangent map could not be traced (")
    assert all(ch.program is None and ch.grads is not None for _, ch in cache.chunks)
    assert lm.operator_note.startswith("products from kept autograd graphs (")
    assert "J·v by double backward: the tangent map could not be traced (" in lm.operator_note
    with pytest.raises(TraceError, match=r"^(\w+|the model reads tensor values in Python \(\w+\)): "):
        trace(lm._g, {**lm.frozen, **lm.theta}, list(lm.theta), lm.prepare(X[:CHUNK]))


def test_the_double_backward_route_gives_the_same_numbers():
    lm = LinearizedModel(MODELS["layernorm_3out"](), "all", chunk_size=CHUNK)
    lm.product_route = "forward_mode"
    lm.product_route = "double_backward"
    X = _inputs("layernorm", N)
    JJ, K = _reference("layernorm_3out", lm, X)
    _check_products(lm, X, JJ, K)
    cache = lm._product_cache(X, build=False)
    assert cache.state_bytes == 0 and all(ch.program is None for _, ch in cache.chunks)
    assert not lm._tangent_programs


def test_the_programs_kept_values_count_against_the_budget():
    """One chunk, so the projection is exact: a budget that holds the graph but not the program's values refuses."""
    model = MODELS["bn_cnn"]()
    X = _inputs("bn_cnn", 6)
    lm = LinearizedModel(model, "all")
    lm.product_route = "forward_mode"
    lm.kernel_matmul(X, X, torch.ones(12, dtype=torch.float64))
    cache = lm._product_cache(X, build=False)
    assert cache.how == FORWARD_MODE and cache.graph_bytes > 0 and cache.state_bytes > 0
    assert cache.nbytes == cache.graph_bytes + cache.state_bytes
    # What the program keeps for this chunk, measured independently: every kept tensor's own storage.
    kept = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for _, ch in cache.chunks for t in ch.state}
    inputs_and_weights = {t.untyped_storage().data_ptr() for t in (*lm.theta.values(), *lm.frozen.values(), X)}
    assert cache.state_bytes == sum(b for p, b in kept.items() if p not in inputs_and_weights)
    # The conv's input has no tangent: its zero term (conv(0, W), output-sized) is dropped, not kept.
    assert not any(t.is_floating_point() and t.numel() > 1 and not t.any() for _, ch in cache.chunks for t in ch.state)

    tight = LinearizedModel(model, "all")
    tight.product_route = "forward_mode"
    tight.operator_cache_bytes = cache.graph_bytes + cache.state_bytes // 2
    JJ, _ = _reference("bn_cnn", tight, X)
    V = torch.ones(12, dtype=torch.float64)
    assert rel_err(tight.kernel_matmul(X, X, V), JJ @ (JJ.T @ V)) < RTOL
    assert tight._product_cache(X, build=False) is None
    assert tight.operator_note.startswith("products recompute the network: the kept graphs would need")


def test_the_programs_kept_per_model_are_bounded(monkeypatch):
    import ntk_studio.core.primal_cache as primal_cache

    monkeypatch.setattr(primal_cache, "PROGRAMS_KEPT", 2)
    lm = LinearizedModel(MODELS["layernorm"](), "all")
    lm.product_route = "forward_mode"
    for n in (3, 4, 5, 6):
        X = _inputs("layernorm", n, seed=n)
        JJ, _ = _reference("layernorm", lm, X)
        V = torch.ones(n, dtype=torch.float64)
        assert rel_err(lm.kernel_matmul(X, X, V), JJ @ (JJ.T @ V)) < RTOL
    assert [k[0][0] for k in lm._tangent_programs] == [5, 6]


def test_clearing_the_operator_cache_forgets_the_programs():
    lm = LinearizedModel(MODELS["layernorm"](), "all")
    lm.product_route = "forward_mode"
    X = _inputs("layernorm", 5)
    lm.kernel_matmul(X, X, torch.ones(5, dtype=torch.float64))
    assert len(lm._tangent_programs) == 1
    lm.clear_operator_cache()
    assert not lm._tangent_programs and lm._product_cache(X, build=False) is None
