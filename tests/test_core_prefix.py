"""Frozen-prefix caching (core/prefix.py): split detection, the feature cache, and exactness.

Every product with the cached prefix is compared with the same LinearizedModel built with
prefix=False (which runs the whole network for every product) in float64, and the head-only kernel
with a dense reference built by hand from the prefix's features.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ntk_studio.core import LinearizedClassifier, LinearizedGP
from ntk_studio.core import prefix as prefix_mod
from ntk_studio.core.errors import SettingsError
from ntk_studio.core.linearized import LinearizedModel

TOL = 1e-12


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


@pytest.fixture(autouse=True)
def _fresh_cache():
    prefix_mod.clear_cache()
    yield
    prefix_mod.clear_cache()


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 3)).double()


class SmallCNN(nn.Module):
    """Not a Sequential: traced by torch.fx; BatchNorm and dropout in the frozen body."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(5 * 4 * 4, 3)

    def forward(self, x):
        h = F.relu(self.bn(self.conv1(x)))
        h = F.avg_pool2d(F.relu(self.conv2(h)), 2)
        return self.head(self.drop(torch.flatten(h, 1)))


def cnn() -> nn.Module:
    torch.manual_seed(1)
    m = SmallCNN().double()
    with torch.no_grad():  # non-trivial running statistics, so eval mode matters
        m.bn.running_mean.uniform_(-0.5, 0.5)
        m.bn.running_var.uniform_(0.5, 2.0)
    return m


class SkipAroundBoundary(nn.Module):
    """The input skips past the linearized layer: no single tensor separates frozen from linearized."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(3, 3)
        self.head = nn.Linear(3, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.body(x))) + x


class UsedEarly(nn.Module):
    """The head's parameters are read before the body: the subset is not a suffix."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3, 3)
        self.body = nn.Linear(3, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.body(self.head(x))))


