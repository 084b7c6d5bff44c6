"""Server-to-server copies: this chunk server fetches a replica from another one.

The master sends ``CS_REPLICATE`` (chunk, version, source) to the *target*.
The target asks the source for its CRC table, creates an empty replica at
that version, reads the blocks that are not all-zero from the source with
``CS_READ`` (the source verifies its checksums on the way out) in pieces of
at most `PIECE` bytes, writes them, fsyncs, and compares its own CRC table
with the source's.  Any mismatch deletes the new replica: a half-made copy
is never left to be served.

A copy in two phases (the master's choice, mds/replication.py) first fetches
the whole chunk while writers go on (``track``: the source notes the blocks
written from then on, cs/write_tracker.py), then, with the chunk frozen at a
new version, moves that copy to it and fetches only the blocks written
meanwhile (``since``), and compares the whole CRC table with the source's.
When the source cannot say what changed (it restarted), the copy is made
whole, frozen.

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
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from chunkfs.common.errors import ChecksumMismatch, ChunkFSError, InvalidArgument, NotFound, StaleVersion
from chunkfs.protocol.frame import MAX_IO_SIZE
from chunkfs.protocol.messages import MAX_BLOCKS, Msg, int_list, replica_list

if TYPE_CHECKING:
    from chunkfs.cs.server import ChunkServer
    from chunkfs.protocol.rpc import Connection

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
        """Copy a chunk here: whole, or only the blocks written since a copy made here (`since`).

        `track`: the chunk is not frozen while this copy runs (phase 1 of a two-phase copy): the
        source notes the blocks written from the start on, the reply's `token` names them, and
        the copy is not compared with the source's checksums, which move meanwhile (phase 2 does).
        """
        chunk_id, version, rate = h["chunk_id"], h["version"], h["rate"]
        if rate < MIN_RATE:
            raise InvalidArgument(f"replication rate {rate} B/s is below the minimum {MIN_RATE}")
        since = h.get("since")
        if since is not None and (len(since) != 2 or not all(isinstance(x, int) for x in since)):
            raise InvalidArgument("since must be [version, token]")
        self.running += 1
        token: int | None = None
        try:
            conn = await self.server._peer(h["source"])
            fetched = None if since is None else await self._catch_up(conn, chunk_id, version, since)
            what = "caught up" if fetched is not None else "copied"
            if fetched is None:
                if h.get("track"):
                    reply, _ = await conn.call(Msg.CS_TRACK_WRITES, {"chunk_id": chunk_id, "version": version},
                                               timeout=PIECE_TIMEOUT)
                    token = int(reply["token"])
                fetched = await self._copy_whole(conn, chunk_id, version, rate, compare=token is None)
        except ChunkFSError as exc:
            logger.warning("copy of chunk %#x version %#x from %s failed: %s", chunk_id, version, h["source"], exc)
            raise
        finally:
            self.running -= 1
        self.copied_bytes += fetched
        logger.info("chunk %#x version %#x %s from CS#%d (%d bytes fetched)", chunk_id, version, what,
                    h["source_id"], fetched)
        return {"bytes": fetched} if token is None else {"bytes": fetched, "token": token}

    async def _copy_whole(self, conn: Connection, chunk_id: int, version: int, rate: int, compare: bool) -> int:
        """Fetch every block that is not all zeros; a failed copy is deleted, never left to be served."""
        store = self.server.store
        source_crcs = await self._source_checksums(conn, chunk_id, version)
        # Whatever is here (a stale version, a half-made copy) goes first.
        await asyncio.to_thread(store.delete, chunk_id)
        await asyncio.to_thread(store.create, chunk_id, version)
        try:
            fetched = await self._fetch(conn, chunk_id, version, source_crcs,
                                        _runs(range(store.n_blocks), self._per_piece), rate, zero_fill=False)
            await asyncio.to_thread(store.fsync, chunk_id, version)
            if compare:
                await self._compare(chunk_id, version, source_crcs)
        except BaseException:
            await asyncio.to_thread(store.delete, chunk_id)
            raise
        return fetched

    async def _catch_up(self, conn: Connection, chunk_id: int, version: int, since: list[int]) -> int | None:
        """Phase 2: move the copy made here at since[0] to `version`, fetch the blocks written since; None: can't.

        The chunk is frozen now, so the copy must then equal the source block for block.
        """
        store = self.server.store
        old_version, token = since
        try:
            reply, _ = await conn.call(Msg.CS_WRITTEN_SINCE, {"chunk_id": chunk_id, "token": token},
                                       timeout=PIECE_TIMEOUT)
        except NotFound as exc:
            logger.info("chunk %#x: the source cannot say what changed (%s); copying it whole", chunk_id, exc)
            return None
        blocks = int_list(reply["blocks"], "blocks", MAX_BLOCKS)
        if any(not 0 <= b < store.n_blocks for b in blocks):
            raise InvalidArgument(f"chunk {chunk_id:#x}: the source named blocks beyond {store.n_blocks}")
        try:
            await asyncio.to_thread(store.set_version, chunk_id, old_version, version)
        except (NotFound, StaleVersion) as exc:
            logger.info("chunk %#x: the copy made here is gone (%s); copying it whole", chunk_id, exc)
            return None
        try:
            source_crcs = await self._source_checksums(conn, chunk_id, version)
            # Not held to the rate: writers wait for this part, which is at most one chunk's blocks.
            fetched = await self._fetch(conn, chunk_id, version, source_crcs, _runs(blocks, self._per_piece), None,
                                        zero_fill=True)
            await asyncio.to_thread(store.fsync, chunk_id, version)
            await self._compare(chunk_id, version, source_crcs)
        except BaseException:
            await asyncio.to_thread(store.delete, chunk_id)
            raise
        return fetched

    @property
    def _per_piece(self) -> int:
        return PIECE // self.server.store.block_size

    async def _source_checksums(self, conn: Connection, chunk_id: int, version: int) -> list[int]:
        reply, _ = await conn.call(Msg.CS_CHECKSUMS, {"chunk_id": chunk_id, "version": version},
                                   timeout=PIECE_TIMEOUT)
        crcs = [int(c) for c in reply["crcs"]]
        if len(crcs) != self.server.store.n_blocks:
            raise ChecksumMismatch(f"chunk {chunk_id:#x}: the source sent {len(crcs)} checksums, "
                                   f"{self.server.store.n_blocks} expected")
        return crcs

    async def _compare(self, chunk_id: int, version: int, source_crcs: list[int]) -> None:
        mine = await asyncio.to_thread(self.server.store.block_checksums, chunk_id, version)
        if mine != source_crcs:
            bad = next(i for i, (a, b) in enumerate(zip(mine, source_crcs, strict=True)) if a != b)
            raise ChecksumMismatch(f"chunk {chunk_id:#x}: block {bad} differs from the source after the copy")

    async def _fetch(
        self, conn: Connection, chunk_id: int, version: int, crcs: list[int], runs: Iterable[tuple[int, int]],
        rate: int | None, zero_fill: bool,
    ) -> int:
        """Fetch runs of (first block, count) from the source, at most `rate` bytes/s (None: at once);
        all-zero runs are skipped or, with `zero_fill`, zeroed here (a copy made earlier may hold older
        bytes there)."""
        store = self.server.store
        fetched = 0
        for first, count, zeros in _split_at_zeros(runs, crcs, store.zero_crc):
            offset, length = first * store.block_size, count * store.block_size
            if zeros:
                if zero_fill:
                    await asyncio.to_thread(store.write, chunk_id, version, offset, bytes(length), False)
                continue
            if rate is not None:
                await self.bucket.take(length, rate)
            _, data = await conn.call(Msg.CS_READ, {
                "chunk_id": chunk_id, "version": version, "offset": offset, "length": length,
            }, timeout=PIECE_TIMEOUT + (0 if rate is None else length / rate))
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


def _split_at_zeros(
    runs: Iterable[tuple[int, int]], crcs: list[int], zero_crc: int
) -> Iterator[tuple[int, int, bool]]:
    """Each run as (first, count, all zeros) runs whose blocks are all zeros or none is: a copy writes
    no zeros its source holds as a hole (a small file's chunk, copied whole, took the whole chunk on
    disk: a probe, 1 MiB against 72 KiB for each of 20,270 replicas)."""
    for first, count in runs:
        start = first
        for block in range(first + 1, first + count + 1):
            if block == first + count or (crcs[block] == zero_crc) != (crcs[start] == zero_crc):
                yield start, block - start, crcs[start] == zero_crc
                start = block


def _runs(blocks: Iterable[int], most: int) -> list[tuple[int, int]]:
    """Sorted block numbers as (first, count) runs of consecutive blocks, at most `most` long."""
    runs: list[tuple[int, int]] = []
    for block in blocks:
        if runs and block == runs[-1][0] + runs[-1][1] and runs[-1][1] < most:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((block, 1))
    return runs
