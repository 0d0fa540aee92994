"""Regression and classification metrics against hand arithmetic, their statistics, and comparison records."""

import json
import math

import numpy as np
import pytest
import torch

from ntk_studio.core.records import (
    ComparisonRecord,
    classification_record,
    format_table,
    regression_record,
)
from ntk_studio.core.errors import SettingsError, ShapeError
from ntk_studio.core.metrics_classification import (
    accuracy,
    brier,
    categorical_nll,
    classification_report,
    expected_calibration_error,
    reliability_diagram,
)
from ntk_studio.core.metrics_regression import (
    DEFAULT_CALIBRATION_LEVELS,
    calibration_curve,
    gaussian_nll,
    interval_coverage,
    mae,
    regression_report,
    rmse,
)

F64 = torch.float64
N_SAMPLES = 20_000  # sampling error of a fraction ≤ √(0.25 / 20000) = 0.0035
N_SIGMA = 4  # tolerance in binomial standard deviations; with a fixed seed this never flakes


def _t(values, dtype=F64):
    return torch.tensor(values, dtype=dtype)


# The tiny regression case shared with tests/test_cli_demo.py: residuals y − μ = 0, 1, 2, σ = 1, 1, 2.
MEAN, Y, VAR = _t([0.0, 1.0, 2.0]), _t([0.0, 2.0, 4.0]), _t([1.0, 1.0, 4.0])


# ---------------------------------------------------------------------------------------- regression


def test_mae_by_hand():
    # |y − μ| = 0, 1, 2 → mean 1
    assert mae(MEAN, Y) == pytest.approx(1.0)
    assert mae(Y, Y) == 0.0


def test_calibration_curve_by_hand():
    levels = [0.25, 0.5, 0.75]  # Φ⁻¹ = −0.6745, 0, +0.6745
    curve = calibration_curve(MEAN, VAR, Y, levels)
    # quantiles μ + σ·z: point 1: −0.674, 0, 0.674 (y = 0 is ≤ the last two, ties count as below)
    #                    point 2: 0.326, 1, 1.674 (y = 2 above all); point 3: 0.651, 2, 3.349 (y = 4 above all)
    np.testing.assert_allclose(curve.expected, levels)
    np.testing.assert_allclose(curve.observed, [0.0, 1 / 3, 1 / 3])
    # mean |observed − expected| = (0.25 + 0.1667 + 0.4167) / 3 = 0.2778
    assert curve.error == pytest.approx((0.25 + (0.5 - 1 / 3) + (0.75 - 1 / 3)) / 3)
    # it unpacks as a plain triple too
    expected, observed, error = curve
    assert error == curve.error


def test_regression_report_keeps_old_keys_and_adds_new_ones():
    report = regression_report(MEAN, VAR, Y)
    assert report["rmse"] == pytest.approx(math.sqrt(5 / 3))
    assert report["nll"] == pytest.approx(gaussian_nll(MEAN, VAR, Y))
    assert report["mae"] == pytest.approx(1.0)
    # |y−μ| = 0, 1, 2 against z·σ with z = 0.674 (50%), 1.645 (90%), 1.960 (95%) and σ = 1, 1, 2:
    # 50%: 0 ≤ 0.674 only → 1/3; 90%: 0 ≤ 1.645, 1 ≤ 1.645, 2 ≤ 3.29 → 1; 95%: all → 1
    assert report["coverage50"] == pytest.approx(1 / 3)
    assert report["coverage90"] == pytest.approx(1.0)
    assert report["coverage95"] == pytest.approx(1.0)
    assert report["calibration_error"] == pytest.approx(calibration_curve(MEAN, VAR, Y).error)
    assert all(isinstance(v, float) for v in report.values())


def test_perfect_point_predictions():
    y = _t([1.0, -2.0, 3.0])
    var = torch.zeros(3, dtype=F64)
    assert rmse(y, y) == 0.0 and mae(y, y) == 0.0
    assert interval_coverage(y, var, y, 0.5) == 1.0
    # A zero variance puts every quantile at the mean and y = mean counts as below, so every
    # observed fraction is 1 and the error is mean(1 − p) = 0.5 over the symmetric default levels.
    curve = calibration_curve(y, var, y)
    np.testing.assert_array_equal(curve.observed, np.ones(len(DEFAULT_CALIBRATION_LEVELS)))
    assert curve.error == pytest.approx(0.5)


