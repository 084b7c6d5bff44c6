"""RPC over TLS on 127.0.0.1, on asyncio and on uvloop (the daemons use uvloop when it is installed).

`Connection` is an `asyncio.BufferedProtocol`; these tests prove that it works
over both loops' SSL transports (requests, payloads both ways, pipelining), and
that a TLS server refuses, cleanly and with bounded memory, whoever does not
present a certificate of the cluster CA: plain-text peers, peers with another
CA's certificate, floods of connections that never finish a handshake.  Every
wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from chunkfs.common import certs
from chunkfs.common.errors import AuthenticationFailed, ChunkFSError, Unavailable
from chunkfs.protocol import rpc
from chunkfs.protocol.frame import Kind
from chunkfs.protocol.messages import Msg
from chunkfs.protocol.rpc import Connection, Credentials, Reply, RpcServer, connect
from chunkfs.protocol.tls import TlsContexts, load_tls
from chunkfs.testing.probes import rss

pytestmark = pytest.mark.timeout(60)

SECRET = bytes(range(32))
CLUSTER = "tlsclu"
MiB = 1 << 20
LOOPS = ["asyncio", "uvloop"]


def run(loop_kind: str, scenario: Callable[[], Awaitable[None]]) -> None:
    """Run one scenario on a fresh loop of the given kind, bounded in time."""
    async def bounded() -> None:
        await asyncio.wait_for(scenario(), 45)

    if loop_kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        uvloop.run(bounded())
    else:
        asyncio.run(bounded())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TlsContexts]:
    """The cluster CA with a server's and a client's certificate, and an impostor signed by another CA."""
    base = tmp_path_factory.mktemp("pki")
    certs.make_ca(base / "ca", CLUSTER, str(uuid.uuid4()))
    certs.make_ca(base / "other-ca", CLUSTER, str(uuid.uuid4()))
    out = {}
    for name, ca in (("server", "ca"), ("client", "ca"), ("impostor", "other-ca")):
        certs.issue(base / ca, base / name / "tls", name)
        out[name] = load_tls(base / name / "tls", CLUSTER)
    # An impostor that trusts our CA (so it gets as far as it can) but holds another CA's certificate.
    mixed = base / "mixed" / "tls"
    mixed.mkdir(parents=True)
    for f in (certs.NODE_CERT, certs.NODE_KEY):
        (mixed / f).write_bytes((base / "impostor" / "tls" / f).read_bytes())
    (mixed / certs.CA_CERT).write_bytes((base / "ca" / certs.CA_CERT).read_bytes())
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(str(mixed / certs.CA_CERT))
    ctx.load_cert_chain(str(mixed / certs.NODE_CERT), str(mixed / certs.NODE_KEY))
    out["impostor-client"] = TlsContexts(server=out["impostor"].server, client=ctx)
    return out


def creds(tls: TlsContexts | None, role: str = "client", node: str = "c1") -> Credentials:
    return Credentials(CLUSTER, SECRET, role, node, tls=tls)


class Handler:
    """GETATTR echoes; CS_WRITE checks its payload's size; CS_READ returns `length` bytes; PING calls back."""

    def __init__(self) -> None:
        self.calls = 0
        self.written = 0

    async def __call__(self, conn: Connection, msg: Msg, header: dict[str, Any], payload: bytes) -> Reply:
        self.calls += 1
        if msg == Msg.GETATTR:
            return {"attr": {"ino": header["ino"]}}, b""
        if msg == Msg.CS_WRITE:
            self.written += len(payload)
            return {}, b""
        if msg == Msg.CS_READ:
            return {}, bytes([header["offset"] % 256]) * header["length"]
        if msg == Msg.PING:
            # The server calls the client back over the same TLS connection, with a payload.
            back, data = await conn.call(Msg.CS_READ, {
                "chunk_id": 1, "version": 1, "offset": 0, "length": 1 << 20}, timeout=10)
            return {"role": "mds", "node": f"{len(data)}"}, b""
        raise AssertionError(f"unexpected {msg!r}")


async def client_handler(conn: Connection, msg: Msg, header: dict[str, Any], payload: bytes) -> Reply:
    assert msg == Msg.CS_READ
    return {}, b"\x07" * header["length"]


