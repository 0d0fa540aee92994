"""The app shows calibration where a person looks (#16): each method's ECE or 50/90/95 % coverage beside
the plot, the regression coverage curve, and the chosen hyperparameters with the reason.

Payloads come from the worker's jobs run in-process (tiny models, the pipeline's default selections),
so the numbers on screen are checked against what the jobs computed, not against constants.
"""

from __future__ import annotations

import copy
import html
import math
import os

import numpy as np
import pytest
import torch

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")
pytest.importorskip("pytestqt")

from job_runner import run  # noqa: E402
from models import mlp, two_output  # noqa: E402
from ntk_studio.app.numbers import fmt  # noqa: E402
from ntk_studio.app.results_view import ResultsView  # noqa: E402
from ntk_studio.app.run_model import RunModel  # noqa: E402
from ntk_studio.app.run_records import GpResult, HyperChoice  # noqa: E402
from ntk_studio.app.throttle import PlotThrottle  # noqa: E402
from ntk_studio.core.classify import LinearizedClassifier  # noqa: E402
from ntk_studio.core.data.dataset import Dataset  # noqa: E402
from ntk_studio.core.metrics_regression import interval_coverage  # noqa: E402
from ntk_studio.core.pipeline import hyper_info  # noqa: E402
from ntk_studio.jobs.tasks import WorkerState  # noqa: E402
from ntk_studio.pipeline_defaults import RunSettings  # noqa: E402

N_ROWS = 40
N_ADAPT = 16
DIGITS = 3  # the summary table's significant digits
SCREENSHOT_DIR = os.environ.get("NTK_CALIBRATION_SHOTS", "/tmp")
# The keys a fit_gp payload's "hyper" had before the selection and its reason were sent along.
OLD_HYPER_KEYS = ("fitted", "method", "prior_var", "noise", "cov_scale", "initial_prior_var", "initial_noise",
                  "log_evidence")


def _view(qtbot, task: str) -> ResultsView:
    view = ResultsView(PlotThrottle())
    qtbot.addWidget(view)
    view.resize(1000, 560)
    view.show()
    view.set_data(task, False, "a", "y", ["no", "yes"] if task == "classification" else [])
    return view


def _regression_state(targets) -> WorkerState:
    torch.manual_seed(0)
    X = torch.randn(N_ROWS, 3, dtype=torch.float64)
    return WorkerState(model=mlp(), task="regression", data=Dataset(X, targets(X), ("a", "b", "c"), "y"))


def _classification_state() -> WorkerState:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(N_ROWS, 3, generator=g, dtype=torch.float64)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).long()
    return WorkerState(model=two_output(), task="classification",
                       data=Dataset(X, y, ("a", "b", "c"), "label", ("no", "yes")))


def _runs(state: WorkerState) -> tuple[dict, dict]:
    _, fit = run(state, "fit_gp", n_adapt=N_ADAPT, seed=1, prior_var=1.0, fit_hyper=True)
    _, ft = run(state, "finetune", n_adapt=N_ADAPT, seed=1, epochs=3, lr=0.01)
    return fit, ft


@pytest.fixture(scope="module")
def regression_runs():
    state = _regression_state(lambda X: torch.sin(X[:, 0]))
    fit, ft = _runs(state)
    adapt, _ = state.split(N_ADAPT, 1)
    return fit, ft, adapt


@pytest.fixture(scope="module")
def classification_runs():
    return _runs(_classification_state())


