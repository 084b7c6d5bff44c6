"""Requests answered at once on the event loop (`PromptHandler`), over a real TCP connection.

A prompt handler is asked about every request in the order they arrive; what
it answers goes back without a task, what it declines goes to the handler.
Its failures are answered as a handler's are: an error frame with the
error's code, and for a malformed request a closed connection.
"""

from __future__ import annotations

from typing import Any

import pytest

from chunkfs.common.errors import NotFound, ProtocolError, Unavailable
from chunkfs.protocol import rpc
from chunkfs.protocol.messages import Msg

pytestmark = pytest.mark.timeout(60)

SECRET = bytes(range(32))
CREDS = rpc.Credentials("clu", SECRET, "cs", "s")


async def serve(asked: list[tuple[int, bool]], handled: list[int]) -> rpc.RpcServer:
    async def handler(conn: rpc.Connection, msg: Msg, h: dict[str, Any], payload: bytes) -> rpc.Reply:
        handled.append(h["chunk_id"])
        return {}, b""

    def prompt(conn: rpc.Connection, msg: Msg, h: dict[str, Any], payload: bytes) -> rpc.Reply | None:
        if msg != Msg.CS_READ:
            return None
        asked.append((h["chunk_id"], conn.writable))
        if h["chunk_id"] == 13:
            raise NotFound("no chunk 13 here", chunk_id=13)
        if h["chunk_id"] == 66:
            raise ProtocolError("chunk 66 is malformed on purpose")
        if h["chunk_id"] % 2:
            return None  # odd: to the handler
        return {}, bytes([h["chunk_id"]]) * h["length"]

    server = rpc.RpcServer(CREDS, handler, prompt_handler=prompt)
    await server.listen("127.0.0.1:0")
    return server


def read(chunk_id: int) -> dict[str, Any]:
    return {"chunk_id": chunk_id, "version": 1, "offset": 0, "length": 3}


async def test_answered_at_once_or_passed_on_in_order() -> None:
    asked: list[tuple[int, bool]] = []
    handled: list[int] = []
    server = await serve(asked, handled)
    conn = await rpc.connect(f"127.0.0.1:{server.port}", rpc.Credentials("clu", SECRET, "client", "c"))
    try:
        sent = [conn.request(Msg.CS_READ, read(i)) for i in range(12)]  # all on the wire before any answer
        answers = [await r for r in sent]
        assert [chunk for chunk, _ in asked] == list(range(12))  # asked in the order they came
        assert handled == [i for i in range(12) if i % 2]  # the declined ones, to the handler
        assert [payload for _, payload in answers] == [bytes([i]) * 3 if i % 2 == 0 else b"" for i in range(12)]
        with pytest.raises(NotFound, match="no chunk 13") as caught:
            await conn.call(Msg.CS_READ, read(13))
        assert caught.value.context["chunk_id"] == 13
        assert (await conn.call(Msg.CS_READ, read(4)))[1] == b"\x04" * 3  # the connection lives on
        with pytest.raises(ProtocolError, match="malformed on purpose"):
            await conn.call(Msg.CS_READ, read(66))
        with pytest.raises(Unavailable):  # a malformed request closes the connection
            await conn.call(Msg.CS_READ, read(2), timeout=10)
    finally:
        conn.close()
        await server.close()
