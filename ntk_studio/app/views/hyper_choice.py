"""The Hyperparameters tab: what the linearized fit used (s², σ², τ), by which selection, and why.

Left, the values with the numbers behind the choice (log evidence, held-out NLL, the σ² floor);
right, the search over the prior variance when it was a grid (held-out NLL at the chosen covariance
scale τ and at τ = 1, or the Laplace evidence), with the chosen s² marked. The regression GP's
(s², σ²) are found by a continuous optimizer, so there is no curve: the values and the evidence
before and after say what happened.
"""

from __future__ import annotations

import math
from html import escape

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFormLayout, QHBoxLayout, QLabel, QScrollArea, QVBoxLayout, QWidget

from ..numbers import EMPTY, fmt
from ..run_records import HyperChoice
from .log_axis import LogAxis
from .style import (BACKGROUND, FINETUNED_COLOR, FOREGROUND, GP_COLOR, POINT_SIZE, PRETRAINED_COLOR, SMALL_POINT, pen,
                    set_title, style)

DIGITS = 4
TEXT_WIDTH = (250, 360)  # the values column: narrow at 1024 × 640, wider when there is room
TEXT_SHARE = 0.42
CURVE_COLORS = (GP_COLOR, PRETRAINED_COLOR)
CHOSEN_COLOR = FINETUNED_COLOR

SELECTION_WHY = {
    "heldout": ("The prior variance s² and the covariance scale τ with the smallest K-fold held-out NLL of the "
                "predictive on the adaptation rows: the probabilities a person will see, scored on rows the fit "
                "did not use."),
    "evidence": "The s² with the largest Laplace evidence (marginal likelihood of the labels) on the grid.",
    "floor": ("The (s², σ²) with the largest marginal likelihood, with σ² kept ≥ 1 % of the targets' variance: "
              "on a few points the unconstrained evidence drives σ² towards 0 and the intervals become too narrow."),
    "shift": ("The 'floor' values, then s² and σ² both multiplied by a covariance scale τ ≥ 1 (same mean, every "
              "interval √τ wider), τ by the held-out NLL of the labelled half that looks most like the unlabelled "
              "rows, predicted from the other half: the intervals are sized for where the model will be used."),
    "blocked": ("The 'floor' values, then s² and σ² both multiplied by a covariance scale τ ≥ 1, τ by the held-out "
                "NLL of blocks of rows that lie away from the rest (groups, or clusters in feature space)."),
    "map2": "The marginal likelihood plus a weak log-normal prior (one decade) around the starting (s², σ²).",
    "loo": "The (s², σ²) with the best leave-one-out predictive likelihood (closed form).",
    "evidence_tau": ("s² by the Laplace evidence, then the covariance scale τ by the K-fold held-out NLL of the "
                     "predictive at that s²."),
    "heldout_1se": ("The held-out (s², τ) when its K-fold held-out NLL beats the evidence's s² by more than one "
                    "standard error; otherwise the evidence's s² with its held-out τ."),
    "as given": "The values set in the Method panel: the hyperparameter fit was off.",
}
ROW_TIPS = {
    "selection": "The rule that chose the hyperparameters (the library's `selection` name in brackets).",
    "rule": "What the rule optimizes, in a sentence.",
    "why": "The numbers that decided, as the search reported them.",
    "prior_var": ("Prior variance s² of the linearized parameters, θ − θ* ~ N(0, s² I): how far the adapted "
                  "model may move from the pretrained one."),
    "noise": "Observation noise variance σ² of the Gaussian likelihood (in the targets' units, squared).",
    "floor": ("Lower bound on σ² of the 'floor' selection: 1 % of the variance of the adaptation targets. Active: "
              "the evidence wanted less noise and the floor set σ²."),
    "cov_scale": ("Covariance scale τ. Classifier: the logits' posterior covariance is multiplied by τ before the "
                  "probit; τ < 1 sharpens the probabilities towards the MAP's, τ = 1 is the plain Laplace posterior. "
                  "Regression ('shift', 'blocked'): s² and σ² are both multiplied by τ ≥ 1, so the mean stays and "
                  "every interval is √τ wider."),
    "temperature": ("Logit temperature T: the predictive is that of the logits divided by T (mean μ/T, covariance "
                    "τΣ/T²). T > 1 softens the probabilities, T < 1 sharpens them; T = 1 leaves them."),
    "evidence": ("Log marginal likelihood (evidence) of the adaptation labels at the chosen values; for the "
                 "classifier its Laplace approximation. Higher is better; it is not what 'heldout' optimizes."),
    "heldout": ("Mean negative log-likelihood of the adaptation rows, each predicted by a fit on the other folds, at "
                "the chosen (s², τ). Lower is better."),
    "heldout_unscaled": ("The same held-out NLL at the chosen s² with τ = 1 (and T = 1): the plain Laplace "
                         "posterior. The difference is what the calibration of τ (and T) gained."),
    "evidence_s2": "The s² the Laplace evidence alone prefers (dashed grey line in the plot).",
}
# Rows in reading order: the values, the numbers behind them, then how and why (the long texts last).
ROW_NAMES = {"prior_var": "prior variance s²", "noise": "noise σ²", "floor": "σ² floor",
             "cov_scale": "covariance scale τ", "temperature": "logit temperature T", "heldout": "held-out NLL",
             "heldout_unscaled": "held-out NLL, τ = 1",
             "evidence": "log evidence", "evidence_s2": "evidence's s²", "selection": "selection"}
