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

A master that dies with the writer (one machine lost, holding both) takes
what it let the writer do along.  The chunk servers keep, in memory, the
chunks clients lately wrote to them alone (cs/recent_writes.py): a new master
asks each server that registers with it in its first minutes (CS_FANNED) and
mends those chunks the same way, all but the ones it let fan out itself (a
live writer's are mended too: it only loses fanning out, its writes refused
during the move are sent again down the chain).  The same answer says how far
writes made before the election reached into each chunk: the files written
past their size are trimmed as a dead session's (open_files.py).

A power cut may also tear a block: an unsynced write's bytes and the block's
checksum reach a replica's disk apart, and the block fails its checksum.  Where
every replica's server came back from its machine going down naming the chunk
among those it wrote last, a block that fails on every replica held nothing
promised since its last sync: it is taken as it is on the first replica (its
checksum made anew, ``CS_TAKE_BLOCKS``) and copied to the others, as a local
disk shows what a crash left of such a write (`take_torn`; a block bad on
every replica is otherwise kept as an error, bad_replicas.py).

Until a chunk's replicas are compared, two reads could get different bytes:
each mount reads its own first replica, and the next one where a block fails
(a probe: a reader got the other replicas' bytes for 4.5 s after a power cut,
then the first replica's).  So while a chunk waits to be compared, the master
hands out maps to read it through that name only the replica the comparison
will copy from, the one the first such read went to (`read_from`), never one
whose machine went down while another's did not: a power cut of one server
loses the unsynced writes its replicas had, which the others hold and their
program was told were done.  Such a server is left out of every read map
until it has named the chunks it wrote last (`reporting`), and a writer of a
chunk read from elsewhere is told where to read it (CHUNK_WRITE's `read`).  A
mount connected to a chunk server again (it restarted) asks again for the
maps that name it (client/chunk_io.py `_reconnected`).  One that stayed
connected (a dead writer's chunks, read from another mount) still reads
through the maps it kept, from any replica: where every replica's server
counted the writer's writes to it (cs/recent_writes.py: not across its
restart), the comparison copies from the one that took the most instead,
which took every write any other did, so each reader's bytes only go forward.

Only while every replica's server is connected and holds its replica: a new
version moves only the replicas the master can tell to move, and the others
would be left behind at the old one (a master resumed after a stop, whose
servers were reconnecting, once left a chunk with no replica at its version).
A chunk whose servers are not all there is tried again later, for a while.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from chunkfs.common.errors import ChecksumMismatch, ChunkFSError, Unavailable
from chunkfs.mds.fan_grants import first_version
from chunkfs.mds.store import VERSION_TERM_SHIFT
from chunkfs.protocol.messages import (
    FANNED_REPORT_MAX,
    FANNED_REPORT_WINDOW,
    FEATURE_FANNED_COUNTS,
    FEATURE_FANNED_REPORT,
    FEATURE_TAKE_BLOCKS,
    FEATURE_WRITTEN_REPORT,
    MAX_BLOCKS,
    Msg,
    int_list,
    int_pairs,
    replica_list,
)
from chunkfs.protocol.rpc import SILENCE_LIMIT, Connection, connect

if TYPE_CHECKING:
    from chunkfs.mds.server import LiveServer, MetadataServer
    from chunkfs.mds.store import Chunk

logger = logging.getLogger(__name__)

#: Bound on each request to a chunk server while mending (seconds).
MEND_TIMEOUT = 30.0
#: A chunk whose replicas' servers are not all connected (or failed a request) is tried again this often
#: (seconds), this many times.
MEND_RETRY = 5.0
MEND_TRIES = 60
#: A new master asks the chunk servers that register with it this long after its election (seconds): the
#: ones back from the last master's end.  One that registers later was away meanwhile; the others told.
ASK_WITHIN = 120.0
#: Chunks remembered as named by servers back from their machine going down (`cut`), at most.
CUT_REMEMBERED = 100_000
WRITER_GONE = "a writer left without ending its session"
UNDER_EARLIER_MASTER = "chunks written under an earlier master"


class FannedMender:
    def __init__(self, mds: MetadataServer) -> None:
        self.mds = mds
        self._conns: dict[str, Connection] = {}
        #: One departed writer's chunks at a time (and one connection per chunk server).
        self._one_at_a_time = asyncio.Lock()
        #: chunk_id -> the servers that named it among those they wrote last, back from their machine
        #: going down (a power cut): its blocks may be torn (`torn_everywhere`).  The oldest forgotten first.
        self.cut: OrderedDict[int, set[int]] = OrderedDict()
        #: chunk_id -> the replica reads of it go to until its replicas are compared (None: not read yet).
        self.pending: dict[int, int | None] = {}
        #: Servers back from their machine going down that have not named the chunks they wrote last yet
        #: (`server_back`): any of their replicas may have lost unsynced writes the others hold.
        self.reporting: set[int] = set()
        #: chunk_id -> the batches (`writer_gone`) that still have it to compare, for those with one or more.
        self._batches: dict[int, int] = {}

    def start(self) -> None:
        """On becoming master: no chunk server asked yet (each one back from a power cut names its chunks again)."""
        self.cut.clear()
        self.pending.clear()
        self.reporting.clear()

    def narrows(self, chunk_id: int) -> bool:
        """Whether reads of `chunk_id` may go to fewer replicas than its map names (`read_from`)."""
        return bool(self.reporting) or chunk_id in self.pending

    def read_from(self, chunk_id: int, replicas: list[list[Any]]) -> list[list[Any]]:
        """Of a chunk's `replicas` (its map's, [cs_id, addr] in order), the ones to read from.

        A power cut of one server loses the unsynced writes its replicas had, which the others still
        hold, and which their program, whose mount lived on, was told were done.  So, while another
        replica's server did not go down: none on a server that has not named the chunks it wrote last
        yet (`reporting`), and, of a pending chunk, none whose server named it (`cut`).  A pending
        chunk's reads then go to one replica: the one the first read went to while its server holds
        it, else the first; the comparison copies from it."""
        reporting = self.reporting
        if chunk_id not in self.pending:
            return [r for r in replicas if r[0] not in reporting] or replicas
        lost = self.cut.get(chunk_id, ())
        whole = [r for r in replicas if r[0] not in lost and r[0] not in reporting] or replicas
        source = self.pending[chunk_id]
        held = [r for r in whole if r[0] == source] or whole[:1]
        if held:
            self.pending[chunk_id] = held[0][0]
        return held

    def torn_everywhere(self, chunk: Chunk) -> bool:
        """Whether a block of `chunk` bad on every replica may be one a power cut tore: every replica's server
        came back from its machine going down and named the chunk among those it wrote last (and takes
        CS_TAKE_BLOCKS)."""
        named, live = self.cut.get(chunk.chunk_id), self.mds.live
        return bool(named) and bool(chunk.replicas) and named.issuperset(chunk.replicas) and all(
            cs in live and FEATURE_TAKE_BLOCKS in live[cs].features for cs in chunk.replicas)

    async def writer_gone(self, chunk_ids: set[int], why: str = WRITER_GONE) -> None:
        """Mend the chunks a writer that left without a word was let fan out to (in the background)."""
        for chunk_id in chunk_ids:
            self.pending.setdefault(chunk_id, None)
            self._batches[chunk_id] = self._batches.get(chunk_id, 0) + 1
        waiting = set(chunk_ids)
        try:
            async with self._one_at_a_time:
                await self._mend(waiting, why)
        finally:
            for chunk_id in waiting:  # given up
                self._done(chunk_id)

    def _done(self, chunk_id: int) -> None:
        """One batch is done with `chunk_id` (compared, or given up): reads go anywhere again, unless another
        batch still has it to compare.  A server that names it again (cut again) has it compared again."""
        left = self._batches.pop(chunk_id, 0) - 1
        if left > 0:
            self._batches[chunk_id] = left
        else:
            self.pending.pop(chunk_id, None)

    async def server_back(self, server: LiveServer) -> None:
        """A chunk server registered with this new master: mend the chunks clients lately fanned out to it, and
        have the files written past their size before the election trimmed once nobody holds them."""
        try:
            await self._server_back(server)
        finally:
            self._reported(server)

    def _reported(self, server: LiveServer) -> None:
        """`server` named the chunks it wrote last (or cannot): read from again, unless it registered anew since."""
        now = self.mds.live.get(server.cs_id)
        if now is None or now is server:
            self.reporting.discard(server.cs_id)

    async def _server_back(self, server: LiveServer) -> None:
        mds = self.mds
        age = time.monotonic() - mds.master_since
        new_master = age <= ASK_WITHIN
        # A server whose machine went down under it names the chunks it wrote last (cs/clean_stop.py): a
        # power cut may have left their replicas different, whoever the master is.
        if FEATURE_FANNED_REPORT not in server.features or not (new_master or server.unclean):
            return
        ask: dict[str, float] = {"within": FANNED_REPORT_WINDOW}
        if FEATURE_WRITTEN_REPORT in server.features and new_master:
            ask["before"] = age  # a chunk written since may be a live writer's, whose size is still to come
        try:
            reply, _ = await server.conn.call(Msg.CS_FANNED, ask, timeout=MEND_TIMEOUT)
            reported = int_list(reply["chunks"], "chunks", FANNED_REPORT_MAX)
            ends = int_pairs(reply.get("ends", []), "ends")
        except ChunkFSError as exc:
            logger.warning("could not ask CS#%d which chunks writers lately sent to every replica at once (%s): "
                           "if a writer died with the last master, their replicas may differ, and a file it "
                           "wrote past its size may show those bytes when it grows", server.cs_id, exc)
            return
        if ends:
            try:
                await mds.reaper.written_past_size(ends, f"CS#{server.cs_id}")
            except ChunkFSError as exc:  # (no longer the master: the next one asks again)
                logger.info("CS#%d's report of chunks written past their files' size not judged: %s",
                            server.cs_id, exc)
        if server.unclean:
            self._note_cut(server.cs_id, reported)
        term = mds.log.term
        todo = set()
        for chunk_id in reported:
            if chunk_id in self._batches:  # (still to compare: named already, by another replica's server, say)
                continue
            chunk = mds.store.chunk(chunk_id)
            if chunk is None or len(chunk.replicas) < 2:
                continue
            if first_version(chunk) and chunk.version >> VERSION_TERM_SHIFT == term and not server.unclean:
                continue  # allocated by this master, which knows its writer (fan_grants.py)
            todo.add(chunk_id)
        self._reported(server)  # (its chunks to compare are pending from here on, below)
        if todo:
            logger.info("CS#%d: %d chunk(s) written lately to every replica at once, under an earlier master: "
                        "their replicas are compared (a writer may have died with it)", server.cs_id, len(todo))
            await self.writer_gone(todo, UNDER_EARLIER_MASTER)

    def _note_cut(self, cs_id: int, chunk_ids: list[int]) -> None:
        for chunk_id in chunk_ids:
            self.cut.setdefault(chunk_id, set()).add(cs_id)
            self.cut.move_to_end(chunk_id)
        while len(self.cut) > CUT_REMEMBERED:
            self.cut.popitem(last=False)

    async def _mend(self, waiting: set[int], why: str) -> None:
        """Compare the chunks `waiting`, each taken off it once compared (what is left was given up)."""
        mended = copied = 0
        total = len(waiting)
        for _ in range(MEND_TRIES):
            first_failure = ""
            for chunk_id in sorted(waiting):
                if not self.mds.raft.is_leader():
                    return  # the next master cannot know them: see fan_grants.py
                try:
                    blocks = await self.make_same(chunk_id)
                except ChunkFSError as exc:
                    # A server not there (yet), or one that failed a request: tried again below.
                    first_failure = first_failure or f"chunk {chunk_id:#x}: {exc}"
                    continue
                waiting.discard(chunk_id)
                self._done(chunk_id)
                mended += blocks > 0
                copied += blocks
            if not waiting:
                break
            # One line a pass, not one a chunk (a probe: 11,464 lines while a server was away).
            logger.info("%s: the replicas of %d chunk(s) not compared yet (%s); trying again in %g s", why,
                        len(waiting), first_failure, MEND_RETRY)
            await asyncio.sleep(MEND_RETRY)
        if waiting:
            logger.warning("%s: the replicas of %d chunk(s) written to every replica at once could not be compared "
                           "in %g s (their servers not all connected, or failing): %s", why, len(waiting),
                           MEND_RETRY * MEND_TRIES, ",".join(f"{c:#x}" for c in sorted(waiting)[:20]))
        if copied:
            logger.warning("%s: %d of %d chunk(s) written to every replica at once had replicas that differed; "
                           "%d block(s) copied to make them the same", why, mended, total, copied)
        elif not waiting:
            logger.info("%s: the replicas of the %d chunk(s) written to every replica at once are the same", why,
                        total)

    async def make_same(self, chunk_id: int) -> int:
        """Make the replicas of `chunk_id` hold the same bytes (the ones of the replica that took the most of its
        writer's writes, else of the one reads went to, else of its first); how many blocks were copied."""
        return (await self._make_same(chunk_id, []))[0]

    async def take_torn(self, chunk_id: int, blocks: list[int]) -> list[int]:
        """Blocks bad on every replica of a chunk `torn_everywhere`: taken as they are on the first replica and
        copied to the others (the module's docstring); the ones taken (the others no longer failed there:
        taken by a report of another replica meanwhile)."""
        return (await self._make_same(chunk_id, blocks))[1]

    async def _make_same(self, chunk_id: int, torn: list[int]) -> tuple[int, list[int]]:
        """(blocks copied, blocks of `torn` taken as they are on the first replica)."""
        mds = self.mds
        chunk = mds.store.chunk(chunk_id)
        if chunk is None:
            return 0, []  # removed meanwhile
        async with mds.chunks.lock(chunk.ino, chunk.index):
            chunk = mds.store.chunk(chunk_id)
            if chunk is None:
                return 0, []
            missing = [cs for cs in chunk.replicas if not mds.chunks.holds(cs, chunk_id)]
            if missing:
                raise Unavailable(f"chunk {chunk_id:#x}: CS {','.join(map(str, missing))} not connected")
            # Not before a server back from a power cut has named what it wrote last: its replica may have
            # lost what the others hold, and would not be known for it (`cut`) when the copy's source is chosen.
            if reporting := [cs for cs in chunk.replicas if cs in self.reporting]:
                raise Unavailable(f"chunk {chunk_id:#x}: CS {','.join(map(str, reporting))} back from a power cut, "
                                  "not done naming the chunks it wrote last")
            # A new version first: every writer's next write waits on this lock for the new map.
            chunk = await mds.move_on(chunk)
            replicas = replica_list(mds._map(chunk.ino, chunk)["replicas"], "replicas")
            # Copied from: a replica whose machine did not go down since the writes (`read_from`), and of
            # those the one reads went to meanwhile.
            source, lost = self.pending.get(chunk_id), self.cut.get(chunk_id, ())
            replicas.sort(key=lambda r: (r[0] in lost, r[0] != source))
            at = {"chunk_id": chunk_id, "version": chunk.version}
            # A block a power cut tore on the first replica, where it may have: taken as it is there.
            first = replicas[0][0] if replicas and self.torn_everywhere(chunk) else None
            taken = await self._take(first, at, torn) if torn and first is not None else []
            if len(replicas) < 2:
                return 0, taken
            live = mds.live
            counted = all(cs in live and FEATURE_FANNED_COUNTS in live[cs].features for cs, _ in replicas)
            tables, counts = [], []
            for _, addr in replicas:
                reply, _ = await (await self._conn(addr)).call(
                    Msg.CS_CHECKSUMS, {**at, "fanned": True} if counted else at, timeout=MEND_TIMEOUT)
                tables.append([int(c) for c in reply["crcs"]])
                counts.append(reply.get("fanned_writes"))
            if first is None and None not in counts:
                # The replica that took the most of the writer's writes took every one another did: copied
                # from, every reader's bytes only go forward (cs/recent_writes.py).  (Stable: among equals,
                # the one reads went to stays first.)
                order = sorted(range(len(replicas)), key=lambda i: -counts[i])
                replicas, tables = [replicas[i] for i in order], [tables[i] for i in order]
            source = await self._conn(replicas[0][1])
            block = mds.node.cluster.chunk_size // max(1, len(tables[0]))
            differ = {i for table in tables[1:] for i, (a, b) in enumerate(zip(tables[0], table, strict=True))
                      if a != b}
            written: dict[int, int] = {}  # cs_id -> blocks written there
            # Block by block, each read from the first replica once, and taken there first if a cut tore it:
            # taken, its checksum changes, and every other replica gets it.
            for i in sorted(differ | set(taken)):
                read = {**at, "offset": i * block, "length": block}
                try:
                    _, data = await source.call(Msg.CS_READ, read, timeout=MEND_TIMEOUT)
                except ChecksumMismatch:
                    if first is None or not await self._take(first, at, [i]):
                        raise
                    taken.append(i)
                    _, data = await source.call(Msg.CS_READ, read, timeout=MEND_TIMEOUT)
                for (cs_id, addr), table in zip(replicas[1:], tables[1:], strict=True):
                    if table[i] != tables[0][i] or i in taken:
                        await (await self._conn(addr)).call(
                            Msg.CS_WRITE, {**at, "offset": i * block, "chain": [], "sync": False}, data,
                            timeout=MEND_TIMEOUT)
                        written[cs_id] = written.get(cs_id, 0) + 1
            for cs_id, addr in replicas[1:]:
                if cs_id in written:
                    await (await self._conn(addr)).call(Msg.CS_FSYNC, {**at, "chain": []}, timeout=MEND_TIMEOUT)
                    logger.warning("chunk %#x: %d block(s) of CS#%d's replica differed from CS#%d's (a write its "
                                   "writer had sent to some replicas only, or a power cut); copied over", chunk_id,
                                   written[cs_id], cs_id, replicas[0][0])
            return sum(written.values()), taken

    async def _take(self, cs_id: int, at: dict[str, Any], blocks: list[int]) -> list[int]:
        """Have CS `cs_id` take `blocks` of its replica as they are on its disk; the ones that were torn."""
        reply = await self.mds._cs_call(cs_id, Msg.CS_TAKE_BLOCKS, {**at, "blocks": sorted(set(blocks))})
        taken = int_list(reply["taken"], "taken", MAX_BLOCKS)
        if taken:
            logger.warning("chunk %#x: block(s) %s of CS#%d's replica failed their checksums after a power cut of "
                           "every server holding the chunk (torn: an unsynced write's bytes and checksum reached "
                           "the disk apart); taken as they are there", at["chunk_id"], taken, cs_id)
        return taken

    async def _conn(self, addr: str) -> Connection:
        conn = self._conns.get(addr)
        if conn is None or conn.closed:
            conn = self._conns[addr] = await connect(addr, self.mds.creds, timeout=3.0, silence_limit=SILENCE_LIMIT)
        return conn

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()
