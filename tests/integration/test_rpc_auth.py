"""RPC over real TCP on 127.0.0.1: authentication, pipelining, errors, hostile peers.

Server and clients share one event loop; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest

from chunkfs.common.errors import (
    AuthenticationFailed,
    ChunkFSError,
    InternalError,
    NotFound,
    NotMaster,
    ProtocolError,
    StaleVersion,
    Timeout,
    Unavailable,
)
from chunkfs.protocol import rpc
from chunkfs.protocol.frame import (
    MAX_HEADER_LEN,
    MAX_PAYLOAD_LEN,
    PREFIX_SIZE,
    Kind,
    decode_header,
    encode_header,
    pack_prefix,
    unpack_prefix,
)
from chunkfs.protocol.messages import Msg
from chunkfs.protocol.rpc import NONCE_SIZE, Connection, Credentials, Reply, RpcServer, _proof, connect

pytestmark = pytest.mark.timeout(30)

SECRET = bytes(range(32))
CLUSTER = "testclu"


def creds(secret: bytes = SECRET, cluster: str = CLUSTER, node: str = "c1") -> Credentials:
    return Credentials(cluster=cluster, secret=secret, role="client", node=node)


class Handler:
    """Server side: GETATTR echoes (after an optional delay), LOOKUP raises by name."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.calls = 0

    async def __call__(self, conn: Connection, msg: Msg, header: dict[str, Any], payload: bytes) -> Reply:
        self.calls += 1
        if msg == Msg.PING:
            return {"role": "mds", "node": f"server-saw-{conn.peer_role}"}, b""
        if msg == Msg.GETATTR:
            ino = header["ino"]
            if ino < 0:
                await self.release.wait()
            elif ino % 7 == 0:
                await asyncio.sleep(random.random() / 100)
            return {"attr": {"ino": ino}}, b""
        if msg == Msg.CS_WRITE:
            return {}, b""
        if msg == Msg.CS_READ:
            return {}, bytes(header["length"])
        if msg == Msg.LOOKUP:
            name = header["name"]
            if name == "notfound":
                raise NotFound(f"{name!r} does not exist", cs_id=5, chunk_id=2**40, path="/a/b", junk=[1, 2])
            if name == "stale":
                raise StaleVersion("replica has version 3", cs_id=9, version=3)
            if name == "notmaster":
                raise NotMaster("ask the master", leader="127.0.0.1:9999")
            if name == "bug":
                raise KeyError("oops")
            if name == "badreply":
                return {"nope": 1}, b""
        raise NotFound("unhandled")


@pytest.fixture
async def server(caplog: pytest.LogCaptureFixture) -> AsyncIterator[tuple[RpcServer, Handler]]:
    caplog.set_level(logging.WARNING)
    handler = Handler()
    srv = RpcServer(Credentials(CLUSTER, SECRET, "mds", "mds1"), handler)
    await srv.listen("127.0.0.1:0")
    try:
        yield srv, handler
    finally:
        handler.release.set()
        await srv.close()
        assert srv._server is not None
        await asyncio.wait_for(srv._server.wait_closed(), 5)
        for _ in range(20):
            await asyncio.sleep(0)
    # No task may have died with an unhandled exception anywhere.
    bad = [r for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage() for r in bad]


def addr_of(srv: RpcServer) -> str:
    return f"127.0.0.1:{srv.port}"


async def good_client_works(srv: RpcServer) -> None:
    conn = await connect(addr_of(srv), creds(node="good"), timeout=5)
    try:
        header, _ = await conn.call(Msg.GETATTR, {"ino": 42}, timeout=5)
        assert header == {"attr": {"ino": 42}}
    finally:
        conn.close()


async def raw_open(srv: RpcServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", srv.port), 5)


async def raw_close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), 5)
    except (ConnectionError, OSError):
        pass


