"""Which blocks of a chunk were written since a copy of it began: the source's half of a two-phase copy.

A copy to a new server first fetches the whole chunk while writers go on
(phase 1), then, with the chunk frozen, only the blocks written meanwhile
(phase 2, mds/replication.py).  The source of the copy sees every write to
the chunk (each replica gets each write), so it notes the blocks they touch
from the moment the copy asks (`start`) until the copy collects them
(`take`).  The list is exact, not a checksum comparison: a changed block
whose CRC32C happened to match the old one would otherwise be missed.

Kept in memory only: after a restart, or when the replica was deleted or
made anew, `take` has nothing to give and the copy is made whole, frozen, as
before.
"""

from __future__ import annotations

import random
import threading
from collections import OrderedDict

#: Chunks tracked at once; the oldest is dropped beyond (its copy then falls back to a whole one).
MAX_TRACKED = 1024


class WriteTracker:
    """Thread-safe: the store notes writes from its worker threads as well as from the event loop."""

    def __init__(self, block_size: int, chunk_size: int, max_tracked: int = MAX_TRACKED) -> None:
        self.block_size = block_size
        self.chunk_size = chunk_size
        self.max_tracked = max_tracked
        #: chunk id -> (token, blocks written since `start` gave that token)
        self._tracked: OrderedDict[int, tuple[int, set[int]]] = OrderedDict()
        self._lock = threading.Lock()

    def start(self, chunk_id: int) -> int:
        """Track writes to `chunk_id` from now on; the token that `take` wants (a new one each time)."""
        token = random.getrandbits(62)  # not a counter: a restarted server must not hand out an old token
        with self._lock:
            self._tracked[chunk_id] = (token, set())
            self._tracked.move_to_end(chunk_id)
            while len(self._tracked) > self.max_tracked:
                self._tracked.popitem(last=False)
        return token

    def wrote(self, chunk_id: int, offset: int, length: int) -> None:
        """Bytes [offset, offset+length) of the chunk changed (a write, a repair, a truncation).

        Called after the change is on the replica, under the store's chunk lock: a copy that
        started before it either read the new bytes or finds the block in `take`.
        """
        if not self._tracked or length <= 0:
            return  # the common case, without the lock: nothing is being copied from here
        with self._lock:
            entry = self._tracked.get(chunk_id)
            if entry is not None:
                entry[1].update(range(offset // self.block_size, (offset + length - 1) // self.block_size + 1))

    def truncated(self, chunk_id: int, length: int) -> None:
        """Every byte from `length` on reads as zeros now."""
        self.wrote(chunk_id, length, self.chunk_size - length)

    def forget(self, chunk_id: int) -> None:
        """The replica was deleted or made anew: what was tracked says nothing about it any more."""
        with self._lock:
            self._tracked.pop(chunk_id, None)

    def take(self, chunk_id: int, token: int) -> list[int] | None:
        """The blocks written since `start` gave `token`, in order, and the tracking ends; None if unknown."""
        with self._lock:
            entry = self._tracked.get(chunk_id)
            if entry is None or entry[0] != token:
                return None
            del self._tracked[chunk_id]
        return sorted(entry[1])
