"""Replicas a server reports at a version behind the chunk's: deleted only once a current copy is known.

A chunk's new version is committed first and its servers are told to move to
it after (`ReplicaSets.set_replicas`).  A master killed between the two leaves
the store at the new version and every replica at the old one.  The next
master took each of them for stale as its server registered and had it
deleted: every copy of acknowledged data (a fault probe: 4 of 13 master kills
during drains and replica changes lost a chunk).

So a listed replica reported behind is deleted at registration only if
another registered server holds the chunk at its version (the ordinary case:
a server that was away while the chunk was written).  Otherwise it is kept,
and `BehindReplicas` decides once every server the chunk lists is registered
or offline (silent past `cs-offline-timeout`: its replicas are given up, as
for any chunk):

* a server holds the chunk at its version now (a server back, a copy made):
  the replicas behind are deleted;
* none does: no write reached that version (a writer's request needs a
  replica at it), so the replicas at the highest version behind hold the
  chunk's last data.  They are moved to a new version and are the chunk's
  replicas again; the event log says so, and copies follow as for any chunk
  below its goal.

What is kept here is soft state, like the servers' replica lists: a new
master learns it again from the registrations.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from chunkfs.common.errors import ChunkFSError
from chunkfs.mds.health import OFFLINE

if TYPE_CHECKING:
    from chunkfs.mds.server import MetadataServer
    from chunkfs.mds.store import Chunk

logger = logging.getLogger(__name__)

#: How often the chunks with replicas behind are looked at (seconds), and how many per pass.
CHECK_EVERY = 1.0
CHECK_BATCH = 200
#: Chunks with replicas behind remembered at most (a bound on soft state): past it, replicas behind
#: are deleted at registration as before.
BEHIND_MAX = 100_000


class BehindReplicas:
    """Chunk id -> {server: the version it holds}, for listed replicas behind the chunk's version."""

    def __init__(self, mds: MetadataServer) -> None:
        self.mds = mds
        self.chunks: dict[int, dict[int, int]] = {}

    def keep(self, cs_id: int, chunk_id: int, version: int) -> bool:
        """Whether a listed replica reported behind is kept (no other registered server holds the
        chunk at its version); else it is deleted as stale.  No await: called during a registration."""
        chunk = self.mds.store.chunk(chunk_id)
        if chunk is None or len(self.chunks) >= BEHIND_MAX and chunk_id not in self.chunks:
            return False
        if self._held_current(chunk, besides=cs_id):
            return False
        self.chunks.setdefault(chunk_id, {})[cs_id] = version
        return True

    def _registered(self, cs_id: int) -> bool:
        server = self.mds.live.get(cs_id)
        return server is not None and not server.reporting

    def _held_current(self, chunk: Chunk, besides: int = 0) -> bool:
        """Whether a registered server (but `besides`) holds `chunk` at its version."""
        return any(cs != besides and self._registered(cs) and self.mds.chunks.holds(cs, chunk.chunk_id)
                   for cs in chunk.replicas)

    async def run(self) -> None:
        """While master: settle the chunks kept here, a batch at a time."""
        while self.mds.raft.is_leader():
            for chunk_id in list(self.chunks)[:CHECK_BATCH]:
                try:
                    await self._settle(chunk_id)
                except ChunkFSError as exc:  # (a master change, a server gone: tried again)
                    logger.info("chunk %#x: replicas behind its version not settled yet: %s", chunk_id, exc)
                except Exception:  # a fault in one chunk's case must not leave the others unsettled
                    logger.exception("chunk %#x: settling its replicas behind its version failed", chunk_id)
            await asyncio.sleep(CHECK_EVERY)
        self.chunks.clear()

    async def _settle(self, chunk_id: int) -> None:
        mds = self.mds
        chunk = mds.store.chunk(chunk_id)
        if chunk is None:  # freed meanwhile: its replicas went with it
            self.chunks.pop(chunk_id, None)
            return
        async with mds.chunks.lock_for(chunk):
            chunk = mds.store.chunk(chunk_id)
            behind = self.chunks.get(chunk_id, {})
            if chunk is None or not behind:
                self.chunks.pop(chunk_id, None)
                return
            if self._held_current(chunk):
                self.chunks.pop(chunk_id, None)
                for cs in behind:
                    if not mds.chunks.holds(cs, chunk_id):
                        await mds.chunks.delete_replica(cs, chunk_id)
                return
            states = mds.healing.compute_states()
            if not all(self._registered(cs) or states.get(cs, OFFLINE) == OFFLINE for cs in chunk.replicas):
                return  # a listed server may hold the chunk at its version: wait for it, or its end
            listed = {cs: v for cs, v in behind.items() if cs in chunk.replicas and self._registered(cs)}
            if not listed:
                return
            best = max(listed.values())
            movers = [cs for cs, v in listed.items() if v == best]
            change = await mds.chunks.set_replicas(chunk, movers, move=movers, from_version=best)
            self.chunks.pop(chunk_id, None)
            moved = [cs for cs in movers if cs not in change.failed]
            for cs in behind:
                if cs not in moved:
                    await mds.chunks.delete_replica(cs, chunk_id)
        if moved:
            done = f"the replicas at {best:#x} on {', '.join(f'CS#{cs}' for cs in moved)} were moved to " \
                f"{change.chunk.version:#x}"
        else:  # (a power-cut probe read "the replicas ... on no server were moved")
            done = f"the replicas at {best:#x} on {', '.join(f'CS#{cs}' for cs in movers)} could not be moved " \
                f"to {change.chunk.version:#x} (the master's log says why): no server holds it now"
        await mds.event(
            "warning",
            f"chunk {chunk_id:#x} (inode {chunk.ino}, chunk {chunk.index}): no server held its version "
            f"{chunk.version:#x} (a master stopped between committing it and moving the replicas); {done}")
