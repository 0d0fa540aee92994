"""Solver convergence: the residual the GP's solver (or the classifier's Newton gradient) reached per step."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg

from .style import BACKGROUND, FOREGROUND, GP_COLOR, SMALL_POINT, curve_data, pen, style

X_LABELS = {"cg": "matrix-vector products", "cholesky": "products (direct solve)", "newton": "Newton iteration"}
Y_LABELS = {"newton": "relative gradient norm"}
DEFAULT_Y = "relative residual ‖Ax − b‖/‖b‖"
TITLE = "Solver convergence"


class ConvergencePlot(pg.PlotWidget):
    """Residual against work on a log axis, with a one-line note of the solver and where it stopped."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent, background=BACKGROUND)
        style(self, TITLE, X_LABELS["cg"], DEFAULT_Y)
        self.note = ""
        self.setLogMode(x=False, y=True)
        self.getAxis("left").enableAutoSIPrefix(False)
        self.curve = self.plot([], [], pen=pen(GP_COLOR), symbol="o", symbolSize=SMALL_POINT, symbolBrush=GP_COLOR,
                               symbolPen=None)

    def set_convergence(self, info: dict) -> None:
        """Show a payload's ``convergence``: solver name, points [products, residual], iterations."""
        solver = info.get("solver", "cg")
        points = np.asarray(info.get("points") or [], float).reshape(-1, 2)
        if solver == "newton":
            points = np.column_stack([np.arange(len(points)), points[:, 1]]) if len(points) else points
        keep = points[:, 1] > 0 if len(points) else np.zeros(0, bool)  # a log axis cannot show 0
        self.curve.setData(points[keep, 0], points[keep, 1])
        self.setLabel("bottom", X_LABELS.get(solver, X_LABELS["cg"]), color=FOREGROUND)
        self.setLabel("left", Y_LABELS.get(solver, DEFAULT_Y), color=FOREGROUND)
        last = f"{points[-1, 1]:.2e}" if len(points) else "—"
        self.note = f"{solver}: {len(points)} report(s), final {last}"
        self.setTitle(f"{TITLE} — {self.note}", color=FOREGROUND)

    def curve_data(self) -> tuple[np.ndarray, np.ndarray]:
        """Return (work, residual) shown."""
        return curve_data(self.curve)
