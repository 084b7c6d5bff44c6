"""A read whose chunk map is older than a replica's version asks the master before other replicas.

A replica dropped from a chunk keeps its old version and bytes until it is
deleted; a mount whose cached map still names that version must not be
served by it after the current replica refused the map (client/chunk_io.py,
`ChunkIO._read_piece`).
"""

from __future__ import annotations

import asyncio
import errno
from types import SimpleNamespace
from typing import Any

import pytest

from chunkfs.client import chunk_io
from chunkfs.client.chunk_io import ChunkIO, ChunkMap
from chunkfs.common.errors import ChecksumMismatch, NotFound, StaleVersion, Unavailable
from chunkfs.protocol.messages import Msg

OLD, NEW = 7, 8


class Replica:
    """A chunk server holding one chunk at `version`, with `data`; records the versions asked for."""

    def __init__(self, version: int | None, data: bytes) -> None:
        self.version, self.data, self.asked = version, data, []

    async def call(self, msg: Msg, header: dict[str, Any], *args: Any, **kw: Any) -> tuple[dict[str, Any], bytes]:
        assert msg == Msg.CS_READ
        self.asked.append(header["version"])
        if self.version is None:
            raise NotFound("no replica on this server")
        if header["version"] != self.version:
            raise StaleVersion("stale", current=self.version)
        return {}, self.data[header["offset"]:header["offset"] + header["length"]]


class Master:
    def __init__(self, version: int, replicas: list[list[Any]]) -> None:
        self.version, self.replicas, self.calls = version, replicas, 0

    async def call(self, msg: Msg, header: dict[str, Any], *args: Any, **kw: Any) -> dict[str, Any]:
        assert msg == Msg.CHUNK_READ
        self.calls += 1
        return {"chunk_id": 5, "version": self.version, "replicas": self.replicas, "chunk_size": 1 << 20}


def mount(master: Master, servers: dict[str, Replica], cached: ChunkMap) -> ChunkIO:
    io = ChunkIO(SimpleNamespace(mds=master, chunk_size=1 << 20))  # type: ignore[arg-type]
    io._read_maps[(1, 0)] = cached

    async def server(addr: str) -> Replica:
        return servers[addr]

    io.server = server  # type: ignore[method-assign]
    return io


def order_first(io: ChunkIO, first: str, m: ChunkMap) -> None:
    """Make `first` the replica this mount reads `m`'s chunk from first."""
    for salt in range(10):
        io._read_salt = salt
        if io.read_order(m)[0][1] == first:
            return
    raise AssertionError("no salt puts it first")


async def test_a_newer_version_on_the_first_replica_sends_the_reader_to_the_master() -> None:
    current = Replica(NEW, b"n" * 100)
    dropped = Replica(OLD, b"o" * 100)  # left behind with the old version and bytes
    servers = {"cs1": current, "cs2": dropped}
    cached = ChunkMap(5, OLD, ((1, "cs1"), (2, "cs2")))
    master = Master(NEW, [[1, "cs1"]])
    io = mount(master, servers, cached)
    order_first(io, "cs1", cached)
    assert await io.read(1, 10, 20) == b"n" * 20
    assert dropped.asked == [] and master.calls == 1


async def test_a_replica_missing_the_chunk_sends_the_reader_to_the_master_then_to_the_others() -> None:
    lost = Replica(None, b"")  # this server lost its copy; the map is still the current one
    other = Replica(OLD, b"d" * 100)
    servers = {"cs1": lost, "cs2": other}
    cached = ChunkMap(5, OLD, ((1, "cs1"), (2, "cs2")))
    master = Master(OLD, [[1, "cs1"], [2, "cs2"]])
    io = mount(master, servers, cached)
    order_first(io, "cs1", cached)
    assert await io.read(1, 0, 10) == b"d" * 10
    assert master.calls == 1 and other.asked == [OLD]