TITLES = {"heldout_nll": "Held-out NLL over s²", "evidence": "Laplace evidence over s²"}
MARGIN = 0.08  # share of the curves' span above and below them
LINE_TEXT = {Qt.PenStyle.SolidLine: "━━", Qt.PenStyle.DashLine: "╍╍", Qt.PenStyle.DotLine: "┈┈"}
Y_LABELS = {"heldout_nll": "held-out NLL (lower is better)", "evidence": "log evidence (higher is better)"}
EMPTY_TITLE = "Hyperparameters"


def _rows(h: HyperChoice) -> dict[str, str]:
    """Return the text of each row that applies to ``h`` (name -> value); 'method', 'rule', 'why' are paragraphs."""
    given = h.fitted is False or h.selection == "as given"
    rows = {"selection": "as given" if given else (h.selection or h.method or EMPTY)}
    if not given and h.method and h.method != rows["selection"]:
        rows["method"] = h.method
    rule = SELECTION_WHY.get("as given" if given else (h.selection or ""))
    if rule:
        rows["rule"] = rule
    if h.why and not given:
        rows["why"] = h.why
    rows["prior_var"] = _from(h.prior_var, h.initial_prior_var, given)
    if h.task != "classification":
        rows["noise"] = _from(h.noise, h.initial_noise, given)
        if h.noise_floor is not None:
            on = "active: σ² / τ is on the floor" if h.cov_scale not in (None, 1.0) else "active: σ² is on the floor"
            state = {True: on, False: "not active", None: ""}[h.floor_active]
            rows["floor"] = fmt(h.noise_floor, digits=DIGITS) + (f" — {state}" if state else "")
        if h.cov_scale is not None:
            rows["cov_scale"] = fmt(h.cov_scale, digits=DIGITS)
    else:
        if h.cov_scale is not None:
            rows["cov_scale"] = fmt(h.cov_scale, digits=DIGITS)
        if h.temperature is not None:
            rows["temperature"] = fmt(h.temperature, digits=DIGITS)
    if h.log_evidence is not None or h.initial_log_evidence is not None:
        text = fmt(h.log_evidence, digits=DIGITS)
        if h.initial_log_evidence is not None and not given:
            text += f" (at the start: {fmt(h.initial_log_evidence, digits=DIGITS)})"
        rows["evidence"] = text
    if h.evidence_prior_var is not None:
        rows["evidence_s2"] = fmt(h.evidence_prior_var, digits=DIGITS)
    if h.heldout_nll is not None:
        rows["heldout"] = fmt(h.heldout_nll, digits=DIGITS) + (f" ({h.folds} folds)" if h.folds else "")
    if h.heldout_nll_unscaled is not None:
        rows["heldout_unscaled"] = fmt(h.heldout_nll_unscaled, digits=DIGITS)
    return rows


def _paragraph(rows: dict[str, str]) -> str:
    """Return the rich text under the values: the selection in words, what it optimizes, and why."""
    parts = []
    if rows.get("method"):
        parts.append(f"<b>Selection</b> {escape(rows['selection'])}: {escape(rows['method'])}.")
    if rows.get("rule"):
        parts.append(f"<b>Rule</b> {escape(rows['rule'])}")
    if rows.get("why"):
        parts.append(f"<b>Why</b> {escape(rows['why'])}")
    return "<br>".join(parts)


