"""Look at one example: the side panel a click on a plotted point opens, and the classifier's gallery.

`ExamplePanel` shows a row's input (feature values, or the image), its true target or class and each
method's prediction. `ExampleGallery` shows a few held-out images beside the class-probability plot:
the linearized classifier's most confident mistakes and least confident right answers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtWidgets import QFrame, QGridLayout, QLabel, QToolButton, QVBoxLayout, QWidget

from ..numbers import fmt
from .thumbnails import thumbnail_pixmap

PANEL_WIDTH = 230
IMAGE_PX = 96  # the clicked image, in pixels
GALLERY_PX = 48  # gallery thumbnails
GALLERY_COLUMNS = 2  # images per gallery row (row 1: surest mistakes, row 2: least sure right answers)
MAX_FEATURES = 12  # feature values listed (wider rows end with "…")
METHOD_NAMES = {"gp": "linearized", "finetuned": "fine-tuned", "unadapted": "pretrained", "trajectory": "GD step t"}


@dataclass
class Example:
    """What the panel shows about one row; ``data_row`` is its position in the loaded data (None: unknown)."""

    title: str
    truth: str
    predictions: list[tuple[str, str]] = field(default_factory=list)
    inputs: list[tuple[str, str]] = field(default_factory=list)
    image: list | None = None
    data_row: int | None = None
    note: str = ""  # after "predicted": what the numbers are, e.g. " (mean ± σ)"


def row_inputs(rows: dict | None, i: int) -> tuple[list[tuple[str, str]], list | None, int | None]:
    """Return (feature name/value pairs, thumbnail, data row) of held-out row ``i`` from a ``test_rows`` payload."""
    rows = rows or {}
    index = rows.get("index") or []
    data_row = int(index[i]) if i < len(index) else None
    thumbs = rows.get("thumbnails") or []
    if thumbs:
        return [], (thumbs[i] if i < len(thumbs) else None), data_row
    values = rows.get("inputs") or []
    if i >= len(values):
        return [], None, data_row
    names = list(rows.get("feature_names") or [])
    pairs = [(names[j] if j < len(names) else f"x{j}", fmt(float(v))) for j, v in enumerate(values[i])]
    if len(pairs) > MAX_FEATURES:
        pairs = pairs[:MAX_FEATURES] + [("…", f"{len(pairs) - MAX_FEATURES} more")]
    return pairs, None, data_row


def class_text(probs: np.ndarray, names: list[str]) -> str:
    """Return 'cat (p = 0.83)' for one row's probabilities."""
    k = int(np.argmax(probs))
    return f"{names[k] if k < len(names) else k} (p = {fmt(float(probs[k]), digits=2)})"


class ExamplePanel(QFrame):
    """A small, non-modal side panel describing the clicked example; × closes it."""

    closed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setFixedWidth(PANEL_WIDTH)
        self.title = QLabel()
        self.title.setWordWrap(True)
        self.title.setStyleSheet("font-weight: bold")
        close = QToolButton()
        close.setText("×")
        close.setToolTip("Close the example panel")
        close.setAutoRaise(True)
        close.clicked.connect(self.hide)
        close.clicked.connect(self.closed)
        head = QGridLayout()
        head.addWidget(self.title, 0, 0)
        head.addWidget(close, 0, 1, Qt.AlignmentFlag.AlignTop)
        self.image = QLabel()
        self.image.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.body = QLabel()
        self.body.setWordWrap(True)
        self.body.setTextFormat(Qt.TextFormat.RichText)
        self.body.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.body.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 4, 6, 4)
        layout.addLayout(head)
        layout.addWidget(self.image)
        layout.addWidget(self.body, 1)
        self.example: Example | None = None
        self.hide()

    def show_example(self, example: Example) -> None:
        """Fill the panel with ``example`` and show it."""
        self.example = example
        self.title.setText(example.title)
        self.image.setVisible(example.image is not None)
        if example.image is not None:
            self.image.setPixmap(thumbnail_pixmap(example.image, IMAGE_PX))
        rows = [f"<tr><td>{name}</td><td align='right'>{value}</td></tr>" for name, value in example.inputs]
        preds = [f"<tr><td>{name}</td><td align='right'>{value}</td></tr>" for name, value in example.predictions]
        html = (f"<table width='100%'>{''.join(rows)}</table>" if rows else "")
        html += f"<p><b>true:</b> {example.truth}</p>"
        html += (f"<b>predicted</b>{example.note}<table width='100%'>{''.join(preds)}</table>" if preds
                 else "<i>no predictions yet</i>")
        self.body.setText(html)
        self.show()

    def text(self) -> str:
        """Return the panel's words (title and body, markup removed), for tests and accessibility."""
        return self.title.text() + "\n" + re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", self.body.text())).strip()


