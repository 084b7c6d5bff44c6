"""Small writes to one chunk that wait for the one on its way, then go to the chunk's head together.

A VM's disk at queue depth 16 sends the mount many 4 KiB writes at once.
Each one alone is six messages (the mount to the head of the chunk's chain,
the head to each other replica and back, the head back to the mount), and on
a small machine a message between two processes costs more than the 4 KiB it
carries (BENCHMARKS.md, "A message between two processes").  So while a
write to a chunk is on its way, the next small writes to that chunk wait
here; when it is answered they leave as one CS_WRITE with `pieces`, which
the head writes in their order and sends on as one request to each other
replica.  A write with nothing on its way to its chunk leaves at once: one
at a time, nothing changes.

Order: only writes in flight together (none answered before the other was
issued) are ever put in one request or reordered against a write that is
not held (a large or synced one, which goes at once); every replica still
applies the chunk's writes in the order its head received them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from chunkfs.common.errors import NoSpace, NotFound, StaleVersion, Timeout, Unavailable
from chunkfs.protocol.messages import SMALL_WRITE_MAX, WRITE_PIECES_MAX, Msg
from chunkfs.protocol.rpc import Connection

#: Writes up to this size wait for the one on its way to their chunk; larger ones go at once, many
#: in flight together, as before (held behind one another, 64 KiB random writes at queue depth 16
#: lost 18 % and 128 KiB ones 29 %: a request carries so much data that merging saves little).
BATCHED_WRITE_MAX = 32 << 10
#: Failures after which the chunk's chain changes (a replica dropped, a new version): the writes
#: waiting behind the failed one would meet the same, so they fail with it and each asks for the new
#: chain.  After any other failure (a bad block at the edge of that one write, say) they still go.
_CHAIN_BROKEN = (Unavailable, Timeout, StaleVersion, NotFound, NoSpace)


@dataclass(slots=True)
class _Held:
    offset: int
    data: memoryview | bytes
    done: asyncio.Future[None]


class WriteBatches:
    def __init__(self) -> None:
        #: (chunk id, version) with a write on its way -> the small writes waiting for it, in order.
        self._held: dict[tuple[int, int], list[_Held]] = {}
        self._sending: set[asyncio.Task[None]] = set()

    async def write(self, conn: Connection, header: dict[str, Any], data: memoryview | bytes) -> None:
        """Write `data` (an unsynced CS_WRITE with `header`) through `conn`, the chunk's head."""
        if len(data) > BATCHED_WRITE_MAX:
            await conn.call(Msg.CS_WRITE, header, data)
            return
        key = (header["chunk_id"], header["version"])
        held = self._held.get(key)
        if held is not None:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            held.append(_Held(header["offset"], data, done))
            await done
            return
        self._held[key] = []
        try:
            await conn.call(Msg.CS_WRITE, header, data)
        except BaseException as exc:
            self._next(conn, header, key, exc)  # (a cancelled writer is gone; the waiting ones are not)
            raise
        self._next(conn, header, key, None)

    def _next(self, conn: Connection, header: dict[str, Any], key: tuple[int, int],
              failed: BaseException | None) -> None:
        """The write on its way to `key` was answered: send what waited for it, or fail it the same way.

        After a failure that changes the chain the waiting writes fail with
        it, and each asks for a new chain as a write alone would: the replica
        that failed would fail them too.
        """
        held = self._held.get(key)
        if not held:
            self._held.pop(key, None)
            return
        if isinstance(failed, _CHAIN_BROKEN):
            del self._held[key]
            for w in held:
                _settle(w.done, failed)
            return
        batch, size = [], 0
        for w in held:
            if batch and (len(batch) == WRITE_PIECES_MAX or size + len(w.data) > SMALL_WRITE_MAX):
                break
            batch.append(w)
            size += len(w.data)
        self._held[key] = held[len(batch):]  # still marked on its way: the batch is
        task = asyncio.get_running_loop().create_task(self._send(conn, header, key, batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, conn: Connection, header: dict[str, Any], key: tuple[int, int],
                    batch: list[_Held]) -> None:
        if len(batch) == 1:
            h, payload = {**header, "offset": batch[0].offset}, batch[0].data
        else:
            h = {**header, "offset": batch[0].offset, "pieces": [[w.offset, len(w.data)] for w in batch]}
            payload = b"".join(w.data for w in batch)
        try:
            await conn.call(Msg.CS_WRITE, h, payload)
        except BaseException as exc:
            for w in batch:
                _settle(w.done, exc)
            self._next(conn, header, key, exc)
            if not isinstance(exc, Exception):
                raise
            return
        for w in batch:
            _settle(w.done, None)
        self._next(conn, header, key, None)

    def close(self) -> None:
        for task in list(self._sending):
            task.cancel()


def _settle(done: asyncio.Future[None], exc: BaseException | None) -> None:
    if done.done():
        return  # its writer was cancelled meanwhile
    if exc is None:
        done.set_result(None)
    elif isinstance(exc, asyncio.CancelledError):
        done.cancel()
    else:
        done.set_exception(exc)
