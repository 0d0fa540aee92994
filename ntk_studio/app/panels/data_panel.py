"""Data panel: built-in examples one click away, open a data file, pick columns, split settings, preview."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import (QCheckBox, QComboBox, QFormLayout, QGridLayout, QGroupBox, QHBoxLayout, QLabel,
                               QListWidget, QListWidgetItem, QPushButton, QSpinBox, QTableWidget, QTableWidgetItem,
                               QVBoxLayout, QWidget)

from ntk_studio.example_catalog import EXAMPLE_DESCRIPTIONS

from ..views.thumbnails import thumbnail_pixmap

# Descriptions for the buttons; the worker owns the examples themselves (the GUI never imports torch).
EXAMPLES = EXAMPLE_DESCRIPTIONS
EXAMPLE_COLUMNS = 2
EXAMPLE_PROPERTY = "example"
N_ADAPT_DEFAULT = 10
N_ADAPT_MAX = 1_000_000
SEED_MAX = 2**31 - 1
PREVIEW_HEIGHT = 170
FEATURE_LIST_HEIGHT = 90
TASKS = ("auto", "regression", "classification")  # the worker's load_data "task" choices
TASK_TIP = ("What the target is. 'auto' decides from the model and the data (integer labels and one logit per "
            "class: classification; the load log says why); choose to override it.")
THUMB_PX = 48  # image thumbnails in the preview, in pixels


class DataPanel(QWidget):
    """Emits what the user asks for; the window sends it to the worker and calls `show_*` with the answer."""

    example_requested = Signal(str)
    open_requested = Signal()
    open_folder_requested = Signal()
    columns_chosen = Signal(str, str, list, bool)  # path, target, features, classification (see task())
    split_changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        examples = QGroupBox("Built-in examples")
        grid = QGridLayout(examples)
        self.example_buttons: dict[str, QPushButton] = {}
        for i, (name, text) in enumerate(EXAMPLES.items()):
            button = QPushButton(name)
            button.setToolTip(text)
            button.setProperty(EXAMPLE_PROPERTY, name)
            button.clicked.connect(self._example_clicked)
            grid.addWidget(button, i // EXAMPLE_COLUMNS, i % EXAMPLE_COLUMNS)
            self.example_buttons[name] = button

        self.open_button = QPushButton("Open data file…")
        self.open_button.setToolTip("Load a CSV/TSV table, an NPZ (X, y) or NPY array (Ctrl+D). You can also drop "
                                    "a file on the window.")
        self.open_button.clicked.connect(self.open_requested)
        self.folder_button = QPushButton("Image folder…")
        self.folder_button.setToolTip("Load a folder of images with one subfolder per class (classification).")
        self.folder_button.clicked.connect(self.open_folder_requested)
        files = QHBoxLayout()
        files.addWidget(self.open_button, 1)
        files.addWidget(self.folder_button)
        self.task_box = QComboBox()
        self.task_box.addItems(list(TASKS))
        self.task_box.setToolTip(TASK_TIP)
        task_row = QFormLayout()
        task_row.addRow("Task of a data file", self.task_box)

        self.columns_box = QGroupBox("Columns")
        self.target = QComboBox()
        self.target.setToolTip("The column to predict.")
        self.features = QListWidget()
        self.features.setToolTip("Checked columns are the model's inputs, in this order.")
        self.features.setFixedHeight(FEATURE_LIST_HEIGHT)
        self.classification = QCheckBox("target holds class labels")
        self.classification.setToolTip("Treat the target as classes (the model must output one logit per class); "
                                       "the same as Task: classification.")
        self.use_columns = QPushButton("Load with these columns")
        self.use_columns.clicked.connect(self._emit_columns)
        form = QFormLayout(self.columns_box)
        form.addRow("Target", self.target)
        form.addRow("Features", self.features)
        form.addRow("", self.classification)
        form.addRow("", self.use_columns)
        self.columns_box.setVisible(False)
        self._pending_path = ""

        split = QGroupBox("Adaptation split")
        self.n_adapt = QSpinBox()
        self.n_adapt.setRange(1, N_ADAPT_MAX)
        self.n_adapt.setValue(N_ADAPT_DEFAULT)
        self.n_adapt.setToolTip("How many labelled rows both methods adapt on (drawn at random with the seed); the "
                                "remaining rows are held out to score every method.")
        self.seed = QSpinBox()
        self.seed.setRange(0, SEED_MAX)
        self.seed.setToolTip("Seed of the random choice of adaptation rows (and of fine-tuning's batches).")
        split_form = QFormLayout(split)
        split_form.addRow("Labelled rows", self.n_adapt)
        split_form.addRow("Seed", self.seed)
        self.n_adapt.valueChanged.connect(self._split_edited)
        self.seed.valueChanged.connect(self._split_edited)

        self.summary = QLabel("Nothing loaded yet.")
        self.summary.setWordWrap(True)
        self.preview = QTableWidget()
        self.preview.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.preview.setMinimumHeight(PREVIEW_HEIGHT)
        self.preview.setToolTip("The first rows of the data in their own units (images as thumbnails).")
        self.preview.horizontalHeader().setStretchLastSection(True)

        layout = QVBoxLayout(self)
        layout.addWidget(examples)
        layout.addLayout(files)
        layout.addLayout(task_row)
        layout.addWidget(self.columns_box)
        layout.addWidget(split)
        layout.addWidget(self.summary)
        layout.addWidget(self.preview, 1)

    def _example_clicked(self) -> None:
        self.example_requested.emit(self.sender().property(EXAMPLE_PROPERTY))

    def _split_edited(self, _value: int) -> None:
        self.split_changed.emit()

    # ------------------------------------------------------------------ from the worker
    def show_columns(self, path: str, columns: list[str], header: list[str], rows: list[list[str]]) -> None:
        """Offer a table's columns: target = the last column, features = all the others."""
        self._pending_path = path
        self.target.clear()
        self.target.addItems(columns)
        self.target.setCurrentIndex(len(columns) - 1)
        self.features.clear()
        for i, name in enumerate(columns):
            item = QListWidgetItem(name)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked if i < len(columns) - 1 else Qt.CheckState.Unchecked)
            self.features.addItem(item)
        self.columns_box.setVisible(True)
        self._fill_preview(header, rows)
        self.summary.setText(f"{path}: choose the target and the feature columns, then load.")

    def show_data(self, data: dict[str, Any]) -> None:
        """Show a loaded dataset's summary and preview; bound the split to its rows."""
        self.columns_box.setVisible(False)
        n = int(data["n_rows"])
        self.n_adapt.setMaximum(max(1, n - 1))
        shape = "×".join(map(str, data["input_shape"]))
        classes = f", classes {', '.join(data['class_names'])}" if data["class_names"] else ""
        self.summary.setText(f"{n:,} rows, inputs {shape} ({', '.join(data['feature_names'][:6])}"
                             f"{'…' if len(data['feature_names']) > 6 else ''}), target {data['target_name']}, "
                             f"{data['task']}{classes}.")
        self.summary.setToolTip(data.get("source", ""))
        self._fill_preview(data["preview_header"], data["preview"], data.get("thumbnails"))

    def select_row(self, row: int) -> bool:
        """Select data row ``row`` in the preview when the preview shows it; return whether it does."""
        if not 0 <= row < self.preview.rowCount():
            self.preview.clearSelection()
            return False
        self.preview.selectRow(row)
        self.preview.scrollToItem(self.preview.item(row, 0))
        return True

    def _fill_preview(self, header: list[str], rows: list[list[str]], thumbnails: list | None = None) -> None:
        if thumbnails:  # images: the rows that have a picture (the text cell of an image is only its label)
            rows = rows[: len(thumbnails)]
        self.preview.clear()
        self.preview.setColumnCount(len(header))
        self.preview.setRowCount(len(rows))
        self.preview.setHorizontalHeaderLabels(header)
        for r, row in enumerate(rows):
            for c, cell in enumerate(row[: len(header)]):
                self.preview.setItem(r, c, QTableWidgetItem(str(cell)))
        thumbs = thumbnails or []
        if thumbs:  # images: a picture in the input column instead of its shape as text
            self.preview.setIconSize(QSize(THUMB_PX, THUMB_PX))
            for r, image in enumerate(thumbs[: len(rows)]):
                item = QTableWidgetItem("")
                item.setIcon(QIcon(thumbnail_pixmap(image, THUMB_PX)))
                self.preview.setItem(r, 0, item)
                self.preview.setRowHeight(r, THUMB_PX + 4)
            self.preview.setColumnWidth(0, THUMB_PX + 12)

    def _emit_columns(self) -> None:
        target = self.target.currentText()
        features = [self.features.item(i).text() for i in range(self.features.count())
                    if self.features.item(i).checkState() == Qt.CheckState.Checked and self.features.item(i).text() != target]
        self.columns_chosen.emit(self._pending_path, target, features, self.classification.isChecked())

    def task(self) -> str:
        """Return the task chosen for the next data file ('auto', 'regression' or 'classification')."""
        if self.columns_box.isVisible() and self.classification.isChecked():
            return "classification"
        return self.task_box.currentText()

    # ------------------------------------------------------------------ settings
    def values(self) -> dict[str, Any]:
        """Return the split settings."""
        return {"n_adapt": self.n_adapt.value(), "seed": self.seed.value()}

    def set_values(self, values: dict[str, Any]) -> None:
        """Apply stored split settings (unknown keys are ignored)."""
        if "n_adapt" in values and values["n_adapt"] is not None:
            self.n_adapt.setValue(int(values["n_adapt"]))
        if "seed" in values:
            self.seed.setValue(int(values["seed"]))
