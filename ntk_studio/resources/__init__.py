"""Desktop resources shipped inside the package: the app icon, the desktop entry, the AppStream metainfo.

These are copies of the files under the repository's ``resources/`` folder, made by
``packaging/render_icons.py`` (a test fails when they drift apart). They live in the package so
that an installed wheel or a PyInstaller build can find them. Importing this module is cheap: no
torch, no Qt.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

APP_ID = "org.ntkstudio.NTKStudio"  # reverse-DNS id: desktop file, icon name, AppStream id
ICON_SIZES = (16, 24, 32, 48, 64, 128, 256, 512)


def resource_path(name: str) -> Path:
    """Return the path of one shipped resource file (it exists in any on-disk install)."""
    return Path(str(resources.files(__name__) / name))


def icon_png(size: int) -> Path:
    """Return the path of the app icon rendered at size x size pixels (one of ICON_SIZES)."""
    if size not in ICON_SIZES:
        raise ValueError(f"no {size}px icon is shipped; sizes: {ICON_SIZES}")
    return resource_path(f"{APP_ID}-{size}.png")


def icon_svg() -> Path:
    """Return the path of the scalable app icon (the SVG master)."""
    return resource_path(f"{APP_ID}.svg")


def desktop_entry() -> Path:
    """Return the path of the freedesktop desktop entry (its Exec is the bare `ntk-studio`)."""
    return resource_path(f"{APP_ID}.desktop")


def metainfo() -> Path:
    """Return the path of the AppStream metainfo file."""
    return resource_path(f"{APP_ID}.metainfo.xml")