def test_regression_view_shows_each_methods_coverage_the_curve_and_the_chosen_s2_noise(qtbot, regression_runs):
    fit, ft, adapt = regression_runs
    view = _view(qtbot, "regression")
    view.show_gp(fit)
    view.show_finetune(ft)
    summary = view.calibration_page.summary
    for key, metrics in (("gp", fit["metrics"]), ("unadapted", fit["unadapted_metrics"]), ("finetuned", ft["metrics"])):
        for column, level in enumerate((50, 90, 95)):
            assert summary.text(key, column) == fmt(metrics[f"coverage{level}"], digits=DIGITS), (key, level)
    # The coverage curve: observed fraction inside each central interval; at 95 % it is the table's number.
    assert view.calibration.kind == "coverage"
    for key, payload, curve in (("gp", fit, "coverage"), ("unadapted", fit, "base_coverage"),
                                ("finetuned", ft, "coverage")):
        level, observed = view.calibration.curve_data(key)
        assert np.allclose(level, payload[curve]["level"]) and np.allclose(observed, payload[curve]["observed"])
        assert level[0] == pytest.approx(0.05) and level[-1] == pytest.approx(0.99)
        assert np.all(np.diff(observed) >= 0)  # a wider interval never holds fewer targets
    level, observed = view.calibration.curve_data("gp")
    assert observed[list(np.round(level, 2)).index(0.95)] == pytest.approx(fit["metrics"]["coverage95"])
    mean, std = torch.tensor(fit["test_mean"]), torch.tensor(fit["test_std"])
    assert observed[list(np.round(level, 2)).index(0.5)] == pytest.approx(
        interval_coverage(mean, std**2, torch.tensor(fit["test_y"]), 0.5))
    # The hyperparameters: values, the selection that chose them and the σ² floor with its state.
    hyper = fit["hyper"]
    assert hyper["selection"] == "floor" and hyper["fitted"]
    floor = 0.01 * float(adapt.y.double().var())
    assert hyper["noise_floor"] == pytest.approx(floor, rel=1e-9)
    assert hyper["floor_active"] == (hyper["noise"] <= floor * (1 + 1e-6))
    shown = view.hyper_view.values
    assert shown["prior_var"].startswith(fmt(hyper["prior_var"], digits=4))
    assert shown["noise"].startswith(fmt(hyper["noise"], digits=4))
    assert f"started at {fmt(hyper['initial_noise'], digits=4)}" in shown["noise"]
    assert shown["selection"] == "floor" and "σ² kept ≥ 1 %" in shown["rule"]
    assert "σ² kept ≥ 1 %" in view.hyper_view.reason.text()
    assert shown["floor"].startswith(fmt(floor, digits=4))
    assert ("not active" in shown["floor"]) == (not hyper["floor_active"])
    start = hyper["search"]["start"]["log_marginal_likelihood"]
    assert shown["evidence"] == f"{fmt(hyper['log_evidence'], digits=4)} (at the start: {fmt(start, digits=4)})"
    assert hyper["log_evidence"] >= start  # the evidence search did not end below where it started
    assert view.hyper_view.right.isHidden()  # a continuous search has no curve to draw
    note = view.calibration_page.note.text()
    assert f"s² = {fmt(hyper['prior_var'])}" in note and f"σ² = {fmt(hyper['noise'])}" in note
    view.tabs.setCurrentWidget(view.calibration_page)
    assert view.current_plot() is view.calibration_page
    view.grab().save(os.path.join(SCREENSHOT_DIR, "ntk_calibration_regression.png"))


def test_noise_floor_that_set_sigma2_is_shown_as_active(qtbot):
    # Targets the pretrained model already predicts exactly: the evidence wants σ² → 0, the floor stops it.
    model = mlp()
    state = _regression_state(lambda X: model(X.float()).detach().double().reshape(-1))
    _, fit = run(state, "fit_gp", n_adapt=N_ADAPT, seed=1, prior_var=1.0, fit_hyper=True)
    hyper = fit["hyper"]
    assert hyper["floor_active"] and hyper["noise"] == pytest.approx(hyper["noise_floor"], rel=1e-6)
    view = _view(qtbot, "regression")
    view.show_gp(fit)
    assert "active: σ² is on the floor" in view.hyper_view.values["floor"]
    assert f"σ² = {fmt(hyper['noise'])} (floor)" in view.calibration_page.note.text()


def test_shift_selection_shows_its_variance_scale_and_the_floor_before_it(qtbot):
    # Rows grouped 'unlabelled' lie away from the labelled ones: the job's search is 'shift' (floor × τ).
    from ntk_studio.core.data.dataset import UNLABELLED_GROUP
    from test_core_hyperparameters import _extrapolation_task  # labelled x in [-3, 0], the rest up to 0.5

    model, X, y, n = _extrapolation_task(seed=2)
    groups = np.array(["labelled"] * n + [UNLABELLED_GROUP] * (len(X) - n))
    state = WorkerState(model=model, task="regression", data=Dataset(X, y, ("x",), "y", groups=groups))
    _, fit = run(state, "fit_gp", n_adapt=n, seed=1, prior_var=1.0, fit_hyper=True)
    hyper = fit["hyper"]
    assert hyper["selection"] == "shift" and hyper["cov_scale"] > 1.0, hyper
    view = _view(qtbot, "regression")
    view.show_gp(fit)
    shown = view.hyper_view.values
    assert shown["selection"] == "shift" and "covariance scale τ ≥ 1" in shown["rule"]
    assert shown["cov_scale"] == fmt(hyper["cov_scale"], digits=4)
    note = view.calibration_page.note.text()
    assert f"τ = {fmt(hyper['cov_scale'])}" in note
    floor_state = "active: σ² / τ is on the floor" if hyper["floor_active"] else "not active"
    assert floor_state in shown["floor"]
    assert ("(floor × τ)" in note) == hyper["floor_active"] and "(floor)" not in note


