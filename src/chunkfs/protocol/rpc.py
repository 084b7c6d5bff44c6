"""Authenticated, pipelined request/response connections.

One `Connection` wraps one TCP stream.  Either side may send requests on it
(the master sends commands down the link a chunk server opened), many may be
in flight at once, and responses are matched by request id.  Every wait has a
timeout; the number of requests served concurrently per connection is bounded.

The first exchange on every connection is a mutual HMAC challenge-response
over the cluster secret (`client_handshake` / `server_handshake`).  A peer that
fails it gets one error frame and a closed connection, and nothing else.
While a new secret is being rolled out (common/secret_files.py) a node holds
two: the server proves both, the client picks one the server knows (the next
one if it can) and proves it, and the server accepts either.

In a cluster that runs TLS (`Credentials.tls`, protocol/tls.py) every
connection is TLS first, with certificates checked both ways, and the secret
handshake runs inside it.  A server accepts TLS connections itself
(`RpcServer._accept_tls`) so that its caps on connections still proving
themselves hold before any TLS state is allocated.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import logging
import os
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, cast

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
from chunkfs.common.knobs import lowered
from chunkfs.common.secret_files import SecretFiles
from chunkfs.protocol.frame import (
    MAX_PAYLOAD_LEN,
    PREFIX_SIZE,
    FramePrefix,
    Kind,
    decode_header,
    encode_header,
    pack_prefix,
    unpack_prefix,
)
from chunkfs.protocol.messages import Msg, spec_of, validate_notice, validate_request, validate_response
from chunkfs.protocol.tls import TlsContexts

logger = logging.getLogger(__name__)

#: Default timeout of one request, seconds.
CALL_TIMEOUT = 30.0
#: A connection watched for silence (`connect(silence_limit=...)`: the data path's, to chunk
#: servers) pings its peer once the peer has sent nothing for this long while a request waits
#: (or for a quarter of the limit, when that is shorter).
PING_AFTER = 1.0
#: ... and gives the peer up, failing every request waiting on it, after this long without a
#: byte from it: a frozen process or a cut-off host, told apart from a slow disk by the pings,
#: which a live server answers from its event loop while its disk works.  A frozen chunk server
#: then stalls a write for seconds, not for the 20-30 s of the requests' own timeouts.
SILENCE_LIMIT = float(lowered("CHUNKFS_SILENCE_LIMIT", 8))
#: The handshake must finish within this many seconds.
HANDSHAKE_TIMEOUT = 5.0
#: A frame begun must go on arriving: no byte of it for this long (its sender's own request has
#: timed out by then) and the connection is closed.  A peer that sent a header announcing 8 MiB,
#: then nothing, held that buffer for as long as it liked (a hostile-peer probe: 30 such
#: connections, 250 MiB of a chunk server's memory, none closed after 43 s).
FRAME_STALL_LIMIT = float(lowered("CHUNKFS_FRAME_STALL_LIMIT", int(CALL_TIMEOUT)))
#: Requests served at once on one connection; more wait in the socket buffer.
MAX_CONCURRENT_REQUESTS = 64
NONCE_SIZE = 32
#: A server looks this often for peers that proved a secret it no longer holds (a rotation's end) ...
REAUTH_CHECK_INTERVAL = 1.0
#: ... and then gives each peer that proved a secret it no longer holds this long to prove one it holds.
REAUTH_TIMEOUT = 10.0
#: Prefixes and headers are received into a buffer of this size; a bigger header (up to
#: MAX_HEADER_LEN) gets a bigger buffer for as long as it takes to arrive.
SCRATCH_SIZE = 256 << 10
#: Bounded before trust (invariant 4): until the handshake is done a frame carries no payload
#: and a header of at most this many bytes (HELLO and PROOF take under 300), lands in a
#: buffer this small, and at most a handshake's worth of frames may wait.
PRE_AUTH_MAX_HEADER = 1 << 10
PRE_AUTH_SCRATCH = 4 << 10
PRE_AUTH_MAX_FRAMES = 4
#: Request payloads held by one connection's requests in flight at most; above it, the
#: connection is not read until handlers finish (with MAX_CONCURRENT_REQUESTS, a bound on
#: what one peer can make a server hold).
MAX_INFLIGHT_BYTES = 64 << 20
#: Connections still proving the secret that a server holds at once, in all and from one
#: address; more are closed at once (a flood costs the server no memory to speak of).
MAX_UNAUTHENTICATED = 256
MAX_UNAUTHENTICATED_PER_HOST = 32
#: Refused connections are logged at most once per this many seconds (with a count).
REFUSAL_LOG_INTERVAL = float(lowered("CHUNKFS_REFUSAL_LOG_INTERVAL", 10))
SOCKET_BUFFER = 4 << 20
#: Above this much unsent data, senders wait (`_drain`).
WRITE_BUFFER_HIGH = 16 << 20
#: Pending connections of a TLS listener (what asyncio's create_server uses).
TLS_BACKLOG = 100

Payload = bytes | bytearray | memoryview
Reply = tuple[dict[str, Any], Payload]
Handler = Callable[["Connection", Msg, dict[str, Any], Payload], Awaitable[Reply]]
#: Takes a notice (a request that gets no answer) at once, on the event loop: no task per message.
NoticeHandler = Callable[["Connection", Msg, dict[str, Any], Payload], None]
#: Answers a request at once, on the event loop, when it can do so without waiting for anything;
#: None: it cannot, and the request goes to the `Handler` in a task of its own.  It is asked about
#: every request, in the order they arrive, and must decline while `Connection.writable` is False
#: (a task waits for the peer to read its answers; an answer given at once would pile up).
PromptHandler = Callable[["Connection", Msg, dict[str, Any], Payload], "Reply | None"]
Frame = tuple[Kind, int, int, dict[str, Any], Payload]


@dataclass(slots=True)
class Credentials:
    """What a node needs to join connections of one cluster."""

    cluster: str
    secret: bytes
    role: str  # "client", "mds", "cs"
    node: str  # a name for logs: "cs3", "client-1234"
    #: The cluster runs TLS: this node's contexts (protocol/tls.py); None: plain TCP.
    tls: TlsContexts | None = None
    #: During a rotation of the cluster secret, the next one: accepted beside `secret`, preferred when proving.
    next_secret: bytes | None = None
    #: The node's secret files, followed so a rotation reaches it while it runs; they then set the two above.
    secret_files: SecretFiles | None = None
    #: The cluster's id (`cluster.json`, a node's configuration); "": not known here, not checked.  Two
    #: clusters may share a name (and a copied secret): the id tells a configuration of the other apart.
    uuid: str = ""

    def secrets(self) -> tuple[bytes, bytes | None]:
        """(current secret, next secret or None), from the secret files when the node has them."""
        if self.secret_files is not None:
            self.secret, self.next_secret = self.secret_files.get()
        return self.secret, self.next_secret

    def where(self) -> str:
        """Where this node's secret comes from, for error messages."""
        if self.secret_files is not None:
            return f"the secret in {self.secret_files.directory}"
        return "the cluster name and the secret in the configuration"


