"""ONNX / torch.export export of the adapted predictor: exact posterior form, per-sample Jacobians,
files checked with onnxruntime at batch sizes 1, 7 and 1000, metadata, and typed refusals."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from ntk_studio.core.classify import LinearizedClassifier
from ntk_studio.core.errors import (
    ExportTooLargeError,
    ExportVerificationError,
    UnsupportedExportError,
)
from ntk_studio.core.export import (
    VERIFY_RTOL,
    export_predictor,
    onnx_session,
    posterior_from_classifier,
    posterior_from_gp,
    read_onnx_metadata,
)
from ntk_studio.core.export import posterior as posterior_module
from ntk_studio.core.export.per_sample import PerSampleJacobian
from ntk_studio.core.export.program import _exportable_copy
from ntk_studio.core.gp import LinearizedGP
from ntk_studio.core.laplace import softmax_stats
from ntk_studio.core.linearized import LinearizedModel

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

BATCHES = (1, 7, 1000)


def cnn_classifier(seed: int = 0) -> nn.Module:
    """Conv/BatchNorm/pools (max, avg, adaptive), a grouped conv, ReLU6, LayerNorm and a Linear head."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(8, 8, 1, groups=2),
        nn.ReLU6(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LayerNorm(8), nn.Linear(8, 3),
    ).eval()
    with torch.no_grad():
        net[1].running_mean.normal_(0, 0.3)
        net[1].running_var.uniform_(0.5, 2.0)
        net[1].weight.normal_()
        net[11].weight.normal_()
    return net


def rows(X: torch.Tensor, b: int) -> torch.Tensor:
    return X[torch.arange(b) % X.shape[0]]


def rel(got, ref) -> float:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def rel_elementwise(got, ref) -> float:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return float((np.abs(got - ref) / np.abs(ref)).max())


# ----------------------------------------------------------------------------- exact pieces
@pytest.mark.parametrize("n", [4, 40])  # n·K < P (QR on the row space) and n·K ≥ P (full eigenbasis)
def test_gp_posterior_form_equals_dense_inverse(n):
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(2, 5), nn.Tanh(), nn.Linear(5, 2))  # P = 27, K = 2
    X, Xs = torch.randn(n, 2), torch.randn(6, 2)
    Y = torch.randn(n, 2)
    gp = LinearizedGP(net, prior_var=0.7, noise=0.05).fit(X, Y)
    post = posterior_from_gp(gp)
    lm = gp.lm
    J = lm.jacobian(X).reshape(-1, lm.num_params)
    Sigma = torch.linalg.inv(J.T @ J / 0.05 + torch.eye(lm.num_params, dtype=J.dtype) / 0.7)
    G = lm.jacobian(Xs)
    ref = G @ Sigma @ G.transpose(1, 2)
    got = post.gradient_covariance(G)
    assert post.complement == (n * 2 < lm.num_params)
    assert float((got - ref).abs().max() / ref.abs().max()) < 1e-10
    _, var = gp.predict(Xs)
    assert float(((got.diagonal(dim1=1, dim2=2) - var) / var).abs().max()) < 1e-8


def test_classifier_posterior_form_equals_dense_inverse():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 3))
    X, y = torch.randn(5, 2), torch.tensor([0, 1, 2, 1, 0])
    clf = LinearizedClassifier(net, prior_var=2.0).fit(X, y)
    post = posterior_from_classifier(clf)
    lm = clf.lm
    F = lm.forward(X) + lm.jvp(X, clf.delta_theta)
    _, lam = softmax_stats(F)
    J = lm.jacobian(X)
    H = torch.einsum("iap,iab,ibq->pq", J, lam, J) + torch.eye(lm.num_params, dtype=J.dtype) / 2.0
    Xs = torch.randn(4, 2)
    G = lm.jacobian(Xs)
    ref = G @ torch.linalg.inv(H) @ G.transpose(1, 2)
    assert float((post.gradient_covariance(G) - ref).abs().max() / ref.abs().max()) < 1e-10
    _, cov = clf.predict_logits(Xs)
    assert float((post.gradient_covariance(G) - cov).abs().max() / cov.abs().max()) < 1e-8


def test_exported_classifier_applies_cov_scale_and_temperature():
    """The export's program gives the engine's logits and probabilities after a search set τ and T ≠ 1."""
    from ntk_studio.core.export.program import predictor_function

    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 3))
    X, y = torch.randn(6, 2), torch.tensor([0, 1, 2, 1, 0, 2])
    clf = LinearizedClassifier(net, prior_var=2.0).fit(X, y)
    clf.cov_scale, clf.logit_temperature = 0.3, 2.5
    Xs = torch.randn(5, 2, dtype=torch.float64)
    proba, mean, cov = predictor_function(clf.lm, posterior_from_classifier(clf), None, 2)(Xs)
    ref_mean, ref_cov = clf.predict_logits(Xs)
    assert float((mean - ref_mean).abs().max() / ref_mean.abs().max()) < 1e-10
    assert float((cov - ref_cov).abs().max() / ref_cov.abs().max()) < 1e-10
    assert float((proba - clf.predict_proba(Xs)).abs().max()) < 1e-10


