"""Until when a chunk server may still serve a replica this master left behind: its lease.

A chunk server serves replicas only for REPLICA_LEASE seconds after sending a registration or
heartbeat that a master answered as the master (cs/master_lease.py), and a mount on its machine
reads its replica files for LOCAL_READ_LEASE seconds after that server last answered it
(client/local_reads.py).  When a change of a chunk's replicas leaves a server behind at the old
version and that server was not told (its replica deleted), the change is handed to writers only
once both have run out: else a reader whose map is older than the change, on a host cut off from
the rest, is served bytes from before a write acknowledged elsewhere (a partition probe,
RELIABILITY.md).

This master counts a server's lease from when its last request arrived here, which is after the
server sent it: the server's own count ends first.  Counted on the master's awake clock, which
leaves this process's pauses out, turned into a deadline on the monotonic clock: only later for it.

A lease a master before this one granted ended before this master's term began plus
REPLICA_LEASE plus HANDOVER: that master answered only after a round of its followers confirmed
it (a heartbeat after a read barrier, a registration after a commit), and those followers voted
for no one else for an election timeout after it (raft/driver.py, READ_LEASE), longer than the
read lease itself; a master that handed its leadership over on purpose (its successor elected at
once) may have answered on a read lease confirmed up to READ_LEASE before.  So a server this
master has not heard from counts from the start of its term, plus HANDOVER.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

from chunkfs.protocol.messages import LOCAL_READ_LEASE, REPLICA_LEASE

logger = logging.getLogger(__name__)

#: How long past a server's last request here it may still serve (its lease, then a mount's local reads).
SERVED_FOR = REPLICA_LEASE + LOCAL_READ_LEASE
#: Seconds past the start of this master's term that a predecessor's lease may count from (above
#: raft/driver.py's READ_LEASE, 0.5 s).
HANDOVER = 1.0
#: Waits are slept in steps of at most this.
STEP = 0.25


class ReplicaLeases:
    """When chunk servers' leases end, from what this master heard of them."""

    def __init__(
        self, awake: Callable[[], float], heard: Callable[[int], float | None], term_start: Callable[[], float],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        #: The master's awake clock, and when it last heard from a server on it (None: not this term).
        self._awake = awake
        self._heard = heard
        #: When this master's term began, on `clock`.
        self._term_start = term_start
        self._clock = clock

    def ends(self, cs_id: int) -> float:
        """The moment (on the monotonic clock) after which `cs_id` serves nothing it held before."""
        now = self._clock()
        heard = self._heard(cs_id)
        since = self._term_start() + HANDOVER
        if heard is not None:
            since = max(since, now - (self._awake() - heard))
        return since + SERVED_FOR

    def left(self, cs_id: int) -> float:
        """Seconds until `cs_id`'s lease is surely out (0 if it is)."""
        return max(0.0, self.ends(cs_id) - self._clock())

    async def wait_out(self, cs_ids: Iterable[int], why: str = "") -> None:
        """Return once the leases `cs_ids` held at this call have run out: none of them may serve what it
        held then, unless a master renewed its lease since (one still answered is told instead: chunks.py)."""
        ids = list(cs_ids)
        if not ids:
            return
        deadline = max(self.ends(cs) for cs in ids)
        left = deadline - self._clock()
        if left <= 0:
            return
        logger.info("waiting %.1f s for the lease of CS %s to run out%s", left, ",".join(map(str, sorted(ids))),
                    f" ({why})" if why else "")
        for _ in range(int((SERVED_FOR + HANDOVER) / STEP) * 4 + 4):  # bounded: a deadline is never further
            left = deadline - self._clock()
            if left <= 0:
                return
            await asyncio.sleep(min(left, STEP))
