"""Exclusive file leases: one mount at a time may hold a file (a VM image) open for writing.

A lease is *soft state* of the master, like the table of connected chunk
servers: it is not in the replicated log (a renewal every few seconds per open
image would be a commit each), so a new master starts with an empty table.
To keep "two holders never at once" across a master change, a new master
opens a **grace period** as long as a lease: during it, only holders that
say they already held a lease (``renew``) get it back; new acquisitions are
answered `Unavailable` (the client retries them) until every lease the old
master may have granted has either been reclaimed by its holder or expired.
The same rule covers a restarted single master.

The holder side keeps its own bound: a mount that could not renew within one
lease period stops writing to the file (see ``client/fuse_ops.py``), so a
holder cut off from the master cannot write on after the master hands the
file to someone else.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from chunkfs.common.errors import Busy, InvalidArgument, Unavailable
from chunkfs.protocol.messages import LEASE_TTL

logger = logging.getLogger(__name__)

#: Leases held at once at most (a bound on the table; expired ones are purged first).
MAX_LEASES = 100_000


class LeaseTable:
    def __init__(self, ttl: float = LEASE_TTL, clock: Callable[[], float] = time.monotonic,
                 max_leases: int = MAX_LEASES) -> None:
        self.ttl = ttl
        self.clock = clock
        self.max_leases = max_leases
        #: inode -> (holder, expiry on `clock`)
        self.held: dict[int, tuple[str, float]] = {}
        self.grace_until = 0.0

    def start_grace(self) -> None:
        """This server has just become master: forget everything, let holders reclaim."""
        self.held.clear()
        self.grace_until = self.clock() + self.ttl

    def grant(self, ino: int, holder: str, op: str) -> float:
        """Acquire or renew `ino` for `holder`; return the lease time.  Raises `Busy` naming the holder."""
        if op not in ("acquire", "renew"):
            raise InvalidArgument(f"unknown lease operation {op!r}")
        if not holder or len(holder) > 256:
            raise InvalidArgument("a lease holder is a non-empty name of at most 256 characters")
        now = self.clock()
        current = self.held.get(ino)
        if current is not None and current[0] != holder and current[1] > now:
            logger.warning("lease on inode %d refused to %s: held by %s for %.1fs more",
                           ino, holder, current[0], current[1] - now)
            raise Busy(f"inode {ino} is open exclusively by {current[0]} (its lease runs {current[1] - now:.0f}s "
                       "more unless renewed)", holder=current[0], ino=ino)
        if (current is None or current[1] <= now) and op == "acquire" and now < self.grace_until:
            raise Unavailable(f"the master is new: exclusive leases are being reclaimed by their holders for "
                              f"{self.grace_until - now:.1f}s more; retry")
        if current is None and len(self.held) >= self.max_leases:
            self.held = {i: h for i, h in self.held.items() if h[1] > now}
            if len(self.held) >= self.max_leases:
                raise Unavailable(f"too many exclusive leases held ({self.max_leases}); retry later")
        if current is None or current[0] != holder:
            logger.info("lease on inode %d %s by %s", ino, "granted" if op == "acquire" else "reclaimed", holder)
        self.held[ino] = (holder, now + self.ttl)
        return self.ttl

    def release(self, ino: int, holder: str) -> None:
        current = self.held.get(ino)
        if current is not None and current[0] == holder:
            del self.held[ino]
            logger.info("lease on inode %d released by %s", ino, holder)
