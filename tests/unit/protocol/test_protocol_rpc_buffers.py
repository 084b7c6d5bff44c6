"""The receive path takes any frame up to the declared limits, and refuses the next byte cleanly.

The fake transport below holds on to the memoryview `get_buffer` handed out
while `buffer_updated` runs, as asyncio's selector transport and uvloop do:
that is what made growing the scratch buffer raise BufferError (issue 14).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from chunkfs.common.errors import ProtocolError
from chunkfs.protocol import rpc
from chunkfs.protocol.frame import MAX_HEADER_LEN, MAX_PAYLOAD_LEN, PREFIX_SIZE, Kind, encode_header, pack_prefix
from chunkfs.protocol.messages import Msg


class HoldingTransport:
    """Feeds bytes the way a real transport does: recv into the protocol's buffer, view still alive."""

    def __init__(self) -> None:
        self.closed = False
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default  # a plain TCP transport: no "sslcontext"


def feed(conn: rpc.Connection, transport: HoldingTransport, data: bytes, read_size: int) -> None:
    pos = 0
    while pos < len(data) and not transport.closed:
        view = conn.get_buffer(-1)
        assert len(view) > 0
        n = min(len(view), read_size, len(data) - pos)
        view[:n] = data[pos:pos + n]
        conn.buffer_updated(n)  # `view` is still exported here, as in asyncio and uvloop
        pos += n
        del view


def padded_header(size: int) -> dict[str, Any]:
    """A header map whose msgpack encoding is exactly `size` bytes (size >= 65546)."""
    header = {"pad": b"x" * (size - 10)}
    assert len(encode_header(header)) == size
    return header


def frame(header: dict[str, Any], payload: bytes = b"", rid: int = 1, header_len: int | None = None) -> bytes:
    body = encode_header(header)
    length = len(body) if header_len is None else header_len
    return pack_prefix(Kind.RESPONSE, Msg.PING, rid, length, len(payload)) + body + payload