def test_multi_output_regression_pools_every_entry():
    mean = _t([[0.0, 1.0], [2.0, 3.0]])
    y = _t([[0.0, 2.0], [4.0, 3.0]])
    var = _t([[1.0, 1.0], [4.0, 1.0]])
    # |y − μ| = 0, 1, 2, 0 → MAE 3/4; RMSE √((0 + 1 + 4 + 0)/4)
    assert mae(mean, y) == pytest.approx(0.75)
    assert rmse(mean, y) == pytest.approx(math.sqrt(5 / 4))
    pooled = calibration_curve(mean, var, y)
    flat = calibration_curve(mean.reshape(-1), var.reshape(-1), y.reshape(-1))
    np.testing.assert_array_equal(pooled.observed, flat.observed)
    assert set(regression_report(mean, var, y)) >= {"rmse", "mae", "nll", "coverage50", "coverage90", "coverage95"}


def test_regression_shape_and_level_errors():
    with pytest.raises(ShapeError, match="differ in shape"):
        mae(MEAN, Y[:2])
    with pytest.raises(ShapeError, match="Variances"):
        calibration_curve(MEAN, VAR[:2], Y)
    with pytest.raises(ShapeError, match="at least one"):
        calibration_curve(MEAN[:0], VAR[:0], Y[:0])
    for bad in ([0.0, 0.5], [0.5, 1.0], []):
        with pytest.raises(SettingsError, match="strictly between 0 and 1"):
            calibration_curve(MEAN, VAR, Y, bad)


def test_nan_predictions_give_nan_not_misleading_numbers():
    mean = _t([0.0, math.nan, 2.0])
    report = regression_report(mean, VAR, Y)
    assert all(math.isnan(report[k]) for k in ("rmse", "mae", "coverage50", "coverage95", "calibration_error"))


def test_calibration_of_samples_from_the_predictive_is_the_diagonal():
    gen = torch.Generator().manual_seed(0)
    mean = 3 * torch.randn(N_SAMPLES, generator=gen, dtype=F64)
    var = 0.1 + 2 * torch.rand(N_SAMPLES, generator=gen, dtype=F64)
    y = mean + var.sqrt() * torch.randn(N_SAMPLES, generator=gen, dtype=F64)
    curve = calibration_curve(mean, var, y)
    # Each observed fraction is Binomial(n, p)/n under a calibrated predictive: std √(p(1−p)/n).
    std = np.sqrt(curve.expected * (1 - curve.expected) / N_SAMPLES)
    assert np.all(np.abs(curve.observed - curve.expected) <= N_SIGMA * std)
    assert curve.error <= N_SIGMA * std.max()

    # Variances four times too small (σ halved) are overconfident: y ≤ μ + (σ/2)·z_p happens with
    # probability Φ(z_p/2), so the curve must follow that S-shape instead of the diagonal.
    shrunk = calibration_curve(mean, var / 4, y)
    q = torch.special.ndtr(torch.special.ndtri(torch.from_numpy(shrunk.expected)) / 2).numpy()
    assert np.all(np.abs(shrunk.observed - q) <= N_SIGMA * np.sqrt(q * (1 - q) / N_SAMPLES))
    assert shrunk.error > 5 * N_SIGMA * std.max()  # 0.10 against a noise level of 0.0035
    assert interval_coverage(mean, var / 4, y, 0.95) < 0.75  # P(|Z| ≤ 0.98) = 0.67


# ------------------------------------------------------------------------------------ classification

# Four points, three classes. argmax = 0, 1, 0, 2 against labels 0, 1, 1, 0: right, right, wrong, wrong.
PROBS = _t([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.5, 0.25, 0.25], [0.1, 0.1, 0.8]])
LABELS = torch.tensor([0, 1, 1, 0])


def test_classification_metrics_by_hand():
    assert accuracy(PROBS, LABELS) == pytest.approx(0.5)
    # p(true class) = 0.7, 0.6, 0.25, 0.1
    assert categorical_nll(PROBS, LABELS) == pytest.approx(-math.log(0.7 * 0.6 * 0.25 * 0.1) / 4)
    # Σ_c (p_c − onehot_c)² per row: 0.3²+0.2²+0.1² = 0.14; 0.3²+0.4²+0.1² = 0.26;
    # 0.5²+0.75²+0.25² = 0.875; 0.9²+0.1²+0.8² = 1.46 → mean 2.735/4
    assert brier(PROBS, LABELS) == pytest.approx(2.735 / 4)


