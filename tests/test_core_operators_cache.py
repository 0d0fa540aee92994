"""Products reuse what they keep for an input (issue #17): never stale, within a budget, same numbers.

Kernel and GGN products keep per-input features (structured Linear/Conv2d features, or the generic
path's autograd graphs) keyed on the tensor object and its ``_version``; every case is checked
against a dense float64 Jacobian.
"""

import pytest
import torch

from models import MODELS, inputs
from ntk_studio.core import LinearizedModel, SettingsError
from ntk_studio.core.primal_cache import PrimalCache
from ntk_studio.core.structured import StructuredProducts

RTOL = 1e-9
# (model, subset, route) -> the kind of cache the products must use
ROUTES = [
    ("mlp", "all", "auto", StructuredProducts),
    ("cnn", "conv,head", "auto", StructuredProducts),
    ("cnn", "all", "auto", PrimalCache),  # BatchNorm affine: generic path
    ("two_output", "all", "primal", PrimalCache),
]
IDS = [f"{m}-{s}-{r}" for m, s, r, _ in ROUTES]


def rel_err(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def dense(lm, X):
    """Return J(X) (n·K, P) from a fresh model copy's per-sample Jacobians (no product cache)."""
    ref = LinearizedModel(lm.model, list(lm.subset.names))
    J = ref.jacobian(X)
    return J.reshape(-1, J.shape[-1])


class ForwardCounter:
    def __init__(self, model):
        self.calls = 0
        self.handle = model.register_forward_pre_hook(self._count)

    def _count(self, *args):
        self.calls += 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.mark.parametrize("name, spec, route, kind", ROUTES, ids=IDS)
def test_an_in_place_change_of_the_inputs_is_never_answered_from_the_cache(name, spec, route, kind):
    lm = LinearizedModel(MODELS[name](), spec, chunk_size=4)
    lm.product_route = route
    X = inputs(name, 9)
    JJ = dense(lm, X)
    V = torch.randn(JJ.shape[0], 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    v = torch.randn(JJ.shape[1], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    first = lm.kernel_matmul(X, X, V)
    assert rel_err(first, JJ @ (JJ.T @ V)) < RTOL
    assert isinstance(lm._product_cache(X, build=False), kind)
    X.mul_(1.7).add_(0.3)  # the caller edits the inputs in place
    assert lm._product_cache(X, build=False) is None
    JJ_new = dense(lm, X)
    second = lm.kernel_matmul(X, X, V)
    assert rel_err(second, JJ_new @ (JJ_new.T @ V)) < RTOL
    assert rel_err(second, first) > 1e-3
    assert rel_err(lm.ggn_matvec(X, v), JJ_new.T @ (JJ_new @ v)) < RTOL
    assert rel_err(lm.jvp(X, v), (JJ_new @ v).reshape(9, -1)) < RTOL


@pytest.mark.parametrize("name, spec, route, kind", ROUTES, ids=IDS)
def test_kept_features_spare_every_forward_pass_and_match_the_dense_reference(name, spec, route, kind):
    lm = LinearizedModel(MODELS[name](), spec, chunk_size=4)
    lm.product_route = route
    X, Xs = inputs(name, 10), inputs(name, 3, seed=4)
    JJ, JJs = dense(lm, X), dense(lm, Xs)
    g = torch.Generator().manual_seed(2)
    V = torch.randn(JJ.shape[0], 3, generator=g, dtype=torch.float64)
    v = torch.randn(2, JJ.shape[1], generator=g, dtype=torch.float64)
    lm.kernel_matmul(X, X, V)  # builds
    with ForwardCounter(lm.model) as count:
        for _ in range(3):
            assert rel_err(lm.kernel_matmul(X, X, V), JJ @ (JJ.T @ V)) < RTOL
            assert rel_err(lm.ggn_matvec(X, v), (JJ.T @ (JJ @ v.T)).T) < RTOL
    assert count.calls == 0
    # A second input (test points) beside the training set: both kept, both right.
    E = torch.eye(JJs.shape[0], dtype=torch.float64)
    assert rel_err(lm.kernel_matmul(X, Xs, E), JJ @ JJs.T) < RTOL
    with ForwardCounter(lm.model) as count:
        assert rel_err(lm.kernel_matmul(Xs, X, V), JJs @ (JJ.T @ V)) < RTOL
    assert count.calls == 0
    assert lm.operator_note.startswith("products from ")


def test_over_budget_products_recompute_and_say_so():
    lm = LinearizedModel(MODELS["mlp"](), "all")
    lm.operator_cache_bytes = 1024  # far below the features of 50 samples
    X = inputs("mlp", 50)
    JJ = dense(lm, X)
    V = torch.randn(50, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with ForwardCounter(lm.model) as count:
        assert rel_err(lm.kernel_matmul(X, X, V), JJ @ (JJ.T @ V)) < RTOL
        assert rel_err(lm.kernel_matmul(X, X, V), JJ @ (JJ.T @ V)) < RTOL
    assert count.calls >= 2  # every product ran the network again
    assert lm._product_cache(X, build=False) is None
    assert lm.operator_note.startswith("products recompute the network: structured features would need")
    assert "> budget 0 MiB" in lm.operator_note

    generic = LinearizedModel(MODELS["cnn"](), "all")
    generic.operator_cache_bytes = 1024
    Xc = inputs("cnn", 6)
    JJc = dense(generic, Xc)
    Vc = torch.ones(JJc.shape[0], dtype=torch.float64)
    assert rel_err(generic.kernel_matmul(Xc, Xc, Vc), JJc @ (JJc.T @ Vc)) < RTOL
    assert generic.operator_note.startswith("products recompute the network: the kept graphs would need")


def test_the_budget_check_uses_the_size_the_features_are_kept_at():
    """Conv layers keep a compact per-sample Jacobian; the budget check must use that size, not the factors'."""
    from test_core_structured_conv import conv_stride_pad_multi

    torch.manual_seed(0)
    lm = LinearizedModel(conv_stride_pad_multi().double(), "all")
    X = torch.randn(12, 2, 8, 11, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    lm.kernel_matmul(X, X, torch.ones(12 * 3, dtype=torch.float64))
    cache = lm._product_cache(X, build=False)
    assert isinstance(cache, StructuredProducts)
    assert lm.structured.feature_bytes(12) == cache.nbytes
    lm.clear_operator_cache()
    lm.operator_cache_bytes = cache.nbytes  # exactly enough
    lm.kernel_matmul(X, X, torch.ones(12 * 3, dtype=torch.float64))
    assert isinstance(lm._product_cache(X, build=False), StructuredProducts)


def test_recompute_route_and_bad_route():
    lm = LinearizedModel(MODELS["mlp"](), "all")
    lm.product_route = "recompute"
    X = inputs("mlp", 5)
    JJ = dense(lm, X)
    v = torch.ones(JJ.shape[1], dtype=torch.float64)
    assert rel_err(lm.ggn_matvec(X, v), JJ.T @ (JJ @ v)) < RTOL
    assert lm._product_cache(X, build=True) is None
    lm.product_route = "fast"
    with pytest.raises(SettingsError, match="product_route must be one of auto, forward_mode, primal, double_backward, recompute"):
        lm.ggn_matvec(X, v)


def test_clear_operator_cache_forgets_the_features():
    lm = LinearizedModel(MODELS["mlp"](), "all")
    X = inputs("mlp", 5)
    lm.kernel_matmul(X, X, torch.ones(5, dtype=torch.float64))
    assert lm._product_cache(X, build=False) is not None
    lm.clear_operator_cache()
    assert lm._product_cache(X, build=False) is None
