"""The data path: reading and writing file bytes on chunk servers.

A file's byte range is cut at chunk boundaries (and at the largest request
size); each piece goes to the chunk servers the master names for that chunk.
Chunk maps are cached: reads keep theirs until a server refuses it as stale,
and read each chunk from one replica (the others if it fails); writes send
the data to the first replica of the chain, which forwards it (small writes
to a chunk server that has one on its way wait for it and go together:
write_batches.py).
When a replica fails, the client tells the master, which drops it (a new
version) and hands back the survivors; the write goes on while at least the
file's minimum number of replicas remain.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import logging
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from chunkfs.client.local_reads import LOCAL_READ_MAX, LocalReads
from chunkfs.client.map_cache import MapCache
from chunkfs.client.write_batches import WriteBatches, chunk_of
from chunkfs.common.errors import (
    ChecksumMismatch,
    ChunkFSError,
    NoSpace,
    NotFound,
    StaleVersion,
    Timeout,
    Unavailable,
)
from chunkfs.common.timings import TIMINGS
from chunkfs.protocol.frame import MAX_IO_SIZE
from chunkfs.protocol.messages import FIRST_WRITE_MAX, SMALL_WRITE_MAX, Msg, replica_list
from chunkfs.protocol.peer_connections import PeerConnections
from chunkfs.protocol.replica_calls import answered, request_each
from chunkfs.protocol.rpc import CALL_TIMEOUT, SILENCE_LIMIT, Connection, Payload, connect

if TYPE_CHECKING:
    from chunkfs.client.client import Client

logger = logging.getLogger(__name__)

#: Tries per piece before a read or write gives up.
MAX_TRIES = 6
#: A write that finds its chunk at a newer version (a cut or a replica change meanwhile) goes again this
#: many times besides, waiting this much longer each time (first at once; 10 s in all at most).
MAX_STALE_TRIES = 100
STALE_WAIT = 0.002
#: Files whose highest chunk version the mount remembers (see `ChunkIO.opened`), and replicas known missing.
CHUNKS_VERSIONS_MAX = 100_000
#: Files whose chunks written since their last fsync this mount keeps (`dirty`, about 300 bytes each);
#: past it the oldest are synced in the background, DIRTY_SYNC_BATCH at a time, down to three quarters
#: of it, and forgotten.  Kept for good, a program that writes a million files and never syncs them grew
#: the mount by a set per file: they wait for an fsync that any later descriptor of the file may ask for.
#: Large, because a sync costs: each replica syncs the file and its folder (one run with a bound of 4,096:
#: 9,000 new files of 4 KiB written one by one took 126 s instead of 81 here, three replicas on one disk).
DIRTY_FILES_MAX = 65_536
DIRTY_SYNC_BATCH = 16
#: Seconds before another background pass after one that failed (a server down: the next fsync says so).
DIRTY_SYNC_BACKOFF = 10.0
#: Chunk maps each of the two caches keeps (for reads, for writes); past it the oldest go (asked for again
#: when needed). Unbounded, a soak of 42,000 small files created and deleted grew a mount by 60 MiB.
MAPS_MAX = 16_384
#: First wait (doubled each try) for the master to mend a bad block a write met: 3.1 s in all.
REPAIR_WAIT = 0.1
#: Writes up to this size to a chunk this mount alone writes go to every replica at once (the data is sent
#: three times by the mount instead of once: larger writes go down the chain, where each server sends it on once).
FAN_WRITE_MAX = SMALL_WRITE_MAX
#: Errors after which another replica (or a new map) may succeed.
_REPLICA_ERRORS = (Unavailable, Timeout, StaleVersion, ChecksumMismatch, NotFound)
#: Seconds a chunk server that did not answer (a connect or a read given up, a lost connection) is read
#: from last (`read_order`), unless it answers meanwhile: a frozen server costs one wait, not one per read.
UNANSWERED_LAST = 30.0


@dataclass(slots=True, frozen=True)
class ChunkMap:
    chunk_id: int
    version: int
    replicas: tuple[tuple[int, str], ...]
    #: This mount alone writes the chunk: its small writes may go to every replica at once (write_batches.py).
    fan: bool = False
    #: The file's last cut when the master read the chunk (FEATURE_MAP_CUTS; None: not said): a write
    #: through this map comes after that cut.
    cut: int | None = None

    @classmethod
    def from_reply(cls, reply: dict[str, Any]) -> ChunkMap:
        replicas = tuple(replica_list(reply["replicas"]))
        return cls(reply["chunk_id"], reply["version"], replicas, reply.get("fan") is True, reply.get("cut"))


def _replica_at(exc: ChunkFSError) -> int | None:
    """The version a replica that refused a request for another one says it holds (None: no such refusal)."""
    current = exc.context.get("current")
    return current if isinstance(exc, StaleVersion) and isinstance(current, int) else None


def _map_may_be_old(exc: ChunkFSError, m: ChunkMap) -> bool:
    """Whether a replica's refusal says the map it was read with may be out of date."""
    at = _replica_at(exc)
    return isinstance(exc, NotFound) or (at is not None and at > m.version)


