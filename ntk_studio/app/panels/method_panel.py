"""Method panel: GP prior and noise (or fit by evidence), route and solver with the estimate, device, fine-tuning."""

from __future__ import annotations

import os
from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (QCheckBox, QComboBox, QFormLayout, QGroupBox, QLabel, QSpinBox,
                               QVBoxLayout, QWidget)

from .spin import NumberBox

DEFAULT_PRIOR_VAR = 1.0
DEFAULT_NOISE = 0.01
DEFAULT_EPOCHS = 300
DEFAULT_LR = 1e-2
DEFAULT_BATCH = 32
VARIANCE_RANGE = (1e-8, 1e6)
EPOCH_RANGE = (0, 1_000_000)
LR_RANGE = (1e-7, 10.0)
BATCH_RANGE = (1, 1_000_000)
NOISE_AUTO = "auto (10 % of var y)"  # noise None: the worker starts σ² from the adaptation targets' variance
MAX_RANKS = max(2, os.cpu_count() or 2)  # data-parallel worker processes offered
SPACES = ("auto", "function", "weight")
SOLVERS = ("auto", "cholesky", "cg")
DEVICES = ("auto", "cpu")  # the worker adds "cuda" when it sees a GPU
GRID_POINTS = 200  # points of the 1-D plotting grid the worker predicts on


def _spin(value: float, lo: float, hi: float, step: float, tip: str, auto_text: str = "") -> NumberBox:
    return NumberBox(value, lo, hi, tip, auto_text)


def _int_spin(value: int, lo: int, hi: int, tip: str) -> QSpinBox:
    box = QSpinBox()
    box.setRange(lo, hi)
    box.setValue(value)
    box.setToolTip(tip)
    return box


def _combo(items: tuple[str, ...], tip: str) -> QComboBox:
    box = QComboBox()
    box.addItems(list(items))
    box.setToolTip(tip)
    return box


