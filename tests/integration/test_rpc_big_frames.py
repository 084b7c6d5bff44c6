"""Headers up to MAX_HEADER_LEN cross a real TCP connection, both ways, on asyncio and on uvloop.

A header over 256 KiB (a chunk server's replica list, a stat of a big cluster)
used to close the connection with BufferError (issue 14).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

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
        if msg == Msg.CS_REGISTER:
            seen.append(len(h["replicas"]))
            return {"cs_id": 1, "delete": []}, b""
        return pad_to({"role": "mds", "node": "s"}, MAX_HEADER_LEN), b""

    server = rpc.RpcServer(rpc.Credentials("clu", SECRET, "mds", "s"), handler)
    await server.listen("127.0.0.1:0")
    conn = await rpc.connect(f"127.0.0.1:{server.port}", rpc.Credentials("clu", SECRET, "cs", "c"))
    try:
        for _ in range(2):
            reply, _ = await conn.call(Msg.PING, {}, timeout=20)
            seen.append(len(encode_header(reply)))
        # An old-style registration: 50,000 replicas in one header (just under 1 MiB).
        replicas = [[(1 << 40) + i, (7 << 32) + 1] for i in range(50_000)]
        header = {"cluster_uuid": "u", "cs_id": 1, "addr": "a:1", "host": "h", "total": 1, "free": 1,
                  "replicas": replicas}
        assert 700_000 < len(encode_header(header)) <= MAX_HEADER_LEN
        await conn.call(Msg.CS_REGISTER, header, timeout=20)
        assert not conn.closed
    finally:
        conn.close()
        await server.close()
    return seen


async def test_headers_at_the_limit_on_asyncio() -> None:
    assert await exchange() == [MAX_HEADER_LEN, MAX_HEADER_LEN, 50_000]


def test_headers_at_the_limit_on_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")
    assert uvloop.run(exchange()) == [MAX_HEADER_LEN, MAX_HEADER_LEN, 50_000]


def test_headers_at_the_limit_on_a_fresh_asyncio_loop() -> None:
    assert asyncio.run(exchange()) == [MAX_HEADER_LEN, MAX_HEADER_LEN, 50_000]
