"""A clock of the time this process has been running, so that its own pauses are not its peers' silence.

A process stopped with SIGSTOP, on a host that was suspended, or whose event
loop stalled for seconds heard nobody meanwhile; when it runs again its timers
may fire before it has read what its peers sent (with uvloop a timer that is
due runs before the sockets are polled).  Measured on the monotonic clock,
that gap would count as every peer's silence: the master would declare every
chunk server offline and give up their replicas, and expire every mount's
session, freeing the unlinked files they still hold open.

`AwakeClock` reads like `time.monotonic()` minus the gaps: `run()` reads it
every `TICK` seconds on the event loop, and a reading that comes more than
`GAP` after the one before means the loop did not run for that long; all but
one tick of it is left out.  Any reader (whichever runs first on resume) sees
the gap, since every reading compares with the last.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

#: How often `run` reads the clock, seconds.
TICK = 0.1
#: Two readings further apart than this mean the process (or its event loop) did not run.
GAP = 1.0


class AwakeClock:
    """Monotonic seconds, without the spans in which this process's event loop did not run."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, tick: float = TICK, gap: float = GAP) -> None:
        self._clock = clock
        self.tick = tick
        self.gap = gap
        self._last = clock()
        #: Seconds left out so far.
        self.paused = 0.0

    def __call__(self) -> float:
        now = self._clock()
        late = now - self._last
        if late > self.gap:
            self.paused += late - self.tick
            logger.warning("this process did not run for %.1f s (stopped, suspended or its event loop blocked): "
                           "its peers are not blamed for that silence", late)
        self._last = now
        return now - self.paused

    async def run(self) -> None:
        """Read the clock every tick, so that a gap is found however rarely others read it."""
        while True:
            await asyncio.sleep(self.tick)
            self()
