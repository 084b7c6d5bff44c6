"""A two-phase copy between two chunk stores, the source written between and during the phases.

The replicator is driven as the master drives it (mds/replication.py): a bulk copy with `track`
while the source is written, then a catch-up with `since` once writes have stopped (the chunk
frozen).  The copy must end equal to the source byte for byte, whatever was written, zeroed or
truncated meanwhile, and fall back to a whole copy when the source cannot say what changed.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chunkfs.common.errors import ChunkFSError, NotFound
from chunkfs.cs.chunk_store import ChunkStore
from chunkfs.cs.replicator import Replicator
from chunkfs.protocol.messages import Msg

MiB = 1 << 20
BS = 64 << 10
CID = 9
RATE = 1 << 30


class Source:
    """The source server's side of the requests a copy makes; `during_read` runs before each read is served."""

    def __init__(self, store: ChunkStore) -> None:
        self.store = store
        self.during_read: Callable[[], None] = lambda: None

    async def call(self, msg: Msg, h: dict[str, Any], payload: bytes = b"", timeout: float = 0) -> Any:
        if msg == Msg.CS_CHECKSUMS:
            return {"crcs": self.store.block_checksums(h["chunk_id"], h["version"])}, b""
        if msg == Msg.CS_READ:
            self.during_read()
            return {}, self.store.read(h["chunk_id"], h["version"], h["offset"], h["length"])
        if msg == Msg.CS_TRACK_WRITES:
            return {"token": self.store.track_writes(h["chunk_id"], h["version"])}, b""
        if msg == Msg.CS_WRITTEN_SINCE:
            return {"blocks": self.store.written_since(h["chunk_id"], h["token"])}, b""
        raise AssertionError(msg)


class Target:
    def __init__(self, store: ChunkStore, source: Source) -> None:
        self.store = store
        self._source = source

    async def _peer(self, addr: str) -> Source:
        return self._source


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[ChunkStore, ChunkStore]]:
    src, dst = ChunkStore(tmp_path / "src", MiB, BS), ChunkStore(tmp_path / "dst", MiB, BS)
    yield src, dst
    src.close()
    dst.close()


def replicate(target: Target, version: int, **more: Any) -> dict[str, Any]:
    header = {"chunk_id": CID, "version": version, "source": "s", "source_id": 1, "rate": RATE, **more}
    return asyncio.run(Replicator(target).replicate(header))  # type: ignore[arg-type]


def test_blocks_written_during_and_after_the_bulk_copy_reach_the_copy(stores) -> None:
    src, dst = stores
    src.create(CID, 1)
    src.write(CID, 1, 0, os.urandom(MiB // 2))  # the second half never written: skipped as zeros
    source = Source(src)
    reads = iter(range(100))

    def write_while_copying() -> None:  # behind the bulk copy's reads: blocks it already has change
        if next(reads) == 0:
            return
        src.write(CID, 1, 0, os.urandom(4096))  # block 0, read already
        src.write(CID, 1, 15 * BS, os.urandom(100))  # a block that was zeros

    source.during_read = write_while_copying
    target = Target(dst, source)
    bulk = replicate(target, 1, track=True)
    assert bulk["bytes"] > 0 and "token" in bulk
    source.during_read = lambda: None
    src.write(CID, 1, 3 * BS + 5, os.urandom(70_000))  # after the bulk copy, before the freeze
    src.truncate(CID, 1, 8 * BS + 10)  # zeros from there on, over blocks the copy holds
    src.set_version(CID, 1, 2)  # the freeze
    caught = replicate(target, 2, since=[1, bulk["token"]])
    assert caught["bytes"] < bulk["bytes"]  # only what changed
    assert dst.read(CID, 2, 0, MiB) == src.read(CID, 2, 0, MiB)
    assert dst.block_checksums(CID, 2) == src.block_checksums(CID, 2)


def bulk_copied(stores: tuple[ChunkStore, ChunkStore]) -> tuple[ChunkStore, ChunkStore, Target, int]:
    """A source with a full chunk at version 1, bulk-copied to the target: (source, target store, target, token)."""
    src, dst = stores
    src.create(CID, 1)
    src.write(CID, 1, 0, os.urandom(MiB))
    target = Target(dst, Source(src))
    return src, dst, target, replicate(target, 1, track=True)["token"]


def test_a_source_that_cannot_say_what_changed_means_a_whole_copy(stores) -> None:
    src, dst, target, token = bulk_copied(stores)
    src.write(CID, 1, 0, os.urandom(4096))
    src.written.forget(CID)  # as after a restart of the source
    with pytest.raises(NotFound):
        src.written_since(CID, token)
    src.set_version(CID, 1, 2)
    assert replicate(target, 2, since=[1, token])["bytes"] == MiB  # whole, not caught up
    assert dst.read(CID, 2, 0, MiB) == src.read(CID, 2, 0, MiB)


def test_a_catch_up_that_does_not_match_the_source_leaves_no_replica(stores) -> None:
    src, dst, target, token = bulk_copied(stores)
    dst.write(CID, 1, 5 * BS, os.urandom(10))  # the copy differs where the source saw no write
    src.set_version(CID, 1, 2)
    with pytest.raises(ChunkFSError, match="differs from the source"):
        replicate(target, 2, since=[1, token])
    assert dst.version_of(CID) is None


def test_a_copy_writes_no_zeros_its_source_holds_as_holes(stores) -> None:
    """A small file's chunk: one block written. Its copy takes about that on disk, not the whole chunk."""
    src, dst = stores
    src.create(CID, 1)
    src.write(CID, 1, 0, b"x" * 341)
    src.write(CID, 1, 9 * BS, b"y" * 10)  # (a block in the middle of a piece the copy reads whole)
    replicate(Target(dst, Source(src)), 1)
    assert dst.read(CID, 1, 0, MiB) == src.read(CID, 1, 0, MiB)
    assert dst.block_checksums(CID, 1) == src.block_checksums(CID, 1)
    (copy,) = (dst.root).rglob(f"{CID:016x}_*.chunk")
    (original,) = (src.root).rglob(f"{CID:016x}_*.chunk")
    assert copy.stat().st_blocks <= original.stat().st_blocks + 8  # (within a 4 KiB page of it)
