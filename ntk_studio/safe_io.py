"""Reading files a user (or a file a user opened) names: regular files only, bounded, never blocking.

No torch, no Qt: the GUI process uses this to check a project's files before anything loads them.
A FIFO named ``x.png`` would block ``open()`` forever and ``/dev/zero`` never ends, so a file is
opened non-blocking and checked to be regular *on the opened descriptor* (no check-then-open race),
then read up to a limit. ``follow_symlinks=False`` refuses a symlink at the last path component.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

from ntk_studio.errors import NTKStudioError

CHUNK_BYTES = 1024 * 1024
NEW_FILE_MODE = 0o666  # before the umask, as open(2) callers conventionally ask (mkstemp would give 0600)
TEMP_ATTEMPTS = 100
SHA256_HEX_DIGITS = 64
HEAD_BYTES = 4096  # how much of a file is shown to the person deciding whether it may run
_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link"))


def kind_of(mode: int) -> str:
    """Return a name for a file mode that is not a regular file ("a named pipe (FIFO)", ...)."""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def open_regular(path: str | Path, error: type[NTKStudioError], what: str = "file", limit: int | None = None,
                 follow_symlinks: bool = True):
    """Return a binary file object for ``path``, refusing anything but a regular file of at most ``limit`` bytes."""
    path = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    if not follow_symlinks:
        if path.is_symlink():
            raise error(f"{path} is a symbolic link; {what}s must be regular files. Copy the file itself there.")
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:  # named before opening (a socket cannot be opened at all); checked again on the descriptor
        mode = os.stat(path).st_mode
    except OSError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        raise error(f"{path} is {kind_of(mode)}, not a regular file; choose a {what} that is a file.")
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise error(f"No such {what}: {path}. Check the path.") from None
    except IsADirectoryError:
        raise error(f"{path} is a folder, not a {what}. Choose the file.") from None
    except OSError as exc:
        raise error(f"Cannot open the {what} {path} ({exc.strerror or exc}). Check that it is readable.") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{path} is {kind_of(info.st_mode)}, not a regular file; choose a {what} that is a file.")
        if limit is not None and info.st_size > limit:
            raise error(f"{path} is {info.st_size:,} bytes, over the {limit:,}-byte limit for a {what}.")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | Path, error: type[NTKStudioError], what: str = "file", limit: int | None = None,
                 follow_symlinks: bool = True) -> bytes:
    """Return the bytes of a regular file of at most ``limit`` bytes (a file growing past it is refused too)."""
    with open_regular(path, error, what, limit, follow_symlinks) as fh:
        try:
            size = os.fstat(fh.fileno()).st_size
            parts = [fh.read(size + 1)]  # sized by the file, not the limit; one more byte shows growth
            total = len(parts[0])
            while total > size and (limit is None or total <= limit) and (chunk := fh.read(CHUNK_BYTES)):
                parts.append(chunk)
                total += len(chunk)
        except OSError as exc:
            raise error(f"Cannot read the {what} {path} ({exc.strerror or exc}).") from None
    data = parts[0] if len(parts) == 1 else b"".join(parts)
    if limit is not None and len(data) > limit:
        raise error(f"{path} grew past the {limit:,}-byte limit for a {what} while being read.")
    return data


def sha256_file(path: str | Path, error: type[NTKStudioError], what: str = "file", limit: int | None = None,
                progress: Callable[[int, int], None] | None = None) -> str:
    """Return the SHA-256 hex digest of a regular file, read in chunks (``progress(done, total)`` per chunk)."""
    digest = hashlib.sha256()
    with open_regular(path, error, what, limit) as fh:
        total = os.fstat(fh.fileno()).st_size
        done = 0
        while chunk := fh.read(CHUNK_BYTES):
            digest.update(chunk)
            done += len(chunk)
            if limit is not None and done > limit:
                raise error(f"{path} grew past the {limit:,}-byte limit for a {what} while being read.")
            if progress is not None:
                progress(done, total)
    return digest.hexdigest()


def check_sha256(actual: str, expected: str | None, path: str | Path, error: type[NTKStudioError],
                 what: str = "file") -> None:
    """Raise ``error`` naming ``path`` when ``expected`` (a SHA-256, e.g. the one a project recorded) is given
    and differs from ``actual``, the hash of the very bytes about to be parsed; None checks nothing."""
    if expected is None:
        return
    want = expected.strip().lower() if isinstance(expected, str) else expected
    if not isinstance(want, str) or len(want) != SHA256_HEX_DIGITS or any(c not in "0123456789abcdef" for c in want):
        raise error(f"The expected SHA-256 for the {what} {path} is not 64 hex digits ({expected!r:.80}).")
    if actual != want:
        raise error(f"The {what} {path} changed since its SHA-256 was recorded (it is now {actual[:16]}…, "
                    f"expected {want[:16]}…). Nothing was loaded; open the file itself if the change is expected.")


def head(path: str | Path, error: type[NTKStudioError], what: str = "file", size: int = HEAD_BYTES) -> bytes:
    """Return the first ``size`` bytes of a regular file."""
    with open_regular(path, error, what) as fh:
        return fh.read(size)


def inside(path: str | Path, folder: str | Path) -> bool:
    """Return whether ``path``, with every symlink resolved, lies inside ``folder`` (also resolved)."""
    real, root = os.path.realpath(path), os.path.realpath(folder)
    try:
        return os.path.commonpath([real, root]) == root
    except ValueError:  # different drives on Windows
        return False


def temp_beside(path: str | Path, suffix: str = ".tmp") -> tuple[int, Path]:
    """Return (fd, path) of a new temporary file next to ``path`` (same file system: os.replace is atomic).

    Created with mode 0666 less the umask, like any program's new file, so the file renamed into
    place gets the user's usual permissions, not mkstemp's private 0600.
    """
    path = Path(path)
    for _ in range(TEMP_ATTEMPTS):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}{suffix}")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), NEW_FILE_MODE), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name next to {path}")
