"""The left panel: method settings, each with a tooltip, turned into worker job arguments."""

from __future__ import annotations

from typing import Any

from PySide6.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QGroupBox, QSpinBox, QVBoxLayout, QWidget

DEFAULT_PRIOR_VAR = 1.0
DEFAULT_NOISE = 0.01  # the sine example's noise std is 0.1
DEFAULT_PARAMS = "all"
PARAM_CHOICES = ("all", "last:1", "last:2")
DEFAULT_N_ADAPT = 10
DEFAULT_EPOCHS = 300
DEFAULT_LR = 1e-2
DEFAULT_BATCH = 32
VARIANCE_RANGE = (1e-6, 1e4)
N_ADAPT_RANGE = (2, 200)
EPOCH_RANGE = (0, 1_000_000)
LR_RANGE = (1e-6, 1.0)
SPIN_DECIMALS = 6
GRID_POINTS = 200  # points of the 1-D plotting grid the worker predicts on
SEED = 0
PANEL_WIDTH = 280


def _spin(value: float, lo: float, hi: float, tip: str, step: float) -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setDecimals(SPIN_DECIMALS)
    box.setRange(lo, hi)
    box.setSingleStep(step)
    box.setValue(value)
    box.setToolTip(tip)
    return box


def _int_spin(value: int, lo: int, hi: int, tip: str) -> QSpinBox:
    box = QSpinBox()
    box.setRange(lo, hi)
    box.setValue(value)
    box.setToolTip(tip)
    return box


class SettingsPanel(QWidget):
    """Prior/noise variances, parameter subset, labelled points, fine-tuning epochs and rate."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.prior_var = _spin(DEFAULT_PRIOR_VAR, *VARIANCE_RANGE, step=0.1, tip=(
            "Prior variance s² of the weight offset θ − θ*. Larger values let the GP move further "
            "from the pretrained network and widen the bands away from the data."))
        self.noise = _spin(DEFAULT_NOISE, *VARIANCE_RANGE, step=0.005, tip=(
            "Observation noise variance σ² (a variance, not a standard deviation). "
            "With 'fit by marginal likelihood' checked this and s² are only starting values."))
        self.fit_hyper = QCheckBox("fit s², σ² by evidence")
        self.fit_hyper.setToolTip(
            "Choose s² and σ² that maximize the evidence p(y | X) of the adaptation points (exact, "
            "after one eigendecomposition). With very few points σ² tends to come out too small.")
        self.params = QComboBox()
        self.params.setEditable(True)
        self.params.addItems(PARAM_CHOICES)
        self.params.setCurrentText(DEFAULT_PARAMS)
        self.params.setToolTip(
            "Which parameters the GP linearizes: 'all', 'last:K' for the last K layers with "
            "parameters, or module names such as '0,2'. The rest stay at θ*. "
            "(Fine-tuning trains all parameters: the worker takes no subset for it yet.)")
        self.n_adapt = _int_spin(DEFAULT_N_ADAPT, *N_ADAPT_RANGE, tip=(
            "How many labelled points of the new task both methods adapt on; the remaining rows "
            "are held out to score RMSE, NLL and coverage."))
        self.epochs = _int_spin(DEFAULT_EPOCHS, *EPOCH_RANGE, tip=(
            "Fine-tuning epochs (Adam on the same parameter subset). Epoch 0 is the pretrained model."))
        self.lr = _spin(DEFAULT_LR, *LR_RANGE, step=1e-3, tip="Fine-tuning learning rate (Adam).")

        gp_box, ft_box = QGroupBox("Linearized GP"), QGroupBox("Fine-tuning baseline")
        gp_form, ft_form = QFormLayout(gp_box), QFormLayout(ft_box)
        gp_form.addRow("Prior variance s²", self.prior_var)
        gp_form.addRow("Noise variance σ²", self.noise)
        gp_form.addRow("", self.fit_hyper)
        gp_form.addRow("Parameters", self.params)
        gp_form.addRow("Labelled points", self.n_adapt)
        ft_form.addRow("Epochs", self.epochs)
        ft_form.addRow("Learning rate", self.lr)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(gp_box)
        layout.addWidget(ft_box)
        self.setFixedWidth(PANEL_WIDTH)

    def gp_args(self) -> dict[str, Any]:
        """Return the ``fit_gp`` job arguments for the current settings."""
        return {"params": self.params.currentText().strip() or DEFAULT_PARAMS,
                "prior_var": self.prior_var.value(), "noise": self.noise.value(),
                "fit_hyper": self.fit_hyper.isChecked(),
                "n_adapt": self.n_adapt.value(), "seed": SEED, "grid_points": GRID_POINTS}

    def finetune_args(self) -> dict[str, Any]:
        """Return the ``finetune`` job arguments for the current settings."""
        return {"params": self.params.currentText().strip() or DEFAULT_PARAMS,
                "epochs": self.epochs.value(), "lr": self.lr.value(), "batch_size": DEFAULT_BATCH,
                "n_adapt": self.n_adapt.value(), "seed": SEED, "grid_points": GRID_POINTS}
