"""Render the icon PNGs from the SVG master and copy the desktop resources into the package.

    python packaging/render_icons.py          # after editing anything under resources/

Writes resources/icons/hicolor/<N>x<N>/apps/<APP_ID>.png for every size in ICON_SIZES (the
freedesktop icon-theme layout, ready to copy into /usr/share/icons or ~/.local/share/icons) and
mirrors the icon, the desktop entry and the AppStream metainfo into ntk_studio/resources/, which
ships in the wheel (the window icon and `ntk-studio --install-desktop` read them from there).
tests/test_packaging_resources.py fails when the two copies drift apart.

Needs PySide6 with QtSvg (the `app` extra); runs with Qt's offscreen platform, no display.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APP_ID = "org.ntkstudio.NTKStudio"
ICON_SIZES = (16, 24, 32, 48, 64, 128, 256, 512)
RESOURCES = ROOT / "resources"
HICOLOR = RESOURCES / "icons" / "hicolor"
SVG_MASTER = HICOLOR / "scalable" / "apps" / f"{APP_ID}.svg"
PACKAGE_RESOURCES = ROOT / "ntk_studio" / "resources"
# Files copied verbatim into the package: (source under resources/, name in the package).
MIRRORED = [(SVG_MASTER, f"{APP_ID}.svg"),
            (RESOURCES / f"{APP_ID}.desktop", f"{APP_ID}.desktop"),
            (RESOURCES / f"{APP_ID}.metainfo.xml", f"{APP_ID}.metainfo.xml")]


def png_path(size: int) -> Path:
    """Return where the PNG of one icon size lives under resources/."""
    return HICOLOR / f"{size}x{size}" / "apps" / f"{APP_ID}.png"


def package_png_name(size: int) -> str:
    """Return the file name of one icon size inside ntk_studio/resources/."""
    return f"{APP_ID}-{size}.png"


def render(svg: Path, size: int):
    """Return a QImage of the SVG rendered at size x size (transparent background)."""
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    renderer = QSvgRenderer(str(svg))
    if not renderer.isValid():
        raise SystemExit(f"{svg} is not a valid SVG for Qt")
    image = QImage(size, size, QImage.Format.Format_ARGB32)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
    renderer.render(painter)
    painter.end()
    return image


def main() -> int:
    """Render and mirror everything; return the exit code."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtGui import QGuiApplication

    app = QGuiApplication.instance() or QGuiApplication(sys.argv[:1])  # noqa: F841 - QImage needs it
    PACKAGE_RESOURCES.mkdir(exist_ok=True)
    for size in ICON_SIZES:
        target = png_path(size)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not render(SVG_MASTER, size).save(str(target), "PNG"):
            raise SystemExit(f"could not write {target}")
        shutil.copyfile(target, PACKAGE_RESOURCES / package_png_name(size))
        print(f"{target.relative_to(ROOT)}  ({target.stat().st_size:,} bytes)")
    for source, name in MIRRORED:
        shutil.copyfile(source, PACKAGE_RESOURCES / name)
        print(f"{source.relative_to(ROOT)} -> ntk_studio/resources/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
