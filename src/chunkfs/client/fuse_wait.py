"""Waiting for the FUSE device to be readable, without re-registering it for every request.

pyfuse3 runs on asyncio through a small compatibility module whose
``wait_readable`` adds the session's file descriptor to the event loop and
removes it again for every request the kernel sends.  On uvloop each round
makes and closes a poll handle: six system calls (``ioctl``, ``epoll_ctl``
added and deleted, an ``io_uring_enter``): 21 µs of CPU per round against
8 µs with the descriptor left registered (a pipe on uvloop, 100,000 rounds),
on every lookup, create, read and write, in the process a VM's random writes
wait on most.

`FuseReadable` keeps the descriptor registered.  The event loop polls
level-triggered, so a readiness nobody waits for calls back on every turn of
the loop; it is usually a moment's gap (the waiter just woken has not run and
read the request yet, or the next task has not reached its wait), so only
`IDLE_TURNS` such calls in a row unregister it, and the next wait registers
it again.  pyfuse3 has one task at a time waiting (its read lock), and the
next one waits while the previous one serves its request, so in steady state
nothing is registered or unregistered at all.

`install` replaces the two functions pyfuse3 looks up on its compatibility
module at each call (``pyfuse3.asyncio`` is the ``trio.lowlevel`` it calls);
`stop_all` unregisters the descriptor before pyfuse3 closes it.
"""

from __future__ import annotations

import asyncio
import select

import pyfuse3.asyncio

#: Turns of the event loop in a row the descriptor may be readable with nobody waiting, before it is
#: unregistered (each such turn is one Python call; registering again is six system calls).
IDLE_TURNS = 4


class FuseReadable:
    """`wait_readable` and `notify_closing` for pyfuse3, one registration per descriptor."""

    def __init__(self) -> None:
        #: descriptor -> the futures waiting for it to be readable
        self._waiters: dict[int, list[asyncio.Future[None]]] = {}
        #: descriptor -> the loop it is registered on
        self._watched: dict[int, asyncio.AbstractEventLoop] = {}
        #: descriptor -> turns in a row it was readable with nobody waiting
        self._idle: dict[int, int] = {}

    async def wait_readable(self, fd: int) -> None:
        loop = self._watched.get(fd)
        if loop is None:
            loop = asyncio.get_running_loop()
            loop.add_reader(fd, self._ready, fd)
            self._watched[fd] = loop
        future: asyncio.Future[None] = loop.create_future()
        waiters = self._waiters.setdefault(fd, [])
        waiters.append(future)
        try:
            await future
        finally:
            if future.cancelled() and future in waiters:
                waiters.remove(future)

    def _ready(self, fd: int) -> None:
        waiting = [future for future in self._waiters.pop(fd, ()) if not future.done()]
        if not waiting:
            idle = self._idle.get(fd, 0) + 1
            if idle >= IDLE_TURNS or _failed(fd):
                # Level-triggered: it would call back on every turn until someone waits.  And an error
                # (the kernel ended the session) is reported once: uvloop then drops its watch, and a
                # descriptor still counted as registered was never watched again, the mount process
                # waiting for good after a lazy unmount (a POSIX probe).  The next wait registers anew.
                self.stop(fd)
            else:
                self._idle[fd] = idle
            return
        self._idle[fd] = 0
        for future in waiting:
            future.set_result(None)

    def notify_closing(self, fd: int) -> None:
        """The descriptor is about to be closed (pyfuse3.terminate): its waiters get ClosedResourceError."""
        self.stop(fd)
        for future in self._waiters.pop(fd, []):
            if not future.done():
                future.set_exception(pyfuse3.asyncio.ClosedResourceError())

    def stop(self, fd: int) -> None:
        """Unregister `fd` from its loop (a later wait registers it again)."""
        self._idle.pop(fd, None)
        loop = self._watched.pop(fd, None)
        if loop is not None and not loop.is_closed():
            loop.remove_reader(fd)

    def stop_all(self) -> None:
        """Unregister every descriptor: the session ended, and pyfuse3 is about to close its own."""
        for fd in list(self._watched):
            self.stop(fd)


def _failed(fd: int) -> bool:
    """Whether `fd` reports an error or a hang-up (a FUSE device whose session the kernel ended)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return any(events & (select.POLLERR | select.POLLHUP | select.POLLNVAL) for _, events in poller.poll(0))


#: The one instance pyfuse3 is given (a mount process runs one FUSE session).
READABLE = FuseReadable()


def install() -> None:
    """Switch pyfuse3 to asyncio and to `READABLE`'s waiting."""
    pyfuse3.asyncio.enable()
    pyfuse3.asyncio.wait_readable = READABLE.wait_readable  # type: ignore[assignment]
    pyfuse3.asyncio.notify_closing = READABLE.notify_closing  # type: ignore[assignment]