def test_reliability_and_ece_by_hand_with_empty_bins():
    # Confidences 0.7, 0.6, 0.5, 0.8 (correct, correct, wrong, wrong). Bins are (lo, hi], so with
    # 10 bins they fall in (0.6,0.7], (0.5,0.6], (0.4,0.5], (0.7,0.8]: one point each, six bins empty.
    d = reliability_diagram(PROBS, LABELS, bins=10)
    np.testing.assert_allclose(d.edges, np.arange(11) / 10)
    np.testing.assert_array_equal(d.count, [0, 0, 0, 0, 1, 1, 1, 1, 0, 0])
    np.testing.assert_allclose(d.confidence[4:8], [0.5, 0.6, 0.7, 0.8])
    np.testing.assert_allclose(d.accuracy[4:8], [0.0, 1.0, 1.0, 0.0])
    empty = d.count == 0
    assert np.isnan(d.confidence[empty]).all() and np.isnan(d.accuracy[empty]).all()
    # ECE = (|0−0.5| + |1−0.6| + |1−0.7| + |0−0.8|)/4 = 2.0/4 (empty bins weigh nothing)
    assert expected_calibration_error(PROBS, LABELS, bins=10) == pytest.approx(0.5)
    # Two bins [0, 0.5] and (0.5, 1]: {0.5 wrong} and {0.7, 0.6, 0.8; 2 of 3 right}:
    # ECE = 1/4·|0 − 0.5| + 3/4·|2/3 − 0.7| = 0.125 + 0.025
    assert expected_calibration_error(PROBS, LABELS, bins=2) == pytest.approx(0.15)


def test_perfect_and_all_wrong_classifiers():
    labels = torch.tensor([0, 2, 1])
    perfect = torch.nn.functional.one_hot(labels, 3).double()
    perfect_report = {"accuracy": 1.0, "nll": 0.0, "brier": 0.0, "ece": 0.0}
    assert classification_report(perfect, labels) == pytest.approx(perfect_report)
    wrong = torch.nn.functional.one_hot((labels + 1) % 3, 3).double()
    # p(true) = 0 is floored at float64's smallest normal: −log(2.2e-308) = 708.4, finite
    floor_nll = -math.log(torch.finfo(F64).tiny)
    # brier: one 1² for the predicted class and one 1² for the true class = 2; ECE = |0 − 1| = 1
    wrong_report = {"accuracy": 0.0, "nll": floor_nll, "brier": 2.0, "ece": 1.0}
    assert classification_report(wrong, labels) == pytest.approx(wrong_report)
    # In float32 the floor is float32's smallest normal: −log(1.18e-38) = 87.3
    assert categorical_nll(wrong.float(), labels) == pytest.approx(-math.log(torch.finfo(torch.float32).tiny))


def test_classification_input_errors():
    with pytest.raises(ShapeError, match="softmax"):
        accuracy(torch.randn(4, 3, dtype=F64), LABELS)  # logits, not probabilities
    with pytest.raises(ShapeError, match="integer"):
        accuracy(PROBS, LABELS.double())
    with pytest.raises(ShapeError, match="0..2"):
        accuracy(PROBS, torch.tensor([0, 1, 3, 0]))
    with pytest.raises(ShapeError, match="shape"):
        accuracy(PROBS, LABELS[:3])
    with pytest.raises(SettingsError, match="bins"):
        reliability_diagram(PROBS, LABELS, bins=0)


def test_nan_probabilities_give_nan_metrics():
    probs = PROBS.clone()
    probs[1] = math.nan
    report = classification_report(probs, LABELS)
    assert all(math.isnan(v) for v in report.values())


def _calibrated_classifier(gen, n=N_SAMPLES, classes=4):
    """Return probabilities of varied confidence and labels drawn from exactly those probabilities."""
    probs = torch.softmax(2.0 * torch.randn(n, classes, generator=gen, dtype=F64), dim=1)
    labels = torch.multinomial(probs, 1, generator=gen)[:, 0]
    return probs, labels


