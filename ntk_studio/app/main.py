"""`ntk-studio`: start the desktop app (optionally run once, take a screenshot, and quit)."""

from __future__ import annotations

import argparse
import os
import sys

from ntk_studio import __version__

APP_NAME = "NTK Studio"
ORGANIZATION = "NTK Studio"
DESKTOP_FILE = "org.ntkstudio.NTKStudio"
EXAMPLES = ("sine",)  # 1-D regression examples the window can plot
EXIT_OK, EXIT_FAILED, EXIT_NO_GUI = 0, 1, 2
NO_GUI_HINT = ("NTK Studio cannot open a window: {why}.\n"
               "Run it on a desktop session (or under `xvfb-run`), or use the command line instead:\n"
               "    ntk-studio-cli demo\n    ntk-studio-cli adapt --example sine")
HEADLESS_PLATFORMS = ("offscreen", "minimal", "vnc")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ntk-studio", description="Adapt pretrained PyTorch models "
                                "with the linearized network's Gaussian process, and watch it live.")
    p.add_argument("--example", choices=EXAMPLES, default="sine", help="built-in example to open (default: sine)")
    p.add_argument("--run", action="store_true", help="start Adapt as soon as the example is loaded")
    p.add_argument("--screenshot", metavar="PATH", help="save the window as PNG after the run finishes")
    p.add_argument("--quit", action="store_true", help="exit after the run (and screenshot); non-zero on failure")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def _display_problem() -> str | None:
    """Return why Qt would fail to open a window here, or None when it should work."""
    platform = os.environ.get("QT_QPA_PLATFORM", "")
    if not sys.platform.startswith("linux") or platform.split(":")[0] in HEADLESS_PLATFORMS:
        return None
    if platform.startswith("wayland"):
        return None if os.environ.get("WAYLAND_DISPLAY") else "WAYLAND_DISPLAY is not set"
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return None
    return "no display was found (DISPLAY is not set)"


def _save(window, path: str) -> bool:
    """Save a PNG of the window; return whether it was written."""
    if window.grab().save(str(path), "PNG"):
        print(f"screenshot: {path}")
        return True
    print(f"could not write the screenshot {path}", file=sys.stderr)
    return False


def main(argv: list[str] | None = None) -> int:
    """Run the app; return the exit code (2 when no window can be opened)."""
    args = _parser().parse_args(argv)
    why = _display_problem()
    if why is None:
        try:
            from PySide6.QtWidgets import QApplication

            from .main_window import MainWindow
        except ImportError as exc:
            why = f"the GUI packages are missing ({exc}); install them with `pip install 'ntk-studio[app]'`"
    if why is not None:
        print(NO_GUI_HINT.format(why=why), file=sys.stderr)
        return EXIT_NO_GUI

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName(APP_NAME)
    app.setOrganizationName(ORGANIZATION)
    app.setApplicationVersion(__version__)
    app.setDesktopFileName(DESKTOP_FILE)
    window = MainWindow(args.example, interactive_errors=not args.quit)
    state = {"code": EXIT_OK, "phase": "load"}

    def finished(ok: bool) -> None:
        if ok and state["phase"] == "load" and args.run:
            state["phase"] = "run"  # the example is loaded: now the run itself
            window.adapt()
            return
        if state["phase"] == "done":
            return  # later runs started by the user
        state["phase"] = "done"
        if not ok:
            state["code"] = EXIT_FAILED
        if args.screenshot and not _save(window, args.screenshot):
            state["code"] = EXIT_FAILED
        if args.quit:
            for message, _ in window.errors:
                print(f"error: {message}", file=sys.stderr)
            window.close()
            app.exit(state["code"])

    window.run_finished.connect(finished)
    window.show()
    code = app.exec()
    window.bridge.shutdown()
    return code if args.quit else EXIT_OK
