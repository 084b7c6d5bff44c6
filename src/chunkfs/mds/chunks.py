"""The one owner of chunk replica sets: the only code that changes a chunk's version and replicas.

Giving a chunk a new replica set takes five steps that must stay in step:

1. commit the new list with a new version, *only if the chunk is still at the
   version the caller looked at* (``set_chunk_replicas`` with
   ``expect_version``: a compare-and-set, so two changes never build on the
   same old list);
2. tell the surviving replicas to move to the new version
   (``CS_SET_VERSION``), so a replica left out — or one that fails to move —
   keeps an older version and is refused from then on, never served;
3. update what this master believes each connected server holds (its
   ``replicas`` set, soft state): servers added to the list hold it, servers
   taken away or that failed to move do not;
4. tell the health index (``touch``) that the chunk is to be judged again;
5. make sure no server left at the old version can serve it any more before
   the change is handed on (to a writer, say): its replica deleted, where the
   caller takes it away, or its lease run out (replica_leases.py).  Else a
   reader whose map is older than the change reads bytes from before writes
   acknowledged at the new version.

They used to be written out at every place that needed them (a write that
lost a replica, the copy of a repair or a move, a trim, a corrupt replica);
each copy differed a little, and a missed step meant a chunk whose health
was wrong until the next master.  Allocation (a chunk's first replica set)
and whole-chunk deletion (a file removed) live here too, for the same reason.

Everything that changes a chunk's replicas holds the chunk's lock (`lock`),
which every ``CHUNK_WRITE`` takes as well, so the compare-and-set only fails
when another master made a change in between.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from chunkfs.common.errors import NotFound, StaleVersion
from chunkfs.mds.deletions import CsCall, DeleteBatches, Spawn
from chunkfs.mds.replica_leases import ReplicaLeases
from chunkfs.mds.store import Chunk
from chunkfs.protocol.messages import Msg

logger = logging.getLogger(__name__)

#: Striped locks: one chunk is changed by one task at a time, and the set of locks stays bounded.
LOCK_STRIPES = 64


class Holder(Protocol):
    """What the owner needs of a connected chunk server (`server.LiveServer`): the chunks it holds."""

    replicas: set[int]


#: Propose a command to the replicated log; returns the result of applying it.
Propose = Callable[..., Awaitable[Any]]


@dataclass(slots=True, frozen=True)
class Change:
    """A committed replica-set change: the chunk as now stored, and the servers that did not follow."""

    chunk: Chunk
    #: Servers asked to move to the new version that failed to (taken as no longer holding the chunk).
    failed: frozenset[int]


def _holds_none_at(answer: BaseException | None, version: int) -> bool:
    """Whether a server's `answer` to a command about a chunk says it holds no replica at `version`."""
    if isinstance(answer, NotFound):
        return True
    return isinstance(answer, StaleVersion) and isinstance(answer.context.get("current"), int) \
        and answer.context["current"] != version


