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

**A request the kernel takes back.**  A request can leave the device's queue
between the readiness and the read: an INTERRUPT the kernel queued when a
program waiting on a request got a signal (qemu's threads get many) is taken
back when that request is answered first, and a program killed takes back its
requests not read yet.  The read then fails with EAGAIN, and pyfuse3 ended
that worker on it with an exception nobody retrieved, without counting it
gone: each time one fewer request was served at once, for good (a fault
probe: 33 tracebacks in 40 minutes of qemu images under faults; 4 workers of
6 lost in a minute of 4 KiB writes by programs taking a signal every 0.2 ms).
So the wait looks once more, at once, before it hands the device over (the
read follows with no turn of the event loop between), and a worker whose read
still finds nothing is started again in its task (`_serve_through_eagain`).
"""

from __future__ import annotations

import asyncio
import logging
import select
from collections.abc import Callable, Coroutine
from typing import Any

import pyfuse3
import pyfuse3.asyncio

logger = logging.getLogger(__name__)

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
        while True:
            future: asyncio.Future[None] = loop.create_future()
            waiters = self._waiters.setdefault(fd, [])
            waiters.append(future)
            try:
                await future
            finally:
                if future.cancelled() and future in waiters:
                    waiters.remove(future)
            if _readable_now(fd):  # (else the request was taken back meanwhile: wait for the next)
                return
            if fd not in self._watched:  # (`_ready` unregistered it: the next round registers it again)
                loop.add_reader(fd, self._ready, fd)
                self._watched[fd] = loop

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


def _events_now(fd: int) -> int:
    """What `fd` reports right now, asked for POLLIN (0: nothing to read, no error)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return sum(events for _, events in poller.poll(0))


def _readable_now(fd: int) -> bool:
    """Whether a read of `fd` would find something (or an error to report) right now."""
    return bool(_events_now(fd))


def _failed(fd: int) -> bool:
    """Whether `fd` reports an error or a hang-up (a FUSE device whose session the kernel ended)."""
    return bool(_events_now(fd) & (select.POLLERR | select.POLLHUP | select.POLLNVAL))


#: The one instance pyfuse3 is given (a mount process runs one FUSE session).
READABLE = FuseReadable()


def _serve_through_eagain(
    worker: Callable[..., Coroutine[Any, Any, None]],
) -> Callable[..., Coroutine[Any, Any, None]]:
    """pyfuse3's worker, started again in its task when its read found the request taken back."""

    async def serve(*args: Any) -> None:
        while True:
            try:
                return await worker(*args)
            except BlockingIOError:  # EAGAIN (see the module's docstring); anything else ends it, as before
                logger.debug("a FUSE request was taken back before it was read; the worker goes on")

    return serve


def install() -> None:
    """Switch pyfuse3 to asyncio and to `READABLE`'s waiting; keep its workers through EAGAIN."""
    pyfuse3.asyncio.enable()
    pyfuse3.asyncio.wait_readable = READABLE.wait_readable  # type: ignore[assignment]
    pyfuse3.asyncio.notify_closing = READABLE.notify_closing  # type: ignore[assignment]
    # pyfuse3 starts each worker by this module-level name (its own `main` and the workers themselves).
    worker = pyfuse3._session_loop  # type: ignore[attr-defined]
    if not getattr(worker, "through_eagain", False):
        serve = _serve_through_eagain(worker)
        serve.through_eagain = True  # type: ignore[attr-defined]
        pyfuse3._session_loop = serve  # type: ignore[attr-defined]
