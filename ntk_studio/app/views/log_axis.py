"""A log-scale axis whose labels never overlap: decades always, 2 and 5 only when few decades show."""

from __future__ import annotations

import math

import pyqtgraph as pg

from ..numbers import fmt

MANY_DECADES = 2.0  # beyond this span only the decades are labelled
LABELLED_MANTISSAS = (1, 2, 5)
LABEL_DIGITS = 2


class LogAxis(pg.AxisItem):
    """For plots in log mode: unlabelled minor ticks between 1, 2 and 5 of each decade."""

    def __init__(self, orientation: str = "left", **kw) -> None:
        super().__init__(orientation, **kw)
        self.enableAutoSIPrefix(False)

    def logTickStrings(self, values, scale, spacing):  # noqa: N802 - pyqtgraph override
        """Return a label for decades (and 2, 5 over a short span), '' for the other ticks."""
        vals = [float(v) for v in values]
        span = (max(vals) - min(vals)) if vals else 0.0
        keep = (1,) if span > MANY_DECADES else LABELLED_MANTISSAS
        out = []
        for v in vals:
            x = 10.0 ** v * scale
            mantissa = x / 10.0 ** math.floor(math.log10(x) + 1e-9) if x > 0 else 0.0
            out.append(fmt(x, digits=LABEL_DIGITS) if round(mantissa, 6) in keep else "")
        return out
