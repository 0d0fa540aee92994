"""Model panel: open a model file, its summary, and the parameter subset as a checkable module tree."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QCheckBox, QFormLayout, QHBoxLayout, QHeaderView, QLabel, QLineEdit, QPushButton,
                               QTreeWidget, QTreeWidgetItem, QTreeWidgetItemIterator, QVBoxLayout, QWidget)

ALL = "all"
ROOT_LABEL = "(model)"
NAME_COL, KIND_COL, PARAMS_COL = 0, 1, 2
EXPAND_DEPTH = 1
TREE_TIP = ("Checked modules are linearized (GP) and trained (fine-tuning); unchecked ones stay at the pretrained "
            "weights. Fewer parameters: faster, and closer to adapting only a head.")


class ModelPanel(QWidget):
    """Holds the module tree; `spec()` turns the checked modules into the engine's parameter subset."""

    open_requested = Signal()
    params_changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.open_button = QPushButton("Open model file…")
        self.open_button.setToolTip("TorchScript, torch.export (.pt2), or a state dict (.pt/.safetensors) with its "
                                    "architecture (Ctrl+M). You can also drop a file on the window.")
        self.open_button.clicked.connect(self.open_requested)
        self.arch = QLineEdit()
        self.arch.setPlaceholderText("file.py:factory (state dicts only)")
        self.arch.setToolTip("For a state dict: the Python file and function that build the architecture, "
                             "e.g. mynet.py:build. TorchScript and torch.export files carry their own.")
        self.trust = QCheckBox("trust pickled code")
        self.trust.setToolTip("A pickled whole nn.Module runs code when loaded: only tick this for files you made.")
        self.summary = QLabel("No model loaded.")
        self.summary.setWordWrap(True)
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(["module", "kind", "params"])
        self.tree.header().setSectionResizeMode(NAME_COL, QHeaderView.ResizeMode.Stretch)
        self.tree.header().setStretchLastSection(False)
        self.tree.setToolTip(TREE_TIP)
        self.tree.itemChanged.connect(self._changed)
        self.all_button = QPushButton("All")
        self.all_button.setToolTip("Linearize every parameter.")
        self.all_button.clicked.connect(self.select_all)
        self.last_button = QPushButton("Last layer")
        self.last_button.setToolTip("Linearize only the last module that holds parameters (a head).")
        self.last_button.clicked.connect(self.select_last)
        self.count = QLabel("")
        buttons = QHBoxLayout()
        buttons.addWidget(self.all_button)
        buttons.addWidget(self.last_button)
        buttons.addStretch(1)
        self.count.setWordWrap(True)

        form = QFormLayout()
        form.addRow("Architecture", self.arch)
        form.addRow("", self.trust)
        layout = QVBoxLayout(self)
        layout.addWidget(self.open_button)
        layout.addLayout(form)
        layout.addWidget(self.summary)
        layout.addLayout(buttons)
        layout.addWidget(self.count)  # its own line: "2,226,434 of 2,226,434 linearized" fits any panel width
        layout.addWidget(self.tree, 1)
        self._rows: dict[str, dict] = {}
        self._items: dict[str, QTreeWidgetItem] = {}
        self._total = 0
        self._building = False

    # ------------------------------------------------------------------ from the worker
    def show_model(self, model: dict[str, Any], source: str) -> None:
        """Build the tree from the worker's module rows (all checked) and show the summary."""
        self._building = True
        self.tree.clear()
        self._rows = {r["name"]: r for r in model["modules"]}
        self._items = {}
        self._total = int(model["total_params"])
        for name, row in self._rows.items():
            parent_name = name.rpartition(".")[0] if name else None
            parent = self._items.get(parent_name) if parent_name is not None else None
            label = name.rpartition(".")[2] if name else ROOT_LABEL
            item = QTreeWidgetItem([label, row["kind"], f"{row['params']:,}"])
            item.setData(NAME_COL, Qt.ItemDataRole.UserRole, name)
            item.setTextAlignment(PARAMS_COL, Qt.AlignmentFlag.AlignRight)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable | Qt.ItemFlag.ItemIsAutoTristate)
            item.setCheckState(NAME_COL, Qt.CheckState.Checked)
            (parent.addChild(item) if parent is not None else self.tree.addTopLevelItem(item))
            self._items[name] = item
        self.tree.expandToDepth(EXPAND_DEPTH)
        self.tree.resizeColumnToContents(KIND_COL)
        self.tree.resizeColumnToContents(PARAMS_COL)
        self._building = False
        shape = model.get("output_shape")
        out = f", {shape[0]} output(s)" if shape else ""
        problem = f"\n⚠ {model['mismatch']}" if model.get("mismatch") else ""
        self.summary.setText(f"{source}: {self._total:,} parameters{out}.{problem}")
        self._update_count()

    # ------------------------------------------------------------------ subset
    def _checked(self, item: QTreeWidgetItem) -> Qt.CheckState:
        return item.checkState(NAME_COL)

    def spec(self) -> str:
        """Return the subset as the engine reads it: 'all', comma-separated module names, or '' for none."""
        if not self._items:
            return ALL
        root = self._items.get("")
        if root is not None and self._checked(root) == Qt.CheckState.Checked:
            return ALL
        chosen = []
        for name, item in self._items.items():
            parent = item.parent()
            parent_full = parent is not None and self._checked(parent) == Qt.CheckState.Checked
            if self._checked(item) == Qt.CheckState.Checked and not parent_full and name:
                chosen.append(name)
        return ",".join(chosen)

    def selected_params(self) -> int:
        """Return how many parameters the checked modules hold."""
        spec = self.spec()
        if spec == ALL:
            return self._total
        return sum(self._rows[name]["params"] for name in spec.split(",") if name)

    def set_spec(self, spec: str) -> None:
        """Check the modules named in ``spec`` ('all' or comma-separated names); uncheck the rest."""
        names = {n.strip() for n in spec.split(",") if n.strip()}
        self._building = True
        top = [self.tree.topLevelItem(i) for i in range(self.tree.topLevelItemCount())]
        for item in top:
            self._apply(item, spec == ALL, names)
        self._building = False
        self._changed()

    def _apply(self, item: QTreeWidgetItem, on: bool, names: set[str]) -> None:
        name = item.data(NAME_COL, Qt.ItemDataRole.UserRole)
        on = on or name in names
        if item.childCount() == 0:
            item.setCheckState(NAME_COL, Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)
        # Parents follow their children (auto-tristate), so a module that owns parameters and has
        # children counts as chosen only when all of its children are.
        for i in range(item.childCount()):
            self._apply(item.child(i), on, names)

    def select_all(self) -> None:
        """Check every module."""
        self.set_spec(ALL)

    def select_last(self) -> None:
        """Check only the last module that owns parameters directly."""
        owners = [name for name, row in self._rows.items() if row["own"] > 0]
        if owners:
            self.set_spec(owners[-1] or ALL)

    def _changed(self, *_: object) -> None:
        if self._building:
            return
        self._update_count()
        self.params_changed.emit()

    def _update_count(self) -> None:
        it = QTreeWidgetItemIterator(self.tree)
        if not it.value():
            self.count.setText("")
            return
        self.count.setText(f"{self.selected_params():,} of {self._total:,} linearized")
