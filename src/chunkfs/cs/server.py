"""The chunk server: serves replica reads and writes, forwards writes down the chain.

A write arrives at the first replica of the chain with the rest of the chain in
its header.  This server sends it on to the next replica *while* it writes
locally, and answers only when its own write and the whole rest of the chain
have succeeded: an acknowledged write is on every replica.  Writes to one chunk
are serialised here (a striped lock held across the local write and the
forward), so every replica applies overlapping writes in the same order.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from chunkfs.common import folder_watch
from chunkfs.common.checksum import Buffer
from chunkfs.common.config import NodeConfig
from chunkfs.common.errors import ChunkFSError, InvalidArgument, NoSpace, ProtocolError, Unavailable
from chunkfs.common.knobs import lowered
from chunkfs.common.secret_files import SecretFiles
from chunkfs.common.timings import TIMINGS
from chunkfs.cs import clean_stop
from chunkfs.cs.chunk_store import ChunkStore
from chunkfs.cs.master_lease import MasterLease
from chunkfs.cs.mds_link import MdsLink
from chunkfs.cs.metrics import CsStats
from chunkfs.cs.recent_writes import RecentWrites
from chunkfs.cs.replicator import Replicator
from chunkfs.cs.scrubber import Scrubber
from chunkfs.cs.stripe_locks import StripeLocks
from chunkfs.cs.sync_policy import SyncPolicy
from chunkfs.protocol.frame import MAX_IO_SIZE
from chunkfs.protocol.messages import (
    DELETE_BATCH,
    FANNED_REPORT_WINDOW,
    LOCAL_MARK_FILE,
    MAX_BLOCKS,
    SMALL_WRITE_MAX,
    Msg,
    WritePart,
    first_write,
    int_list,
    replica_list,
    write_parts,
    write_pieces,
)
from chunkfs.protocol.peer_connections import PeerConnections
from chunkfs.protocol.replica_calls import Sent, answered, request_each
from chunkfs.protocol.rpc import SILENCE_LIMIT, Connection, Credentials, Payload, Reply, RpcServer, connect
from chunkfs.protocol.tls import node_tls

logger = logging.getLogger(__name__)
T = TypeVar("T")

WRITE_LOCK_STRIPES = 256
_SERVE_TIMING = {Msg.CS_WRITE: "serve.CS_WRITE", Msg.CS_WRITE_CHUNKS: "serve.CS_WRITE_CHUNKS"}
#: Below the client's own wait for a write (CALL_TIMEOUT, 30 s): when a replica further down freezes,
#: this server gives up on it first and names it, so the master drops the frozen replica; with equal
#: timeouts the client's fired first and blamed this, healthy, server (found by a fault probe).
FORWARD_TIMEOUT = float(lowered("CHUNKFS_FORWARD_TIMEOUT", 20))


class ChunkServer:
    def __init__(self, directory: Path, node: NodeConfig, secret: bytes) -> None:
        self.directory = directory
        self.node = node
        self.creds = Credentials(node.cluster.name, secret, "cs", f"cs{node.node_id or 'new'}",
                                 tls=node_tls(directory, node.cluster), secret_files=SecretFiles(directory, secret),
                                 uuid=node.cluster.uuid)
        self.store = ChunkStore(directory / "data", node.cluster.chunk_size)
        self.rpc = RpcServer(self.creds, self.handle, prompt_handler=self.handle_now)
        self.link = MdsLink(self, node, secret)
        #: Replicas are served only while a master's answers renew this (master_lease.py).
        self.lease = MasterLease()
        self._locks = StripeLocks(WRITE_LOCK_STRIPES)
        #: Which syncs run on the loop (sync_policy.py).
        self.syncs = SyncPolicy()
        #: Connections to the other chunk servers (forwards, copies), each made once at a time and none
        #: waiting for another's: a frozen peer costs the forwards to it one handshake timeout (peer_connections.py).
        self._peers = PeerConnections(lambda addr: connect(addr, self.creds, silence_limit=SILENCE_LIMIT))
        #: Requests being served now; reported to the master as load.
        self.in_flight = 0
        #: Writes from clients and other servers handed to tasks and not done yet: while there is one,
        #: no later write is done at once (`handle_now`), so a chunk's writes are done in their order.
        self._writes_waiting = 0
        #: Self-healing: copies from other servers (replicator.py), checksum scrubbing (scrubber.py).
        self.replicator = Replicator(self)
        self.scrubber = Scrubber(self)
        #: I/O counters and /metrics (cs/metrics.py).
        self.stats = CsStats(self)
        #: Ends, with the reason, if the data directory goes away while this server runs.
        self._disk_watch: asyncio.Task[str] | None = None
        #: What a mount on this machine reads from LOCAL_MARK_FILE to prove it sees this store (CS_LOCAL).
        self.local_mark = secrets.token_hex(16)
        #: The chunks clients lately wrote to this replica alone, and how far writes reached into each,
        #: for a new master (recent_writes.py).
        self.recent = RecentWrites()
        #: Its machine went down under it last time (clean_stop.py): the master asks it for those chunks.
        self.unclean = False

    async def start(self) -> None:
        self._publish_local_mark()
        never_synced: list[int] = []
        if await asyncio.to_thread(clean_stop.begin, self.store.root):
            # Its machine went down under it: what it had not synced may have reached the disk on some
            # replicas and not others.  Named to the master as chunks written to this replica alone.
            last = await asyncio.to_thread(clean_stop.written_last, self.store)
            for chunk_id in last:
                self.recent.fanned(chunk_id)
            self.unclean = True
            never_synced = await asyncio.to_thread(clean_stop.never_synced, self.store, last)
            logger.warning("this chunk server's machine went down under it (a power cut, a crash): the master "
                           "compares the %d chunk(s) it wrote last with their other replicas; %d of them were "
                           "never synced here", len(last), len(never_synced))
        await self.rpc.listen(self.node.addr)
        await self.stats.start()
        logger.info(
            "CS of cluster %r serving %s on %s (%d replicas)",
            self.node.cluster.name, self.directory, self.node.addr, self.store.replica_count(),
        )
        self.link.start()
        self.scrubber.start()
        if never_synced:
            self.scrubber.report_now(never_synced)
        self._disk_watch = asyncio.get_running_loop().create_task(self._watch_disk())

    async def _watch_disk(self) -> str:
        """Why this server must stop, once its data directory is gone (common/folder_watch.py)."""
        path = self.store.chunks_dir
        why = await folder_watch.watch(path)
        return (f"the data directory {path} {why} while this server ran: its replicas are gone; stopping "
                "(the master copies them again from the other servers); start this server again once its "
                "disk is back or repaired")

    async def failed(self) -> str:
        """Returns (the reason) when this server must stop: its data directory is gone (`_watch_disk`), or
        the master says it was removed from the cluster (rm-cs)."""
        assert self._disk_watch is not None, "failed() before start()"
        done, _ = await asyncio.wait([self._disk_watch, self.link.task], return_when=asyncio.FIRST_COMPLETED)
        return done.pop().result()

    async def stop(self) -> None:
        if self._disk_watch is not None:
            self._disk_watch.cancel()
        self.scrubber.stop()
        await self.link.stop()
        await self.stats.stop()
        await self.rpc.close()
        self._peers.close()
        self.store.close()
        clean_stop.end(self.store.root)

    def _publish_local_mark(self) -> None:
        """Write this run's mark where CS_LOCAL says, readable by whoever may read the replicas.

        Written whole under another name and renamed, so a mount never reads half of it; a new one
        at every start, so a mount that learnt the folder of an earlier run of this server asks again.
        """
        path = self.store.root / LOCAL_MARK_FILE
        tmp = path.with_name(f".{LOCAL_MARK_FILE}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, self.local_mark.encode())
        finally:
            os.close(fd)
        os.rename(tmp, path)

    # -- requests from clients and other chunk servers ---------------------------

    def handle_now(self, conn: Connection, msg: Msg, h: dict[str, Any], payload: Payload) -> Reply | None:
        """Write a replica's share of a small write (or read a small read) at once, on the event loop,
        if nothing must go first.

        What a head sends to the other replicas (a CS_WRITE with no chain after
        this server, a CS_WRITE_CHUNKS whose parts have none) waits for nothing
        but this server's own page cache: done here, it skips a task and its
        coroutines (a sixth of the CPU such a write cost, measured).  A chunk's
        writes are still done in the order they arrive: only while no write
        that came before waits in a task (`_writes_waiting`) and no one holds
        the chunk's lock (a head's write from this server, a master's command).
        None: `handle` serves it in a task (a head's write, a synced or large
        one, anything else).
        """
        if msg == Msg.CS_READ:  # (after the writes that came before it, as in a task)
            if self._writes_waiting or h["length"] > INLINE_IO_MAX or not conn.writable or not self.lease.holds():
                return None
            return {}, self._read_now(h)
        if msg != Msg.CS_WRITE and msg != Msg.CS_WRITE_CHUNKS:
            return None
        if self._writes_waiting or len(payload) > INLINE_IO_MAX or not conn.writable or (
                not self._write_now(h, payload) if msg == Msg.CS_WRITE else not self._write_chunks_now(h, payload)):
            self._writes_waiting += 1  # `handle` counts it done
            return None
        self._note_fanned(conn, msg, h)
        return {}, b""

    def _note_fanned(self, conn: Connection, msg: Msg, h: dict[str, Any]) -> None:
        """A client's write to this replica alone (no chain after it): its writer fans out (recent_writes.py)."""
        if conn.peer_role != "client":
            return  # a head sending on (a chunk server), a master mending
        if msg == Msg.CS_WRITE:
            if not h["chain"]:
                self.recent.fanned(h["chunk_id"])
            return
        for part in h["parts"]:  # (checked by the write that used them)
            if not part[2]:
                self.recent.fanned(part[0])

    def _write_now(self, h: dict[str, Any], payload: Payload) -> bool:
        """A CS_WRITE for this replica alone, done here at once; False: it must go to a task."""
        chunk_id = h["chunk_id"]
        if h["chain"] or h["sync"] or not self._locks.free((chunk_id,)):
            return False
        started = time.perf_counter()
        try:
            pieces = self._pieces(h, payload)
            self._own_disk(self._write_pieces, chunk_id, h["version"], pieces, payload, False)
        except BaseException as exc:
            self.stats.write.failed(exc)
            raise
        self.syncs.wrote(chunk_id, len(payload))
        self._wrote_now(Msg.CS_WRITE, len(payload), len(pieces), started)
        return True

    def _write_chunks_now(self, h: dict[str, Any], payload: Payload) -> bool:
        """A CS_WRITE_CHUNKS for this replica alone, done here at once; False: it must go to a task.

        A head's request (parts with replicas to send on) is told apart before its parts are
        checked: the task checks them, once (a malformed request too, and fails it there).
        """
        raw = h["parts"]
        if not isinstance(raw, list) or not all(isinstance(p, list) and len(p) == 4 and p[2] == [] for p in raw):
            return False
        parts = write_parts(raw, len(payload))
        if not self._locks.free(part.chunk_id for part in parts):
            return False
        started = time.perf_counter()
        try:
            self._check_parts(parts)
            self._own_disk(self._write_parts, parts, memoryview(payload))
        except BaseException as exc:
            self.stats.write.failed(exc)
            raise
        for part in parts:
            self.syncs.wrote(part.chunk_id, part.end - part.start)
        self._wrote_now(Msg.CS_WRITE_CHUNKS, len(payload), sum(len(part.pieces) for part in parts), started)
        return True

    def _read_now(self, h: dict[str, Any]) -> bytes:
        """A small CS_READ, here on the loop: a pread from the page cache, or one disk read of 128 KiB at most."""
        started = time.perf_counter()
        try:
            data = self.store.read(h["chunk_id"], h["version"], h["offset"], h["length"])
        except BaseException as exc:
            self.stats.read.failed(exc)
            raise
        self._read_done(len(data), started)
        return data

    def _read_done(self, nbytes: int, started: float) -> None:
        took = time.perf_counter() - started
        self.stats.read.record(nbytes, took)
        TIMINGS.record("serve.CS_READ", took)

    def _wrote_now(self, msg: Msg, nbytes: int, writes: int, started: float) -> None:
        """Count a write done at once: in the server's own steps and as the whole of its serving."""
        took = time.perf_counter() - started
        TIMINGS.record("cs.own_write", took)
        TIMINGS.record(_SERVE_TIMING[msg], took)
        self.stats.write.record(nbytes, took, writes)

    async def handle(self, conn: Connection, msg: Msg, h: dict[str, Any], payload: bytes) -> Reply:
        self.in_flight += 1
        try:
            if msg == Msg.CS_READ:
                if not self.lease.holds():
                    await self.lease.wait(self.creds.node)
                if h["length"] <= INLINE_IO_MAX:
                    return {}, self._read_now(h)
                if h["length"] > MAX_IO_SIZE:
                    # Clients read in pieces of at most this; a larger read was answered whole, up to a
                    # chunk (256 MiB) held per request until the peer read it (a hostile-peer probe).
                    raise InvalidArgument(f"a read of at most {MAX_IO_SIZE} bytes at a time, not {h['length']}")
                started = time.perf_counter()
                try:  # try blocks cost nothing until they catch (Python 3.11+)
                    data = await asyncio.to_thread(
                        self.store.read, h["chunk_id"], h["version"], h["offset"], h["length"])
                except BaseException as exc:
                    self.stats.read.failed(exc)
                    raise
                self._read_done(len(data), started)
                return {}, data
            if msg == Msg.CS_WRITE or msg == Msg.CS_WRITE_CHUNKS:
                started = time.perf_counter()
                try:
                    if msg == Msg.CS_WRITE:
                        writes = await self._write(h, payload)
                    else:
                        writes = await self._write_chunks(h, payload)
                    self._note_fanned(conn, msg, h)
                except BaseException as exc:
                    self.stats.write.failed(exc)
                    raise
                finally:
                    self._writes_waiting -= 1  # counted by `handle_now`, which passed it on
                took = time.perf_counter() - started
                self.stats.write.record(len(payload), took, writes)
                TIMINGS.record(_SERVE_TIMING[msg], took)
                return {}, b""
            if msg == Msg.CS_FSYNC:
                started = time.perf_counter()
                await self._fsync(h)
                TIMINGS.since("serve.CS_FSYNC", started)
                return {}, b""
            if msg == Msg.CS_LOCAL:
                # `lease`: whether the mount may read the files now, or only once a read was answered.
                return {"root": str(self.store.root.resolve()), "mark": self.local_mark,
                        "lease": self.lease.holds()}, b""
            if msg == Msg.CS_CHECKSUMS:
                crcs = await asyncio.to_thread(self.store.block_checksums, h["chunk_id"], h["version"])
                reply: dict[str, Any] = {"crcs": crcs}
                if h.get("fanned") and (count := self.recent.fanned_writes(h["chunk_id"])) is not None:
                    reply["fanned_writes"] = count
                return reply, b""
            if msg == Msg.CS_TRACK_WRITES:
                return {"token": await asyncio.to_thread(self.store.track_writes, h["chunk_id"], h["version"])}, b""
            if msg == Msg.CS_WRITTEN_SINCE:
                return {"blocks": self.store.written_since(h["chunk_id"], h["token"])}, b""
            if msg == Msg.PING:
                return {"role": "cs", "node": self.creds.node}, b""
            raise ProtocolError(f"{msg.name} is not served by a chunk server")
        finally:
            self.in_flight -= 1

    async def _write(self, h: dict[str, Any], payload: bytes) -> int:
        """Write here and on the replicas after this one; how many writes that was (its pieces).

        Under the chunk's lock only the ordering work is done: the request is
        sent on (so every replica receives writes to a chunk in the order this
        one applies them) and written here.  The other replicas' answers are
        awaited outside the lock, so writes to one chunk pipeline (a VM's
        queue of random writes) instead of each waiting for a round trip.
        A request with `pieces` (small writes a mount sent together) goes on
        as one request and its pieces are written here in their order.
        """
        chunk_id, sync = h["chunk_id"], h["sync"]
        pieces = self._pieces(h, payload)
        # A synced write (a mount's write-through) is a small write and its sync: on the loop when
        # a sync of that chunk alone would be (sync_policy.py).
        inline = len(payload) <= INLINE_IO_MAX and (not sync or self.syncs.sync_inline(chunk_id, len(payload)))
        chain = replica_list(h["chain"], "chain")
        async with self._locks.hold((chunk_id,)):
            answers = await self._send_on(Msg.CS_WRITE, chain, h, payload)
            started = time.perf_counter()
            try:
                await self._own_io(inline, self._write_pieces, chunk_id, h["version"], pieces, payload, sync)
            except BaseException:
                await answered(answers)  # nothing left waiting for its answer
                raise
            took = time.perf_counter() - started
            TIMINGS.record("cs.own_write_synced" if sync else "cs.own_write", took)
            if sync:
                self.syncs.synced(took)
                self.syncs.wrote(chunk_id, 0)  # counted again from nothing: all of it is on the disk
            else:
                self.syncs.wrote(chunk_id, len(payload))
        if answers:
            started = time.perf_counter()
            await answered(answers)
            TIMINGS.since("cs.replicas_answered", started)
        return len(pieces)

    def _pieces(self, h: dict[str, Any], payload: Payload) -> list[tuple[int, int]]:
        """A CS_WRITE's (offset, length) pieces, all checked before any is written or sent on; noted as
        written (recent_writes.py)."""
        if "pieces" not in h:
            self.recent.wrote(h["chunk_id"], h["offset"] + len(payload))
            return [(h["offset"], len(payload))]
        pieces = write_pieces(h["pieces"], len(payload))
        if h["sync"] or len(payload) > SMALL_WRITE_MAX:
            raise ProtocolError(f"a CS_WRITE of pieces is of small writes (at most {SMALL_WRITE_MAX} bytes "
                                "in all), never synced")
        for offset, length in pieces:
            self.store.check_range(h["chunk_id"], offset, length)
        self.recent.wrote(h["chunk_id"], max(offset + length for offset, length in pieces))
        return pieces

    def _check_parts(self, parts: list[WritePart]) -> None:
        """All the parts' pieces checked, before any is written or sent on; noted as written (recent_writes.py)."""
        for part in parts:
            for offset, length in part.pieces:
                self.store.check_range(part.chunk_id, offset, length)
        for part in parts:
            self.recent.wrote(part.chunk_id, max(offset + length for offset, length in part.pieces))

    async def _write_chunks(self, h: dict[str, Any], payload: bytes) -> int:
        """Small writes to several chunks (CS_WRITE_CHUNKS), as `_write` does each chunk's, in one request.

        The locks of all the parts' chunks are taken together (stripe_locks.py);
        each other replica gets one request with the parts of the chunks it
        holds, and this server writes its parts in their order.  A failure of
        any part fails the request: the mount then sends each of its writes
        again, as after a failed CS_WRITE (writing the same bytes twice is
        harmless; an acknowledged write is still on every replica).
        """
        parts = write_parts(h["parts"], len(payload))
        self._check_parts(parts)
        targets: dict[tuple[int, str], list[WritePart]] = {}
        for part in parts:
            for replica in part.chain:
                targets.setdefault(replica, []).append(part)
        view = memoryview(payload)
        async with self._locks.hold(part.chunk_id for part in parts):
            answers = await request_each(Msg.CS_WRITE_CHUNKS, [
                (cs_id, addr, {"parts": [part.to_wire([]) for part in mine]},
                 payload if len(mine) == len(parts) else b"".join(view[part.start:part.end] for part in mine))
                for (cs_id, addr), mine in targets.items()
            ], self._peer, FORWARD_TIMEOUT)
            started = time.perf_counter()
            try:
                await self._own_io(len(payload) <= INLINE_IO_MAX, self._write_parts, parts, view)
            except BaseException:
                await answered(answers)
                raise
            TIMINGS.since("cs.own_write", started)
            for part in parts:
                self.syncs.wrote(part.chunk_id, part.end - part.start)
        if answers:
            started = time.perf_counter()
            await answered(answers)
            TIMINGS.since("cs.replicas_answered", started)
        return sum(len(part.pieces) for part in parts)

    def _write_parts(self, parts: list[WritePart], payload: memoryview) -> None:
        for part in parts:
            self._write_pieces(part.chunk_id, part.version, part.pieces, payload[part.start:part.end], False)

    def _write_pieces(
        self, chunk_id: int, version: int, pieces: list[tuple[int, int]], payload: Buffer, sync: bool
    ) -> None:
        view, pos, split = memoryview(payload), 0, []
        for offset, length in pieces:
            split.append((offset, view[pos:pos + length]))
            pos += length
        self.store.write_pieces(chunk_id, version, split, sync)

    async def _fsync(self, h: dict[str, Any]) -> None:
        chain = replica_list(h["chain"], "chain")
        answers = await self._send_on(Msg.CS_FSYNC, chain, h, b"")
        chunk_id = h["chunk_id"]
        inline = self.syncs.sync_inline(chunk_id)
        try:
            started = time.perf_counter()
            await self._own_io(inline, self.store.fsync, chunk_id, h["version"])
            self.syncs.synced(time.perf_counter() - started)
        finally:
            await answered(answers)

    async def _send_on(
        self, msg: Msg, chain: list[tuple[int, str]], h: dict[str, Any], payload: bytes
    ) -> list[Sent]:
        """Send a write or fsync on to the replicas after this one; their answers, to await.

        Small requests go to each of them at once (one hop instead of a chain
        of them: what a 4 KiB write's latency is made of); large ones go down
        the chain, so this server sends the data once, not once per replica.
        """
        if not chain:
            return []
        if len(payload) <= SMALL_WRITE_MAX:  # larger: each server sends the data on once
            targets = [(cs_id, addr, []) for cs_id, addr in chain]
        else:
            targets = [(chain[0][0], chain[0][1], chain[1:])]
        return await request_each(msg, [
            (cs_id, addr, {**h, "chain": [list(x) for x in rest]}, payload) for cs_id, addr, rest in targets
        ], self._peer, FORWARD_TIMEOUT)

    async def _own_io(self, inline: bool, func: Callable[..., T], *args: Any) -> T:
        """`func(*args)` on this server's disk, on the loop (`inline`) or in a thread; a full or
        failing disk is this replica's fault: the error names this server (`_own_fault`).

        The client then has the master drop this replica (a new version) and
        goes on with the others while at least MIN remain, instead of failing
        the write with ENOSPC or EIO while the other replicas are fine.
        """
        if inline:
            return self._own_disk(func, *args)
        try:
            return await asyncio.to_thread(func, *args)
        except (NoSpace, OSError) as exc:
            raise self._own_fault(exc) from None

    def _own_disk(self, func: Callable[..., T], *args: Any) -> T:
        """`func(*args)` here and now, its disk's failure named as `_own_io` names it."""
        try:
            return func(*args)
        except (NoSpace, OSError) as exc:
            raise self._own_fault(exc) from None

    def _own_fault(self, exc: NoSpace | OSError) -> ChunkFSError:
        me = self.link.cs_id
        if isinstance(exc, NoSpace):
            self.stats.disk_full += 1
            logger.error("CS#%s: disk full in %s: %s", me, self.store.root, exc)
            return NoSpace(f"CS#{me}: {exc}", cs_id=me, disk=str(self.store.root))
        self.stats.disk_errors += 1
        logger.error("CS#%s: disk error in %s: %s", me, self.store.root, exc)
        return Unavailable(f"CS#{me}: disk error in {self.store.root}: {exc.strerror or exc}",
                           cs_id=me, disk=str(self.store.root))

    async def _peer(self, addr: str) -> Connection:
        return await self._peers.get(addr)

    # -- commands from the master ------------------------------------------------

    async def handle_master(self, conn: Connection, msg: Msg, h: dict[str, Any], payload: bytes) -> Reply:
        store = self.store
        if msg == Msg.CS_CREATE_CHUNK:
            # On the loop: a new file, its header and CRC table written, no sync (about 0.2 ms), where
            # the hop to a thread and back cost more and made a small file's allocation wait on it.
            offset = first_write(h, len(payload))
            store.create(h["chunk_id"], h["version"])
            self.recent.born(h["chunk_id"])
            if offset is not None:
                # The chunk's first write, sent with its allocation: written as any write (its checksums,
                # its count towards the next sync) before the master hears that the replica is made.
                write = {"chunk_id": h["chunk_id"], "version": h["version"], "offset": offset, "sync": False,
                         "chain": []}
                started = time.perf_counter()
                try:
                    await self._write(write, payload)
                except BaseException:
                    store.delete_many([h["chunk_id"]])  # not made, then: the master counts this server failed
                    raise
                self.stats.write.record(len(payload), time.perf_counter() - started, 1)
        elif msg == Msg.CS_SET_VERSION:
            async with self._locks.hold((h["chunk_id"],)):
                await asyncio.to_thread(store.set_version, h["chunk_id"], h["old_version"], h["new_version"])
        elif msg == Msg.CS_REPLICATE:
            return await self.replicator.replicate(h), b""
        elif msg == Msg.CS_VERIFY_CHUNK:
            return await self.scrubber.check(h["chunk_id"]), b""
        elif msg == Msg.CS_REPAIR_BLOCKS:
            return await self.replicator.repair_blocks(h), b""
        elif msg == Msg.CS_TAKE_BLOCKS:
            blocks = int_list(h["blocks"], "blocks", MAX_BLOCKS)
            async with self._locks.hold((h["chunk_id"],)):  # between two writes to the chunk
                taken = await asyncio.to_thread(store.take_blocks, h["chunk_id"], h["version"], blocks)
            return {"taken": taken}, b""
        elif msg == Msg.CS_DELETE_CHUNKS:
            ids = int_list(h["chunk_ids"], "chunk_ids", DELETE_BATCH)
            # A truncation's few small chunks on the loop (a master waits for them: mds/chunks.py `delete_cut`);
            # large ones in a thread: unlinking them takes the disk tenths of a second, and the loop must serve.
            inline = len(ids) <= INLINE_DELETES_MAX and store.allocated(ids) <= INLINE_DELETES_BYTES
            await _disk_io(inline, store.delete_many, ids)
        elif msg == Msg.CS_TRUNCATE_CHUNK:
            async with self._locks.hold((h["chunk_id"],)):  # between two writes to the chunk, on every replica
                await asyncio.to_thread(store.truncate, h["chunk_id"], h["version"], h["length"], h.get("new_version"))
            self.recent.cut(h["chunk_id"], h["length"])
        elif msg == Msg.CS_FANNED:
            within = h["within"]
            if not 0 <= within <= FANNED_REPORT_WINDOW:  # (also NaN)
                raise InvalidArgument(f"CS_FANNED: within is 0 to {FANNED_REPORT_WINDOW:g} seconds, not {within!r}")
            reply: dict[str, Any] = {"chunks": self.recent.fanned_since(within)}
            if "before" in h:
                if not 0 <= h["before"] <= within:
                    raise InvalidArgument(f"CS_FANNED: before is 0 to within ({within:g}) seconds, not {h['before']!r}")
                reply["ends"] = [list(pair) for pair in self.recent.ends_between(within, h["before"])]
            return reply, b""
        elif msg == Msg.PING:
            return {"role": "cs", "node": self.creds.node}, b""
        else:
            raise ProtocolError(f"{msg.name} is not a master command")
        logger.debug("master command %s chunk %#x done", msg.name, h.get("chunk_id", 0))
        return {}, b""



#: Reads and writes up to this size run on the event loop itself: a 4 KiB
#: pread or pwrite into the page cache takes microseconds, while a hop to a
#: worker thread and back costs tens of them, on every replica of the chain.
#: Larger ones, and anything that syncs, go to a thread so the loop keeps serving.
INLINE_IO_MAX = 128 << 10
#: Deletions of up to this many replicas (no sync: `ChunkStore.delete_many`), holding up to this many
#: bytes of disk in all, run on the loop as well (about 0.5 ms per MiB to unlink, measured).
INLINE_DELETES_MAX = 4
INLINE_DELETES_BYTES = 1 << 20


async def _disk_io(inline: bool, func: Callable[..., T], *args: Any) -> T:
    return func(*args) if inline else await asyncio.to_thread(func, *args)
