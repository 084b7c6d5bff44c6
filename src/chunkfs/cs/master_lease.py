"""Whether this chunk server may serve its replicas: a lease from the master.

A replica left behind at an old version (its server cut off while a write went on without it)
still holds that version's bytes, and a reader whose chunk map is older than the change asks for
exactly that version.  On a host cut off from the rest, nothing tells the server: it served the
old bytes for as long as the cut lasted (a partition probe, RELIABILITY.md).  So a server serves
only for REPLICA_LEASE seconds after sending a registration or heartbeat that a master answered as
the master, and a master leaves a replica behind only once that server was told or its lease has
run out (mds/replica_leases.py).  The lease is counted from the *sending*: the master's own count
starts when the request arrived, later, so the server's lease always ends first.

Reads that find the lease out wait a while for it (a master change: the server registers again
with the new master within seconds), then fail with Unavailable, which a client takes as this
replica unavailable: it tries another one, then asks the master again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from chunkfs.common.errors import Unavailable
from chunkfs.protocol.messages import REPLICA_LEASE

#: How long a read waits for the lease to come back before it is refused, seconds.
READ_WAIT = 3.0


class MasterLease:
    """Until when this server may serve replicas, as the master's answers renewed it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        #: The lease's end on `clock`; none until a master answers a registration.
        self.until = 0.0
        #: False while the master registered with grants no leases (one of an earlier version): served as before.
        self.enforced = True
        self._back: asyncio.Event | None = None

    def renewed(self, sent: float) -> None:
        """A request sent at `sent` (this clock) was answered with a lease."""
        self.enforced = True
        self.until = max(self.until, sent + REPLICA_LEASE)
        self._wake()

    def not_granted(self) -> None:
        """The master registered with grants no leases (an earlier version): serve without one."""
        self.enforced = False
        self._wake()

    def _wake(self) -> None:
        if self._back is not None:
            self._back.set()
            self._back = None

    def holds(self) -> bool:
        return not self.enforced or self._clock() < self.until

    async def wait(self, cs: str, timeout: float = READ_WAIT) -> None:
        """Return once the lease holds; Unavailable if it does not within `timeout` seconds."""
        deadline = self._clock() + timeout
        for _ in range(int(timeout / 0.05) + 2):  # bounded: woken by a renewal, or polled
            if self.holds():
                return
            left = deadline - self._clock()
            if left <= 0:
                break
            if self._back is None:
                self._back = asyncio.Event()
            try:
                await asyncio.wait_for(self._back.wait(), min(left, 0.5))
            except TimeoutError:
                pass
        if self.holds():
            return
        silent = "no master has answered it since it started" if self.until == 0.0 else \
            f"no master has answered it for {self._clock() - self.until + REPLICA_LEASE:.1f} s"
        raise Unavailable(f"{cs} serves no replica now: {silent} (a master change, or this server cut off "
                          "from the metadata servers); another replica, or this one once a master answers it")