async def read_frame(reader: asyncio.StreamReader, timeout: float = 5) -> tuple[Kind, int, dict[str, Any]] | None:
    """One frame, or None when the peer closed the connection."""
    try:
        prefix = unpack_prefix(await asyncio.wait_for(reader.readexactly(PREFIX_SIZE), timeout))
        header = decode_header(await asyncio.wait_for(reader.readexactly(prefix.header_len), timeout))
        if prefix.payload_len:
            await asyncio.wait_for(reader.readexactly(prefix.payload_len), timeout)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    return prefix.kind, prefix.type, header


async def expect_error_then_close(reader: asyncio.StreamReader, code: str | None = None) -> None:
    """The server answers with error frames (at most a couple) and closes; never anything else."""
    for _ in range(3):
        frame = await read_frame(reader)
        if frame is None:
            return
        kind, _, header = frame
        assert kind == Kind.ERROR, frame
        if code is not None:
            assert header["code"] == code, header
    raise AssertionError("server kept sending frames instead of closing")


def hello_header(nonce: bytes) -> dict[str, Any]:
    return {"cluster": CLUSTER, "nonce": nonce, "role": "x", "node": "n"}


def raw_frame(kind: Kind, mtype: int, rid: int, header: dict[str, Any], payload: bytes = b"") -> bytes:
    hdr = encode_header(header)
    return pack_prefix(kind, mtype, rid, len(hdr), len(payload)) + hdr + payload


async def raw_authenticate(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, secret: bytes = SECRET, with_proof: bytes = b""
) -> None:
    """The handshake by hand; `with_proof`: frames sent in the same write as PROOF (their answers are not read)."""
    nonce = os.urandom(NONCE_SIZE)
    writer.write(raw_frame(Kind.REQUEST, Msg.HELLO, 0, hello_header(nonce)))
    frame = await read_frame(reader)
    assert frame is not None and frame[0] == Kind.RESPONSE
    server_nonce = frame[2]["nonce"]
    assert frame[2]["proof"] == _proof(secret, b"server", CLUSTER, nonce, server_nonce)
    proof = _proof(secret, b"client", CLUSTER, server_nonce, nonce)
    writer.write(raw_frame(Kind.REQUEST, Msg.PROOF, 0, {"proof": proof}) + with_proof)
    frame = await read_frame(reader)
    assert frame is not None and frame[0] == Kind.RESPONSE


# -- authentication -------------------------------------------------------------


async def test_first_requests_sent_with_the_proof_are_served(server: tuple[RpcServer, Handler]) -> None:
    """Requests right behind PROOF, in the same segment, are read under full limits once the peer is trusted."""
    srv, handler = server
    reader, writer = await raw_open(srv)
    try:
        big = os.urandom(1 << 20)
        await raw_authenticate(reader, writer, with_proof=(
            raw_frame(Kind.REQUEST, Msg.GETATTR, 7, {"ino": 3})
            + raw_frame(Kind.REQUEST, Msg.CS_WRITE, 8, {
                "chunk_id": 1, "version": 1, "offset": 0, "chain": [], "sync": False}, big)))
        kinds = []
        for _ in range(2):
            frame = await read_frame(reader)
            assert frame is not None
            kinds.append(frame[0])
        assert kinds == [Kind.RESPONSE] * 2
        assert handler.calls == 2
    finally:
        await raw_close(writer)


async def test_a_flood_of_bytes_before_authentication_is_refused(server: tuple[RpcServer, Handler]) -> None:
    srv, _ = server
    reader, writer = await raw_open(srv)
    try:
        nonce = os.urandom(NONCE_SIZE)
        hello = raw_frame(Kind.REQUEST, Msg.HELLO, 0, hello_header(nonce))
        with contextlib.suppress(ConnectionError):
            writer.write(hello * 2000)  # far more than a handshake: refused, not buffered
            await writer.drain()
        await expect_error_then_close(reader)
    finally:
        await raw_close(writer)
    await good_client_works(srv)