@contextlib.asynccontextmanager
async def tls_server(tls: TlsContexts):  # type: ignore[no-untyped-def]
    handler = Handler()
    srv = RpcServer(creds(tls, "mds", "mds1"), handler)
    await srv.listen("127.0.0.1:0")
    try:
        yield srv, handler
    finally:
        await srv.close()


def addr(srv: RpcServer) -> str:
    return f"127.0.0.1:{srv.port}"


async def good_client_works(srv: RpcServer, tls: TlsContexts) -> None:
    conn = await connect(addr(srv), creds(tls), timeout=5)
    try:
        assert (await conn.call(Msg.GETATTR, {"ino": 5}, timeout=5))[0] == {"attr": {"ino": 5}}
    finally:
        conn.close()


def open_sockets() -> int:
    """Sockets this process holds (uvloop opens /dev/null once for itself: other descriptors do not count)."""
    out = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            out += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return out


# -- TLS on both ends ----------------------------------------------------------------


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_requests_payloads_and_pipelining_over_tls(pki: dict[str, TlsContexts], loop_kind: str) -> None:
    async def scenario() -> None:
        async with tls_server(pki["server"]) as (srv, handler):
            conn = await connect(addr(srv), creds(pki["client"]), handler=client_handler, timeout=5)
            try:
                # Really TLS 1.3, on both sides, with the peers' certificates checked.
                tls_obj = conn.writer.get_extra_info("ssl_object")
                assert tls_obj is not None and tls_obj.version() == "TLSv1.3"
                assert conn.tls
                (server_side,) = srv.connections
                assert server_side.tls and server_side.writer.get_extra_info("peercert")
                # Pipelined: 300 requests in flight at once, matched by id.
                inos = list(range(1, 301))
                results = await asyncio.gather(*(conn.call(Msg.GETATTR, {"ino": i}, timeout=10) for i in inos))
                assert [h["attr"]["ino"] for h, _ in results] == inos
                # Payloads both ways: 8 MiB up in 1 MiB writes, pipelined; reads of odd sizes down.
                data = os.urandom(MiB)
                header = {"chunk_id": 1, "version": 1, "offset": 0, "chain": [], "sync": False}
                await asyncio.gather(*(conn.call(Msg.CS_WRITE, header, data, timeout=10) for _ in range(8)))
                assert handler.written == 8 * MiB
                for offset, length in ((3, 1), (4, 300_001), (5, 4 * MiB)):
                    _, payload = await conn.call(
                        Msg.CS_READ, {"chunk_id": 1, "version": 1, "offset": offset, "length": length}, timeout=10)
                    assert payload == bytes([offset]) * length
                # A request from the server to the client, with a 1 MiB answer.
                header_back, _ = await conn.call(Msg.PING, {}, timeout=10)
                assert header_back == {"role": "mds", "node": str(MiB)}
            finally:
                conn.close()

    run(loop_kind, scenario)