class Branchy(nn.Module):
    """Python control flow on a shape: torch.fx cannot trace it (vmap can run it)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 6)

    def forward(self, x):
        h = self.lin(x)
        return torch.tanh(h) if h.shape[-1] == 6 else h


def pair(model: nn.Module, params: str) -> tuple[LinearizedModel, LinearizedModel]:
    return LinearizedModel(model, params, chunk_size=7), LinearizedModel(model, params, chunk_size=7, prefix=False)


def assert_products_equal(a: LinearizedModel, b: LinearizedModel, X: torch.Tensor, X2: torch.Tensor) -> None:
    g = torch.Generator().manual_seed(3)
    P = a.num_params
    assert rel(a.forward(X), b.forward(X)) < TOL
    K = a.output_dim
    v = torch.randn(P, generator=g, dtype=torch.float64)
    V = torch.randn(4, P, generator=g, dtype=torch.float64)
    u = torch.randn(X.shape[0], K, generator=g, dtype=torch.float64)
    U = torch.randn(2, X.shape[0], K, generator=g, dtype=torch.float64)
    assert rel(a.jvp(X, v), b.jvp(X, v)) < TOL
    assert rel(a.jvp(X, V), b.jvp(X, V)) < TOL
    assert rel(a.vjp(X, u), b.vjp(X, u)) < TOL
    assert rel(a.vjp(X, U), b.vjp(X, U)) < TOL
    assert rel(a.jacobian(X), b.jacobian(X)) < TOL
    assert rel(a.ntk_diag(X2, block=True), b.ntk_diag(X2, block=True)) < TOL
    W = torch.randn(X2.shape[0] * K, 3, generator=g, dtype=torch.float64)
    assert rel(a.kernel_matmul(X, X2, W), b.kernel_matmul(X, X2, W)) < TOL
    assert rel(a.kernel_matmul(X, X2, W, independent=True), b.kernel_matmul(X, X2, W, independent=True)) < TOL
    lam = torch.randn(X.shape[0], K, K, generator=g, dtype=torch.float64)
    lam = lam @ lam.transpose(1, 2)
    assert rel(a.ggn_matvec(X, V, weights=lam), b.ggn_matvec(X, V, weights=lam)) < TOL
    assert rel(a.ggn_matrix(X, weights=lam), b.ggn_matrix(X, weights=lam)) < TOL
    fa, ea = a.fd_ggn_matvec(X, v)
    fb, eb = b.fd_ggn_matvec(X, v)
    assert rel(fa, fb) < 1e-9  # finite differences: the same arithmetic, rounded in a different order


@pytest.mark.parametrize("params", ["last:1", "last:2", "4"])
def test_mlp_prefix_products_equal_uncached(params):
    model = mlp()
    g = torch.Generator().manual_seed(0)
    X = torch.randn(23, 4, generator=g, dtype=torch.float64)
    X2 = torch.randn(9, 4, generator=g, dtype=torch.float64)
    a, b = pair(model, params)
    assert a.prefix is not None and b.prefix is None
    assert b.prefix_note == "no frozen prefix: turned off"
    assert_products_equal(a, b, X, X2)
    width = 12 if params in ("last:1", "4") else 16
    assert a.prefix_note.startswith(f"frozen prefix cached: {width} features per input (run in float64; ")


def test_head_kernel_matches_dense_reference():
    """Head-only NTK = (h hᵀ + 1) ⊗ I_K from the penultimate features h, built by hand."""
    model = mlp()
    X = torch.randn(11, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    lm = LinearizedModel(model, "last:1")
    with torch.no_grad():
        h = model[:4](X)
    K = 3
    ref = torch.kron(h @ h.T + 1.0, torch.eye(K, dtype=torch.float64))
    J = lm.jacobian(X).reshape(-1, lm.num_params)
    assert rel(J @ J.T, ref) < TOL
    eye = torch.eye(X.shape[0] * K, dtype=torch.float64)
    assert rel(lm.kernel_matmul(X, X, eye), ref) < TOL


@pytest.mark.parametrize("params", ["head", "last:2"])
def test_cnn_fx_prefix_products_equal_uncached(params):
    model = cnn().train()  # the engine evaluates in eval mode and restores the user's flags
    g = torch.Generator().manual_seed(1)
    X = torch.randn(13, 2, 8, 8, generator=g, dtype=torch.float64)
    X2 = torch.randn(5, 2, 8, 8, generator=g, dtype=torch.float64)
    a, b = pair(model, params)
    assert a.prefix is not None and a.prefix.route == "torch.fx"
    assert_products_equal(a, b, X, X2)
    assert all(m.training for m in model.modules())
    expected = "80 features per input" if params == "head" else "features per input"
    assert expected in a.prefix_note
    if params == "last:2":
        assert "split before conv2" in a.prefix_note


def test_refused_splits_state_their_reason_and_stay_exact():
    torch.manual_seed(2)
    skip = SkipAroundBoundary().double()
    lm = LinearizedModel(skip, "head")
    assert lm.prefix is None
    assert "skip connection" in lm.prefix_note and lm.prefix_note.startswith("no frozen prefix:")
    early = UsedEarly().double()
    lm2 = LinearizedModel(early, "head")
    assert lm2.prefix is None and "first operation" in lm2.prefix_note
    assert LinearizedModel(mlp(), "all").prefix_note == "no frozen prefix: every parameter is linearized"
    assert "first operation" in LinearizedModel(mlp(), "0").prefix_note
    # The uncached path is the whole network: check it against a hand-made head-only kernel.
    X = torch.randn(6, 3, dtype=torch.float64)
    with torch.no_grad():
        h = torch.tanh(skip.body(X))
    J = lm.jacobian(X).reshape(-1, lm.num_params)
    assert rel(J @ J.T, torch.kron(h @ h.T + 1.0, torch.eye(3, dtype=torch.float64))) < TOL


def test_untraceable_sequential_uses_children():
    torch.manual_seed(4)
    model = nn.Sequential(Branchy(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    X = torch.randn(10, 4, dtype=torch.float64)
    a, b = pair(model, "last:1")
    assert a.prefix is not None and a.prefix.route == "nn.Sequential"
    assert "split before 3" in a.prefix_note
    assert_products_equal(a, b, X, X[:4])
    outer = nn.Module()
    outer.body, outer.head = Branchy(), nn.Linear(6, 2)
    outer.forward = lambda x: outer.head(outer.body(x))  # neither traceable nor a Sequential
    lm = LinearizedModel(outer.double(), "head")
    assert lm.prefix is None and "cannot be traced" in lm.prefix_note


def test_classifier_logits_covariance_and_evidence_equal_uncached():
    model = cnn().eval()
    g = torch.Generator().manual_seed(6)
    X = torch.randn(24, 2, 8, 8, generator=g, dtype=torch.float64)
    y = torch.arange(24) % 3
    Xs = torch.randn(10, 2, 8, 8, generator=g, dtype=torch.float64)
    for space in ("function", "weight"):
        a = LinearizedClassifier(model, params="head", prior_var=0.5, space=space, chunk_size=5).fit(X, y)
        with prefix_mod.disabled():
            b = LinearizedClassifier(model, params="head", prior_var=0.5, space=space, chunk_size=5).fit(X, y)
        assert a.lm.prefix is not None and b.lm.prefix is None
        ma, ca = a.predict_logits(Xs)
        mb, cb = b.predict_logits(Xs)
        assert rel(ma, mb) < TOL and rel(ca, cb) < TOL
        assert abs(a.log_marginal_likelihood() - b.log_marginal_likelihood()) < TOL * abs(b.log_marginal_likelihood())


def test_gp_predictions_equal_uncached():
    model = mlp()
    g = torch.Generator().manual_seed(7)
    X = torch.randn(30, 4, generator=g, dtype=torch.float64)
    Y = torch.randn(30, 3, generator=g, dtype=torch.float64)
    Xs = torch.randn(12, 4, generator=g, dtype=torch.float64)
    for space in ("function", "weight"):
        a = LinearizedGP(model, params="last:1", prior_var=0.7, noise=0.05, space=space).fit(X, Y)
        with prefix_mod.disabled():
            b = LinearizedGP(model, params="last:1", prior_var=0.7, noise=0.05, space=space).fit(X, Y)
        (ma, va), (mb, vb) = a.predict(Xs), b.predict(Xs)
        assert rel(ma, mb) < TOL and rel(va, vb) < TOL


def test_cache_reuse_and_invalidation():
    model = mlp()
    X = torch.randn(15, 4, dtype=torch.float64)
    a = LinearizedModel(model, "last:1")
    f1 = a.forward(X)
    assert prefix_mod.CACHE.misses == 1
    a.jvp(X, torch.ones(a.num_params, dtype=torch.float64))
    a.forward(X[3:9])  # a row slice of a cached input
    copy = X.clone()
    fresh = LinearizedModel(model, "last:1")
    fresh.forward(copy)  # a fresh model and an equal copy
    fresh.jacobian(copy[2:5])  # then a chunk of that copy
    assert prefix_mod.CACHE.misses == 1 and prefix_mod.CACHE.hits == 4
    # An in-place change of the input is seen (identity and _version), and so is an equal-looking slice.
    X[0].mul_(2.0)
    f2 = a.forward(X)
    ref = LinearizedModel(model, "last:1", prefix=False).forward(X)
    assert rel(f2, ref) < TOL and not torch.equal(f1[0], f2[0])
    assert rel(a.forward(X[:5]), ref[:5]) < TOL
    # Changed weights (e.g. after fine-tuning in place) never reuse the old features...
    with torch.no_grad():
        model[0].weight.add_(0.1)
    c = LinearizedModel(model, "last:1")
    assert rel(c.forward(X), LinearizedModel(model, "last:1", prefix=False).forward(X)) < TOL
    # ...while a model built before the change keeps evaluating the weights it copied.
    assert rel(a.forward(X), ref) < TOL


def test_float32_engine_prefix_matches_uncached():
    model = mlp().float()
    X = torch.randn(9, 4)
    a = LinearizedModel(model, "last:1", dtype=torch.float32)
    b = LinearizedModel(model, "last:1", dtype=torch.float32, prefix=False)
    v = torch.randn(a.num_params)
    assert rel(a.forward(X), b.forward(X)) < 1e-6
    assert rel(a.jvp(X, v), b.jvp(X, v)) < 1e-6


def test_split_is_redetected_when_a_module_is_replaced():
    model = mlp()
    X = torch.randn(8, 4, dtype=torch.float64)
    first = LinearizedModel(model, "last:1")
    first.forward(X)
    assert LinearizedModel(model, "last:1").prefix is first.prefix  # remembered while the model is unchanged
    torch.manual_seed(9)
    model[2] = nn.Linear(16, 12).double()  # a new frozen layer inside the prefix
    a, b = pair(model, "last:1")
    assert a.prefix is not first.prefix
    assert rel(a.forward(X), b.forward(X)) < TOL
    assert rel(a.jacobian(X), b.jacobian(X)) < TOL


def test_features_changed_in_place_are_not_served_again():
    model = mlp()
    X = torch.randn(6, 4, dtype=torch.float64)
    lm = LinearizedModel(model, "last:1")
    Z = lm._inputs(lm.prepare(X))
    Z.mul_(3.0)  # e.g. a suffix that modifies its input in place
    assert rel(lm.forward(X), LinearizedModel(model, "last:1", prefix=False).forward(X)) < TOL


# ---------------------------------------------------------------- the prefix in the model's own dtype
# A float32 prefix rounds each layer's output to float32: with random-sign rounding a layer that sums
# `fan_in` terms adds about sqrt(fan_in)·eps relative error, and the errors of `depth` such layers add
# up. The bound below is that sum (SmallCNN's prefix: conv1, bn, conv2, pool; fan-in ≤ 36); it is ~20×
# the measured 1.3e-7, ~300× below what a float16 prefix (eps 9.8e-4) would give, and a wrong split or
# stale features are O(1). Products of two features (kernel) and the MAP logits carry at most twice it.
EPS32 = torch.finfo(torch.float32).eps
CNN_PREFIX_DEPTH, CNN_MAX_FAN_IN = 4, 36
TOL32 = CNN_PREFIX_DEPTH * CNN_MAX_FAN_IN**0.5 * EPS32  # 2.9e-6


def cnn32() -> nn.Module:
    return cnn().float().eval()


def test_float32_model_runs_its_prefix_in_float32_and_the_suffix_exactly_in_float64():
    model = cnn32()
    X = torch.randn(13, 2, 8, 8, generator=torch.Generator().manual_seed(11))
    lm = LinearizedModel(model, "head", chunk_size=5)
    assert lm.prefix_dtype == "model" and lm.prefix_run_dtype == torch.float32 and lm.dtype == torch.float64
    Z = lm._inputs(lm.prepare(X))
    assert Z.dtype == torch.float64
    with torch.no_grad():
        Z32 = lm.prefix.prefix(X)  # the user's own float32 layers, run directly
    assert Z32.dtype == torch.float32
    assert rel(Z, Z32.double()) < 1e-6  # the same float32 arithmetic (chunks of 5 vs one batch)
    # Everything after the features is exact in float64: the head-only kernel is (Z Zᵀ + 1) ⊗ I.
    ref = torch.kron(Z @ Z.T + 1.0, torch.eye(3, dtype=torch.float64))
    assert rel(lm.kernel_matmul(X, X, torch.eye(13 * 3, dtype=torch.float64)), ref) < TOL
    J = lm.jacobian(X).reshape(-1, lm.num_params)
    assert rel(J @ J.T, ref) < TOL


def test_float32_prefix_against_the_float64_prefix():
    model = cnn32()
    g = torch.Generator().manual_seed(12)
    X = torch.randn(13, 2, 8, 8, generator=g)
    X2 = torch.randn(6, 2, 8, 8, generator=g)
    a = LinearizedModel(model, "head", chunk_size=5)
    b = LinearizedModel(model, "head", chunk_size=5, prefix_dtype="engine")
    c = LinearizedModel(model, "head", chunk_size=5, prefix=False)  # the whole float64 network every time
    assert b.prefix_run_dtype == torch.float64
    Za, Zb = a._inputs(a.prepare(X)), b._inputs(b.prepare(X))
    err = rel(Za, Zb)
    assert 0 < err < TOL32  # not the float64 features, and within float32 rounding of them
    assert a.prefix_probe_error is not None and 0 < a.prefix_probe_error < 2 * TOL32  # outputs on the probe rows
    assert b.prefix_probe_error is None
    assert_products_equal(b, c, X, X2)  # "engine" is the exact path
    assert rel(a.forward(X), c.forward(X)) < 2 * TOL32
    W = torch.randn(X2.shape[0] * 3, 4, generator=g, dtype=torch.float64)
    assert rel(a.kernel_matmul(X, X2, W), c.kernel_matmul(X, X2, W)) < 2 * TOL32
    v = torch.randn(a.num_params, generator=g, dtype=torch.float64)
    assert rel(a.jvp(X2, v), c.jvp(X2, v)) < 2 * TOL32


def test_float32_prefix_classifier_against_the_float64_network():
    model = cnn32()
    g = torch.Generator().manual_seed(13)
    X = torch.randn(24, 2, 8, 8, generator=g)
    y = torch.arange(24) % 3
    Xs = torch.randn(10, 2, 8, 8, generator=g)
    a = LinearizedClassifier(model, params="head", prior_var=0.5, chunk_size=5).fit(X, y)
    with prefix_mod.disabled():
        b = LinearizedClassifier(model, params="head", prior_var=0.5, chunk_size=5).fit(X, y)
    assert a.lm.prefix_run_dtype == torch.float32 and b.lm.prefix is None
    (ma, ca), (mb, cb) = a.predict_logits(Xs), b.predict_logits(Xs)
    assert rel(ma, mb) < 2 * TOL32 and rel(ca, cb) < 2 * TOL32
    assert rel(a.predict_proba(Xs), b.predict_proba(Xs)) < 2 * TOL32
    assert torch.equal(a.predict(Xs), b.predict(Xs))
    assert "run in float32, the model's dtype, features cast to float64" in a.plan.describe()


def test_float64_model_keeps_the_exact_path():
    model = cnn()
    X = torch.randn(9, 2, 8, 8, generator=torch.Generator().manual_seed(14), dtype=torch.float64)
    a = LinearizedModel(model, "head")
    b = LinearizedModel(model, "head", prefix_dtype="engine")
    assert a.prefix_run_dtype == b.prefix_run_dtype == torch.float64
    fa = a.forward(X)
    prefix_mod.clear_cache()
    assert torch.equal(fa, b.forward(X))
    assert a.prefix_probe_error is None
    assert "(run in float64; torch.fx split before head;" in a.prefix_note


def test_the_prefix_is_never_run_wider_than_the_engine():
    model = cnn()  # float64 weights, float32 engine: the prefix runs in float32
    X = torch.randn(7, 2, 8, 8, generator=torch.Generator().manual_seed(15))
    lm = LinearizedModel(model, "head", dtype=torch.float32)
    assert lm.prefix_run_dtype == torch.float32
    ref = LinearizedModel(model, "head", dtype=torch.float32, prefix=False).forward(X)
    assert rel(lm.forward(X), ref) < 1e-5
    assert "(run in float32; " in lm.prefix_note


def test_cached_features_are_not_shared_across_prefix_dtypes():
    model = cnn32()
    X = torch.randn(8, 2, 8, 8, generator=torch.Generator().manual_seed(16))
    fast = LinearizedModel(model, "head").forward(X)  # float32 features cached first
    exact = LinearizedModel(model, "head", prefix_dtype="engine").forward(X)
    assert prefix_mod.CACHE.hits == 0 and prefix_mod.CACHE.misses == 2
    assert rel(exact, LinearizedModel(model, "head", prefix=False).forward(X)) < TOL
    assert 0 < rel(fast, exact) < 2 * TOL32


def test_prefix_dtype_is_validated_and_named_in_the_plan_note():
    model = cnn32()
    with pytest.raises(SettingsError, match="prefix_dtype must be one of 'model', 'engine'; got 'half'"):
        LinearizedModel(model, "head", prefix_dtype="half")
    note = LinearizedModel(model, "head").prefix_note
    assert note.startswith("frozen prefix cached: (after the first data) features per input (run in float32, "
                           "the model's dtype, features cast to float64; torch.fx split before head;")
    engine = LinearizedModel(model, "head", prefix_dtype="engine").prefix_note
    assert "(run in float64; torch.fx split before head;" in engine
    # The planner, before any fit, says the same as a fitted model.
    assert prefix_mod.describe(*prefix_mod.choose_split(model, ["head.weight", "head.bias"]), None) == note


def test_predictors_pass_prefix_dtype_to_their_linearized_model():
    model = cnn32()
    for cls in (LinearizedGP, LinearizedClassifier):
        assert cls(model, "head").lm.prefix_run_dtype == torch.float32
        assert cls(model, "head", prefix_dtype="engine").lm.prefix_run_dtype == torch.float64
        with pytest.raises(SettingsError, match="prefix_dtype must be one of 'model', 'engine'"):
            cls(model, "head", prefix_dtype="half")


class Cancelling(nn.Module):
    """A body whose float32 rounding is ruinous: h·1e4 + 1e8 keeps 3 of h's digits in float32."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        h = (torch.tanh(self.body(x)) * 1e4 + 1e8) - 1e8
        return self.head(h / 1e4)


