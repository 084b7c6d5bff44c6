"""Write locks by chunk stripe, several taken at once, strictly in the order requests arrive.

A write to a chunk holds its stripe's lock while it is sent on and written
here, so every replica applies a chunk's writes in the order its head did
(they arrive at each replica in that order, on one connection).  A request
carrying small writes to several chunks (CS_WRITE_CHUNKS) needs the locks of
all their stripes together.  Taken one after the other with plain locks, a
request waiting for its first stripe would let a later request overtake it
on its second, and a replica would apply that chunk's writes in another
order than its head: replicas that differ.  Here a request joins the queue
of every stripe it needs at once, when it arrives (before anything it
awaits), and goes when it is first in each: per stripe, strictly in arrival
order.  No deadlock: the earliest request still waiting is first in all of
its queues.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from types import TracebackType


class _Ticket:
    __slots__ = ("stripes", "waiting", "ready")

    def __init__(self, stripes: list[int]) -> None:
        self.stripes = stripes
        #: Queues in which another request is ahead of this one.
        self.waiting = 0
        self.ready: asyncio.Future[None] | None = None


class StripeLocks:
    def __init__(self, stripes: int) -> None:
        self._queues: list[deque[_Ticket]] = [deque() for _ in range(stripes)]

    def hold(self, chunk_ids: Iterable[int]) -> _Hold:
        """``async with locks.hold(ids)``: the locks of the chunks `ids`; the queues are joined at once."""
        n = len(self._queues)
        ticket = _Ticket(sorted({chunk_id % n for chunk_id in chunk_ids}))
        for stripe in ticket.stripes:
            queue = self._queues[stripe]
            if queue:
                ticket.waiting += 1
            queue.append(ticket)
        return _Hold(self, ticket)

    def free(self, chunk_ids: Iterable[int]) -> bool:
        """No request holds or waits for the lock of any of the chunks `ids`."""
        n, queues = len(self._queues), self._queues
        return not any(queues[chunk_id % n] for chunk_id in chunk_ids)

    def busy(self) -> int:
        """Stripes held or waited for (for tests: nothing may stay queued after its request)."""
        return sum(1 for queue in self._queues if queue)

    def _release(self, ticket: _Ticket) -> None:
        for stripe in ticket.stripes:
            queue = self._queues[stripe]
            if queue[0] is not ticket:
                queue.remove(ticket)  # it gave up waiting (cancelled): nobody behind it moves up
                continue
            queue.popleft()
            if queue:
                nxt = queue[0]
                nxt.waiting -= 1
                if nxt.waiting == 0 and nxt.ready is not None and not nxt.ready.done():
                    nxt.ready.set_result(None)


class _Hold:
    """The locks of one request: held from ``__aenter__`` until ``__aexit__`` (or given up if cancelled)."""

    __slots__ = ("_locks", "_ticket")

    def __init__(self, locks: StripeLocks, ticket: _Ticket) -> None:
        self._locks, self._ticket = locks, ticket

    async def __aenter__(self) -> None:
        ticket = self._ticket
        if ticket.waiting:
            ticket.ready = asyncio.get_running_loop().create_future()
            try:
                await ticket.ready
            except BaseException:
                self._locks._release(ticket)
                raise

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._locks._release(self._ticket)
