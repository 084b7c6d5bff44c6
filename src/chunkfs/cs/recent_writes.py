"""What writers lately did to this server's replicas, for a new master: what outlives a master lost with them.

Two things a master knows of a live writer die with it when a machine holding
both is lost, and a new master learns them here, from every chunk server
(CS_FANNED):

* *Chunks a client wrote to this replica alone.*  A chunk's one writer may
  send its small writes to every replica itself (mds/fan_grants.py).  If it
  dies between its sends, the replicas differ; the master that let it fan
  out mends them when the writer's connection closes (mds/fanned_mender.py),
  but a master that dies with the writer took that along, and the replicas
  would differ for good, two readers reading different bytes (a fault probe:
  3 of 37 node kills).  A new master mends the chunks named here.
* *How far into each chunk writes lately reached* (any write: a client's, a
  head's sending on, a first write made with the chunk).  A writer that dies
  leaves what it wrote past the size it had committed; a file grown later by
  a truncate, or by a write past a hole, must read zeros there, not those
  bytes.  The master trims a dead mount's files when its session expires
  (mds/open_files.py), but a new master does not know which files a session
  that never came back held.  The files whose chunks were written past their
  size before its election are those (or a live writer's, which commits its
  size before it closes them: trimmed at their last release, nothing is cut).

In memory only, bounded: a chunk server killed along with them has lost its
notes, but the other replicas of each chunk hold theirs.

It also counts, for the master that compares a departed writer's replicas,
how many of a chunk's fanned-out writes this replica took since it was made.
A writer sends its writes to every replica in the same order, and each
replica takes a prefix of them: the one that took the most took every write
any other did, so the comparison copies from it, and a reader that read any
replica before then only ever sees the writes go forward, never back.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from chunkfs.protocol.messages import FANNED_REPORT_MAX, FANNED_REPORT_WINDOW


class RecentWrites:
    """Chunks lately fanned out to, and how far lately written, by chunk id (monotonic seconds)."""

    def __init__(self, max_chunks: int = FANNED_REPORT_MAX, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_chunks = max_chunks
        self.clock = clock
        #: chunk id -> when a client last wrote it on this replica alone
        self._fanned: OrderedDict[int, float] = OrderedDict()
        #: chunk id -> (when last written, when `end` was reached, the end of the furthest write without a
        #: pause of the report's window); in the order last written
        self._ends: OrderedDict[int, tuple[float, float, int]] = OrderedDict()
        #: chunk id -> fanned-out writes this replica took since it was made here (`born`); a chunk not
        #: here was made before this server started, or its count went past the bound: not known.
        self._counts: OrderedDict[int, int] = OrderedDict()

    def born(self, chunk_id: int) -> None:
        """This replica of `chunk_id` was just made (allocated): its fanned-out writes are counted from now."""
        self._noted(self._counts, chunk_id, 0)

    def fanned(self, chunk_id: int) -> None:
        """A client wrote `chunk_id` on this replica alone, now."""
        self._noted(self._fanned, chunk_id, self.clock())
        count = self._counts.get(chunk_id)
        if count is not None:
            self._noted(self._counts, chunk_id, count + 1)

    def fanned_writes(self, chunk_id: int) -> int | None:
        """The fanned-out writes this replica of `chunk_id` took since it was made (None: not known)."""
        return self._counts.get(chunk_id)

    def wrote(self, chunk_id: int, end: int) -> None:
        """A write reached byte `end` of `chunk_id` (its offset plus its length), now."""
        now = self.clock()
        last = self._ends.get(chunk_id)
        reached = now
        if last is not None and last[2] >= end and now - last[0] <= FANNED_REPORT_WINDOW:
            reached, end = last[1], last[2]
        self._noted(self._ends, chunk_id, (now, reached, end))

    def cut(self, chunk_id: int, length: int) -> None:
        """`chunk_id` was cut at `length` (a truncation, a dead writer's trim): nothing written lies past it,
        so no next master is told of an end beyond it (a probe: files a dead writer had written past their
        size were trimmed again, for nothing, under each of up to 11 new masters)."""
        noted = self._ends.get(chunk_id)
        if noted is not None and noted[2] > length:
            self._ends[chunk_id] = (*noted[:2], length)

    def _noted(self, table: OrderedDict[int, Any], chunk_id: int, value: Any) -> None:
        """`value` for `chunk_id`, now its latest; the one noted longest ago goes past the bound."""
        table[chunk_id] = value
        table.move_to_end(chunk_id)
        if len(table) > self.max_chunks:
            table.popitem(last=False)

    def fanned_since(self, seconds: float) -> list[int]:
        """The chunks fanned out to in the last `seconds`, the latest first."""
        oldest = self.clock() - seconds
        out = []
        for chunk_id, when in reversed(self._fanned.items()):
            if when < oldest:
                break
            out.append(chunk_id)
        return out

    def ends_between(self, within: float, before: float) -> list[tuple[int, int]]:
        """(chunk id, furthest end) of the chunks whose furthest end was reached `before` to `within` seconds
        ago, the latest written first.

        `before`: a new master's age.  A chunk a writer took further since may be a live writer's, which
        has not committed its size yet and will; one only written again since, below that end (a live
        writer's appends to a file a dead one wrote further into), is named: the end is the dead one's.
        """
        now = self.clock()
        out = []
        for chunk_id, (when, reached, end) in reversed(self._ends.items()):
            if when < now - within:
                break
            if now - within <= reached <= now - before:
                out.append((chunk_id, end))
        return out
