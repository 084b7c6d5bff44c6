"""A connection the peer resets as it is made is a connection lost (Unavailable), not a bug.

On uvloop every operation on a transport already closed raises RuntimeError.  `connect` tuned the
socket right after the TCP connection was made: when the peer's reset (a listener closed with the
connection in its backlog, a refusal) was read by the loop first, RuntimeError escaped `connect`,
`MdsLink` and a chunk server's `PeerConnections`, and a mount answered the request EIO at once,
its `master_wait` or not ("unexpected error ... answering EIO").  A probe: 6 connects in 2,000 to a
server that resets each connection as it accepts it.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from chunkfs.common.errors import ChunkFSError, Unavailable
from chunkfs.protocol import rpc
from chunkfs.protocol.rpc import Credentials, connect

uvloop = pytest.importorskip("uvloop")

CREDS = Credentials("c", bytes(32), "client", "t")


@pytest.fixture
def resetting_server() -> Iterator[str]:
    """An address whose listener accepts every connection and resets it at once (SO_LINGER 0)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{srv.getsockname()[1]}"
    finally:
        stop.set()
        srv.close()
        thread.join(5)


def test_a_reset_read_before_the_socket_is_tuned_is_unavailable(
        resetting_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The race made certain: the transport is closed (the reset read) before `connect` tunes it."""
    made = rpc.Connection.connection_made

    def reset_at_once(self: rpc.Connection, transport: asyncio.BaseTransport) -> None:
        made(self, transport)
        transport.abort()  # closed by the time `connect` resumes, as when the loop read the peer's reset first

    monkeypatch.setattr(rpc.Connection, "connection_made", reset_at_once)

    async def main() -> BaseException | None:
        try:
            await connect(resetting_server, CREDS, timeout=2.0)
        except BaseException as exc:  # noqa: BLE001 - what escapes is the point
            return exc
        return None

    exc = uvloop.run(main())
    assert isinstance(exc, Unavailable), repr(exc)


def test_connects_to_a_server_that_resets_them_fail_only_as_unavailable(resetting_server: str) -> None:
    async def main() -> list[BaseException]:
        escaped = []
        for _ in range(300):
            try:
                await connect(resetting_server, CREDS, timeout=2.0)
            except ChunkFSError:
                pass
            except BaseException as exc:  # noqa: BLE001
                escaped.append(exc)
        return escaped

    assert uvloop.run(main()) == []
