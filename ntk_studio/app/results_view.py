"""The right-hand side of the window: prediction views, calibration, solver, hyperparameters, loss, table, log.

It turns worker payloads into plot data. Live data (fine-tuning epochs) goes through the window's
`PlotThrottle`; final results are drawn at once. Curves are updated in place, never cleared during
a run, so the plots do not flicker back to empty.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QHBoxLayout, QLabel, QPlainTextEdit, QSlider, QSplitter, QStackedWidget, QTabWidget,
                               QVBoxLayout, QWidget)

from .comparison_table import ComparisonTable
from .run_records import FinetuneResult, GpResult
from .throttle import PlotThrottle
from .views.calibration import CalibrationPage, CalibrationPlot
from .views.classes import ClassProbView
from .views.convergence import ConvergencePlot
from .views.hyper_choice import HyperChoiceView
from .example_picker import ExamplePicker
from .views.inspect import ExamplePanel
from .views.loss import LossPlot
from .views.pred_true import PredTruePlot
from .views.regression_1d import FitPlot
from .views.style import arr

LOG_MAX_LINES = 5000
BOTTOM_SPLIT = (400, 600)  # loss plot : table and log (proportions; the table needs the width)
TABLE_HEIGHT = 112
PAGES = {"1d": 0, "pred_true": 1, "classes": 2}
SLIDER_TIP = ("Predictions of the linearized network after t steps of full-batch gradient descent on the squared "
              "error (closed form, step η = 1/λ_max of the kernel): t = 0 is the pretrained model; large t "
              "interpolates the adaptation rows.")


class ResultsView(QWidget):
    """Every plot of a run plus the comparison table and the log; `mode` is '1d', 'pred_true' or 'classes'."""

    example_selected = Signal(int)  # a clicked point's row in the loaded data (the data preview selects it)

    def __init__(self, throttle: PlotThrottle, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.throttle = throttle
        self.fit_plot, self.pred_true, self.class_view = FitPlot(), PredTruePlot(), ClassProbView()
        self.predictions = QStackedWidget()
        for view in (self.fit_plot, self.pred_true, self.class_view):
            self.predictions.addWidget(view)
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setToolTip(SLIDER_TIP)
        self.slider.setEnabled(False)
        self.slider.valueChanged.connect(self._show_step)
        self.step_label = QLabel("Linearized GD: run Adapt")
        self.step_label.setToolTip(SLIDER_TIP)
        slider_row = QHBoxLayout()
        slider_row.addWidget(QLabel("GD step"))
        slider_row.addWidget(self.slider, 1)
        slider_row.addWidget(self.step_label)
        page = QWidget()
        page_layout = QVBoxLayout(page)
        page_layout.setContentsMargins(0, 0, 0, 0)
        self.inspector = ExamplePanel()  # opened by a click on a plotted point
        predictions_row = QHBoxLayout()
        predictions_row.setContentsMargins(0, 0, 0, 0)
        predictions_row.addWidget(self.predictions, 1)
        predictions_row.addWidget(self.inspector)
        page_layout.addLayout(predictions_row, 1)
        self.slider_row = QWidget()
        self.slider_row.setLayout(slider_row)
        slider_row.setContentsMargins(0, 0, 0, 0)
        page_layout.addWidget(self.slider_row)

        self.calibration, self.convergence, self.loss_plot = CalibrationPlot(), ConvergencePlot(), LossPlot()
        self.calibration_page = CalibrationPage(self.calibration)  # the plot with each method's numbers beside it
        self.hyper_view = HyperChoiceView()
        self.tabs = QTabWidget()
        self.tabs.addTab(page, "Predictions")
        self.tabs.addTab(self.calibration_page, "Calibration")
        self.tabs.addTab(self.convergence, "Solver")
        self.tabs.addTab(self.hyper_view, "Hyperparameters")
        self.tabs.setTabToolTip(1, "Is the stated uncertainty right? Each method on the held-out rows.")
        self.tabs.setTabToolTip(3, "The linearized model's s², σ² or τ: the values, the rule that chose them and why.")
        self.table = ComparisonTable()
        self.table.setFixedHeight(TABLE_HEIGHT)
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(LOG_MAX_LINES)
        self.log.setPlaceholderText("Worker events appear here.")
        right_bottom = QWidget()
        rb = QVBoxLayout(right_bottom)
        rb.setContentsMargins(0, 0, 0, 0)
        rb.addWidget(self.table)
        rb.addWidget(self.log)
        self.bottom = QSplitter(Qt.Orientation.Horizontal)
        self.bottom.addWidget(self.loss_plot)
        self.bottom.addWidget(right_bottom)
        self.bottom.setSizes(list(BOTTOM_SPLIT))
        self.splitter = QSplitter(Qt.Orientation.Vertical)
        self.splitter.addWidget(self.tabs)
        self.splitter.addWidget(self.bottom)
        self.splitter.setStretchFactor(0, 3)
        self.splitter.setStretchFactor(1, 2)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.splitter)
        self.mode = "1d"
        self.task = "regression"
        self._grid_x = np.zeros(0)
        self._test_y = np.zeros(0)
        self._traj: dict | None = None
        self.picker = ExamplePicker(self)  # clicked points open the example panel

    # ------------------------------------------------------------------ data set changes
    def set_data(self, task: str, one_d: bool, feature: str, target: str, classes: list[str]) -> None:
        """Switch the views to a newly loaded data set and empty every plot and the table."""
        self.task = task
        self.picker.feature = feature
        self.mode = "classes" if task == "classification" else ("1d" if one_d else "pred_true")
        self.predictions.setCurrentIndex(PAGES[self.mode])
        self.slider_row.setVisible(task != "classification")  # the closed-form trajectory is for squared error
        self.fit_plot.set_labels(feature, target)
        self.pred_true.set_labels(target)
        self.class_view.set_classes(classes)
        self.calibration.set_task(task)
        self.calibration_page.set_task(task)
        self.hyper_view.clear_data()
        self.loss_plot.set_task(task)
        self.table.set_task(task)
        self.throttle.discard()
        for view in (self.fit_plot, self.pred_true, self.class_view, self.calibration):
            view.clear_data()
        self.loss_plot.reset()
        self.loss_plot.refresh()
        self._traj = None
        self.picker.reset()
        self.slider.setEnabled(False)
        self.step_label.setText("Linearized GD: run Adapt")

    def clear_results(self, keep_model_curves: bool = False) -> None:
        """Take a run's results off the screen (a new run starts, or a new model or data was loaded).

        The data (labelled points, true function) stays; the pretrained curve stays for a new run of
        the same model (``keep_model_curves``) and goes with a new model.
        """
        self.throttle.discard()
        keep = {"train", "truth"} | ({"pretrained"} if keep_model_curves else set())
        for key, curve in self.fit_plot.curves.items():
            if key not in keep:
                curve.setData([], [])
        for view in (self.pred_true, self.class_view, self.calibration, self.calibration_page, self.hyper_view):
            view.clear_data()
        self.convergence.clear_data()
        self.loss_plot.reset()
        self.loss_plot.refresh()
        self.table.set_task(self.task)
        self._traj = None
        self.picker.reset()
        self.slider.setEnabled(False)
        self.step_label.setText("Linearized GD: run Adapt")

    def show_inputs(self, session: dict) -> None:
        """Draw what is known before any run: the data points and the pretrained curve (when the worker sends them)."""
        points = session.get("points") or {}
        if self.mode != "1d":
            return
        if points.get("x") is not None and points.get("y") is not None:
            self.fit_plot.set_curve("train", arr(points["x"]), arr(points["y"]).ravel())
        if points.get("grid_x") is not None and points.get("pretrained") is not None:
            self._grid_x = arr(points["grid_x"])
            self.fit_plot.set_curve("pretrained", self._grid_x, arr(points["pretrained"]).ravel())
        if points.get("x") is not None or points.get("pretrained") is not None:
            self.fit_plot.follow_data()  # the data with room for the legend below it
        else:
            self.fit_plot.show_range((session.get("data") or {}).get("x_range"))

    def current_plot(self) -> QWidget:
        """Return the plot the user is looking at (for File → Save plot)."""
        page = self.tabs.currentWidget()
        if page is self.tabs.widget(0):
            return self.predictions.currentWidget()
        return page  # the calibration and hyperparameter pages are saved whole: plot, numbers and legend

    # ------------------------------------------------------------------ payloads
    def show_gp(self, p: dict) -> None:
        """Draw a fit_gp payload: predictions, calibration, convergence, hyperparameters, table rows."""
        self.picker.reset(p)
        record = GpResult.from_event(p)
        summary = self.calibration_page.summary
        if p.get("task") == "classification":
            labels = arr(p["test_y"]).astype(int)
            self.class_view.set_classes(p.get("class_names") or [])
            self.class_view.set_probs("unadapted", labels, arr(p["base_probs"]))
            self.class_view.set_probs("gp", labels, arr(p["probs"]))
            self.class_view.gallery.set_examples((p.get("test_rows") or {}).get("thumbnails") or [], labels,
                                                 arr(p["probs"]), self.class_view.class_names())
            for key, diagram, cal in (("gp", p["reliability"], record.calibration),
                                      ("unadapted", p["base_reliability"], record.unadapted_calibration)):
                self.calibration.set_series(key, diagram["confidence"], diagram["accuracy"])
                summary.set_row(key, cal, diagram)
        else:
            self._test_y = arr(p["test_y"])
            if p.get("grid"):
                self._grid_x = arr(p["x"])
                self.fit_plot.set_gp(self._grid_x, arr(p["mean"]).ravel(), arr(p["std"]).ravel())
                if p.get("train_x") is not None:
                    self.fit_plot.set_curve("train", arr(p["train_x"]), arr(p["train_y"]).ravel())
                if p.get("truth") is not None:
                    self.fit_plot.set_curve("truth", self._grid_x, arr(p["truth"]).ravel())
                self.fit_plot.hold_range()  # fine-tuning's live curve then repaints without rescaling
            else:
                self.pred_true.set_gp(self._test_y, arr(p["test_mean"]).ravel(), arr(p["test_std"]).ravel())
                self.pred_true.set_points("unadapted", self._test_y, arr(p["test_base"]).ravel())
                self.pred_true.hold_range()
            # Projects saved before the coverage curve existed show their quantile calibration curve.
            self.calibration.set_task("regression", "coverage" if p.get("coverage") else "quantile")
            self._regression_calibration("gp", p, "coverage", "calibration")
            self._regression_calibration("unadapted", p, "base_coverage", "base_calibration")
            summary.set_row("gp", record.calibration)
            summary.set_row("unadapted", record.unadapted_calibration)
        self.calibration_page.set_hyper(record.hyper)
        self.hyper_view.set_hyper(record.hyper)
        self.convergence.set_convergence(p.get("convergence") or {})
        self.table.set_row("unadapted", p.get("unadapted_metrics") or {})
        self.table.set_row("gp", p.get("metrics") or {}, p.get("wall_time"))

    def _regression_calibration(self, key: str, p: dict, coverage: str, quantile: str) -> None:
        """Draw one method's coverage curve (or quantile curve, as the plot's kind says) when the payload has it."""
        if self.calibration.kind == "coverage" and p.get(coverage):
            self.calibration.set_series(key, p[coverage]["level"], p[coverage]["observed"])
        elif self.calibration.kind == "quantile" and p.get(quantile):
            self.calibration.set_series(key, p[quantile]["expected"], p[quantile]["observed"])

    def show_epoch(self, event: dict) -> None:
        """Record one fine-tuning epoch; its curve and loss point are drawn at the throttled rate."""
        n, loss = int(event.get("epoch", 0)), event.get("train_loss")
        if loss is not None and self.loss_plot.add_point(n, loss):
            self.throttle.submit("loss", self.loss_plot.refresh)
        pred = event.get("grid_pred")
        if pred is not None:
            pred = arr(pred).ravel()
            self.throttle.submit("pretrained" if n == 0 else "finetuned", lambda: self._draw_finetuned(n, pred))

    def _draw_finetuned(self, epoch: int, pred: np.ndarray) -> None:
        if self.mode == "1d" and len(pred) == len(self._grid_x):
            self.fit_plot.set_curve("pretrained" if epoch == 0 else "finetuned", self._grid_x, pred)
        elif self.mode == "pred_true" and len(pred) == len(self._test_y):
            self.pred_true.set_points("unadapted" if epoch == 0 else "finetuned", self._test_y, pred)

    def show_finetune(self, p: dict) -> None:
        """Draw a finetune payload's final predictions, calibration and table row."""
        if p.get("task") == "classification":
            self.class_view.set_probs("finetuned", arr(p["test_y"]).astype(int), arr(p["probs"]))
            self.calibration.set_series("finetuned", p["reliability"]["confidence"], p["reliability"]["accuracy"])
            self.calibration_page.summary.set_row("finetuned", FinetuneResult.from_event(p).calibration,
                                                  p["reliability"])
        else:
            if p.get("start_pred") is not None:
                self._draw_finetuned(0, arr(p["start_pred"]).ravel())
            if p.get("grid_pred") is not None:
                self._draw_finetuned(max(int(p.get("epochs_run", 1)), 1), arr(p["grid_pred"]).ravel())
            self.fit_plot.follow_data()
            self.pred_true.follow_data()
            self._regression_calibration("finetuned", p, "coverage", "calibration")
            self.calibration_page.summary.set_row("finetuned", FinetuneResult.from_event(p).calibration)
        if p.get("history"):
            self.loss_plot.reset()
            for epoch, loss in p["history"]:
                self.loss_plot.add_point(int(epoch), loss)
        self.loss_plot.refresh()
        self.table.set_row("finetuned", p.get("metrics") or {}, p.get("wall_time"))

    def show_trajectory(self, p: dict) -> None:
        """Enable the GD-step slider over a trajectory payload (at its last step) or say why it is missing."""
        if p.get("skipped"):
            self.step_label.setText("Linearized GD: not available")
            self.slider.setToolTip(f"{SLIDER_TIP}\n\nNot available here: {p['skipped']}")
            return
        self._traj = {"steps": np.asarray(p["steps"], dtype=np.int64), "preds": arr(p["preds"]),
                      "lr": p.get("lr"), "grid": p.get("grid")}
        self.slider.blockSignals(True)
        self.slider.setRange(0, len(self._traj["steps"]) - 1)
        self.slider.setValue(len(self._traj["steps"]) - 1)
        self.slider.blockSignals(False)
        self.slider.setEnabled(True)
        self._show_step(self.slider.value())

    def _show_step(self, index: int) -> None:
        if self._traj is None:
            return
        step, pred = int(self._traj["steps"][index]), self._traj["preds"][index].ravel()
        self.step_label.setText(f"t = {step:,}")
        if self.mode == "1d" and len(pred) == len(self._grid_x):
            self.fit_plot.set_curve("trajectory", self._grid_x, pred)
        elif self.mode == "pred_true" and len(pred) == len(self._test_y):
            self.pred_true.set_points("trajectory", self._test_y, pred)

    def trajectory_step(self) -> int | None:
        """Return the GD step the slider shows (None before a trajectory arrived)."""
        return None if self._traj is None else int(self._traj["steps"][self.slider.value()])

    def append_log(self, text: str) -> None:
        """Add one line to the log panel."""
        self.log.appendPlainText(text)