async def test_an_older_replica_than_the_map_is_skipped_without_asking_the_master() -> None:
    behind = Replica(OLD - 1, b"x" * 100)
    current = Replica(OLD, b"c" * 100)
    servers = {"cs1": behind, "cs2": current}
    cached = ChunkMap(5, OLD, ((1, "cs1"), (2, "cs2")))
    master = Master(OLD, [[1, "cs1"], [2, "cs2"]])
    io = mount(master, servers, cached)
    order_first(io, "cs1", cached)
    assert await io.read(1, 0, 10) == b"c" * 10
    assert master.calls == 0


async def test_a_replica_the_master_still_names_but_lacks_the_chunk_costs_one_map_request() -> None:
    lost = Replica(None, b"")
    other = Replica(OLD, b"d" * 100)
    cached = ChunkMap(5, OLD, ((1, "cs1"), (2, "cs2")))
    master = Master(OLD, [[1, "cs1"], [2, "cs2"]])
    io = mount(master, {"cs1": lost, "cs2": other}, cached)
    order_first(io, "cs1", cached)
    for _ in range(5):
        assert await io.read(1, 0, 10) == b"d" * 10
    assert master.calls == 1


async def test_maps_are_asked_for_again_once_the_files_chunks_changed_since_the_last_open() -> None:
    current = Replica(NEW, b"n" * 100)
    dropped = Replica(OLD, b"o" * 100)  # the first replica this mount reads from, left behind
    cached = ChunkMap(5, OLD, ((2, "cs2"), (1, "cs1")))
    master = Master(NEW, [[1, "cs1"]])
    io = mount(master, {"cs1": current, "cs2": dropped}, cached)
    order_first(io, "cs2", cached)
    io.opened(1, OLD)  # the open before which the map was cached: this mount knew no version yet
    assert (1, 0) not in io._read_maps
    io._read_maps[(1, 0)] = cached  # read after that open
    io.opened(1, OLD)  # opened again, nothing changed: the map is kept
    assert (1, 0) in io._read_maps
    io.opened(1, NEW)  # a replica was dropped since: the highest chunk version moved
    assert await io.read(1, 0, 10) == b"n" * 10
    assert dropped.asked == [] and master.calls == 1


def test_the_map_caches_are_bounded_and_keep_the_newest(monkeypatch) -> None:
    """A soak's 42,000 small files created and deleted grew a mount by 60 MiB: every chunk map it ever
    asked for stayed (nothing forgot a deleted file's).  Now each cache keeps MAPS_MAX, the oldest going."""
    monkeypatch.setattr(chunk_io, "MAPS_MAX", 4)
    master = Master(NEW, [[1, "a"]])
    io = ChunkIO(SimpleNamespace(mds=master, chunk_size=1 << 20))  # type: ignore[arg-type]
    for ino in range(1, 11):
        asyncio.run(io._read_map(ino, 0, refresh=False))
        io._kept_write_map((ino, 0), {"chunk_id": ino, "version": 1, "replicas": [[1, "a"]], "chunk_size": 1 << 20})
    assert list(io._read_maps) == [(7, 0), (8, 0), (9, 0), (10, 0)]
    assert list(io._write_maps) == [(7, 0), (8, 0), (9, 0), (10, 0)]
    asyncio.run(io._read_map(1, 0, refresh=False))  # asked for again: the master answers
    assert master.calls == 11 and (1, 0) in io._read_maps and len(io._read_maps) == 4


async def test_a_chunk_no_replica_holds_now_fails_a_read_with_an_io_error_not_enoent() -> None:
    """A power-cut probe: files read ENOENT for seconds after a restart, their chunks held by no listed
    server until the master made them again.  The file exists: an I/O error, as for servers down."""
    cached = ChunkMap(5, OLD, ((1, "cs1"), (2, "cs2")))
    io = mount(Master(OLD, [[1, "cs1"], [2, "cs2"]]), {"cs1": Replica(None, b""), "cs2": Replica(None, b"")}, cached)
    with pytest.raises(Unavailable, match="no replica of it can be read now") as failed:
        await io.read(1, 0, 10)
    assert failed.value.errno == errno.EIO
    io = mount(Master(OLD, [[1, "cs1"]]), {"cs1": Replica(OLD - 1, b"x" * 100)}, ChunkMap(5, OLD, ((1, "cs1"),)))
    with pytest.raises(Unavailable):  # a replica left behind, the only one listed: not ESTALE either
        await io.read(1, 0, 10)


