"""Recent files and the window's splitter layout, kept in the user settings file (``ntk_studio.user_settings``).

The window geometry itself is saved by ``startup.decorate``; this adds what the main window owns.
"""

from __future__ import annotations

import base64
import logging
from pathlib import Path
from typing import Any

from ntk_studio.user_settings import load_settings, save_settings

from .numbers import fmt_bytes

RECENT_KEY = "recent_files"
SPLITTER_KEY = "results_splitter"
MAX_RECENT = 10

log = logging.getLogger("ntk_studio.app")


class Store:
    """Reads and writes single keys of a settings file (the user's by default; tests pass their own)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path

    def get(self, key: str, default: Any = None) -> Any:
        """Return the stored value of ``key`` (``default`` when absent)."""
        return load_settings(self.path).get(key, default)

    def set(self, key: str, value: Any) -> None:
        """Store ``value`` under ``key`` (a failed write is logged, never raised: it is only a convenience)."""
        values = load_settings(self.path)
        values[key] = value
        try:
            save_settings(values, self.path)
        except OSError as exc:
            log.warning("could not save the settings: %s", exc)

    def get_bytes(self, key: str) -> bytes | None:
        """Return bytes stored with :meth:`set_bytes` (None when absent or damaged)."""
        value = self.get(key)
        try:
            return base64.b64decode(value.encode("ascii"), validate=True) if isinstance(value, str) else None
        except ValueError:
            return None

    def set_bytes(self, key: str, value: bytes) -> None:
        """Store ``value`` as base64 text."""
        self.set(key, base64.b64encode(bytes(value)).decode("ascii"))


def recent_files(store: Store) -> list[str]:
    """Return the remembered paths, newest first."""
    value = store.get(RECENT_KEY, [])
    return [str(v) for v in value] if isinstance(value, list) else []


def remember(store: Store, path: str) -> list[str]:
    """Put ``path`` first in the recent files (deduplicated, at most MAX_RECENT); return the list."""
    paths = [path, *(p for p in recent_files(store) if p != path)][:MAX_RECENT]
    store.set(RECENT_KEY, paths)
    return paths


def forget(store: Store, path: str) -> list[str]:
    """Remove ``path`` from the recent files (it no longer opens); return the list."""
    paths = [p for p in recent_files(store) if p != path]
    store.set(RECENT_KEY, paths)
    return paths


KINDS = {"project": "project", "model": "model file", "data": "data"}


def describe_recent(path: str) -> tuple[str, str]:
    """Return (menu text, tooltip) for a recent path: its name, what it is and where, when it was saved.

    Reads only the file system's metadata: a project's contents are checked when it is opened.
    """
    from datetime import datetime

    from .session import file_kind

    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        return f"{p.name} — missing", f"{path}\n(no longer there: choosing it removes it from the list)"
    is_dir = p.is_dir()
    kind = KINDS.get(file_kind(path, is_dir) or "", "file")
    if is_dir:
        kind = "image folder"
    when = datetime.fromtimestamp(st.st_mtime).strftime("%Y-%m-%d %H:%M")
    size = "" if is_dir else f", {fmt_bytes(st.st_size)}"
    return f"{p.name} — {kind} in {p.parent.name or p.parent}", f"{path}\n{kind}{size}, saved {when}"
