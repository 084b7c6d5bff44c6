"""The FUSE device's readiness, waited for without re-registering it per request (client/fuse_wait.py).

A pipe stands in for ``/dev/fuse``: a byte written is a request queued, a
byte read is pyfuse3 taking it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import Any

import pyfuse3
import pyfuse3.asyncio
import pytest
import uvloop

from chunkfs.client import fuse_wait
from chunkfs.client.fuse_wait import IDLE_TURNS, FuseReadable


class CountingLoop(asyncio.SelectorEventLoop):
    """An event loop that counts how often a descriptor is registered and unregistered."""

    def __init__(self) -> None:
        super().__init__()
        self.added = 0
        self.removed = 0

    def add_reader(self, fd: Any, callback: Any, *args: Any) -> None:
        self.added += 1
        super().add_reader(fd, callback, *args)

    def remove_reader(self, fd: Any) -> bool:
        self.removed += 1
        return super().remove_reader(fd)


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    os.set_blocking(r, False)
    yield r, w
    os.close(r)
    os.close(w)


async def serve(readable: FuseReadable, r: int, w: int, requests: int) -> int:
    """pyfuse3's pattern: wait, take one request, serve it (a turn of the loop); the requests taken."""
    taken = 0
    for _ in range(requests):
        asyncio.get_running_loop().call_soon(os.write, w, b"x")  # the kernel queues a request
        await asyncio.wait_for(readable.wait_readable(r), 5)
        taken += len(os.read(r, 1))
        await asyncio.sleep(0)
    return taken


def test_the_descriptor_stays_registered_from_one_request_to_the_next(pipe: tuple[int, int]) -> None:
    r, w = pipe
    loop = CountingLoop()
    readable = FuseReadable()
    try:
        assert loop.run_until_complete(serve(readable, r, w, 200)) == 200
        # pyfuse3's own wait: 200 registrations and 200 removals.
        assert loop.added == 1
        assert loop.removed == 0
        readable.stop_all()
        assert loop.removed == 1
        assert not loop.remove_reader(r)  # nothing left registered
    finally:
        loop.close()


def test_readiness_nobody_waits_for_unregisters_and_the_next_wait_registers_again(pipe: tuple[int, int]) -> None:
    r, w = pipe
    loop = CountingLoop()
    readable = FuseReadable()

    async def scenario() -> None:
        await serve(readable, r, w, 1)
        os.write(w, b"y")  # a request queued while no task waits
        for _ in range(IDLE_TURNS + 2):
            await asyncio.sleep(0)  # turns of the loop with nobody waiting: then it is unregistered
        assert loop.removed == 1
        assert not loop.remove_reader(r)
        await asyncio.wait_for(readable.wait_readable(r), 5)  # already readable: at once
        assert os.read(r, 1) == b"y"
        assert loop.added == 2

    try:
        loop.run_until_complete(scenario())
    finally:
        readable.stop_all()
        loop.close()


def test_on_uvloop_requests_are_taken_in_turn_and_closing_ends_the_wait(pipe: tuple[int, int]) -> None:
    r, w = pipe
    readable = FuseReadable()

    async def scenario() -> None:
        assert await serve(readable, r, w, 100) == 100
        waiting = asyncio.ensure_future(readable.wait_readable(r))
        await asyncio.sleep(0.01)
        assert not waiting.done()  # nothing queued: it waits
        readable.notify_closing(r)  # pyfuse3.terminate()
        with pytest.raises(pyfuse3.asyncio.ClosedResourceError):
            await waiting

    uvloop.run(scenario())


def test_a_cancelled_wait_leaves_nothing_behind(pipe: tuple[int, int]) -> None:
    r, w = pipe
    loop = CountingLoop()
    readable = FuseReadable()

    async def scenario() -> None:
        waiting = asyncio.ensure_future(readable.wait_readable(r))
        await asyncio.sleep(0.01)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        os.write(w, b"z")
        for _ in range(IDLE_TURNS + 2):
            await asyncio.sleep(0)  # the cancelled waiter is not woken; nobody waits: unregistered
        assert not loop.remove_reader(r)
        await asyncio.wait_for(readable.wait_readable(r), 5)
        assert os.read(r, 1) == b"z"
        assert await serve(readable, r, w, 3) == 3

    try:
        loop.run_until_complete(scenario())
    finally:
        readable.stop_all()
        loop.close()


