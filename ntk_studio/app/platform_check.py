"""Why Qt could not open a window here, found before Qt tries (Qt aborts the process when it fails).

Qt ends the process with a fatal error (SIGABRT, no Python exception) when its platform plugin
cannot load or the display cannot be reached, so these checks run first and return a sentence
that `ntk_studio.app.startup` turns into a readable message pointing at the CLI:

- no display at all (neither DISPLAY nor WAYLAND_DISPLAY);
- ``QT_QPA_PLATFORM`` names a plugin that is not installed;
- the X11 plugin (``libqxcb.so``) cannot be loaded: a system library is missing (typically
  ``libxcb-cursor0``; the message names the Debian package);
- DISPLAY is set but no X server answers there.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import sys
from pathlib import Path

HEADLESS_PLATFORMS = ("offscreen", "minimal", "vnc")  # plugins that need no display server
XCB_PLUGIN = "libqxcb.so"
# The X11 libraries Qt's xcb plugin needs that a minimal system often lacks: soname -> Debian package.
DEBIAN_PACKAGES = {
    "libxcb-cursor.so.0": "libxcb-cursor0", "libxcb-icccm.so.4": "libxcb-icccm4",
    "libxcb-keysyms.so.1": "libxcb-keysyms1", "libxkbcommon-x11.so.0": "libxkbcommon-x11-0",
    "libxcb-image.so.0": "libxcb-image0", "libxcb-render-util.so.0": "libxcb-render-util0",
    "libxcb-shape.so.0": "libxcb-shape0", "libxcb-randr.so.0": "libxcb-randr0",
    "libxcb-xinerama.so.0": "libxcb-xinerama0", "libxcb-xkb.so.1": "libxcb-xkb1",
    "libEGL.so.1": "libegl1", "libGL.so.1": "libgl1", "libfontconfig.so.1": "libfontconfig1",
    "libdbus-1.so.3": "libdbus-1-3", "libxkbcommon.so.0": "libxkbcommon0", "libxcb.so.1": "libxcb1",
}
ALL_X11_PACKAGES = " ".join(dict.fromkeys(DEBIAN_PACKAGES.values()))
_held: list[tuple[ctypes.CDLL, int]] = []  # the X connection of the last successful probe


def _requested_platforms() -> list[str]:
    """Return the plugin names QT_QPA_PLATFORM asks for ('wayland;xcb' is a fallback list), or []."""
    value = os.environ.get("QT_QPA_PLATFORM", "")
    return [part.split(":")[0].strip() for part in value.split(";") if part.strip()]


def _installed_platforms(plugins_dir: Path) -> dict[str, Path]:
    """Return {plugin name: file} for the platform plugins installed under plugins_dir."""
    found = {}
    for path in (plugins_dir / "platforms").glob("libq*.so*"):
        found[re.sub(r"^libq|\.so.*$", "", path.name)] = path
    return found


def xcb_plugin_problem(plugin: Path) -> str | None:
    """Return why the X11 platform plugin cannot be loaded (a missing system library), or None."""
    try:
        ctypes.CDLL(str(plugin))  # the same dlopen Qt does; it resolves every library the plugin needs
    except OSError as exc:
        text = str(exc)
        missing = re.search(r"(lib[\w.+-]+\.so[\w.]*): cannot open shared object file", text)
        if missing:
            package = DEBIAN_PACKAGES.get(missing.group(1))
            fix = (f"`apt-get install {package}`" if package
                   else f"install the system package that provides {missing.group(1)}")
            return (f"Qt's X11 plugin needs the system library {missing.group(1)}, which is not installed "
                    f"(Debian/Ubuntu: {fix}; all X11 libraries Qt uses: `apt-get install {ALL_X11_PACKAGES}`)")
        return f"Qt's X11 plugin {plugin.name} cannot be loaded: {text}"
    return None


def x_server_problem(display: str) -> str | None:
    """Return why no X server answers on `display`, or None when one does (or libxcb is absent)."""
    name = ctypes.util.find_library("xcb") or "libxcb.so.1"
    try:
        xcb = ctypes.CDLL(name)
    except OSError:
        return None  # the plugin check reports the missing library
    xcb.xcb_connect.restype = ctypes.c_void_p
    xcb.xcb_connect.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
    xcb.xcb_connection_has_error.argtypes = [ctypes.c_void_p]
    xcb.xcb_disconnect.argtypes = [ctypes.c_void_p]
    conn = xcb.xcb_connect(display.encode(), None)
    if xcb.xcb_connection_has_error(conn) != 0:
        xcb.xcb_disconnect(conn)
        return f"no X server answers on DISPLAY={display}"
    # Keep it open until Qt has its own connection: an X server whose last client leaves resets
    # (Xvfb under xvfb-run does), and Qt connecting during that reset aborts the process.
    _held.append((xcb, conn))
    return None


def release_x_probe() -> None:
    """Close the connection `x_server_problem` kept open (call it once Qt is connected)."""
    while _held:
        xcb, conn = _held.pop()
        xcb.xcb_disconnect(conn)


def platform_problem(plugins_dir: Path) -> str | None:
    """Return why Qt would fail to open a window with the plugins in plugins_dir, or None when it should work."""
    if not sys.platform.startswith("linux"):
        return None
    installed = _installed_platforms(plugins_dir)
    requested = _requested_platforms()
    unknown = [name for name in requested if name not in installed]
    if requested and len(unknown) == len(requested):
        return (f"QT_QPA_PLATFORM asks for the Qt platform plugin {', '.join(map(repr, unknown))}, which is not "
                f"installed (installed: {', '.join(sorted(installed))})")
    first = next((name for name in requested if name in installed), None)
    if first in HEADLESS_PLATFORMS:
        return None
    wayland, display = os.environ.get("WAYLAND_DISPLAY"), os.environ.get("DISPLAY")
    if first == "wayland" or (first is None and wayland and os.environ.get("XDG_SESSION_TYPE") == "wayland"):
        return None if wayland else "WAYLAND_DISPLAY is not set"
    if first not in (None, "xcb"):
        return None  # eglfs, linuxfb, ...: the user chose a special platform on purpose
    if not display:
        return "no display was found (DISPLAY is not set)" if not wayland else None
    if "xcb" in installed:
        return xcb_plugin_problem(installed["xcb"]) or x_server_problem(display)
    return f"Qt's X11 platform plugin is missing from {plugins_dir / 'platforms'}"