def test_classification_view_shows_each_methods_ece_and_the_chosen_s2_tau_with_its_curve(qtbot, classification_runs):
    fit, ft = classification_runs
    view = _view(qtbot, "classification")
    view.show_gp(fit)
    view.show_finetune(ft)
    summary = view.calibration_page.summary
    methods = (("gp", fit["metrics"], fit["probs"]), ("unadapted", fit["unadapted_metrics"], fit["base_probs"]),
               ("finetuned", ft["metrics"], ft["probs"]))
    for key, metrics, probs in methods:
        assert summary.text(key, 0) == fmt(metrics["ece"], digits=DIGITS), key
        assert summary.text(key, 1) == fmt(metrics["accuracy"], digits=DIGITS), key
        # Mean confidence: the largest class probability, averaged over the held-out rows.
        assert summary.text(key, 2) == fmt(float(np.max(np.asarray(probs), axis=1).mean()), digits=DIGITS), key
    record = GpResult.from_event(fit)
    assert record.calibration.ece == fit["metrics"]["ece"]
    assert record.unadapted_calibration.ece == fit["unadapted_metrics"]["ece"]
    hyper = fit["hyper"]
    shown = view.hyper_view.values
    assert shown["prior_var"].startswith(fmt(hyper["prior_var"], digits=4))
    assert shown["cov_scale"] == fmt(hyper["cov_scale"], digits=4)
    assert shown["selection"] == hyper["selection"] and shown["method"] == hyper["method"]
    if hyper.get("heldout_nll") is not None:
        assert shown["heldout"] == f"{fmt(hyper['heldout_nll'], digits=4)} ({hyper['folds']} folds)"
    # The search's one-line reason, when the classifier gives one, is shown whole under the values.
    reason = view.hyper_view.reason.text()
    assert not view.hyper_view.reason.isHidden() and html.escape(hyper["method"]) in reason
    assert shown.get("why") == hyper.get("why")
    assert (html.escape(hyper["why"]) in reason) if hyper.get("why") else "<b>Why</b>" not in reason
    assert "noise" not in shown
    _check_curve(view.hyper_view, hyper)
    note = view.calibration_page.note.text()
    assert f"s² = {fmt(hyper['prior_var'])}" in note and f"τ = {fmt(hyper['cov_scale'])}" in note
    if hyper.get("heldout_nll") is not None:
        assert f"{hyper['folds']}-fold held-out NLL" in note
        assert f"NLL {fmt(hyper['heldout_nll'], digits=DIGITS)}" in note
    view.tabs.setCurrentWidget(view.hyper_view)
    view.grab().save(os.path.join(SCREENSHOT_DIR, "ntk_calibration_hyper.png"))


def _check_curve(hyper_view, hyper: dict) -> None:
    """The search curve is drawn with the chosen s² marked on it, at the criterion's best value."""
    assert not hyper_view.right.isHidden()
    s2, value = hyper_view.curve_data(0)
    assert np.all(np.diff(s2) > 0)  # drawn in order of s², whatever order the search tried them in
    at = int(np.argmin(np.abs(np.log(s2) - np.log(hyper["prior_var"]))))
    assert s2[at] == pytest.approx(hyper["prior_var"], rel=1e-12)
    chosen_x, chosen_y = hyper_view.chosen.getData()
    assert 10 ** chosen_x[0] == pytest.approx(hyper["prior_var"]) and chosen_y[0] == value[at]
    criterion = HyperChoice.from_payload({"task": "classification", "hyper": hyper}).curves[0].criterion
    if criterion == "evidence":  # the evidence chose s²: its largest value, the fit's own evidence
        assert value[at] == max(value) and value[at] == pytest.approx(hyper["log_evidence"], rel=1e-6)
        assert "evidence" in hyper_view.plot.getPlotItem().titleLabel.text.lower()
    else:  # held-out NLL (with the τ = 1 line, never below the best over τ at the chosen s²)
        assert "held-out" in hyper_view.plot.getPlotItem().titleLabel.text.lower()
        if hyper["selection"] == "heldout":  # the value at the mark is the held-out NLL the text states
            assert value[at] == pytest.approx(hyper["heldout_nll"], rel=1e-12)
        if len(hyper_view.curves) > 1:
            s2_one, value_one = hyper_view.curve_data(1)
            assert np.allclose(s2_one, s2) and value_one[at] >= value[at] - 1e-12


