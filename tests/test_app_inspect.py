"""Click a plotted point to see that example (#18): the example panel, the data preview, the image gallery.

Payloads come from the worker's jobs run in-process (a tiny tabular regressor, a tiny CNN classifier
on 6×6 images), so the test also covers what the fit result carries for the panel.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

pytest.importorskip("PySide6")
from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402

pytest.importorskip("pyqtgraph")
pytest.importorskip("pytestqt")

from job_runner import run  # noqa: E402
from models import cnn, mlp  # noqa: E402
from ntk_studio.app.numbers import fmt  # noqa: E402
from ntk_studio.app.panels.data_panel import DataPanel  # noqa: E402
from ntk_studio.app.results_view import ResultsView  # noqa: E402
from ntk_studio.app.throttle import PlotThrottle  # noqa: E402
from ntk_studio.core.data.dataset import Dataset  # noqa: E402
from ntk_studio.jobs.summaries import data_summary  # noqa: E402
from ntk_studio.jobs.tasks import WorkerState  # noqa: E402

N_ROWS = 40
N_ADAPT = 16
SCREENSHOT_DIR = os.environ.get("NTK_INSPECT_SHOTS", "/tmp")


def _view(qtbot) -> tuple[ResultsView, DataPanel]:
    view, panel = ResultsView(PlotThrottle()), DataPanel()
    view.example_selected.connect(panel.select_row)
    qtbot.addWidget(view)
    qtbot.addWidget(panel)
    view.resize(1000, 560)
    view.show()
    return view, panel


def _mouse_click(plot, scatter, index: int) -> None:
    """Click the point at ``index`` with the mouse (QTest, at the point's position on screen)."""
    pos = scatter.points()[index].pos()
    scene = plot.getViewBox().mapViewToScene(pos)
    QTest.mouseClick(plot.viewport(), Qt.MouseButton.LeftButton, pos=plot.mapFromScene(scene))


def _click(scatter, index: int) -> None:
    """Emit ScatterPlotItem.sigClicked for the point at ``index``, as a mouse click does."""
    point = scatter.points()[index]
    scatter.sigClicked.emit(scatter, [point], None)


def test_clicking_a_pred_true_point_shows_its_features_truth_and_predictions(qtbot):
    torch.manual_seed(0)
    X = torch.randn(N_ROWS, 3, dtype=torch.float64)
    state = WorkerState(model=mlp(), task="regression",
                        data=Dataset(X, torch.sin(X[:, 0]), ("a", "b", "c"), "y"))
    _, fit = run(state, "fit_gp", n_adapt=N_ADAPT, seed=1, prior_var=1.0, fit_hyper=False)
    _, ft = run(state, "finetune", n_adapt=N_ADAPT, seed=1, epochs=3, lr=0.01)
    _, test = state.split(N_ADAPT, 1)
    view, panel = _view(qtbot)
    view.set_data("regression", False, "a", "y", [])
    summary = data_summary(state.data)
    panel.show_data(summary)
    view.show_gp(fit)
    view.show_finetune(ft)
    assert not view.inspector.isVisible()
    rows = fit["test_rows"]
    assert len(rows["index"]) == len(test) and np.allclose(rows["inputs"], test.X.numpy())
    i = 3
    _click(view.pred_true.points["gp"].scatter, i)
    assert view.inspector.isVisible()
    ring = view.picker.marks[view.pred_true].getData()
    assert np.allclose([ring[0][0], ring[1][0]], [test.y[i], fit["test_mean"][i]])  # the clicked point is ringed
    text = view.inspector.text()
    data_row = rows["index"][i]
    assert f"data row {data_row + 1}" in text
    for name, value in zip("abc", test.X[i].tolist()):
        assert name in text and fmt(value) in text
    assert fmt(float(test.y[i])) in text
    assert f"{fmt(fit['test_mean'][i])} ± {fmt(fit['test_std'][i])}" in text
    assert fmt(ft["test_pred"][i]) in text and fmt(fit["test_base"][i]) in text
    # The row is selected in the data preview (its first 50 rows are shown).
    assert data_row < panel.preview.rowCount()
    assert [ix.row() for ix in panel.preview.selectionModel().selectedRows()] == [data_row]
    view.grab().save(os.path.join(SCREENSHOT_DIR, "ntk_inspect_regression.png"))


def test_clicking_a_class_point_of_image_data_shows_the_thumbnail_and_each_methods_class(qtbot):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(N_ROWS, 1, 6, 6, generator=g, dtype=torch.float32)
    y = (X.mean(dim=(1, 2, 3)) > 0).long()
    state = WorkerState(model=cnn(outputs=2).float(), task="classification",
                        data=Dataset(X, y, ("image",), "label", ("cat", "dog")))
    _, fit = run(state, "fit_gp", n_adapt=N_ADAPT, seed=1, prior_var=1.0, fit_hyper=False)
    _, test = state.split(N_ADAPT, 1)
    rows = fit["test_rows"]
    assert len(rows["thumbnails"]) == len(test) and np.asarray(rows["thumbnails"][0]).shape == (6, 6, 3)
    view, _ = _view(qtbot)
    view.set_data("classification", False, "image", "label", ["cat", "dog"])
    view.show_gp(fit)
    # The gallery beside the plot: most confident wrong, least confident right, with class and probability.
    gallery = view.class_view.gallery
    assert gallery.isVisible() and gallery.buttons
    probs = np.asarray(fit["probs"])
    for button, row in zip(gallery.buttons, gallery.rows):
        k = int(probs[row].argmax())
        assert ("cat", "dog")[k] in button.text() and fmt(float(probs[row, k]), digits=2) in button.text()
        assert not button.icon().isNull()
    position = 5
    row = view.class_view.held_out_row(position)
    _click(view.class_view.series["gp"].scatter, position)
    text = view.inspector.text()
    assert view.inspector.image.isVisible() and not view.inspector.image.pixmap().isNull()
    assert f"Held-out example {row + 1} " in text
    assert f"true: {('cat', 'dog')[int(test.y[row])]}" in text
    for key, name in (("probs", "linearized"), ("base_probs", "pretrained")):
        p = np.asarray(fit[key])[row]
        assert name in text and f"{('cat', 'dog')[int(p.argmax())]} (p = {fmt(float(p.max()), digits=2)})" in text
    view.grab().save(os.path.join(SCREENSHOT_DIR, "ntk_inspect_classes.png"))
    # A gallery click inspects that row too.
    gallery.buttons[-1].click()
    assert f"Held-out example {gallery.rows[-1] + 1} " in view.inspector.text()


def test_clicking_a_labelled_point_of_the_1d_plot_shows_the_curves_there(qtbot):
    torch.manual_seed(0)
    X = torch.linspace(-2, 2, N_ROWS, dtype=torch.float64).unsqueeze(-1)
    model = torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
    state = WorkerState(model=model, task="regression", data=Dataset(X, torch.sin(X[:, 0]), ("x",), "y"))
    _, fit = run(state, "fit_gp", n_adapt=N_ADAPT, seed=1, prior_var=1.0, fit_hyper=False, grid_points=50)
    assert fit["grid"] and len(fit["adapt_index"]) == N_ADAPT
    view, _ = _view(qtbot)
    view.set_data("regression", True, "x", "y", [])
    view.show_gp(fit)
    j = 2
    qtbot.waitExposed(view)
    _mouse_click(view.fit_plot, view.fit_plot.curves["train"].scatter, j)
    qtbot.waitUntil(view.inspector.isVisible, timeout=2000)
    text = view.inspector.text()
    x = fit["train_x"][j]
    assert f"data row {fit['adapt_index'][j] + 1}" in text and fmt(x) in text
    assert fmt(float(np.interp(x, fit["x"], fit["mean"]))) in text and "linearized GP" in text
    view.grab().save(os.path.join(SCREENSHOT_DIR, "ntk_inspect_1d.png"))
    # A new run takes the panel away (its numbers would be stale).
    view.clear_results()
    assert not view.inspector.isVisible()
