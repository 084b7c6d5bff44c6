"""Small writes that wait for the one on its way to the same chunk server, then go to it together.

A VM's disk at queue depth 16 sends the mount many 4 KiB writes at once.
Each one alone is six messages (the mount to the head of the chunk's chain,
the head to each other replica and back, the head back to the mount), and on
a small machine a message between two processes costs more than the 4 KiB it
carries (BENCHMARKS.md, "A message between two processes").  So while a
write is on its way to a chunk server that heads chains, the next small
writes to chunks it heads wait here; when it is answered they leave as one
request: a CS_WRITE with `pieces` when they are all one chunk's, else a
CS_WRITE_CHUNKS with one part per chunk (a disk image is many chunks, and a
queue of random writes spreads over them: put together per chunk, 16 chunks
under the queue got half the rate of one).  The head writes them in their
order and sends on one request to each other replica.  A write with nothing
on its way to its head leaves at once: one at a time, nothing changes.

Order: only writes in flight together (none answered before the other was
issued) are ever put in one request or reordered against a write that is
not held (a large or synced one, which goes at once); every replica still
applies the chunk's writes in the order its head received them.

A small write with nothing else on its way to its head, to a chunk this
mount alone writes (the master's `fan`, mds/fan_grants.py), goes to every
replica at once instead (`alone`): one hop instead of two.  Nothing else
goes to that head until every replica has answered it, so no replica can
take a later write of this mount before it (the head would forward a later
one while the write sent straight to another replica is still on its way).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from chunkfs.common.errors import ChecksumMismatch, NoSpace, NotFound, StaleVersion, Timeout, Unavailable
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
#: Failures of one chunk's replica (the error names the chunk), not of a server: only that chunk's
#: writes fail with one; the other chunks' writes in its request, and behind it, go (again).
_ONE_CHUNK = (StaleVersion, NotFound, ChecksumMismatch)
#: Times a write goes again after a request failed for another chunk's write in it (bounded: then
#: it fails too, and its writer tries again on its own: chunk_io's `_down_chain`).
AGAIN_MAX = 8


@dataclass(slots=True, eq=False)  # a write is itself (compared and hashed by identity)
class _Held:
    header: dict[str, Any]  # its CS_WRITE's: chunk, version, chain, offset
    data: memoryview | bytes
    done: asyncio.Future[None]
    again: int = 0


class WriteBatches:
    def __init__(self) -> None:
        # Each table is keyed by the head's address: a connection made again to the same head while a
        # write is on its way (the first one lost) must not let another write pass it.
        #: A head with a write on its way -> the small writes waiting for it, in order.
        self._held: dict[str, list[_Held]] = {}
        #: A head -> its writes that went at once (large or synced ones) still on their way.
        self._at_once: dict[str, int] = {}
        #: A head -> the write on its way to every replica of its chunk, done when all answered.
        self._fanned: dict[str, asyncio.Future[None]] = {}
        #: A write to every replica was cut short (the mount stopping): some replicas may lack it, and the
        #: mount must not tell the master that its writes all ended (the master then compares them).
        self.cut_short = False
        self._sending: set[asyncio.Task[None]] = set()

    async def write(
        self, conn: Connection, header: dict[str, Any], data: memoryview | bytes,
        alone: Callable[[], Awaitable[Any]] | None = None,
    ) -> None:
        """Write `data` (a CS_WRITE with `header`) through `conn`, the chunk's head.

        `alone`: how to send it to every replica at once instead, when nothing else is on its way
        to this head (a chunk this mount alone writes).
        """
        head = conn.peer_name
        if len(data) > BATCHED_WRITE_MAX or header["sync"]:
            await self._after_fanned(head)
            if alone is not None and head not in self._held and not self._at_once.get(head):
                await self._fan(head, alone)
                return
            self._at_once[head] = self._at_once.get(head, 0) + 1
            try:
                await conn.call(Msg.CS_WRITE, header, data)
            finally:
                if self._at_once[head] == 1:
                    del self._at_once[head]
                else:
                    self._at_once[head] -= 1
            return
        held = self._held.get(head)
        if held is not None:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            held.append(_Held(header, data, done))
            await done
            return
        self._held[head] = []
        try:
            await self._after_fanned(head)
            if alone is not None and not self._at_once.get(head):
                await self._fan(head, alone)
            else:
                await conn.call(Msg.CS_WRITE, header, data)
        except BaseException as exc:
            self._next(conn, exc)  # (a cancelled writer is gone; the waiting ones are not)
            raise
        self._next(conn, None)

    async def _after_fanned(self, head: str) -> None:
        """Wait until no write sent to every replica of a chunk `head` heads is on its way."""
        while (fanned := self._fanned.get(head)) is not None:
            await asyncio.shield(fanned)  # (a cancelled waiter leaves it to the others)

    async def _fan(self, head: str, alone: Callable[[], Awaitable[Any]]) -> None:
        done = self._fanned[head] = asyncio.get_running_loop().create_future()
        try:
            await alone()
        except asyncio.CancelledError:
            self.cut_short = True  # its requests may have reached some replicas only
            raise
        finally:
            del self._fanned[head]
            done.set_result(None)

    def _next(self, conn: Connection, failed: BaseException | None) -> None:
        """The write on its way through `conn` was answered: send what waited for it, or fail it the same way.

        After a failure that changes a chain the waiting writes fail with
        it, and each asks for a new chain as a write alone would: the replica
        that failed would fail them too (most chunks with this head have
        their replicas on the same few servers).
        """
        head = conn.peer_name
        held = self._held.get(head)
        if held and isinstance(failed, _CHAIN_BROKEN):
            about = chunk_of(failed)
            for w in held:
                if about is None or w.header["chunk_id"] == about:
                    _settle(w.done, failed)
            held = self._held[head] = [w for w in held if not w.done.done()]
        if not held:
            self._held.pop(head, None)
            return
        batch: list[_Held] = []
        size = 0
        versions: dict[int, int] = {}
        for w in held:
            chunk_id, version = w.header["chunk_id"], w.header["version"]
            if batch and (len(batch) == WRITE_PIECES_MAX or size + len(w.data) > SMALL_WRITE_MAX
                          or versions.get(chunk_id, version) != version):
                break  # (a chunk at two versions: its writes at the newer one go next time)
            versions[chunk_id] = version
            batch.append(w)
            size += len(w.data)
        self._held[head] = held[len(batch):]  # still marked on its way: the batch is
        task = asyncio.get_running_loop().create_task(self._send(conn, batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, conn: Connection, batch: list[_Held]) -> None:
        try:
            await conn.call(*_request(batch))
        except BaseException as exc:
            # A failure of one chunk's replica fails that chunk's writes; the others go again first.
            about, held = chunk_of(exc), self._held.get(conn.peer_name)  # (none held: the client closed)
            again = [w for w in batch if about is not None and w.header["chunk_id"] != about
                     and w.again < AGAIN_MAX and not w.done.done()] if held is not None else []
            for w in again:
                w.again += 1
            for w in batch:
                if w not in again:
                    _settle(w.done, exc)
            if held is not None:
                held[:0] = again
            self._next(conn, exc)
            if not isinstance(exc, Exception):
                raise
            return
        for w in batch:
            _settle(w.done, None)
        self._next(conn, None)

    def close(self) -> None:
        """The client closes: nothing more is sent, and no writer waits on a request that will not go."""
        for task in list(self._sending):
            task.cancel()
        for held in self._held.values():
            for w in held:
                w.done.cancel()
        self._held.clear()


def chunk_of(exc: BaseException) -> int | None:
    """The chunk a failure is about when it is one replica's of that chunk alone, else None."""
    about = exc.context.get("chunk_id") if isinstance(exc, _ONE_CHUNK) else None
    return about if isinstance(about, int) else None


