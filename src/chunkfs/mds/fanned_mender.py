"""The replicas of chunks a departed writer sent its writes to at once, made the same again.

A chunk's one writer sends its small writes to every replica itself
(fan_grants.py), one send after the other.  A writer that dies between two
of them (`kill -9` of a mount, its machine lost) leaves a write on some
replicas and not on the others.  The write was never acknowledged, so either
bytes are right; but the replicas would differ for good, and two readers
could read different bytes (a probe: 3 of 3, with a replica slow to connect
to).  Down the chain this cannot happen to one fault: the head is a chunk
server, which sends a write on whether or not its writer lives.

So when a writer's connection to the master closes without its session
ending (a mount that unmounts ends it, after its last write), every chunk it
was let fan out to is compared and mended, one after the other: under the
chunk's lock, the chunk moves to a new version (no write of any writer lands
meanwhile: each waits on that lock for the new map), each replica's table of
block checksums is read (``CS_CHECKSUMS``), and a block that differs from the
first replica's is read from it and written over the other's, which is then
synced.  The master does this as a client of its chunk servers, on
connections of its own.

Only while every replica's server is connected and holds its replica: a new
version moves only the replicas the master can tell to move, and the others
would be left behind at the old one (a master resumed after a stop, whose
servers were reconnecting, once left a chunk with no replica at its version).
A chunk whose servers are not all there is tried again later, for a while.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from chunkfs.common.errors import ChunkFSError, Unavailable
from chunkfs.protocol.messages import Msg, replica_list
from chunkfs.protocol.rpc import SILENCE_LIMIT, Connection, connect

if TYPE_CHECKING:
    from chunkfs.mds.server import MetadataServer

logger = logging.getLogger(__name__)

#: Bound on each request to a chunk server while mending (seconds).
MEND_TIMEOUT = 30.0
#: A chunk whose replicas' servers are not all connected (or failed a request) is tried again this often
#: (seconds), this many times.
MEND_RETRY = 5.0
MEND_TRIES = 60


class FannedMender:
    def __init__(self, mds: MetadataServer) -> None:
        self.mds = mds
        self._conns: dict[str, Connection] = {}
        #: One departed writer's chunks at a time (and one connection per chunk server).
        self._one_at_a_time = asyncio.Lock()

    async def writer_gone(self, chunk_ids: set[int]) -> None:
        """Mend the chunks a writer that left without a word was let fan out to (in the background)."""
        async with self._one_at_a_time:
            await self._mend(chunk_ids)

    async def _mend(self, chunk_ids: set[int]) -> None:
        mended = copied = 0
        waiting = set(chunk_ids)
        for _ in range(MEND_TRIES):
            for chunk_id in sorted(waiting):
                if not self.mds.raft.is_leader():
                    return  # the next master cannot know them: see fan_grants.py
                try:
                    blocks = await self.make_same(chunk_id)
                except ChunkFSError as exc:
                    # A server not there (yet), or one that failed a request: tried again below.
                    logger.info("chunk %#x: its replicas not compared yet after its writer left: %s", chunk_id, exc)
                    continue
                waiting.discard(chunk_id)
                mended += blocks > 0
                copied += blocks
            if not waiting:
                break
            await asyncio.sleep(MEND_RETRY)
        if waiting:
            logger.warning("a writer left without ending its session: the replicas of %d chunk(s) it wrote to every "
                           "replica at once could not be compared in %g s (their servers not all connected, or "
                           "failing): %s", len(waiting), MEND_RETRY * MEND_TRIES,
                           ",".join(f"{c:#x}" for c in sorted(waiting)[:20]))
        if copied:
            logger.warning("a writer left without ending its session: %d of %d chunk(s) it wrote to every replica "
                           "at once had replicas that differed; %d block(s) copied to make them the same",
                           mended, len(chunk_ids), copied)
        elif not waiting:
            logger.info("a writer left without ending its session: the replicas of the %d chunk(s) it wrote to "
                        "every replica at once are the same", len(chunk_ids))

    async def make_same(self, chunk_id: int) -> int:
        """Make the replicas of `chunk_id` hold the same bytes (the first replica's); how many blocks were copied."""
        mds = self.mds
        chunk = mds.store.chunk(chunk_id)
        if chunk is None:
            return 0  # removed meanwhile
        async with mds.chunks.lock(chunk.ino, chunk.index):
            chunk = mds.store.chunk(chunk_id)
            if chunk is None:
                return 0
            missing = [cs for cs in chunk.replicas if not mds.chunks.holds(cs, chunk_id)]
            if missing:
                raise Unavailable(f"chunk {chunk_id:#x}: CS {','.join(map(str, missing))} not connected")
            # A new version first: every writer's next write waits on this lock for the new map.
            chunk = await mds.move_on(chunk)
            replicas = replica_list(mds._map(chunk.ino, chunk)["replicas"], "replicas")
            if len(replicas) < 2:
                return 0
            at = {"chunk_id": chunk_id, "version": chunk.version}
            tables = []
            for _, addr in replicas:
                reply, _ = await (await self._conn(addr)).call(Msg.CS_CHECKSUMS, at, timeout=MEND_TIMEOUT)
                tables.append([int(c) for c in reply["crcs"]])
            source = await self._conn(replicas[0][1])
            block = mds.node.cluster.chunk_size // max(1, len(tables[0]))
            copied = 0
            for (cs_id, addr), table in zip(replicas[1:], tables[1:], strict=True):
                differ = [i for i, (a, b) in enumerate(zip(tables[0], table, strict=True)) if a != b]
                if not differ:
                    continue
                target = await self._conn(addr)
                for i in differ:
                    _, data = await source.call(Msg.CS_READ, {**at, "offset": i * block, "length": block},
                                                timeout=MEND_TIMEOUT)
                    await target.call(Msg.CS_WRITE, {**at, "offset": i * block, "chain": [], "sync": False}, data,
                                      timeout=MEND_TIMEOUT)
                await target.call(Msg.CS_FSYNC, {**at, "chain": []}, timeout=MEND_TIMEOUT)
                logger.warning("chunk %#x: %d block(s) of CS#%d's replica differed from CS#%d's after its writer "
                               "left (a write it had sent to some replicas only); copied over", chunk_id,
                               len(differ), cs_id, replicas[0][0])
                copied += len(differ)
            return copied

    async def _conn(self, addr: str) -> Connection:
        conn = self._conns.get(addr)
        if conn is None or conn.closed:
            conn = self._conns[addr] = await connect(addr, self.mds.creds, timeout=3.0, silence_limit=SILENCE_LIMIT)
        return conn

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()
