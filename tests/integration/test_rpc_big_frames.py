"""Headers up to MAX_HEADER_LEN cross a real TCP connection, both ways, on asyncio and on uvloop.

A header over 256 KiB (a chunk server's replica list, a stat of a big cluster)
used to close the connection with BufferError (issue 14).  Replica lists now
travel in pages; an old-style one gets a clear refusal.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chunkfs.common.errors import ProtocolError
from chunkfs.protocol import rpc
from chunkfs.protocol.frame import MAX_HEADER_LEN, encode_header
from chunkfs.protocol.messages import Msg

pytestmark = pytest.mark.timeout(60)

SECRET = bytes(range(32))


def pad_to(header: dict[str, Any], size: int) -> dict[str, Any]:
    """Add a `pad` dict entry so the header encodes to exactly `size` bytes."""
    base = len(encode_header({**header, "proc": {"pad": b""}}))
    out = {**header, "proc": {"pad": b"x" * (size - base - 4)}}  # bin8 -> bin32: 3 more bytes + 1
    while len(encode_header(out)) < size:
        out["proc"]["pad"] += b"x"
    while len(encode_header(out)) > size:
        out["proc"]["pad"] = out["proc"]["pad"][:-1]
    assert len(encode_header(out)) == size
    return out


async def exchange() -> list[int]:
    seen: list[int] = []

    async def handler(conn: rpc.Connection, msg: Msg, h: dict[str, Any], payload: bytes) -> rpc.Reply:
        if msg == Msg.SET_CONFIG:
            seen.append(len(encode_header(h)))
            return {"settings": {}}, b""
        return pad_to({"role": "mds", "node": "s"}, MAX_HEADER_LEN), b""

    server = rpc.RpcServer(rpc.Credentials("clu", SECRET, "mds", "s"), handler)
    await server.listen("127.0.0.1:0")
    conn = await rpc.connect(f"127.0.0.1:{server.port}", rpc.Credentials("clu", SECRET, "cs", "c"))
    try:
        for _ in range(2):  # a response header at the limit, twice (the buffer is given back between)
            reply, _ = await conn.call(Msg.PING, {}, timeout=20)
            seen.append(len(encode_header(reply)))
        # A request header at the limit (a field the schema does not bound, so only the frame limit applies).
        request = {"values": {"pad": "x" * (MAX_HEADER_LEN - 20)}}
        while len(encode_header(request)) < MAX_HEADER_LEN:
            request["values"]["pad"] += "x"
        assert len(encode_header(request)) == MAX_HEADER_LEN
        await conn.call(Msg.SET_CONFIG, request, timeout=20)
        assert not conn.closed
        # An old-style registration, 50,000 replicas in one header (under 1 MiB): refused with a
        # clear error (one frame carries one page), the connection closed — not a BufferError.
        replicas = [[(1 << 40) + i, (7 << 32) + 1] for i in range(50_000)]
        header = {"cluster_uuid": "u", "cs_id": 1, "addr": "a:1", "host": "h", "total": 1, "free": 1,
                  "replicas": replicas}
        assert 700_000 < len(encode_header(header)) <= MAX_HEADER_LEN
        with pytest.raises(ProtocolError, match="send them in pages"):
            await conn.call(Msg.CS_REGISTER, header, timeout=20)
        await asyncio.wait_for(conn.wait_closed(), 20)
    finally:
        conn.close()
        await server.close()
    return seen


async def test_headers_at_the_limit_on_asyncio() -> None:
    assert await exchange() == [MAX_HEADER_LEN] * 3


def test_headers_at_the_limit_on_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")
    assert uvloop.run(exchange()) == [MAX_HEADER_LEN] * 3


def test_headers_at_the_limit_on_a_fresh_asyncio_loop() -> None:
    assert asyncio.run(exchange()) == [MAX_HEADER_LEN] * 3