async def test_correct_secret_works(server: tuple[RpcServer, Handler]) -> None:
    srv, _ = server
    conn = await connect(addr_of(srv), creds(), timeout=5)
    try:
        header, payload = await conn.call(Msg.PING, {}, timeout=5)
        assert header == {"role": "mds", "node": "server-saw-client"}
        assert payload == b""
        assert len(srv.connections) == 1
    finally:
        conn.close()


async def test_pipelined_calls_matched_by_id(server: tuple[RpcServer, Handler]) -> None:
    srv, handler = server
    conn = await connect(addr_of(srv), creds(), timeout=5)
    try:
        inos = list(range(1, 201))
        results = await asyncio.wait_for(
            asyncio.gather(*(conn.call(Msg.GETATTR, {"ino": i}, timeout=10) for i in inos)), 20
        )
        assert [h["attr"]["ino"] for h, _ in results] == inos
        assert handler.calls == 200
    finally:
        conn.close()


async def test_payloads_both_ways(server: tuple[RpcServer, Handler]) -> None:
    srv, _ = server
    conn = await connect(addr_of(srv), creds(), timeout=5)
    try:
        data = os.urandom(1 << 20)
        header = {"chunk_id": 1, "version": 1, "offset": 0, "chain": [], "sync": True}
        assert await conn.call(Msg.CS_WRITE, header, data, timeout=5) == ({}, b"")
        _, payload = await conn.call(Msg.CS_READ, {"chunk_id": 1, "version": 1, "offset": 0, "length": 300000})
        assert payload == bytes(300000)
    finally:
        conn.close()


async def test_wrong_secret_refused_and_server_survives(server: tuple[RpcServer, Handler]) -> None:
    srv, handler = server
    with pytest.raises(AuthenticationFailed):
        await asyncio.wait_for(connect(addr_of(srv), creds(secret=b"\x01" * 32), timeout=5), 10)
    assert handler.calls == 0
    await good_client_works(srv)


async def test_wrong_client_proof_refused_by_server(server: tuple[RpcServer, Handler]) -> None:
    # A client that checks nothing and sends a wrong PROOF gets an auth error and a closed connection.
    srv, handler = server
    reader, writer = await raw_open(srv)
    try:
        nonce = os.urandom(NONCE_SIZE)
        writer.write(raw_frame(Kind.REQUEST, Msg.HELLO, 0, hello_header(nonce)))
        frame = await read_frame(reader)
        assert frame is not None and frame[0] == Kind.RESPONSE
        writer.write(raw_frame(Kind.REQUEST, Msg.PROOF, 0, {"proof": b"\x00" * 32}))
        await expect_error_then_close(reader, "auth")
    finally:
        await raw_close(writer)
    assert handler.calls == 0
    await good_client_works(srv)


async def test_wrong_cluster_refused(server: tuple[RpcServer, Handler]) -> None:
    srv, handler = server
    with pytest.raises(AuthenticationFailed, match="cluster"):
        await asyncio.wait_for(connect(addr_of(srv), creds(cluster="other"), timeout=5), 10)
    assert handler.calls == 0
    await good_client_works(srv)


async def test_a_configuration_of_another_cluster_of_the_same_name_and_secret_is_refused() -> None:
    # A wrong uuid in a client's cluster.json went unnoticed (an operator probe): the cluster's id is checked
    # by the server when both sides know it; a peer that sends none (a tool, an older node) is not refused.
    srv = RpcServer(Credentials(CLUSTER, SECRET, "mds", "mds1", uuid="1111-aaaa"), Handler())
    await srv.listen("127.0.0.1:0")
    try:
        other = Credentials(CLUSTER, SECRET, "client", "c1", uuid="2222-bbbb")
        with pytest.raises(AuthenticationFailed, match="of id 1111-aaaa, not to the one of id 2222-bbbb"):
            await asyncio.wait_for(connect(addr_of(srv), other, timeout=5), 10)
        for peer in (Credentials(CLUSTER, SECRET, "client", "c2", uuid="1111-aaaa"), creds(node="c3")):
            conn = await asyncio.wait_for(connect(addr_of(srv), peer, timeout=5), 10)
            try:
                assert await conn.call(Msg.GETATTR, {"ino": 7}, timeout=5) == ({"attr": {"ino": 7}}, b"")
            finally:
                conn.close()
    finally:
        await srv.close()


