"""Whether this chunk server stopped cleanly last time, and if not, which replicas it wrote last.

Bytes written and not yet synced are lost or kept, block by block, by a power
cut, on each replica's disk apart: the replicas of a chunk may come back
different, each with good checksums, and readers would then read one or the
other.  Nothing in them was promised (a sync reaches every replica), but
replicas must not differ.  The chunk servers' notes of recent writes
(recent_writes.py) are in memory and lost with them; what is left is each
replica file's mtime.

So a chunk server leaves a mark in its data directory while it runs, naming the
machine's boot, and takes it away when it stops cleanly.  Found at its start
from another boot, the mark says the machine went down under it: the chunks
whose replica files changed in the last `FANNED_REPORT_WINDOW` before the
newest change are then reported to the master as if clients had written them
on this replica alone (CS_FANNED), and the master compares their replicas and
makes them the same (mds/fanned_mender.py).  Those of them whose header never
reached the disk (made, never synced) are reported at once (`never_synced`),
and the master checks them and makes such chunks again before a reader meets
them, not when the scrubber comes by.  A server killed and started again
on the same boot finds its mark too, but the kernel kept every page it wrote:
nothing was lost, nothing is compared.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from chunkfs.common.durable import fsync_dir, write_file_durably
from chunkfs.common.replica_file import header_never_written, replica_path
from chunkfs.cs.chunk_store import ChunkStore
from chunkfs.protocol.messages import FANNED_REPORT_MAX, FANNED_REPORT_WINDOW

#: In the data directory while the server runs: the boot it runs in.
RUNNING_MARK = "running"
#: Where Linux names the current boot (a new random id at each).
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str:
    """This boot's id; empty where the system does not say (every mark left is then taken as a crash's)."""
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return ""


def begin(root: Path) -> bool:
    """Mark the server in `root` running; whether the machine went down under it last time (its mark
    was left, from another boot)."""
    mark = root / RUNNING_MARK
    now = boot_id()
    try:
        before = mark.read_text().strip()
    except FileNotFoundError:
        before = None
    if before == now and now:
        return False  # killed, on this boot: the page cache kept what it wrote
    write_file_durably(mark, f"{now}\n".encode())
    return before is not None


def end(root: Path) -> None:
    """The server stopped cleanly: everything it acknowledged is synced, the rest it never promised."""
    with contextlib.suppress(FileNotFoundError):
        (root / RUNNING_MARK).unlink()
        fsync_dir(root)


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


def never_synced(store: ChunkStore, chunk_ids: list[int]) -> list[int]:
    """Those of `chunk_ids` whose replica file has no header on disk: made and never synced before the
    machine went down, so nothing in them was promised (common/replica_file.py)."""
    found = []
    for chunk_id, version in store.versions_of(chunk_ids):
        if header_never_written(replica_path(store.chunks_dir, chunk_id, version)):
            found.append(chunk_id)
    return found
