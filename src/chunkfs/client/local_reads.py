"""Small reads of replicas kept on this machine, straight from their files (short-circuit local reads).

A mount on a machine that also runs chunk servers (a hyperconverged node: the host of the
VMs is one of the storage servers) reads a small piece of a chunk from a local chunk
server's replica file with a few preads and a checksum, instead of a request to that
server and its answer: two wake-ups of processes on other cores, most of a 4 KiB read's
time on this kind of machine (BENCHMARKS.md, "Local reads").

When it may, and why that is as safe as asking the server:

- The server proved the folder is the one the mount sees: CS_LOCAL names it and the mark
  the server wrote there at its start, which the mount reads back from that file (the same
  machine, the same mount namespace, and the permission to read the replicas).
- A replica's file name carries its version (chunk_store.py): the file at the map's version
  is there exactly when the server would serve that version (a newer version renames it; a
  deleted or quarantined replica has none).  The server's own answer has the same limit: a
  replica dropped from the chain keeps its old version and bytes until deleted, which is why
  a mount asks again for the maps of a file whose chunks changed when it opens it.
- The server is alive, and would serve the replica itself.  A server that died closed this
  mount's connection to it as it closed every other: before any other process could see it
  gone, have the master drop its replicas and write past them.  So each read first asks the
  kernel whether the connection was hung up (a poll of its socket, without waiting; the
  event loop may not have seen it yet).  A server that froze keeps its connections open, and
  one cut off from the masters serves nothing once its own lease from them ran out
  (cs/master_lease.py): a request sent to it less than LEASE ago must have been answered
  (CS_LOCAL's answer counts only if the server held its lease then), and a master hands out a
  version that leaves its replica behind only once the server's lease plus this one ran out
  (mds/replica_leases.py).
- Every block read is checked against its checksum.  A mismatch (a write racing the read
  puts its data before its checksum) sends the read to the server, which checks again
  under the chunk's lock and reports the replica if it is corrupt.

Only reads of at most LOCAL_READ_MAX, on the event loop (as the chunk server does its own
small reads); larger ones go to the server, whose answer is not copied again.
"""

from __future__ import annotations

import logging
import os
import select
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from chunkfs.common.config import BLOCK_SIZE
from chunkfs.common.errors import ChunkFSError
from chunkfs.common.replica_file import CHUNKS_DIR, HEADER_USED, check_header, data_offset, read_blocks, replica_subpath
from chunkfs.protocol.messages import LOCAL_MARK_FILE, LOCAL_READ_LEASE, Msg
from chunkfs.protocol.rpc import Connection

logger = logging.getLogger(__name__)

#: The largest read served from a local replica file (a chunk server's own reads of this size are done
#: on its event loop too).
LOCAL_READ_MAX = 128 << 10
#: Seconds after a request was sent to a chunk server, and answered, during which this mount reads
#: that server's replica files itself (a master waits for it: protocol/messages.py).
LEASE = LOCAL_READ_LEASE
#: Seconds a newly connected server has to say where its replicas are (asked before the connection is
#: handed out: a server that froze right then must not hold the requests waiting for it up for long).
ASK_TIMEOUT = 3.0
#: The longest mark file read back (a server writes 32 hex digits).
_MARK_MAX = 256


@dataclass(slots=True)
class _Store:
    """A local chunk server's replica folder, this mount's connection to it, and until when it counts as alive."""

    #: The store's chunk folder, as a string (local reads build their paths by formatting).
    chunks: str
    conn: Connection
    #: Polls the connection's socket for a hang-up only (a reply waiting to be read is not an event).
    hangup: select.poll
    alive_until: float = 0.0

    def hung_up(self) -> bool:
        return self.conn.closed or bool(self.hangup.poll(0))


class LocalReads:
    """Which chunk servers keep their replicas on this machine, and reads of them from their files."""

    def __init__(self, chunk_size: int, enabled: bool = True, block_size: int = BLOCK_SIZE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.enabled = enabled
        self.chunk_size = chunk_size
        self.block_size = block_size
        self._data = data_offset(chunk_size, block_size)
        self._clock = clock
        #: Server address -> its store, for the servers found on this machine.
        self._stores: dict[str, _Store] = {}

    async def learn(self, addr: str, conn: Connection) -> None:
        """Ask a server just connected to where it keeps its replicas; remember it if this mount sees them."""
        self._stores.pop(addr, None)
        if not self.enabled:
            return
        sent = self._clock()
        try:
            reply, _ = await conn.call(Msg.CS_LOCAL, {}, timeout=ASK_TIMEOUT)
        except ChunkFSError as exc:  # a server of an earlier version, or it failed: reads go over the network
            logger.debug("CS at %s does not say where its replicas are (%s): reads from it go over the network",
                         addr, exc)
            return
        root = Path(reply["root"])
        try:
            fd = os.open(root / LOCAL_MARK_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                mark = os.read(fd, _MARK_MAX).decode("ascii", "replace")
            finally:
                os.close(fd)
        except OSError:
            return  # another machine, another mount namespace, or no permission to read its replicas
        if mark != reply["mark"]:
            return  # a folder of the same name, but not that server's
        sock = None if conn.transport is None else conn.transport.get_extra_info("socket")
        if sock is None or conn.closed:
            return
        hangup = select.poll()
        hangup.register(sock.fileno(), select.POLLRDHUP)  # POLLHUP and POLLERR come whatever is asked
        # A server without its lease from the masters: read here only once it answered a read.
        alive_until = sent + LEASE if reply.get("lease", True) else 0.0
        self._stores[addr] = _Store(str(root / CHUNKS_DIR), conn, hangup, alive_until)
        logger.info("CS at %s keeps its replicas on this machine (%s): small reads of them are made here, "
                    "from their files", addr, root)

    def is_local(self, addr: str) -> bool:
        return addr in self._stores

    def found_any(self) -> bool:
        return bool(self._stores)

    def heard(self, addr: str, sent: float) -> None:
        """A request sent to `addr` at `sent` (this class's clock) was answered: the server was alive then."""
        store = self._stores.get(addr)
        if store is not None and sent + LEASE > store.alive_until:
            store.alive_until = sent + LEASE

    def now(self) -> float:
        return self._clock()

    def read(self, addr: str, chunk_id: int, version: int, offset: int, length: int) -> memoryview | None:
        """`length` bytes at `offset` of the replica at `version` on server `addr`, every block checked;
        None when this read must go to the server (not local, not lately heard from, too large, no such
        replica file, or a block that does not match its checksum)."""
        store = self._stores.get(addr)
        if store is None or length > LOCAL_READ_MAX or length <= 0 or self._clock() >= store.alive_until:
            return None
        if store.hung_up():
            del self._stores[addr]  # a new connection asks again
            return None
        try:
            fd = os.open(f"{store.chunks}/{replica_subpath(chunk_id, version)}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        bs = self.block_size
        first = offset // bs
        try:
            check_header(chunk_id, os.pread(fd, HEADER_USED, 0), self.chunk_size, bs)
            buf, bad = read_blocks(fd, chunk_id, self._data, bs, first, (offset + length - 1) // bs - first + 1)
        except (OSError, ChunkFSError):
            return None
        finally:
            os.close(fd)
        if bad is not None:
            return None
        start = offset - first * bs
        return memoryview(buf)[start:start + length]