@pytest.mark.parametrize("params", ["all", "last:2", "1"])
def test_per_sample_jacobian_equals_torch_func(params):
    net = cnn_classifier()
    X = torch.randn(5, 3, 12, 12, dtype=torch.float64)
    lm = LinearizedModel(net, params, prefix_dtype="engine")  # float32 net: the exact float64 prefix
    f, J = PerSampleJacobian(_exportable_copy(net).double(), lm.subset.names, lm.subset.sizes)(X)
    ref = lm.jacobian(X)
    assert J.shape == ref.shape
    assert float((J - ref).abs().max() / ref.abs().max()) < 1e-12
    assert float((f - lm.forward(X)).abs().max()) < 1e-12


# ------------------------------------------------------------------------------- full exports
@pytest.fixture(scope="module")
def sine_export(tmp_path_factory):
    from ntk_studio.core.examples.registry import load_example

    ex = load_example("sine")
    gp = LinearizedGP(ex.model, prior_var=1.0, noise=0.01).fit(ex.target.X[:20], ex.target.y[:20])
    Xs = torch.linspace(-4, 4, 333, dtype=torch.float64).reshape(-1, 1)
    out = tmp_path_factory.mktemp("sine")
    report = export_predictor(gp, Xs, out / "sine.onnx", out / "sine.pt2", feature_names=["x"],
                              source_sha256="ab" * 32)
    return gp, Xs, report


def test_sine_onnx_equals_core_at_three_batch_sizes(sine_export):
    gp, Xs, report = sine_export
    session = onnx_session(report.onnx_path)
    for b in BATCHES:
        X = rows(Xs, b)
        mean, var, fvar = session.run(["mean", "variance", "f_variance"], {"x": X.numpy()})
        ref_mean, ref_var = gp.predict(X)
        assert mean.shape == (b, 1) and var.shape == (b, 1)
        assert rel(mean[:, 0], ref_mean) <= VERIFY_RTOL
        assert rel_elementwise(fvar[:, 0], ref_var) <= VERIFY_RTOL
        assert rel_elementwise(var[:, 0], ref_var + gp.noise) <= VERIFY_RTOL
    assert set(report.errors) == {"onnx", "native"}
    assert set(report.errors["onnx"]) == set(BATCHES)
    assert report.max_error() <= VERIFY_RTOL


def test_sine_native_program_equals_core(sine_export):
    gp, Xs, report = sine_export
    program = torch.export.load(str(report.native_path)).module()
    X = rows(Xs, 7)
    mean, var, fvar = program(X)
    ref_mean, ref_var = gp.predict(X)
    assert rel(mean[:, 0].detach(), ref_mean) < 1e-10
    assert rel_elementwise(fvar[:, 0].detach(), ref_var) < 1e-8


def test_metadata_is_in_the_file(sine_export):
    gp, _, report = sine_export
    meta = read_onnx_metadata(report.onnx_path)
    assert meta["task"] == "regression"
    assert json.loads(meta["feature_names"]) == ["x"]
    hyper = json.loads(meta["hyperparameters"])
    assert hyper == {"prior_var": gp.prior_var, "noise": gp.noise}
    subset = json.loads(meta["parameter_subset"])
    assert subset["names"] == list(gp.lm.subset.names) and subset["num_params"] == gp.lm.num_params
    assert meta["source_model_sha256"] == "ab" * 32
    from ntk_studio import __version__

    assert meta["version"] == __version__
    assert json.loads(meta["posterior"])["rank"] == 20
    assert meta["precision"] == "float64"


def test_hprice3_export_takes_raw_inputs(tmp_path):
    from ntk_studio.core.examples.registry import load_example

    ex = load_example("hprice3")
    stats = ex.standardizer
    X, y = ex.target.X, ex.target.y
    gp = LinearizedGP(ex.model, prior_var=1.0, noise=0.1).fit(X[:10], y[:10])
    X_raw = stats.inverse_x(X[10:])
    report = export_predictor(gp, X_raw, tmp_path / "h.onnx", standardizer=stats,
                              feature_names=ex.target.feature_names)
    session = onnx_session(report.onnx_path)
    for b in BATCHES:
        Xb = rows(X_raw, b)
        mean, var = session.run(["mean", "variance"], {"x": Xb.numpy()})
        ref_mean, ref_var = gp.predict(stats.transform_x(Xb), include_noise=True)
        assert rel(mean[:, 0], stats.inverse_y_mean(ref_mean.numpy())) <= VERIFY_RTOL
        assert rel_elementwise(var[:, 0], stats.inverse_y_var(ref_var.numpy())) <= VERIFY_RTOL
    meta = read_onnx_metadata(report.onnx_path)
    assert json.loads(meta["feature_names"]) == list(ex.target.feature_names)
    assert json.loads(meta["input_standardization"])["mean"] == pytest.approx(stats.x_mean.tolist())