def test_an_error_reported_while_nobody_waits_is_waited_for_again_on_uvloop() -> None:
    """The kernel ending the FUSE session makes the device report an error; uvloop calls the reader once
    and drops its watch.  Reported between two waits, the descriptor stayed counted as registered and
    the next wait never woke: a mount process lingered for good after a lazy unmount (a POSIX probe).
    A UDP socket sent to a closed port stands in for the device (ICMP gives it a pending error)."""
    import socket

    async def scenario() -> bool:
        readable = FuseReadable()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("127.0.0.1", 9))
            s.setblocking(False)
            first = asyncio.ensure_future(readable.wait_readable(s.fileno()))
            await asyncio.sleep(0.05)
            first.cancel()  # a request served: nobody waits now, the descriptor still registered
            await asyncio.sleep(0)
            s.send(b"x")
            await asyncio.sleep(0.2)  # the error comes while nobody waits
            try:
                await asyncio.wait_for(readable.wait_readable(s.fileno()), 2)
            except TimeoutError:
                return False
            return True

    loop = uvloop.new_event_loop()
    try:
        assert loop.run_until_complete(scenario()), "the wait after the error never woke"
    finally:
        loop.close()


def test_a_request_taken_back_before_the_read_is_not_handed_over(pipe: tuple[int, int]) -> None:
    """The kernel takes a request back (an INTERRUPT whose request was answered first, a program killed)
    between the readiness and the read: pyfuse3's read then failed with EAGAIN and its worker died
    (a fault probe).  The wait looks again before it returns, and waits on while nothing is there."""
    r, w = pipe

    async def scenario() -> None:
        readable = FuseReadable()
        waiting = asyncio.ensure_future(readable.wait_readable(r))
        await asyncio.sleep(0.01)
        readable._ready(r)  # readiness reported, the request gone before the waiter runs
        await asyncio.sleep(0.05)
        assert not waiting.done(), "handed over a device with nothing to read"
        os.write(w, b"q")
        await asyncio.wait_for(waiting, 5)
        assert os.read(r, 1) == b"q"
        readable.stop_all()

    uvloop.run(scenario())


def test_a_worker_whose_read_found_nothing_goes_on_in_its_task() -> None:
    """pyfuse3 ended a worker on EAGAIN without counting it gone: one fewer request served at once each
    time, for good (4 of 6 lost in a minute of writes by programs taking signals)."""
    calls: list[tuple[Any, ...]] = []

    async def worker(*args: Any) -> None:
        calls.append(args)
        if len(calls) < 3:
            raise BlockingIOError(11, "fuse_session_receive_buf failed with Resource temporarily unavailable")

    async def broken(*args: Any) -> None:
        raise OSError(5, "fuse_session_receive_buf failed with Input/output error")

    serve = fuse_wait._serve_through_eagain(worker)
    uvloop.run(serve("nursery", 2, 64))
    assert calls == [("nursery", 2, 64)] * 3  # started again twice, then ended as the worker did
    with pytest.raises(OSError, match="Input/output"):  # any other failure ends it, as before
        uvloop.run(fuse_wait._serve_through_eagain(broken)())


def test_install_puts_the_worker_pyfuse3_starts_behind_the_eagain_guard_once() -> None:
    original = pyfuse3._session_loop  # type: ignore[attr-defined]
    try:
        fuse_wait.install()
        guarded = pyfuse3._session_loop  # type: ignore[attr-defined]
        assert guarded is not original and getattr(guarded, "through_eagain", False)
        fuse_wait.install()
        assert pyfuse3._session_loop is guarded  # type: ignore[attr-defined]
    finally:
        pyfuse3._session_loop = original  # type: ignore[attr-defined]
        pyfuse3.asyncio.disable()
