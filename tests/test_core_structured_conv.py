"""Structured features for Conv2d (through unfolded inputs) and Linear layers on (n, *, in) inputs (issue #17).

Every kernel block, diagonal and product from cached per-layer features is checked against a dense
float64 Jacobian built by plain autograd, one backward per (sample, output); refusals name their reason
and the generic path they fall back to is checked the same way.
"""

import pytest
import torch
from torch import nn

from models import autograd_jacobian
from ntk_studio.core import KernelBuilder, LinearizedModel
from ntk_studio.core.structured import StructuredProducts

RTOL = 1e-9
N = 7


def rel_err(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-300))




class SeqNet(nn.Module):
    """Linear layers on (n, T, d) inputs: a token-wise layer, a mean over tokens, a 2-output head."""

    def __init__(self):
        super().__init__()
        self.tok = nn.Linear(4, 5)
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        return self.head(torch.tanh(self.tok(x)).mean(1))


def conv_stride_pad_multi():
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(4, 6, (2, 3), dilation=(1, 2), bias=False), nn.Tanh(),
        nn.Flatten(), nn.Linear(6 * 3 * 2, 3),
    )


def conv_groups_same():
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding="same"), nn.Tanh(),
        nn.Conv2d(4, 6, 3, groups=2, padding="valid"), nn.Tanh(),
        nn.Conv2d(6, 6, 1, groups=6), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2),
    )


def conv_small_map_many_channels():
    # 2×2 maps with 8 channels: the factors (U, G) are smaller than the per-sample Jacobian.
    return nn.Sequential(nn.Conv2d(3, 8, 2, stride=2), nn.Tanh(), nn.Conv2d(8, 8, 3, padding=1), nn.Flatten(), nn.Linear(32, 2))


def conv_single_output():
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=2, stride=(1, 2), bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 8 * 4, 1))


CASES = {
    "stride2-pad-dilation-nobias-3out": (conv_stride_pad_multi, (2, 8, 11), "all"),
    "groups-same-depthwise-2out": (conv_groups_same, (2, 6, 6), "all"),
    "small-map-factors": (conv_small_map_many_channels, (3, 4, 4), "all"),
    "single-output-conv-only": (conv_single_output, (1, 6, 6), "0"),
    "conv-bias-and-head-weight": (conv_stride_pad_multi, (2, 8, 11), "0.bias, 5.weight"),
    "sequence-linear": (SeqNet, (3, 4), "all"),
}


@pytest.fixture(params=list(CASES), ids=list(CASES))
def case(request):
    build, shape, spec = CASES[request.param]
    torch.manual_seed(0)
    model = build().double()
    g = torch.Generator().manual_seed(1)
    X = torch.randn(N, *shape, generator=g, dtype=torch.float64)
    X2 = torch.randn(4, *shape, generator=g, dtype=torch.float64)
    lm = LinearizedModel(model, spec, chunk_size=3)  # chunk < n: the loops cross chunk edges
    J = autograd_jacobian(model, X, lm.subset.names)
    J2 = autograd_jacobian(model, X2, lm.subset.names)
    return lm, X, X2, J, J2


def test_kernel_blocks_and_diagonal_match_the_autograd_jacobian(case):
    lm, X, X2, J, J2 = case
    n, K, P = J.shape
    full = J.reshape(n * K, P) @ J2.reshape(-1, P).T
    mask = torch.eye(K, dtype=torch.float64).view(1, K, 1, K)
    for independent, ref in ((False, full), (True, (full.reshape(n, K, 4, K) * mask).reshape(n * K, 4 * K))):
        kb = KernelBuilder(lm, independent=independent)
        assert rel_err(kb.matrix(X, X2), ref) < RTOL
        assert kb.path == "structured", kb.fallback_reason
        assert rel_err(kb.matrix(X), (J.reshape(n * K, P) @ J.reshape(n * K, P).T) * (1 if not independent else torch.eye(K, dtype=torch.float64).repeat(n, n))) < RTOL
        assert rel_err(kb.diag(X), (J * J).sum(-1)) < RTOL


def test_products_come_from_cached_features_and_match_the_autograd_jacobian(case):
    lm, X, X2, J, J2 = case
    n, K, P = J.shape
    JJ, JJ2 = J.reshape(n * K, P), J2.reshape(-1, P)
    g = torch.Generator().manual_seed(3)
    V = torch.randn(4 * K, 5, generator=g, dtype=torch.float64)
    assert rel_err(lm.kernel_matmul(X, X2, V), JJ @ (JJ2.T @ V)) < RTOL
    W = torch.randn(n * K, generator=g, dtype=torch.float64)
    assert rel_err(lm.kernel_matmul(X, X, W), JJ @ (JJ.T @ W)) < RTOL
    cache = lm._product_cache(X, build=False)
    assert isinstance(cache, StructuredProducts)
    assert lm.operator_note.startswith("products from structured features")
    v = torch.randn(3, P, generator=g, dtype=torch.float64)
    A = torch.randn(n, K, K, generator=g, dtype=torch.float64)
    Lam = A @ A.transpose(1, 2)
    assert rel_err(lm.ggn_matvec(X, v), (JJ.T @ (JJ @ v.T)).T) < RTOL
    assert rel_err(lm.ggn_matvec(X, v[0], weights=Lam), torch.einsum("nap,nab,nbq,q->p", J, Lam, J, v[0])) < RTOL
    # jvp / vjp on the cached input answer from the features too.
    assert rel_err(lm.jvp(X, v), torch.einsum("nkp,cp->cnk", J, v)) < RTOL
    u = torch.randn(n, K, generator=g, dtype=torch.float64)
    assert rel_err(lm.vjp(X, u), torch.einsum("nkp,nk->p", J, u)) < RTOL