def _key(color: tuple[int, int, int], line: str, label: str) -> str:
    """Return one legend entry as rich text: a coloured line sample and its label."""
    return f"<span style='color: rgb{tuple(color)}'>{line}</span>&nbsp;{label}"


def _from(value: float | None, start: float | None, given: bool) -> str:
    text = fmt(value, digits=DIGITS)
    if not given and start is not None and value is not None and not math.isclose(value, start, rel_tol=1e-9):
        text += f" (started at {fmt(start, digits=DIGITS)})"
    return text


class HyperChoiceView(QWidget):
    """The chosen hyperparameters with the reason, and the search curve when there was a grid."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        form_widget = QWidget()
        self.form = QFormLayout(form_widget)
        self.form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        self.form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.form.setLabelAlignment(Qt.AlignmentFlag.AlignLeft)
        self.names: dict[str, QLabel] = {}
        self.fields: dict[str, QLabel] = {}
        for key, name in ROW_NAMES.items():
            label, value = QLabel(name), QLabel(EMPTY)
            for widget in (label, value):
                widget.setToolTip(ROW_TIPS[key])
            value.setWordWrap(True)
            value.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            self.form.addRow(label, value)
            self.names[key], self.fields[key] = label, value
        self.placeholder = QLabel("Run Adapt: the hyperparameters the linearized model uses, and why, appear here.")
        self.placeholder.setWordWrap(True)
        self.form.addRow(self.placeholder)
        self.reason = QLabel()  # the selection in words and why: the whole width, under the values and plot
        self.reason.setWordWrap(True)
        self.reason.setTextFormat(Qt.TextFormat.RichText)
        self.reason.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.reason.setToolTip(ROW_TIPS["why"])
        self.form_widget = form_widget
        self.text = QScrollArea()
        self.text.setWidget(form_widget)
        self.text.setWidgetResizable(True)
        self.text.setFrameShape(QScrollArea.Shape.NoFrame)
        self.text.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.plot = pg.PlotWidget(background=BACKGROUND, axisItems={"bottom": LogAxis("bottom")})
        style(self.plot, EMPTY_TITLE, "prior variance s²", "")
        self.plot.setLogMode(x=True, y=False)
        # The legend is a line of text under the plot: inside, it covered the curves at 1024 × 640.
        self.key = QLabel()
        self.key.setWordWrap(True)
        self.key.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.curves: list[pg.PlotDataItem] = []
        self.chosen = self.plot.plot([], [], pen=None, symbol="o", symbolSize=POINT_SIZE + 3, symbolBrush=None,
                                     symbolPen=pen(CHOSEN_COLOR))
        self.chosen_line = pg.InfiniteLine(angle=90, pen=pen(CHOSEN_COLOR, 1, style=Qt.PenStyle.DashLine))
        self.plot.addItem(self.chosen_line, ignoreBounds=True)
        self.evidence_line = pg.InfiniteLine(angle=90, pen=pen(PRETRAINED_COLOR, 1, style=Qt.PenStyle.DotLine))
        self.plot.addItem(self.evidence_line, ignoreBounds=True)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(6, 6, 4, 4)
        layout = QHBoxLayout()
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.text)
        outer.addLayout(layout, 1)
        outer.addWidget(self.reason)
        outer.addStretch(0)  # takes the spare height when there is no curve (the values stay together)
        self.outer = outer
        right = QVBoxLayout()
        right.setContentsMargins(0, 0, 0, 0)
        right.setSpacing(0)
        right.addWidget(self.plot, 1)
        right.addWidget(self.key)
        self.right = QWidget()
        self.right.setLayout(right)
        layout.addWidget(self.right, 1)
        self.values: dict[str, str] = {}
        self.clear_data()

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt override
        """Give the values more room on a wide window (all of it when there is no curve)."""
        super().resizeEvent(event)
        self._fit_text_width()

    def _fit_text_width(self) -> None:
        lo, hi = TEXT_WIDTH
        if self.right.isHidden():
            self.text.setMaximumWidth(16_777_215)
            self.text.setMinimumWidth(lo)
        else:
            self.text.setFixedWidth(int(min(max(self.width() * TEXT_SHARE, lo), hi)))

    def clear_data(self) -> None:
        """Show nothing but the placeholder (no fit yet)."""
        self.values = {}
        for key in ROW_NAMES:
            self._show_row(key, None)
        self.reason.setText("")
        self.reason.setVisible(False)
        self.placeholder.setVisible(True)
        self._set_curves(())

    def _show_row(self, key: str, text: str | None) -> None:
        self.fields[key].setText(text or EMPTY)
        self.names[key].setVisible(text is not None)
        self.fields[key].setVisible(text is not None)

    def set_hyper(self, h: HyperChoice) -> None:
        """Show a fit's hyperparameters, the reason and (for a grid search) the curve."""
        self.values = _rows(h)
        for key in ROW_NAMES:
            self._show_row(key, self.values.get(key))
        plain = "τ = T = 1" if h.temperature is not None else "τ = 1"
        self.names["heldout_unscaled"].setText(f"held-out NLL, {plain}")
        self.reason.setText(_paragraph(self.values))
        self.reason.setVisible(bool(self.reason.text()))
        self.placeholder.setVisible(False)
        self._set_curves(h.curves, h.prior_var, h.folds, h.evidence_prior_var)

    def _set_curves(self, curves, chosen: float | None = None, folds: int | None = None,
                    evidence_s2: float | None = None) -> None:
        for item in self.curves:
            self.plot.removeItem(item)
        self.curves = []
        self.chosen.setData([], [])
        self.chosen_line.setVisible(False)
        self.evidence_line.setVisible(False)
        shown = [c for c in curves if any(math.isfinite(v) for v in c.value)]
        self.right.setVisible(bool(shown))
        # Without a curve the values keep their whole height and the spare room goes below the reason.
        self.outer.setStretch(0, 1 if shown else 0)
        self.outer.setStretch(2, 0 if shown else 1)
        self.text.setMinimumHeight(0 if shown else self.form_widget.sizeHint().height())
        self.key.setText("")
        self._fit_text_width()
        if not shown:
            set_title(self.plot, EMPTY_TITLE)
            return
        criterion = shown[0].criterion
        keys = []
        for i, curve in enumerate(shown):
            x, y = np.asarray(curve.prior_var, float), np.asarray(curve.value, float)
            order = np.argsort(x, kind="stable")  # candidates may be listed in the order they were tried
            x, y = x[order], y[order]
            keep = np.isfinite(y) & (x > 0)
            color = CURVE_COLORS[min(i, len(CURVE_COLORS) - 1)]
            line = Qt.PenStyle.SolidLine if i == 0 else Qt.PenStyle.DashLine
            item = self.plot.plot(x[keep], y[keep], pen=pen(color, style=line), symbol="o", symbolSize=SMALL_POINT,
                                  symbolBrush=color, symbolPen=None)
            self.curves.append(item)
            keys.append(_key(color, LINE_TEXT[line], curve.label))
        first = shown[0]
        if chosen is not None and chosen > 0:
            self.chosen_line.setValue(math.log10(chosen))
            self.chosen_line.setVisible(True)
            match = [v for s, v in zip(first.prior_var, first.value) if math.isclose(s, chosen, rel_tol=1e-9)]
            if match and math.isfinite(match[0]):
                self.chosen.setData([chosen], [match[0]])
            keys.append(_key(CHOSEN_COLOR, LINE_TEXT[Qt.PenStyle.DashLine], "chosen s²"))
        if evidence_s2 is not None and evidence_s2 > 0 and criterion != "evidence":
            self.evidence_line.setValue(math.log10(evidence_s2))
            self.evidence_line.setVisible(True)
            keys.append(_key(PRETRAINED_COLOR, LINE_TEXT[Qt.PenStyle.DotLine], "evidence's s²"))
        self.key.setText("&nbsp;&nbsp; ".join(keys))
        title = TITLES.get(criterion, EMPTY_TITLE)
        if criterion == "heldout_nll" and folds:
            title += f" ({folds} folds)"
        set_title(self.plot, title)
        self.plot.setLabel("left", Y_LABELS.get(criterion, ""), color=FOREGROUND)
        values = np.concatenate([np.asarray(c.value, float) for c in shown])
        values = values[np.isfinite(values)]
        low, high = float(values.min()), float(values.max())
        span = (high - low) or max(abs(high), 1.0) * 1e-3
        self.plot.enableAutoRange(x=True, y=False)
        self.plot.setYRange(low - MARGIN * span, high + MARGIN * span, padding=0)

    def curve_data(self, index: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Return (s², value) of the index-th curve shown (s² as given, not its logarithm)."""
        item = self.curves[index]
        return np.asarray(item.xData, float), np.asarray(item.yData, float)
