"""The metadata server: request handlers over the store and the log.

Reads are answered from the store after a read barrier; every change becomes a
command proposed to the replicated log and is answered with the result of
applying it.  The master also keeps *soft* state that is rebuilt from the
chunk servers after a restart: which servers are connected, their space and
load, and which replicas each one reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chunkfs.common import folder_watch
from chunkfs.common.addr import parse_addr
from chunkfs.common.awake_clock import AwakeClock
from chunkfs.common.change_time import stamp_ns
from chunkfs.common.config import NodeConfig, save_node_file
from chunkfs.common.daemon import ForGood
from chunkfs.common.errors import (
    ChunkFSError,
    InvalidArgument,
    NoSpace,
    NotFound,
    NotMaster,
    ProtocolError,
    Unavailable,
    WritesLost,
)
from chunkfs.common.failure_log import FailureLog
from chunkfs.common.placement import FAILURE_DOMAINS, MAX_TIER
from chunkfs.common.secret_files import SecretFiles
from chunkfs.common.timings import TIMINGS
from chunkfs.mds import absent_servers
from chunkfs.mds.behind_replicas import BehindReplicas
from chunkfs.mds.chunks import ReplicaSets
from chunkfs.mds.cluster_view import ClusterView
from chunkfs.mds.fan_grants import FanGrants
from chunkfs.mds.fanned_mender import FannedMender
from chunkfs.mds.held_replicas import HeldReplicas
from chunkfs.mds.leases import LeaseTable
from chunkfs.mds.metrics import MdsMetrics
from chunkfs.mds.open_files import OpenFileTable, OrphanReaper
from chunkfs.mds.replica_leases import ReplicaLeases
from chunkfs.mds.replicated_log import ReplicatedLog
from chunkfs.mds.replication import CS_RECONNECT_GRACE, ReplicationMonitor
from chunkfs.mds.store import MAX_REPLICAS, VERSION_TERM_SHIFT, Chunk, MetadataStore, encode_command
from chunkfs.mds.store_check import damage_in, is_damage, set_aside_if_damaged
from chunkfs.mds.subtree import subtree_pages
from chunkfs.mds.watchers import Watchers
from chunkfs.protocol.mds_link import MdsLink
from chunkfs.protocol.messages import (
    FEATURE_FAN,
    FEATURE_FIRST_WRITE,
    FEATURE_HOLD,
    FEATURE_LEASE,
    FEATURE_LISTED,
    FEATURE_MAP_CUTS,
    FEATURE_NAMED,
    FEATURE_READ_HOLDS,
    FEATURE_VERSIONED_CUT,
    FEATURE_WRITE_MAP_READS,
    MAX_BLOCKS,
    SESSION_TTL,
    WATCH_LEASE,
    Msg,
    check_nested_ints,
    entry_list,
    first_write,
    int_list,
    int_pairs,
)
from chunkfs.protocol.rpc import SILENCE_LIMIT, Connection, Credentials, Reply, RpcServer
from chunkfs.protocol.tls import node_tls
from chunkfs.raft.driver import ELECTION_TIMEOUT, READ_LEASE, RaftLog, StateMachine

logger = logging.getLogger(__name__)

#: Readdir pages are bounded so one reply stays far below the header limit.
MAX_READDIR = 1000
MAX_EVENTS = 1000
#: Seconds background tasks get to unwind when the server stops.
STOP_WAIT = 5.0
#: Seconds between checkpoints of the store's write-ahead log (MetadataStore.checkpoint), on every MDS.
CHECKPOINT_INTERVAL = 2.0
#: Above this size the write-ahead log is rewound after a checkpoint (MetadataStore.reset_log).
LOG_RESET_BYTES = 64 << 20
#: Commands to chunk servers (create, set version) wait at most this long.
CS_COMMAND_TIMEOUT = 10.0
#: How long a chunk server has to answer a PING that decides whether a writer may try it again.
CS_PING_TIMEOUT = 1.0
#: Requests a follower answers itself; everything else is redirected to the master.
FOLLOWER_MESSAGES = frozenset({Msg.RAFT_SNAPSHOT, Msg.PING})
#: A new chunk that cannot be placed because chunk servers are missing (not connected,
#: silent, still reporting) waits this long for them before the writer is told so.
PLACEMENT_WAIT = 5.0
#: A client's requests a new master serves before the mounts' trust in an earlier master's notices ran
#: out (`_after_watch_leases`): they change nothing another mount's kernel may have cached.
BEFORE_WATCH_LEASES = frozenset({
    Msg.PING, Msg.WATCH, Msg.SESSION, Msg.LOOKUP, Msg.GETATTR, Msg.RESOLVE, Msg.READDIR, Msg.CHUNK_READ,
    Msg.CLUSTER_STAT, Msg.GET_EVENTS, Msg.GET_CONFIG,
})
#: Beyond WATCH_LEASE, seconds: a read lease, for an earlier master whose handover to this one it
#: gave up (the target silent) while its TimeoutNow was still on the way, which then granted leases
#: from a read round confirmed before this election for up to READ_LEASE after; and 0.2 s for a
#: mount's dropping of its kernel's cache when its trust runs out.
WATCH_LEASE_MARGIN = READ_LEASE + 0.2
#: Chunk ids a master sets aside at once for the chunks it allocates (one commit per this many).
CHUNK_ID_BATCH = 256
PLACEMENT_POLL = 0.2
#: At most one "cannot place a chunk" WARNING per this many seconds (many writers fail alike).
PLACEMENT_WARNING_EVERY = 10.0
#: Times a CHUNK_WRITE looks for its chunk again when another client's cut took it away meanwhile.
CHUNK_GONE_TRIES = 4
#: How long a master that stepped down keeps the mounts' connections for its last answers (`_stepped_down`).
STEP_DOWN_CLOSE_DELAY = 0.05
#: How many "not a member" answers to its join a new MDS takes before it stops for good (`_join`).
JOIN_REFUSALS = 3
#: Read barriers a new master tries before it lists the mount sessions (each up to a propose timeout);
#: without the list, the grace period for open files simply runs its whole `session-timeout`.
LIST_SESSIONS_TRIES = 30
#: Chunks of the store read at most per step while a registration page's range is covered
#: (HeldReplicas.cover); the loop turns between steps.
COVER_SLICE = 8192
#: How long a lost chunk server's warning waits for this master to confirm it still is one.
GONE_CONFIRM_TIMEOUT = 2.0


@dataclass(slots=True)
class LiveServer:
    """What the master knows about a connected chunk server (soft state)."""

    cs_id: int
    addr: str
    host: str
    conn: Connection
    total: int = 0
    free: int = 0
    load: int = 0
    last_seen: float = field(default_factory=time.monotonic)
    #: The chunks it holds, kept as differences from the store's replica lists (held_replicas.py):
    #: no Python object per replica, so a server with 10^6 of them costs the master next to nothing.
    replicas: HeldReplicas = field(default_factory=HeldReplicas.unbacked)
    #: From its CS_REGISTER until every page (the last CS_REPORT_REPLICAS) is taken: a chunk it has
    #: not reported yet may still be on it, so nothing is dropped, re-created or placed there.
    reporting: bool = False
    #: What it does beyond earlier versions (its CS_REGISTER's `features`): FEATURE_FIRST_WRITE.
    features: frozenset[str] = frozenset()
    #: Its machine went down under it before this registration (cs/clean_stop.py): any master asks it CS_FANNED.
    unclean: bool = False
    #: Registration figures, for its event: replicas current, stale or orphaned, pages.
    current: int = 0
    stale: int = 0
    pages: int = 0


def _about(h: dict[str, Any], chunk: Chunk) -> bool:
    """Whether a writer's CHUNK_WRITE reports failures of this very chunk and version.

    A writer of an older version names neither: its failures are taken as they were before.
    """
    reported_id, reported_version = h.get("chunk_id"), h.get("version")
    if reported_id is None:
        return True
    return reported_id == chunk.chunk_id and reported_version == chunk.version


_MASK64 = (1 << 64) - 1


def _rank(ino: int, cs_id: int) -> int:
    """Where CS#`cs_id` stands among a file's replicas in its chunk maps (rendezvous hashing).

    The first of a map is the head of the chunk's chain, through which every
    write to the chunk goes.  Ranked per file, one server heads the chains of
    all the file's chunks it holds, so the small writes a mount has in flight
    to a disk image of many chunks go to it together (client/write_batches.py:
    spread over three heads they made three times the requests, 2.7 writes
    each instead of 7); other files rank the servers differently, so the heads
    of a cluster's files still spread.  A function of the file and the server
    alone: every mount and every master after a failover puts a chunk's
    replicas in the same order, and a chunk has one head.
    """
    x = (ino * 0x9E3779B97F4A7C15 + cs_id * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64  # splitmix64's finalizer
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


#: Requests whose big lists are pages of [int, int] pairs, each number checked by `int_pairs`: not walked
#: again by `check_nested_ints` (a page of 4,096 replicas took it 1.2 ms on the master's loop).
PAIRED_PAGES = frozenset({Msg.CS_REGISTER, Msg.CS_REPORT_REPLICAS})


class MetadataServer:
    def __init__(self, directory: Path, node: NodeConfig, secret: bytes) -> None:
        self.directory = directory
        self.node = node
        self.creds = Credentials(node.cluster.name, secret, "mds", f"mds{node.node_id}",
                                 tls=node_tls(directory, node.cluster), secret_files=SecretFiles(directory, secret),
                                 uuid=node.cluster.uuid)
        set_aside_if_damaged(directory / "metadata.sqlite")  # rebuilt from the snapshot and log if so
        self.store = MetadataStore(directory / "metadata.sqlite", node.cluster.chunk_size)
        self.raft = RaftLog(
            directory / "raft", node.node_id, {**dict(node.peers), node.node_id: node.addr}, self.creds,
            bootstrap_voters=(node.node_id,) if node.bootstrap else (),
            on_membership=self._learn_members, on_leader=self._becoming_master,
            on_follower=self._stepped_down,
            on_lost_log=lambda peer, what: self._spawn(self._drop_lost_member(peer, what)),
            on_fatal=self._fail, joined=node.joined, on_joined=self._record_joined,
        )
        self.raft.routes = dict(node.peer_routes)
        self.log: ReplicatedLog = self.raft
        self.rpc = RpcServer(self.creds, self.handle, notice_handler=self.take_notice, on_close=self._on_close)
        #: Mounts told of other clients' changes, so their kernels can cache names and attributes (watchers.py).
        self.watchers = Watchers()
        #: The clock peers' silence is measured on: this server's own pauses left out (awake_clock.py).
        self.awake = AwakeClock()
        self.live: dict[int, LiveServer] = {}
        self._background: set[asyncio.Task[Any]] = set()
        #: Set (to the reason) when this server cannot go on: see `failed`.
        self._failed: asyncio.Future[str] | None = None
        #: The only changer of chunks' versions and replica sets, and their locks (chunks.py).
        self.chunks = ReplicaSets(self.live, self._propose, self._cs_call, self._spawn)
        self.chunks.leases = ReplicaLeases(self.awake, self._heard, lambda: self.raft.leader_since)
        self.chunks.hang_up = self._hang_up
        self._rng = random.Random()  # noqa: S311 - placement only
        self._master_since = 0.0
        #: Set when the server stops: the connections it closes then are not chunk servers lost.
        self._stopping = False
        #: Registered chunk servers this master found nothing listening for: not waited for (absent_servers.py).
        self._absent: set[int] = set()
        #: Chunk ids set aside for this master, [next, end) (`_new_chunk_id`).
        self._chunk_ids = [0, 0]
        self._chunk_ids_lock = asyncio.Lock()
        self._placement_warned = float("-inf")
        #: Chunk-server states, re-replication, scrub reports, draining (replication.py).
        self.healing = ReplicationMonitor(self)
        self.chunks.on_change = self.healing.touch
        self.healing.index.held = self.chunks.making
        #: Exclusive file leases (soft state, reclaimed by holders after a master change).
        self.leases = LeaseTable()
        #: Chunks whose one writer sends its small writes to every replica at once (soft state, fan_grants.py),
        #: and their replicas made the same again when such a writer leaves without a word (fanned_mender.py).
        self.fans = FanGrants()
        self.mender = FannedMender(self)
        #: Files mounts hold open (soft state) and the freeing of unlinked ones (open_files.py).
        self.open_files = OpenFileTable(clock=self.awake)
        self.reaper = OrphanReaper(self)
        self.behind = BehindReplicas(self)
        #: Operators' view (cluster_view.py) and /metrics + dashboard (metrics.py).
        self.view = ClusterView(self)
        self.metrics = MdsMetrics(self)

    # -- life cycle --------------------------------------------------------------

    async def start(self) -> None:
        self._failed = asyncio.get_running_loop().create_future()
        # Bind first (a busy port fails fast, before Raft starts),
        # accept only once the log is replayed.
        await self.rpc.listen(self.node.addr, start_serving=False)
        await self.metrics.start()
        store = self.store
        await self.raft.start(StateMachine(
            apply=store.apply, applied_index=lambda: store.applied_index, snapshot_to=store.snapshot_to,
            restore=store.restore, batch=store.batch, hold=store.hold, release=store.release,
        ))
        if self.node.bootstrap:
            # The group exists from now on: if this member's log is ever lost, it must not found
            # a new group of its own on its next start (it waits to be told by the others instead).
            self.node = dataclasses.replace(self.node, bootstrap=False)
            save_node_file(self.directory, self.node)
        self._learn_members()
        await self.rpc.start_serving()
        self._spawn(self.awake.run())
        self._spawn(self.view.run())
        self._spawn(self._checkpointer())
        self._spawn(self._watch_folder())
        logger.info("MDS#%d of cluster %r serving on %s", self.node.node_id, self.node.cluster.name, self.node.addr)
        if self.node.node_id not in self.raft.voters():
            self._spawn(self._join())

    async def _watch_folder(self) -> None:
        """Stop once this server's folder is gone (common/folder_watch.py): what it acknowledged went with it."""
        why = await folder_watch.watch(self.directory)
        me = self.node.node_id
        self._fail(f"its folder {self.directory} {why} while it ran: its Raft log and store went with it; "
                   f"stopping.  It cannot come back as it was: remove it from the group with `chunkfs rm-mds {me}` "
                   f"and add a new one with `chunkfs make-mds` (an empty folder; the address may be the same)")

    def _record_joined(self) -> None:
        """This member holds Raft state from now on: node.json says so (see `NodeConfig.joined`)."""
        self.node = dataclasses.replace(self.node, joined=True)
        save_node_file(self.directory, self.node)

    def _stop_if_damaged(self, exc: BaseException) -> None:
        """Never go on with a store SQLite finds damaged: as master it would answer (and act on) what the
        damage made of it; stopped, another member takes over, and this one, started again, rebuilds."""
        if is_damage(exc):
            self._stop_for_damage(str(exc))

    def _stop_for_damage(self, what: str) -> None:
        self._fail(f"its metadata store {self.store.path} is damaged ({what}); started again, it moves the store "
                   f"aside and rebuilds it from its snapshot and log")

    def _fail(self, why: str) -> None:
        """This server cannot go on (its disk is full or failing): `failed` tells the daemon to exit."""
        if self._failed is not None and not self._failed.done():
            self._failed.set_result(why)

    async def failed(self) -> str:
        """Returns (the reason) when this server must stop and be started again."""
        assert self._failed is not None, "failed() before start()"
        return await self._failed

    async def _checkpointer(self) -> None:
        """Move the store's write-ahead log into its database file now and then, off the event loop."""
        # Retried every CHECKPOINT_INTERVAL: on a full disk that would be a WARNING every 2 s.
        checkpoints = FailureLog(logger, f"checkpoint of the metadata store (retried every {CHECKPOINT_INTERVAL:g} s)")
        rewinds = FailureLog(logger, "rewinding the metadata store's write-ahead log")
        while True:
            await asyncio.sleep(CHECKPOINT_INTERVAL)
            started = time.perf_counter()
            try:
                frames, copied = await asyncio.to_thread(self.store.checkpoint)
            except sqlite3.Error as exc:
                self._stop_if_damaged(exc)  # a checkpoint reads every page a change wrote since the last
                checkpoints.failed(exc)
                continue
            checkpoints.succeeded()
            TIMINGS.since("store.checkpoint", started)
            if frames > copied:
                logger.debug("checkpoint copied %d of %d log frames; the rest next time", copied, frames)
            size = self.store.log_bytes()
            if size > LOG_RESET_BYTES:
                started = time.perf_counter()
                try:
                    done = self.store.reset_log()
                except sqlite3.Error as exc:
                    self._stop_if_damaged(exc)
                    rewinds.failed(exc)
                    continue
                rewinds.succeeded()
                TIMINGS.since("store.log_reset", started)
                logger.log(logging.INFO if done else logging.DEBUG,
                           "metadata store's write-ahead log of %d MiB %s in %.0f ms", size >> 20,
                           "rewound" if done else "kept (a snapshot is being copied)",
                           (time.perf_counter() - started) * 1e3)

    def _learn_members(self) -> None:
        """Peers' addresses come from the replicated member table (and node.json until it has them).

        node.json follows the table: a member whose store is lost (a wiped data
        directory) still knows whom to answer and ask on its next start.
        """
        members = self.store.mds_members()
        self.raft.addrs.update(members)
        peers = tuple(sorted(members.items()))
        if members and peers != self.node.peers:
            self.node = dataclasses.replace(self.node, peers=peers)
            save_node_file(self.directory, self.node)

    def _becoming_master(self) -> None:
        """As the Raft loop learns this server leads, before it serves anything as the master: the grace
        periods begin here, not in a task that a first request could run ahead of (an unlink of a file a
        mount holds open, before the mount could say so, would have freed it)."""
        self._master_since = time.monotonic()
        self._absent = set()
        self._chunk_ids = [0, 0]
        self.healing.start()
        self.leases.start_grace()
        self.fans.clear()
        self.mender.start()
        self.open_files.ttl = self.healing.settings(fresh=True)["session-timeout"]
        self.open_files.start_grace()
        self.reaper.start()
        self._spawn(self._became_master())

    async def _became_master(self) -> None:
        self._spawn(self._find_absent_servers(self._master_since))
        self._spawn(self._check_store())
        self._spawn(self.behind.run())
        self._spawn(self._list_sessions())
        await self._register_self()
        await self._event("info", f"MDS#{self.node.node_id} is the master (term {self.log.term}) at {self.node.addr}")

    async def _check_store(self) -> None:
        """A new master reads its whole store once (store_check.py): a damaged one stops it."""
        try:
            problem = await asyncio.to_thread(damage_in, self.store.path)
        except sqlite3.Error as exc:
            logger.warning("could not check the metadata store %s: %s", self.store.path, exc)
            return
        if problem is not None:
            self._stop_for_damage(problem)

    async def _list_sessions(self) -> None:
        """Once everything committed before this term is applied here, the store lists every session."""
        for _ in range(LIST_SESSIONS_TRIES):
            if not self.raft.is_leader() or self.open_files.is_listed:
                return
            try:
                await self.log.read_barrier()
            except ChunkFSError as exc:
                logger.debug("mount sessions not listed yet: %s", exc)
                await asyncio.sleep(1.0)
                continue
            self.open_files.listed(self.store.sessions())
            logger.info("waiting for %d mount session(s) to re-send the files they hold open",
                        len(self.open_files.awaited))
            return

    def _stepped_down(self) -> None:
        """No longer the master: end the mounts' watches; ids set aside for new chunks are left unused.

        The watches end a moment later: their connections carry the answers to the changes that were
        waiting for a commit (raft/driver.py `_answer_proposals_unknown`), sent on the loop's next turns.
        """
        asyncio.get_running_loop().call_later(STEP_DOWN_CLOSE_DELAY, self._drop_watches_unless_master)
        self._chunk_ids = [0, 0]

    def _drop_watches_unless_master(self) -> None:
        if not self.raft.is_leader():  # (elected again meanwhile: the watches are new ones)
            self.watchers.drop_all()

    async def _new_chunk_id(self) -> int:
        """An id for a new chunk from those set aside for this master: a commit per CHUNK_ID_BATCH chunks.

        A new master sets aside ids of its own (after everything its predecessor committed), so an
        id is never given twice, even by an allocation of the old master committed late.
        """
        async with self._chunk_ids_lock:
            if self._chunk_ids[0] >= self._chunk_ids[1]:
                self._chunk_ids = list(await self._propose("reserve_chunk_ids", count=CHUNK_ID_BATCH))
            chunk_id = self._chunk_ids[0]
            self._chunk_ids[0] += 1
            return chunk_id

    async def _register_self(self) -> None:
        """The master's own address is in the member table before any other MDS is added."""
        if self.store.mds_members().get(self.node.node_id) != self.node.addr:
            await self._propose("add_mds", addr=self.node.addr, node_id=self.node.node_id)

    async def _join(self) -> None:
        """A new MDS asks the master, until it answers, to make it a voter.

        A master that does not list it (removed with rm-mds before it ever started) is asked a few
        times (a master just elected may not have applied its registration yet); then this server
        stops for good: it only logged the refusal every second, "started" as far as its operator knew.
        """
        peers = tuple(a for i, a in sorted(self.raft.addrs.items()) if i != self.node.node_id)
        link = MdsLink(peers, self.creds, retry_for=30.0)
        refusals = 0
        try:
            for attempt in range(1000):
                if self.node.node_id in self.raft.voters():
                    break
                try:
                    await link.call(Msg.MDS_JOIN, {"id": self.node.node_id, "addr": self.node.addr})
                    logger.info("MDS#%d joined the metadata group", self.node.node_id)
                    break
                except InvalidArgument as exc:
                    refusals += 1
                    if refusals >= JOIN_REFUSALS:
                        self._fail(ForGood(f"the master refused it {refusals} times: {exc}"))
                        return
                    logger.warning("joining the metadata group (attempt %d): %s", attempt + 1, exc)
                    await asyncio.sleep(1.0)
                except ChunkFSError as exc:
                    logger.warning("joining the metadata group (attempt %d): %s", attempt + 1, exc)
                    await asyncio.sleep(1.0)
        finally:
            link.close()

    async def stop(self) -> None:
        self._stopping = True
        await self.metrics.stop()
        self.view.close()
        await self.rpc.close()
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        # Let them unwind before the loop closes ("Task was destroyed but it is pending" otherwise).
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_WAIT)
        self.mender.close()
        await self.log.stop()
        self.store.close()

    # What the master's other parts (replication.py, open_files.py, bad_replicas.py) use of it:
    # `spawn`, `propose`, `event`, `master_since`, `check_servers_settled`, besides `store`, `live`,
    # `chunks`, `node`, `log`.
    # The handlers below call the same methods by their older private names.

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        """Run `coro` in the background; cancelled (and waited for, bounded) when the server stops."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_log_failure)
        return task

    async def propose(self, op: str, **args: Any) -> Any:
        """Commit a command to the replicated log and return the result of applying it here."""
        return await self.log.propose(encode_command(op, **args))

    async def event(self, level: str, message: str) -> None:
        """Log `message` and record it in the cluster's event log (best effort: a failure is only logged)."""
        log_level = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}[level]
        logger.log(log_level, "event: %s", message)
        try:
            await self.propose("event", time=time.time(), level=level, message=message)
        except ChunkFSError as exc:
            logger.warning("could not record event %r: %s", message, exc)

    _spawn = spawn
    _propose = propose
    _event = event

    @property
    def master_since(self) -> float:
        """When (monotonic) this MDS last became master: chunk servers get a grace period to reconnect."""
        return self._master_since

    # -- dispatch ----------------------------------------------------------------

    def take_notice(self, conn: Connection, msg: Msg, h: dict[str, Any], payload: bytes) -> None:
        """Raft's messages from the other metadata servers: notices, answered by messages of their own."""
        if conn.peer_role != "mds":
            raise ProtocolError(f"{msg.name} is for metadata servers only")
        self.raft.step(h["m"])

    async def handle(self, conn: Connection, msg: Msg, h: dict[str, Any], payload: bytes) -> Reply:
        if msg == Msg.RAFT_SNAPSHOT:
            if conn.peer_role != "mds":
                raise ProtocolError("RAFT_SNAPSHOT is for metadata servers only")
            return {"have": await self.raft.snapshot_piece(h, payload)}, b""
        handler = getattr(self, f"_on_{msg.name.lower()}", None)
        if handler is None:
            raise ProtocolError(f"{msg.name} is not served by a metadata server")
        if msg in (Msg.CS_REGISTER, Msg.CS_REPORT_REPLICAS, Msg.CS_HEARTBEAT) and conn.peer_role != "cs":
            raise ProtocolError(f"{msg.name} is for chunk servers only")
        if msg not in PAIRED_PAGES:  # (their pages go through int_pairs, which checks each number)
            check_nested_ints(h, msg.name)
        if msg not in FOLLOWER_MESSAGES and not self.raft.is_leader():
            raise self.raft.not_master_error()
        if conn.peer_role == "client" and msg not in BEFORE_WATCH_LEASES:
            await self._after_watch_leases()
        started = time.perf_counter()
        try:
            if msg == Msg.CHUNK_WRITE:  # the one request here that may carry data: a chunk's first write
                return await self._on_chunk_write(conn, h, payload), b""
            return await handler(conn, h), b""
        except sqlite3.DatabaseError as exc:
            self._stop_if_damaged(exc)
            raise
        finally:
            took = time.perf_counter() - started
            self.metrics.requests[msg].record(0, took)
            TIMINGS.record(f"serve.{msg.name}", took)

    # -- metadata group membership -------------------------------------------------

    def _members_reply(self) -> list[list[Any]]:
        return [[i, a] for i, a in sorted(self.store.mds_members().items())]

    async def _on_mds_add(self, conn: Connection, h: dict[str, Any]) -> dict[str, Any]:
        parse_addr(h["addr"])
        await self._register_self()
        node_id = await self._propose("add_mds", addr=h["addr"])
        await self._event("info", f"MDS#{node_id} registered at {h['addr']}; it joins the group when it starts")
        return {"id": node_id, "members": self._members_reply()}

    async def _on_mds_join(self, conn: Connection, h: dict[str, Any]) -> dict[str, Any]:
        node_id = h["id"]
        if self.store.mds_members().get(node_id) != h["addr"]:
            raise InvalidArgument(f"MDS#{node_id} at {h['addr']} is not a member of this cluster (removed with "
                                  "rm-mds?): add a new one with make-mds, in an empty folder")
        if node_id not in self.raft.voters():
            self._learn_members()
            await self.raft.change_membership(add=node_id)
            await self._event("info", f"MDS#{node_id} at {h['addr']} joined the metadata group")
        return {"members": self._members_reply()}

    async def _on_mds_remove(self, conn: Connection, h: dict[str, Any]) -> dict[str, Any]:
        node_id = h["id"]
        members = self.store.mds_members()
        if node_id not in members and node_id not in self.raft.voters():
            raise NotFound(f"no MDS#{node_id} in this cluster")
        if node_id in self.raft.voters():
            self._check_majority_left(node_id)
        if node_id == self.node.node_id:
            # To the follower furthest along among those that answer (the lowest id, frozen, made every
            # retry hand over to it again: the command hung while no change committed, a probe found).
            answering = self.raft.answering_voters() - {node_id}
            matches = self.raft.match_indexes()
            to = max(sorted(answering), key=lambda peer: matches.get(peer, 0))
            self.raft.transfer_leadership(to)
            raise Unavailable(f"MDS#{node_id} is the master; handing over to MDS#{to} first: try again")
        await self._remove_member(node_id)
        await self._event("warning", f"MDS#{node_id} removed from the metadata group")
        return {"addr": members[node_id]} if node_id in members else {}

    def _check_majority_left(self, node_id: int) -> None:
        """Refuse to remove voter `node_id` when the voters left would not have a majority that answers.

        Such a removal commits (the master and one other of three suffice), and then no master can be
        elected until a silent member comes back: a probe removed a healthy member while another was
        down or frozen and had no master for minutes, every client's change failing meanwhile.
        """
        left = self.raft.voters() - {node_id}
        if not left:
            raise InvalidArgument("cannot remove the only metadata server")
        answering = self.raft.answering_voters() & left
        need = len(left) // 2 + 1
        if len(answering) >= need:
            return
        if time.monotonic() - self._master_since < 2 * ELECTION_TIMEOUT:
            # A new master counts a member as answering once it has answered it: not yet, maybe.
            raise Unavailable("the master is new and has not heard from every metadata server yet: try again")
        silent = sorted(left - answering)
        names = ", ".join(f"MDS#{peer}" for peer in silent)
        one = len(silent) == 1
        raise InvalidArgument(
            f"removing MDS#{node_id} would leave {len(left)} metadata servers, of which {len(answering)} "
            f"answer{'s' if len(answering) == 1 else ''}: a master needs {need}. {names} "
            f"{'does' if one else 'do'} not answer: bring {'it' if one else 'them'} back first, or remove "
            f"{'it' if one else 'them'} instead (chunkfs rm-mds {silent[0]})")

    async def _remove_member(self, node_id: int) -> None:
        """Take `node_id` out of the voters (if it is one) and out of the member table."""
        if node_id in self.raft.voters():
            await self.raft.change_membership(remove=node_id)
        await self._propose("remove_mds", node_id=node_id)

    async def _drop_lost_member(self, peer: int, what: str) -> None:
        """A member whose log lost entries it had acknowledged leaves the voters at once.

        Raft counts on what a member acknowledged staying on its disk.  Kept as a voter, such a
        member could help elect a master that lacks changes it had acknowledged (with the one other
        member that had not received them yet): those changes would be lost.  This master stops
        sending it entries, but the next master would not know to; removed from the group (the
        first step of the repair the event names), it no longer counts in any election or commit.
        """
        repair = f"remove it with `chunkfs rm-mds {peer}` and add a new one with `chunkfs make-mds`"
        if not self.raft.is_leader() or peer not in self.raft.voters() or len(self.raft.voters()) < 3:
            # A group of two keeps both (the removal could not commit without it); this master sends it nothing.
            await self.event("error", f"{what}; {repair}")
            return
        await self.event("error", f"{what}; removing it from the metadata group")
        try:
            await self._remove_member(peer)
        except ChunkFSError as exc:
            await self.event("error", f"could not remove MDS#{peer} from the metadata group ({exc}): {repair}")
            return
        await self.event("warning", f"MDS#{peer} removed from the metadata group, as its log lost entries it had "
                                    f"acknowledged: stop it, and add a new metadata server with `chunkfs make-mds` "
                                    f"(an empty data directory; the address may be the same)")

    async def _on_ping(self, conn: Connection, h: dict[str, Any]) -> dict[str, Any]:
        return {"role": "mds", "node": self.creds.node, "applied": self.store.applied_index, **self.view.ping_fields()}

    # -- namespace ---------------------------------------------------------------

    async def _on_lookup(self, conn: Connection, h: dict[str, Any]) -> dict[str, Any]:
        await self.log.read_barrier()
        return {"attr": self.store.lookup(h["parent"], h["name"])}

    async def _on_getattr(self, conn: Connection, h: dict[str, Any]) -> dict[str, Any]:
        await self.log.read_barrier()
        return {"attr": self.store.getattr(h["ino"])}

    async def _on_resolve(self, conn: Connection, h: dict[str, Any]) -> dict[str, Any]:
        await self.log.read_barrier()
        return {"attr": self.store.resolve(h["path"], follow=h.get("follow", False))}

    async def _on_readdir(self, conn: Connection, h: dict[str, Any]) -> dict[str, Any]:
        await self.log.read_barrier()
        entries, more = self.store.readdir(h["ino"], h["after"], max(1, min(h["limit"], MAX_READDIR)),
                                           attrs=h.get("attrs", False))
        if h["after"]:
            return {"entries": entries, "more": more}
        return {"entries": entries, "more": more, "parent": self.store.parent_of(h["ino"])}

    @staticmethod
    def _once(h: dict[str, Any]) -> dict[str, Any]:
        """The client's request id, for the store to answer a retry instead of acting twice (store.apply)."""
        if "cid" not in h or "seq" not in h:
            return {}
        return {"req": [h["cid"], h["seq"], h.get("low", h["seq"])]}

    async def _on_mkdir(self, conn: Connection, h: dict[str, Any]) -> dict[str, Any]:
        attr = await self._propose("mkdir", parent=h["parent"], name=h["name"], mode=h["mode"], time=stamp_ns(),
                                   **self._once(h))
        self.watchers.changed(conn, [(h["parent"], h["name"])], [h["parent"]])
        return {"attr": attr, **self._parents(h["parent"])}

    async def _on_create(self, conn: Connection, h: dict[str, Any]) -> dict[str, Any]:
        if h.get("session"):
            await self._ensure_session(h["session"])
        result = await self._propose(
            "create", parent=h["parent"], name=h["name"], mode=h["mode"], exclusive=h["exclusive"],
            truncate=h.get("truncate", False), time=stamp_ns(), **self._once(h),
        )
        await self.chunks.delete_cut(result["dropped"])  # an O_TRUNC open of a file that had chunks
        attr = result["attr"]
        self.watchers.changed(conn, [(h["parent"], h["name"])], [h["parent"], attr["ino"]],
                              cut=attr if h.get("truncate") else None)
        if h.get("session"):
            await self.reaper.settled(attr["ino"])
            attr = self._register_open(h["session"], attr["ino"], h.get("oseq", 0), h.get("read_only", False))
        return {"attr": attr, **self._parents(h["parent"])}

    async def _on_symlink(self, conn: Connection, h: dict[str, Any]) -> dict[str, Any]:
        attr = await self._propose("symlink", parent=h["parent"], name=h["name"], target=h["target"],
                                   time=stamp_ns(), **self._once(h))
        self.watchers.changed(conn, [(h["parent"], h["name"])], [h["parent"]])
        return {"attr": attr, **self._parents(h["parent"])}

    def _parents(self, *dirs: int) -> dict[str, Any]:
        """The changed directories' attributes now (read with no await since the change applied)."""
        out = []
        for ino in dict.fromkeys(dirs):
            with contextlib.suppress(ChunkFSError):  # removed meanwhile: the kernel asks, and learns that
                out.append(self.store.getattr(ino))
        return {"parents": out}

    def _check_linked(self, h: dict[str, Any]) -> None:
        """A request a mount's kernel sent through a name (`linked`) must find a file that still has one.

        The kernel may have kept the name after another client removed it, renamed a file over it
        or renamed the file away: the request is not for this file, and O_TRUNC, truncate or chmod
        must not change it for whoever still has it open (or has renamed it away).  The mount
        answers ESTALE, and its kernel looks the name up again.
        """
        if not h.get("linked") or ("cid" in h and "seq" in h and self.store.answered(h["cid"], h["seq"])):
            return  # (a retry of a request that was done is answered as it was, whatever changed since)
        ino = h["ino"]
        attr = self.store.getattr(ino)
        if attr["type"] == "f" and attr["nlink"] == 0:
            raise NotFound(f"inode {ino} has no name any more (removed by another client)")
        # The name it came by (FEATURE_NAMED): renamed away, the file still has a name, but not that one.
        # Not for a directory: a process may reach one from its working directory, under no name at all.
        if h.get("at") is not None and attr["type"] != "d":
            parent, name = entry_list([h["at"]], "at")[0]
            if self.store.child_ino(parent, name) != ino:
                raise NotFound(f"inode {ino} is not {name!r} in directory {parent} any more (renamed by "
                               "another client)")

    async def _on_open(self, conn: Connection, h: dict[str, Any]) -> dict[str, Any]:
        ino = h["ino"]
        self._check_linked(h)
        await self._ensure_session(h["session"])
        if h["truncate"]:
            cut = await self._setattr(ino, {"size": 0}, self._once(h))
            self.watchers.changed(conn, inodes=[ino], cut=cut)
        else:
            await self.log.read_barrier()
        await self.reaper.settled(ino)
        attr = self._register_open(h["session"], ino, h.get("oseq", 0), h.get("read_only", False))
        reply = {"attr": attr, "chunks_version": self.store.chunks_version(ino)}
        if attr["type"] == "f" and 0 < attr["size"] <= self.node.cluster.chunk_size:
            first = self._read_map(ino, self.store.chunk_at(ino, 0))
            if first["replicas"]:
                reply["first"] = first
        return reply

    def _register_open(self, session: str, ino: int, seq: int, read_only: bool) -> dict[str, Any]:
        """Hold `ino` open for `session`: read and register with no await between (see open_files.py)."""
        attr = self.store.getattr(ino)
        if attr["type"] == "f":
            self.open_files.open(session, ino, seq, read_only=read_only)
        return attr

    async def _on_release(self, conn: Connection, h: dict[str, Any]) -> dict[str, Any]:
        if "inos" in h:
            inos = int_list(h["inos"], "inos")
            uptos: list[int | None] = list(int_list(h.get("uptos"), "uptos"))
            if len(uptos) != len(inos):
                raise InvalidArgument("RELEASE: inos and uptos must be lists of the same length")
        elif "ino" in h:
            inos, uptos = [h["ino"]], [None]
        else:
            raise InvalidArgument("RELEASE: name the files (inos) to release")
        to_read = set(int_list(h.get("read_only") or [], "read_only"))
        if not to_read <= set(inos) or (to_read and "inos" not in h):
            raise InvalidArgument("RELEASE: read_only must name files among inos")
        free = []
        for ino, upto in zip(inos, uptos, strict=True):
            if ino in to_read:
                self.open_files.to_read(h["session"], ino, upto or 0)
            elif self.open_files.release(h["session"], ino, upto):
                free.append(ino)
        # Only an orphan (unlinked while open) is the reaper's: waking it for every close of a file
        # that still has a name cost the master a pass of its loop per small file.
        for ino in self.store.orphans_among(free):  # no query for an empty list
            self.reaper.consider(ino)
        if self.open_files.left_by_dead:
            self.reaper.wake()  # a file to trim once released (open_files.py)
        return {}

    async def _on_watch(self, conn: Connection, h: dict[str, Any]) -> dict[str, Any]:
        """Watch (or renew the watch lease of) `conn`: the lease only after a read barrier, as the master."""
        if conn.peer_role != "client":
            raise ProtocolError("WATCH is for clients only")
        self.watchers.add(conn, [str(feature) for feature in h.get("features") or []])
        await self.log.read_barrier()
        reply: dict[str, Any] = {"features": [FEATURE_FIRST_WRITE, FEATURE_NAMED, FEATURE_FAN, FEATURE_HOLD,
                                              FEATURE_LISTED, FEATURE_READ_HOLDS]}
        # Not to a plain WATCH: a mount of an earlier version refuses the field, then watches again
        # without features, and failed that too (an upgrade probe: it never watched a new master).
        if h.get("features"):
            reply["lease"] = True
        return reply

    async def _after_watch_leases(self) -> None:
        """Serve a client only once no mount trusts its kernel cache on an earlier master's notices.

        A mount trusts it for WATCH_LEASE from the sending of a WATCH an earlier master answered, and
        that master answered only before this one was elected: a change made here sooner could be
        missed by a mount still reading the old bytes from its page cache (a probe: about 2 s of
        them after a write through a new master).  At term 1 there was no earlier master.
        """
        if self.raft.term <= 1:
            return
        wait = self.raft.leader_since + WATCH_LEASE + WATCH_LEASE_MARGIN - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)

    async def _on_session(self, conn: Connection, h: dict[str, Any]) -> dict[str, Any]:
        session = h["session"]
        inos = int_list(h["open"], "open")
        seqs = int_list(h.get("oseqs", [0] * len(inos)), "oseqs")
        if len(seqs) != len(inos):
            raise InvalidArgument("SESSION: open and oseqs must be lists of the same length")
        if h.get("end"):
            self.fans.writer_done(conn)  # (its writes were all answered before it ended the session)
            for ino in self.open_files.end(session):
                self.reaper.consider(ino)
            if self.open_files.left_by_dead:
                self.reaper.wake()
            if session in self.open_files.stored:
                # Off the store's list before the unmount ends: a cluster stopped right after (`local
                # down`) had its next master wait `session-timeout` for the mount, its unlinked files'
                # space held meanwhile (a probe).  Failing that, the reaper closes it later.
                try:
                    await self._propose("close_sessions", sessions=[session])
                    self.open_files.closed([session])
                except ChunkFSError as exc:
                    logger.info("mount session %s: not closed in the store yet (%s); retrying", session, exc)
            logger.info("mount session %s ended", session)
            return {"known": True}
        table = self.open_files
        if h.get("ask_listed"):
            # A question only: a renewal here would make the session known without its files, and the
            # mount's next plain renewal would then end a new master's grace period before they came.
            if not table.is_listed:
                raise Unavailable("this master has not read its list of mount sessions yet; retry shortly")
            return {"known": session in table.known,
                    "listed": session in table.stored and session not in table.ended}
        await self._ensure_session(session)
        known = table.renew(session, complete=bool(h.get("complete")))
        read_only = set(int_list(h.get("read_only") or [], "read_only"))
        for ino, seq in zip(inos, seqs, strict=True):
            self.open_files.open(session, ino, seq, read_only=ino in read_only)
        if inos:
            logger.info("mount session %s re-registered %d open file(s)", session, len(inos))
        return {"known": known}

    async def _ensure_session(self, session: str) -> None:
        """List a mount's session in the store before it holds anything, so the next master waits for it."""
        table = self.open_files
        if session in table.stored and session not in table.ended:
            return
        table.ended.discard(session)
        await self._propose("open_session", session=session, time=time.time())
        table.stored.add(session)

    async def _on_setattr(self, conn: Connection, h: dict[str, Any]) -> dict[str, Any]:
        args = {k: h[f] for k, f in (("size", "size"), ("mode", "mode"), ("mtime", "mtime_ns"), ("atime", "atime_ns"),
                                     ("extend", "extend"), ("ctime", "ctime_ns")) if h.get(f) is not None}
        if "extend" in args:
            extend = int_list(args["extend"], "extend", 3)
            if len(extend) not in (2, 3) or min(extend) < 0:
                raise InvalidArgument("extend must be [size, mtime_ns] or [size, mtime_ns, cut], none negative")
        self._check_linked(h)
        if "size" in args:
            # A trim of what a dead writer left past the size, under way or not zeroed yet: its cut of the
            # last chunk first, as an open waits for it (a size set in between showed the dead writer's
            # bytes, in CI); and one not made yet, of a file that size would grow.
            await self.reaper.settled(h["ino"], args["size"])
        try:
            attr = await self._setattr(h["ino"], args, self._once(h))
        except WritesLost:
            self._trim_later(h["ino"])
            raise
        self.watchers.changed(conn, inodes=[h["ino"]], cut=attr if "size" in args else None)
        return {"attr": attr}

    async def _setattr(self, ino: int, args: dict[str, Any], once: dict[str, Any]) -> dict[str, Any]:
        if "size" in args:
            await self._cut_boundary_chunk(ino, args["size"])
        result = await self._propose("setattr", ino=ino, time=stamp_ns(), **args, **once)
        await self.chunks.delete_cut(result["dropped"])
        return dict(result["attr"])

    async def _remove_name(self, op: str, in_dir: int, entry: str, **args: Any) -> int:
        """Unlink, or rename over, a name: free the file at once only if no mount holds it open.

        The decision is for the inode the name has now; if another change
        moves names before this one applies, the store keeps the file as an
        orphan instead, and the reaper frees it (never the other way round).
        """
        ino = self.store.child_ino(in_dir, entry) or 0
        free = ino if ino and not self.open_files.held(ino) else 0
        if free:
            self.open_files.freeing.add(free)
        try:
            result = await self._propose(op, time=stamp_ns(), free_ino=free, **args)
        finally:
            self.open_files.freeing.discard(free)
        # Dropped only when freed, and freed only when no mount held the file.
        self.chunks.delete_chunks(result["dropped"])
        if result["orphan"]:
            self.reaper.consider(result["orphan"])
        return ino

    async def _on_rename(self, conn: Connection, h: dict[str, Any]) -> dict[str, Any]:
        held = await self._hold_replaced(h)
        moved = self.store.child_ino(h["parent"], h["name"]) or 0
        try:
            # (no await between the hold and the decision `_remove_name` makes before its commit)
            replaced = await self._remove_name(
                "rename", h["new_parent"], h["new_name"], parent=h["parent"], name=h["name"],
                new_parent=h["new_parent"], new_name=h["new_name"], noreplace=h.get("noreplace", False),
                **self._once(h))
        except BaseException:
            if held:
                self.open_files.release(h["session"], held, h["hold"])
            raise
        self.watchers.changed(conn, [(h["parent"], h["name"]), (h["new_parent"], h["new_name"])],
                              [i for i in (h["parent"], h["new_parent"], moved, replaced) if i])
        reply = self._parents(h["parent"], h["new_parent"])
        if held and held == replaced:
            reply["held"] = held
        elif held and self.open_files.release(h["session"], held, h["hold"]):
            self.reaper.consider(held)  # (names moved meanwhile: the file held is not the one replaced)
        return reply

    async def _hold_replaced(self, h: dict[str, Any]) -> int:
        """Hold the file a mount's rename replaces for its session, when asked (RENAME's `hold`); its inode.

        The mount's kernel still has that file (a process's open may be on its way, or an
        ``O_PATH`` descriptor holds it), and on a local disk such an open finds the old file.
        Held, the replaced file becomes an orphan that lives until the mount releases it (once its
        kernel forgets the inode) rather than vanishing with the rename's commit.
        """
        if h.get("hold") is None or h.get("session") is None:
            return 0
        await self._ensure_session(h["session"])
        ino = self.store.child_ino(h["new_parent"], h["new_name"])
        if not ino or ino in self.open_files.freeing or ino == self.store.child_ino(h["parent"], h["name"]) \
                or self.store.getattr(ino)["type"] != "f":
            return 0
        self.open_files.open(h["session"], ino, h["hold"])
        return ino

    async def _on_unlink(self, conn: Connection, h: dict[str, Any]) -> dict[str, Any]:
        ino = await self._remove_name("unlink", h["parent"], h["name"], parent=h["parent"], name=h["name"],
                                      **self._once(h))
        self.watchers.changed(conn, [(h["parent"], h["name"])], [i for i in (h["parent"], ino) if i])
        return self._parents(h["parent"])

    async def _on_rmdir(self, conn: Connection, h: dict[str, Any]) -> dict[str, Any]:
        ino = self.store.child_ino(h["parent"], h["name"]) or 0  # (its nlink goes to 0: a mount holding it open)
        await self._propose("rmdir", parent=h["parent"], name=h["name"], time=stamp_ns(), **self._once(h))
        self.watchers.changed(conn, [(h["parent"], h["name"])], [i for i in (h["parent"], ino) if i])
        return self._parents(h["parent"])

    async def _on_set_replicas(self, conn: Connection, h: dict[str, Any]) -> dict[str, Any]:
        replicas, min_replicas = h["replicas"], h["min_replicas"]
        if not 1 <= min_replicas <= replicas <= MAX_REPLICAS:
            raise InvalidArgument(f"replicas must satisfy 1 <= MIN <= N <= {MAX_REPLICAS}")
        changed = 0
        async for page in self._pages(h["ino"], h["recursive"]):
            changed += await self._propose("set_replicas", inos=page, replicas=replicas, min_replicas=min_replicas)
        await self._attributes_set(f"replicas={replicas}:{min_replicas}", h, changed)
        return {"changed": changed}

    async def _attributes_set(self, what: str, h: dict[str, Any], changed: int) -> None:
        """An event for a change of where and how many replicas live: its copies and moves follow."""
        below = " and below" if h["recursive"] else ""
        await self._event("info", f"{what} set on {self.store.path_of(h['ino'])}{below}: {changed} item(s)")

    async def _pages(self, ino: int, recursive: bool) -> AsyncIterator[list[int]]:
        """The inodes a (recursive) attribute change covers, in pages: one replicated command each (subtree.py).

        The caller's proposal of one page is awaited before the next is read,
        so the loop serves other requests (and the new values are visible)
        between pages, and no apply walks more than a page.
        """
        await self.log.read_barrier()
        attr = self.store.getattr(ino)
        if not recursive:
            yield [ino]
            return
        for page in subtree_pages(self.store, ino, attr["type"]):
            yield page

    async def _on_extend(self, conn: Connection, h: dict[str, Any]) -> dict[str, Any]:
        if h["size"] < 0:
            raise InvalidArgument("size must not be negative")
        cut = {"cut": h["cut"]} if h.get("cut") is not None else {}
        try:
            attr = await self._propose("extend", ino=h["ino"], size=h["size"], mtime=h["mtime_ns"],
                                       time=stamp_ns(), **cut)
        except WritesLost:
            self._trim_later(h["ino"])
            raise
        self.watchers.changed(conn, inodes=[h["ino"]])
        return {"attr": attr}

    # -- chunks ------------------------------------------------------------------

    def _unknown(self, cs_id: int, chunk_id: int) -> bool:
        """Whether `cs_id` is still reporting its replicas and has not reported this chunk yet."""
        server = self.live.get(cs_id)
        return server is not None and server.reporting and chunk_id not in server.replicas

    def _wait_for_reports(self, chunk: Chunk, cs_ids: set[int] | list[int] | tuple[int, ...]) -> None:
        """Make the writer retry (not drop or re-create replicas) while their servers still report them."""
        unknown = sorted(cs for cs in cs_ids if self._unknown(cs, chunk.chunk_id))
        if unknown:
            raise Unavailable(
                f"chunk {chunk.chunk_id:#x}: CS {','.join(map(str, unknown))} still reporting its replicas "
                "after registering; retry shortly"
            )

    def _map(self, ino: int, chunk: Chunk | None) -> dict[str, Any]:
        size = self.node.cluster.chunk_size
        if chunk is None:
            return {"chunk_id": 0, "version": 0, "replicas": [], "chunk_size": size}
        held = [cs for cs in chunk.replicas if self.chunks.holds(cs, chunk.chunk_id)]
        replicas = [[cs, self.live[cs].addr] for cs in sorted(held, key=lambda cs: _rank(ino, cs))]
        return {"chunk_id": chunk.chunk_id, "version": chunk.version, "replicas": replicas, "chunk_size": size}

    def _read_map(self, ino: int, chunk: Chunk | None) -> dict[str, Any]:
        """A map to read through: while the chunk's replicas are still to be compared, only the one the
        comparison keeps; none on a server back from a power cut that has not named the chunks it wrote
        last yet (fanned_mender.py `read_from`)."""
        reply = self._map(ino, chunk)
        if chunk is not None and self.mender.narrows(chunk.chunk_id):
            reply["replicas"] = self.mender.read_from(chunk.chunk_id, reply["replicas"])
        return reply

    async def _on_chunk_read(self, conn: Connection, h: dict[str, Any]) -> dict[str, Any]:
        await self.log.read_barrier()
        attr = self.store.getattr(h["ino"])
        if attr["type"] != "f":
            raise InvalidArgument("not a regular file")
        reply = self._read_map(h["ino"], self.store.chunk_at(h["ino"], h["index"]))
        if reply["chunk_id"] and not reply["replicas"]:
            raise Unavailable(f"chunk {reply['chunk_id']:#x} has no replica online; bring its chunk servers back")
        return reply

    async def _on_chunk_write(self, conn: Connection, h: dict[str, Any], payload: bytes = b"") -> dict[str, Any]:
        """The chain to write chunk `index` of a file through, the chunk allocated first if it has none.

        A write may come with the request (`offset` and the payload): when this request allocates
        the chunk, its replicas are made with those bytes in them and the answer says `written`,
        which saves the writer the trip down the chain; otherwise the writer sends them as usual.
        """
        ino, index = h["ino"], h["index"]
        if index < 0:
            raise InvalidArgument("chunk index must not be negative")
        offset = first_write(h, len(payload))
        first = None
        if offset is not None:
            if offset + len(payload) > self.node.cluster.chunk_size:
                raise InvalidArgument(f"a write of {len(payload)} bytes at {offset} does not fit in a chunk "
                                      f"of {self.node.cluster.chunk_size} bytes")
            first = (offset, bytes(payload))
        failed = {cs for cs in h.get("failed", []) if isinstance(cs, int)}
        for attempt in range(CHUNK_GONE_TRIES):
            # Read before the chunk: a map that says a cut is of the chunk as that cut left it, or later,
            # and a write through it comes after that cut (FEATURE_MAP_CUTS).
            cut = self.store.cut_of(ino) if self.watchers.takes(conn, FEATURE_MAP_CUTS) else None
            try:
                chunk, written = await self._chunk_to_write(conn, h, first, failed)
                break
            except NotFound:
                # The chunk went while this request waited (another client cut the file: O_TRUNC, truncate):
                # the writer is answered with the chunk there now.  It failed with ENOENT (a probe: 15 of 130
                # appends on one mount while another rewrote the file with O_TRUNC).  The file gone: as said.
                self.store.getattr(ino)
                if attempt == CHUNK_GONE_TRIES - 1:
                    raise Unavailable(f"inode {ino}: chunk {index} was cut away {CHUNK_GONE_TRIES} times while "
                                      "this write waited for it; try again") from None
                failed = set()
        reply = self._map(ino, chunk)
        if self.mender.narrows(chunk.chunk_id) and self.watchers.takes(conn, FEATURE_WRITE_MAP_READS):
            read = self.mender.read_from(chunk.chunk_id, reply["replicas"])
            if read != reply["replicas"]:
                reply["read"] = read  # (the writer keeps its map for reads too: not this one)
        if written:
            reply["written"] = True
        if h.get("fan") and self.fans.holds(chunk, conn):
            reply["fan"] = True
        if cut is not None:
            reply["cut"] = cut
        return reply

    async def _chunk_to_write(
        self, conn: Connection, h: dict[str, Any], first: tuple[int, bytes] | None, failed: set[int]
    ) -> tuple[Chunk, bool]:
        """The chunk a CHUNK_WRITE asks for, allocated if it has none (whether with the first write in it),
        its `failed` replicas dropped and other writers' fan-out ended.  NotFound: it went meanwhile."""
        ino, index = h["ino"], h["index"]
        if self.store.chunk_at(ino, index) is None:
            attr = self.store.getattr(ino)
            if attr["type"] == "f":
                # Wait for missing servers outside the chunk's lock: its stripe is shared with other chunks.
                self.check_servers_settled()
                await self._place_new_chunk(ino, attr)
        async with self.chunks.lock(ino, index):
            chunk = self.store.chunk_at(ino, index)
            if chunk is None:
                # Only a writer that asked may fan out: a writer let do so is mended after if it leaves
                # without ending a session, which a client that takes no `fan` (the CLI) never does.
                return await self._allocate(ino, index, first, writer=conn if h.get("fan") else None)
            if failed and not _about(h, chunk):
                # The writer's map was older than this chunk (the file was cut and the chunk made
                # again, or its replicas changed since): what failed there says nothing about
                # the replicas of this one.  The writer gets the current map and tries again.
                logger.info("chunk %#x: a writer's failure on chunk %#x version %#x ignored: now version %#x",
                            chunk.chunk_id, h.get("chunk_id", 0), h.get("version", 0), chunk.version)
                failed = set()
            why = h.get("why", "")
            if failed and why.startswith("no_space"):
                self._full(failed)
            chunk = await self._drop_replicas(await self._ensure_created(chunk), failed, why, writer=True)
            return await self._one_writer(chunk, conn), False

    async def _one_writer(self, chunk: Chunk, writer: object | None) -> Chunk:
        """`writer` is about to get `chunk`'s map to write it: when another writer may be sending writes to
        every replica at once at its version (fan_grants.py), the chunk moves to a new version first, which
        ends that, and everyone writes down the chain from then on.  Under the chunk's lock."""
        if not self.fans.must_move(chunk, writer):
            return chunk
        self.fans.forget(chunk.chunk_id)
        moved = await self.move_on(chunk)
        logger.debug("chunk %#x: a second writer; version %#x -> %#x", chunk.chunk_id, chunk.version, moved.version)
        return moved

    async def move_on(self, chunk: Chunk, cut: int | None = None) -> Chunk:
        """`chunk` (as read under its lock, every replica held) at a new version, its replicas the same: a
        replica that did not move is dropped.  `cut`: each replica is cut there as it moves."""
        change = await self.chunks.set_replicas(chunk, chunk.replicas, cut=cut)
        return await self._drop_replicas(change.chunk, set(change.failed))

    def _full(self, cs_ids: set[int]) -> None:
        """These servers said their disk is full: no new chunks go there before their next heartbeat."""
        for cs in cs_ids & set(self.live):
            self.live[cs].free = 0

    def check_servers_settled(self) -> None:
        """A new master knows no chunk server until they reconnect: make writers wait, not fail."""
        if time.monotonic() - self._master_since > CS_RECONNECT_GRACE:
            return
        missing = [cs["id"] for cs in self.store.chunk_servers()
                   if (cs["id"] not in self.live and cs["id"] not in self._absent)
                   or (cs["id"] in self.live and self.live[cs["id"]].reporting)]
        if missing:
            raise Unavailable(
                f"this master is new; waiting for chunk servers {missing} to reconnect: retry shortly"
            )

    async def _find_absent_servers(self, since: float) -> None:
        """Which registered chunk servers still missing after a moment refuse connections: not waited for."""
        await asyncio.sleep(absent_servers.PROBE_DELAY)
        addrs = {cs["id"]: cs["addr"] for cs in self.store.chunk_servers() if cs["id"] not in self.live}
        refused = await absent_servers.refusing(addrs) if addrs else set()
        if since != self._master_since or not self.raft.is_leader():
            return  # no longer the master that asked
        for cs in sorted(refused - set(self.live)):
            self._absent.add(cs)
            await self._event("info", f"CS#{cs} at {addrs[cs]} refuses connections: this new master places "
                              "new chunks without waiting for it to reconnect")

    async def _allocate(
        self, ino: int, index: int, first: tuple[int, bytes] | None, writer: Connection | None,
    ) -> tuple[Chunk, bool]:
        """Allocate chunk `index` of `ino` for `writer`, its replicas made with `first` (offset, bytes) in
        them when given; whether every replica of the chunk as returned holds `first`.

        `writer` (None: one that does not fan out) is the chunk's one writer while no one else asks for
        its map (fan_grants.py), when every server of its replicas cuts a replica at a new version (a
        cut must end fanning out too).
        """
        self.check_servers_settled()
        attr = self.store.getattr(ino)
        if attr["type"] != "f":
            raise InvalidArgument("not a regular file")
        started = time.perf_counter()
        chosen = await self._place_new_chunk(ino, attr, wait=0.0)
        TIMINGS.since("alloc.place", started)
        chunk_id = await self._new_chunk_id()
        if first is not None and not self._servers_have(FEATURE_FIRST_WRITE, chosen):
            first = None  # a server of an earlier version among them: the writer sends its write down the chain
        started = time.perf_counter()
        # The replicas are made while the allocation commits; versions from this term are above
        # every version a deposed master handed out (store._new_version).
        chunk, failures = await self.chunks.allocate_created(
            ino, index, chosen, chunk_id, self.log.term << VERSION_TERM_SHIFT, first)
        TIMINGS.since("alloc.commit_and_create", started)
        if chunk.chunk_id != chunk_id:  # allocated before (a retried request): as any existing chunk
            chunk = await self._drop_replicas(await self._ensure_created(chunk), set())
            return await self._one_writer(chunk, writer), False
        logger.info(
            "chunk %#x (inode %d, index %d) created at version %#x on CS %s",
            chunk.chunk_id, ino, index, chunk.version, ",".join(map(str, chunk.replicas)),
        )
        self._full({cs for cs, exc in failures.items() if isinstance(exc, NoSpace)})
        why = "; ".join(str(exc) if f"CS#{cs}" in str(exc) else f"CS#{cs}: {exc}"
                        for cs, exc in sorted(failures.items()))[:300]
        # With a server failed, the write goes down the new chain as any write (it is not on a replica
        # made in that server's place, if any).
        chunk = await self._drop_replicas(chunk, set(failures), why)
        if writer is not None and not writer.closed and self._servers_have(FEATURE_VERSIONED_CUT, chunk.replicas):
            self.fans.give(chunk, writer)  # (closed meanwhile: its departure was counted already)
        return chunk, first is not None and not failures

    def _servers_have(self, feature: str, cs_ids: Iterable[int]) -> bool:
        """Whether every one of these chunk servers said it does `feature` (CS_REGISTER's `features`)."""
        return all(feature in getattr(self.live.get(cs), "features", ()) for cs in cs_ids)

    async def _place_new_chunk(self, ino: int, attr: dict[str, Any], wait: float = PLACEMENT_WAIT) -> list[int]:
        """Choose servers for a new chunk: active ones of the file's tier, distinct failure domains first.

        Too few because servers are missing (not connected, silent, still
        reporting their replicas) is not a full cluster: wait for them
        (bounded), then fail with Unavailable (EIO) saying which.  NoSpace
        (ENOSPC) only when the servers there are, all of them, lack room.
        """
        need = attr["min_replicas"]
        deadline = time.monotonic() + wait
        while True:
            chosen = self.healing.place(attr, attr["replicas"])
            if len(chosen) >= need:
                return chosen
            missing = self._missing_servers(attr.get("tier", 0))
            able = len(self.healing.candidates(attr))
            goal = f"replicas={attr['replicas']}:{need}"
            quiet = time.monotonic() - self._placement_warned < PLACEMENT_WARNING_EVERY
            if able + len(missing) < need:
                tier = attr.get("tier", 0)
                of_tier = len(self._tier_servers(tier))
                if of_tier < need:  # (a probe: blamed space, with 370 GB free, for a tier of 3 servers)
                    why = (f"{of_tier} chunk server(s) of tier {tier} (the file's tier=) online, {need} needed "
                           f"({goal})", "add servers of that tier (make-cs --tier), or set a lower replicas= or "
                           "another tier= on the file's folder")
                else:
                    why = (f"{able} chunk server(s) with free space online, {need} needed ({goal})",
                           "add chunk servers or free space")
                if not quiet:
                    self._placement_warned = time.monotonic()
                    logger.warning("cannot place a chunk of inode %d: %s; none missing: %s", ino, *why)
                raise NoSpace(f"cannot place a chunk: {why[0]}; {why[1]}")
            if time.monotonic() >= deadline:
                why = ", ".join(f"CS#{cs} {reason}" for cs, reason in sorted(missing.items()))
                full = self._full_servers(attr.get("tier", 0))
                if full:  # space may be short too: say so, rather than blame only the missing servers
                    why += "; full: " + ", ".join(f"CS#{cs}" for cs in full)
                    then = "retry when they are back, or free space or add chunk servers"
                else:
                    then = "not out of space: retry when they are back"
                if not quiet:
                    self._placement_warned = time.monotonic()
                    logger.warning("cannot place a chunk of inode %d: %d chunk server(s) can take it, %d needed (%s); "
                                   "waited %gs for missing servers: %s", ino, able, need, goal, wait, why)
                raise Unavailable(
                    f"cannot place a chunk: {able} chunk server(s) can take it, {need} needed ({goal}); "
                    f"missing: {why}; {then}"
                )
            await asyncio.sleep(PLACEMENT_POLL)

    def _tier_servers(self, tier: int) -> list[int]:
        """Active chunk servers of `tier`, full or not."""
        return sorted(cs for cs in self.live if self.healing.is_active(cs)
                      and (place := self.healing.place_of(cs)) is not None and place.tier == tier)

    def _full_servers(self, tier: int) -> list[int]:
        """Active chunk servers of `tier` that take no new chunk now: their disks are full."""
        able = {p.cs_id for p in self.healing.candidates({"tier": tier})}
        return [cs for cs in self._tier_servers(tier) if cs not in able]

    def _missing_servers(self, tier: int) -> dict[int, str]:
        """Registered chunk servers that could take chunks of `tier` but are not active now, and why.

        A server's tier is known once it registered with this master; one never
        seen since counts as possibly of any tier.
        """
        out: dict[int, str] = {}
        for cs in self.store.chunk_servers():
            cs_id = cs["id"]
            if self.healing.is_active(cs_id) or cs_id in self.healing.draining:
                continue
            if cs_id in self.healing.labels and self.healing.labels[cs_id][1] != tier:
                continue
            server = self.live.get(cs_id)
            if server is None:
                out[cs_id] = "not connected"
            elif server.reporting:
                out[cs_id] = "still reporting its replicas"
            else:
                out[cs_id] = f"silent for {self.awake() - server.last_seen:.0f}s"
        return out

    async def _ensure_created(self, chunk: Chunk) -> Chunk:
        """Finish an allocation a previous master committed but died before carrying out.

        If no replica of the chunk exists anywhere, no write to it was ever
        acknowledged (that needs every replica), so creating it empty is
        exactly the state the writer expects.  Replicas that exist elsewhere
        but are missing on one server are not recreated: that server lost
        them, and is dropped instead.
        """
        if any(self.chunks.holds(cs, chunk.chunk_id) for cs in chunk.replicas):
            return chunk
        self.check_servers_settled()
        self._wait_for_reports(chunk, chunk.replicas)
        live = [cs for cs in chunk.replicas if cs in self.live]
        if not live:  # (a probe saw "created on CS " with no server named, 1 s after an election)
            logger.warning("chunk %#x: no replica found, and none of its servers (CS %s) connected: nothing created",
                           chunk.chunk_id, ",".join(map(str, chunk.replicas)))
            return chunk
        failed = await self.chunks.create_replicas(chunk, live)
        logger.warning("chunk %#x had no replica anywhere (allocation interrupted): created on CS %s",
                       chunk.chunk_id, ",".join(str(cs) for cs in live if cs not in failed) or "none (each failed)")
        return chunk

    async def _drop_replicas(self, chunk: Chunk, failed: set[int], why: str = "", writer: bool = False) -> Chunk:
        """Take failed or offline replicas out of the write set: a new version (`why`: the writer's error).

        The survivors move to the new version first, so a dropped replica that
        comes back holds an older version and is refused — never served.
        `writer`: `failed` are the replicas a writer saw fail; when dropping
        them would leave fewer than the minimum, the writer waits for them
        (`_writer_may_retry`).
        """
        for _ in range(len(chunk.replicas) + 1):
            bad = {cs for cs in chunk.replicas if cs in failed or not self.chunks.holds(cs, chunk.chunk_id)}
            if not bad:
                return chunk
            self._wait_for_reports(chunk, bad - failed)
            if not failed & bad:
                self.check_servers_settled()
            survivors = [cs for cs in chunk.replicas if cs not in bad]
            min_replicas = self.store.getattr(chunk.ino)["min_replicas"]
            if len(survivors) < min_replicas:
                if writer and failed & bad and await self._writer_may_retry(chunk, failed & bad, min_replicas):
                    return chunk
                raise Unavailable(
                    f"chunk {chunk.chunk_id:#x} has {len(survivors)} writable replica(s), fewer than the minimum "
                    f"{min_replicas}; a writer retries for a while (a mount's master_wait), then fails with EIO: "
                    "bring its chunk servers back"
                )
            # A dropped replica still holds the old version, and a reader whose map is older than the
            # drop (a file opened before it) asks for it: deleted, when its server answers (and enough
            # survivors moved), before the new version is handed out; else its lease runs out first
            # (chunks.py, step 5).  One whose link is gone has the replicas it reports stale deleted
            # when it registers again, before it serves any.
            change = await self.chunks.set_replicas(chunk, survivors, delete=[cs for cs in bad if cs in self.live],
                                                    delete_if_moved=min_replicas)
            new = change.chunk
            failed |= change.failed
            await self._event(
                "warning",
                f"chunk {chunk.chunk_id:#x}: replica(s) on CS {','.join(map(str, sorted(bad)))} dropped; "
                f"{len(survivors)} left, version {new.version:#x}" + (f" ({why})" if why and failed & bad else ""),
            )
            chunk = new
        raise Unavailable(f"chunk {chunk.chunk_id:#x}: replicas keep failing; try again")

    async def _writer_may_retry(self, chunk: Chunk, reported: set[int], min_replicas: int) -> bool:
        """Whether a writer may send its write down the same chain again, although it saw `reported` fail.

        Dropping them would leave fewer than `min_replicas`, so the writer was
        told to wait, and its client asks again with the same report until it
        gives up (`master_wait`).  A server that failed a write and is back
        (restarted, a connection reset) must then end the wait: it holds the
        chunk again and answers now.  It missed nothing acknowledged, since no
        write to the chunk could be acknowledged without it, and the write it
        failed is the one sent again.  Without this the report kept the write
        waiting for a server that was back, and failed it with EIO after
        `master_wait` (a fault probe: a chunk server restarted in 2-4 s, 6
        writes out of 6 failed after 20 s).  A server that keeps failing
        writes fails this one again, and the writer gives up after its tries.
        """
        holding = {cs for cs in chunk.replicas if self.chunks.holds(cs, chunk.chunk_id)}
        if len(holding) < min_replicas or not reported <= holding:
            return False
        answers = await asyncio.gather(*(self._cs_call(cs, Msg.PING, {}, timeout=CS_PING_TIMEOUT)
                                         for cs in sorted(reported)), return_exceptions=True)
        if any(isinstance(answer, BaseException) for answer in answers):
            return False
        logger.info("chunk %#x: CS %s failed a write and answer again; the writer sends it down the same chain "
                    "(dropping them would leave fewer than the minimum %d replicas)",
                    chunk.chunk_id, ",".join(map(str, sorted(reported))), min_replicas)
        return True

    async def _cut_boundary_chunk(self, ino: int, size: int) -> None:
        """Before a file shrinks, zero the tail of the chunk the new end falls in.

        Otherwise growing the file again would bring the old bytes back.  Each
        replica is cut and moved to a new version in one step: the writes in
        flight to the chunk (another mount's, sent on by its head) reach each
        replica before its cut or are refused after it, and are sent again at
        the new version, after every cut.  Cut at the same version, a write that
        one replica took before its cut and another after left the replicas
        different for good (a fault probe: 2-3 rounds in 9 of a truncating loop
        beside another mount's writes).
        """
        chunk_size = self.node.cluster.chunk_size
        if size % chunk_size == 0:
            return
        # The chunk's lock: not while the replication monitor copies it (replication.py).
        async with self.chunks.lock(ino, size // chunk_size):
            chunk = self.store.chunk_at(ino, size // chunk_size)
            if chunk is None:
                return
            chunk = await self._drop_replicas(chunk, set())
            if self._servers_have(FEATURE_VERSIONED_CUT, chunk.replicas):
                await self.move_on(chunk, cut=size % chunk_size)
                return
            # A server of an earlier version among them: cut at the same version, as before.
            failed = await self.chunks.call_each(chunk.replicas, Msg.CS_TRUNCATE_CHUNK, {
                "chunk_id": chunk.chunk_id, "version": chunk.version, "length": size % chunk_size})
            await self._drop_replicas(chunk, set(failed))

    def _trim_later(self, ino: int) -> None:
        """A writer was told its writes were cut: what it wrote past the size since goes at its last release."""
        if self.open_files.may_be_written(ino):
            self.open_files.trim_later.add(ino)
        else:
            self.open_files.left_by_dead.add(ino)
            self.reaper.wake()

    async def trim_past_size(self, ino: int, size: int) -> None:
        """Zero what a dead mount may have written past the file's `size`, and drop its chunks past it.

        A truncate to the size the file has, without moving its times; the
        caller makes sure that no mount holds the file open to write (OrphanReaper).
        Committed first: a size committed meanwhile (the writer was only
        silent, and is back) calls the trim off before any byte is zeroed, and
        one committed after it, for writes made before, fails (store `_op_trim`).
        """
        result = await self._propose("trim", ino=ino, size=size)
        if "attr" not in result:
            return
        await self.chunks.delete_cut(result["dropped"])
        await self.zero_trimmed(ino)

    async def zero_trimmed(self, ino: int) -> None:
        """Zero the last chunk of a trimmed file past the size it was trimmed at (`trim_past_size`).

        Until then the file is on the store's ``unzeroed`` list, and every open and size change of it
        waits for this (OrphanReaper `settled`): a chunk server that had not registered with a
        new master failed the zeroing, a truncate grew the file, and the retry zeroed past the grown
        size, which left the dead writer's bytes in between (1 run in 4 of a test, in CI).
        """
        size = self.store.unzeroed_size(ino)
        if size is None:
            return  # zeroed, or cut at or below that size since
        await self._cut_boundary_chunk(ino, size)
        await self._propose("trim_zeroed", ino=ino)  # (a master that dies before: the next one zeroes again)
        # Not told as a cut: a mount that was only silent would take its writes for ones made before a
        # truncate, and commit nothing without a word; its size fails instead (store `_op_extend`).
        self.watchers.changed(None, inodes=[ino])
        logger.info("inode %d: what a dead mount may have written past its size (%d bytes) was cut", ino, size)

    async def _cs_call(self, cs_id: int, msg: Msg, header: dict[str, Any], payload: bytes = b"",
                       timeout: float = CS_COMMAND_TIMEOUT) -> dict[str, Any]:
        server = self.live.get(cs_id)
        if server is None:
            raise Unavailable(f"CS#{cs_id} is offline")
        reply, _ = await server.conn.call(msg, header, payload, timeout=timeout)
        return reply

    async def _on_file_lease(self, conn: Connection, h: dict[str, Any]) -> dict[str, Any]:
        if h["op"] == "release":
            self.leases.release(h["ino"], h["holder"])
            return {"ttl": 0.0}
        await self.log.read_barrier()  # still the master (a deposed one must not grant)
        if self.store.getattr(h["ino"])["type"] != "f":
            raise InvalidArgument("only regular files take exclusive leases")
        return {"ttl": self.leases.grant(h["ino"], h["holder"], h["op"])}

    async def _on_report_bad_replica(self, conn: Connection, h: dict[str, Any]) -> dict[str, Any]:
        # From the server itself (its scrubber): already checked, unless it asks for a `check` (a replica it
        # found suspect and left in place: verified as a reader's report is, and moved aside only then).
        from_server = isinstance(conn.tag, LiveServer) and conn.tag.cs_id == h["cs_id"]
        own = from_server and not h.get("check")
        reporter = f"CS#{h['cs_id']}'s scrubber" if own else \
            f"CS#{h['cs_id']} at its start" if from_server else f"client {conn.peer_name}"
        blocks = None if h.get("blocks") is None else int_list(h["blocks"], "blocks", MAX_BLOCKS)
        unsynced = from_server and bool(h.get("unsynced"))  # (a reader cannot know)
        if self.healing.bad.report(h["chunk_id"], h["cs_id"], h["reason"], own, reporter, blocks, unsynced,
                                   from_server=from_server):
            await self._event(
                "warning", f"{reporter} reports a bad replica of chunk {h['chunk_id']:#x} "
                f"on CS#{h['cs_id']}: {h['reason'][:200]}",
            )
        return {}

    async def _on_get_config(self, conn: Connection, h: dict[str, Any]) -> dict[str, Any]:
        await self.log.read_barrier()
        return {"settings": self.healing.settings(fresh=True)}

    async def _on_set_config(self, conn: Connection, h: dict[str, Any]) -> dict[str, Any]:
        return {"settings": await self.healing.set_config(h["values"])}

    async def _on_set_placement(self, conn: Connection, h: dict[str, Any]) -> dict[str, Any]:
        domain, tier = h["failure_domain"], h["tier"]
        if domain is not None and domain not in FAILURE_DOMAINS:
            raise InvalidArgument(f"failure-domain must be one of {', '.join(FAILURE_DOMAINS)}")
        if tier is not None and not 0 <= tier <= MAX_TIER:
            raise InvalidArgument(f"tier must be 0-{MAX_TIER}")
        changed = 0
        async for page in self._pages(h["ino"], h["recursive"]):
            changed += await self._propose("set_placement", inos=page, domain=domain, tier=tier)
        said = {"failure-domain": domain, "tier": tier}
        await self._attributes_set(" ".join(f"{k}={v}" for k, v in said.items() if v is not None), h, changed)
        return {"changed": changed}

    async def _on_rm_cs(self, conn: Connection, h: dict[str, Any]) -> dict[str, Any]:
        return await self.healing.rm_cs(h["id"], h["cancel"])

    # -- chunk servers -----------------------------------------------------------

    async def _on_cs_register(self, conn: Connection, h: dict[str, Any]) -> dict[str, Any]:
        if h["cluster_uuid"] != self.node.cluster.uuid:
            raise InvalidArgument(
                f"this chunk server belongs to another cluster (id {h['cluster_uuid']}, "
                f"this one is {self.node.cluster.uuid})"
            )
        reported = int_pairs(h["replicas"], "replicas")
        self.healing.admit(h["cs_id"])
        cs_id = await self._propose("register_cs", cs_id=h["cs_id"], addr=h["addr"], host=h["host"], time=time.time())
        old = self.live.get(cs_id)
        if old is not None and old.conn is not conn:
            old.conn.close()
        server = LiveServer(cs_id, h["addr"], h["host"], conn, h["total"], h["free"], last_seen=self.awake(),
                            reporting=True,
                            replicas=HeldReplicas(cs_id, self.store.listed_on, self.store.still_listed),
                            features=frozenset(x for x in h.get("features", []) if isinstance(x, str)),
                            unclean=bool(h.get("unclean")))
        if server.unclean:
            self.mender.reporting.add(cs_id)  # (its replicas read from elsewhere until it names its chunks)
        last = not h.get("more")
        delete, held, upto = self._take_replicas(server, reported, last)
        conn.tag = server
        # The master's commands (a copy's target fetching a chunk while writers wait for it, a new
        # chunk's replicas) give up a server frozen since its last heartbeat in seconds: see SILENCE_LIMIT.
        conn.silence_limit = SILENCE_LIMIT
        self.live[cs_id] = server
        self.healing.on_register(cs_id, h.get("location", ""), h.get("tier", 0))
        await self._covered(server, held, upto, last)
        reply: dict[str, Any] = {"cs_id": cs_id, "delete": delete}
        if FEATURE_LEASE in server.features:
            reply["lease"] = True  # this master's term is confirmed, by the commit of the registration
        return reply

    async def _on_cs_report_replicas(self, conn: Connection, h: dict[str, Any]) -> dict[str, Any]:
        """One more page of a registration: answer its stale replicas; after the last, the server is known."""
        server = conn.tag
        if not isinstance(server, LiveServer) or server.cs_id != h["cs_id"] or not server.reporting:
            raise InvalidArgument("replica report outside a registration: send CS_REGISTER with more=true first")
        if self.live.get(server.cs_id) is not server:
            raise Unavailable(f"CS#{server.cs_id} registered again on another connection")
        reported = int_pairs(h["replicas"], "replicas")
        delete, held, upto = self._take_replicas(server, reported, h["last"])
        server.last_seen = self.awake()
        await self._covered(server, held, upto, h["last"])
        return {"delete": delete}

    def _take_replicas(
        self, server: LiveServer, reported: list[tuple[int, int]], last: bool
    ) -> tuple[list[int], list[int], int]:
        """Take one page of reported replicas: (stale or orphaned ones to delete, current ones, the page's end).

        The chunk server sends its replicas in chunk-id order, so a page also
        says what the server does *not* hold: every chunk listing it up to the
        page's last id (up to the newest chunk, after the last page) that it
        did not report at the current version.  The first slice of that range
        is taken here, without an await, so nothing changes a chunk between
        its check and the server's replicas being updated; `_covered` takes
        the rest, if any.  A page is at most REPLICA_PAGE pairs and a slice
        COVER_SLICE chunks: bounded work on the event loop whatever the server holds.
        """
        versions = dict(reported)
        ids = sorted(versions)
        # Never past the newest chunk: an orphan's id from another cluster's past must not cover the ids of
        # chunks allocated later (those are held only once created there).
        newest = self.store.last_chunk_id()
        upto = newest if last else min(ids[-1] if ids else 0, newest)
        # One index range gives both the versions of the page's chunks and the chunks it did not name.
        start = server.replicas.upto
        rows = self.store.listed_range(server.cs_id, start, upto, COVER_SLICE) if upto > start else []
        end = upto if len(rows) < COVER_SLICE else rows[-1][0]
        current = dict(rows)
        outside = [chunk_id for chunk_id in ids if not start < chunk_id <= end]
        if outside:  # out of order, or past a range that lists many it did not report
            current.update(self.store.listed_versions(server.cs_id, outside))
        held = [chunk_id for chunk_id in ids if current.get(chunk_id) == versions[chunk_id]]
        # A listed replica behind the chunk's version is deleted only if a current one is known elsewhere
        # (behind_replicas.py: a master that died while moving a chunk to a new version).
        delete = [chunk_id for chunk_id, version in reported if current.get(chunk_id) != version and not (
            version < current.get(chunk_id, 0) and self.behind.keep(server.cs_id, chunk_id, version))]
        server.replicas.take_range(end, [chunk_id for chunk_id, _ in rows], held)
        server.current += len(held)
        server.stale += len(reported) - len(held)
        server.pages += 1
        return delete, held, upto

    async def _covered(self, server: LiveServer, held: list[int], upto: int, last: bool) -> None:
        """Cover the rest of a page's range in slices, the loop turning between them (a server that lost
        many chunks is listed by many it did not report); after the last page, the server is registered."""
        while server.replicas.upto < upto:
            await asyncio.sleep(0)
            if self.live.get(server.cs_id) is not server:
                raise Unavailable(f"CS#{server.cs_id} registered again on another connection")
            server.replicas.cover(upto, held, COVER_SLICE)
        if last:
            server.replicas.complete = True
            server.reporting = False
            await self._registered(server)

    async def _registered(self, server: LiveServer) -> None:
        self._spawn(self.mender.server_back(server))  # a writer may have died with the last master
        pages = f" in {server.pages} pages" if server.pages > 1 else ""
        await self._event(
            "info",
            f"CS#{server.cs_id} online at {server.addr} (host {server.host}): {server.current} replica(s) current, "
            f"{server.stale} stale or orphaned to delete{pages}",
        )

    def _heard(self, cs_id: int) -> float | None:
        """When (awake clock) this master last heard from `cs_id` in its term; None: not at all."""
        server = self.live.get(cs_id)
        return server.last_seen if server is not None else self.healing.silent_since.get(cs_id)

    def _hang_up(self, cs_id: int) -> None:
        """Drop `cs_id`'s link: no lease is renewed on it; the server registers again (chunks.py, step 5)."""
        server = self.live.get(cs_id)
        if server is not None:
            logger.warning("CS#%d left behind at an old version of a chunk without being told: its link is "
                           "dropped, and it registers again", cs_id)
            server.conn.close()

    async def _on_cs_heartbeat(self, conn: Connection, h: dict[str, Any]) -> dict[str, Any]:
        server = conn.tag
        if not isinstance(server, LiveServer) or server.cs_id != h["cs_id"]:
            raise InvalidArgument("heartbeat before registration")
        server.total, server.free, server.load = h["total"], h["free"], h["load"]
        server.last_seen = self.awake()
        self.view.note_heartbeat(server.cs_id, h)
        if FEATURE_LEASE not in server.features:
            return {"settings": self.healing.cs_settings()}
        # A lease only from a master whose term is confirmed since the heartbeat came (replica_leases.py):
        # one deposed without knowing it yet must not renew one (a read barrier fails it: NotMaster).
        await self.log.read_barrier()
        return {"settings": self.healing.cs_settings(), "lease": self.live.get(server.cs_id) is server}

    def _on_close(self, conn: Connection) -> None:
        self.watchers.discard(conn)
        fanned = self.fans.writer_gone(conn)
        if fanned and not self._stopping and self.raft.is_leader():
            self._spawn(self.mender.writer_gone(fanned))
        server = conn.tag
        if isinstance(server, LiveServer) and self.live.get(server.cs_id) is server:
            del self.live[server.cs_id]
            self.healing.on_disconnect(server)
            if self._stopping:
                return  # this master closed it, stopping: the next master hears from the server again
            self._spawn(self._server_gone(server))

    async def _server_gone(self, server: LiveServer) -> None:
        """Say that a chunk server's connection is lost, as the master.

        A master stopped and resumed believes it still is one until its followers tell it otherwise,
        and its chunk servers, gone to the new master meanwhile, hang up on it one by one: it confirms
        first (within its read lease, at no cost), so that such a server does not warn, twice per
        chunk server, that each went away and that it could not record so.
        """
        try:
            async with asyncio.timeout(GONE_CONFIRM_TIMEOUT):
                await self.log.read_barrier()
        except NotMaster:
            logger.info("CS#%d hung up on this former master (it serves the new one)", server.cs_id)
            return
        except (ChunkFSError, TimeoutError):
            pass  # no majority to confirm with: the loss is worth the warning all the more
        timeout = self.healing.settings()["cs-offline-timeout"]
        await self.event(
            "warning", f"CS#{server.cs_id} connection from {server.addr} lost: inactive, no new chunks go "
            f"there; offline (its replicas re-created elsewhere) unless back within {timeout:g} s")

    # -- cluster state -----------------------------------------------------------

    async def _on_cluster_stat(self, conn: Connection, h: dict[str, Any]) -> dict[str, Any]:
        await self.log.read_barrier()
        await self.healing.settle()
        return {"stat": self.cluster_stat()}

    def cluster_stat(self) -> dict[str, Any]:
        """The cluster at a glance; its cost does not grow with the number of chunks (see health_index.py).

        Chunk counts are as of the health index's last catch-up: callers `await healing.settle()`
        first, so that they are exact.
        """
        counts, per_cs, states = self.healing.report()
        servers = []
        for cs in self.store.chunk_servers():
            live = self.live.get(cs["id"])
            servers.append({
                **cs, "status": states.get(cs["id"], "offline"), **self.healing.labels_of(cs["id"]),
                "total": live.total if live else 0, "free": live.free if live else 0,
                "replicas": per_cs.get(cs["id"], 0),
                # Full: no room for another chunk, so none is placed there (a write that found it full drops it).
                "full": live is not None and live.free <= self.node.cluster.chunk_size,
            })
        return self.view.extend({
            "cluster": {"name": self.node.cluster.name, "uuid": self.node.cluster.uuid,
                        "chunk_size": self.node.cluster.chunk_size},
            "mds": self.log.members(),
            "cs": servers,
            "chunks": counts,
            "healing": self.healing.progress(),
            "space": {"total": sum(s["total"] for s in servers), "free": sum(s["free"] for s in servers)},
            "inodes": self.store.inode_count(),
            "mounts": self._mounts(),
        })

    def _mounts(self) -> dict[str, int]:
        """Mounts the store lists (each since it first held a file open), how many of them have not renewed
        lately (stopped, cut off, dead), and the mounts connected to this master now (every one watches
        for changes from its start: a probe saw `stat` count 1 of 2 mounts, one that had opened nothing)."""
        sessions = self.store.sessions()
        return {"sessions": len(sessions), "silent": len(self.open_files.silent(sessions, SESSION_TTL)),
                "connected": len(self.watchers)}

    async def _on_get_events(self, conn: Connection, h: dict[str, Any]) -> dict[str, Any]:
        await self.log.read_barrier()
        return {"events": self.store.events(h["since"], max(1, min(h["limit"], MAX_EVENTS)))}


def _log_failure(task: asyncio.Task[Any]) -> None:
    """A background task that died says so at once (the orphan reaper or the replication monitor
    ending silently would leave the cluster quietly without that work)."""
    if task.cancelled() or (exc := task.exception()) is None:
        return
    what = getattr(task.get_coro(), "__qualname__", "?")
    if isinstance(exc, ChunkFSError):  # a request of its own failed (no master, a server gone): said, not a bug
        logger.warning("background task %s failed: %s", what, exc)
    else:
        logger.error("background task %s failed: %s", what, exc, exc_info=exc)