def test_cnn_classifier_export(tmp_path):
    torch.manual_seed(3)
    net = cnn_classifier()
    X, y = torch.randn(30, 3, 12, 12), torch.randint(0, 3, (30,))
    clf = LinearizedClassifier(net, prior_var=1.0).fit(X, y)
    Xs = torch.randn(50, 3, 12, 12, dtype=torch.float64)
    report = export_predictor(clf, Xs, tmp_path / "cnn.onnx", class_names=["a", "b", "c"])
    assert report.dtype == "float64 (network in float32)"  # onnxruntime has no float64 Conv
    session = onnx_session(report.onnx_path)
    for b in BATCHES:
        Xb = rows(Xs, b)
        proba, logits, cov = session.run(["probabilities", "logits", "logits_covariance"], {"x": Xb.numpy()})
        ref_logits, ref_cov = clf.predict_logits(Xb)
        assert proba.shape == (b, 3) and cov.shape == (b, 3, 3)
        assert rel(proba, clf.predict_proba(Xb)) <= VERIFY_RTOL
        assert rel(logits, ref_logits) <= VERIFY_RTOL
        assert rel(cov, ref_cov) <= VERIFY_RTOL
    meta = read_onnx_metadata(report.onnx_path)
    assert json.loads(meta["class_names"]) == ["a", "b", "c"]
    assert meta["probability_method"] == "pairwise"  # 'auto' for every class count (docs/calibration.md)


# ---------------------------------------------------------------------------------- refusals
class BatchDependent(nn.Module):
    """Code that branches on the batch size: no graph with a free batch dimension reproduces it."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 1)

    def forward(self, x):
        if x.shape[0] == 1:
            return 2 * self.lin(x)
        return self.lin(x)


class RawMatmul(nn.Module):
    """A layer that owns its parameters and uses them in hand-written arithmetic."""

    def __init__(self) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.randn(1, 2))
        self.b = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return x @ self.W.T + self.b


def test_unsupported_layer_gives_typed_error_and_no_file(tmp_path):
    X = torch.randn(6, 2)
    gp = LinearizedGP(RawMatmul(), noise=0.1).fit(X, torch.randn(6))
    with pytest.raises(UnsupportedExportError, match="RawMatmul"):
        export_predictor(gp, X, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_batch_dependent_model_is_caught_by_verification(tmp_path):
    # Symbolic tracing assumes batch ≥ 2, so the traced graph silently drops the batch-1 branch:
    # only the numerical check at batch size 1 can notice.
    X = torch.randn(6, 2)
    gp = LinearizedGP(BatchDependent(), noise=0.1).fit(X, torch.randn(6))
    with pytest.raises(ExportVerificationError, match="batch size 1"):
        export_predictor(gp, X, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_failed_verification_removes_the_file(tmp_path):
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1))
    X = torch.randn(8, 2)
    gp = LinearizedGP(net, noise=0.1).fit(X, torch.randn(8))
    with pytest.raises(ExportVerificationError, match="removed"):
        export_predictor(gp, torch.randn(5, 2), tmp_path / "m.onnx", tolerance=1e-300, batch_sizes=(7,))
    assert not (tmp_path / "m.onnx").exists()


def test_too_large_posterior_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(posterior_module, "MAX_STORED_BYTES", 1000)
    net = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))
    X = torch.randn(10, 2)
    gp = LinearizedGP(net, noise=0.1).fit(X, torch.randn(10))
    with pytest.raises(ExportTooLargeError, match="fewer parameters"):
        export_predictor(gp, X, tmp_path / "m.onnx")


def test_sampled_probabilities_are_refused(tmp_path):
    torch.manual_seed(5)
    net = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 3))
    X = torch.randn(9, 2)
    clf = LinearizedClassifier(net).fit(X, torch.tensor([0, 1, 2] * 3))
    with pytest.raises(UnsupportedExportError, match="closed-form"):
        export_predictor(clf, X, tmp_path / "m.onnx", method="mc")
    assert not (tmp_path / "m.onnx").exists()
