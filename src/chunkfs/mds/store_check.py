"""A damaged metadata store is found and rebuilt, not served.

The store (SQLite) is a copy of what the Raft snapshot and log hold, and those
carry checksums of their own; SQLite's pages carry none.  A store damaged on
disk (a bad sector, a stray write) used to be opened as it was: the server
joined, could be elected master, and then answered "database disk image is
malformed" to every client and chunk server, and to `rm-mds` itself, without
ever stepping down.

So a metadata server checks its store with SQLite's ``quick_check`` when it
starts, and moves a damaged one aside: it then rebuilds the store from its
snapshot image and log (as it does for a store that is behind the snapshot).
Damage found while it runs (SQLite reports it on a read, a write or a
checkpoint) stops the server (`is_damage`), so that another one becomes master
and this one, started again, rebuilds; and a member that becomes master checks
its store once more, beside its first requests (`damage_in`): as master it
would act on what the damage made of the store (a probe saw a damaged master
have chunk servers delete replicas of files it no longer found).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

logger = logging.getLogger(__name__)

#: SQLite's result codes for a damaged database file.
_DAMAGE_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
#: The store's files: the database and its write-ahead log and index.
_SUFFIXES = ("", "-wal", "-shm")


def is_damage(exc: BaseException) -> bool:
    """Whether `exc` is SQLite saying the database file is damaged (not busy, full or failing)."""
    return isinstance(exc, sqlite3.DatabaseError) and (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in _DAMAGE_CODES


def damage_in(path: Path) -> str | None:
    """What SQLite's quick_check finds wrong with the store at `path` (None: nothing).

    On a connection of its own, so it may run in a worker thread beside the server's (a write-ahead
    log lets it read a consistent copy while changes go on).
    """
    started = time.monotonic()
    try:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            rows = conn.execute("PRAGMA quick_check(1)").fetchall()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        if not is_damage(exc):
            raise  # a disk error, or a busy file: not for this check to decide
        return str(exc)
    took = time.monotonic() - started
    if took >= 1.0:
        logger.info("metadata store %s checked in %.1f s", path, took)
    return None if rows == [("ok",)] else str(rows[0][0] if rows else "no answer")


def set_aside_if_damaged(path: Path) -> Path | None:
    """Check the store at `path`; a damaged one is moved aside (returned), so a new one is made and rebuilt."""
    if not path.exists():
        return None
    problem = damage_in(path)
    if problem is None:
        return None
    aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    for suffix in _SUFFIXES:
        src = path.with_name(path.name + suffix)
        if src.exists():
            src.rename(aside.with_name(aside.name + suffix))
    logger.warning("metadata store %s is damaged (%s): moved aside to %s; rebuilding it from the snapshot and the "
                   "Raft log (delete the damaged copy once this server is back in step)", path, problem, aside)
    return aside
