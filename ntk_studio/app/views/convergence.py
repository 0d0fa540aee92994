"""Solver convergence: the residual the GP's solver (or the classifier's Newton gradient) reached per step."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg

from ..numbers import fmt

from .log_axis import LogAxis
from .style import BACKGROUND, FOREGROUND, GP_COLOR, SMALL_POINT, curve_data, pen, set_title, style

X_LABELS = {"cg": "matrix-vector products", "cholesky": "products (direct solve)", "newton": "Newton report (rate-limited: not every iteration)"}
Y_LABELS = {"newton": "relative gradient norm"}
DEFAULT_Y = "relative residual ‖Ax − b‖/‖b‖"
TITLE = "Solver convergence"
MAX_INTEGER_TICKS = 10
DIRECT_NOTE = ("{solver}: a direct solve, no iterations to plot.\n"
               "Relative residual ‖Ax − b‖/‖b‖ of the solution: {residual}")


class ConvergencePlot(pg.PlotWidget):
    """Residual against work on a log axis, with a one-line note of the solver and where it stopped."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent, background=BACKGROUND, axisItems={"left": LogAxis("left")})
        style(self, TITLE, X_LABELS["cg"], DEFAULT_Y)
        self.note = ""
        self.setLogMode(x=False, y=True)
        self.getAxis("left").enableAutoSIPrefix(False)
        self.curve = self.plot([], [], pen=pen(GP_COLOR), symbol="o", symbolSize=SMALL_POINT, symbolBrush=GP_COLOR,
                               symbolPen=None)
        self.message = pg.TextItem("", color=FOREGROUND, anchor=(0.5, 0.5))
        self.message.setParentItem(self.getViewBox())
        self.getViewBox().sigResized.connect(self._place_message)

    def _place_message(self, *_: object) -> None:
        rect = self.getViewBox().boundingRect()
        self.message.setPos(rect.center())

    def clear_data(self) -> None:
        """Show nothing (no fit yet)."""
        self.curve.setData([], [])
        self.message.setText("")
        self.note = ""
        set_title(self, TITLE)

    def set_convergence(self, info: dict) -> None:
        """Show a payload's ``convergence``: solver name, points [products, residual], iterations."""
        solver = info.get("solver", "cg")
        points = np.asarray(info.get("points") or [], float).reshape(-1, 2)
        if solver == "newton":
            points = np.column_stack([np.arange(len(points)), points[:, 1]]) if len(points) else points
        keep = points[:, 1] > 0 if len(points) else np.zeros(0, bool)  # a log axis cannot show 0
        last = fmt(points[-1, 1], digits=3) if len(points) else "—"
        self.setLabel("bottom", X_LABELS.get(solver, X_LABELS["cg"]), color=FOREGROUND)
        self.setLabel("left", Y_LABELS.get(solver, DEFAULT_Y), color=FOREGROUND)
        bottom = self.getAxis("bottom")
        if solver == "newton":  # whole reports: no 0.5 ticks
            step = max(1, int(np.ceil(len(points) / MAX_INTEGER_TICKS)))
            bottom.setTickSpacing(step, step)
        else:
            bottom.setTickSpacing()
        if solver == "cholesky":
            # A direct solve has no iterations: one dot on an iteration axis says nothing; say it in words.
            self.curve.setData([], [])
            self.message.setText(DIRECT_NOTE.format(solver=solver, residual=last))
            self._place_message()
            self.note = f"{solver}: direct solve, relative residual {last}"
        else:
            self.message.setText("")
            self.curve.setData(points[keep, 0], points[keep, 1])
            self.note = f"{solver}: {len(points)} steps, final {last}"
            total = info.get("iterations")
            if solver == "newton":
                # The worker keeps the first fit's reports (the s² search fits again); the count of the
                # final fit's iterations comes with the payload.
                self.note = f"newton: {len(points)} reports, final {last}"
                if total is not None:
                    self.note += f"; final fit {int(total)} iterations"
        set_title(self, f"{TITLE} — {self.note}")

    def curve_data(self) -> tuple[np.ndarray, np.ndarray]:
        """Return (work, residual) shown."""
        return curve_data(self.curve)