def _request(batch: list[_Held]) -> tuple[Msg, dict[str, Any], memoryview | bytes]:
    """The one request that carries `batch`: a CS_WRITE when it is one chunk's, else a CS_WRITE_CHUNKS;
    each chunk's writes in their order."""
    if len(batch) == 1:
        return Msg.CS_WRITE, batch[0].header, batch[0].data
    chunks: dict[int, list[_Held]] = {}
    for w in batch:
        chunks.setdefault(w.header["chunk_id"], []).append(w)
    payload = b"".join(w.data for writes in chunks.values() for w in writes)
    if len(chunks) == 1:
        return Msg.CS_WRITE, {**batch[0].header, "pieces": [[w.header["offset"], len(w.data)] for w in batch]}, payload
    parts = [
        [chunk_id, writes[0].header["version"], writes[0].header["chain"],
         [[w.header["offset"], len(w.data)] for w in writes]]
        for chunk_id, writes in chunks.items()
    ]
    return Msg.CS_WRITE_CHUNKS, {"parts": parts}, payload


def _settle(done: asyncio.Future[None], exc: BaseException | None) -> None:
    if done.done():
        return  # its writer was cancelled meanwhile
    if exc is None:
        done.set_result(None)
    elif isinstance(exc, asyncio.CancelledError):
        done.cancel()
    else:
        done.set_exception(exc)
