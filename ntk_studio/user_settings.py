"""User settings: one versioned JSON file in the user config folder, written atomically.

The desktop app keeps what should survive a restart here (window geometry, the last example). A
missing file gives the defaults; an unreadable or foreign one is moved aside to
``settings.json.bad`` and the defaults are used, so a broken file never stops the app. No torch,
no Qt.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from .paths import user_dirs

SETTINGS_FILE_NAME = "settings.json"
SETTINGS_VERSION = 1
BAD_SUFFIX = ".bad"

log = logging.getLogger("ntk_studio.settings")


def settings_file() -> Path:
    """Return the path of the settings file (it may not exist yet)."""
    return user_dirs().config / SETTINGS_FILE_NAME


def load_settings(path: Path | None = None) -> dict[str, Any]:
    """Return the stored settings (without the version key); {} when there are none or they are unreadable."""
    path = Path(path) if path is not None else settings_file()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        _set_aside(path, f"unreadable ({exc})")
        return {}
    if not isinstance(data, dict) or data.get("version") != SETTINGS_VERSION:
        found = data.get("version") if isinstance(data, dict) else type(data).__name__
        _set_aside(path, f"version {found!r}, expected {SETTINGS_VERSION}")
        return {}
    data.pop("version")
    return data


def save_settings(values: dict[str, Any], path: Path | None = None) -> Path:
    """Write the settings atomically (temp file + rename); return the file written."""
    path = Path(path) if path is not None else settings_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"version": SETTINGS_VERSION, **values}, indent=2, sort_keys=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _set_aside(path: Path, why: str) -> None:
    bad = path.with_name(path.name + BAD_SUFFIX)
    try:
        os.replace(path, bad)
    except OSError:
        bad = path
    log.warning("settings file %s is %s; using the defaults (kept as %s)", path, why, bad)
