"""Caches are keyed on tensor identity AND version: an in-place change is never answered from the cache (issue #14)."""

import pytest
import torch

from models import MODELS, inputs
from ntk_studio.core import KernelBuilder, LinearizedModel
from ntk_studio.core.caching import LastInputCache


def dense_kernel(model, X1, X2):
    """Return J(X1) J(X2)ᵀ from materialized float64 Jacobians."""
    lm = LinearizedModel(model)
    J1, J2 = lm.jacobian(X1), lm.jacobian(X2)
    return J1.reshape(-1, J1.shape[-1]) @ J2.reshape(-1, J2.shape[-1]).T


@pytest.mark.parametrize("structured", [True, False])
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_kernel_builder_sees_an_in_place_change_of_its_input(name, structured):
    model = MODELS[name]()
    kb = KernelBuilder(LinearizedModel(model), structured=structured)
    Xs, X = inputs(name, 4, seed=3), inputs(name, 9, seed=1)
    first = kb.matrix(Xs, X)
    torch.testing.assert_close(first, dense_kernel(model, Xs, X), rtol=1e-10, atol=1e-12)
    X.mul_(1.7).add_(0.3)  # the caller edits the training inputs in place
    second = kb.matrix(Xs, X)
    torch.testing.assert_close(second, dense_kernel(model, Xs, X), rtol=1e-10, atol=1e-12)
    assert not torch.allclose(first, second)


def test_last_input_cache_reuses_an_unchanged_tensor_and_recomputes_a_changed_one():
    calls = []
    cache = LastInputCache(lambda t: calls.append(1) or t.sum().item())
    X = torch.ones(5)
    assert cache(X) == 5.0 and cache(X) == 5.0 and len(calls) == 1  # same object, same version: cached
    X[0] = 3.0
    assert cache(X) == 7.0 and len(calls) == 2
    assert cache(X.clone()) == 7.0 and len(calls) == 3  # equal values, other object: recomputed
    cache.clear()
    assert cache(X) == 7.0 and len(calls) == 4


def test_kernel_builder_clear_cache_forgets_the_training_jacobian():
    calls = []
    lm = LinearizedModel(MODELS["mlp"]())
    original = lm.jacobian
    lm.jacobian = lambda X: calls.append(1) or original(X)
    kb = KernelBuilder(lm, structured=False)
    Xs, X = inputs("mlp", 3, seed=3), inputs("mlp", 6, seed=1)
    kb.matrix(Xs, X)
    kb.matrix(Xs, X)
    assert len(calls) == 1
    kb.clear_cache()
    kb.matrix(Xs, X)
    assert len(calls) == 2
