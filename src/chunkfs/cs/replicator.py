"""Server-to-server copies: this chunk server fetches a replica from another one.

The master sends ``CS_REPLICATE`` (chunk, version, source) to the *target*.
The target asks the source for its CRC table, creates an empty replica at
that version, reads the blocks that are not all-zero from the source with
``CS_READ`` (the source verifies its checksums on the way out) in pieces of
at most `PIECE` bytes, writes them, fsyncs, and compares its own CRC table
with the source's.  Any mismatch deletes the new replica: a half-made copy
is never left to be served.

``CS_REPAIR_BLOCKS`` mends a replica in place instead: each bad block is read
from the other replicas in turn (the source verifies it on the way out) and
written over the bad one, which is kept in quarantine/.  A block bad on every
replica is *lost*: it stays as it is (reads of it fail) and the rest of the
chunk stays readable.

The bandwidth a server spends fetching is bounded by one token bucket for all
the copies it runs (the rate comes with each request, from the cluster
setting ``replication-rate``); the master bounds how many copies each server
takes part in.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from chunkfs.common.errors import ChecksumMismatch, ChunkFSError, InvalidArgument
from chunkfs.protocol.frame import MAX_IO_SIZE
from chunkfs.protocol.messages import MAX_BLOCKS, Msg, int_list, replica_list

if TYPE_CHECKING:
    from chunkfs.cs.server import ChunkServer

logger = logging.getLogger(__name__)

#: Bytes fetched per CS_READ.
PIECE = min(MAX_IO_SIZE, 1 << 20)
#: Each piece must arrive within this long (plus the time the rate allows).
PIECE_TIMEOUT = 30.0
#: Lowest rate accepted (bytes/s): keeps a copy's duration bounded.
MIN_RATE = 64 << 10


class TokenBucket:
    """At most `rate` bytes per second on average, shared by every caller; bursts of one piece."""

    def __init__(self) -> None:
        self._next = 0.0

    async def take(self, nbytes: int, rate: int) -> None:
        now = time.monotonic()
        start = max(now, self._next)
        self._next = start + nbytes / rate
        if start > now:
            await asyncio.sleep(start - now)


class Replicator:
    def __init__(self, server: ChunkServer) -> None:
        self.server = server
        self.bucket = TokenBucket()
        #: Copies running here now (the master bounds it; this is for `stat`-like reporting).
        self.running = 0
        self.copied_bytes = 0

    async def replicate(self, h: dict[str, Any]) -> dict[str, Any]:
        chunk_id, version, rate = h["chunk_id"], h["version"], h["rate"]
        if rate < MIN_RATE:
            raise InvalidArgument(f"replication rate {rate} B/s is below the minimum {MIN_RATE}")
        store = self.server.store
        self.running += 1
        try:
            conn = await self.server._peer(h["source"])
            reply, _ = await conn.call(Msg.CS_CHECKSUMS, {"chunk_id": chunk_id, "version": version},
                                       timeout=PIECE_TIMEOUT)
            source_crcs = [int(c) for c in reply["crcs"]]
            if len(source_crcs) != store.n_blocks:
                raise ChecksumMismatch(f"chunk {chunk_id:#x}: the source sent {len(source_crcs)} checksums, "
                                       f"{store.n_blocks} expected")
            # Whatever is here (a stale version, a half-made copy) goes first.
            await asyncio.to_thread(store.delete, chunk_id)
            await asyncio.to_thread(store.create, chunk_id, version)
            try:
                fetched = await self._fetch(conn, chunk_id, version, source_crcs, rate)
                await asyncio.to_thread(store.fsync, chunk_id, version)
                mine = await asyncio.to_thread(store.block_checksums, chunk_id, version)
                if mine != source_crcs:
                    bad = next(i for i, (a, b) in enumerate(zip(mine, source_crcs, strict=True)) if a != b)
                    raise ChecksumMismatch(f"chunk {chunk_id:#x}: block {bad} differs from the source after the copy")
            except BaseException:
                await asyncio.to_thread(store.delete, chunk_id)
                raise
        except ChunkFSError as exc:
            logger.warning("copy of chunk %#x version %#x from %s failed: %s", chunk_id, version, h["source"], exc)
            raise
        finally:
            self.running -= 1
        self.copied_bytes += fetched
        logger.info("chunk %#x version %#x copied from CS#%d (%d bytes fetched)", chunk_id, version,
                    h["source_id"], fetched)
        return {"bytes": fetched}

    async def _fetch(self, conn: Any, chunk_id: int, version: int, crcs: list[int], rate: int) -> int:
        store = self.server.store
        per_piece = PIECE // store.block_size
        fetched = 0
        for first in range(0, store.n_blocks, per_piece):
            blocks = crcs[first:first + per_piece]
            if all(c == store.zero_crc for c in blocks):
                continue  # never written (or zeros): the new replica already reads as zeros there
            offset, length = first * store.block_size, len(blocks) * store.block_size
            await self.bucket.take(length, rate)
            _, data = await conn.call(Msg.CS_READ, {
                "chunk_id": chunk_id, "version": version, "offset": offset, "length": length,
            }, timeout=PIECE_TIMEOUT + length / rate)
            if len(data) != length:
                raise ChecksumMismatch(f"chunk {chunk_id:#x}: the source sent {len(data)} bytes, {length} asked")
            await asyncio.to_thread(store.write, chunk_id, version, offset, data, False)
            fetched += length
        return fetched

    async def repair_blocks(self, h: dict[str, Any]) -> dict[str, list[int]]:
        """Replace bad blocks of this replica with good copies from the other replicas.

        Every block ends in one of three lists: repaired (or found good by now),
        lost (every source answered that its copy is bad too), pending (no good
        copy reached: a source was down or at another version; the master retries).
        """
        chunk_id, version = h["chunk_id"], h["version"]
        blocks = sorted(set(int_list(h["blocks"], "blocks", MAX_BLOCKS)))
        sources = replica_list(h["sources"], "sources")
        store = self.server.store
        if any(not 0 <= b < store.n_blocks for b in blocks):
            raise InvalidArgument(f"chunk {chunk_id:#x}: block numbers must be below {store.n_blocks}")
        repaired: list[int] = []
        lost: list[int] = []
        pending: list[int] = []
        for block in blocks:
            copy, all_bad = await self._good_copy(chunk_id, version, block, sources)
            if copy is None:
                (lost if all_bad else pending).append(block)
                continue
            await asyncio.to_thread(store.repair_block, chunk_id, version, block, copy)
            repaired.append(block)
        if repaired:
            await asyncio.to_thread(store.fsync, chunk_id, version)
        logger.log(logging.WARNING if lost or pending else logging.INFO,
                   "chunk %#x version %#x: %d block(s) repaired, %d bad on every replica, %d not reachable yet",
                   chunk_id, version, len(repaired), len(lost), len(pending))
        return {"repaired": repaired, "lost": lost, "pending": pending}

    async def _good_copy(
        self, chunk_id: int, version: int, block: int, sources: list[tuple[int, str]]
    ) -> tuple[bytes | None, bool]:
        """A verified copy of one block from the first source that has one; else (None, every copy bad)."""
        bs = self.server.store.block_size
        all_bad = bool(sources)
        for cs_id, addr in sources:
            try:
                conn = await self.server._peer(addr)
                _, data = await conn.call(Msg.CS_READ, {
                    "chunk_id": chunk_id, "version": version, "offset": block * bs, "length": bs,
                }, timeout=PIECE_TIMEOUT)
            except ChecksumMismatch:
                continue  # that copy is bad too
            except ChunkFSError as exc:  # down, or at another version
                all_bad = False
                logger.info("block %d of chunk %#x: no copy from CS#%d (%s)", block, chunk_id, cs_id, exc)
                continue
            if len(data) == bs:
                return bytes(data), False
            all_bad = False
        return None, all_bad
