"""Connections by address (protocol/peer_connections.py): one connect per address at a time, shared by
every request that wants it, and none waiting for another address's (a frozen server's connect takes
the whole handshake timeout)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chunkfs.common.errors import Timeout, Unavailable
from chunkfs.protocol.peer_connections import PeerConnections


class FakeConn:
    closed = False
    silent = False
    close_reason = ""

    def close(self) -> None:
        self.closed = True


class Peers:
    """Connects at once, except to "frozen", which answers when `thaw` is set (or fails, when told)."""

    def __init__(self) -> None:
        self.thaw = asyncio.Event()
        self.fail = False
        self.made: list[str] = []
        self.pool = PeerConnections(self.connect)

    async def connect(self, addr: str) -> Any:
        self.made.append(addr)
        if addr == "frozen":
            await self.thaw.wait()
            if self.fail:
                raise Timeout("handshake with frozen timed out")
        return FakeConn()


async def test_requests_wait_for_one_connect_to_their_address_and_not_for_another() -> None:
    peers = Peers()
    frozen = [asyncio.ensure_future(peers.pool.get("frozen")) for _ in range(10)]
    live = await asyncio.wait_for(peers.pool.get("live"), 1)  # before: behind the frozen one's, for 5 s
    assert not any(f.done() for f in frozen)
    peers.thaw.set()
    conns = await asyncio.gather(*frozen)
    assert all(conn is conns[0] for conn in conns) and conns[0] is not live
    assert sorted(peers.made) == ["frozen", "live"]
    assert await peers.pool.get("frozen") is conns[0]  # kept
    peers.pool.close()
    assert conns[0].closed and live.closed


async def test_a_timed_out_address_fails_at_once_until_a_connect_in_the_background_answers() -> None:
    """A frozen server cost every request a connect timeout of its own, one chunk after the other: a VM
    waited 5 s per chunk written for the whole freeze (a fault probe with qemu)."""
    peers = Peers()
    await peers.pool.get("live")  # another server answers: this side's network is there
    peers.fail = True
    waiting = [asyncio.ensure_future(peers.pool.get("frozen")) for _ in range(3)]
    await asyncio.sleep(0)
    peers.thaw.set()
    for outcome in await asyncio.gather(*waiting, return_exceptions=True):
        assert isinstance(outcome, Timeout)
    assert peers.made == ["live", "frozen"] and peers.pool.silent("frozen")
    peers.thaw.clear()  # still frozen: the next connect hangs
    for _ in range(5):  # at once, however many ask, and one connect goes on trying meanwhile
        with pytest.raises(Unavailable, match="frozen does not answer .handshake with frozen timed out"):
            await asyncio.wait_for(peers.pool.get("frozen"), 1)
    assert peers.made == ["live", "frozen", "frozen"]
    peers.fail = False
    peers.thaw.set()  # it answers the connect under way
    for _ in range(10):
        await asyncio.sleep(0)
    assert not peers.pool.silent("frozen")
    conn = await asyncio.wait_for(peers.pool.get("frozen"), 1)
    assert not conn.closed and peers.made == ["live", "frozen", "frozen"]


async def test_while_no_connection_is_live_a_silent_address_is_waited_for_as_before() -> None:
    """Every server silent (this side's network gone, its host paused): failing requests at once would turn
    the pause into I/O errors; they wait for the connect."""
    peers = Peers()
    peers.fail = True
    first = asyncio.ensure_future(peers.pool.get("frozen"))
    await asyncio.sleep(0)
    peers.thaw.set()
    with pytest.raises(Timeout):
        await first
    assert peers.pool.silent("frozen")
    peers.thaw.clear()
    peers.fail = False
    waiting = asyncio.ensure_future(peers.pool.get("frozen"))
    await asyncio.sleep(0.01)
    assert not waiting.done()  # waits for the connect, not failed at once
    peers.thaw.set()
    assert not (await asyncio.wait_for(waiting, 1)).closed
    assert not peers.pool.silent("frozen")


async def test_a_connection_given_up_for_its_silence_makes_its_address_silent_and_a_refusal_does_not() -> None:
    peers = Peers()
    await peers.pool.get("other")
    conn = await peers.pool.get("live")
    conn.silent, conn.close_reason = True, "live sent nothing for 8.0 s"
    conn.close()
    peers.made.clear()

    async def hangs(addr: str) -> Any:
        peers.made.append(addr)
        await asyncio.sleep(3600)

    peers.pool._make = hangs
    with pytest.raises(Unavailable, match="live does not answer .live sent nothing for 8.0 s"):
        await asyncio.wait_for(peers.pool.get("live"), 1)
    assert peers.made == ["live"]  # the connect that tries it again, in the background

    async def refused(addr: str) -> Any:
        raise Unavailable(f"cannot connect to {addr}: Connection refused")

    other = PeerConnections(refused)
    for _ in range(2):  # each request tries (a refusal is cheap), none is failed at once
        with pytest.raises(Unavailable, match="refused"):
            await other.get("down")
        assert not other.silent("down")
    peers.pool.close()


async def test_a_request_given_up_leaves_the_connect_to_the_others() -> None:
    peers = Peers()
    given_up = asyncio.ensure_future(peers.pool.get("frozen"))
    other = asyncio.ensure_future(peers.pool.get("frozen"))
    await asyncio.sleep(0)
    given_up.cancel()
    with pytest.raises(asyncio.CancelledError):
        await given_up
    peers.thaw.set()
    assert not (await other).closed


async def test_close_stops_a_connect_under_way() -> None:
    peers = Peers()
    waiting = asyncio.ensure_future(peers.pool.get("frozen"))
    await asyncio.sleep(0)
    peers.pool.close()
    with pytest.raises(asyncio.CancelledError):
        await waiting
