"""Files held open by mounts, and the orphans they keep alive (POSIX: a file lives until its last close).

Which mount has which file open is *soft state* of the master, like the
exclusive leases (`leases.py`): an open and a close are not worth a Raft
commit each.  What must survive a master change is replicated: an unlinked
file that may still be open becomes an *orphan* in the store (no name,
``nlink`` 0, chunks kept), and only a ``free_orphans`` command frees it.

So the rules are:

* a mount registers every inode it opens (OPEN, or CREATE with its session)
  and releases it at its last close (RELEASE); it renews its *session* every
  quarter of `SESSION_TTL`, and re-sends all its open inodes when the master
  answers that it does not know the session (a new master, or an expiry);
* unlink and rename free a file at once only when no session holds it;
  otherwise they leave an orphan;
* `OrphanReaper` frees orphans that nobody holds: at their last release, when
  a session expires (a mount died), and in a sweep once a new master's grace
  period — one session lifetime, in which mounts re-register — is over.
  During the grace period every inode counts as held: the new master cannot
  know yet.

An inode being freed is in `OpenFileTable.freeing` from the moment the
decision is made until the command is applied: an OPEN that arrives in
between answers "not found" instead of registering a file about to vanish.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from chunkfs.common.errors import ChunkFSError, InvalidArgument, NotFound, Unavailable
from chunkfs.protocol.messages import SESSION_TTL

if TYPE_CHECKING:
    from chunkfs.mds.server import MetadataServer

logger = logging.getLogger(__name__)

#: Sessions, and open inodes per session, the table keeps at most (bounds on soft state).
MAX_SESSIONS = 10_000
MAX_OPEN_PER_SESSION = 1_000_000
#: Orphans freed by one command, and looked at by one sweep.
ORPHAN_BATCH = 1000
#: A removed directory is kept this long (seconds, by the master's clock) for processes still in
#: it: a working directory is not an open file, so no mount registers it.
REMOVED_DIR_KEEP = 600.0


class OpenFileTable:
    """Sessions and the inodes they hold open; no I/O, a clock to inject for tests."""

    def __init__(self, ttl: float = SESSION_TTL, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.clock = clock
        #: session -> expiry on `clock`
        self.sessions: dict[str, float] = {}
        self.opens: dict[str, set[int]] = {}
        #: inode -> sessions that hold it
        self.holders: dict[int, set[str]] = {}
        self.freeing: set[int] = set()
        self.grace_until = 0.0

    def start_grace(self) -> None:
        """This server has just become master: forget everything; mounts re-register within one TTL."""
        self.sessions.clear()
        self.opens.clear()
        self.holders.clear()
        self.freeing.clear()
        self.grace_until = self.clock() + self.ttl

    def in_grace(self) -> bool:
        return self.clock() < self.grace_until

    def held(self, ino: int) -> bool:
        """Whether some mount may hold `ino` open (always, while a new master cannot know)."""
        return ino in self.holders or self.in_grace()

    def renew(self, session: str) -> bool:
        """Extend `session`; False if this master did not know it (the mount must re-send its opens)."""
        _check_session(session)
        known = session in self.sessions
        if not known and len(self.sessions) >= MAX_SESSIONS:
            self.expire()
            if len(self.sessions) >= MAX_SESSIONS:
                raise Unavailable(f"too many mount sessions ({MAX_SESSIONS}); retry later")
        self.sessions[session] = self.clock() + self.ttl
        self.opens.setdefault(session, set())
        return known

    def open(self, session: str, ino: int) -> None:
        if ino in self.freeing:
            raise NotFound(f"inode {ino} does not exist")
        self.renew(session)
        held = self.opens[session]
        if ino not in held and len(held) >= MAX_OPEN_PER_SESSION:
            raise Unavailable(f"session {session} holds {MAX_OPEN_PER_SESSION} open files; close some")
        held.add(ino)
        self.holders.setdefault(ino, set()).add(session)

    def release(self, session: str, ino: int) -> bool:
        """Drop one session's hold; True if nobody holds `ino` any more."""
        self.opens.get(session, set()).discard(ino)
        holders = self.holders.get(ino)
        if holders is not None:
            holders.discard(session)
            if not holders:
                del self.holders[ino]
        return ino not in self.holders

    def expire(self) -> list[int]:
        """End sessions not renewed in time; return the inodes nobody holds any more."""
        now = self.clock()
        freed: list[int] = []
        for session in [s for s, until in self.sessions.items() if until <= now]:
            logger.warning("mount session %s expired (not renewed for %.0f s): its open files are released",
                           session, self.ttl)
            del self.sessions[session]
            for ino in self.opens.pop(session, set()):
                if self.release(session, ino):
                    freed.append(ino)
        return freed


def _check_session(session: str) -> None:
    if not session or len(session) > 256:
        raise InvalidArgument("a mount session is a non-empty name of at most 256 characters")


class OrphanReaper:
    """Frees orphaned files nobody holds open, in batches, off the request path (master only)."""

    def __init__(self, mds: MetadataServer) -> None:
        self.mds = mds
        self.table = mds.open_files
        self._pending: set[int] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """On becoming master."""
        self._pending.clear()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = self.mds.spawn(self._run())

    def consider(self, ino: int) -> None:
        """`ino` was orphaned or released: free it soon if it is an orphan nobody holds."""
        self._pending.add(ino)
        self._wake.set()

    async def _run(self) -> None:
        sweep_at = self.table.grace_until
        while self.mds.raft.is_leader():
            self._wake.clear()
            now = self.table.clock()
            for ino in self.table.expire():
                self._pending.add(ino)
            if now >= sweep_at:
                self._pending.update(self.mds.store.orphans(ORPHAN_BATCH, time.time() - REMOVED_DIR_KEEP))
                sweep_at = now + self.table.ttl
            await self._free_pending()
            try:
                await asyncio.wait_for(self._wake.wait(), self.table.ttl / 4)
            except TimeoutError:
                pass

    async def _free_pending(self) -> None:
        if self.table.in_grace():
            return
        ready = [ino for ino in self._pending if not self.table.held(ino)][:ORPHAN_BATCH]
        self._pending.difference_update(ready)
        orphans = set(self.mds.store.orphans_among(ready))
        if not orphans:
            return
        self.table.freeing |= orphans
        try:
            dropped = await self.mds.propose("free_orphans", inos=sorted(orphans))
        except ChunkFSError as exc:
            logger.warning("could not free %d unlinked file(s) yet (%s); retrying", len(orphans), exc)
            self._pending |= orphans
            return
        finally:
            self.table.freeing -= orphans
        logger.info("freed %d unlinked file(s) no mount holds open (%d chunk(s))", len(orphans), len(dropped))
        self.mds.chunks.delete_chunks(dropped)