class ReplicaSets:
    """Changes chunks' replica sets (the five steps above) and answers who holds what."""

    def __init__(self, live: Mapping[int, Holder], propose: Propose, call: CsCall, spawn: Spawn) -> None:
        self.live = live
        self._propose = propose
        self._call = call
        self._spawn = spawn
        self._locks = [asyncio.Lock() for _ in range(LOCK_STRIPES)]
        #: Replicas of removed chunks, deleted a batch per server at a time (deletions.py).
        self.deletions = DeleteBatches(call, spawn)
        #: Told of every chunk whose replicas (or what a server holds of it) changed: the health index.
        self.on_change: Callable[[int], None] = lambda chunk_id: None
        #: Chunks whose replicas `allocate_created` is making: the health index leaves them until then.
        self.making: set[int] = set()
        #: When servers left behind at an old version stop serving it (None: not waited for; unit tests).
        self.leases: ReplicaLeases | None = None
        #: Drops a connected server's link to this master, which then renews its lease no more.
        self.hang_up: Callable[[int], None] = lambda cs_id: None

    # -- locks and soft state -----------------------------------------------------------

    def lock(self, ino: int, index: int) -> asyncio.Lock:
        """The lock of chunk `index` of file `ino` (held by writes and by every replica-set change)."""
        return self._locks[hash((ino, index)) % len(self._locks)]

    def lock_for(self, chunk: Chunk) -> asyncio.Lock:
        return self.lock(chunk.ino, chunk.index)

    def holds(self, cs_id: int, chunk_id: int) -> bool:
        """Whether chunk server `cs_id` is online and has reported (or was given) this chunk."""
        server = self.live.get(cs_id)
        return server is not None and chunk_id in server.replicas

    def gained(self, cs_id: int, chunk_id: int) -> None:
        """`cs_id` holds the chunk at its current version now (created or copied there)."""
        server = self.live.get(cs_id)
        if server is not None:
            server.replicas.add(chunk_id)
        self.on_change(chunk_id)

    def lost(self, cs_id: int, chunk_id: int) -> None:
        """`cs_id` no longer holds a current replica of the chunk (failed, corrupt, deleted, left out)."""
        server = self.live.get(cs_id)
        if server is not None:
            server.replicas.discard(chunk_id)
        self.on_change(chunk_id)

    # -- talking to chunk servers ------------------------------------------------------

    async def call_each(
        self, cs_ids: Collection[int], msg: Msg, header: dict[str, Any], payload: bytes = b""
    ) -> dict[int, BaseException]:
        """Send one command to several chunk servers at once; return those that failed, with why."""
        ids = list(cs_ids)
        results = await asyncio.gather(*(self._call(cs, msg, header, payload) for cs in ids), return_exceptions=True)
        return {cs: r for cs, r in zip(ids, results, strict=True) if isinstance(r, BaseException)}

    async def delete_replica(self, cs_id: int, chunk_id: int) -> bool:
        """Delete one replica; whether the server did.  A failure is only logged (the server deletes it when
        it registers again)."""
        return await self.deletions.delete_now(cs_id, [chunk_id])

    # -- changes ---------------------------------------------------------------------------

    async def allocate_created(
        self, ino: int, index: int, replicas: list[int], chunk_id: int, version: int,
        first: tuple[int, bytes] | None = None,
    ) -> tuple[Chunk, dict[int, BaseException]]:
        """Commit chunk `index` of `ino` as `chunk_id` at `version`, creating its replicas meanwhile.

        One round trip instead of two in a row: the id was set aside (``reserve_chunk_ids``), so
        the chunk servers can make the replicas while the allocation commits.  `first`: the
        chunk's first write (offset, bytes), which every replica is made with; else they are
        empty.  Returns the chunk as stored and the servers that failed, with why.  If the commit fails,
        or the chunk was there already (a retried request: it is returned as it is, and no
        server counts as failed), the replicas made for nothing are deleted; a server that
        misses the deletion has them deleted when it registers again.
        """
        # Committed before the servers answer, the chunk lists replicas no server counts as holding: the
        # health index must not take that for a chunk below its minimum (a false "replication started").
        self.making.add(chunk_id)
        try:
            commit = asyncio.ensure_future(self._propose(
                "alloc_chunk", ino=ino, index=index, replicas=replicas, chunk_id=chunk_id, version=version))
            header: dict[str, Any] = {"chunk_id": chunk_id, "version": version}
            data = b""
            if first is not None:
                header["offset"], data = first
            failures = await self.call_each(replicas, Msg.CS_CREATE_CHUNK, header, data)
            made = [cs for cs in replicas if cs not in failures]
            try:
                chunk: Chunk = await commit
            except BaseException:
                for cs in made:
                    self._spawn(self.delete_replica(cs, chunk_id))
                raise
        finally:
            self.making.discard(chunk_id)
            self.on_change(chunk_id)
        if chunk.chunk_id != chunk_id:
            for cs in made:
                self._spawn(self.delete_replica(cs, chunk_id))
            return chunk, {}
        for cs in made:
            self.gained(cs, chunk_id)
        return chunk, failures

    async def create_replicas(self, chunk: Chunk, cs_ids: Collection[int]) -> set[int]:
        """Create the chunk's empty replicas on `cs_ids` at its version; return the servers that failed."""
        failed = set(await self.call_each(
            cs_ids, Msg.CS_CREATE_CHUNK, {"chunk_id": chunk.chunk_id, "version": chunk.version}))
        for cs in cs_ids:
            if cs not in failed:
                self.gained(cs, chunk.chunk_id)
        self.on_change(chunk.chunk_id)
        return failed

    async def set_replicas(
        self, chunk: Chunk, replicas: Iterable[int], *, move: Iterable[int] | None = None,
        delete: Iterable[int] = (), delete_if_moved: int = 0, cut: int | None = None,
        from_version: int | None = None,
    ) -> Change:
        """Give `chunk` (as the caller read it, under its lock) the replica list `replicas`: a new version.

        Servers in `replicas` that `chunk` did not list must hold the chunk at
        its old version (a copy just made there).  `move`: the servers told to
        move to the new version (default: every listed one this master knows
        holds it; leave out silent ones, whose command would only time out).
        `delete`: servers, taken away from the list, whose replica is deleted (only once at least
        `delete_if_moved` servers moved: else the old replicas may be all there is).
        `cut`: the movers zero their replica from there on as they move (CS_TRUNCATE_CHUNK).
        `from_version`: the movers hold the chunk at this version, behind the chunk's, and hold it
        at the new one once moved (behind_replicas.py).
        Raises `StaleVersion` (nothing done) if the chunk changed meanwhile.
        """
        chunk_id = chunk.chunk_id
        wanted = list(dict.fromkeys(replicas))
        # Who may hold the chunk at its version now: whoever this master counts as holding it, and any it
        # does not know (away, or still registering).  A connected server it knows holds an older one was
        # left behind by an earlier change, which saw to it then.
        held = {cs for cs in chunk.replicas if self.holds(cs, chunk_id)}
        may_hold = [cs for cs in chunk.replicas if cs in held or not self._registered(cs)]
        new: Chunk = await self._propose(
            "set_chunk_replicas", chunk_id=chunk_id, replicas=wanted, expect_version=chunk.version)
        # Each server's link now, once the change is committed: one that registers after this reports the
        # chunk at its old version, which is named stale then (`_fence`).
        links = {cs: self.live.get(cs) for cs in {*chunk.replicas, *delete}}
        for cs in set(new.replicas) - set(chunk.replicas):
            self.gained(cs, chunk_id)
        for cs in set(chunk.replicas) - set(new.replicas):
            self.lost(cs, chunk_id)
        movers = [cs for cs in new.replicas if self.holds(cs, chunk_id)] if move is None else \
            [cs for cs in dict.fromkeys(move) if cs in new.replicas]
        if cut is None:
            failed = await self.call_each(movers, Msg.CS_SET_VERSION, {
                "chunk_id": chunk_id, "old_version": chunk.version if from_version is None else from_version,
                "new_version": new.version})
            if from_version is not None:
                for cs in movers:
                    if cs not in failed:
                        self.gained(cs, chunk_id)
        else:
            failed = await self.call_each(movers, Msg.CS_TRUNCATE_CHUNK, {
                "chunk_id": chunk_id, "version": chunk.version, "length": cut, "new_version": new.version})
        for cs, exc in failed.items():
            self.lost(cs, chunk_id)
            logger.warning("chunk %#x: CS#%d did not move to version %#x: %s", chunk_id, cs, new.version, exc)
        for cs in set(new.replicas).intersection(chunk.replicas).difference(movers):
            # Kept in the list but not asked (silent): its copy is at the old version now.  A server
            # that was only slow keeps its link and does not register again to say so: counted as
            # holding, it would be a replica refusing every read while the chunk shows healthy.
            self.lost(cs, chunk_id)
        self.on_change(chunk_id)
        moved = [cs for cs in movers if cs not in failed]
        deleting = {cs for cs in delete if cs not in new.replicas} if len(moved) >= delete_if_moved else set()
        # A server that answered it holds no replica at that version (gone: cut away meanwhile, say) has
        # nothing to serve (a test: such answers cut off all three servers of a truncated file, 4 s each).
        behind = [cs for cs in dict.fromkeys([*may_hold, *deleting])
                  if cs not in moved and not _holds_none_at(failed.get(cs), chunk.version)]
        await asyncio.gather(*(self._fence(cs, chunk_id, cs in deleting, cs in held, links.get(cs)) for cs in behind))
        return Change(new, frozenset(failed))

    def _registered(self, cs_id: int) -> bool:
        """Whether `cs_id` is connected and has reported all its replicas to this master."""
        server = self.live.get(cs_id)
        return server is not None and not getattr(server, "reporting", False)

    async def _fence(self, cs_id: int, chunk_id: int, delete: bool, held: bool, link: Holder | None) -> None:
        """Return once `cs_id`, left at the chunk's old version, can serve it no more (step 5).

        Told, when its replica is to be deleted and it answers before its lease runs out; else its
        lease runs out.  A connected server that `held` the chunk at that version loses its link
        first, so that no master renews its lease (on a heartbeat, or at the end of a registration
        whose page named the chunk as current) before it registers again, where its replica is named
        stale and deleted before it serves anything (cs/mds_link.py); one that did not hold it yet
        (still registering: a later page) has it named stale that way anyway.  `link`: its link when
        the change was committed (None: it had none).
        """
        if self.leases is None:  # no leases to wait for (unit tests of the other steps)
            if delete:
                await self.delete_replica(cs_id, chunk_id)
            return
        left = self.leases.left(cs_id)
        # Cut off only on the link it had when the change was committed: one made since registered after
        # it (a power-cut probe: commands failed on a link already dropped hung up each new one in turn,
        # 87 times in a round, and each hang-up failed the commands in flight on it).
        cut_off = held and link is not None and self.live.get(cs_id) is link
        if delete and left > 0:
            try:
                if await asyncio.wait_for(self.delete_replica(cs_id, chunk_id), left):
                    return
            except TimeoutError:
                pass
        elif delete and not cut_off:  # it serves nothing now: deleted for its space alone
            self._spawn(self.delete_replica(cs_id, chunk_id))
        await self._wait_out(cs_id, f"chunk {chunk_id:#x} left behind there at an old version", cut_off)

    async def _wait_out(self, cs_id: int, why: str, cut_off: bool = True) -> None:
        """Return once `cs_id`'s lease has run out; `cut_off`: its link dropped first if it is connected."""
        assert self.leases is not None
        if cut_off and cs_id in self.live:
            self.hang_up(cs_id)
        await self.leases.wait_out([cs_id], why)

    def delete_chunks(self, chunks: Iterable[Chunk]) -> None:
        """Delete the chunks of files no mount holds open (unlinked, replaced, freed orphans): in batches,
        in the background (deletions.py); offline servers clean up when they register again."""
        for chunk in chunks:
            for cs in self._forget_replicas(chunk):
                self.deletions.add(cs, chunk.chunk_id)

    async def delete_cut(self, chunks: Iterable[Chunk]) -> None:
        """Delete the chunks a truncation cut away, and return once each server answered (or failed).

        A mount holding the file may still write through the chain it has for such a chunk; the
        replica's absence (NotFound) is what sends it to the master for the chunk as it is now.
        Deleted before the truncation is answered, no write that starts after it can land in a
        replica about to go (and be lost with it, acknowledged).  A server that did not answer
        has its lease waited out (step 5): a reader whose map is older than the cut, on a host cut
        off from the rest, would read the bytes cut away.
        """
        per_server: dict[int, list[int]] = {}
        for chunk in chunks:
            for cs in self._forget_replicas(chunk):
                per_server.setdefault(cs, []).append(chunk.chunk_id)
        servers = list(per_server)
        done = await asyncio.gather(*(self.deletions.delete_now(cs, per_server[cs]) for cs in servers))
        if self.leases is not None:
            await asyncio.gather(*(self._wait_out(cs, f"{len(per_server[cs])} chunk(s) cut away there")
                                   for cs, ok in zip(servers, done, strict=True) if not ok))

    def _forget_replicas(self, chunk: Chunk) -> tuple[int, ...]:
        """No server holds the removed `chunk` any more, as far as this master counts; its replica list."""
        for cs in chunk.replicas:
            server = self.live.get(cs)
            if server is not None:
                server.replicas.discard(chunk.chunk_id)
        return chunk.replicas
