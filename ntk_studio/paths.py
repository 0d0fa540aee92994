"""Where NTK Studio keeps its settings, logs and caches: the platform's standard user folders.

Linux follows the XDG base directories (``~/.config/ntk-studio``, ``~/.local/state/ntk-studio/log``,
``~/.cache/ntk-studio``), macOS ``~/Library/...``, Windows ``%LOCALAPPDATA%\\ntk-studio``, all via
platformdirs. Setting ``NTK_STUDIO_HOME`` puts everything under that one folder instead (portable
installs, tests). No torch, no Qt.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

APP_DIR_NAME = "ntk-studio"
HOME_ENV = "NTK_STUDIO_HOME"


@dataclass(frozen=True)
class UserDirs:
    """The four per-user folders; none is created until `ensure` is called."""

    config: Path
    data: Path
    cache: Path
    log: Path

    def ensure(self) -> UserDirs:
        """Create the folders that are missing; return self."""
        for folder in (self.config, self.data, self.cache, self.log):
            folder.mkdir(parents=True, exist_ok=True)
        return self


def user_dirs() -> UserDirs:
    """Return the user folders for this platform (or under $NTK_STUDIO_HOME when it is set)."""
    home = os.environ.get(HOME_ENV)
    if home:
        root = Path(home).expanduser()
        return UserDirs(config=root / "config", data=root / "data", cache=root / "cache", log=root / "log")
    from platformdirs import PlatformDirs

    dirs = PlatformDirs(appname=APP_DIR_NAME, appauthor=False)
    return UserDirs(config=Path(dirs.user_config_dir), data=Path(dirs.user_data_dir),
                    cache=Path(dirs.user_cache_dir), log=Path(dirs.user_log_dir))
