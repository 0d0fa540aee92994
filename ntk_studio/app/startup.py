"""Start-up of the desktop app: identity, icon, log file, settings, Help menu, readable failures.

`ntk_studio.app.main` calls into this module: `add_arguments`/`early_exit` for the flags that need
no window, `gui_problem` before Qt is touched (Qt aborts the process on a missing platform plugin
or display, so those are found first), `create_application` for the application's identity, and
`decorate` once the main window exists. `startup_failed` turns an exception during start-up into
one readable message (stderr, the log file, and a dialog when there is a screen to show it on).
Qt is imported lazily so that a missing PySide6 still ends in a message.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from pathlib import Path

from ntk_studio import __version__
from ntk_studio.logs import bug_report, log_file, setup_file_logging
from ntk_studio.paths import user_dirs
from ntk_studio.resources import APP_ID, ICON_SIZES, icon_png
from ntk_studio.user_settings import load_settings, save_settings

APP_NAME = "NTK Studio"  # also the X11 WM_CLASS class, matched by StartupWMClass in the desktop file
ORGANIZATION = "NTK Studio"
ORGANIZATION_DOMAIN = "ntkstudio.org"
ARGV0 = "ntk-studio"  # the X11 WM_CLASS instance, the same however the app was launched
EXIT_FAILED = 1
GEOMETRY_KEY = "window_geometry"

log = logging.getLogger("ntk_studio.app")


# ---------------------------------------------------------------- before Qt
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the start-up flags that need no window (desktop entry, bug report) to the app's parser."""
    parser.add_argument("--install-desktop-entry", action="store_true",
                        help="add NTK Studio to this user's application menu (Linux) and exit")
    parser.add_argument("--uninstall-desktop-entry", action="store_true",
                        help="remove what --install-desktop-entry added and exit")
    parser.add_argument("--bug-report", action="store_true",
                        help="print versions, folders and the log's last lines for a bug report, and exit")


def early_exit(args: argparse.Namespace) -> int | None:
    """Handle the flags that need no window; return the exit code, or None to go on starting the app."""
    from ntk_studio.desktop_entry import install_desktop_entry, uninstall_desktop_entry
    from ntk_studio.errors import NTKStudioError

    try:
        if getattr(args, "install_desktop_entry", False):
            for path in install_desktop_entry():
                print(f"installed {path}")
            return 0
        if getattr(args, "uninstall_desktop_entry", False):
            removed = uninstall_desktop_entry()
            print("\n".join(f"removed {p}" for p in removed) or "nothing to remove")
            return 0
    except NTKStudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if getattr(args, "bug_report", False):
        print(bug_report(), end="")
        return 0
    return None


def gui_problem() -> str | None:
    """Return why no window can be opened here (GUI packages, platform plugin, display), or None."""
    setup_file_logging()
    try:
        import pyqtgraph  # noqa: F401 - the window needs it; a broken install should fail here, readably
        from PySide6.QtCore import QLibraryInfo
    except ImportError as exc:
        why = f"the GUI packages are missing ({exc}); install them with `pip install 'ntk-studio[app]'`"
    else:
        from .platform_check import platform_problem

        why = platform_problem(Path(QLibraryInfo.path(QLibraryInfo.LibraryPath.PluginsPath)))
    if why is not None:
        log.warning("no window: %s", why)
    return why


# ---------------------------------------------------------------- with Qt
def app_icon():
    """Return the QIcon with every shipped size (the window, taskbar and dialogs pick the best one)."""
    from PySide6.QtCore import QSize
    from PySide6.QtGui import QIcon

    icon = QIcon()
    for size in ICON_SIZES:
        icon.addFile(str(icon_png(size)), QSize(size, size))
    return icon


