"""Authenticated, pipelined request/response connections.

One `Connection` wraps one TCP stream.  Either side may send requests on it
(the master sends commands down the link a chunk server opened), many may be
in flight at once, and responses are matched by request id.  Every wait has a
timeout; the number of requests served concurrently per connection is bounded.

The first exchange on every connection is a mutual HMAC challenge-response
over the cluster secret (`client_handshake` / `server_handshake`).  A peer that
fails it gets one error frame and a closed connection, and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from chunkfs.common.addr import parse_addr
from chunkfs.common.errors import (
    AuthenticationFailed,
    ChunkFSError,
    InternalError,
    ProtocolError,
    Timeout,
    Unavailable,
    error_from_code,
)
from chunkfs.protocol.frame import (
    MAX_PAYLOAD_LEN,
    PREFIX_SIZE,
    Kind,
    decode_header,
    encode_header,
    pack_prefix,
    unpack_prefix,
)
from chunkfs.protocol.messages import Msg, validate_request, validate_response

logger = logging.getLogger(__name__)

#: Default timeout of one request, seconds.
CALL_TIMEOUT = 30.0
#: The handshake must finish within this many seconds.
HANDSHAKE_TIMEOUT = 5.0
#: Requests served at once on one connection; more wait in the socket buffer.
MAX_CONCURRENT_REQUESTS = 64
NONCE_SIZE = 32

Payload = bytes | bytearray | memoryview
Reply = tuple[dict[str, Any], Payload]
Handler = Callable[["Connection", Msg, dict[str, Any], bytes], Awaitable[Reply]]


@dataclass(slots=True)
class Credentials:
    """What a node needs to join connections of one cluster."""

    cluster: str
    secret: bytes
    role: str  # "client", "mds", "cs"
    node: str  # a name for logs: "cs3", "client-1234"


def _proof(secret: bytes, label: bytes, cluster: str, first: bytes, second: bytes) -> bytes:
    return hmac.new(secret, label + cluster.encode() + first + second, hashlib.sha256).digest()


class Connection:
    """One authenticated TCP connection carrying pipelined requests both ways."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        handler: Handler | None = None,
        peer_name: str = "?",
        max_payload: int = MAX_PAYLOAD_LEN,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.handler = handler
        self.peer_name = peer_name
        self.peer_role = "?"
        self.max_payload = max_payload
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[tuple[Kind, dict[str, Any], bytes]]] = {}
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_REQUESTS)
        self._tasks: set[asyncio.Task[None]] = set()
        self._reader_task: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()
        #: Set by owners that attach state to a connection (e.g. the CS id).
        self.tag: Any = None

    # -- sending -------------------------------------------------------------

    def _send(self, kind: Kind, mtype: int, rid: int, header: dict[str, Any], payload: Payload = b"") -> None:
        hdr = encode_header(header)
        self.writer.write(pack_prefix(kind, mtype, rid, len(hdr), len(payload)) + hdr)
        if payload:
            self.writer.write(payload)

    async def call(
        self,
        mtype: Msg,
        header: dict[str, Any],
        payload: Payload = b"",
        timeout: float = CALL_TIMEOUT,
    ) -> Reply:
        """Send one request and wait (bounded) for its response."""
        if self._closed.is_set():
            raise Unavailable(f"connection to {self.peer_name} is closed")
        rid = next(self._ids)
        fut: asyncio.Future[tuple[Kind, dict[str, Any], bytes]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        try:
            self._send(Kind.REQUEST, mtype, rid, header, payload)
            await asyncio.wait_for(self.writer.drain(), timeout)
            kind, rheader, rpayload = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise Timeout(f"{mtype.name} to {self.peer_name} timed out after {timeout:g}s") from None
        except (ConnectionError, OSError) as exc:
            self.close()
            raise Unavailable(f"connection to {self.peer_name} lost: {exc}") from None
        finally:
            self._pending.pop(rid, None)
        if kind == Kind.ERROR:
            raise _error_from_header(rheader)
        validate_response(mtype, rheader)
        return rheader, rpayload

    # -- receiving -----------------------------------------------------------

    async def _read_frame(self) -> tuple[Kind, int, int, dict[str, Any], bytes]:
        prefix = unpack_prefix(await self.reader.readexactly(PREFIX_SIZE), self.max_payload)
        header = decode_header(await self.reader.readexactly(prefix.header_len))
        payload = await self.reader.readexactly(prefix.payload_len) if prefix.payload_len else b""
        return prefix.kind, prefix.type, prefix.request_id, header, payload

    def start(self) -> None:
        """Start reading frames in the background (after the handshake)."""
        self._reader_task = asyncio.get_running_loop().create_task(self._read_loop())

    async def _read_loop(self) -> None:
        try:
            while True:
                kind, mtype, rid, header, payload = await self._read_frame()
                if kind == Kind.REQUEST:
                    await self._slots.acquire()
                    task = asyncio.get_running_loop().create_task(self._serve(mtype, rid, header, payload))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                else:
                    fut = self._pending.get(rid)
                    if fut is not None and not fut.done():
                        fut.set_result((kind, header, payload))
        except ProtocolError as exc:
            logger.warning("closing connection from %s: %s", self.peer_name, exc)
            with contextlib.suppress(Exception):
                self._send(Kind.ERROR, 0, 0, {"code": exc.code, "message": str(exc)})
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self.close()

    async def _serve(self, mtype: int, rid: int, header: dict[str, Any], payload: bytes) -> None:
        try:
            try:
                msg = validate_request(mtype, header, len(payload))
                if self.handler is None:
                    raise ProtocolError(f"{msg.name}: this peer accepts no requests")
                rheader, rpayload = await self.handler(self, msg, header, payload)
                self._send(Kind.RESPONSE, mtype, rid, rheader, rpayload)
            except ChunkFSError as exc:
                self._send(Kind.ERROR, mtype, rid, _error_header(exc))
            except Exception as exc:  # noqa: BLE001 - a bug must not kill the server
                logger.exception("request %s from %s failed", mtype, self.peer_name)
                self._send(Kind.ERROR, mtype, rid, _error_header(InternalError(f"internal error: {exc}")))
            await self.writer.drain()
        except (ConnectionError, OSError):
            self.close()
        finally:
            self._slots.release()

    # -- life cycle ----------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(Unavailable(f"connection to {self.peer_name} closed"))
        self._pending.clear()
        self.writer.close()
        if self._reader_task is not None and self._reader_task is not asyncio.current_task():
            self._reader_task.cancel()


def _error_header(exc: ChunkFSError) -> dict[str, Any]:
    """An error frame: code, message and the error's scalar context (e.g. the failed ``cs_id``)."""
    context = {k: v for k, v in exc.context.items() if isinstance(v, int | str) and k not in ("code", "message")}
    return {**context, "code": exc.code, "message": str(exc)}


def _error_from_header(header: dict[str, Any]) -> ChunkFSError:
    code, message = header.pop("code", None), header.pop("message", None)
    if not isinstance(code, str) or not isinstance(message, str):
        return ProtocolError("malformed error frame")
    context = {k: v for k, v in header.items() if isinstance(k, str) and isinstance(v, int | str)}
    return error_from_code(code, message, **context)


# -- handshake ---------------------------------------------------------------


async def client_handshake(conn: Connection, creds: Credentials) -> None:
    """Prove the secret to the server and check that it knows it too."""
    nonce = os.urandom(NONCE_SIZE)
    hello = {"cluster": creds.cluster, "nonce": nonce, "role": creds.role, "node": creds.node}
    conn._send(Kind.REQUEST, Msg.HELLO, 0, hello)
    kind, mtype, _, header, _ = await asyncio.wait_for(conn._read_frame(), HANDSHAKE_TIMEOUT)
    if kind == Kind.ERROR:
        raise _error_from_header(header)
    validate_response(Msg.HELLO, header)
    server_nonce: bytes = header["nonce"]
    expected = _proof(creds.secret, b"server", creds.cluster, nonce, server_nonce)
    if not hmac.compare_digest(expected, header["proof"]):
        raise AuthenticationFailed(
            f"{conn.peer_name} does not know the secret of cluster {creds.cluster!r}: "
            "check the cluster name and the secret in the client configuration"
        )
    proof = _proof(creds.secret, b"client", creds.cluster, server_nonce, nonce)
    conn._send(Kind.REQUEST, Msg.PROOF, 0, {"proof": proof})
    kind, _, _, header, _ = await asyncio.wait_for(conn._read_frame(), HANDSHAKE_TIMEOUT)
    if kind == Kind.ERROR:
        raise _error_from_header(header)


async def server_handshake(conn: Connection, creds: Credentials) -> None:
    """Check that the connecting peer knows the secret; refuse it otherwise."""
    try:
        kind, mtype, _, header, _ = await asyncio.wait_for(conn._read_frame(), HANDSHAKE_TIMEOUT)
        if kind != Kind.REQUEST or mtype != Msg.HELLO:
            raise AuthenticationFailed("the first message must be HELLO: authenticate first")
        validate_request(Msg.HELLO, header, 0)
        if header["cluster"] != creds.cluster:
            raise AuthenticationFailed(f"this node belongs to cluster {creds.cluster!r}, not {header['cluster']!r}")
        client_nonce: bytes = header["nonce"]
        if len(client_nonce) != NONCE_SIZE:
            raise ProtocolError("HELLO: bad nonce")
        conn.peer_role = header["role"]
        conn.peer_name = f"{header['node']}@{conn.peer_name}"
        nonce = os.urandom(NONCE_SIZE)
        proof = _proof(creds.secret, b"server", creds.cluster, client_nonce, nonce)
        conn._send(Kind.RESPONSE, Msg.HELLO, 0, {"nonce": nonce, "proof": proof})
        kind, mtype, _, header, _ = await asyncio.wait_for(conn._read_frame(), HANDSHAKE_TIMEOUT)
        if kind != Kind.REQUEST or mtype != Msg.PROOF:
            raise AuthenticationFailed("expected PROOF after HELLO")
        validate_request(Msg.PROOF, header, 0)
        expected = _proof(creds.secret, b"client", creds.cluster, nonce, client_nonce)
        if not hmac.compare_digest(expected, header["proof"]):
            raise AuthenticationFailed("wrong cluster secret")
        conn._send(Kind.RESPONSE, Msg.PROOF, 0, {})
        await conn.writer.drain()
    except TimeoutError:
        raise AuthenticationFailed("handshake timed out") from None
    except asyncio.IncompleteReadError:
        raise ProtocolError("connection closed during the handshake") from None
    except ChunkFSError as exc:
        with contextlib.suppress(Exception):
            conn._send(Kind.ERROR, 0, 0, _error_header(exc))
            await asyncio.wait_for(conn.writer.drain(), 1.0)
        raise


async def connect(
    addr: str,
    creds: Credentials,
    *,
    handler: Handler | None = None,
    timeout: float = 5.0,
    max_payload: int = MAX_PAYLOAD_LEN,
) -> Connection:
    """Open, authenticate and start a connection to ``HOST:PORT``."""
    host, port = parse_addr(addr)
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, limit=max_payload + 1024), timeout
        )
    except TimeoutError:
        raise Timeout(f"connecting to {addr} timed out after {timeout:g}s") from None
    except OSError as exc:
        raise Unavailable(f"cannot connect to {addr}: {exc.strerror or exc}") from None
    conn = Connection(reader, writer, handler=handler, peer_name=addr, max_payload=max_payload)
    try:
        await client_handshake(conn, creds)
    except TimeoutError:
        conn.close()
        raise Timeout(f"handshake with {addr} timed out") from None
    except (asyncio.IncompleteReadError, ConnectionError, OSError):
        conn.close()
        raise Unavailable(f"{addr} closed the connection during the handshake") from None
    except BaseException:
        conn.close()
        raise
    conn.start()
    return conn