def _behind_the_map(exc: ChunkFSError, m: ChunkMap) -> bool:
    """Whether a replica's refusal says it is at an older version than the map."""
    at = _replica_at(exc)
    return at is not None and at < m.version


def _remember(seen: set[Any], item: Any) -> None:
    """Add `item` to a set of chunk versions kept in memory, bounded: past the bound it starts afresh."""
    if len(seen) >= CHUNKS_VERSIONS_MAX:
        seen.clear()
    seen.add(item)


def split(offset: int, length: int, chunk_size: int) -> list[tuple[int, int, int, int]]:
    """(chunk index, offset in chunk, length, offset in the buffer) for each piece."""
    pieces = []
    pos, end = offset, offset + length
    while pos < end:
        index, in_chunk = divmod(pos, chunk_size)
        size = min(end - pos, chunk_size - in_chunk, MAX_IO_SIZE)
        pieces.append((index, in_chunk, size, pos - offset))
        pos += size
    return pieces


class ChunkIO:
    def __init__(self, client: Client) -> None:
        self.client = client
        self._read_maps: MapCache[ChunkMap] = MapCache(MAPS_MAX)
        self._write_maps: MapCache[ChunkMap] = MapCache(MAPS_MAX)
        #: One connection per chunk server, each made once however many requests want it (peer_connections.py).
        self._servers = PeerConnections(self._connect)
        #: address -> until when (time.monotonic) reads try that server last: it did not answer (`read_order`).
        self._unanswered: dict[str, float] = {}
        #: Which replica this mount reads each chunk from first (`read_order`).
        self._read_salt = random.randrange(1 << 30)
        #: Chunks written since the last fsync of each inode, the files in the order first written.
        self.dirty: dict[int, set[int]] = {}
        #: The background pass that syncs the oldest of them past DIRTY_FILES_MAX (`_sync_oldest`), and
        #: when (time.monotonic) the next may start.
        self._syncing: asyncio.Task[None] | None = None
        self._sync_after = 0.0
        #: inode -> the lock its fsyncs take turns on, and how many hold or wait for it.
        self._fsyncs: dict[int, tuple[asyncio.Lock, int]] = {}
        #: inode -> the file's highest chunk version when this mount last opened it (`opened`).
        self._chunks_versions: dict[int, int] = {}
        #: (chunk id, version, server) a fresh map still names though the server lacked the chunk:
        #: reads go on to the other replicas without asking the master each time (`_read_piece`).
        self._missing: set[tuple[int, int, int]] = set()
        #: Small reads of replicas on this machine, from their files (local_reads.py; on unless the mount says).
        self.local = LocalReads(client.chunk_size)
        #: Small writes to a head wait for the one on its way and then go together (write_batches.py).
        self._batches = WriteBatches()
        #: Whether the master makes a new chunk's replicas with its first write in them (`_first_write`);
        #: set by the mount from the master's answer to WATCH (off with a master that predates it).
        self.first_writes = False
        #: Whether the master lets a chunk's one writer send its small writes to every replica at once
        #: (the map's `fan`); set like `first_writes`.
        self.fans = False
        #: (chunk id, version) whose failed write was logged as a warning: the many writes in flight
        #: to a chunk when one of its servers dies fail together, and one line says it.
        self._warned: set[tuple[int, int]] = set()
        #: Chunk servers this mount has been connected to, and how many times it connected again (`_connect`).
        self._connected: set[str] = set()
        self._reconnects = 0

    async def server(self, addr: str) -> Connection:
        return await self._servers.get(addr)

    async def _connect(self, addr: str) -> Connection:
        try:
            conn = await connect(addr, self.client.creds, timeout=3.0, silence_limit=SILENCE_LIMIT)
        except (Timeout, Unavailable):
            self._unanswered[addr] = time.monotonic() + UNANSWERED_LAST
            raise
        self._unanswered.pop(addr, None)
        try:
            await self.local.learn(addr, conn)
        except BaseException:
            conn.close()
            raise
        if conn.closed:  # a server of an earlier version closes on a request it does not know
            conn = await connect(addr, self.client.creds, timeout=3.0, silence_limit=SILENCE_LIMIT)
        if addr in self._connected:
            self._reconnected(addr)
        self._connected.add(addr)
        return conn

    def _reconnected(self, addr: str) -> None:
        """Connected again to a chunk server: it may have restarted, after a power cut say, and the master
        may now read some of its chunks from one replica only until it has compared them
        (mds/fanned_mender.py): the maps to read through that name it are asked for again."""
        self._reconnects += 1
        stale = [key for key, m in self._read_maps.items() if any(a == addr for _, a in m.replicas)]
        for key in stale:
            self._read_maps.pop(key)
        if stale:
            logger.debug("connected to %s again: %d chunk map(s) naming it asked for again", addr, len(stale))

    def forget(self, ino: int) -> None:
        self._read_maps.forget(ino)
        self._write_maps.forget(ino)

    def gone(self, ino: int) -> None:
        """A file this mount removed while nothing here held it open: nothing here can `fsync` it again,
        so its chunks written since the last one need no sync (kept, they piled up one set per file:
        a soak's 42,000 small files written, closed and removed grew the mount)."""
        self.dirty.pop(ino, None)
        self._chunks_versions.pop(ino, None)
        self.forget(ino)  # (kept, they filled the caches: a scale probe)

    def opened(self, ino: int, chunks_version: int | None, first: dict[str, Any] | None = None) -> None:
        """Close-to-open for chunk maps: the file's chunks changed since this mount last opened it (the
        master's highest chunk version moved), so its cached read maps may name a replica dropped since,
        which keeps its old version and bytes until deleted: they are asked for again.

        `first`: chunk 0's map, sent with the open of a one-chunk file (as fresh as a CHUNK_READ's).
        """
        if chunks_version is not None and self._chunks_versions.get(ino) != chunks_version:
            self._read_maps.forget(ino)
            if len(self._chunks_versions) >= CHUNKS_VERSIONS_MAX:
                self._chunks_versions.clear()  # bounded; unknown only costs a map request
            self._chunks_versions[ino] = chunks_version
        if first is not None:
            self._read_maps[(ino, 0)] = ChunkMap.from_reply(first)

    def connections(self) -> list[Connection]:
        return self._servers.values()

    def close(self) -> None:
        if self._syncing is not None:
            self._syncing.cancel()
        self._batches.close()
        self._servers.close()

    # -- reads ---------------------------------------------------------------

    async def _read_map(self, ino: int, index: int, refresh: bool) -> ChunkMap:
        key = (ino, index)
        if not refresh and key in self._read_maps:
            return self._read_maps[key]
        m = ChunkMap.from_reply(await self.client.mds.call(Msg.CHUNK_READ, {"ino": ino, "index": index}))
        if m.chunk_id:
            self._read_maps[key] = m
        return m

    def read_order(self, m: ChunkMap) -> list[tuple[int, str]]:
        """The replicas to read `m` from, in order: always the same first one for a chunk, in this mount.

        Each chunk server's page cache then keeps the chunks read from it, not a
        third of every chunk: random reads of an image after its cache was dropped
        went from 3,370-3,621 to 5,347-5,399 a second at QD1, and from 9,387-9,552
        to 20,778-20,855 at QD16, against reads spread over the replicas at random.
        Chunks (and mounts) still start at different replicas, so the load spreads.
        A replica on this machine comes before the others (DESIGN: reads prefer a
        local replica; small ones are then read from its file, local_reads.py).
        A server that did not answer lately comes after all (`UNANSWERED_LAST`): a
        frozen one held every read of the chunks it came first for, 5-10 s each for
        the whole freeze (a fault probe), where the others answer at once.
        """
        replicas = m.replicas
        if len(replicas) < 2:
            return list(replicas)
        first = (m.chunk_id + self._read_salt) % len(replicas)
        order = [*replicas[first:], *replicas[:first]]
        if self.local.found_any():
            order.sort(key=lambda replica: not self.local.is_local(replica[1]))  # stable: each in its turn
        if self._unanswered:
            order.sort(key=lambda replica: self._answers_late(replica[1]))
        return order

    def _answers_late(self, addr: str) -> bool:
        """Whether `addr` did not answer within the last UNANSWERED_LAST s (and has not answered since)."""
        until = self._unanswered.get(addr)
        if until is None:
            return False
        if until > time.monotonic():
            return True
        del self._unanswered[addr]  # tried in its turn again: a first read finds out whether it is back
        return False

    async def read(self, ino: int, offset: int, length: int) -> bytes:
        chunk_size = self.client.chunk_size
        out = bytearray(length)
        pieces = split(offset, length, chunk_size)
        await asyncio.gather(*(self._read_piece(ino, idx, off, size, out, pos) for idx, off, size, pos in pieces))
        return bytes(out)

    async def read_buffer(self, ino: int, offset: int, length: int) -> bytes | bytearray | memoryview:
        """`read` without copies when the range lies in one piece — every FUSE request (at most 1 MiB)
        that does not cross a chunk boundary: the chunk server's payload is handed back as it arrived."""
        pieces = split(offset, length, self.client.chunk_size)
        if len(pieces) != 1:
            return await self.read(ino, offset, length)
        index, in_chunk, size, _ = pieces[0]
        data = await self._read_piece(ino, index, in_chunk, size, None, 0)
        return bytes(size) if data is None else data

    async def _read_piece(
        self, ino: int, index: int, offset: int, size: int, out: bytearray | None, pos: int
    ) -> bytes | bytearray | memoryview | None:
        """Read one piece into `out` (when given) and return it; None for a hole."""
        refresh = False
        last: ChunkFSError | None = None
        only_bad_blocks = True  # every replica tried answered with a bad block (not offline, not gone)
        for attempt in range(MAX_TRIES):
            m = await self._read_map(ino, index, refresh)
            if m.chunk_id == 0:
                return None  # a hole: zeros, already in `out`
            old_map = False
            key = (ino, index)
            # Once for the whole pass: a reconnect while an earlier replica of it was tried dropped the map too.
            reconnects = self._reconnects
            for cs_id, addr in self.read_order(m):
                if size <= LOCAL_READ_MAX and self.local.is_local(addr):
                    started = time.perf_counter()
                    local = self.local.read(addr, m.chunk_id, m.version, offset, size)
                    if local is not None:
                        TIMINGS.since("local.read", started)
                        if out is not None:
                            out[pos:pos + size] = local
                        return local
                try:
                    conn = await self.server(addr)
                    if reconnects != self._reconnects and not refresh and self._read_maps.get(key) is not m:
                        old_map = True  # dropped meanwhile (a server connected to again): asked for anew
                        break
                    started = time.perf_counter()
                    sent = self.local.now()
                    _, data = await conn.call(
                        Msg.CS_READ, {"chunk_id": m.chunk_id, "version": m.version, "offset": offset, "length": size}
                    )
                    TIMINGS.since("cs.CS_READ", started)
                    self.local.heard(addr, sent)
                    self._unanswered.pop(addr, None)
                    if len(data) != size:
                        raise ChecksumMismatch(f"CS#{cs_id} returned {len(data)} bytes, {size} asked")
                    if out is not None:
                        out[pos:pos + size] = data
                    return data
                except _REPLICA_ERRORS as exc:
                    last = exc
                    if isinstance(exc, Timeout | Unavailable):  # no answer (a frozen or lost server): read it last
                        self._unanswered[addr] = time.monotonic() + UNANSWERED_LAST
                    only_bad_blocks = only_bad_blocks and isinstance(exc, ChecksumMismatch)
                    known = (m.chunk_id, m.version, cs_id)
                    if _map_may_be_old(exc, m) and known not in self._missing:
                        if not refresh:
                            # The chunk is gone from there or has moved on to a newer version: the
                            # other replicas of this map may be the ones left behind (a dropped replica
                            # keeps its old version and bytes until deleted).  Ask the master first.
                            old_map = True
                            break
                        if isinstance(exc, NotFound):  # the master's map still names it: lost there
                            _remember(self._missing, known)
                    # A replica behind the map at the first try: the master moves the chunk to a new version
                    # (a cut, say), and commits the version before its servers have it: a moment's wait.
                    logger.log(logging.DEBUG if attempt == 0 and _behind_the_map(exc, m) else logging.WARNING,
                               "read of chunk %#x from CS#%d failed: %s; %s", m.chunk_id, cs_id, exc,
                               "trying another replica" if len(m.replicas) > 1 else "trying again")
                    if isinstance(exc, ChecksumMismatch):
                        await self._report_bad(m.chunk_id, cs_id, exc)
            refresh = True
            if attempt + 1 == MAX_TRIES:
                break
            if len(m.replicas) == 1 and isinstance(last, ChecksumMismatch):
                # The only replica the master names (the one a chunk still to be compared is read from, or
                # the last one): its bad block, reported, is mended from the others: give that time.
                await asyncio.sleep(REPAIR_WAIT * 2 ** attempt)
            elif not old_map:
                await asyncio.sleep(0.05)
        assert last is not None
        if isinstance(last, NotFound | StaleVersion):
            # A replica's word about itself, not about the file: the file is there, its bytes cannot be had
            # now.  Passed on, a read failed ENOENT (or ESTALE) on a file that exists (a power-cut probe:
            # chunks being made again in the seconds after a restart).  An I/O error, as for a server down.
            raise Unavailable(f"chunk {m.chunk_id:#x}: no replica of it can be read now ({last}); its servers "
                              "may be back or the chunk copied again shortly", **last.context) from last
        if only_bad_blocks and isinstance(last, ChecksumMismatch) and len(m.replicas) == 1:
            # The one replica the master names: the chunk's last, or the one a chunk still to be compared
            # is read from, whose others were not tried (their bytes may differ until then).
            raise ChecksumMismatch(
                f"{last}; the one replica the master names for it has not been mended from any other in "
                f"time: try again shortly; if `chunkfs get-event` says no good copy is left, restore the file "
                "from a backup", **last.context,
            ) from last
        if only_bad_blocks and isinstance(last, ChecksumMismatch):
            raise ChecksumMismatch(
                f"{last}; no replica has a good copy of it: those bytes are lost on the cluster; restore "
                "the file from a backup (`chunkfs get-event` names the file and the range)", **last.context,
            ) from last
        raise last

    async def _report_bad(self, chunk_id: int, cs_id: int, exc: ChecksumMismatch) -> None:
        """Tell the master; it has the bad block mended from the other replicas."""
        header: dict[str, Any] = {"chunk_id": chunk_id, "cs_id": cs_id, "reason": str(exc)[:300]}
        block = exc.context.get("block")
        if isinstance(block, int):
            header["blocks"] = [block]
        try:
            await self.client.mds.call(Msg.REPORT_BAD_REPLICA, header)
        except ChunkFSError as exc:
            logger.info("could not report bad replica of chunk %#x: %s", chunk_id, exc)

    # -- writes --------------------------------------------------------------

    async def _write_map(
        self, ino: int, index: int, failed: set[int], why: str = "", on: ChunkMap | None = None
    ) -> ChunkMap:
        """The chain to write chunk `index` through; `failed`: replicas that failed a write to the map `on`."""
        key = (ino, index)
        if not failed and key in self._write_maps:
            return self._write_maps[key]
        header = self._map_request(ino, index)
        if failed:
            header["failed"] = sorted(failed)
            header["why"] = why
            if on is not None:
                header["chunk_id"], header["version"] = on.chunk_id, on.version
        return self._kept_write_map(key, await self.client.mds.call(Msg.CHUNK_WRITE, header))

    def drop_fans(self) -> None:
        """A new connection to a master (another master, maybe): no map kept may send writes to every
        replica any more.  A master knows whom it let do so only on the connection it let them on, and
        mends a writer's chunks only when that connection ends (mds/fan_grants.py, fanned_mender.py)."""
        self.fans = False
        for key, m in self._write_maps.items():
            if m.fan:
                unfanned = dataclasses.replace(m, fan=False)
                self._write_maps.replace(key, unfanned)
                if self._read_maps.get(key) is m:
                    self._read_maps.replace(key, unfanned)

    @property
    def cut_short(self) -> bool:
        """Whether a write to every replica was cut short (the mount stopping): see write_batches.py."""
        return self._batches.cut_short

    def _map_request(self, ino: int, index: int) -> dict[str, Any]:
        """A CHUNK_WRITE's header: which chunk, and whether this mount takes `fan` in the answer."""
        return {"ino": ino, "index": index, "fan": True} if self.fans else {"ino": ino, "index": index}

    def _kept_write_map(self, key: tuple[int, int], reply: dict[str, Any]) -> ChunkMap:
        """The map a CHUNK_WRITE answered, kept for writes and reads of that chunk (reads through the replicas
        its `read` names, when it names them: FEATURE_WRITE_MAP_READS)."""
        m = ChunkMap.from_reply(reply)
        self._write_maps[key] = m
        read = reply.get("read")
        self._read_maps[key] = m if read is None else dataclasses.replace(
            m, replicas=tuple(replica_list(read, "read")), fan=False)
        return m

    async def _first_write(self, ino: int, index: int, offset: int, data: memoryview) -> ChunkMap | None:
        """Send a small write with the request for the chunk's map: if that request allocates the chunk
        (a new file's first write, say), its replicas are made with these bytes in them, and the write is
        done without its trip down the chain (the map it was made with is returned); else (None) the
        caller sends it as any write."""
        started = time.perf_counter()
        reply = await self.client.mds.call(Msg.CHUNK_WRITE, {**self._map_request(ino, index), "offset": offset},
                                           payload=data)
        m = self._kept_write_map((ino, index), reply)
        if reply.get("written"):
            TIMINGS.since("cs.first_write", started)
            return m
        return None

    async def write(
        self, ino: int, offset: int, data: bytes | bytearray | memoryview, sync: bool = False
    ) -> int | None:
        """Write `data` at `offset`; return the latest cut the maps it went through say (None: none said).

        A write through a map that says a file's cut came after that cut on every replica (the
        cut moved or deleted the chunks it touched before the master handed out such a map), and
        belongs in the file whenever this mount hears of the cut (`ChunkFSOperations.write`).
        """
        view = memoryview(data)
        pieces = split(offset, len(view), self.client.chunk_size)
        if len(pieces) == 1:  # the common case (every FUSE write within a chunk): no extra task
            idx, off, size, _ = pieces[0]
            return await self._write_piece(ino, idx, off, view, sync)
        cuts = await asyncio.gather(*(
            self._write_piece(ino, idx, off, view[pos:pos + size], sync) for idx, off, size, pos in pieces
        ))
        return max((cut for cut in cuts if cut is not None), default=None)

    async def _write_piece(self, ino: int, index: int, offset: int, data: memoryview, sync: bool) -> int | None:
        m = None
        if self.first_writes and not sync and len(data) <= FIRST_WRITE_MAX and (ino, index) not in self._write_maps:
            m = await self._first_write(ino, index, offset, data)
        if m is None:
            m = await self._down_chain(ino, index, Msg.CS_WRITE, {"offset": offset, "sync": sync}, data)
        if not sync:  # a synced write is on every replica's disk already: no fsync owes it anything
            self._written(ino, index)
        return m.cut

    def _written(self, ino: int, index: int) -> None:
        """Chunk `index` of `ino` was written: the file's next fsync syncs it (`dirty`)."""
        chunks = self.dirty.get(ino)
        if chunks is None:
            chunks = self.dirty[ino] = set()
            if len(self.dirty) > DIRTY_FILES_MAX and self._syncing is None and time.monotonic() >= self._sync_after:
                self._syncing = asyncio.get_running_loop().create_task(self._sync_oldest())
        chunks.add(index)

    async def _sync_oldest(self) -> None:
        """Sync the files first written longest ago until three quarters of DIRTY_FILES_MAX are left.

        As a local disk's writeback does, without waiting for an fsync: what an fsync through a
        later descriptor would sync is on every replica's disk, and nothing is left to remember.
        A file removed since by another client is forgotten (nothing can sync it any more).
        """
        try:
            while len(self.dirty) > DIRTY_FILES_MAX * 3 // 4:
                batch = list(itertools.islice(self.dirty, DIRTY_SYNC_BATCH))
                results = await asyncio.gather(*(self.fsync(ino) for ino in batch), return_exceptions=True)
                for ino, result in zip(batch, results, strict=True):
                    if isinstance(result, NotFound) and not await self._exists(ino):
                        self.dirty.pop(ino, None)
                    elif isinstance(result, BaseException):
                        raise result
        except ChunkFSError as exc:
            self._sync_after = time.monotonic() + DIRTY_SYNC_BACKOFF
            logger.warning("syncing the chunks of files written and not synced since (%d files) failed: %s; "
                           "trying again in %.0f s", len(self.dirty), exc, DIRTY_SYNC_BACKOFF)
        finally:
            self._syncing = None

    async def _exists(self, ino: int) -> bool:
        """Whether the master still has inode `ino` (True when it cannot say)."""
        try:
            await self.client.getattr(ino)
        except NotFound:
            return False
        except ChunkFSError:
            pass
        return True

    async def _down_chain(
        self, ino: int, index: int, msg: Msg, fields: dict[str, Any], payload: memoryview | bytes = b""
    ) -> ChunkMap:
        """Send a write to the head of the chunk's chain (an fsync to every replica at once); on a failed
        replica, get a new chain.  The map it succeeded with is returned."""
        failed: set[int] = set()
        why = ""
        last: ChunkFSError | None = None
        m: ChunkMap | None = None
        attempt = stale = 0
        while attempt < MAX_TRIES:
            attempt += 1
            try:
                m = await self._write_map(ino, index, failed, why, m)
            except ChunkFSError as exc:
                if failed and m is not None:  # the only trace of why the write failed, else
                    logger.warning("%s to chunk %#x: the master has no chain without CS %s that failed it (%s)",
                                   msg.name, m.chunk_id, ",".join(map(str, sorted(failed))), exc)
                raise
            failed = set()
            if not m.replicas:
                raise Unavailable(f"chunk {m.chunk_id:#x} has no writable replica")
            (head_id, head_addr), rest = m.replicas[0], m.replicas[1:]
            try:
                started = time.perf_counter()
                if msg == Msg.CS_FSYNC:
                    await self._to_each_replica(m, msg, fields)
                else:
                    conn = await self.server(head_addr)
                    header = {"chunk_id": m.chunk_id, "version": m.version, "chain": [list(r) for r in rest], **fields}
                    if msg == Msg.CS_WRITE:
                        alone = functools.partial(self._to_each_replica, m, msg, fields, payload) \
                            if m.fan and len(payload) <= FAN_WRITE_MAX else None
                        await self._batches.write(conn, header, payload, alone)
                    else:
                        await conn.call(msg, header, payload)
                TIMINGS.since(f"cs.{msg.name}", started)
                return m
            except ChunkFSError as exc:
                # A replica whose disk is full is a failed replica (it names itself), not a full cluster.
                if not isinstance(exc, _REPLICA_ERRORS) and not (isinstance(exc, NoSpace) and "cs_id" in exc.context):
                    raise
                last = exc
                about = chunk_of(exc)
                if about is not None and about != m.chunk_id:
                    # Another chunk's replica failed a request that carried this write too
                    # (CS_WRITE_CHUNKS): nothing is known to be wrong with this chunk's chain.
                    continue
                bad = exc.context.get("cs_id", head_id)
                if isinstance(exc, ChecksumMismatch):
                    # A block that fails its checksum on one replica (a truncation verifies the
                    # block it cuts; a write carries an edge block's CRC forward, so a bad block
                    # stays bad but does not fail it): not a failed server.  The master mends the
                    # block from the other replicas, then the write goes through; a block bad on
                    # every replica stays bad and the write fails with EIO, as on a bad disk sector.
                    await self._report_bad(m.chunk_id, bad if isinstance(bad, int) else head_id, exc)
                    logger.warning("%s to chunk %#x met a bad block (%s); waiting for its repair",
                                   msg.name, m.chunk_id, exc)
                    await asyncio.sleep(REPAIR_WAIT * 2 ** (attempt - 1))
                    continue
                if isinstance(exc, StaleVersion) and stale < MAX_STALE_TRIES:
                    # The chunk moved to a new version under this write (another client cut the file, a
                    # replica was dropped): nothing failed, the write goes again at once with the chunk as
                    # it is now, and does not use up a try however often that happens (bounded apart).
                    stale += 1
                    attempt -= 1
                    self._write_maps.pop((ino, index))
                    await asyncio.sleep(STALE_WAIT * (stale - 1))
                    continue
                if not isinstance(exc, StaleVersion):
                    failed = {bad} if isinstance(bad, int) else {head_id}
                    why = f"{exc.code}: {exc}"[:300]
                if (m.chunk_id, m.version) in self._warned:
                    logger.debug("%s to chunk %#x failed too (%s)", msg.name, m.chunk_id, exc)
                else:
                    _remember(self._warned, (m.chunk_id, m.version))
                    logger.warning("%s to chunk %#x failed (%s); asking the master for a new chain "
                                   "(other writes to it failing the same are logged at debug level)",
                                   msg.name, m.chunk_id, exc)
                self._write_maps.pop((ino, index))
                await asyncio.sleep(0.05)
        assert last is not None
        raise last

    async def _to_each_replica(self, m: ChunkMap, msg: Msg, fields: dict[str, Any], payload: Payload = b"") -> None:
        """Send `msg` to every replica at once, not down the chain: an fsync (DESIGN's budget: one round
        of replica syncs in parallel; it carries no data and no order to keep), or a small write to a
        chunk this mount alone writes (`fan`: the order is this mount's, write_batches.py).  The head's
        forward to the others was a second hop on the path of each.  A failure names its replica."""
        header = {"chunk_id": m.chunk_id, "version": m.version, "chain": [], **fields}
        await answered(await request_each(
            msg, [(cs_id, addr, header, payload) for cs_id, addr in m.replicas], self.server, CALL_TIMEOUT))

    async def fsync(self, ino: int) -> None:
        """Every chunk written since the last fsync reaches the disk on every replica.

        One file's fsyncs go one after the other: an fsync takes the chunks written so far off the
        dirty set, so a second one called meanwhile (another thread) would find nothing left and
        return while the first was still syncing writes made before it.  Waiting for the first, it
        then syncs what came since, and what the first gave back if it failed.
        """
        lock, users = self._fsyncs.get(ino, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._fsyncs[ino] = (lock, users + 1)
        try:
            async with lock:
                indexes = self.dirty.pop(ino, set())
                try:
                    await asyncio.gather(*(self._down_chain(ino, index, Msg.CS_FSYNC, {}) for index in indexes))
                except BaseException:
                    self.dirty.setdefault(ino, set()).update(indexes)
                    raise
        finally:
            lock, users = self._fsyncs[ino]
            if users == 1:
                del self._fsyncs[ino]
            else:
                self._fsyncs[ino] = (lock, users - 1)
