"""Where a chunk server syncs a replica: on its event loop, or in a worker thread.

A VM's flush after a few small writes syncs a fraction of a millisecond of
disk work, and the hop to a worker thread and back cost 8 % of a 4 KiB
write + fdatasync here (12 % of its CPU, on every replica).  But a sync after
a large write (a copied image) can take seconds, and the loop must keep
serving meanwhile.  So a sync runs on the loop only when this server counted
every byte written to that chunk since its last sync and they are few, and
while the last sync here was quick (a slow or busy disk sends them all to
threads until one is quick again).  A chunk it did not count — written
before this server started, by a copy from another server, or past the
bound on chunks counted — is synced in a thread.
"""

from __future__ import annotations

#: At most this many bytes written since the last sync, for a sync on the loop.
INLINE_SYNC_MAX = 256 << 10
#: ... and the last sync took less than this.
INLINE_SYNC_S = 0.002
#: Chunks counted at once, at most (a bound on the table; the others sync in a thread).
MAX_TRACKED = 4096


class SyncPolicy:
    def __init__(self, max_tracked: int = MAX_TRACKED) -> None:
        self.max_tracked = max_tracked
        #: chunk id -> bytes written through this server since its last sync
        self.unsynced: dict[int, int] = {}
        self.last_took = 0.0

    def wrote(self, chunk_id: int, nbytes: int) -> None:
        unsynced = self.unsynced
        if chunk_id in unsynced or len(unsynced) < self.max_tracked:
            unsynced[chunk_id] = unsynced.get(chunk_id, 0) + nbytes

    def sync_inline(self, chunk_id: int, writing: int = 0) -> bool:
        """Whether the sync of `chunk_id` starting now (after a write of `writing` bytes) may run on
        the loop; its count starts again."""
        written = self.unsynced.pop(chunk_id, None)
        return written is not None and written + writing <= INLINE_SYNC_MAX and self.last_took < INLINE_SYNC_S

    def synced(self, took: float) -> None:
        self.last_took = took