async def test_server_that_does_not_know_secret_is_refused_by_client() -> None:
    # Mutual authentication: a server with another secret must not be trusted.
    srv = RpcServer(Credentials(CLUSTER, b"\x02" * 32, "mds", "impostor"), Handler())
    await srv.listen("127.0.0.1:0")
    try:
        with pytest.raises(AuthenticationFailed, match="secret"):
            await asyncio.wait_for(connect(addr_of(srv), creds(), timeout=5), 10)
    finally:
        await srv.close()


async def test_request_before_hello_refused(server: tuple[RpcServer, Handler]) -> None:
    srv, handler = server
    reader, writer = await raw_open(srv)
    try:
        writer.write(raw_frame(Kind.REQUEST, Msg.GETATTR, 1, {"ino": 1}))
        await expect_error_then_close(reader, "auth")
    finally:
        await raw_close(writer)
    assert handler.calls == 0
    await good_client_works(srv)


async def test_request_instead_of_proof_refused(server: tuple[RpcServer, Handler]) -> None:
    srv, handler = server
    reader, writer = await raw_open(srv)
    try:
        nonce = os.urandom(NONCE_SIZE)
        writer.write(raw_frame(Kind.REQUEST, Msg.HELLO, 0, hello_header(nonce)))
        assert (await read_frame(reader)) is not None
        writer.write(raw_frame(Kind.REQUEST, Msg.GETATTR, 1, {"ino": 1}))
        await expect_error_then_close(reader, "auth")
    finally:
        await raw_close(writer)
    assert handler.calls == 0


@pytest.mark.parametrize(
    "hello",
    [
        {"cluster": CLUSTER, "nonce": b"short", "role": "x", "node": "n"},
        {"cluster": CLUSTER, "nonce": "not-bytes" * 4, "role": "x", "node": "n"},
        {"cluster": CLUSTER, "nonce": os.urandom(NONCE_SIZE), "role": "x"},
        {"cluster": CLUSTER, "nonce": os.urandom(NONCE_SIZE), "role": "x", "node": "n", "extra": 1},
    ],
)
async def test_malformed_hello_refused(server: tuple[RpcServer, Handler], hello: dict[str, Any]) -> None:
    srv, handler = server
    reader, writer = await raw_open(srv)
    try:
        writer.write(raw_frame(Kind.REQUEST, Msg.HELLO, 0, hello))
        await expect_error_then_close(reader, "protocol")
    finally:
        await raw_close(writer)
    await good_client_works(srv)


async def test_hello_with_payload_refused(server: tuple[RpcServer, Handler]) -> None:
    srv, _ = server
    reader, writer = await raw_open(srv)
    try:
        hello = {"cluster": CLUSTER, "nonce": os.urandom(NONCE_SIZE), "role": "x", "node": "n"}
        writer.write(raw_frame(Kind.REQUEST, Msg.HELLO, 0, hello, b"\x00" * 65536))
        await expect_error_then_close(reader, "protocol")
    finally:
        await raw_close(writer)