def test_ece_of_a_calibrated_classifier_is_sampling_noise_and_overconfidence_is_not():
    gen = torch.Generator().manual_seed(1)
    probs, labels = _calibrated_classifier(gen)
    d = reliability_diagram(probs, labels)
    # In bin b the accuracy is a mean of n_b Bernoulli(c_i) draws whose expectation is the bin's mean
    # confidence c̄_b; its std is √(Σ c_i(1−c_i))/n_b ≤ √(c̄_b(1−c̄_b)/n_b). ECE weighs |gap_b| by n_b/n.
    filled = d.count > 0
    conf, count = d.confidence[filled], d.count[filled]
    bin_std = np.sqrt(conf * (1 - conf) / count)
    noise = float(np.sum(count / N_SAMPLES * bin_std))  # ≈ 0.0075 here; E[ECE] ≈ 0.8 · noise
    assert np.all(np.abs(d.accuracy[filled] - conf) <= N_SIGMA * bin_std)
    assert expected_calibration_error(probs, labels) <= N_SIGMA * noise

    # Sharpening the same probabilities (p³, renormalized) without changing the labels makes the
    # classifier overconfident: ECE ≈ 0.2, far beyond sampling noise, and confidence > accuracy.
    sharp = probs**3 / (probs**3).sum(dim=1, keepdim=True)
    assert expected_calibration_error(sharp, labels) > max(0.1, 10 * noise)
    over = reliability_diagram(sharp, labels)
    filled = over.count > 0
    assert np.all(over.confidence[filled] >= over.accuracy[filled])


# ---------------------------------------------------------------------------------------- comparison


def test_records_format_as_a_table():
    gp = regression_record("linearized GP", MEAN, VAR, Y, 1.5, route="function/cholesky", matvecs=12)
    base = regression_record("unadapted network", MEAN, torch.full_like(VAR, 0.1), Y, 0.001)
    clf = classification_record("fine-tuning", PROBS, LABELS, 0.25, epochs=30)
    table = format_table([gp, clf, base])
    for name in ("linearized GP", "unadapted network", "fine-tuning", "route=function/cholesky", "matvecs=12"):
        assert name in table
    assert f"{gp.metrics['rmse']:.4g}" in table and f"{gp.metrics['calibration_error']:.3f}" in table
    assert f"{clf.metrics['brier']:.4f}" in table and f"{clf.metrics['ece']:.4f}" in table
    assert "cov50" in table and "ECE" in table
    # one fixed-width block per task: every row of a block is as wide as its rule (details aside)
    regression_block, classification_block = table.split("\n\n")
    assert regression_block.startswith("regression:") and "linearized GP" in regression_block
    assert "fine-tuning" in classification_block and "linearized GP" not in classification_block
    assert format_table([]) == ""


def test_records_are_json_and_round_trip():
    gp = regression_record(
        "linearized GP", MEAN, VAR, Y, 1.5, route="function/cg", matvecs=np.int64(40), residual=torch.tensor(1e-9)
    )
    clf = classification_record("fine-tuning", PROBS, LABELS, 0.25, epochs=30)
    for record in (gp, clf):
        text = json.dumps(record.to_dict(), allow_nan=False)  # strict JSON: empty bins are null, not NaN
        again = ComparisonRecord.from_dict(json.loads(text))
        assert again.method == record.method and again.task == record.task
        assert again.metrics == pytest.approx(record.metrics)
    assert gp.extra == {"route": "function/cg", "matvecs": 40, "residual": pytest.approx(1e-9)}
    assert len(gp.curves["calibration"]) == len(DEFAULT_CALIBRATION_LEVELS)
    bins = clf.curves["reliability"]
    assert len(bins) == 10 and bins[0]["count"] == 0 and bins[0]["accuracy"] is None
    assert bins[6] == pytest.approx({"lo": 0.6, "hi": 0.7, "confidence": 0.7, "accuracy": 1.0, "count": 1})


def test_record_validation():
    with pytest.raises(ShapeError, match="task"):
        ComparisonRecord("x", "ranking", {}, 0.0)
    with pytest.raises(ShapeError, match="wall_time_s"):
        ComparisonRecord("x", "regression", {}, -1.0)
    with pytest.raises(TypeError, match="JSON"):
        regression_record("x", MEAN, VAR, Y, 0.0, model=object())
