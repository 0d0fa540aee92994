"""`ntk-studio`: start the desktop app (optionally run once, take a screenshot, and quit)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ntk_studio import __version__
from ntk_studio.example_catalog import EXAMPLE_NAMES

from . import startup

EXAMPLES = EXAMPLE_NAMES  # built-in examples the window opens
EXIT_OK, EXIT_FAILED, EXIT_NO_GUI = 0, 1, 2
NO_GUI_HINT = ("NTK Studio cannot open a window: {why}.\n"
               "Run it on a desktop session (or under `xvfb-run`), or use the command line instead:\n"
               "    ntk-studio-cli demo\n    ntk-studio-cli adapt --example sine")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ntk-studio", description="Adapt pretrained PyTorch models "
                                "with the linearized network's Gaussian process, and watch it live.")
    p.add_argument("path", nargs="?", help="a project (.ntkproj), model or data file to open instead of an example")
    p.add_argument("--example", choices=EXAMPLES, default="sine", help="built-in example to open (default: sine)")
    p.add_argument("--run", action="store_true", help="start Adapt as soon as the example is loaded")
    p.add_argument("--screenshot", metavar="PATH", help="save the window as PNG after the run finishes")
    p.add_argument("--quit", action="store_true", help="exit after the run (and screenshot); non-zero on failure")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    startup.add_arguments(p)
    return p


def _save(window, path: str) -> bool:
    """Save a PNG of the window; return whether it was written."""
    if window.grab().save(str(path), "PNG"):
        print(f"screenshot: {path}")
        return True
    print(f"could not write the screenshot {path}", file=sys.stderr)
    return False


def _open_window(window_class, args: argparse.Namespace):
    """Return the main window opening ``args.path`` (a project, model or data file) or the example."""
    from .session import file_kind

    interactive = not args.quit
    if not args.path:
        return window_class(args.example, interactive_errors=interactive)
    kind = file_kind(args.path, Path(args.path).is_dir())
    if kind == "project":
        return window_class(None, interactive_errors=interactive, project=args.path)
    window = window_class(args.example if kind == "model" or kind == "data" else None, interactive_errors=interactive)
    if kind is None:
        window.show_error("File not opened", f"{args.path}: NTK Studio opens .ntkproj projects, model and data files.")
    else:
        def after_example(_ok: bool) -> None:  # one chain at a time: the file loads once the example has
            window.run_finished.disconnect(after_example)
            window.open_path(args.path)

        window.run_finished.connect(after_example)
    return window


def main(argv: list[str] | None = None) -> int:
    """Run the app; return the exit code (2 when no window can be opened)."""
    args = _parser().parse_args(argv)
    if (code := startup.early_exit(args)) is not None:
        return code
    if (why := startup.gui_problem()) is not None:
        print(NO_GUI_HINT.format(why=why), file=sys.stderr)
        return EXIT_NO_GUI
    app = startup.create_application()
    try:
        from .main_window import MainWindow

        window = _open_window(MainWindow, args)
    except Exception as exc:  # noqa: BLE001 - any start-up failure becomes one readable message
        return startup.startup_failed(exc, interactive=not args.quit)
    startup.decorate(window)
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
