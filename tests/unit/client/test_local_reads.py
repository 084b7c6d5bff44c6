"""A mount's reads of replicas on its own machine, from their files (client/local_reads.py).

The store is a real ChunkStore in a temporary folder; the chunk server's connection is a socket
pair standing in for it, so a hang-up is a real one."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chunkfs.client import chunk_io
from chunkfs.client.fuse_ops import parse_options
from chunkfs.client.local_reads import LEASE, LOCAL_READ_MAX, LocalReads
from chunkfs.common.errors import ConfigError, ProtocolError, Unavailable
from chunkfs.cs.chunk_store import ChunkStore
from chunkfs.protocol.messages import LOCAL_MARK_FILE, Msg

CHUNK = 1 << 20
ADDR = "127.0.0.1:7001"
MARK = "0123456789abcdef0123456789abcdef"


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeServer:
    """What LocalReads uses of a connection: CS_LOCAL's answer, the socket, whether it is closed."""

    def __init__(self, root: Path, mark: str = MARK, refuse: bool = False) -> None:
        self.root, self.mark, self.refuse = root, mark, refuse
        self.ours, self.theirs = socket.socketpair()
        self.closed = False
        self.transport = self
        self.asked = 0

    def get_extra_info(self, name: str) -> Any:
        return self.ours if name == "socket" else None

    async def call(self, msg: Msg, header: dict[str, Any], timeout: float = 30.0) -> tuple[dict[str, Any], bytes]:
        assert msg == Msg.CS_LOCAL and header == {}
        self.asked += 1
        if self.refuse:
            raise ProtocolError("CS_LOCAL is not served by a chunk server")
        return {"root": str(self.root), "mark": self.mark}, b""

    def hang_up(self) -> None:
        self.theirs.close()

    def close(self) -> None:
        self.ours.close()
        self.theirs.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ChunkStore]:
    with ChunkStore(tmp_path / "data", CHUNK) as s:
        (s.root / LOCAL_MARK_FILE).write_text(MARK)
        yield s


def learnt(store: ChunkStore, **server: Any) -> tuple[LocalReads, FakeClock, FakeServer]:
    clock = FakeClock()
    local = LocalReads(CHUNK, clock=clock)
    conn = FakeServer(store.root, **server)
    asyncio.run(local.learn(ADDR, conn))  # type: ignore[arg-type]
    return local, clock, conn


def test_a_replica_is_read_from_its_file_every_block_checked(store: ChunkStore) -> None:
    data = os.urandom(300_000)
    store.create(5, 9)
    store.write(5, 9, 1000, data)
    local, _, conn = learnt(store)
    assert local.is_local(ADDR)
    for offset, length in ((1000, 4096), (0, 70_000), (65_530, 20), (200_000, 100_000), (CHUNK - 4096, 4096)):
        got = local.read(ADDR, 5, 9, offset, length)
        assert got is not None and bytes(got) == store.read(5, 9, offset, length)
    conn.close()


def test_a_folder_not_proven_to_be_the_servers_is_never_read(store: ChunkStore, tmp_path: Path) -> None:
    store.create(5, 9)
    for server, why in (({"mark": "another run's mark"}, "the mark differs"),
                        ({"refuse": True}, "an older server"),
                        ({"mark": MARK, "root": tmp_path / "elsewhere"}, "no mark file there")):
        root = server.pop("root", store.root)
        local = LocalReads(CHUNK)
        conn = FakeServer(root, **server)
        asyncio.run(local.learn(ADDR, conn))  # type: ignore[arg-type]
        assert not local.is_local(ADDR), why
        assert local.read(ADDR, 5, 9, 0, 4096) is None, why
        conn.close()
    local = LocalReads(CHUNK, enabled=False)
    conn = FakeServer(store.root)
    asyncio.run(local.learn(ADDR, conn))  # type: ignore[arg-type]
    assert not local.is_local(ADDR) and conn.asked == 0
    conn.close()


def test_a_server_not_heard_from_within_the_lease_is_not_read_until_it_answers_again(store: ChunkStore) -> None:
    store.create(5, 9)
    local, clock, conn = learnt(store)
    assert local.read(ADDR, 5, 9, 0, 4096) is not None
    clock.now += LEASE  # the answer to CS_LOCAL was to a request sent LEASE ago: a frozen server's
    assert local.read(ADDR, 5, 9, 0, 4096) is None
    local.heard(ADDR, clock.now - LEASE)  # an answer to a request that old proves nothing now
    assert local.read(ADDR, 5, 9, 0, 4096) is None
    local.heard(ADDR, clock.now - 0.01)
    assert local.read(ADDR, 5, 9, 0, 4096) is not None
    conn.close()


