"""Options are validated when a predictor is built, with SettingsError naming the allowed values (issue #14)."""

import math

import pytest
import torch

from models import MODELS, inputs, two_output
from ntk_studio.core import CancelToken, Cancelled, LinearizedClassifier, LinearizedGP, SettingsError, ShapeError
from ntk_studio.core.options import Outputs, ProbaMethod, Solver, Space


@pytest.mark.parametrize("cls", [LinearizedGP, LinearizedClassifier])
@pytest.mark.parametrize("name, allowed", [("space", "'auto', 'function', 'weight'"), ("solver", "'auto', 'cholesky', 'cg'")])
def test_a_bad_choice_fails_at_construction_naming_the_allowed_values(cls, name, allowed):
    with pytest.raises(SettingsError, match=f"{name} must be one of {allowed}; got 'bogus'") as err:
        cls(MODELS["mlp"](), **{name: "bogus"})
    assert not isinstance(err.value, ShapeError) and isinstance(err.value, ValueError)


def test_outputs_and_device_are_checked_at_construction():
    with pytest.raises(SettingsError, match="outputs must be one of 'full', 'independent'"):
        LinearizedGP(MODELS["mlp"](), outputs="diagonal")
    with pytest.raises(SettingsError, match="device"):
        LinearizedGP(MODELS["mlp"](), device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(SettingsError, match="no CUDA"):
            LinearizedClassifier(two_output(), device="cuda")


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf, "x"])
@pytest.mark.parametrize("name", ["prior_var", "noise"])
def test_non_positive_or_non_finite_variances_name_the_bad_value(name, bad):
    with pytest.raises(SettingsError, match=f"{name} must be a finite positive number; got {bad!r}"):
        LinearizedGP(MODELS["mlp"](), **{name: bad})


@pytest.mark.parametrize("kwargs, match", [
    ({"cg_max_iter": 0}, "cg_max_iter"), ({"cg_tol": -1e-3}, "cg_tol"), ({"chunk_size": 2.5}, "chunk_size"),
    ({"precond_rank": -1}, "precond_rank"), ({"dtype": torch.int64}, "dtype"), ({"memory_budget": 0}, "memory_budget"),
])
def test_numeric_settings_are_checked_at_construction(kwargs, match):
    with pytest.raises(SettingsError, match=match):
        LinearizedGP(MODELS["mlp"](), **kwargs)


def test_classifier_settings_and_proba_method():
    with pytest.raises(SettingsError, match="grad_tol"):
        LinearizedClassifier(two_output(), grad_tol=0)
    with pytest.raises(SettingsError, match="max_newton"):
        LinearizedClassifier(two_output(), max_newton=0)


def test_enums_and_plain_strings_are_interchangeable():
    X = inputs("mlp", 12)
    y = torch.randn(12, 1, dtype=torch.float64)
    a = LinearizedGP(MODELS["mlp"](), space=Space.FUNCTION, solver=Solver.CHOLESKY, outputs=Outputs.FULL).fit(X, y)
    b = LinearizedGP(MODELS["mlp"](), space="function", solver="cholesky").fit(X, y)
    assert a.plan == b.plan and a.plan.space == "function" and f"{a.space}" == "function"
    torch.testing.assert_close(a.predict(X)[1], b.predict(X)[1], rtol=0, atol=0)
    yc = (X[:, 0] > 0).long()
    clf = LinearizedClassifier(two_output()).fit(X, yc)
    torch.testing.assert_close(clf.predict_proba(X, method=ProbaMethod.PAIRWISE), clf.predict_proba(X, method="auto"))
    assert torch.equal(clf.predict(X), clf.predict_proba(X).argmax(-1))


@pytest.mark.parametrize("cls, y", [
    (LinearizedGP, torch.randn(40, 1, dtype=torch.float64)),
    (LinearizedClassifier, torch.arange(40) % 2),
])
def test_cancel_method_stops_a_running_fit(cls, y):
    X = inputs("mlp", 40)
    model = MODELS["two_output"]() if cls is LinearizedClassifier else MODELS["mlp"]()
    est = cls(model, chunk_size=4, solver="cg")
    stream = est.fit_iter(X, y)
    next(stream)
    est.cancel()
    with pytest.raises(Cancelled):
        for _ in stream:
            pass


def test_predict_proba_and_logits_check_their_cancel_token():
    X = inputs("mlp", 20)
    clf = LinearizedClassifier(two_output(), chunk_size=2).fit(X, torch.arange(20) % 2)
    token = CancelToken()
    token.cancel()
    for call in (lambda: clf.predict_logits(X, cancel=token), lambda: clf.predict_proba(X, cancel=token),
                 lambda: clf.predict_proba(X, method="mc", samples=10, cancel=token), lambda: clf.predict(X, cancel=token)):
        with pytest.raises(Cancelled):
            call()
    assert clf.predict_proba(X).shape == (20, 2)  # a later call without a token is unaffected
