"""`NumberBox`: a spin box for variances and rates that reads like the rest of the app ('0.003', '1e-06').

Qt's QDoubleSpinBox writes every value with a fixed number of decimals ("1.00000000"); this one
writes 4 significant digits through `numbers.fmt`, accepts any float the user types ('3e-3'),
and steps by a factor (these quantities live on a log scale).
"""

from __future__ import annotations

from PySide6.QtGui import QValidator
from PySide6.QtWidgets import QDoubleSpinBox

from ..numbers import fmt

STEP_FACTOR = 2.0  # one arrow step halves or doubles the value
INTERNAL_DECIMALS = 12  # Qt rounds values to its decimals: keep tiny values exact
PARTIAL = ("", "-", "+", ".", "e", "e-", "e+")


class NumberBox(QDoubleSpinBox):
    """A positive float with readable text; ``auto_text`` names the minimum as an automatic choice."""

    def __init__(self, value: float, lo: float, hi: float, tip: str, auto_text: str = "") -> None:
        super().__init__()
        self.setDecimals(INTERNAL_DECIMALS)
        self.setRange(lo, hi)
        self.setValue(value)
        self.setToolTip(tip)
        self.setKeyboardTracking(False)
        if auto_text:
            self.setSpecialValueText(auto_text)

    def textFromValue(self, value: float) -> str:  # noqa: N802 - Qt override
        """Return ``value`` with 4 significant digits."""
        return fmt(value).replace(",", "")

    def valueFromText(self, text: str) -> float:  # noqa: N802 - Qt override
        """Return the number typed (the minimum when it cannot be read)."""
        try:
            return float(text.strip())
        except ValueError:
            return self.minimum()

    def validate(self, text: str, pos: int):  # noqa: D102 - Qt override
        stripped = text.strip()
        if self.specialValueText() and stripped == self.specialValueText():
            return QValidator.State.Acceptable, text, pos
        try:
            value = float(stripped)
        except ValueError:
            partial = stripped.lower().endswith(PARTIAL) or not stripped
            return (QValidator.State.Intermediate if partial else QValidator.State.Invalid), text, pos
        inside = self.minimum() <= value <= self.maximum()
        return (QValidator.State.Acceptable if inside else QValidator.State.Intermediate), text, pos

    def stepBy(self, steps: int) -> None:  # noqa: N802 - Qt override
        """Multiply (or divide) the value by STEP_FACTOR per step."""
        value = self.value()
        if value <= 0:
            value = max(self.minimum(), 1e-3) if steps > 0 else value
        self.setValue(value * STEP_FACTOR ** steps if value > 0 else value)

    def is_auto(self) -> bool:
        """Return whether the automatic choice (the minimum, shown as its text) is selected."""
        return bool(self.specialValueText()) and self.value() <= self.minimum()