def test_a_prefix_too_imprecise_in_the_models_dtype_falls_back_to_the_engines():
    torch.manual_seed(17)
    model = Cancelling()
    X = torch.randn(10, 4, generator=torch.Generator().manual_seed(17))
    lm = LinearizedModel(model, "head")
    assert lm.prefix_run_dtype == torch.float32
    out = lm.forward(X)
    assert lm.prefix is not None and lm.prefix_run_dtype == torch.float64
    assert "run in float64 (the model's float32 prefix changed the outputs by" in lm.prefix_note
    assert rel(out, LinearizedModel(model, "head", prefix=False).forward(X)) < TOL
    assert rel(lm.jacobian(X), LinearizedModel(model, "head", prefix=False).jacobian(X)) < TOL


def test_a_second_model_served_from_the_cache_inherits_the_probe():
    # Two GPs on one model fit the same rows: the second gets its features from the shared cache, so its
    # own probe never ran. Its first new input set used to run the probe (the whole model) inside the
    # structured kernel's layer hooks: "… is called more than once per forward" (cross kernel raised).
    model = cnn32()
    g = torch.Generator().manual_seed(5)
    X, Xs = torch.randn(9, 2, 8, 8, generator=g), torch.randn(4, 2, 8, 8, generator=g)
    y = torch.randn(9, 3, generator=g, dtype=torch.float64)
    a = LinearizedGP(model, params="head", prior_var=0.5, noise=0.1).fit(X, y)
    b = LinearizedGP(model, params="head", prior_var=0.5, noise=0.1).fit(X, y)
    assert b.lm.prefix is not None and prefix_mod.CACHE.hits >= 1
    assert b.lm.prefix_probe_error == a.lm.prefix_probe_error is not None
    cross_b = b.kernels.matrix(b._state["X"], b.lm.prepare(Xs))
    cross_a = a.kernels.matrix(a._state["X"], a.lm.prepare(Xs))
    assert rel(cross_b, cross_a) < TOL
