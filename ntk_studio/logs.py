"""The rotating log file: set-up, its tail, and the bug-report text built from it.

The desktop app attaches one `RotatingFileHandler` to the ``ntk_studio`` logger at start-up, so
the window's log panel, the worker client's crash/restart notes and start-up failures all land in
``<user log dir>/ntk-studio.log`` (see `ntk_studio.paths`). The worker process does not write
the file itself (its stderr is collected by the client), so only one process rotates it. Logging
never stops the app: when the file cannot be opened, `setup_file_logging` returns None. No torch,
no Qt.
"""

from __future__ import annotations

import importlib.metadata
import logging
import logging.handlers
import platform
import sys
from collections import deque
from pathlib import Path

from ntk_studio import __version__

from .paths import user_dirs

ROOT_LOGGER = "ntk_studio"
LOG_FILE_NAME = "ntk-studio.log"
LOG_MAX_BYTES = 1 << 20  # rotate at 1 MiB ...
LOG_BACKUPS = 3  # ... keeping ntk-studio.log.1 .. .3: at most 4 MiB on disk
LOG_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"
REPORT_LOG_LINES = 200  # log lines a bug report carries
REPORT_PACKAGES = ("torch", "gpytorch", "linear_operator", "numpy", "scipy", "PySide6-Essentials", "PySide6",
                   "pyqtgraph", "platformdirs", "onnx", "onnxruntime")
_MARK = "_ntk_studio_file_handler"  # attribute that marks our handler, so set-up is idempotent


def log_file() -> Path:
    """Return the path of the current log file (it may not exist yet)."""
    return user_dirs().log / LOG_FILE_NAME


def setup_file_logging(level: int = logging.INFO, path: Path | None = None) -> Path | None:
    """Attach the rotating file handler to the ``ntk_studio`` logger; return the file, or None if unwritable.

    Calling it again replaces the previous handler (a new path or level takes effect).
    """
    path = Path(path) if path is not None else log_file()
    logger = logging.getLogger(ROOT_LOGGER)
    for handler in [h for h in logger.handlers if getattr(h, _MARK, False)]:
        logger.removeHandler(handler)
        handler.close()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(path, maxBytes=LOG_MAX_BYTES, backupCount=LOG_BACKUPS,
                                                       encoding="utf-8", delay=False)
    except OSError as exc:
        print(f"NTK Studio: cannot write the log file {path} ({exc.strerror or exc}); logging to it is off.",
              file=sys.stderr)
        return None
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.setLevel(level)
    setattr(handler, _MARK, True)
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > level:
        logger.setLevel(level)
    return path


def read_log_tail(max_lines: int = REPORT_LOG_LINES, path: Path | None = None) -> list[str]:
    """Return the last `max_lines` lines of the log (reaching into the rotated file when needed)."""
    path = Path(path) if path is not None else log_file()
    tail: deque[str] = deque(maxlen=max_lines)
    for part in (path.with_name(path.name + ".1"), path):  # oldest first
        try:
            with open(part, encoding="utf-8", errors="replace") as f:
                tail.extend(line.rstrip("\n") for line in f)
        except FileNotFoundError:
            continue
    return list(tail)


def _package_versions() -> dict[str, str]:
    found = {}
    for name in REPORT_PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def bug_report(extra: dict[str, str] | None = None, max_lines: int = REPORT_LOG_LINES) -> str:
    """Return a plain-text bug report: versions, platform, user folders and the log's last lines."""
    dirs = user_dirs()
    lines = ["NTK Studio bug report", "",
             f"ntk-studio {__version__}",
             f"python {platform.python_version()} ({sys.executable})",
             f"platform {platform.platform()}",
             f"frozen {bool(getattr(sys, 'frozen', False))}"]
    lines += [f"{name} {version}" for name, version in _package_versions().items()]
    lines += [f"{key}: {value}" for key, value in (extra or {}).items()]
    lines += [f"settings folder: {dirs.config}", f"log file: {log_file()}", "",
              f"--- last {max_lines} log lines ---"]
    lines += read_log_tail(max_lines) or ["(the log is empty)"]
    return "\n".join(lines) + "\n"
