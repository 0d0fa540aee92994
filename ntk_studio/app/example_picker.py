"""Clicked points: which example a point of a results plot is, the ring around it and the example panel.

A click on a held-out point (predicted vs true, class probabilities), on a labelled point of the 1-D
plot or on an image of the classifier's gallery fills the `ExamplePanel` from the last ``fit_gp``
payload and the curves on screen, rings the point, and asks the data preview to select its row.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyqtgraph as pg

from .numbers import fmt
from .views.inspect import METHOD_NAMES, Example, class_text, row_inputs
from .views.style import arr

MARK_SIZE = 16  # px, the ring around an inspected point


class ExamplePicker:
    """Turns clicks on a `ResultsView`'s points into the example panel (pyqtgraph's ScatterPlotItem.sigClicked)."""

    def __init__(self, view: Any) -> None:
        self.view = view
        self.payload: dict = {}  # the last fit_gp payload (held-out rows' inputs and predictions)
        self.feature = "x"
        self.marks: dict[Any, pg.ScatterPlotItem] = {}
        self._connect()

    def reset(self, payload: dict | None = None) -> None:
        """Close the panel and drop the ring; keep ``payload`` (a new fit) or nothing (new data, new run)."""
        self.payload = payload or {}
        self.view.inspector.hide()
        self._mark(None)

    def _connect(self) -> None:
        view, classes = self.view, self.view.class_view
        for plot in (view.fit_plot, view.pred_true, classes.plot):
            self.marks[plot] = pg.ScatterPlotItem(size=MARK_SIZE, symbol="o", pen=pg.mkPen("k", width=2), brush=None)
            plot.addItem(self.marks[plot])

        def on_click(plot, inspect):
            def clicked(_scatter, points, _event=None) -> None:
                if len(points):
                    inspect(points[0].index())
                    self._mark(plot, points[0].pos())
            return clicked

        for item in view.pred_true.points.values():
            item.scatter.sigClicked.connect(on_click(view.pred_true, self.inspect_test))
        for item in classes.series.values():
            item.scatter.sigClicked.connect(
                on_click(classes.plot, lambda k: self.inspect_test(classes.held_out_row(k))))
        view.fit_plot.curves["train"].scatter.sigClicked.connect(on_click(view.fit_plot, self.inspect_labelled))
        classes.gallery.example_clicked.connect(self._inspect_gallery)
        view.inspector.closed.connect(lambda: self._mark(None))
        classes.class_box.currentIndexChanged.connect(lambda _k: self._mark(None))  # the points move

    def _mark(self, plot, pos=None) -> None:
        """Ring the inspected point in ``plot`` (None: no ring anywhere)."""
        for other, ring in self.marks.items():
            if other is plot and pos is not None:
                ring.setData([pos.x()], [pos.y()])
            else:
                ring.setData([], [])

    def _inspect_gallery(self, i: int) -> None:
        self.inspect_test(i)
        order = self.view.class_view.order()
        position = int(np.flatnonzero(order == i)[0]) if (order == i).any() else None
        probs = self.view.class_view.probs().get("gp")
        k = max(self.view.class_view.class_box.currentIndex(), 0)
        if position is not None and probs is not None:
            self._mark(self.view.class_view.plot, pg.Point(position, float(probs[i, k])))

    def inspect_test(self, i: int) -> None:
        """Show held-out row ``i``: its input, true target or class, and each method's prediction."""
        p = self.payload
        if not p or p.get("test_y") is None:
            return
        y = arr(p["test_y"])
        inputs, image, data_row = row_inputs(p.get("test_rows"), i)
        preds: list[tuple[str, str]] = []
        if self.view.task == "classification":
            names = self.view.class_view.class_names()
            label = int(y[i])
            truth = names[label] if label < len(names) else str(label)
            shown = self.view.class_view.probs()
            for key in ("gp", "finetuned", "unadapted"):
                if key in shown and i < len(shown[key]):
                    preds.append((METHOD_NAMES[key], class_text(shown[key][i], names)))
        else:
            truth = fmt(float(y.reshape(len(y), -1)[i, 0]))
            if p.get("test_mean") is not None:
                mean, std = arr(p["test_mean"]).ravel(), arr(p["test_std"]).ravel()
                preds.append(("linearized GP", f"{fmt(float(mean[i]))} ± {fmt(float(std[i]))}"))
            for key in ("finetuned", "trajectory", "unadapted"):
                values = self.view.pred_true.curve_data(key)[1]
                if i < len(values):
                    preds.append((METHOD_NAMES[key], fmt(float(values[i]))))
        where = f" · data row {data_row + 1:,}" if data_row is not None else ""
        note = " (class, its probability)" if self.view.task == "classification" else " (mean ± σ)"
        self._show(Example(f"Held-out example {i + 1:,} of {len(y):,}{where}", truth, preds, inputs, image, data_row,
                           note))

    def inspect_labelled(self, j: int) -> None:
        """Show labelled (adaptation) point ``j`` of the 1-D plot and each curve's value at its x."""
        xs, ys = self.view.fit_plot.curve_data("train")
        if j >= len(xs):
            return
        x = float(xs[j])
        preds: list[tuple[str, str]] = []
        for key, name in (("gp_mean", "linearized GP"), ("finetuned", "fine-tuned"), ("trajectory", "GD step t"),
                          ("pretrained", "pretrained")):
            cx, cy = self.view.fit_plot.curve_data(key)
            if len(cx) > 1:
                value = float(np.interp(x, cx, cy))
                text = fmt(value)
                if key == "gp_mean":
                    ux, uy = self.view.fit_plot.curve_data("upper1")
                    text += f" ± {fmt(float(np.interp(x, ux, uy)) - value)}" if len(ux) > 1 else ""
                preds.append((name, text))
        index = self.payload.get("adapt_index") or []
        data_row = int(index[j]) if j < len(index) else None
        where = f" · data row {data_row + 1:,}" if data_row is not None else ""
        self._show(Example(f"Labelled point {j + 1:,} of {len(xs):,}{where}", fmt(float(ys[j])), preds,
                           [(self.feature, fmt(x))], None, data_row, " (curves at x; mean ± σ)"))

    def _show(self, example: Example) -> None:
        self.view.inspector.show_example(example)
        if example.data_row is not None:
            self.view.example_selected.emit(example.data_row)