def test_a_server_that_hung_up_is_not_read_even_before_the_loop_sees_it(store: ChunkStore) -> None:
    store.create(5, 9)
    local, _, conn = learnt(store)
    assert local.read(ADDR, 5, 9, 0, 4096) is not None
    conn.hang_up()  # a killed server: the kernel closed its end; `closed` is not set yet
    assert not conn.closed
    assert local.read(ADDR, 5, 9, 0, 4096) is None
    assert not local.is_local(ADDR)  # forgotten: the next connection asks again
    conn.close()


def test_only_the_replica_at_the_maps_version_and_only_intact_blocks_are_read(store: ChunkStore) -> None:
    data = os.urandom(8192)
    store.create(5, 9)
    store.write(5, 9, 0, data)
    local, _, conn = learnt(store)
    assert local.read(ADDR, 5, 8, 0, 4096) is None  # an older map's version
    assert local.read(ADDR, 6, 9, 0, 4096) is None  # no replica of that chunk here
    store.set_version(5, 9, 10)  # moved on: a map at 9 is old, the file at 9 is gone
    assert local.read(ADDR, 5, 9, 0, 4096) is None
    got = local.read(ADDR, 5, 10, 0, 4096)
    assert got is not None and bytes(got) == data[:4096]
    assert local.read(ADDR, 5, 10, 0, LOCAL_READ_MAX + 4096) is None  # large: over the network
    path = next(store.root.glob("chunks/*/*.chunk"))
    with open(path, "r+b") as fh:  # a flipped byte in the first block's data
        fh.seek(store.data_offset + 100)
        byte = fh.read(1)
        fh.seek(store.data_offset + 100)
        fh.write(bytes([byte[0] ^ 0xFF]))
    assert local.read(ADDR, 5, 10, 0, 4096) is None  # to the server, which reports it
    assert local.read(ADDR, 5, 10, 65536, 4096) is not None  # other blocks are intact
    conn.close()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, CHUNK - 1), st.integers(1, 70_000)), min_size=1, max_size=6),
       st.lists(st.tuples(st.integers(0, CHUNK - 1), st.integers(1, LOCAL_READ_MAX)), min_size=1, max_size=6))
def test_what_a_local_read_returns_is_what_the_server_would(
    tmp_path_factory: pytest.TempPathFactory, writes: list[tuple[int, int]], reads: list[tuple[int, int]]
) -> None:
    with ChunkStore(tmp_path_factory.mktemp("s") / "data", CHUNK) as store:
        (store.root / LOCAL_MARK_FILE).write_text(MARK)
        store.create(3, 1)
        for offset, length in writes:
            store.write(3, 1, offset, os.urandom(min(length, CHUNK - offset)))
        local, _, conn = learnt(store)
        for offset, length in reads:
            length = min(length, CHUNK - offset)
            got = local.read(ADDR, 3, 1, offset, length)
            assert got is not None and bytes(got) == store.read(3, 1, offset, length)
        conn.close()


def test_a_server_of_an_earlier_version_that_hangs_up_on_the_question_is_connected_to_again(
    store: ChunkStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It does not know CS_LOCAL and closes the connection (a malformed request, for it): the mount
    connects again and uses that connection, instead of taking the server for failed."""
    made: list[FakeServer] = []

    async def connect(addr: str, *args: Any, **kwargs: Any) -> FakeServer:
        conn = FakeServer(store.root)
        if not made:
            async def hang_up(*args: Any, **kwargs: Any) -> Any:
                conn.closed = True
                raise Unavailable("connection closed by the server: unknown message type 77")
            conn.call = hang_up  # type: ignore[method-assign]
        made.append(conn)
        return conn

    monkeypatch.setattr(chunk_io, "connect", connect)
    io = chunk_io.ChunkIO(SimpleNamespace(chunk_size=CHUNK, creds=None))  # type: ignore[arg-type]
    got = asyncio.run(io.server(ADDR))
    assert got is made[1] and not got.closed and len(made) == 2
    assert not io.local.is_local(ADDR)
    for conn in made:
        conn.close()


def test_the_mount_option_turns_local_reads_off_and_a_bad_value_is_named() -> None:
    assert parse_options([]).local_reads is True
    assert parse_options(["ro,local_reads=0"]).local_reads is False
    assert parse_options(["local_reads=off", "local_reads=yes"]).local_reads is True
    with pytest.raises(ConfigError, match="mount option local_reads: bad value 'maybe'"):
        parse_options(["local_reads=maybe"])