def _proof(secret: bytes, label: bytes, cluster: str, first: bytes, second: bytes) -> bytes:
    return hmac.new(secret, label + cluster.encode() + first + second, hashlib.sha256).digest()


def _proofs(secrets: tuple[bytes, bytes | None], label: bytes, cluster: str, first: bytes,
            second: bytes) -> dict[str, bytes]:
    """A server's proofs of the secrets it holds: `proof` (the current one) and, while one is staged, `proof_next`."""
    current, nxt = secrets
    out = {"proof": _proof(current, label, cluster, first, second)}
    if nxt is not None:
        out["proof_next"] = _proof(nxt, label, cluster, first, second)
    return out


def _proven(candidates: tuple[bytes | None, ...], label: bytes, cluster: str, first: bytes, second: bytes,
            proofs: tuple[bytes | None, ...]) -> bytes | None:
    """The first of `candidates` that one of `proofs` (None: absent) proves, or None."""
    return next((s for s in candidates if s is not None and any(
        p is not None and hmac.compare_digest(_proof(s, label, cluster, first, second), p) for p in proofs)), None)


class Connection(asyncio.BufferedProtocol):
    """One authenticated TCP connection carrying pipelined requests both ways.

    It is an `asyncio.BufferedProtocol`: the event loop receives straight into
    buffers this class hands out.  Prefixes and headers land in a scratch
    buffer and are parsed in place; a large payload gets a buffer of exactly
    its size (allocated only after its length passed the limit check) and the
    socket fills it directly — no stream buffer, no copy per frame.
    """

    def __init__(
        self,
        *,
        handler: Handler | None = None,
        notice_handler: NoticeHandler | None = None,
        prompt_handler: PromptHandler | None = None,
        peer_name: str = "?",
        max_payload: int = MAX_PAYLOAD_LEN,
        on_connect: Callable[[Connection], Awaitable[None]] | None = None,
        silence_limit: float | None = None,
    ) -> None:
        self.handler = handler
        self.notice_handler = notice_handler
        self.prompt_handler = prompt_handler
        self.peer_name = peer_name
        self.peer_role = "?"
        self.max_payload = max_payload
        self.transport: asyncio.Transport | None = None
        self._on_connect = on_connect
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[tuple[Kind, dict[str, Any], Payload]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = asyncio.Event()
        #: The transport is gone (`connection_lost`): over TLS that is a round trip after `close()`.
        self._lost = asyncio.Event()
        self._can_write = asyncio.Event()
        self._can_write.set()
        # Receive state.
        self._scratch = bytearray(PRE_AUTH_SCRATCH)
        self._start = 0
        self._end = 0
        self._payload: bytearray | None = None
        self._payload_pos = 0
        self._payload_frame: tuple[FramePrefix, dict[str, Any]] | None = None
        # Before `start()`, frames go to the handshake queue; after, to handlers and waiters.
        self._started = False
        self._handshake_frames: asyncio.Queue[Frame | BaseException] = asyncio.Queue()
        self._serving = 0
        self._inflight_bytes = 0
        self._reading_paused = False
        self._eof = False
        self._refusal: ProtocolError | None = None
        #: Over TLS (set in connection_made); what closed the connection, if the transport said.
        self.tls = False
        self.lost_reason: BaseException | None = None
        #: Set by owners that attach state to a connection (e.g. the CS id).
        self.tag: Any = None
        #: This end's credentials, on a connection it opened: it answers a server's REAUTH with them.
        self.creds: Credentials | None = None
        #: On a connection a server accepted: the secret its peer proved (`RpcServer._reauthenticate`).
        self.proven: bytes | None = None
        # Silence watch (see SILENCE_LIMIT): when a byte last came, the armed check, a ping out.
        self.silence_limit = silence_limit
        self._heard = time.monotonic()
        self._silence_check: asyncio.TimerHandle | None = None
        self._stall_check: asyncio.TimerHandle | None = None
        self._check_due = 0.0
        self._pinging = False
        #: Closed: why (as `close` was told); `silent`: given up for its silence (the peer is frozen or cut off).
        self.close_reason = ""
        self.silent = False

    @property
    def writer(self) -> asyncio.Transport:
        assert self.transport is not None
        return self.transport

    # -- asyncio protocol callbacks ------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they implement it.
        self.transport = cast(asyncio.Transport, transport)
        self.tls = transport.get_extra_info("sslcontext") is not None
        if self._on_connect is not None:
            self._spawn(self._on_connect(self))

    def connection_lost(self, exc: Exception | None) -> None:
        # Kept for `connect`: over TLS 1.3 a server that refuses this node's certificate says so
        # only after the client's side of the TLS handshake is done, as an alert that closes.
        self.lost_reason = exc
        self._lost.set()
        self.close()

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._payload is not None:
            return memoryview(self._payload)[self._payload_pos:]
        if self._end == len(self._scratch):
            if not self._started and self._end - self._start >= PRE_AUTH_SCRATCH:
                # More unparsed bytes than a handshake needs: let this read go nowhere and refuse the
                # peer in buffer_updated.  Not here: closing the transport inside get_buffer makes
                # uvloop (libuv) call a read callback that closing has cleared -- a segfault.
                self._refusal = ProtocolError("too much data before authentication")
                return memoryview(bytearray(PRE_AUTH_SCRATCH))
            self._make_room(0)
        return memoryview(self._scratch)[self._end:]

    def buffer_updated(self, nbytes: int) -> None:
        self._heard = time.monotonic()
        if self._closed.is_set():
            return
        if self._refusal is not None:
            self._fail(self._refusal)  # see get_buffer: what was read goes nowhere
            return
        try:
            if self._payload is not None:
                self._payload_pos += nbytes
                if self._payload_pos < len(self._payload):
                    return
                assert self._payload_frame is not None
                prefix, header = self._payload_frame
                payload, self._payload, self._payload_frame = self._payload, None, None
                self._deliver((prefix.kind, prefix.type, prefix.request_id, header, payload))
            else:
                self._end += nbytes
            self._parse()
        except ProtocolError as exc:
            self._fail(exc)
            return
        if self._stall_check is None and self._started and self._unfinished:
            self._watch_stall(FRAME_STALL_LIMIT)

    @property
    def _unfinished(self) -> bool:
        """Part of a frame is here, the rest not yet."""
        return self._payload is not None or self._end > self._start

    def _check_stall(self) -> None:
        self._stall_check = None
        if self._closed.is_set() or not self._unfinished:
            return
        quiet = time.monotonic() - self._heard
        if quiet >= FRAME_STALL_LIMIT:
            self._fail(ProtocolError(f"a frame left unfinished: nothing more of it for {FRAME_STALL_LIMIT:g} s"))
        else:
            self._watch_stall(FRAME_STALL_LIMIT - quiet)

    def _watch_stall(self, delay: float) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # bytes fed by hand, outside an event loop (unit tests of the parser)
            return
        self._stall_check = loop.call_later(delay, self._check_stall)

    def eof_received(self) -> bool | None:
        """The peer finished sending: answer what it asked, then close (a half-close)."""
        self._eof = True
        self._handshake_frames.put_nowait(ClosedUnder(f"{self.peer_name} closed the connection"))
        if self._started and self._serving == 0:
            self.close()
        # TLS shuts the whole connection down at the peer's close_notify (asyncio's and uvloop's
        # SSL transports cannot half-close, and warn when asked to).
        return None if self.tls else True

    # -- parsing ---------------------------------------------------------------

    def _make_room(self, need: int) -> None:
        """Make room after the unparsed bytes, for a frame head of `need` bytes (0: any room).

        The scratch buffer is never resized in place: the transport may still
        hold the memoryview `get_buffer` gave it (asyncio's selector transport
        and uvloop both keep it alive while `buffer_updated` runs), and resizing
        an exported bytearray raises BufferError, which closed the connection
        on every header over 256 KiB (issue 14).  A bigger buffer is a new
        object; the old one lives on until the transport lets go of its view.
        `need` is at most PREFIX_SIZE + MAX_HEADER_LEN (checked by
        `unpack_prefix` first), so the buffer stays bounded.
        """
        pending = self._end - self._start
        want = max(need, pending + 1)
        if want > len(self._scratch):
            grown = bytearray(max(want, self._base_scratch))
            grown[:pending] = self._scratch[self._start:self._end]
            self._scratch = grown
        elif self._start:
            # Same length on both sides: no resize, allowed while a view is exported.
            self._scratch[:pending] = self._scratch[self._start:self._end]
        self._start, self._end = 0, pending

    def _parse(self) -> None:
        scratch = self._scratch
        # Before authentication, one frame at a time: what follows the handshake is parsed
        # under full limits once `start()` runs (a peer may send its first request at once).
        while not self._reading_paused and self._payload is None and (
                self._started or self._handshake_frames.empty()):
            available = self._end - self._start
            if available < PREFIX_SIZE:
                break
            if self._started:
                prefix = unpack_prefix(bytes(scratch[self._start:self._start + PREFIX_SIZE]), self.max_payload)
                if prefix.kind in (Kind.REQUEST, Kind.NOTICE) and prefix.payload_len:
                    if not spec_of(prefix.type)[1].request_payload:
                        raise ProtocolError(f"message type {prefix.type} carries no payload")
            else:
                prefix = unpack_prefix(bytes(scratch[self._start:self._start + PREFIX_SIZE]), 0, PRE_AUTH_MAX_HEADER)
            frame_head = PREFIX_SIZE + prefix.header_len
            if available < frame_head:
                if self._start + frame_head > len(scratch):
                    self._make_room(frame_head)
                break
            header = decode_header(bytes(scratch[self._start + PREFIX_SIZE:self._start + frame_head]))
            self._start += frame_head
            size = prefix.payload_len
            have = min(self._end - self._start, size)
            if have == size:
                payload = bytes(scratch[self._start:self._start + size]) if size else b""
                self._start += size
                self._deliver((prefix.kind, prefix.type, prefix.request_id, header, payload))
                continue
            # A large payload: the socket reads the rest straight into its own buffer.
            self._payload = bytearray(size)
            self._payload[:have] = scratch[self._start:self._end]
            self._payload_pos = have
            self._payload_frame = (prefix, header)
            self._start = self._end = 0
        if self._start == self._end:
            self._start = self._end = 0
            if len(self._scratch) > self._base_scratch:
                # A big header passed: give its memory back (every buffer has a bound, invariant 5).
                self._scratch = bytearray(self._base_scratch)

    @property
    def writable(self) -> bool:
        """The peer reads what is sent (the write buffer is below its high-water mark)."""
        return self._can_write.is_set()

    @property
    def _base_scratch(self) -> int:
        return SCRATCH_SIZE if self._started else PRE_AUTH_SCRATCH

    def _deliver(self, frame: Frame) -> None:
        if not self._started:
            if self._handshake_frames.qsize() >= PRE_AUTH_MAX_FRAMES:
                raise ProtocolError("too many messages before authentication")
            self._handshake_frames.put_nowait(frame)
            return
        kind, mtype, rid, header, payload = frame
        if kind == Kind.REQUEST:
            if self.prompt_handler is not None and self._answered_now(mtype, rid, header, payload):
                return
            self._serving += 1
            self._inflight_bytes += len(payload)
            if (self._serving >= MAX_CONCURRENT_REQUESTS or self._inflight_bytes > MAX_INFLIGHT_BYTES) \
                    and not self._reading_paused:
                self._reading_paused = True
                self.writer.pause_reading()
            self._spawn(self._serve(mtype, rid, header, payload))
        elif kind == Kind.NOTICE:
            self._take_notice(mtype, header, payload)
        else:
            fut = self._pending.get(rid)
            if fut is not None and not fut.done():
                fut.set_result((kind, header, payload))

    def _answered_now(self, mtype: int, rid: int, header: dict[str, Any], payload: Payload) -> bool:
        """Answer a request here, without a task, if the prompt handler can; False: it cannot.

        A chunk server's 4 KiB write to a replica is done in tens of microseconds
        on the loop; a task for it, its coroutines and its wait to be scheduled
        cost about as much again, on every replica of every write.
        """
        assert self.prompt_handler is not None
        try:
            try:
                msg = validate_request(mtype, header, len(payload))
                reply = self.prompt_handler(self, msg, header, payload)
                if reply is None:
                    return False
                self._send(Kind.RESPONSE, mtype, rid, *reply)
            except Exception as exc:  # noqa: BLE001 - a bug must not kill the server
                self._answer_failure(mtype, rid, exc)
        except (ConnectionError, OSError):
            self.close()
        if self._eof and self._serving == 0:
            self.close()
        return True

    def _answer_failure(self, mtype: int, rid: int, exc: BaseException) -> None:
        """Answer a request that failed with `exc`; re-raise what is not the request's fault."""
        if isinstance(exc, ProtocolError):
            # A malformed request: answer it, then close (invariant 4).
            logger.warning("closing connection from %s: %s", self.peer_name, exc)
            self._send(Kind.ERROR, mtype, rid, _error_header(exc))
            self._eof = True
        elif isinstance(exc, ChunkFSError):
            self._send(Kind.ERROR, mtype, rid, _error_header(exc))
        elif isinstance(exc, ConnectionError) or not isinstance(exc, Exception):
            raise exc  # the peer left before its answer (the send failed), or a cancellation
        elif not self.closed:  # else the peer left before its answer (a send failed): nobody to tell
            logger.error("request %s from %s failed", mtype, self.peer_name, exc_info=exc)  # a bug
            self._send(Kind.ERROR, mtype, rid, _error_header(InternalError(f"internal error: {exc}")))

    def _take_notice(self, mtype: int, header: dict[str, Any], payload: Payload) -> None:
        """Hand a notice to its handler; a malformed one closes the connection (raised to `_parse`)."""
        msg = validate_notice(mtype, header, len(payload))
        if self.notice_handler is None:
            raise ProtocolError(f"{msg.name}: this peer takes no notices")
        try:
            self.notice_handler(self, msg, header, payload)
        except ProtocolError:
            raise
        except ChunkFSError as exc:  # e.g. Raft not started yet: its sender resends what matters
            logger.debug("%s from %s not taken: %s", msg.name, self.peer_name, exc)
        except Exception:  # noqa: BLE001 - a bug must not kill the connection's reader
            logger.exception("%s from %s failed", msg.name, self.peer_name)

    def _fail(self, exc: ProtocolError) -> None:
        if self._started:
            # Until the handshake is done, the handshake waiting for this frame fails with `exc` and
            # says so: a server once per interval under a flood (`RpcServer._refuse`), naming the peer.
            # Logged here as well, each of 3,000 bad connections took a line, most from "?" (a probe).
            logger.warning("closing connection from %s: %s", self.peer_name, exc)
        self._handshake_frames.put_nowait(exc)
        self.refuse(exc)

    def refuse(self, exc: ChunkFSError) -> None:
        """Answer with `exc` (an error frame), then close."""
        with contextlib.suppress(Exception):
            self._send(Kind.ERROR, 0, 0, _error_header(exc))
        self.close()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- sending -------------------------------------------------------------

    def _send(self, kind: Kind, mtype: int, rid: int, header: dict[str, Any], payload: Payload = b"") -> None:
        if self._closed.is_set() or self.writer.is_closing():
            # uvloop raises RuntimeError on a closed transport: the handshake of a peer refused
            # meanwhile died with "Task exception was never retrieved" (found by fuzzing).
            raise ConnectionResetError(f"connection to {self.peer_name} is closed")
        hdr = encode_header(header)
        head = pack_prefix(kind, mtype, rid, len(hdr), len(payload)) + hdr
        if payload:
            # One system call (uvloop gathers the pieces into one writev), no copy of the payload:
            # two writes were two sends, and could wake the peer twice for one frame.
            self.writer.writelines((head, payload))
        else:
            self.writer.write(head)

    def notify(self, mtype: Msg, header: dict[str, Any], payload: Payload = b"") -> bool:
        """Send a request that gets no answer (a notice); False if it was dropped.

        It is dropped, not queued, while the peer reads slower than it is sent
        to (the connection's write buffer is above its high-water mark): a
        notice's sender must cope with losses anyway (Raft resends what
        matters), and nothing may pile up without bound for a silent peer.
        """
        if self._closed.is_set():
            raise Unavailable(f"connection to {self.peer_name} is closed")
        if not self._can_write.is_set():
            return False
        try:
            self._send(Kind.NOTICE, mtype, 0, header, payload)
        except (ConnectionError, OSError) as exc:
            self.close()
            raise Unavailable(f"connection to {self.peer_name} lost: {exc}") from None
        return True

    @property
    def _must_drain(self) -> bool:
        """`_drain` has something to wait for or to raise (checked first: no coroutine per request else)."""
        return not self._can_write.is_set() or self._closed.is_set()

    async def _drain(self, timeout: float) -> None:
        if not self._can_write.is_set():
            await asyncio.wait_for(self._can_write.wait(), timeout)
        if self._closed.is_set():
            raise ConnectionResetError("connection closed")

    async def call(
        self,
        mtype: Msg,
        header: dict[str, Any],
        payload: Payload = b"",
        timeout: float = CALL_TIMEOUT,
    ) -> Reply:
        """Send one request and wait (bounded) for its response."""
        return await self.request(mtype, header, payload, timeout)

    def request(
        self,
        mtype: Msg,
        header: dict[str, Any],
        payload: Payload = b"",
        timeout: float = CALL_TIMEOUT,
    ) -> Coroutine[Any, Any, Reply]:
        """Send one request now; await what this returns (always, exactly once) for the response.

        The request is on the wire when this returns, so requests sent one
        after another on this connection arrive in that order, whenever their
        responses are awaited (the chunk server forwards writes this way).
        """
        if self._closed.is_set():
            raise Unavailable(f"connection to {self.peer_name} is closed")
        rid = next(self._ids)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[Kind, dict[str, Any], Payload]] = loop.create_future()
        self._pending[rid] = fut
        # A plain timer instead of asyncio.wait_for: same bound, a fraction of the
        # cost per request (no extra future and callbacks) on the hot data path.
        timer = loop.call_later(timeout, _expire, fut)
        if self.silence_limit is not None and self._silence_check is None:
            self._heard = time.monotonic()  # silence counts from now, not from an idle spell before
            self._arm_silence_check()
        try:
            self._send(Kind.REQUEST, mtype, rid, header, payload)
        except (ConnectionError, OSError) as exc:
            timer.cancel()
            self._pending.pop(rid, None)
            self.close()
            raise Unavailable(f"connection to {self.peer_name} lost: {exc}") from None
        return self._response(mtype, rid, fut, timer, timeout)

    def silent_for(self) -> float:
        """Seconds since the peer last sent a byte while requests wait on it (0: none waits).

        Only a connection watched for silence keeps this count (and pings a quiet peer, which
        a live one answers from its event loop at once); 0 on any other."""
        if self.silence_limit is None or not self._pending or self._closed.is_set():
            return 0.0
        return time.monotonic() - self._heard

    @property
    def _ping_after(self) -> float:
        return min(PING_AFTER, (self.silence_limit or CALL_TIMEOUT) / 4)

    def _arm_silence_check(self, delay: float | None = None) -> None:
        delay = self._ping_after if delay is None else delay
        self._check_due = time.monotonic() + delay
        self._silence_check = asyncio.get_running_loop().call_later(delay, self._check_silence)

    def _check_silence(self) -> None:
        """While requests wait: ping a peer gone quiet, give up one silent for `silence_limit` s."""
        self._silence_check = None
        if self._closed.is_set() or not self._pending:
            return
        assert self.silence_limit is not None
        now = time.monotonic()
        if self._reading_paused or now - self._check_due > self._ping_after:
            # This side is not reading, or was itself stopped (its check ran a period late: a paused
            # process or host, a starved machine): the silence would be its own, and the bytes the
            # peer sent meanwhile may not even be read yet.  The peer gets a fresh limit.
            self._heard = now
        silent = now - self._heard
        if silent >= self.silence_limit:
            why = (f"{self.peer_name} sent nothing for {silent:.1f} s, not even an answer to a ping, while "
                   f"{len(self._pending)} request(s) waited: the server is frozen or cut off")
            logger.warning("giving up the connection to %s", why)
            self.silent = True
            self.close(why)
            return
        if silent >= self._ping_after and not self._pinging:
            self._spawn(self._ping())
        # The next look comes when the limit is reached, if nothing is heard before (not up to a period after).
        self._arm_silence_check(min(self._ping_after, max(0.01, self.silence_limit - silent)))

    async def _ping(self) -> None:
        """One PING; its answer (any byte from the peer, in fact) is what the silence watch needs."""
        self._pinging = True
        try:
            await self.request(Msg.PING, {}, timeout=self.silence_limit or CALL_TIMEOUT)
        except ChunkFSError:
            pass  # the silence watch decides what the missing answer means
        finally:
            self._pinging = False

    async def _response(
        self, mtype: Msg, rid: int, fut: asyncio.Future[tuple[Kind, dict[str, Any], Payload]],
        timer: asyncio.TimerHandle, timeout: float,
    ) -> Reply:
        try:
            if self._must_drain:
                await self._drain(timeout)
            kind, rheader, rpayload = await fut
        except TimeoutError:
            raise Timeout(f"{mtype.name} to {self.peer_name} timed out after {timeout:g}s") from None
        except (ConnectionError, OSError) as exc:
            self.close()
            raise Unavailable(f"connection to {self.peer_name} lost: {exc}") from None
        finally:
            timer.cancel()
            self._pending.pop(rid, None)
        if kind == Kind.ERROR:
            raise _error_from_header(rheader)
        validate_response(mtype, rheader)
        return rheader, rpayload

    # -- serving -------------------------------------------------------------

    async def _next_handshake_frame(self) -> Frame:
        if self._handshake_frames.empty():
            self._parse_safely()  # the next frame may already be waiting in the buffer
        item = await asyncio.wait_for(self._handshake_frames.get(), HANDSHAKE_TIMEOUT)
        if isinstance(item, BaseException):
            raise item
        return item

    def start(self) -> None:
        """Serve requests and match responses (after the handshake): full-size frames from now on."""
        self._started = True
        if len(self._scratch) < SCRATCH_SIZE:
            # A new buffer, not a resize: the transport may hold a view of the old one.
            pending = self._end - self._start
            grown = bytearray(SCRATCH_SIZE)
            grown[:pending] = self._scratch[self._start:self._end]
            self._scratch, self._start, self._end = grown, 0, pending
        while not self._handshake_frames.empty():
            item = self._handshake_frames.get_nowait()
            if not isinstance(item, BaseException):
                self._deliver(item)
        self._parse_safely()

    async def _serve(self, mtype: int, rid: int, header: dict[str, Any], payload: Payload) -> None:
        try:
            try:
                msg = validate_request(mtype, header, len(payload))
                if msg == Msg.REAUTH:
                    rheader, rpayload = self._prove_again(header), b""
                elif self.handler is None:
                    raise ProtocolError(f"{msg.name}: this peer accepts no requests")
                else:
                    rheader, rpayload = await self.handler(self, msg, header, payload)
                self._send(Kind.RESPONSE, mtype, rid, rheader, rpayload)
            except Exception as exc:  # noqa: BLE001 - a bug must not kill the server
                self._answer_failure(mtype, rid, exc)
            if self._must_drain:
                await self._drain(CALL_TIMEOUT)
        except (ConnectionError, OSError, TimeoutError, AssertionError):
            self.close()
        finally:
            self._serving -= 1
            self._inflight_bytes -= len(payload)
            if self._eof and self._serving == 0:
                self.close()
            if (self._reading_paused and self._serving < MAX_CONCURRENT_REQUESTS // 2
                    and self._inflight_bytes <= MAX_INFLIGHT_BYTES // 2 and not self.closed):
                self._reading_paused = False
                self.writer.resume_reading()
                self._parse_safely()

    def _prove_again(self, header: dict[str, Any]) -> dict[str, Any]:
        """Answer a server's REAUTH: prove a secret it proved it holds, the next one first (as in HELLO)."""
        creds = self.creds
        if creds is None:
            raise AuthenticationFailed("this end accepted the connection: only the end that opened it proves again")
        nonce: bytes = header["nonce"]
        current, nxt = creds.secrets()
        secret = _proven((nxt, current), b"reauth-server", creds.cluster, nonce, b"",
                         (header["proof"], header.get("proof_next")))
        if secret is None:
            logger.warning("%s no longer holds this node's secret of cluster %r: check %s (after a rotation of "
                           "the cluster secret, copy the new one there)", self.peer_name, creds.cluster, creds.where())
            raise AuthenticationFailed(f"{creds.node} holds none of the secrets you hold now")
        return {"proof": _proof(secret, b"reauth-client", creds.cluster, nonce, b"")}

    def _parse_safely(self) -> None:
        try:
            self._parse()
        except ProtocolError as exc:
            self._fail(exc)

    # -- life cycle ----------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def wait_lost(self, timeout: float) -> None:
        """After `close()`, wait (bounded) until the transport is gone.

        A TLS connection closes with a close_notify each way, a round trip: an
        owner that stops its event loop right after closing (`SyncClient`)
        waits here, or the loop would die with the socket still open.
        """
        if self.transport is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._lost.wait(), timeout)

    def close(self, why: str = "") -> None:
        """Close; requests still waiting fail with Unavailable, saying `why` when given."""
        if self._closed.is_set():
            return
        self._closed.set()
        self.close_reason = why
        self._can_write.set()
        if self._silence_check is not None:
            self._silence_check.cancel()
        if self._stall_check is not None:
            self._stall_check.cancel()
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(Unavailable(why or f"connection to {self.peer_name} closed"))
                fut.exception()  # looked at: a request whose owner is gone too is no error to report
        self._pending.clear()
        self._handshake_frames.put_nowait(ClosedUnder(f"connection to {self.peer_name} closed"))
        if self.transport is not None:
            self.transport.close()