# -- refusals ------------------------------------------------------------------------


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_plain_text_peer_is_refused(pki: dict[str, TlsContexts], loop_kind: str,
                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)

    async def scenario() -> None:
        async with tls_server(pki["server"]) as (srv, handler):
            # The real client without TLS: a clear error, not a hang or a crash.
            with pytest.raises(ChunkFSError, match="TLS|closed"):
                await connect(addr(srv), creds(None), timeout=5)
            # Raw bytes: a HELLO frame in the clear, and an HTTP request; the server closes, serving nothing.
            for data in (rpc_hello(), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"):
                reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
                writer.write(data)
                got = await asyncio.wait_for(reader.read(1 << 16), 5)
                # At most a TLS alert record comes back, never a frame of ours.
                assert not got.startswith(b"CHFS"), got
                assert await asyncio.wait_for(reader.read(1 << 16), 5) == b""
                writer.close()
            assert handler.calls == 0
            assert srv.refused >= 2
            await good_client_works(srv, pki["client"])
        bad = [r for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR]
        assert not bad, [r.getMessage() for r in bad]

    run(loop_kind, scenario)


def rpc_hello() -> bytes:
    from chunkfs.protocol.frame import encode_header, pack_prefix

    hdr = encode_header({"cluster": CLUSTER, "nonce": os.urandom(rpc.NONCE_SIZE), "role": "x", "node": "n"})
    return pack_prefix(Kind.REQUEST, Msg.HELLO, 0, len(hdr), 0) + hdr


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_certificate_of_another_ca_is_refused_both_ways(pki: dict[str, TlsContexts], loop_kind: str,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)

    async def scenario() -> None:
        async with tls_server(pki["server"]) as (srv, handler):
            # A client whose certificate another CA signed: the server refuses it in the TLS handshake
            # (which TLS 1.3 finishes on the client's side first: the client sees the connection close).
            with pytest.raises(ChunkFSError, match="may refuse this node's TLS certificate"):
                await connect(addr(srv), creds(pki["impostor-client"]), timeout=5)
            assert handler.calls == 0 and not srv.connections and srv.refused == 1
            assert "not signed by the cluster CA" in "".join(r.getMessage() for r in caplog.records)
            await good_client_works(srv, pki["client"])
        # A server whose certificate another CA signed: our client refuses it, before saying anything.
        async with tls_server(pki["impostor"]) as (impostor, impostor_handler):
            with pytest.raises(AuthenticationFailed, match="the cluster CA did not sign"):
                await connect(addr(impostor), creds(pki["client"]), timeout=5)
            assert impostor_handler.calls == 0

    run(loop_kind, scenario)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_tls_client_to_plain_server_gets_one_clear_error(pki: dict[str, TlsContexts], loop_kind: str) -> None:
    async def scenario() -> None:
        handler = Handler()
        srv = RpcServer(creds(None, "mds", "plain"), handler)
        await srv.listen("127.0.0.1:0")
        try:
            with pytest.raises(AuthenticationFailed, match="TLS handshake with .* failed"):
                await connect(addr(srv), creds(pki["client"]), timeout=5)
            assert handler.calls == 0
        finally:
            await srv.close()

    run(loop_kind, scenario)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_flood_of_peers_without_tls_is_bounded(pki: dict[str, TlsContexts], loop_kind: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Connections that never finish a TLS handshake are capped before any TLS state exists, then time out."""
    monkeypatch.setattr(rpc, "HANDSHAKE_TIMEOUT", 1.0)

    async def scenario() -> None:
        async with tls_server(pki["server"]) as (srv, handler):
            fds_before = open_sockets()
            before = rss(os.getpid())
            loop = asyncio.get_running_loop()
            socks: list[socket.socket] = []
            try:
                for i in range(300):
                    sock = socket.socket()
                    sock.setblocking(False)
                    await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", srv.port)), 5)
                    if i % 3 == 0:
                        await loop.sock_sendall(sock, b"\x16\x03\x01\x02\x00\x01")  # a ClientHello cut short
                    socks.append(sock)
                await asyncio.sleep(0.3)
                # The rest were refused at accept: at most the per-host cap is still in a handshake.
                assert sum(srv._unauthenticated.values()) <= rpc.MAX_UNAUTHENTICATED_PER_HOST
                assert srv.refused >= 300 - rpc.MAX_UNAUTHENTICATED_PER_HOST
                # Someone with a certificate is served meanwhile (after the deadline has freed a place).
                for _ in range(50):
                    if not srv._unauthenticated:
                        break
                    await asyncio.sleep(0.1)
                assert not srv._unauthenticated, "handshakes outlived their deadline"
                await good_client_works(srv, pki["client"])
                grown = rss(os.getpid()) - before
                assert grown < 32 * MiB, f"resident memory grew by {grown / MiB:.0f} MiB"
            finally:
                for sock in socks:
                    sock.close()
            assert handler.calls == 1
            # Every refused socket was closed by the server: no descriptor leaked.
            for _ in range(50):
                if open_sockets() <= fds_before:
                    break
                await asyncio.sleep(0.1)
            assert open_sockets() <= fds_before

    run(loop_kind, scenario)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_server_closed_during_tls_handshakes(pki: dict[str, TlsContexts], loop_kind: str) -> None:
    """Closing a TLS server with handshakes under way cancels them and leaves no listener behind."""
    async def scenario() -> None:
        handler = Handler()
        srv = RpcServer(creds(pki["server"], "mds", "m"), handler)
        await srv.listen("127.0.0.1:0")
        port = srv.port
        silent = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(5)]
        await asyncio.sleep(0.2)
        await asyncio.wait_for(srv.close(), 10)
        for sock in silent:
            sock.close()
        with pytest.raises(Unavailable):
            await connect(f"127.0.0.1:{port}", creds(pki["client"]), timeout=2)

    run(loop_kind, scenario)