# -- hostile bytes ------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"A" * 100,
        bytes(range(256)) * 4,
        b"\x00" * PREFIX_SIZE,
        struct.pack("!4sBBHQII", b"CHFS", 9, 0, 1, 0, 10, 0) + b"x" * 10,  # bad version
        struct.pack("!4sBBHQII", b"CHFS", 1, 7, 1, 0, 10, 0) + b"x" * 10,  # bad kind
        pack_prefix(Kind.REQUEST, Msg.HELLO, 0, 5, 0) + b"\xc1\xc1\xc1\xc1\xc1",  # undecodable header
        pack_prefix(Kind.REQUEST, Msg.HELLO, 0, 3, 0) + encode_header([1, 2]),  # header not a map
    ],
    ids=["http", "binary", "zeros", "version", "kind", "badmsgpack", "notmap"],
)
async def test_garbage_before_auth(server: tuple[RpcServer, Handler], data: bytes) -> None:
    srv, handler = server
    reader, writer = await raw_open(srv)
    try:
        writer.write(data)
        await expect_error_then_close(reader)
    finally:
        await raw_close(writer)
    assert handler.calls == 0
    await good_client_works(srv)


@pytest.mark.parametrize("cut", [1, PREFIX_SIZE - 1, PREFIX_SIZE, PREFIX_SIZE + 5])
async def test_truncated_frame_then_close(server: tuple[RpcServer, Handler], cut: int) -> None:
    srv, handler = server
    hello = {"cluster": CLUSTER, "nonce": os.urandom(NONCE_SIZE), "role": "x", "node": "n"}
    data = raw_frame(Kind.REQUEST, Msg.HELLO, 0, hello)
    reader, writer = await raw_open(srv)
    try:
        writer.write(data[:cut])
        await writer.drain()
        writer.write_eof()
        await expect_error_then_close(reader)
    finally:
        await raw_close(writer)
    await good_client_works(srv)


@pytest.mark.parametrize(
    ("hlen", "plen"),
    [(2**32 - 1, 0), (MAX_HEADER_LEN + 1, 0), (10, 2**32 - 1), (10, MAX_PAYLOAD_LEN + 1)],
)
async def test_oversized_length_prefix_before_auth(server: tuple[RpcServer, Handler], hlen: int, plen: int) -> None:
    srv, _ = server
    reader, writer = await raw_open(srv)
    try:
        writer.write(pack_prefix(Kind.REQUEST, Msg.HELLO, 0, hlen, plen))
        # No body follows: the server must answer from the prefix alone, not wait for gigabytes.
        await expect_error_then_close(reader, "protocol")
    finally:
        await raw_close(writer)
    await good_client_works(srv)


@pytest.mark.parametrize(
    "data",
    [
        pack_prefix(Kind.REQUEST, Msg.GETATTR, 5, 2**32 - 1, 0),
        pack_prefix(Kind.REQUEST, Msg.CS_WRITE, 5, 10, MAX_PAYLOAD_LEN + 1),
        b"\xde\xad\xbe\xef" * 8,
        pack_prefix(Kind.REQUEST, Msg.GETATTR, 5, 5, 0) + b"\xc1" * 5,
    ],
    ids=["hugeheader", "hugepayload", "garbage", "badmsgpack"],
)
async def test_garbage_after_auth(server: tuple[RpcServer, Handler], data: bytes) -> None:
    srv, handler = server
    reader, writer = await raw_open(srv)
    try:
        await raw_authenticate(reader, writer)
        writer.write(data)
        await expect_error_then_close(reader, "protocol")
    finally:
        await raw_close(writer)
    assert handler.calls == 0
    await good_client_works(srv)


async def test_invalid_request_gets_protocol_error_and_no_handler_call(server: tuple[RpcServer, Handler]) -> None:
    srv, handler = server
    reader, writer = await raw_open(srv)
    try:
        await raw_authenticate(reader, writer)
        writer.write(raw_frame(Kind.REQUEST, Msg.GETATTR, 77, {"ino": "one"}))
        writer.write(raw_frame(Kind.REQUEST, 999, 78, {}))
        codes = {}
        for _ in range(2):
            frame = await read_frame(reader)
            assert frame is not None and frame[0] == Kind.ERROR
            codes[frame[2]["message"]] = frame[2]["code"]
        assert set(codes.values()) == {"protocol"}
        # A payload on a message that has none is refused from the frame's prefix, before
        # the payload is read or allocated: an error, then the connection closes.
        writer.write(raw_frame(Kind.REQUEST, Msg.GETATTR, 79, {"ino": 1}, b"payload"))
        await expect_error_then_close(reader, "protocol")
    finally:
        await raw_close(writer)
    assert handler.calls == 0
    await good_client_works(srv)


