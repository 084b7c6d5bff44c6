"""The chunk server's side of its link to the master.

It finds the master among the known metadata servers, registers (reporting
every replica it holds, so the master can tell current from stale), sends
heartbeats with space and load, carries out the master's commands, and
reconnects when the link drops — with a growing, bounded pause between tries.

The replicas are reported in pages of at most `REPLICA_PAGE` (the first in
CS_REGISTER, the rest in CS_REPORT_REPLICAS, the last one flagged), so a server
with any number of replicas registers: in one frame, 20,000 replicas outgrew
the receive buffer and 60,000 the header limit (issue 14).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
import time
from typing import TYPE_CHECKING

from chunkfs.common.config import REMOVED_FILE, NodeConfig, save_node_file
from chunkfs.common.daemon import ForGood
from chunkfs.common.errors import ChunkFSError, NotMaster
from chunkfs.protocol.mds_link import watch_for_silent_master
from chunkfs.protocol.messages import (
    FEATURE_FANNED_COUNTS,
    FEATURE_FANNED_REPORT,
    FEATURE_FIRST_WRITE,
    FEATURE_LEASE,
    FEATURE_TAKE_BLOCKS,
    FEATURE_VERSIONED_CUT,
    FEATURE_WRITTEN_REPORT,
    REPLICA_LEASE,
    REPLICA_PAGE,
    Msg,
)
from chunkfs.protocol.rpc import SILENCE_LIMIT, Connection, connect

if TYPE_CHECKING:
    from chunkfs.cs.server import ChunkServer

logger = logging.getLogger(__name__)

#: The longest pause between rounds of tries when no metadata server answered (the group is down).
MAX_RETRY_PAUSE = 5.0
#: The longest when one answered that it is not the master: the group is up and electing one, which
#: takes a few seconds, and every second after it this server is not registered it gets no new chunks
#: (`chunkfs stat` shows it inactive).
ELECTING_RETRY_PAUSE = 1.0
#: The same failure to reach an MDS is logged again (WARNING) after this many seconds; at DEBUG meanwhile.
RESAY_AFTER = 300.0


def page_count(count: int, size: int = REPLICA_PAGE) -> int:
    """How many registration pages `count` replicas take (an empty server sends one empty page)."""
    return max(1, -(-count // size))


def next_pause(pause: float, electing: bool) -> float:
    """The pause before the next round of tries to find the master, after a round that found none."""
    return min(pause * 2, ELECTING_RETRY_PAUSE if electing else MAX_RETRY_PAUSE)


class MdsLink:
    def __init__(self, server: ChunkServer, node: NodeConfig, secret: bytes) -> None:
        self.server = server
        self.node = node
        self.secret = secret
        self.conn: Connection | None = None
        self.cs_id = node.node_id
        self.registered = asyncio.Event()
        self._task: asyncio.Task[str] | None = None
        #: The master the other metadata servers named while the one here was silent: tried next.
        self._next: str | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self.conn is not None:
            self.conn.close()

    @property
    def task(self) -> asyncio.Task[str]:
        """Ends (its result the reason) only if the master says this server was removed (rm-cs)."""
        assert self._task is not None, "task before start()"
        return self._task

    async def _run(self) -> str:
        pause = 0.1
        known = list(self.node.mds)
        hints: dict[str, object] = {}  # what each MDS last said about the master: said once, not each second
        # The last failure logged for each MDS, and when: the same one again is logged every RESAY_AFTER
        # seconds, not on every try (a probe counted 245-290 lines per server in 30 minutes of a dead MDS).
        said: dict[str, tuple[str, float]] = {}

        def say(addr: str, exc: BaseException) -> None:
            text, now = str(exc), time.monotonic()
            last = said.get(addr)
            if last is not None and last[0] == text and now - last[1] < RESAY_AFTER:
                logger.debug("link to MDS %s: %s", addr, text)
                return
            said[addr] = (text, now)
            logger.warning("link to MDS %s: %s%s", addr, text, "" if last is None else " (still)")
        while True:
            electing = False
            todo = list(known)
            # Bounded: masters named by others are tried next, but two MDSs naming each other must not
            # keep this loop from its pause.
            for _ in range(2 * len(known) + 2):
                if not todo:
                    break
                addr = todo.pop(0)
                named: object = None
                try:
                    await self._session(addr)
                    pause = 0.1
                    hints.clear()
                    said.clear()
                except NotMaster as exc:
                    electing = True
                    named = exc.context.get("leader")
                    if addr not in hints or hints[addr] != named:
                        hints[addr] = named
                        logger.info("MDS %s is not the master; master hint: %s", addr, named or "none")
                except ChunkFSError as exc:
                    removed = exc.context.get("removed")
                    if removed is not None and removed == self.cs_id:
                        # For good (the master keeps it in its store): trying again three times a second
                        # only filled the log.  The server stops; wiped and made again, it is a new one.
                        # The mark tells `local up` not to start it again (it raced the server's stop).
                        with contextlib.suppress(OSError):
                            (self.server.directory / REMOVED_FILE).write_text(f"{exc}\n")
                        return ForGood(exc)
                    say(addr, exc)
                except (ConnectionError, TimeoutError) as exc:  # (OSErrors too: the network's, not the disk's)
                    say(addr, exc)
                except OSError as exc:
                    # This server's own disk (its data folder removed, a failing disk: the folder watch
                    # stops the server if it is gone): one line saying so, not a traceback.
                    logger.error("link to MDS %s: the chunk store's disk failed: %s; trying again", addr, exc)
                except Exception:  # noqa: BLE001 - a disk error while registering must not end the link for good
                    logger.exception("link to MDS %s failed; trying again", addr)
                finally:
                    self.registered.clear()
                    if self.conn is not None:
                        self.conn.close()
                        self.conn = None
                # The master a follower named, or the others named while this one was silent: next, at once.
                named, self._next = self._next or named, None
                if isinstance(named, str) and named and named != addr:
                    if named not in known:
                        known.append(named)  # remember masters we were not told about
                    todo.insert(0, named)
            await asyncio.sleep(pause)
            pause = next_pause(pause, electing)

    async def _session(self, addr: str) -> None:
        # The server's credentials: its TLS certificate, and (renamed below once the master numbers it) its name.
        # Watched for silence: a frozen master is left as soon as the others name a new one
        # (watch_for_silent_master), not after a heartbeat's whole timeout; the new master can
        # place no new chunk here before this server registers with it.
        self.conn = conn = await connect(addr, self.server.creds, handler=self.server.handle_master,
                                         silence_limit=SILENCE_LIMIT)
        watchdog = asyncio.get_running_loop().create_task(
            watch_for_silent_master(conn, lambda: self.node.mds, self.server.creds, self._follow))
        try:
            await self._registered_session(addr, conn)
        finally:
            watchdog.cancel()

    def _follow(self, leader: str) -> None:
        """Try `leader` first next (the others named it the master while the one here was silent)."""
        self._next = leader

    async def _registered_session(self, addr: str, conn: Connection) -> None:
        store = self.server.store
        total, free = store.space()
        # The ids listed once, off the loop, 8 bytes each; each page's versions are read when it is sent.
        # Replicas created from now on are given by the master, which knows.  In chunk-id order: the
        # master takes what a page does not name, up to its last id, as not held here.
        ids = await asyncio.to_thread(store.replica_ids)
        pages = page_count(len(ids))
        first = store.versions_of(ids[:REPLICA_PAGE])
        register = {
            "cluster_uuid": self.node.cluster.uuid, "cs_id": self.cs_id, "addr": self.node.addr,
            "host": self.node.host or socket.gethostname(), "total": total, "free": free,
            "replicas": [list(r) for r in first], "location": self.node.location, "tier": self.node.tier,
            # What a master of this version or later may send (README, on upgrades).
            "features": [FEATURE_FIRST_WRITE, FEATURE_VERSIONED_CUT, FEATURE_FANNED_REPORT, FEATURE_WRITTEN_REPORT,
                         FEATURE_LEASE, FEATURE_TAKE_BLOCKS, FEATURE_FANNED_COUNTS],
        }
        if pages > 1:
            register["more"] = True  # sent only when needed, so one page still suits an older master
        if self.server.unclean:
            register["unclean"] = True
        sent = time.monotonic()
        reply, _ = await conn.call(Msg.CS_REGISTER, register)
        if reply["cs_id"] != self.cs_id:
            self.cs_id = reply["cs_id"]
            self.node = dataclasses.replace(self.node, node_id=self.cs_id)
            save_node_file(self.server.directory, self.node)
            self.server.creds.node = f"cs{self.cs_id}"
        stale = _named(first, reply["delete"])
        reported = len(first)
        for number in range(2, pages + 1):
            start = (number - 1) * REPLICA_PAGE
            page = store.versions_of(ids[start:start + REPLICA_PAGE])
            more, _ = await conn.call(Msg.CS_REPORT_REPLICAS, {
                "cs_id": self.cs_id, "replicas": [list(r) for r in page], "last": number == pages})
            stale += _named(page, more["delete"])
            reported += len(page)
        del ids
        if stale:
            # Gone before the lease below: a reader whose map is older than the change that left one
            # behind asks for that very version.  Unlinks alone (no directory syncs, which kept a
            # restarted server silent for seconds, and the master took it for dead again).
            await asyncio.to_thread(store.delete_stale, stale)
        logger.info(
            "registered with MDS %s as CS#%d: %d replicas reported in %d page(s), %d stale or orphaned deleted",
            addr, self.cs_id, reported, pages, len(stale),
        )
        self._grant(reply, sent)
        self.registered.set()
        # Often enough that the lease never runs out between two answered heartbeats.
        period = min(self.node.heartbeat_interval, REPLICA_LEASE / 4)
        while not conn.closed:
            total, free = store.space()
            sent = time.monotonic()
            beat, _ = await conn.call(Msg.CS_HEARTBEAT, {
                "cs_id": self.cs_id, "total": total, "free": free,
                "replica_count": store.replica_count(), "load": self.server.in_flight,
                **self.server.stats.heartbeat_fields(),
            }, timeout=max(5.0, 5 * self.node.heartbeat_interval))
            self._grant(beat, sent)
            if isinstance(beat.get("settings"), dict):
                self.server.scrubber.update(beat["settings"])
            await asyncio.sleep(period)

    def _grant(self, reply: dict[str, object], sent: float) -> None:
        """A master's answer to a request sent at `sent`: the lease it grants (master_lease.py)."""
        if reply.get("lease"):
            self.server.lease.renewed(sent)
        elif "lease" not in reply:
            self.server.lease.not_granted()  # a master of an earlier version grants none


def _named(page: list[tuple[int, int]], delete: list[object]) -> list[tuple[int, int]]:
    """(chunk, version reported) of the replicas of `page` that the master named for deletion.

    A reply naming chunks outside the page is ignored, so a confused master
    cannot delete what it was not told about.
    """
    reported = dict(page)
    return [(c, reported[c]) for c in delete if isinstance(c, int) and not isinstance(c, bool) and c in reported]
