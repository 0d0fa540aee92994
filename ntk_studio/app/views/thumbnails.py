"""Small pictures of image rows (the worker sends ≤ 32 px RGB arrays as nested lists)."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtGui import QImage, QPixmap


def thumbnail_pixmap(image, size: int) -> QPixmap:
    """Return a ``size`` px pixmap of an [h][w][3] (or [h][w]) uint8 image, smoothly scaled."""
    a = np.asarray(image, dtype=np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    a = np.ascontiguousarray(a[:, :, :3])
    h, w = a.shape[:2]
    qimage = QImage(a.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()  # copy: own the pixels
    return QPixmap.fromImage(qimage).scaled(size, size, Qt.AspectRatioMode.KeepAspectRatio,
                                            Qt.TransformationMode.SmoothTransformation)