class ExampleGallery(QWidget):
    """Held-out images with the linearized classifier's prediction, two rows; a click inspects the row."""

    example_clicked = Signal(int)  # held-out row

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.grid = QGridLayout(self)
        self.grid.setContentsMargins(2, 0, 2, 0)
        self.grid.setSpacing(2)
        heading = QLabel("Linearized classifier")
        heading.setStyleSheet("font-weight: bold")
        heading.setToolTip("Held-out images the linearized classifier got wrong with the highest probability, "
                           "and got right with the lowest.")
        self.grid.addWidget(heading, 0, 0, 1, GALLERY_COLUMNS)
        self.row_labels = [QLabel("✗ surest mistakes"), QLabel("✓ least sure right answers")]
        for n, label in enumerate(self.row_labels):
            self.grid.addWidget(label, 1 + 2 * n, 0, 1, GALLERY_COLUMNS)
        self.buttons: list[QToolButton] = []
        self.rows: list[int] = []
        self.hide()

    def set_examples(self, thumbs: list, labels: np.ndarray, probs: np.ndarray, names: list[str]) -> None:
        """Show the most confident wrong and least confident right rows that have a thumbnail (hide when none)."""
        for button in self.buttons:
            self.grid.removeWidget(button)
            button.deleteLater()
        self.buttons, self.rows = [], []
        n = min(len(thumbs), len(labels), len(probs))
        if n == 0:
            self.hide()
            return
        pred, conf = probs[:n].argmax(1), probs[:n].max(1)
        wrong = [int(i) for i in np.argsort(-conf, kind="stable") if pred[i] != labels[i]][:GALLERY_COLUMNS]
        right = [int(i) for i in np.argsort(conf, kind="stable") if pred[i] == labels[i]][:GALLERY_COLUMNS]
        for line, (rows, verdict) in enumerate(((wrong, "wrong"), (right, "right"))):
            self.row_labels[line].setVisible(bool(rows))
            for column, i in enumerate(rows):
                self.grid.addWidget(self._button(i, thumbs[i], int(labels[i]), probs[i], names, verdict),
                                    2 + 2 * line, column)
        self.setVisible(bool(self.buttons))

    def _button(self, i: int, thumb, label: int, probs: np.ndarray, names: list[str], verdict: str) -> QToolButton:
        button = QToolButton()
        button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextUnderIcon)
        button.setIcon(thumbnail_pixmap(thumb, GALLERY_PX))
        button.setIconSize(QSize(GALLERY_PX, GALLERY_PX))
        button.setText(class_text(probs, names))
        true = names[label] if label < len(names) else str(label)
        button.setToolTip(f"Held-out example {i + 1:,}: true class {true}; the linearized classifier is "
                          f"{'wrong, confidently' if verdict == 'wrong' else 'right, but least sure'}. "
                          "Click for every method's prediction.")
        button.setAutoRaise(True)
        button.clicked.connect(lambda _=False, row=i: self.example_clicked.emit(row))
        self.buttons.append(button)
        self.rows.append(i)
        return button
