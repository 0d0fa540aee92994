"""Files the app writes itself (prediction tables, plot images): atomic, and with the user's umask.

`tempfile.mkstemp` creates its file with mode 0600 whatever the umask, so a file renamed into place
from it is private even where the user's files are shared; this creates the temporary file with
mode 0666 and lets the umask take its bits away, as any other program's new file.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

NEW_FILE_MODE = 0o666  # before the umask, as open(2) callers conventionally ask


def write_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder; return the path written."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, NEW_FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
