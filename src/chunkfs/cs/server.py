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
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from chunkfs.common.config import NodeConfig
from chunkfs.common.errors import ChunkFSError, NoSpace, ProtocolError, Unavailable
from chunkfs.cs.chunk_store import ChunkStore
from chunkfs.cs.mds_link import MdsLink
from chunkfs.cs.metrics import CsStats
from chunkfs.cs.replicator import Replicator
from chunkfs.cs.scrubber import Scrubber
from chunkfs.protocol.messages import Msg, replica_list
from chunkfs.protocol.rpc import Connection, Credentials, Reply, RpcServer, connect

logger = logging.getLogger(__name__)
T = TypeVar("T")

WRITE_LOCK_STRIPES = 256
FORWARD_TIMEOUT = 30.0


class ChunkServer:
    def __init__(self, directory: Path, node: NodeConfig, secret: bytes) -> None:
        self.directory = directory
        self.node = node
        self.creds = Credentials(node.cluster.name, secret, "cs", f"cs{node.node_id or 'new'}")
        self.store = ChunkStore(directory / "data", node.cluster.chunk_size)
        self.rpc = RpcServer(self.creds, self.handle)
        self.link = MdsLink(self, node, secret)
        self._locks = [asyncio.Lock() for _ in range(WRITE_LOCK_STRIPES)]
        self._peers: dict[str, Connection] = {}
        self._peer_lock = asyncio.Lock()
        #: Requests being served now; reported to the master as load.
        self.in_flight = 0
        #: Self-healing: copies from other servers (replicator.py), checksum scrubbing (scrubber.py).
        self.replicator = Replicator(self)
        self.scrubber = Scrubber(self)
        #: I/O counters and /metrics (cs/metrics.py).
        self.stats = CsStats(self)

    async def start(self) -> None:
        await self.rpc.listen(self.node.addr)
        await self.stats.start()
        logger.info(
            "CS of cluster %r serving %s on %s (%d replicas)",
            self.node.cluster.name, self.directory, self.node.addr, self.store.replica_count(),
        )
        self.link.start()
        self.scrubber.start()

    async def stop(self) -> None:
        self.scrubber.stop()
        await self.link.stop()
        await self.stats.stop()
        await self.rpc.close()
        for conn in self._peers.values():
            conn.close()
        self.store.close()

    # -- requests from clients and other chunk servers ---------------------------

    async def handle(self, conn: Connection, msg: Msg, h: dict[str, Any], payload: bytes) -> Reply:
        self.in_flight += 1
        try:
            if msg == Msg.CS_READ:
                started = time.perf_counter()
                try:  # try blocks cost nothing until they catch (Python 3.11+)
                    data = await _disk_io(
                        h["length"] <= INLINE_IO_MAX,
                        self.store.read, h["chunk_id"], h["version"], h["offset"], h["length"])
                except BaseException:
                    self.stats.read.errors += 1
                    raise
                self.stats.read.record(len(data), time.perf_counter() - started)
                return {}, data
            if msg == Msg.CS_WRITE:
                started = time.perf_counter()
                try:
                    await self._write(h, payload)
                except BaseException:
                    self.stats.write.errors += 1
                    raise
                self.stats.write.record(len(payload), time.perf_counter() - started)
                return {}, b""
            if msg == Msg.CS_FSYNC:
                await self._fsync(h)
                return {}, b""
            if msg == Msg.CS_CHECKSUMS:
                crcs = await asyncio.to_thread(self.store.block_checksums, h["chunk_id"], h["version"])
                return {"crcs": crcs}, b""
            if msg == Msg.PING:
                return {"role": "cs", "node": self.creds.node}, b""
            raise ProtocolError(f"{msg.name} is not served by a chunk server")
        finally:
            self.in_flight -= 1

    async def _write(self, h: dict[str, Any], payload: bytes) -> None:
        chunk_id, inline = h["chunk_id"], len(payload) <= INLINE_IO_MAX and not h["sync"]
        async with self._locks[chunk_id % WRITE_LOCK_STRIPES]:
            await self._here_and_down_chain(Msg.CS_WRITE, h, payload, lambda: _disk_io(
                inline, self.store.write, chunk_id, h["version"], h["offset"], payload, h["sync"]))

    async def _fsync(self, h: dict[str, Any]) -> None:
        await self._here_and_down_chain(
            Msg.CS_FSYNC, h, b"", lambda: asyncio.to_thread(self.store.fsync, h["chunk_id"], h["version"]))

    async def _here_and_down_chain(
        self, msg: Msg, h: dict[str, Any], payload: bytes, local: Callable[[], Awaitable[Any]]
    ) -> None:
        """Do `local` here while the request goes on to the rest of the chain; return when both are done.

        The chain is checked first: a malformed one is refused before anything is written.
        """
        chain = replica_list(h["chain"], "chain")
        forward = asyncio.ensure_future(self._forward(msg, chain, h, payload)) if chain else None
        try:
            await self._on_own_disk(local)
        finally:
            if forward is not None:
                await forward

    async def _on_own_disk(self, local: Callable[[], Awaitable[Any]]) -> Any:
        """Run `local`; a full or failing disk is this replica's fault: the error names this server.

        The client then has the master drop this replica (a new version) and
        goes on with the others while at least MIN remain, instead of failing
        the write with ENOSPC or EIO while the other replicas are fine.
        """
        me = self.link.cs_id
        try:
            return await local()
        except NoSpace as exc:
            self.stats.disk_full += 1
            logger.error("CS#%s: disk full in %s: %s", me, self.store.root, exc)
            raise NoSpace(f"CS#{me}: {exc}", cs_id=me, disk=str(self.store.root)) from None
        except OSError as exc:
            self.stats.disk_errors += 1
            logger.error("CS#%s: disk error in %s: %s", me, self.store.root, exc)
            raise Unavailable(f"CS#{me}: disk error in {self.store.root}: {exc.strerror or exc}",
                              cs_id=me, disk=str(self.store.root)) from None

    async def _forward(self, msg: Msg, chain: list[tuple[int, str]], h: dict[str, Any], payload: bytes) -> None:
        """Send to the next replica with the rest of the chain; name it if it fails."""
        (next_id, next_addr), rest = chain[0], chain[1:]
        header = {**h, "chain": [list(x) for x in rest]}
        try:
            conn = await self._peer(next_addr)
            await conn.call(msg, header, payload, timeout=FORWARD_TIMEOUT)
        except ChunkFSError as exc:
            if "cs_id" in exc.context:
                raise  # a replica further down already named itself
            raise type(exc)(f"CS#{next_id} at {next_addr}: {exc}", cs_id=next_id) from None

    async def _peer(self, addr: str) -> Connection:
        async with self._peer_lock:
            conn = self._peers.get(addr)
            if conn is None or conn.closed:
                conn = await connect(addr, self.creds)
                self._peers[addr] = conn
            return conn

    # -- commands from the master ------------------------------------------------

    async def handle_master(self, conn: Connection, msg: Msg, h: dict[str, Any], payload: bytes) -> Reply:
        store = self.store
        if msg == Msg.CS_CREATE_CHUNK:
            await asyncio.to_thread(store.create, h["chunk_id"], h["version"])
        elif msg == Msg.CS_SET_VERSION:
            async with self._locks[h["chunk_id"] % WRITE_LOCK_STRIPES]:
                await asyncio.to_thread(store.set_version, h["chunk_id"], h["old_version"], h["new_version"])
        elif msg == Msg.CS_REPLICATE:
            return await self.replicator.replicate(h), b""
        elif msg == Msg.CS_VERIFY_CHUNK:
            return {"ok": await self.scrubber.verify_now(h["chunk_id"])}, b""
        elif msg == Msg.CS_DELETE_CHUNK:
            await asyncio.to_thread(store.delete, h["chunk_id"])
        elif msg == Msg.CS_TRUNCATE_CHUNK:
            async with self._locks[h["chunk_id"] % WRITE_LOCK_STRIPES]:
                await asyncio.to_thread(store.truncate, h["chunk_id"], h["version"], h["length"])
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


async def _disk_io(inline: bool, func: Callable[..., T], *args: Any) -> T:
    return func(*args) if inline else await asyncio.to_thread(func, *args)