class MethodPanel(QWidget):
    """Every method setting, each with a tooltip; `settings_changed` fires on edits that change the route."""

    settings_changed = Signal()
    ranks_changed = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.prior_var = _spin(DEFAULT_PRIOR_VAR, *VARIANCE_RANGE, step=0.1, tip=(
            "Prior variance s² of the weight offset θ − θ*. Larger values let the GP move further from the "
            "pretrained network and widen the bands away from the data."))
        self.noise = _spin(DEFAULT_NOISE, 0.0, VARIANCE_RANGE[1], step=0.005, auto_text=NOISE_AUTO, tip=(
            "Observation noise variance σ² (a variance, not a standard deviation), in the target's units squared. "
            "With 'fit by marginal likelihood' checked this and s² are only starting values. 'auto' (step below "
            "the smallest value, or type 0) starts from 10 % of the adaptation targets' variance. "
            "Classification has no noise term."))
        self.fit_hyper = QCheckBox("fit by marginal likelihood")
        self.fit_hyper.setToolTip(
            "Regression: choose s² and σ² that maximize the evidence p(y | X) of the adaptation rows (exact, after "
            "one eigendecomposition). Classification: pick s² by Laplace evidence on a grid 1e-4…1e2 (8 fits). "
            "With very few points σ² tends to come out too small.")
        self.space = _combo(SPACES, "Solve in function space (an n·K × n·K system: few points, many parameters) or "
                                    "weight space (P × P: many points, few parameters). 'auto' picks the smaller.")
        self.solver = _combo(SOLVERS, "Cholesky factors the system exactly while it fits the memory budget (2 GiB); "
                                      "CG solves it matrix-free to a 1e-8 relative residual. 'auto' picks by memory.")
        self.device = _combo(DEVICES, "Where the worker computes. 'auto' uses the GPU when the worker sees one.")
        self.ranks = _int_spin(1, 1, MAX_RANKS, tip=(
            "Worker processes: with 2 or more the worker runs as that many data-parallel ranks (torchrun; gloo on "
            "CPU, NCCL with one GPU per rank), each computing the kernel and GGN products on its share of the "
            "rows. Changing it restarts the worker; Cancel then stops every rank at once."))
        self.ranks.valueChanged.connect(self.ranks_changed.emit)
        self.estimate = QLabel("Route estimate appears once a model and data are loaded.")
        self.estimate.setWordWrap(True)
        self.estimate.setToolTip("The route, system size and memory the GP will use, estimated before running.")
        self.epochs = _int_spin(DEFAULT_EPOCHS, *EPOCH_RANGE, tip=(
            "Fine-tuning epochs (Adam on the same parameter subset, no early stopping). Epoch 0 is the pretrained "
            "model."))
        self.lr = _spin(DEFAULT_LR, *LR_RANGE, step=1e-3, tip="Fine-tuning learning rate (Adam).")
        self.batch = _int_spin(DEFAULT_BATCH, *BATCH_RANGE, tip="Fine-tuning mini-batch size (rows per step).")

        gp_box, ft_box = QGroupBox("Linearized GP"), QGroupBox("Fine-tuning baseline")
        gp_form, ft_form = QFormLayout(gp_box), QFormLayout(ft_box)
        gp_form.addRow("Prior variance s²", self.prior_var)
        gp_form.addRow("Noise variance σ²", self.noise)
        gp_form.addRow("", self.fit_hyper)
        gp_form.addRow("Space", self.space)
        gp_form.addRow("Solver", self.solver)
        gp_form.addRow("Device", self.device)
        gp_form.addRow("Worker processes", self.ranks)
        gp_form.addRow(self.estimate)
        ft_form.addRow("Epochs", self.epochs)
        ft_form.addRow("Learning rate", self.lr)
        ft_form.addRow("Batch size", self.batch)
        layout = QVBoxLayout(self)
        layout.addWidget(gp_box)
        layout.addWidget(ft_box)
        layout.addStretch(1)
        for box in (self.space, self.solver):
            box.currentIndexChanged.connect(self._route_edited)

    def _route_edited(self, _index: int) -> None:
        self.settings_changed.emit()

    def set_devices(self, devices: list[str]) -> None:
        """Offer 'auto' plus the worker's devices, keeping the current choice when still offered."""
        current = self.device.currentText()
        choices = ["auto", *devices]
        if [self.device.itemText(i) for i in range(self.device.count())] != choices:
            self.device.clear()
            self.device.addItems(choices)
            self.device.setCurrentText(current if current in choices else "auto")

    def set_task(self, task: str) -> None:
        """Classification has no noise variance: disable its box."""
        self.noise.setEnabled(task != "classification")

    def show_estimate(self, plan: dict[str, Any]) -> None:
        """Show the worker's route estimate (or why there is none)."""
        if plan.get("mismatch"):
            self.estimate.setText(f"⚠ {plan['mismatch']}")
            return
        self.estimate.setText(f"Estimate: {plan['describe']}")

    def values(self) -> dict[str, Any]:
        """Return every setting of this panel."""
        return {"prior_var": self.prior_var.value(), "noise": None if self.noise.is_auto() else self.noise.value(), "fit_hyper": self.fit_hyper.isChecked(),
                "space": self.space.currentText(), "solver": self.solver.currentText(),
                "device": self.device.currentText(), "epochs": self.epochs.value(), "lr": self.lr.value(),
                "batch_size": self.batch.value(), "ranks": self.ranks.value()}

    def set_values(self, values: dict[str, Any]) -> None:
        """Apply stored settings (unknown keys are ignored)."""
        for key, box in (("prior_var", self.prior_var), ("noise", self.noise), ("lr", self.lr)):
            if key in values:
                box.setValue(box.minimum() if values[key] is None else float(values[key]))
        for key, box in (("epochs", self.epochs), ("batch_size", self.batch), ("ranks", self.ranks)):
            if key in values:
                box.setValue(int(values[key]))
        if "fit_hyper" in values:
            self.fit_hyper.setChecked(bool(values["fit_hyper"]))
        for key, box in (("space", self.space), ("solver", self.solver), ("device", self.device)):
            if key in values and box.findText(str(values[key])) >= 0:
                box.setCurrentText(str(values[key]))