async def test_a_replica_behind_the_map_at_the_first_try_is_no_warning_but_one_still_behind_is(caplog) -> None:
    """The master commits a chunk's new version before its servers move to it: a read in between finds every
    replica a version behind for a moment (a probe: 12 WARNING lines in SQLite's WAL runs, all read fine)."""
    moving = Replica(OLD, b"m" * 100)

    class Moved(Master):
        async def call(self, msg: Msg, header: dict[str, Any], *args: Any, **kw: Any) -> dict[str, Any]:
            moving.version = NEW  # the servers have moved by the time the reader asks again
            return await super().call(msg, header, *args, **kw)

    io = mount(Moved(NEW, [[1, "cs1"]]), {"cs1": moving}, ChunkMap(5, NEW, ((1, "cs1"),)))
    with caplog.at_level("DEBUG", logger=chunk_io.__name__):
        assert await io.read(1, 0, 10) == b"m" * 10
    assert [r.levelname for r in caplog.records if r.getMessage().startswith("read of chunk")] == ["DEBUG"]
    caplog.clear()
    io = mount(Master(NEW, [[1, "cs1"]]), {"cs1": Replica(OLD, b"x" * 100)}, ChunkMap(5, NEW, ((1, "cs1"),)))
    with pytest.raises(Unavailable):  # left behind for good: said
        await io.read(1, 0, 10)
    said = [r for r in caplog.records if r.getMessage().startswith("read of chunk")]
    assert "WARNING" in [r.levelname for r in said]
    assert all(r.getMessage().endswith("trying again") for r in said)  # (its one replica: no other to try)


async def test_a_bad_block_on_the_only_replica_the_master_names_is_waited_for_until_repaired(monkeypatch) -> None:
    """A chunk whose replicas are still to be compared is read from one replica only (mds/fanned_mender.py):
    a bad block there, reported, is mended from the others; the read waits for that, not 0.25 s in all."""
    bad = Replica(OLD, b"r" * 100)
    real_call, real_sleep, slept = bad.call, asyncio.sleep, [0.0]

    async def call(msg: Msg, header: dict[str, Any], *args: Any, **kw: Any) -> tuple[dict[str, Any], bytes]:
        if slept[0] < 0.5:
            raise ChecksumMismatch("block 0 does not match its checksum", block=0)
        return await real_call(msg, header, *args, **kw)

    async def sleep(seconds: float) -> None:
        slept[0] += seconds
        await real_sleep(0)

    class Reported(Master):
        async def call(self, msg: Msg, header: dict[str, Any], *args: Any, **kw: Any) -> dict[str, Any]:
            if msg == Msg.REPORT_BAD_REPLICA:
                return {}
            return await super().call(msg, header, *args, **kw)

    bad.call = call  # type: ignore[method-assign]
    monkeypatch.setattr(asyncio, "sleep", sleep)
    io = mount(Reported(OLD, [[1, "cs1"]]), {"cs1": bad}, ChunkMap(5, OLD, ((1, "cs1"),)))
    assert await io.read(1, 0, 10) == b"r" * 10
    # Never mended: the read fails, without calling the bytes lost (the other replicas were not tried).
    slept[0] = -1e9
    with pytest.raises(ChecksumMismatch) as failed:
        await io.read(1, 0, 10)
    assert "lost on the cluster" not in str(failed.value) and "try again" in str(failed.value)