class RpcServer:
    """Accepts connections, authenticates them, then serves their requests."""

    def __init__(
        self,
        creds: Credentials,
        handler: Handler,
        *,
        on_close: Callable[[Connection], None] | None = None,
        max_payload: int = MAX_PAYLOAD_LEN,
    ) -> None:
        self.creds = creds
        self.handler = handler
        self.on_close = on_close
        self.max_payload = max_payload
        self.connections: set[Connection] = set()
        self._server: asyncio.Server | None = None

    async def listen(self, addr: str, start_serving: bool = True) -> None:
        """Bind `addr`; with `start_serving` False, accept only after `start_serving()`."""
        host, port = parse_addr(addr)
        self._server = await asyncio.start_server(
            self._accept, host, port, limit=self.max_payload + 1024, start_serving=start_serving
        )

    async def start_serving(self) -> None:
        assert self._server is not None
        await self._server.start_serving()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        name = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        conn = Connection(reader, writer, handler=self.handler, peer_name=name, max_payload=self.max_payload)
        try:
            await server_handshake(conn, self.creds)
        except ChunkFSError as exc:
            logger.warning("refused connection from %s: %s", name, exc)
            conn.close()
            return
        except (ConnectionError, OSError):
            conn.close()
            return
        self.connections.add(conn)
        conn.start()
        try:
            await conn.wait_closed()
        finally:
            self.connections.discard(conn)
            if self.on_close is not None:
                self.on_close(conn)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.close()