@pytest.mark.parametrize("selection", ["heldout", "evidence"])
def test_each_selection_draws_its_criterion_over_s2(qtbot, selection):
    from ntk_studio.app.views.hyper_choice import HyperChoiceView

    state = _classification_state()
    adapt, _ = state.split(N_ADAPT, 1)
    clf = LinearizedClassifier(state.model, prior_var=1.0).fit(adapt.X, adapt.y)
    clf.fit_hyperparameters(selection=selection)
    hyper = hyper_info(clf, adapt, RunSettings(task="classification", prior_var=1.0), "classification")
    assert hyper["selection"] == selection and hyper["prior_var"] == clf.prior_var
    choice = HyperChoice.from_payload({"task": "classification", "hyper": hyper})
    assert choice.curves[0].criterion == ("evidence" if selection == "evidence" else "heldout_nll")
    view = HyperChoiceView()
    qtbot.addWidget(view)
    view.resize(900, 360)
    view.show()
    view.set_hyper(choice)
    assert view.values["selection"] == selection and view.values["cov_scale"] == fmt(clf.cov_scale, digits=4)
    _check_curve(view, hyper)


def _old(fit: dict, ft: dict) -> tuple[dict, dict]:
    """Return the payloads as a project saved before this change holds them."""
    fit, ft = copy.deepcopy(fit), copy.deepcopy(ft)
    for payload in (fit, ft):
        payload.pop("coverage", None)
        payload.pop("base_coverage", None)
    fit["hyper"] = {k: fit["hyper"][k] for k in OLD_HYPER_KEYS}
    return fit, ft


def test_project_saved_before_the_change_opens_and_renders(qtbot, regression_runs, classification_runs):
    fit, ft = _old(*regression_runs[:2])
    model = RunModel(worker=None)
    model.set_results({"fit_gp": fit, "finetune": ft})
    choice = model.records["fit_gp"].hyper
    assert choice.selection is None and choice.prior_var == fit["hyper"]["prior_var"] and choice.curves == ()
    view = _view(qtbot, "regression")
    view.show_gp(fit)
    view.show_finetune(ft)
    # No coverage curve in the file: the quantile calibration curve it has, under its own labels.
    assert view.calibration.kind == "quantile"
    for key, payload in (("gp", fit), ("finetuned", ft)):
        x, y = view.calibration.curve_data(key)
        assert np.allclose(x, payload["calibration"]["expected"]) and np.allclose(y, payload["calibration"]["observed"])
    assert view.calibration_page.summary.text("gp", 2) == fmt(fit["metrics"]["coverage95"], digits=DIGITS)
    assert view.hyper_view.values["prior_var"].startswith(fmt(fit["hyper"]["prior_var"], digits=4))
    assert view.hyper_view.values["selection"] == fit["hyper"]["method"]
    assert "floor" not in view.hyper_view.values and "why" not in view.hyper_view.values
    # Older still: no "hyper" at all, no unadapted metrics.
    bare = {k: v for k, v in fit.items() if k not in ("hyper", "unadapted_metrics")}
    view.show_gp(bare)
    assert view.hyper_view.values["prior_var"] == fmt(fit["prior_var"], digits=4)
    assert view.calibration_page.summary.text("unadapted", 0) == "—"
    # A new run's regression payload after the old project switches back to the coverage curve.
    view.show_gp(regression_runs[0])
    assert view.calibration.kind == "coverage"
    # A classifier saved before: old hyper keys only (no selection, no search).
    cfit, cft = _old(*classification_runs)
    cview = _view(qtbot, "classification")
    cview.show_gp(cfit)
    cview.show_finetune(cft)
    assert cview.calibration_page.summary.text("gp", 0) == fmt(cfit["metrics"]["ece"], digits=DIGITS)
    assert cview.hyper_view.values["cov_scale"] == fmt(cfit["hyper"]["cov_scale"], digits=4)
    assert cview.hyper_view.right.isHidden()
    assert math.isfinite(float(cview.calibration_page.summary.text("finetuned", 0)))


def test_new_run_and_new_data_clear_the_numbers(qtbot, regression_runs):
    fit, ft, _ = regression_runs
    view = _view(qtbot, "regression")
    view.show_gp(fit)
    view.show_finetune(ft)
    view.clear_results(keep_model_curves=True)
    assert all(view.calibration_page.summary.text(key, 2) == "—" for key in ("gp", "unadapted", "finetuned"))
    assert view.hyper_view.values == {} and view.calibration_page.note.text() == "—"
    view.show_gp(fit)
    view.set_data("classification", False, "a", "y", ["no", "yes"])
    assert view.calibration_page.summary.horizontalHeaderItem(1).text() == "ECE"
    assert view.hyper_view.values == {}