async def test_maps_naming_a_server_connected_to_again_are_asked_for_again(monkeypatch) -> None:
    """A chunk server that restarted (a power cut, say) may hold chunks the master now reads from one replica
    only until it has compared their replicas (mds/fanned_mender.py): maps kept from before would read others."""

    async def connect(addr: str, *args: Any, **kw: Any) -> SimpleNamespace:
        return SimpleNamespace(closed=False)

    async def learn(addr: str, conn: Any) -> None:
        return None

    monkeypatch.setattr(chunk_io, "connect", connect)
    io = mount(Master(OLD, []), {}, ChunkMap(5, OLD, ((1, "cs1"), (2, "cs2"))))
    io.client.creds = None
    io._read_maps[(2, 0)] = ChunkMap(6, OLD, ((2, "cs2"), (3, "cs3")))
    monkeypatch.setattr(io.local, "learn", learn)
    await io._connect("cs1")  # the first connection: nothing known about it is older
    assert list(io._read_maps) == [(1, 0), (2, 0)]
    await io._connect("cs1")
    assert list(io._read_maps) == [(2, 0)]


async def test_a_read_whose_map_was_dropped_while_it_connected_asks_the_master() -> None:
    before = Replica(OLD, b"o" * 100)  # the bytes another replica holds, the comparison to come not copying them
    source = Replica(OLD, b"t" * 100)
    cached = ChunkMap(5, OLD, ((1, "cs1"), (2, "cs2")))
    master = Master(OLD, [[2, "cs2"]])  # the chunk read from one replica only, until compared
    io = mount(master, {"cs1": before, "cs2": source}, cached)
    order_first(io, "cs1", cached)
    servers = {"cs1": before, "cs2": source}

    async def server(addr: str) -> Replica:
        if addr == "cs1" and not before.asked:
            io._reconnected("cs1")
        return servers[addr]

    io.server = server  # type: ignore[method-assign]
    assert await io.read(1, 0, 10) == b"t" * 10
    assert before.asked == [] and master.calls == 1


async def test_a_map_dropped_while_an_earlier_replica_of_the_same_pass_was_tried_asks_the_master() -> None:
    """The read met a reset on its first replica (restarted); meanwhile another read connected to the second
    one again and dropped the map: the pass does not go on to the second through it."""
    kept = ChunkMap(5, OLD, ((2, "cs2"), (1, "cs1"), (3, "cs3")))
    cs1, cs3 = Replica(OLD, b"o" * 100), Replica(OLD, b"t" * 100)
    master = Master(OLD, [[3, "cs3"]])  # pinned: CS#3
    io = mount(master, {}, kept)
    for salt in range(30):
        io._read_salt = salt
        if [addr for _, addr in io.read_order(kept)] == ["cs2", "cs1", "cs3"]:
            break
    else:
        raise AssertionError("no salt gives that order")

    class Reset:
        async def call(self, *args: Any, **kw: Any) -> Any:
            io._reconnected("cs1")
            raise Unavailable("connection reset by peer")

    servers: dict[str, Any] = {"cs1": cs1, "cs2": Reset(), "cs3": cs3}

    async def server(addr: str) -> Any:
        return servers[addr]

    io.server = server  # type: ignore[method-assign]
    assert await io.read(1, 0, 10) == b"t" * 10
    assert cs1.asked == [] and master.calls == 1


async def test_a_write_map_that_names_the_replicas_to_read_from_is_read_through_those_alone() -> None:
    """A chunk still to be compared (or on a server back from a power cut that has not said what it wrote
    last): the writer's map names every replica, its `read` the one to read from (FEATURE_WRITE_MAP_READS)."""
    behind, kept = Replica(OLD, b"o" * 100), Replica(OLD, b"t" * 100)
    io = mount(Master(OLD, [[2, "cs2"]]), {"cs1": behind, "cs2": kept}, ChunkMap(5, OLD, ((2, "cs2"),)))
    m = io._kept_write_map((1, 0), {"chunk_id": 5, "version": OLD, "replicas": [[1, "cs1"], [2, "cs2"]],
                                    "chunk_size": 1 << 20, "read": [[2, "cs2"]]})
    assert m.replicas == ((1, "cs1"), (2, "cs2"))  # written to both
    order_first(io, "cs1", m)
    assert await io.read(1, 0, 10) == b"t" * 10
    assert behind.asked == []
