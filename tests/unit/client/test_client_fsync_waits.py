"""An fsync returns only once every write made before it is on disk, even those an fsync still
running from another thread took on (two threads of a database, a VM's flushes in flight at once)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from chunkfs.client.chunk_io import ChunkIO
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
