"""Notices: requests that get no answer (Raft's messages), over a real TCP connection.

A notice reaches the server's notice handler in the order sent, and nothing
comes back (no empty acknowledgement: that was half the frames of a commit).
Only messages marked as notices may be sent so; anything else sent as a
notice, or a notice to a server without a notice handler, closes the
connection as any other malformed message does.  A notice is dropped, not
queued, while the peer does not read.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chunkfs.common.errors import Unavailable
from chunkfs.protocol import rpc
from chunkfs.protocol.frame import Kind
from chunkfs.protocol.messages import Msg

pytestmark = pytest.mark.timeout(60)

SECRET = bytes(range(32))


async def no_requests(conn: rpc.Connection, msg: Msg, h: dict[str, Any], payload: bytes) -> rpc.Reply:
    return {"role": "mds", "node": "s"}, b""


async def serve(notices: list[tuple[Msg, dict[str, Any]]] | None) -> rpc.RpcServer:
    def take(conn: rpc.Connection, msg: Msg, h: dict[str, Any], payload: bytes) -> None:
        assert notices is not None
        notices.append((msg, h))

    server = rpc.RpcServer(rpc.Credentials("clu", SECRET, "mds", "s"), no_requests,
                           notice_handler=take if notices is not None else None)
    await server.listen("127.0.0.1:0")
    return server


async def test_notices_arrive_in_order_and_get_no_answer() -> None:
    notices: list[tuple[Msg, dict[str, Any]]] = []
    server = await serve(notices)
    conn = await rpc.connect(f"127.0.0.1:{server.port}", rpc.Credentials("clu", SECRET, "mds", "c"))
    answers: list[Kind] = []
    deliver = conn._deliver

    def spy(frame: rpc.Frame) -> None:
        answers.append(frame[0])
        deliver(frame)

    conn._deliver = spy  # type: ignore[method-assign]
    try:
        for i in range(100):
            assert conn.notify(Msg.RAFT, {"m": {"i": i}}) is True
        await conn.call(Msg.PING, {}, timeout=20)  # answered after the notices before it were taken
        assert [h["m"]["i"] for _, h in notices] == list(range(100))
        assert {msg for msg, _ in notices} == {Msg.RAFT}
        assert answers == [Kind.RESPONSE]  # the PING's: nothing came back for the notices
    finally:
        conn.close()
        await server.close()


@pytest.mark.parametrize("handler", [True, False], ids=["request-as-notice", "no-notice-handler"])
async def test_a_notice_the_server_cannot_take_closes_the_connection(handler: bool) -> None:
    notices: list[tuple[Msg, dict[str, Any]]] = []
    server = await serve(notices if handler else None)
    conn = await rpc.connect(f"127.0.0.1:{server.port}", rpc.Credentials("clu", SECRET, "mds", "c"))
    try:
        if handler:
            conn.notify(Msg.PING, {})  # a PING needs its answer: it is not a notice
        else:
            conn.notify(Msg.RAFT, {"m": {}})
        await asyncio.wait_for(conn.wait_closed(), 20)
        assert notices == []
        with pytest.raises(Unavailable, match="closed"):
            conn.notify(Msg.RAFT, {"m": {}})
    finally:
        conn.close()
        await server.close()


async def test_a_notice_is_dropped_while_the_peer_does_not_read() -> None:
    server = await serve([])
    conn = await rpc.connect(f"127.0.0.1:{server.port}", rpc.Credentials("clu", SECRET, "mds", "c"))
    try:
        conn.pause_writing()  # what the transport says above its high-water mark
        assert conn.notify(Msg.RAFT, {"m": {}}) is False
        conn.resume_writing()
        assert conn.notify(Msg.RAFT, {"m": {}}) is True
    finally:
        conn.close()
        await server.close()
