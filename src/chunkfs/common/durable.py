"""Writing small files so that a crash leaves the old or the new one, never half."""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

#: errno values that mean "the disk (or the quota) is full".
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc` says the disk (or the quota) is full: an OSError's errno, or SQLite's own words
    ("database or disk is full"), which carry no errno."""
    if isinstance(exc, OSError):
        return exc.errno in NO_SPACE_ERRNOS
    # Only a process that imported SQLite can hold its error (every process imports this module).
    sqlite3 = sys.modules.get("sqlite3")
    return sqlite3 is not None and isinstance(exc, sqlite3.OperationalError) and "full" in str(exc)


def fsync_dir(path: Path) -> None:
    """Make a create, rename or unlink in `path` durable (its descriptor is not inherited: PEP 446)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_durably(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Temp file in the same directory, fsync, rename into place, fsync the directory.

    A write that fails (a full disk) names `path` and leaves no temp file behind."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.filename is None:  # os.write names no file: an operator is told which one
            exc.filename = str(path)
        raise
    os.replace(tmp, path)
    fsync_dir(path.parent)