async def test_client_survives_hostile_frame_from_its_peer(server: tuple[RpcServer, Handler]) -> None:
    # The authenticated client writes a bogus frame on its own connection: the server
    # drops that connection, and pending calls on it fail with Unavailable, not hang.
    srv, handler = server
    conn = await connect(addr_of(srv), creds(), timeout=5)
    try:
        pending = asyncio.ensure_future(conn.call(Msg.GETATTR, {"ino": -1}, timeout=10))
        await asyncio.sleep(0.05)
        conn.writer.write(pack_prefix(Kind.REQUEST, Msg.GETATTR, 1, 2**32 - 1, 0))
        with pytest.raises(Unavailable):
            await asyncio.wait_for(pending, 10)
        await asyncio.wait_for(conn.wait_closed(), 5)
        with pytest.raises(Unavailable):
            await conn.call(Msg.PING, {}, timeout=1)
    finally:
        conn.close()
    await good_client_works(srv)


# -- errors -------------------------------------------------------------------------


async def call_lookup(srv: RpcServer, name: str) -> ChunkFSError:
    conn = await connect(addr_of(srv), creds(), timeout=5)
    try:
        with pytest.raises(ChunkFSError) as info:
            await conn.call(Msg.LOOKUP, {"parent": 1, "name": name}, timeout=5)
        # The connection stays usable after an error reply.
        assert (await conn.call(Msg.GETATTR, {"ino": 3}, timeout=5))[0] == {"attr": {"ino": 3}}
    finally:
        conn.close()
    return info.value


async def test_chunkfs_error_crosses_with_class_message_and_context(server: tuple[RpcServer, Handler]) -> None:
    srv, _ = server
    err = await call_lookup(srv, "notfound")
    assert type(err) is NotFound
    assert str(err) == "'notfound' does not exist"
    # Scalar context survives; non-scalar context is dropped.
    assert err.context == {"cs_id": 5, "chunk_id": 2**40, "path": "/a/b"}

    err = await call_lookup(srv, "stale")
    assert type(err) is StaleVersion
    assert err.context == {"cs_id": 9, "version": 3}

    err = await call_lookup(srv, "notmaster")
    assert type(err) is NotMaster
    assert err.context == {"leader": "127.0.0.1:9999"}


async def test_plain_exception_becomes_internal_error(
    server: tuple[RpcServer, Handler], caplog: pytest.LogCaptureFixture
) -> None:
    srv, _ = server
    err = await call_lookup(srv, "bug")
    assert type(err) is InternalError
    assert "oops" in str(err)
    assert any("failed" in r.getMessage() for r in caplog.records if r.name == "chunkfs.protocol.rpc")


async def test_invalid_response_is_a_protocol_error(server: tuple[RpcServer, Handler]) -> None:
    srv, _ = server
    err = await call_lookup(srv, "badreply")
    assert type(err) is ProtocolError


async def test_call_timeout(server: tuple[RpcServer, Handler]) -> None:
    srv, handler = server
    conn = await connect(addr_of(srv), creds(), timeout=5)
    try:
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(Timeout, match="GETATTR"):
            await conn.call(Msg.GETATTR, {"ino": -1}, timeout=0.2)
        assert loop.time() - start < 2
        assert not conn._pending
        # A late reply to the timed-out call does not confuse the next one.
        handler.release.set()
        assert (await conn.call(Msg.GETATTR, {"ino": 8}, timeout=5))[0] == {"attr": {"ino": 8}}
    finally:
        conn.close()