def test_products_run_no_forward_pass_once_the_features_are_kept(case):
    lm, X, X2, J, _ = case
    n, K, P = J.shape
    V = torch.ones(n * K, 2, dtype=torch.float64)
    lm.kernel_matmul(X, X, V)  # builds the features
    calls = []
    handle = lm.model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        for _ in range(3):
            lm.kernel_matmul(X, X, V)
            lm.ggn_matvec(X, torch.ones(P, dtype=torch.float64))
    finally:
        handle.remove()
    assert calls == []


def test_both_layer_representations_are_exercised():
    """Each layer keeps the smaller of its factors and its per-sample Jacobian; the cases above cover both."""
    torch.manual_seed(0)
    lm = LinearizedModel(conv_stride_pad_multi().double(), "all")
    feats = lm.structured.features(torch.randn(3, 2, 8, 11, dtype=torch.float64))
    # conv 1: 24 positions × (18 inputs + 3·4 signals) > 3 outputs × 76 params: per-sample J kept;
    # conv 2: 6 × (24 + 3·6) = 252 < 3 × 144: factors; Linear head: one position, factors.
    assert ["jacobian" if f.J is not None else "factors" for f in feats] == ["jacobian", "factors", "factors"]


class _Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.out = nn.Linear(3, 1)

    def forward(self, x):
        return self.out(self.lin(torch.tanh(self.lin(x))))


class _WeightOutside(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x):
        return self.lin(x) + x @ self.lin.weight.T  # the weight is used outside the layer's forward


REFUSALS = {
    "layernorm": (lambda: nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 1)), (3,),
                  "parameters of 1 are in LayerNorm, which has no structured form here (Linear and Conv2d have one)"),
    "embedding": (lambda: nn.Sequential(nn.Embedding(5, 3), nn.Flatten(), nn.Linear(6, 1)), None,
                  "parameters of 0 are in Embedding, which has no structured form here (Linear and Conv2d have one)"),
    "conv1d": (lambda: nn.Sequential(nn.Conv1d(2, 3, 3), nn.Flatten(), nn.Linear(12, 1)), (2, 6),
               "parameters of 0 are in Conv1d, which has no structured form here (Linear and Conv2d have one)"),
    "reflect-padding": (lambda: nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect"), nn.Flatten(), nn.Linear(32, 1)), (1, 4, 4),
                        "0 pads with mode 'reflect' (unfold pads with zeros only)"),
    "same-even-kernel": (lambda: nn.Sequential(nn.Conv2d(1, 2, 2, padding="same"), nn.Flatten(), nn.Linear(32, 1)), (1, 4, 4),
                         "0 uses padding='same' with an even effective kernel (asymmetric padding)"),
    "called-twice": (_Twice, (3,), "lin is called more than once per forward"),
    "weight-outside-forward": (_WeightOutside, (3,),
                               "the structured kernel disagreed with torch.func on a probe (the model uses a layer's weights outside its forward)"),
}


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")  # torch's own, same-even-kernel
@pytest.mark.parametrize("name", list(REFUSALS))
def test_refused_models_state_why_and_the_generic_path_matches_the_autograd_jacobian(name):
    build, shape, reason = REFUSALS[name]
    torch.manual_seed(0)
    model = build().double()
    g = torch.Generator().manual_seed(2)
    X = torch.randint(0, 5, (5, 2), generator=g) if shape is None else torch.randn(5, *shape, generator=g, dtype=torch.float64)
    lm = LinearizedModel(model, "all", chunk_size=2)
    kb = KernelBuilder(lm)
    J = autograd_jacobian(model, X, lm.subset.names)
    n, K, P = J.shape
    JJ = J.reshape(n * K, P)
    assert rel_err(kb.matrix(X), JJ @ JJ.T) < RTOL
    assert kb.path == "jacobian" and kb.fallback_reason == reason
    V = torch.randn(n * K, 3, generator=g, dtype=torch.float64)
    assert rel_err(lm.kernel_matmul(X, X, V), JJ @ (JJ.T @ V)) < RTOL
    assert lm.operator_note.startswith(f"products from kept autograd graphs ({reason})")
    v = torch.randn(P, generator=g, dtype=torch.float64)
    assert rel_err(lm.ggn_matvec(X, v), JJ.T @ (JJ @ v)) < RTOL
