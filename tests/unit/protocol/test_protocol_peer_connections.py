"""Connections by address (protocol/peer_connections.py): one connect per address at a time, shared by
every request that wants it, and none waiting for another address's (a frozen server's connect takes
the whole handshake timeout)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chunkfs.common.errors import Timeout
from chunkfs.protocol.peer_connections import PeerConnections


class FakeConn:
    closed = False

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


async def test_a_failed_connect_fails_every_waiter_and_the_next_request_tries_again() -> None:
    peers = Peers()
    peers.fail = True
    waiting = [asyncio.ensure_future(peers.pool.get("frozen")) for _ in range(3)]
    await asyncio.sleep(0)
    peers.thaw.set()
    for outcome in await asyncio.gather(*waiting, return_exceptions=True):
        assert isinstance(outcome, Timeout)
    assert peers.made == ["frozen"]
    peers.fail = False
    assert not (await peers.pool.get("frozen")).closed
    assert peers.made == ["frozen", "frozen"]


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
