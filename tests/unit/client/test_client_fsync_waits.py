"""An fsync returns only once every write made before it is on disk, even those an fsync still
running from another thread took on (two threads of a database, a VM's flushes in flight at once)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from chunkfs.client import chunk_io
from chunkfs.client.chunk_io import ChunkIO
from chunkfs.common.errors import NotFound, Unavailable
from chunkfs.protocol.messages import Msg


def test_a_second_fsync_waits_for_the_chunks_the_first_one_is_still_syncing() -> None:
    async def scenario() -> list[str]:
        io = ChunkIO(SimpleNamespace(chunk_size=1 << 20))  # type: ignore[arg-type]
        events: list[str] = []
        release = asyncio.Event()

        async def down_chain(ino: int, index: int, msg: Msg, fields: dict[str, Any], payload: Any = b"") -> None:
            assert msg == Msg.CS_FSYNC
            events.append(f"sync {index} starts")
            await release.wait()  # the replicas' disks are slow
            events.append(f"sync {index} done")

        io._down_chain = down_chain  # type: ignore[method-assign]
        io.dirty[7] = {0}  # a write to chunk 0 was answered
        first = asyncio.ensure_future(io.fsync(7))
        await asyncio.sleep(0)
        second = asyncio.ensure_future(io.fsync(7))  # from another thread, after the same write
        await asyncio.sleep(0.01)
        events.append("second returned" if second.done() else "second waits")
        release.set()
        await asyncio.gather(first, second)
        assert io._fsyncs == {}  # nothing kept per file once its fsyncs are over
        return events

    events = asyncio.run(scenario())
    assert events[:2] == ["sync 0 starts", "second waits"]
    assert events[-1] == "sync 0 done"


def test_a_failed_sync_leaves_its_chunks_to_the_next_fsync() -> None:
    async def scenario() -> tuple[bool, list[int]]:
        io = ChunkIO(SimpleNamespace(chunk_size=1 << 20))  # type: ignore[arg-type]
        synced: list[int] = []
        fail = True

        async def down_chain(ino: int, index: int, msg: Msg, fields: dict[str, Any], payload: Any = b"") -> None:
            if fail:
                raise ConnectionError("replica gone")
            synced.append(index)

        io._down_chain = down_chain  # type: ignore[method-assign]
        io.dirty[7] = {0, 3}
        failed = False
        try:
            await io.fsync(7)
        except ConnectionError:
            failed = True
        fail = False
        await io.fsync(7)
        return failed, sorted(synced)

    assert asyncio.run(scenario()) == (True, [0, 3])


async def test_files_written_and_never_synced_are_synced_in_the_background_past_the_bound(monkeypatch) -> None:
    """A program that writes many files and never syncs them: the mount syncs the oldest and forgets them,
    instead of keeping a set of chunks per file for good; one removed since by another client is forgotten."""
    monkeypatch.setattr(chunk_io, "DIRTY_FILES_MAX", 40)
    removed = 3

    async def getattr_(ino: int) -> dict[str, Any]:
        if ino == removed:
            raise NotFound(f"inode {ino} does not exist")
        return {"ino": ino}

    io = ChunkIO(SimpleNamespace(chunk_size=1 << 20, getattr=getattr_))  # type: ignore[arg-type]
    synced: list[tuple[int, int]] = []

    async def down_chain(ino: int, index: int, msg: Msg, fields: dict[str, Any], payload: Any = b"") -> None:
        assert msg == Msg.CS_FSYNC
        if ino == removed:
            raise NotFound(f"inode {ino} does not exist")
        await asyncio.sleep(0)
        synced.append((ino, index))

    io._down_chain = down_chain  # type: ignore[method-assign]
    for ino in range(1, 41):
        io._written(ino, 0)
        io._written(ino, 2)
    assert io._syncing is None and len(io.dirty) == 40  # at the bound: nothing to do yet
    io._written(41, 0)
    assert io._syncing is not None
    await asyncio.wait_for(io._syncing, 5)
    assert len(io.dirty) <= 30 and removed not in io.dirty
    assert list(io.dirty) == list(range(41 - len(io.dirty) + 1, 42))  # the newest are kept
    gone = set(range(1, 42)) - set(io.dirty) - {removed}
    assert set(synced) == {(ino, index) for ino in gone for index in (0, 2)}


async def test_a_failed_background_sync_keeps_the_chunks_and_waits_before_the_next(monkeypatch) -> None:
    monkeypatch.setattr(chunk_io, "DIRTY_FILES_MAX", 4)
    io = ChunkIO(SimpleNamespace(chunk_size=1 << 20))  # type: ignore[arg-type]

    async def down_chain(ino: int, index: int, msg: Msg, fields: dict[str, Any], payload: Any = b"") -> None:
        raise Unavailable("chunk server 2 is down")

    io._down_chain = down_chain  # type: ignore[method-assign]
    for ino in range(1, 6):
        io._written(ino, 0)
    assert io._syncing is not None
    await asyncio.wait_for(io._syncing, 5)
    assert sorted(io.dirty) == [1, 2, 3, 4, 5] and all(io.dirty[ino] == {0} for ino in io.dirty)
    io._written(6, 0)
    assert io._syncing is None  # not at once again: after DIRTY_SYNC_BACKOFF