class Recording(rpc.Connection):
    """An authenticated connection that records what it would deliver, and the errors it fails with."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seen: list[Any] = []

    def _deliver(self, frame: Any) -> None:
        if self._started:
            self.seen.append(frame)
        else:
            super()._deliver(frame)

    def _fail(self, exc: ProtocolError) -> None:
        self.seen.append(exc)
        super()._fail(exc)


def received(conn: Recording) -> list[Any]:
    out, conn.seen = conn.seen, []
    return out


def new_conn(max_payload: int = MAX_PAYLOAD_LEN, authenticated: bool = True) -> tuple[Recording, HoldingTransport]:
    conn = Recording(max_payload=max_payload)
    transport = HoldingTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    if authenticated:
        conn.start()
    return conn, transport


@pytest.mark.parametrize("read_size", [1 << 20, 64 << 10, 7777, PREFIX_SIZE + 3])
def test_header_at_the_limit_is_received(read_size: int) -> None:
    conn, transport = new_conn()
    small = frame({"n": 1}, rid=1)
    big = frame(padded_header(MAX_HEADER_LEN), rid=2)
    feed(conn, transport, small + big + small, read_size)
    frames = received(conn)
    assert not transport.closed
    assert [f[2] for f in frames] == [1, 2, 1]
    assert len(frames[1][3]["pad"]) == MAX_HEADER_LEN - 10
    # The big buffer is given back once the frame is through.
    assert len(conn._scratch) == rpc.SCRATCH_SIZE


def test_header_over_the_limit_is_refused_without_buffer_error() -> None:
    conn, transport = new_conn()
    body = b"\x00" * 1024
    data = frame({"n": 1}, rid=1) + pack_prefix(Kind.RESPONSE, Msg.PING, 2, MAX_HEADER_LEN + 1, 0) + body
    feed(conn, transport, data, 64 << 10)
    frames = received(conn)
    assert frames[0][2] == 1
    assert isinstance(frames[1], ProtocolError) and "header" in str(frames[1])
    assert transport.closed


@pytest.mark.parametrize("read_size", [1 << 20, 100_000])
def test_many_big_headers_in_a_row(read_size: int) -> None:
    conn, transport = new_conn()
    sizes = [300_000, rpc.SCRATCH_SIZE - PREFIX_SIZE, rpc.SCRATCH_SIZE, MAX_HEADER_LEN, 70_000]
    data = b"".join(frame(padded_header(s), rid=i) for i, s in enumerate(sizes))
    feed(conn, transport, data, read_size)
    frames = received(conn)
    assert not transport.closed
    assert [len(f[3]["pad"]) + 10 for f in frames] == sizes


@pytest.mark.parametrize("max_payload", [1 << 20, MAX_PAYLOAD_LEN])
def test_payload_at_the_limit_is_received_and_one_more_byte_refused(max_payload: int) -> None:
    conn, transport = new_conn(max_payload)
    payload = bytes(range(256)) * (max_payload // 256)
    feed(conn, transport, frame({"n": 1}, payload, rid=1) + frame({"n": 2}, b"ab", rid=2), 1 << 20)
    frames = received(conn)
    assert [f[2] for f in frames] == [1, 2]
    assert bytes(frames[0][4]) == payload and bytes(frames[1][4]) == b"ab"
    feed(conn, transport, frame({"n": 3}, b"\x00" * (max_payload + 1), rid=3), 1 << 20)
    refused = received(conn)
    assert isinstance(refused[0], ProtocolError) and "payload" in str(refused[0])
    assert transport.closed


def test_big_header_with_small_payload_straddling_the_buffer_end() -> None:
    conn, transport = new_conn()
    first = frame(padded_header(rpc.SCRATCH_SIZE - 100), b"p" * 50, rid=1)
    second = frame(padded_header(200_000), b"q" * 5000, rid=2)
    feed(conn, transport, first + second, 1 << 20)
    frames = received(conn)
    assert [(f[2], bytes(f[4])[:1], len(f[4])) for f in frames] == [(1, b"p", 50), (2, b"q", 5000)]


@pytest.mark.parametrize(("header_len", "payload_len"), [(rpc.PRE_AUTH_MAX_HEADER + 1, 0), (20, 1), (20, 8 << 20)])
def test_before_authentication_frames_are_small(header_len: int, payload_len: int) -> None:
    """Nothing a peer announces before proving the secret makes the connection allocate more than a few KiB."""
    conn, transport = new_conn(authenticated=False)
    feed(conn, transport, pack_prefix(Kind.REQUEST, Msg.HELLO, 0, header_len, payload_len), 1 << 20)
    assert transport.closed
    refused = conn._handshake_frames.get_nowait()
    assert isinstance(refused, ProtocolError)
    assert len(conn._scratch) == rpc.PRE_AUTH_SCRATCH and conn._payload is None


def test_before_authentication_frames_are_taken_one_at_a_time_and_the_rest_is_bounded() -> None:
    conn, transport = new_conn(authenticated=False)
    hello = pack_prefix(Kind.REQUEST, Msg.HELLO, 0, 1, 0) + encode_header({})
    feed(conn, transport, hello * 5, 1 << 20)
    assert not transport.closed and conn._handshake_frames.qsize() == 1  # the rest waits, unparsed
    feed(conn, transport, hello * (rpc.PRE_AUTH_SCRATCH // len(hello) + 1), 1 << 20)
    assert transport.closed and len(conn._scratch) == rpc.PRE_AUTH_SCRATCH


def test_payload_on_a_message_that_has_none_is_refused_before_it_is_read() -> None:
    conn, transport = new_conn()
    feed(conn, transport, pack_prefix(Kind.REQUEST, Msg.GETATTR, 1, 10, 8 << 20), 1 << 20)
    assert transport.closed and conn._payload is None
    assert isinstance(received(conn)[0], ProtocolError)


class ReadingTransport(HoldingTransport):
    """Knows when the protocol is inside get_buffer: libuv's read callback must still exist after it."""

    def __init__(self) -> None:
        super().__init__()
        self.in_get_buffer = False
        self.closed_in_get_buffer = False

    def close(self) -> None:
        self.closed_in_get_buffer |= self.in_get_buffer
        super().close()