class ClosedUnder(Unavailable):
    """The connection closed under a handshake, without a word from the peer."""


def _tls_refusal(exc: BaseException) -> str:
    """Why a TLS handshake was refused, for the log; empty when the peer just left."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not signed by the cluster CA ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError) and not isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return f"TLS handshake failed ({str(exc.reason or exc).lower().replace('_', ' ')})"
    if isinstance(exc, TimeoutError | ConnectionAbortedError):
        return "TLS handshake not finished in time"
    return ""


def _expire(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


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
    if creds.uuid:
        hello["uuid"] = creds.uuid
    conn._send(Kind.REQUEST, Msg.HELLO, 0, hello)
    kind, mtype, _, header, _ = await conn._next_handshake_frame()
    if kind == Kind.ERROR:
        raise _error_from_header(header)
    validate_response(Msg.HELLO, header)
    server_nonce: bytes = header["nonce"]
    current, nxt = creds.secrets()
    # The next secret first: once a peer knows it, connections move to it ahead of the rotation's end.
    secret = _proven((nxt, current), b"server", creds.cluster, nonce, server_nonce,
                     (header["proof"], header.get("proof_next")))
    if secret is None:
        raise AuthenticationFailed(
            f"{conn.peer_name} does not share this node's secret of cluster {creds.cluster!r}: "
            f"check {creds.where()} (after a rotation of the cluster secret, copy the new one there)"
        )
    proof = _proof(secret, b"client", creds.cluster, server_nonce, nonce)
    conn._send(Kind.REQUEST, Msg.PROOF, 0, {"proof": proof})
    kind, _, _, header, _ = await conn._next_handshake_frame()
    if kind == Kind.ERROR:
        raise _error_from_header(header)


async def server_handshake(conn: Connection, creds: Credentials) -> bytes:
    """Check that the connecting peer knows the secret (refuse it otherwise); return the secret it proved."""
    try:
        kind, mtype, _, header, payload = await conn._next_handshake_frame()
        if kind != Kind.REQUEST or mtype != Msg.HELLO:
            raise AuthenticationFailed("the first message must be HELLO: authenticate first")
        validate_request(Msg.HELLO, header, len(payload))
        if header["cluster"] != creds.cluster:
            raise AuthenticationFailed(f"this node belongs to cluster {creds.cluster!r}, not {header['cluster']!r}")
        if creds.uuid and header.get("uuid", creds.uuid) != creds.uuid:
            raise AuthenticationFailed(
                f"this node belongs to the cluster {creds.cluster!r} of id {creds.uuid}, not to the one of id "
                f"{header['uuid']}: use this cluster's configuration (its cluster.json)")
        client_nonce: bytes = header["nonce"]
        if len(client_nonce) != NONCE_SIZE:
            raise ProtocolError("HELLO: bad nonce")
        conn.peer_role = header["role"]
        conn.peer_name = f"{header['node']}@{conn.peer_name}"
        nonce = os.urandom(NONCE_SIZE)
        held = creds.secrets()
        conn._send(Kind.RESPONSE, Msg.HELLO, 0,
                   {"nonce": nonce, **_proofs(held, b"server", creds.cluster, client_nonce, nonce)})
        kind, mtype, _, header, payload = await conn._next_handshake_frame()
        if kind != Kind.REQUEST or mtype != Msg.PROOF:
            raise AuthenticationFailed("expected PROOF after HELLO")
        validate_request(Msg.PROOF, header, len(payload))
        proven = _proven(held, b"client", creds.cluster, nonce, client_nonce, (header["proof"],))
        if proven is None:
            raise AuthenticationFailed("wrong cluster secret")
        conn._send(Kind.RESPONSE, Msg.PROOF, 0, {})
        return proven
    except TimeoutError:
        raise AuthenticationFailed("handshake timed out") from None
    except Unavailable:
        raise  # the peer is gone: nobody to tell
    except ChunkFSError as exc:
        with contextlib.suppress(Exception):
            conn._send(Kind.ERROR, 0, 0, _error_header(exc))
        raise


async def connect(
    addr: str,
    creds: Credentials,
    *,
    handler: Handler | None = None,
    notice_handler: NoticeHandler | None = None,
    timeout: float = 5.0,
    max_payload: int = MAX_PAYLOAD_LEN,
    silence_limit: float | None = None,
) -> Connection:
    """Open, authenticate and start a connection to ``HOST:PORT``.

    `silence_limit`: give the peer up when it sends nothing for this long while
    a request waits (see SILENCE_LIMIT); None: only each request's own timeout.
    """
    host, port = parse_addr(addr)
    loop = asyncio.get_running_loop()

    def factory() -> Connection:
        return Connection(handler=handler, notice_handler=notice_handler, peer_name=addr, max_payload=max_payload,
                          silence_limit=silence_limit)

    tls: dict[str, Any] = {}
    if creds.tls is not None:
        tls = {"ssl": creds.tls.client, "ssl_handshake_timeout": timeout}
    try:
        _, conn = await asyncio.wait_for(loop.create_connection(factory, host, port, **tls), timeout)
    except TimeoutError:
        raise Timeout(f"connecting to {addr} timed out after {timeout:g}s") from None
    except ssl.SSLError as exc:
        raise tls_error(addr, exc) from None
    except OSError as exc:
        # (asyncio's own wording, "Connect call failed ('127.0.0.1', 1234)", carries the errno alone)
        reason = exc.strerror or (os.strerror(exc.errno) if exc.errno else str(exc))
        raise Unavailable(f"cannot connect to {addr}: {reason}") from None
    try:
        _tune_socket(conn)
        _size_socket_buffers(conn)
    except RuntimeError:
        # uvloop refuses any operation on a transport already closed: a peer that reset the connection
        # as it was made (a listener closed with it in its backlog, a refusal), its reset read by the
        # loop before this line.  Not a bug to answer EIO for at once: a connection lost, as any other
        # (a mount's request escaped its retries through here, its master_wait or not).
        conn.close()
        raise Unavailable(f"{addr} closed the connection as it was made") from None
    try:
        await client_handshake(conn, creds)
    except TimeoutError:
        conn.close()
        raise Timeout(f"handshake with {addr} timed out") from None
    except asyncio.CancelledError:
        conn.close()  # given up (another server answered first): not left open
        raise
    except (ClosedUnder, ConnectionError, OSError):
        # A peer that dies just after accepting (a chunk server being killed) closes under our
        # HELLO: a send then fails with ConnectionResetError, which callers treat as any other
        # unreachable replica, not as a bug (found by a CS kill during writes).
        conn.close()
        if isinstance(conn.lost_reason, ssl.SSLError):
            raise tls_error(addr, conn.lost_reason) from None
        # A TLS 1.3 server checks the client's certificate after the client's side of the TLS
        # handshake is done, and asyncio and uvloop close without sending the alert: a refused
        # certificate looks like this, so say so (the server's log names the reason).
        # Without TLS here, a node that runs TLS closes at once on the plain HELLO (a probe: the error
        # then asked whether the cluster was running).
        hint = "; if it goes on, that node may refuse this node's TLS certificate (its log says why)" \
            if conn.tls else ("; if the cluster runs TLS, this configuration has no TLS certificate for it "
                              "(see chunkfs tls --help)")
        raise Unavailable(f"{addr} closed the connection during the handshake{hint}") from None
    except Unavailable:
        conn.close()  # the server's own word (it refused the connection, saying why): passed on as it is
        raise
    except ProtocolError as exc:
        conn.close()  # something else listens there (a probe: an HTTP server on an address in mds.list)
        raise ProtocolError(f"{addr}: {exc}: is that the address of a ChunkFS node? (the client configuration's "
                            "mds.list, a node's node.json)") from None
    except BaseException:
        conn.close()
        raise
    conn.creds = creds
    conn.start()
    return conn


def tls_error(addr: str, exc: ssl.SSLError) -> ChunkFSError:
    """One line on a failed TLS handshake: whose certificate was refused, or that the peer speaks no TLS.

    A refused certificate or a peer without TLS is a configuration error
    (`AuthenticationFailed`, not retried); a connection cut in the middle is
    `Unavailable`, like any lost connection.
    """
    if isinstance(exc, ssl.SSLCertVerificationError):
        return AuthenticationFailed(
            f"{addr} presented a TLS certificate that the cluster CA did not sign ({exc.verify_message}): "
            "it is not a node of this cluster, or its tls/ folder belongs to another cluster")
    reason = str(exc.reason or exc).lower().replace("_", " ")
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError | ssl.SSLSyscallError):
        return Unavailable(f"{addr} closed the connection during the TLS handshake ({reason})")
    if "alert" in reason:
        return AuthenticationFailed(
            f"{addr} refused this node's TLS certificate ({reason}): issue it from the cluster CA "
            "with `chunkfs tls issue`")
    return AuthenticationFailed(
        f"TLS handshake with {addr} failed ({reason}): a cluster runs TLS on every node or on none; "
        "check that node's node.json")


def _tune_socket(conn: Connection) -> None:
    """No Nagle delay for small requests."""
    sock = conn.writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _size_socket_buffers(conn: Connection) -> None:
    """Roomy buffers for chunk data: on a server, only once the peer has proven the secret."""
    sock = conn.writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
    conn.writer.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)


class RpcServer:
    """Accepts connections, authenticates them, then serves their requests."""

    def __init__(
        self,
        creds: Credentials,
        handler: Handler,
        *,
        notice_handler: NoticeHandler | None = None,
        prompt_handler: PromptHandler | None = None,
        on_close: Callable[[Connection], None] | None = None,
        max_payload: int = MAX_PAYLOAD_LEN,
    ) -> None:
        self.creds = creds
        self.handler = handler
        self.notice_handler = notice_handler
        self.prompt_handler = prompt_handler
        self.on_close = on_close
        self.max_payload = max_payload
        self.connections: set[Connection] = set()
        self._server: asyncio.Server | None = None
        #: With TLS: our own listening sockets.
        self._listeners: list[socket.socket] = []
        #: This server's own tasks (`_start`): TLS accept loops and handshakes, REAUTH exchanges.
        self._tasks: set[asyncio.Task[None]] = set()
        #: Connections still in their handshake, by peer address, and themselves (closed at shutdown too).
        self._unauthenticated: dict[str, int] = {}
        self._handshaking: set[Connection] = set()
        self.refused = 0
        self._refused_unlogged = 0
        self._refusal_logged_at = -REFUSAL_LOG_INTERVAL
        #: Says the count of refusals not logged yet at the interval's end, if no refusal comes to say it.
        self._refusal_report: asyncio.TimerHandle | None = None
        #: Follows the node's secrets (`_watch_secrets`); the connections being asked to prove one again.
        self._watch_task: asyncio.Task[None] | None = None
        self._reauthenticating: set[Connection] = set()

    async def listen(self, addr: str, start_serving: bool = True) -> None:
        """Bind `addr`; with `start_serving` False, accept only after `start_serving()`."""
        host, port = parse_addr(addr)
        if self._watch_task is None:
            self._watch_task = asyncio.get_running_loop().create_task(self._watch_secrets())
        if self.creds.tls is not None:
            await self._bind_tls(host, port)
            if start_serving:
                await self.start_serving()
            return

        def factory() -> Connection:
            return Connection(handler=self.handler, notice_handler=self.notice_handler,
                              prompt_handler=self.prompt_handler, max_payload=self.max_payload, on_connect=self._accept)

        self._server = await asyncio.get_running_loop().create_server(
            factory, host, port, start_serving=start_serving
        )

    async def start_serving(self) -> None:
        if self._listeners:
            for sock in self._listeners:
                sock.listen(TLS_BACKLOG)
                self._start(self._accept_tls(sock))
            return
        assert self._server is not None
        await self._server.start_serving()

    @property
    def port(self) -> int:
        if self._listeners:
            return int(self._listeners[0].getsockname()[1])
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    # -- TLS: accepting by hand ------------------------------------------------

    async def _bind_tls(self, host: str, port: int) -> None:
        """Bind every address of `host` as asyncio's create_server would, without listening yet.

        Why not ``create_server(ssl=...)``: it starts the TLS handshake of every
        connection it accepts (buffers of 256 KiB each in asyncio) before this
        server sees the connection, so no cap on unauthenticated peers could
        come first.  Nor ``start_tls`` after a plain accept: uvloop starts
        reading before a protocol can pause it, and the TLS hello lands in the
        wrong hands.  Here each accepted socket passes the caps, then gets its
        TLS handshake (``connect_accepted_socket``), then the secret handshake.
        """
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        try:
            for family, kind, proto, _, sockaddr in dict.fromkeys(infos):
                sock = socket.socket(family, kind, proto)
                self._listeners.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(sockaddr)
                sock.setblocking(False)
                if port == 0:
                    break  # an ephemeral port: one listener (each further one would get another port)
        except OSError:
            self._close_listeners()
            raise

    async def _accept_tls(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, peer = await loop.sock_accept(listener)
            except OSError as exc:  # out of descriptors, say: the listener stays, a later accept may work
                self._refuse("?", f"cannot accept: {exc.strerror or exc}")
                await asyncio.sleep(0.1)
                continue
            host, name = str(peer[0]), f"{peer[0]}:{peer[1]}"
            if not self._admit(host, name):
                sock.close()
                continue
            self._start(self._tls_handshake(sock, host, name, loop.time()))

    async def _tls_handshake(self, sock: socket.socket, host: str, name: str, started: float) -> None:
        assert self.creds.tls is not None

        def factory() -> Connection:
            return Connection(handler=self.handler, notice_handler=self.notice_handler,
                              prompt_handler=self.prompt_handler, max_payload=self.max_payload, peer_name=name,
                              on_connect=lambda conn: self._accept(conn, admitted=host, started=started))

        # From here the event loop owns `sock`: on a failed handshake it closes it (uvloop detaches our
        # socket object only once libuv has closed the descriptor, so closing it here could close a
        # descriptor number already given to another connection).
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                factory, sock, ssl=self.creds.tls.server, ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            self._release(host)
            why = _tls_refusal(exc)
            if why:
                self._refuse(name, why)
        except BaseException:
            self._release(host)
            raise

    def _close_listeners(self) -> None:
        for sock in self._listeners:
            sock.close()
        self._listeners.clear()

    # -- authenticating --------------------------------------------------------

    def _admit(self, host: str, name: str) -> bool:
        """Count one more connection from `host` still proving itself, or refuse it above the caps."""
        waiting = self._unauthenticated.get(host, 0)
        if waiting >= MAX_UNAUTHENTICATED_PER_HOST or sum(self._unauthenticated.values()) >= MAX_UNAUTHENTICATED:
            self._refuse(name, f"too many connections still authenticating ({waiting} from {host})")
            return False
        self._unauthenticated[host] = waiting + 1
        return True

    def _release(self, host: str) -> None:
        left = self._unauthenticated[host] - 1
        if left:
            self._unauthenticated[host] = left
        else:
            del self._unauthenticated[host]

    async def _accept(self, conn: Connection, admitted: str | None = None, started: float | None = None) -> None:
        """Authenticate a new connection, then serve it until it closes.

        `admitted`: the TLS path already counted it (from that host) and
        `started` is when it was accepted, so one deadline covers both handshakes.
        """
        peer = conn.writer.get_extra_info("peername")
        conn.peer_name = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        name = conn.peer_name
        if admitted is not None:
            host = admitted
        else:
            host = str(peer[0]) if isinstance(peer, tuple) else name
            if not self._admit(host, name):
                # Said, not only closed: a client refused this way without a word went on to the next
                # metadata server, and its command failed with that one's "not the master" (a probe).
                conn.refuse(Unavailable(f"too many connections from {host} are still proving the cluster "
                                        "secret to this server; try again in a moment"))
                return
        self._handshaking.add(conn)
        _tune_socket(conn)
        loop = asyncio.get_running_loop()
        try:
            # One deadline for the whole handshake, however the peer paces its bytes.  Not
            # wait_for: that would run the handshake as another task, and the peer's first
            # requests could then arrive before `conn.start()` below, under pre-auth limits.
            async with asyncio.timeout_at((loop.time() if started is None else started) + HANDSHAKE_TIMEOUT):
                conn.proven = await server_handshake(conn, self.creds)
        except TimeoutError:
            self._refuse(name, "handshake not finished in time")
            conn.close()
            return
        except ChunkFSError as exc:
            self._refuse(name, str(exc))
            conn.close()
            return
        except (ConnectionError, OSError):
            conn.close()
            return
        finally:
            self._handshaking.discard(conn)
            self._release(host)
        _size_socket_buffers(conn)
        self.connections.add(conn)
        conn.start()
        try:
            await conn.wait_closed()
        finally:
            self.connections.discard(conn)
            if self.on_close is not None:
                self.on_close(conn)

    # -- a rotation of the cluster secret ---------------------------------------------

    async def _watch_secrets(self) -> None:
        """Once a second, ask every peer that proved a secret this node no longer holds to prove one it holds.

        A rotation's end (``secret finish``) is meant to shut out whoever holds
        only the old secret: refusing new connections is not enough while an
        old one stays open.  A peer that holds the new secret proves it on the
        same connection, with no request failed meanwhile; one that cannot is
        closed (`_reauthenticate`).
        """
        while True:
            self._ask_again()
            await asyncio.sleep(REAUTH_CHECK_INTERVAL)

    def _ask_again(self) -> None:
        """One look (`_watch_secrets`); apart so that no connection stays referenced from the loop's frame
        while it sleeps (a closed one would be kept, buffers and all)."""
        held = self.creds.secrets()  # a damaged file is logged there and the secrets kept: never raises
        for conn in list(self.connections):
            if conn.proven not in held and conn not in self._reauthenticating and not conn.closed:
                self._reauthenticating.add(conn)
                self._start(self._reauthenticate(conn))

    async def _reauthenticate(self, conn: Connection) -> None:
        creds = self.creds
        nonce = os.urandom(NONCE_SIZE)
        held = creds.secrets()
        try:
            reply, _ = await conn.call(Msg.REAUTH, {"nonce": nonce, **_proofs(held, b"reauth-server", creds.cluster,
                                                                              nonce, b"")}, timeout=REAUTH_TIMEOUT)
            proven = _proven(held, b"reauth-client", creds.cluster, nonce, b"", (reply["proof"],))
            if proven is None:
                raise AuthenticationFailed("wrong cluster secret")
            conn.proven = proven
            logger.info("%s proved the cluster secret this node holds now", conn.peer_name)
        except ChunkFSError as exc:
            if not conn.closed:
                logger.warning("closing connection from %s: it proved a cluster secret this node no longer holds "
                               "(rotated out) and not the one it holds now: %s", conn.peer_name, exc)
                conn.close()
        finally:
            self._reauthenticating.discard(conn)

    def _start(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` as one of this server's tasks: kept until it ends, cancelled by `close`."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _refuse(self, name: str, why: str) -> None:
        """Log a refused connection; under a flood, one line per interval with the count, not one per peer."""
        self.refused += 1
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now - self._refusal_logged_at < REFUSAL_LOG_INTERVAL:
            self._refused_unlogged += 1
            if self._refusal_report is None:
                # (a re-probe: the count of a flood's last interval waited for the next bad connection)
                self._refusal_report = loop.call_at(self._refusal_logged_at + REFUSAL_LOG_INTERVAL,
                                                    self._report_refusals)
            return
        more = f" (and {self._refused_unlogged} more refused since the last report)" if self._refused_unlogged else ""
        logger.warning("refused connection from %s: %s%s", name, why, more)
        self._refusal_logged_at, self._refused_unlogged = now, 0

    def _report_refusals(self) -> None:
        self._refusal_report = None
        if self._refused_unlogged:
            logger.warning("refused %d more connection(s) since the last report", self._refused_unlogged)
            self._refusal_logged_at, self._refused_unlogged = asyncio.get_running_loop().time(), 0

    async def close(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
        if self._refusal_report is not None:
            self._refusal_report.cancel()
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=HANDSHAKE_TIMEOUT)
        self._close_listeners()
        for conn in list(self._handshaking):
            conn.close()
        for conn in list(self.connections):
            conn.close()
