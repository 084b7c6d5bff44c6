"""What the master does with a replica that failed a checksum: mend its bad blocks, not drop it.

A report comes from a chunk server's scrubber (its own replica, already
checked: the bad blocks are listed) or from a reader (checked here first: a
reader's word is not enough to touch a replica).  The bad blocks are then
copied over from the chunk's other replicas by the server that holds them
(``CS_REPAIR_BLOCKS``), so one bad 64 KiB block costs a 64 KiB copy, and the
chunk's good blocks stay readable all along.

A block that is bad on every replica is *lost*: nothing is overwritten or
dropped, reads of that range fail with EIO and the rest of the file reads
fine; one event names the file, the byte range and the servers holding the
bad copies.  Unless a power cut of every server holding it may have torn it
(an unsynced write's bytes and checksum reaching the disks apart): then it is
taken as it is and reads as the cut left it (fanned_mender.py `take_torn`).
Only a replica whose header is corrupt is dropped whole and replaced by a
copy (the server has moved it to its quarantine folder).

Bad blocks found while no other replica was reachable (its servers down)
are remembered, and mended as soon as one is back (`retry_pending`, on
each pass of the replication monitor).  Before, they waited for the next
scrub (a week by default) while the chunk counted as healthy, and every
read that met them made another report and another event (a fault probe:
80 in a second).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

from chunkfs.common.config import BLOCK_SIZE
from chunkfs.common.errors import ChunkFSError, NotFound, Timeout, Unavailable
from chunkfs.mds.store import Chunk
from chunkfs.protocol.messages import Msg

if TYPE_CHECKING:
    from chunkfs.mds.replication import ReplicationMonitor

logger = logging.getLogger(__name__)

#: Reports handled at once; more are dropped (the scrubber and readers report again).
MAX_CHECKING = 64
#: Chunk versions whose lost blocks are remembered, so a program retrying a read of a
#: lost range does not make a server re-read the whole replica each time.
MAX_LOST_REMEMBERED = 10_000
#: Replicas whose bad blocks wait for another replica to be reachable, remembered at most (the least
#: recently looked at forgotten first).
MAX_PENDING_REMEMBERED = 10_000
#: Of those, looked at per pass of the replication monitor (each a store lookup on the master's loop).
PENDING_CHECKED_PER_PASS = 64
#: Seconds before a replica whose handling was cut short (`BadReplicas.later`) is looked at again.
LOOK_AGAIN_WAIT = 5.0


class BadReplicas:
    def __init__(self, healing: ReplicationMonitor) -> None:
        self.healing = healing
        self.mds = healing.mds
        self.checking: set[tuple[int, int]] = set()
        #: (chunk_id, version) -> blocks bad on every replica (oldest forgotten first).
        self.lost: OrderedDict[tuple[int, int], set[int]] = OrderedDict()
        #: (chunk_id, cs_id) -> that replica's bad blocks no good copy was reachable for.
        self.pending: OrderedDict[tuple[int, int], set[int]] = OrderedDict()
        self.repaired_blocks = 0
        #: (chunk_id, cs_id) -> (when, what): replicas looked at again on a later pass, once their server
        #: is connected: "check", a report whose handling lost the server's link (a power-cut probe: its
        #: check moved the replica aside and the answer was lost; the chunk stayed offline for good);
        #: "remake", a never-synced last replica that could not be made again there.
        self.later: OrderedDict[tuple[int, int], tuple[float, str]] = OrderedDict()

    def report(self, chunk_id: int, cs_id: int, reason: str, own: bool, reporter: str,
               blocks: list[int] | None, unsynced: bool = False, from_server: bool = False) -> bool:
        """Handle a report in the background (the reporter is answered at once); False: nothing to do.

        Raises Unavailable for a report from the replica's own server that cannot be taken now (it
        sends it again): a reader's is dropped, and the next read reports it again.
        """
        chunk = self.mds.store.chunk(chunk_id)
        if chunk is None or cs_id not in chunk.replicas:
            return False
        if not own and blocks and set(blocks) <= self.lost.get((chunk_id, chunk.version), set()):
            return False  # a read of a range already known lost: nothing new to learn
        key = (chunk_id, cs_id)
        if blocks and set(blocks) <= self.pending.get(key, set()):
            return False  # known, and mended once another replica is back (`retry_pending`)
        if key in self.checking or len(self.checking) >= MAX_CHECKING:
            if own or from_server:
                # A server's own report is its only one: it moved the replica aside, or checked it, and
                # does not look again.  Dropped here, the master counted a replica no longer there (a
                # power cut left 134 never synced on one server, found at once).  It reports again.
                raise Unavailable(f"the master is handling {len(self.checking)} reports of bad replicas; "
                                  "report this one again shortly")
            return False
        self.checking.add(key)
        self.mds.spawn(self._handle(chunk, cs_id, reason, own, reporter, blocks, unsynced))
        return True

    async def _handle(self, chunk: Chunk, cs_id: int, reason: str, own: bool, reporter: str,
                      blocks: list[int] | None, unsynced: bool = False) -> None:
        mds, chunk_id = self.mds, chunk.chunk_id
        try:
            whole = own and not blocks
            bad = blocks or []
            if not own:
                try:
                    reply = await mds._cs_call(cs_id, Msg.CS_VERIFY_CHUNK, {"chunk_id": chunk_id})
                except NotFound:
                    if not unsynced:
                        raise
                    # Its server found it without a header at its start and asked for this check; it is gone
                    # since (a power-cut probe: deleted as left behind at an old version, the chunk's last
                    # listed replica, and the chunk offline for good).  As found then.
                    reply = {"ok": False, "whole": True, "unsynced": True}
                if reply["ok"]:
                    logger.info("chunk %#x on CS#%d reported bad by %s but verifies fine", chunk_id, cs_id, reporter)
                    return
                whole, bad = bool(reply.get("whole")), list(reply.get("bad") or [])
                unsynced = bool(reply.get("unsynced"))
            if whole:
                await self.healing.drop_corrupt(chunk_id, cs_id, reason, reporter, unsynced)
            elif bad:
                await self._repair(chunk, cs_id, sorted(set(bad)), reporter)
        except ChunkFSError as exc:
            logger.warning("handling a bad replica of chunk %#x on CS#%d: %s", chunk_id, cs_id, exc)
            if isinstance(exc, Unavailable | Timeout):  # its link lost meanwhile: asked again once it is back
                self._look_later(chunk_id, cs_id, "check")
        finally:
            self.checking.discard((chunk_id, cs_id))

    async def _repair(self, chunk: Chunk, cs_id: int, bad: list[int], reporter: str) -> None:
        mds, chunk_id = self.mds, chunk.chunk_id
        if len(chunk.replicas) == 1:
            repaired, lost, pending = [], bad, []  # the only copy (replicas=1): nothing to mend it from
        else:
            sources = [[cs, mds.live[cs].addr] for cs in chunk.replicas if cs != cs_id and cs in mds.live]
            result = await mds._cs_call(cs_id, Msg.CS_REPAIR_BLOCKS, {
                "chunk_id": chunk_id, "version": chunk.version, "blocks": bad, "sources": sources})
            repaired, lost, pending = (list(result[k]) for k in ("repaired", "lost", "pending"))
        if lost and self.mds.mender.torn_everywhere(chunk):
            await self._take_torn(chunk, lost, reporter)
            lost = []
        self.repaired_blocks += len(repaired)
        where = self._where(chunk)
        if repaired:
            await mds.event("warning", (
                f"CS#{cs_id}'s replica of chunk {chunk_id:#x} ({where}) had {len(repaired)} bad block(s) "
                f"({_ranges(chunk, repaired, self._chunk_size())}; found by {reporter}): repaired from the other "
                "replicas; the bad bytes are kept in that server's quarantine folder"))
        known = self.lost.setdefault((chunk_id, chunk.version), set())
        self.lost.move_to_end((chunk_id, chunk.version))
        new_lost = sorted(set(lost) - known)
        known.update(lost)
        if not known:
            del self.lost[(chunk_id, chunk.version)]
        while len(self.lost) > MAX_LOST_REMEMBERED:
            self.lost.popitem(last=False)
        if new_lost:
            holders = ", ".join(f"CS#{cs}" for cs in chunk.replicas)
            await mds.event("error", (
                f"{where}: {_ranges(chunk, new_lost, self._chunk_size())} are bad on every replica of chunk "
                f"{chunk_id:#x} ({holders}): reads of that range fail with an I/O error, the rest of the file "
                "reads fine; the bad copies are kept as they are. Restore that range from a backup "
                "(a whole-block write over it replaces it)"))
        waiting = (self.pending.pop((chunk_id, cs_id), set()) - set(bad)) | set(pending)
        if waiting:
            self.pending[(chunk_id, cs_id)] = waiting
            while len(self.pending) > MAX_PENDING_REMEMBERED:
                self.pending.popitem(last=False)  # forgotten: the scrubber or a read finds them again
        if pending:
            logger.warning("chunk %#x on CS#%d: %d bad block(s) not repaired yet (no good copy reachable); "
                           "repaired when another replica is back", chunk_id, cs_id, len(pending))

    async def _take_torn(self, chunk: Chunk, lost: list[int], reporter: str) -> None:
        """Blocks bad on every replica of a chunk a power cut may have torn them in (fanned_mender.py
        `torn_everywhere`): taken as they are and made the same everywhere."""
        taken = await self.mds.mender.take_torn(chunk.chunk_id, lost)
        if taken:
            await self.mds.event("warning", (
                f"{self._where(chunk)}: {_ranges(chunk, taken, self._chunk_size())} of chunk {chunk.chunk_id:#x} "
                f"failed their checksums on every replica (found by {reporter}) after a power cut of every server "
                "holding them: torn by a power cut (an unsynced write's bytes and checksums reached the disks apart), "
                "so nothing in them since their last sync was promised; taken as they are on one replica and copied "
                "to the others: they read as the cut left them, as a local disk's would"))

    def remake_later(self, chunk_id: int, cs_id: int) -> None:
        """Make the chunk's never-synced last replica on `cs_id` again on a later pass (`retry_pending`):
        a power-cut probe saw one fail, and the chunk stayed offline for good."""
        self._look_later(chunk_id, cs_id, "remake")

    def _look_later(self, chunk_id: int, cs_id: int, what: str) -> None:
        self.later[(chunk_id, cs_id)] = (time.monotonic() + LOOK_AGAIN_WAIT, what)
        self.later.move_to_end((chunk_id, cs_id))
        while len(self.later) > MAX_PENDING_REMEMBERED:
            self.later.popitem(last=False)

    def _retry_later(self) -> None:
        mds, now = self.mds, time.monotonic()
        for key, (when, what) in list(self.later.items())[:PENDING_CHECKED_PER_PASS]:
            chunk_id, cs_id = key
            chunk = mds.store.chunk(chunk_id)
            if chunk is None or cs_id not in chunk.replicas or what == "remake" and (
                    tuple(chunk.replicas) != (cs_id,) or mds.chunks.holds(cs_id, chunk_id)):
                del self.later[key]  # gone, dropped, copied or made again meanwhile
            elif when > now or cs_id not in mds.live or key in self.checking:
                self.later.move_to_end(key)
            else:
                del self.later[key]
                self.checking.add(key)
                mds.spawn(self._remake(chunk_id, cs_id) if what == "remake" else self._handle(
                    chunk, cs_id, "a report whose check was cut short", False, "the master, again", None))

    async def _remake(self, chunk_id: int, cs_id: int) -> None:
        try:
            await self.healing.drop_corrupt(chunk_id, cs_id, "made again after a failed try", "the master", True)
        except ChunkFSError as exc:
            logger.warning("making chunk %#x again on CS#%d: %s", chunk_id, cs_id, exc)
            self.remake_later(chunk_id, cs_id)
        finally:
            self.checking.discard((chunk_id, cs_id))

    def retry_pending(self) -> None:
        """Start the repairs that waited for another replica, where one is reachable now, and the replicas
        to look at again (`later`).

        A bounded slice per pass, the ones looked at going to the back: a long outage may leave
        thousands waiting, and each look is a store lookup on the master's event loop.
        """
        self._retry_later()
        mds = self.mds
        for key in list(self.pending)[:PENDING_CHECKED_PER_PASS]:
            chunk_id, cs_id = key
            chunk = mds.store.chunk(chunk_id)
            if chunk is None or cs_id not in chunk.replicas:
                del self.pending[key]  # the chunk or that replica is gone: nothing left to mend
                continue
            if (cs_id not in mds.live or key in self.checking or len(self.checking) >= MAX_CHECKING
                    or not any(cs != cs_id and mds.chunks.holds(cs, chunk_id) for cs in chunk.replicas)):
                self.pending.move_to_end(key)
                continue
            blocks = sorted(self.pending.pop(key))
            self.checking.add(key)
            mds.spawn(self._handle(chunk, cs_id, "bad blocks no good copy was reachable for", True,
                                   "a read while the other replicas were down", blocks))

    def _chunk_size(self) -> int:
        return int(self.mds.node.cluster.chunk_size)

    def _where(self, chunk: Chunk) -> str:
        return f"file {self.mds.store.path_of(chunk.ino)}"


def _ranges(chunk: Chunk, blocks: list[int], chunk_size: int) -> str:
    """Bytes of the file that `blocks` of the chunk cover, merged: "bytes 65536-131071 and 262144-327679"."""
    spans: list[list[int]] = []
    for b in sorted(blocks):
        start = chunk.index * chunk_size + b * BLOCK_SIZE
        if spans and spans[-1][1] + 1 == start:
            spans[-1][1] = start + BLOCK_SIZE - 1
        else:
            spans.append([start, start + BLOCK_SIZE - 1])
    shown = [f"{a}-{b}" for a, b in spans[:6]]
    more = f" and {len(spans) - 6} more range(s)" if len(spans) > 6 else ""
    return "bytes " + ", ".join(shown) + more

