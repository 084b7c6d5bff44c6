"""A connection watched for silence, over real TCP: a frozen peer is given up in seconds, a slow one is not.

A chunk server frozen by SIGSTOP, or cut off without a reset, keeps its TCP
connection open and says nothing: before the watch, a write waited out the
whole request timeout (20-30 s) for it.  A watched connection pings a peer
gone quiet while a request waits, and gives it up when not even the pings
are answered; a live peer busy with a slow request answers the pings and
is waited for.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from chunkfs.common.errors import Unavailable
from chunkfs.protocol import rpc
from chunkfs.protocol.messages import Msg

pytestmark = pytest.mark.timeout(60)

SECRET = bytes(range(32))
LIMIT = 0.6  # seconds of silence before the peer is given up (the default is 8)
WAIT = 20.0  # the request's own timeout: a watch that does not work shows as a Timeout after this


async def serve(slow_for: float, frozen: bool) -> rpc.RpcServer:
    """A server whose CS_CHECKSUMS answer takes `slow_for` s; `frozen`: it then reads nothing more, as if stopped."""

    async def handler(conn: rpc.Connection, msg: Msg, h: dict[str, Any], payload: bytes) -> rpc.Reply:
        if msg == Msg.PING:
            return {"role": "cs", "node": "s"}, b""
        if frozen:
            assert conn.transport is not None
            conn.transport.pause_reading()  # no ping is read, so none is answered
        await asyncio.sleep(slow_for)
        return {"crcs": [1]}, b""

    server = rpc.RpcServer(rpc.Credentials("clu", SECRET, "cs", "s"), handler)
    await server.listen("127.0.0.1:0")
    return server


async def ask(server: rpc.RpcServer, silence_limit: float | None) -> tuple[rpc.Connection, Any]:
    conn = await rpc.connect(f"127.0.0.1:{server.port}", rpc.Credentials("clu", SECRET, "client", "c"),
                             silence_limit=silence_limit)
    return conn, conn.call(Msg.CS_CHECKSUMS, {"chunk_id": 1, "version": 1}, timeout=WAIT)


async def test_a_peer_that_answers_nothing_is_given_up_and_every_waiting_request_fails() -> None:
    server = await serve(slow_for=WAIT * 2, frozen=True)
    conn, first = await ask(server, LIMIT)
    second = conn.call(Msg.CS_CHECKSUMS, {"chunk_id": 2, "version": 1}, timeout=WAIT)
    try:
        results = await asyncio.gather(first, second, return_exceptions=True)
        for result in results:
            assert isinstance(result, Unavailable), result
            assert "sent nothing for" in str(result) and "frozen or cut off" in str(result), result
        assert conn.closed
    finally:
        conn.close()
        await server.close()


async def test_a_live_peer_slower_than_the_limit_is_waited_for() -> None:
    server = await serve(slow_for=LIMIT * 4, frozen=False)  # answers the pings meanwhile
    conn, call = await ask(server, LIMIT)
    try:
        assert await call == ({"crcs": [1]}, b"")
        assert not conn.closed
        # Idle for longer than the limit, then a request: the silence counts from the request.
        await asyncio.sleep(LIMIT * 2)
        assert await conn.call(Msg.PING, {}, timeout=WAIT) == ({"role": "cs", "node": "s"}, b"")
    finally:
        conn.close()
        await server.close()


async def test_this_side_stopped_for_longer_than_the_limit_does_not_blame_the_peer() -> None:
    """A paused process (SIGSTOP, a VM paused, a starved machine) finds its silence check late on resume.

    The silence was its own: neither did it read what came nor send its pings.  Blaming the peer
    would have a mount that was paused report healthy chunk servers as failed.
    """
    server = await serve(slow_for=LIMIT * 5, frozen=False)
    conn, call = await ask(server, LIMIT)
    waiting = asyncio.ensure_future(call)
    try:
        await asyncio.sleep(0.05)  # the request is on its way
        time.sleep(LIMIT * 2.5)  # this side's loop stopped: nothing read, no ping sent
        assert await waiting == ({"crcs": [1]}, b"")
        assert not conn.closed
    finally:
        conn.close()
        await server.close()


async def test_an_unwatched_connection_waits_for_its_own_timeout() -> None:
    server = await serve(slow_for=LIMIT * 4, frozen=True)
    conn, call = await ask(server, None)
    try:
        assert await call == ({"crcs": [1]}, b"")  # answered late, nothing given up meanwhile
    finally:
        conn.close()
        await server.close()
