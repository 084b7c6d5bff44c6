"""Whether this chunk server stopped cleanly last time, and if not, which replicas it wrote last.

Bytes written and not yet synced are lost or kept, block by block, by a power
cut, on each replica's disk apart: the replicas of a chunk may come back
different, each with good checksums, and readers would then read one or the
other.  Nothing in them was promised (a sync reaches every replica), but
replicas must not differ.  The chunk servers' notes of recent writes
(recent_writes.py) are in memory and lost with them; what is left is each
replica file's mtime.

So a chunk server leaves a mark in its data directory while it runs and takes
it away when it stops cleanly.  Found at its start, the mark says it did not:
the chunks whose replica files changed in the last `FANNED_REPORT_WINDOW`
before the newest change are then reported to the master as if clients had
written them on this replica alone (CS_FANNED), and the master compares
their replicas and makes them the same (mds/fanned_mender.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from chunkfs.common.durable import write_file_durably
from chunkfs.common.replica_file import replica_path
from chunkfs.cs.chunk_store import ChunkStore
from chunkfs.protocol.messages import FANNED_REPORT_MAX, FANNED_REPORT_WINDOW

logger = logging.getLogger(__name__)

#: In the data directory while the server runs.
RUNNING_MARK = "running"


def begin(root: Path) -> bool:
    """Mark the server in `root` running; whether it did not stop cleanly last time (its mark was left)."""
    mark = root / RUNNING_MARK
    if mark.exists():
        return True
    write_file_durably(mark, b"a chunk server runs on this folder; taken away when it stops cleanly\n")
    return False


def end(root: Path) -> None:
    """The server stopped cleanly: everything it acknowledged is synced, the rest it never promised."""
    mark = root / RUNNING_MARK
    with contextlib.suppress(FileNotFoundError):
        mark.unlink()
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def written_last(store: ChunkStore, window: float = FANNED_REPORT_WINDOW,
                 most: int = FANNED_REPORT_MAX) -> list[int]:
    """The chunks whose replica files changed within `window` seconds of the newest change, oldest first
    (at most `most`, the newest kept)."""
    changed: list[tuple[float, int]] = []
    for chunk_id, version in store.list_replicas():
        with contextlib.suppress(FileNotFoundError):
            changed.append((os.stat(replica_path(store.chunks_dir, chunk_id, version)).st_mtime, chunk_id))
    if not changed:
        return []
    newest = max(t for t, _ in changed)
    recent = sorted((t, c) for t, c in changed if t >= newest - window)
    return [c for _, c in recent[-most:]]