def test_too_much_before_authentication_is_refused_after_get_buffer_not_inside_it() -> None:
    """Found by fuzzing real daemons (tests/cluster/test_fuzz_daemons.py): a HELLO and 8 KB more, sent
    before the proof, made a chunk server (and a master) die of SIGSEGV under uvloop: get_buffer closed the
    transport, which in libuv clears the stream's read callback, and libuv then called it.  The refusal is
    now made in buffer_updated."""
    conn = Recording()
    transport = ReadingTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    hello = pack_prefix(Kind.REQUEST, Msg.HELLO, 0, 1, 0) + encode_header({})
    data = hello + bytes(8000)
    pos = 0
    while pos < len(data) and not transport.closed:
        transport.in_get_buffer = True
        view = conn.get_buffer(-1)
        transport.in_get_buffer = False
        n = min(len(view), len(data) - pos)
        view[:n] = data[pos:pos + n]
        conn.buffer_updated(n)
        pos += n
        del view
    assert transport.closed and not transport.closed_in_get_buffer
    assert any(isinstance(x, ProtocolError) and "before authentication" in str(x) for x in conn.seen)
    # The peer was told why (an error frame), then closed.
    assert transport.written and b"before authentication" in transport.written[-1]


async def test_sending_on_a_closed_connection_is_a_connection_error() -> None:
    """Found by fuzzing real daemons: a peer refused while its HELLO was still being answered made the
    handshake write to a closed uvloop transport (RuntimeError, "Task exception was never retrieved")."""
    conn, transport = new_conn(authenticated=False)
    conn.close()
    with pytest.raises(ConnectionResetError):
        conn._send(Kind.RESPONSE, Msg.HELLO, 0, {"nonce": b"n", "proof": b"p"})
    assert transport.written == []


async def test_a_peer_gone_before_its_answer_is_no_internal_error(caplog: pytest.LogCaptureFixture) -> None:
    """Found by fuzzing real daemons: when the connection closed while a request was served, sending the
    answer failed and was logged as the request's failure, with a traceback, at ERROR."""
    async def handler(conn: rpc.Connection, msg: Msg, header: dict[str, Any], payload: bytes) -> Any:
        conn.close()  # the peer is gone meanwhile
        return {"attr": {}}, b""

    conn = rpc.Connection(handler=handler)
    transport = HoldingTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    conn.start()
    body = encode_header({"ino": 1})
    feed(conn, transport, pack_prefix(Kind.REQUEST, Msg.GETATTR, 5, len(body), 0) + body, 1 << 20)
    for _ in range(10):
        await asyncio.sleep(0)
    assert not conn._tasks and conn.closed
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_no_message_may_exceed_chunk_data_not_even_a_metadata_servers_raft() -> None:
    """Snapshots travel in pieces (raft/snapshot_files.py): nothing needs a payload above chunk data."""
    big = MAX_PAYLOAD_LEN + 1
    for msg, role in ((Msg.CS_WRITE, "client"), (Msg.RAFT_SNAPSHOT, "mds")):
        conn, transport = new_conn()
        conn.peer_role = role
        feed(conn, transport, pack_prefix(Kind.REQUEST, msg, 1, 10, big), 1 << 20)
        assert transport.closed and conn._payload is None
    conn, transport = new_conn()
    conn.peer_role = "mds"
    body = encode_header({"m": {}})
    feed(conn, transport, pack_prefix(Kind.REQUEST, Msg.RAFT, 1, len(body), 10) + body, 1 << 20)
    assert transport.closed and conn._payload is None  # a Raft message carries no payload at all