async def test_connect_refused_is_unavailable() -> None:
    srv = RpcServer(creds(), Handler())
    await srv.listen("127.0.0.1:0")
    port = srv.port
    await srv.close()
    assert srv._server is not None
    await srv._server.wait_closed()
    with pytest.raises(Unavailable):
        await connect(f"127.0.0.1:{port}", creds(), timeout=2)


async def test_peer_closing_under_the_hello_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    # A chunk server killed just after accepting: the HELLO is sent on a closed connection. The
    # caller must get Unavailable (another replica, a new chain), never a raw ConnectionResetError.
    async def slam(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    real_handshake = rpc.client_handshake

    async def late_handshake(conn: rpc.Connection, c: Credentials) -> None:
        for _ in range(500):  # bounded: until the peer's FIN has arrived
            if conn._eof:
                break
            await asyncio.sleep(0.01)
        conn.close()  # as the transport does on the reset a write to a dead peer gets
        await real_handshake(conn, c)

    monkeypatch.setattr(rpc, "client_handshake", late_handshake)
    listener = await asyncio.start_server(slam, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        with pytest.raises(Unavailable, match="closed the connection during the handshake"):
            await asyncio.wait_for(connect(f"127.0.0.1:{port}", creds(), timeout=1), 10)
    finally:
        listener.close()
        await listener.wait_closed()


async def test_silent_server_handshake_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    # A listener that accepts and never answers: the client must not hang.
    monkeypatch.setattr(rpc, "HANDSHAKE_TIMEOUT", 0.5)
    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read()
        finally:
            writer.close()

    listener = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        with pytest.raises(Timeout):
            await asyncio.wait_for(connect(f"127.0.0.1:{port}", creds(), timeout=1), 10)
    finally:
        listener.close()
        await listener.wait_closed()


async def test_server_can_call_back_over_client_connection() -> None:
    """Either side may send requests: the master commands CS over the link the CS opened."""
    server_conns: list[Connection] = []

    async def srv_handler(conn: Connection, msg: Msg, header: dict[str, Any], payload: bytes) -> Reply:
        server_conns.append(conn)
        back, _ = await conn.call(Msg.GETATTR, {"ino": 77}, timeout=5)
        return {"role": "mds", "node": str(back["attr"]["ino"])}, b""

    async def client_handler(conn: Connection, msg: Msg, header: dict[str, Any], payload: bytes) -> Reply:
        return {"attr": {"ino": header["ino"], "from": "client"}}, b""

    srv = RpcServer(Credentials(CLUSTER, SECRET, "mds", "m"), srv_handler)
    await srv.listen("127.0.0.1:0")
    conn = await connect(addr_of(srv), creds(), handler=client_handler, timeout=5)
    try:
        header, _ = await conn.call(Msg.PING, {}, timeout=5)
        assert header == {"role": "mds", "node": "77"}
    finally:
        conn.close()
        await srv.close()


async def test_requests_served_at_once_are_bounded(server: tuple[RpcServer, Handler]) -> None:
    srv, handler = server
    conn = await connect(addr_of(srv), creds(), timeout=5)
    try:
        calls = [asyncio.ensure_future(conn.call(Msg.GETATTR, {"ino": -1}, timeout=10)) for _ in range(100)]
        for _ in range(50):
            await asyncio.sleep(0.01)
            if handler.calls >= rpc.MAX_CONCURRENT_REQUESTS:
                break
        await asyncio.sleep(0.1)
        assert handler.calls == rpc.MAX_CONCURRENT_REQUESTS
        handler.release.set()
        results = await asyncio.wait_for(asyncio.gather(*calls), 10)
        assert all(h == {"attr": {"ino": -1}} for h, _ in results)
        assert handler.calls == 100
    finally:
        conn.close()
