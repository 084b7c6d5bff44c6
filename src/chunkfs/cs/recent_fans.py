"""The chunks a writer lately sent writes to this replica alone: its share of writes fanned out to every replica.

A chunk's one writer may send its small writes to every replica itself
(mds/fan_grants.py).  If it dies between its sends, the replicas differ; the
master that let it fan out mends them when the writer's connection closes
(mds/fanned_mender.py).  But that knowledge is the master's soft state: a
master that dies with the writer (a whole machine lost, holding both) takes
it along, and the replicas would differ for good, two readers reading
different bytes (a fault probe: 3 of 37 node kills).  What outlives it is
here, on every other replica: each chunk server notes the chunks a client
wrote to it with no chain after it, and tells a new master (CS_FANNED),
which mends them.

In memory only, bounded: a chunk server killed along with them has lost its
notes, but the other replicas of each chunk hold theirs.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from chunkfs.protocol.messages import FANNED_REPORT_MAX


class RecentFans:
    """Chunk id -> when a writer last sent a write to this replica alone (monotonic seconds)."""

    def __init__(self, max_chunks: int = FANNED_REPORT_MAX, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_chunks = max_chunks
        self.clock = clock
        self._when: OrderedDict[int, float] = OrderedDict()

    def note(self, chunk_id: int) -> None:
        """A client wrote `chunk_id` on this replica alone, now."""
        when = self._when
        when[chunk_id] = self.clock()
        when.move_to_end(chunk_id)
        if len(when) > self.max_chunks:
            when.popitem(last=False)

    def since(self, seconds: float) -> list[int]:
        """The chunks noted in the last `seconds`, the latest first."""
        oldest = self.clock() - seconds
        out = []
        for chunk_id, when in reversed(self._when.items()):
            if when < oldest:
                break
            out.append(chunk_id)
        return out
