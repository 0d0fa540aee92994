"""Put NTK Studio into this user's application menu (Linux, freedesktop): `ntk-studio --install-desktop-entry`.

A pip install puts the `ntk-studio` launcher into the environment's bin folder but tells no
desktop about it. This copies the shipped desktop entry (with Exec pointing at this launcher by
its absolute path), the icons and the AppStream metainfo under ``$XDG_DATA_HOME`` (default
``~/.local/share``), where desktops look for per-user applications. No torch, no Qt.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from .errors import NTKStudioError
from .resources import APP_ID, ICON_SIZES, desktop_entry, icon_png, icon_svg, metainfo

LAUNCHER = "ntk-studio"
FILE_ARG = "%f"  # the desktop passes one file (a project opened from the file manager)
PROJECT_MIME = "application/x-ntkstudio-project"
# shared-mime-info package for .ntkproj (the same as resources/org.ntkstudio.NTKStudio.mime.xml).
MIME_PACKAGE = """<?xml version="1.0" encoding="UTF-8"?>
<mime-info xmlns="http://www.freedesktop.org/standards/shared-mime-info">
  <mime-type type="application/x-ntkstudio-project">
    <comment>NTK Studio project</comment>
    <sub-class-of type="application/zip"/>
    <generic-icon name="org.ntkstudio.NTKStudio"/>
    <glob pattern="*.ntkproj"/>
  </mime-type>
</mime-info>
"""
MIME_UPDATE_TIMEOUT_S = 30
RESERVED = set(" \t\n\"'\\><~|&;$*?#()`")  # characters that make the desktop-entry spec quote an Exec argument


class DesktopIntegrationError(NTKStudioError):
    """The desktop entry cannot be installed here (not Linux, or no launcher found)."""


def data_home() -> Path:
    """Return $XDG_DATA_HOME, or ~/.local/share when it is unset."""
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")


def find_launcher() -> Path:
    """Return the absolute path of the `ntk-studio` launcher of this installation."""
    if getattr(sys, "frozen", False):
        return Path(sys.executable).resolve()  # a PyInstaller build: the app binary itself
    beside = Path(sys.executable).parent / LAUNCHER  # venv/bin/ntk-studio next to venv/bin/python
    found = beside if beside.exists() else (Path(p) if (p := shutil.which(LAUNCHER)) else None)
    if found is None:
        raise DesktopIntegrationError(f"no `{LAUNCHER}` launcher was found next to {sys.executable} or on PATH; "
                                      "install NTK Studio with pip (`pip install 'ntk-studio[app]'`) first")
    return found.absolute()


def quote_exec(path: Path) -> str:
    """Return path as one Exec argument, double-quoted and escaped when the desktop-entry spec requires it."""
    text = str(path).replace("%", "%%")  # a lone % would start a field code
    if not RESERVED & set(text):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`").replace("$", "\\$")
    return f'"{escaped}"'.replace("\\", "\\\\")  # the value itself is a string: backslashes doubled again


def _targets(root: Path) -> dict[Path, Path | None]:
    """Return {installed file: shipped source} (the desktop entry's source is None: it is rewritten)."""
    files: dict[Path, Path | None] = {root / "applications" / f"{APP_ID}.desktop": None,
                                      root / "metainfo" / f"{APP_ID}.metainfo.xml": metainfo(),
                                      root / "icons" / "hicolor" / "scalable" / "apps" / f"{APP_ID}.svg": icon_svg()}
    for size in ICON_SIZES:
        files[root / "icons" / "hicolor" / f"{size}x{size}" / "apps" / f"{APP_ID}.png"] = icon_png(size)
    files[_mime_target(root)] = None  # written from MIME_PACKAGE
    return files


def install_desktop_entry(launcher: Path | None = None, root: Path | None = None) -> list[Path]:
    """Install the desktop entry, icons and metainfo for this user; return the files written."""
    if not sys.platform.startswith("linux"):
        raise DesktopIntegrationError("desktop entries are a Linux (freedesktop) feature; on this platform "
                                      "start NTK Studio with `ntk-studio`")
    launcher = launcher or find_launcher()
    root = root or data_home()
    exec_value = quote_exec(launcher)
    entry = []
    for line in desktop_entry().read_text(encoding="utf-8").splitlines():
        if line.startswith("Exec="):
            line = f"Exec={exec_value} {FILE_ARG}"
        elif line.startswith("TryExec="):
            line = f"TryExec={launcher}"
        entry.append(line)
    written = []
    mime = _mime_target(root)
    for target, source in _targets(root).items():
        target.parent.mkdir(parents=True, exist_ok=True)
        if target == mime:
            target.write_text(MIME_PACKAGE, encoding="utf-8")
        elif source is None:
            target.write_text("\n".join(entry) + "\n", encoding="utf-8")
        else:
            shutil.copyfile(source, target)
        written.append(target)
    _update_mime_database(root)
    return written


def _mime_target(root: Path) -> Path:
    return root / "mime" / "packages" / f"{APP_ID}.xml"


def _update_mime_database(root: Path) -> None:
    """Rebuild the user's MIME cache so file managers know .ntkproj (best effort: the tool may be absent)."""
    tool = shutil.which("update-mime-database")
    if tool is not None:
        subprocess.run([tool, str(root / "mime")], capture_output=True, timeout=MIME_UPDATE_TIMEOUT_S, check=False)


def uninstall_desktop_entry(root: Path | None = None) -> list[Path]:
    """Remove what `install_desktop_entry` wrote; return the files removed."""
    removed = []
    for target in _targets(root or data_home()):
        if target.exists():
            target.unlink()
            removed.append(target)
    return removed