def create_application():
    """Return the QApplication with NTK Studio's name, organization, version, desktop file name and icon."""
    from PySide6.QtWidgets import QApplication

    from .platform_check import release_x_probe

    app = QApplication.instance() or QApplication([ARGV0])
    release_x_probe()
    app.setApplicationName(APP_NAME)
    app.setOrganizationName(ORGANIZATION)
    app.setOrganizationDomain(ORGANIZATION_DOMAIN)
    app.setApplicationVersion(__version__)
    app.setDesktopFileName(APP_ID)  # Wayland app_id; lets the shell match the window to its desktop entry
    app.setWindowIcon(app_icon())
    _log_uncaught_exceptions()
    log.info("NTK Studio %s starting (Qt platform %s, log %s)", __version__, app.platformName(), log_file())
    return app


def decorate(window) -> None:
    """Give the main window its icon, saved geometry (saved again on quit) and a Help menu."""
    from PySide6.QtCore import QByteArray
    from PySide6.QtWidgets import QApplication

    window.setWindowIcon(app_icon())
    saved = load_settings().get(GEOMETRY_KEY)
    if isinstance(saved, str):
        window.restoreGeometry(QByteArray.fromBase64(saved.encode("ascii")))

    def remember() -> None:
        values = load_settings()
        values[GEOMETRY_KEY] = bytes(window.saveGeometry().toBase64()).decode("ascii")
        try:
            save_settings(values)
        except OSError as exc:
            log.warning("could not save the settings: %s", exc)

    QApplication.instance().aboutToQuit.connect(remember)
    _add_help_menu(window)


def _add_help_menu(window) -> None:
    from PySide6.QtCore import QUrl
    from PySide6.QtGui import QDesktopServices, QGuiApplication
    from PySide6.QtWidgets import QMessageBox

    menu = window.menuBar().addMenu("&Help")

    def copy_report() -> None:
        QGuiApplication.clipboard().setText(bug_report())
        window.statusBar().showMessage("Bug report copied to the clipboard (versions and the log's last lines).")

    def open_logs() -> None:
        folder = user_dirs().log
        folder.mkdir(parents=True, exist_ok=True)
        QDesktopServices.openUrl(QUrl.fromLocalFile(str(folder)))

    def about() -> None:
        QMessageBox.about(window, f"About {APP_NAME}",
                          f"<b>{APP_NAME} {__version__}</b><p>Adapt pretrained PyTorch models with the "
                          f"linearized network's Gaussian process (finite NTK).</p>"
                          f"<p>Log file: {log_file()}<br>Settings: {user_dirs().config}</p>")

    menu.addAction("Copy &Bug Report", copy_report).setObjectName("copy_bug_report")
    menu.addAction("Open &Log Folder", open_logs).setObjectName("open_log_folder")
    menu.addSeparator()
    menu.addAction(f"&About {APP_NAME}", about).setObjectName("about")


# ---------------------------------------------------------------- failures
def startup_failed(exc: BaseException, interactive: bool = True) -> int:
    """Report an exception raised while the window was being built; return the exit code.

    The traceback goes to the log file only; stderr gets one readable paragraph and, when a
    QApplication exists and `interactive` is set, a dialog shows the same text.
    """
    log.error("start-up failed", exc_info=(type(exc), exc, exc.__traceback__))
    text = (f"NTK Studio could not start: {type(exc).__name__}: {exc}\n"
            f"The details are in the log file {log_file()}.\n"
            f"`ntk-studio --bug-report` prints what a bug report needs; the command line "
            f"(`ntk-studio-cli demo`) may still work.")
    print(text, file=sys.stderr)
    if interactive:
        from PySide6.QtWidgets import QApplication, QMessageBox

        if QApplication.instance() is not None:
            box = QMessageBox(QMessageBox.Icon.Critical, f"{APP_NAME} could not start", text)
            box.setDetailedText("".join(traceback.format_exception(exc)))
            box.exec()
    return EXIT_FAILED


def _log_uncaught_exceptions() -> None:
    """Send exceptions that escape Qt slots to the log file too (only if nobody else hooked them)."""
    if sys.excepthook is not sys.__excepthook__:
        return  # a test harness (pytest-qt) or a debugger owns the hook

    def hook(kind, value, tb) -> None:
        log.error("uncaught exception", exc_info=(kind, value, tb))
        sys.__excepthook__(kind, value, tb)

    sys.excepthook = hook
