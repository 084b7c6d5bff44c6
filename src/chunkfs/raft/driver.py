"""The asyncio driver: runs one `RaftCore` over real disks and real connections.

It is the metadata server's `ReplicatedLog`.  One task owns the core and
handles its outputs strictly in order — persist (entries, hard state,
snapshot: fsynced), then send, then apply, then serve reads — so no message
ever depends on state that is not on disk.  Proposals that arrive while a
batch is being persisted join the next batch and share its fsync.

Peers are reached over the project's authenticated protocol: a Raft message
is a `RAFT` request whose header carries the message as a plain map.  Sending
is fire-and-forget through a bounded queue per peer; Raft tolerates lost
messages, so a full queue or a dead peer just drops them (and the core
retries).

Snapshots are files (snapshot_files.py): the store is copied into one in a
worker thread every `COMPACT_EVERY` entries or more, and a follower that needs
it gets the file in pieces before the InstallSnapshot message that names it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import shutil
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chunkfs.common.durable import is_disk_full
from chunkfs.common.errors import (
    ChunkFSError,
    ConfigError,
    InvalidArgument,
    NotMaster,
    ProtocolError,
    Timeout,
    Unavailable,
)
from chunkfs.common.knobs import lowered
from chunkfs.common.timings import TIMINGS
from chunkfs.protocol.messages import Msg
from chunkfs.protocol.rpc import Connection, Credentials, connect
from chunkfs.raft import snapshot_files
from chunkfs.raft.core import (
    Entry,
    EntryKind,
    Message,
    RaftCore,
    Ready,
    Snapshot,
    SnapshotRequest,
    message_from_dict,
    message_to_dict,
)
from chunkfs.raft.log_storage import HARDSTATE_FILE, LogCorruption, LogStorage
from chunkfs.raft.snapshot_files import Image, Receiver

logger = logging.getLogger(__name__)

#: Logical clock: one tick every TICK seconds.  Elections start after
#: ELECTION_TICKS..2*ELECTION_TICKS ticks of silence (1-2 s); leaders send
#: heartbeats every HEARTBEAT_TICKS.
TICK = 0.05
ELECTION_TICKS = 20
HEARTBEAT_TICKS = 2
#: The same in seconds: how long a member may be silent and still count as answering (RaftCore.answering_voters).
ELECTION_TIMEOUT = ELECTION_TICKS * TICK
#: How long a proposal or a read barrier waits for its outcome.
PROPOSE_TIMEOUT = 15.0
#: Read lease, seconds after a confirmed ReadIndex round started (Raft thesis 6.4.1).  Every
#: member that acknowledged that round refuses votes for an election timeout (ELECTION_TICKS *
#: TICK = 1 s) after it last heard from this leader, and a restarted member for as long after it
#: starts (`start_quiet`), so no other master can commit before then: reads in the lease need no
#: round of their own.  Half the timeout leaves room for ticks that run late, never early.
READ_LEASE = ELECTION_TICKS * TICK / 2
#: Compact the log (snapshot the store) after at least this many applied entries ...
COMPACT_EVERY = lowered("CHUNKFS_RAFT_COMPACT_EVERY", 20_000)
#: How long a master's compaction waits for the members that answer to hold the image's index.
COMPACT_CATCH_UP_WAIT = 2.0
#: ... and once they hold an eighth of the last image's bytes, or this many: a copy of a big
#: store is not made for a few megabytes of log, and the log kept in memory stays bounded.
COMPACT_LOG_BYTES = 16 << 20
#: Messages queued for one peer at most; beyond that they are dropped.
PEER_QUEUE = 1024
SEND_TIMEOUT = 5.0
#: After a failed snapshot transfer, wait this long before the next (doubling up to the max).
SNAPSHOT_RETRY = 0.5
SNAPSHOT_RETRY_MAX = 8.0
#: A member that lost its log is reported at most this often (seconds).
LOST_LOG_REPORT_EVERY = 60.0
#: The master appends and syncs on its event loop itself while that took less than this, seconds.  The
#: hop to a worker thread and back cost it 9-13 % of its CPU per commit on a fast disk (measured); a slow
#: disk (or a slow moment) sends the next append to a thread, so clients' reads are not held up behind it.
INLINE_APPEND_S = 0.002

#: A follower applies the entries it learns are committed this long after the first of them, in one
#: batch (`StateMachine.batch`).  Applied at once, a change's SQLite transaction ran right after the
#: follower's acknowledgement, on the core the kernel had just woken the master on to count that
#: acknowledgement: the master waited for it (0.2-0.35 ms of a 2 ms create on two cores, measured with
#: timestamps in each process), and every change paid a transaction on each follower.  A follower
#: serves no reads, and it already learns each commit only with the next message from the master.
FOLLOWER_APPLY_DELAY = 0.010
#: ... or at once when this many are waiting.
FOLLOWER_APPLY_MAX = 512
#: The master applies each committed entry at once (its answer is the result), but into one transaction
#: (`StateMachine.hold`) that it commits this long after the first entry in it, or at once when it
#: holds this many: a transaction per change cost it a commit's page writes and SQLite's locks on
#: every create (17 writes, 12 locks; BENCHMARKS.md).  Nothing is less durable: the Raft log is.
LEADER_COMMIT_DELAY = FOLLOWER_APPLY_DELAY
LEADER_COMMIT_MAX = FOLLOWER_APPLY_MAX

ApplyFn = Callable[[int, int, bytes], Any]


@dataclass(slots=True)
class StateMachine:
    """What the driver needs from the application besides `apply`."""

    apply: ApplyFn
    applied_index: Callable[[], int]
    #: Copy the state into a file (fsynced) in a worker thread; returns the applied index of the copy.
    snapshot_to: Callable[[Path], int]
    #: Replace the state with an image file (moved into place, on the loop) taken at the index given.
    restore: Callable[[Path, int], None]
    #: A context in which several `apply` calls make one transaction (or none: one each).
    batch: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext
    #: Begin such a transaction that stays open across `apply` calls, and commit it (or nothing).
    hold: Callable[[], None] = lambda: None
    release: Callable[[], None] = lambda: None


class _Peer:
    """Outgoing messages to one peer, written to its connection at once.

    A message goes on the wire the moment the core hands it over (no hop
    through a task): a commit's critical path is a round trip to a follower,
    and every turn of the event loop on it shows in each metadata change.
    Messages are notices (`Connection.notify`): the peer's reply comes as a
    message of its own, so an empty acknowledgement of each would only double
    the frames of a commit, each a send and a wake-up on both sides.  Only
    while there is no connection do messages wait in a bounded queue, for the
    sender task to connect and send them.

    Without answers, a connection to a peer that stopped reading (frozen, or
    its host gone without a reset) is found by silence: sent to for
    `SEND_TIMEOUT` without a message from it, it is closed and made again.
    """

    def __init__(self, driver: RaftLog, peer_id: int) -> None:
        self.driver = driver
        self.peer_id = peer_id
        self.queue: asyncio.Queue[Message] = asyncio.Queue(PEER_QUEUE)
        self.conn: Connection | None = None
        #: When (monotonic) the first message since the peer was last heard from was sent; None: heard since.
        self.unanswered_since: float | None = None
        self.snapshot_task: asyncio.Task[None] | None = None
        self.snapshot_failures = 0
        self.tasks = [asyncio.get_running_loop().create_task(self._run())]
        #: Waits for the connection to close, to tell the core at once (`_connect`).
        self.watcher: asyncio.Task[None] | None = None

    async def _connect(self, addr: str) -> Connection:
        """A new connection to the peer; when it closes (the peer died, or it was given up), the core
        hears of it at once: a leader whose commits counted on this follower then sends to the others
        without waiting for a tick (raft/core.py, LAZY_BATCH)."""
        conn = await connect(addr, self.driver.creds, timeout=2.0)
        if self.watcher is not None:
            self.watcher.cancel()

        async def watch() -> None:
            await conn.wait_closed()
            self.driver.unreachable(self.peer_id)

        self.watcher = asyncio.get_running_loop().create_task(watch())
        return conn

    def heard(self) -> None:
        """A message from this peer arrived (on its own connection to us)."""
        self.unanswered_since = None

    def send(self, msg: Message) -> None:
        if isinstance(msg, SnapshotRequest):
            if self.snapshot_task is None:  # else the same transfer is under way: never two at once
                self.snapshot_task = asyncio.get_running_loop().create_task(self._send_snapshot(msg))
            return
        conn = self.conn
        if conn is not None and not conn.closed and self.queue.empty():
            now = time.monotonic()
            if self.unanswered_since is None:
                self.unanswered_since = now
            if now - self.unanswered_since <= SEND_TIMEOUT:
                self._write(conn, msg)
                return
            self._lost(Timeout(f"sent to for {SEND_TIMEOUT:g}s without a message back"))
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(msg)

    def _write(self, conn: Connection, msg: Message) -> None:
        try:
            conn.notify(Msg.RAFT, {"m": message_to_dict(msg)})  # dropped while the peer does not read
        except ChunkFSError as exc:
            self._lost(exc)

    def _lost(self, exc: ChunkFSError) -> None:
        addr = self.driver.addrs.get(self.peer_id)
        logger.debug("raft message to MDS#%d at %s lost: %s", self.peer_id, addr, exc)
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    async def _send_snapshot(self, msg: SnapshotRequest) -> None:
        """Stream the snapshot's image, then send the InstallSnapshot message that names it."""
        driver, core = self.driver, self.driver.core
        assert core is not None
        addr = driver.addrs.get(self.peer_id, "?")
        peer = f"MDS#{self.peer_id} at {addr}"

        def alive() -> bool:
            if not (core.is_leader and core.term == msg.term):
                return False
            core.report_snapshot(self.peer_id, failed=False)
            return True

        try:
            image = Image.of(msg.snapshot)
            assert image is not None, "the initial snapshot is never sent"
            if self.conn is None or self.conn.closed:
                self.conn = await self._connect(driver.routes.get(addr, addr))
            logger.info("raft: %s needs snapshot %d (%d bytes): sending it", peer, image.index, image.size)
            await snapshot_files.send(self.conn, image, image.path(driver.directory), alive, peer)
            if alive():
                self._write(self.conn, msg)
            self.snapshot_failures = 0
        except (ChunkFSError, OSError) as exc:
            # Wait before the core may ask again (a peer that is down would be asked at every
            # heartbeat); say so once per streak of failures.
            pause = min(SNAPSHOT_RETRY * 2 ** self.snapshot_failures, SNAPSHOT_RETRY_MAX)
            logger.log(logging.DEBUG if self.snapshot_failures else logging.WARNING,
                       "raft: sending snapshot %d to %s failed: %s (tried again in %.1f s)",
                       msg.snapshot.index, peer, exc, pause)
            self.snapshot_failures += 1
            await asyncio.sleep(pause)
            core.report_snapshot(self.peer_id, failed=True)
            driver.wake()
        finally:
            self.snapshot_task = None

    async def _run(self) -> None:
        """Connect when there is no connection, then send what waited meanwhile."""
        pause = 0.05
        while True:
            msg = await self.queue.get()
            addr = self.driver.addrs.get(self.peer_id)
            if addr is None:
                continue
            addr = self.driver.routes.get(addr, addr)
            try:
                if self.conn is None or self.conn.closed:
                    self.conn = await self._connect(addr)
                    self.unanswered_since = None
                pause = 0.05
            except ChunkFSError as exc:
                self._lost(exc)
                # Drop what piled up while the peer was away; the core resends what matters.
                while not self.queue.empty():
                    self.queue.get_nowait()
                await asyncio.sleep(pause)
                pause = min(pause * 2, 1.0)
                continue
            # In order, with no await in between: `send` writes directly again once the queue is empty.
            self._write(self.conn, msg)
            while not self.queue.empty() and self.conn is not None:
                self._write(self.conn, self.queue.get_nowait())

    def close(self) -> None:
        for task in (self.snapshot_task, self.watcher):
            if task is not None:
                self.tasks.append(task)
        for task in self.tasks:
            task.cancel()
        if self.conn is not None:
            self.conn.close()


class RaftLog:
    """A Raft group member behind the `ReplicatedLog` interface."""

    def __init__(
        self,
        directory: Path,
        node_id: int,
        addrs: dict[int, str],
        creds: Credentials,
        *,
        bootstrap_voters: tuple[int, ...] = (),
        on_membership: Callable[[], None] | None = None,
        on_leader: Callable[[], None] | None = None,
        on_follower: Callable[[], None] | None = None,
        on_lost_log: Callable[[int, str], None] | None = None,
        on_fatal: Callable[[str], None] | None = None,
        joined: bool = False,
        on_joined: Callable[[], None] | None = None,
    ) -> None:
        self.directory = directory
        self.node_id = node_id
        self.addrs = dict(addrs)
        #: Peer address -> the address to connect to instead (node.json ``peer_routes``).
        self.routes: dict[str, str] = {}
        self.creds = creds
        self.bootstrap_voters = bootstrap_voters
        self.on_membership = on_membership
        self.on_leader = on_leader
        #: Called when this node stops being the leader.
        self.on_follower = on_follower
        #: Told (member id, what to do) when a member lost log entries it had acknowledged.
        self.on_lost_log = on_lost_log
        #: Told (one line saying what to do) when the loop cannot go on: its disk failed or is full.
        self.on_fatal = on_fatal
        #: This member has held Raft state before (node.json ``joined``): starting without any is damage.
        self.joined = joined
        #: Called once when it first writes a term: the caller records ``joined``.
        self.on_joined = on_joined
        self._lost_reported: dict[int, float] = {}
        self.core: RaftCore | None = None
        self.storage: LogStorage | None = None
        self.sm: StateMachine | None = None
        self._peers: dict[int, _Peer] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._proposals: dict[int, tuple[int, asyncio.Future[Any]]] = {}
        self._reads: dict[bytes, asyncio.Future[int]] = {}
        self._read_waiters: list[asyncio.Future[None]] = []
        self._read_in_flight = False
        self._applied_waiters: list[tuple[int, asyncio.Future[None]]] = []
        #: (term, monotonic deadline) of the read lease; see READ_LEASE.
        self._lease = (0, 0.0)
        self._read_seq = 0
        self._since_compact = 0
        self._log_bytes = 0
        self._image_size = 0
        self._compacting: asyncio.Task[None] | None = None
        self._storage_lock = asyncio.Lock()
        self._receiver = Receiver(directory)
        self._leader_since = 0.0
        #: How long the master's last append and sync took (see INLINE_APPEND_S).
        self._append_took = 0.0
        #: Committed entries a follower has not applied yet (FOLLOWER_APPLY_DELAY), and its timer.
        self._deferred: list[Entry] = []
        self._apply_timer: asyncio.TimerHandle | None = None
        self._apply_due = False
        #: Entries the master applied into the transaction it holds (LEADER_COMMIT_DELAY), and its timer.
        self._held = 0
        self._release_timer: asyncio.TimerHandle | None = None
        self._release_due = False

    # -- ReplicatedLog interface -------------------------------------------------

    @property
    def term(self) -> int:
        return self.core.term if self.core else 0

    def is_leader(self) -> bool:
        """The master, as its loop has learnt (and told `on_leader`): a one-member group's core leads from
        `start`, before its loop has written the new term down and before the server's grace periods begin."""
        return self.core is not None and self.core.is_leader and self._leader_since > 0.0

    @property
    def leader_since(self) -> float:
        """When (time.monotonic) this server last became the master: set as it learns it, before it serves."""
        return self._leader_since

    def leader_hint(self) -> str | None:
        if self.core is None:
            return None
        return self.addrs.get(self.core.leader_id)

    def voters(self) -> frozenset[int]:
        return self.core.voters if self.core else frozenset()

    def members(self) -> list[dict[str, Any]]:
        core = self.core
        assert core is not None
        matches = core.match_indexes()
        out = []
        for vid in sorted(core.voters | {self.node_id}):
            me = vid == self.node_id
            role = "master" if vid == core.leader_id else "follower"
            if vid not in core.voters:
                role = "joining"
            elif not me and core.is_leader and not self._peer_up(vid):
                role = "offline"
            out.append({
                "id": vid, "addr": self.addrs.get(vid, "?"), "role": role, "term": core.term,
                "commit": core.commit if me else matches.get(vid, -1),
                "applied": core.applied if me else -1,
            })
        return out

    def _peer_up(self, vid: int) -> bool:
        peer = self._peers.get(vid)
        return peer is not None and peer.conn is not None and not peer.conn.closed

    async def start(self, sm: StateMachine) -> None:
        try:
            await self._start(sm)
        except (LogCorruption, InvalidArgument) as exc:
            # Raft counts on a member's log as it acknowledged it: one damaged before its end cannot be
            # mended here, and the member must come back as a new one (from the others' copy).
            raise ConfigError(
                f"the Raft log in {self.directory} is damaged ({exc}): this metadata server cannot rejoin with it; "
                f"take it out with `chunkfs rm-mds {self.node_id}`, then make a new one with `chunkfs make-mds` "
                f"(an empty directory; the address may be the same)") from None

    async def _start(self, sm: StateMachine) -> None:
        self.sm = sm
        storage, rec = await asyncio.to_thread(LogStorage.open, self.directory)
        if rec.snapshot is None and not rec.entries and rec.hard_state.term == 0:
            initial = Snapshot.initial(self.bootstrap_voters)
            await asyncio.to_thread(storage.install_snapshot, initial)
            rec.snapshot = initial
            logger.info("raft: new log, initial voters %s", list(self.bootstrap_voters) or "none (joining)")
        snapshot = rec.snapshot or Snapshot.initial(())
        if rec.hard_state.term == 0 and (rec.entries or snapshot.index > 0):
            # Written before any entry or snapshot of a term: without it, the votes this member cast
            # are forgotten, and it could vote twice in one term.
            raise LogCorruption(f"{self.directory / HARDSTATE_FILE} is missing, but the log holds entries")
        if rec.hard_state.term == 0 and self.joined:
            raise LogCorruption(f"{self.directory} holds no Raft state, though this member has held some (its "
                                f"folder was emptied but for node.json)")
        if rec.hard_state.term > 0:
            self._note_joined()  # (a member from before node.json said so)
        if rec.torn_bytes:
            logger.warning("raft: cut a torn record of %d bytes from the end of the log (left by a crash during an "
                           "append; if the log was cut short instead, the master finds it and removes this member)",
                           rec.torn_bytes)
        if snapshot.data.startswith(snapshot_files.SQLITE_MAGIC):
            snapshot = await asyncio.to_thread(snapshot_files.migrate_inline, self.directory, snapshot)
            await asyncio.to_thread(storage.compact, snapshot)
            logger.info("raft: snapshot %d moved out of the log's files into an image file", snapshot.index)
        image = Image.of(snapshot)
        self._image_size = image.size if image else 0
        keep = image.path(self.directory) if image else None
        await asyncio.to_thread(snapshot_files.forget_others, self.directory, keep)
        applied = sm.applied_index()
        last = rec.entries[-1].index if rec.entries else snapshot.index
        if applied > last:
            # The store applies only committed entries, which the log (or the snapshot) always holds: the
            # log lost some (cut, or a damaged record taken for a crash's torn one). With them went what
            # this member acknowledged, which Raft counts on (it could help elect a master without them).
            raise LogCorruption(f"the log ends at entry {last}, but the store has applied entries up to {applied}")
        if applied < snapshot.index:
            logger.warning("raft: the store is behind the snapshot (%d < %d): restoring it", applied, snapshot.index)
            assert image is not None
            await self._restore(image.path(self.directory), snapshot.index)
            applied = snapshot.index
        self.storage = storage
        self.core = RaftCore(
            self.node_id, rng=random.Random(int.from_bytes(os.urandom(8), "big")),  # noqa: S311 - timing jitter
            snapshot=snapshot, hard_state=rec.hard_state, entries=rec.entries,
            applied=min(applied, max(rec.hard_state.commit, snapshot.index)),
            election_timeout=ELECTION_TICKS, heartbeat_timeout=HEARTBEAT_TICKS, start_quiet=True,
        )
        logger.info(
            "raft: MDS#%d starts at term %d, log %d..%d, commit %d, applied %d, voters %s",
            self.node_id, self.core.term, snapshot.index, self.core.last_index, self.core.commit, applied,
            sorted(self.core.voters),
        )
        if self.core.voters == frozenset({self.node_id}):
            self.core.campaign()  # a one-member group need not wait for a timeout
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._ticker()), loop.create_task(self._loop_or_stop())]
        self._wake.set()

    async def propose(self, command: bytes) -> Any:
        core = self.core
        if core is None or not core.is_leader:
            raise self.not_master_error()
        index = core.propose(command)
        if index is None:
            raise self.not_master_error()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._proposals[index] = (core.term, fut)
        self._wake.set()
        started = time.perf_counter()
        try:
            # Not wait_for(shield(fut)): two futures and a task per change. A timeout or a cancelled
            # caller cancels `fut`, which `_settle` then skips; the change still commits and applies.
            async with asyncio.timeout(PROPOSE_TIMEOUT):
                result = await fut
        except TimeoutError:
            raise Timeout(
                f"metadata change not committed within {PROPOSE_TIMEOUT:g}s (is a quorum of metadata servers up?); "
                "it may still take effect"
            ) from None
        TIMINGS.since("raft.propose_to_applied", started)
        return result

    async def read_barrier(self) -> None:
        """ReadIndex: wait until local state has everything committed before the call."""
        core = self.core
        if core is None or not core.is_leader:
            raise self.not_master_error()
        if core.voters == frozenset({self.node_id}) and core.applied >= core.commit:
            return  # a one-member group is its own quorum
        term, until = self._lease
        if term == core.term and time.monotonic() < until and not core.transferring:
            # In the lease: no other master can have committed anything, so what this one has
            # committed is everything; wait only until it is applied here.
            await self._applied(core.commit)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._read_waiters.append(fut)
        self._start_read_round()
        try:
            async with asyncio.timeout(PROPOSE_TIMEOUT):  # (a timeout cancels `fut`, which its round then skips)
                await fut
        except TimeoutError:
            raise Timeout(f"read barrier not confirmed by a quorum within {PROPOSE_TIMEOUT:g}s") from None

    async def _applied(self, index: int) -> None:
        """Wait until the store has applied log entry `index`."""
        assert self.core is not None
        if self.core.applied >= index:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._applied_waiters.append((index, fut))
        try:
            async with asyncio.timeout(PROPOSE_TIMEOUT):
                await fut
        except TimeoutError:
            raise Timeout(f"entry {index} not applied within {PROPOSE_TIMEOUT:g}s") from None

    def _start_read_round(self) -> None:
        """Readers that arrived since the last round share the next one (never the one in flight)."""
        core = self.core
        if self._read_in_flight or not self._read_waiters or core is None:
            return
        waiters, self._read_waiters = self._read_waiters, []
        self._read_seq += 1
        ctx = self._read_seq.to_bytes(8, "big")
        if not core.read_index(ctx):
            for w in waiters:
                if not w.done():
                    w.set_exception(self.not_master_error())
            return
        self._read_in_flight = True
        round_fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._reads[ctx] = round_fut
        started, term = time.monotonic(), core.term

        def done(f: asyncio.Future[int]) -> None:
            self._read_in_flight = False
            if f.exception() is None and core.is_leader and core.term == term and not core.transferring:
                self._lease = (term, started + READ_LEASE)
            for w in waiters:
                if w.done():
                    continue
                if f.exception() is not None:
                    w.set_exception(f.exception())  # type: ignore[arg-type]
                else:
                    w.set_result(None)
            self._start_read_round()

        round_fut.add_done_callback(done)
        self._wake.set()

    def not_master_error(self) -> NotMaster:
        hint = self.leader_hint()
        where = f"the master is at {hint}" if hint else (
            "no master is elected right now (one is elected while a majority of the metadata servers run and "
            "reach each other: start the ones that are down)")
        return NotMaster(f"MDS#{self.node_id} is not the master: {where}", leader=hint or "")

    def wake(self) -> None:
        """Something for the loop to do (the core has new output)."""
        self._wake.set()

    def unreachable(self, peer_id: int) -> None:
        """The connection to a peer is gone: the core may send to the others at once (LAZY_BATCH)."""
        if self.core is not None:
            self.core.report_unreachable(peer_id)
            self.wake()

    async def stop(self) -> None:
        if self._apply_timer is not None:
            self._apply_timer.cancel()
            self._apply_timer = None
        if self._release_timer is not None:
            self._release_timer.cancel()
            self._release_timer = None
        if self._compacting is not None:
            self._tasks.append(self._compacting)
        for task in self._tasks:
            task.cancel()
        for peer in self._peers.values():
            peer.close()
        tasks = [*self._tasks, *(t for p in self._peers.values() for t in p.tasks)]
        if tasks:  # let them unwind before the loop closes
            await asyncio.wait(tasks, timeout=SEND_TIMEOUT)
        if (self._deferred or self._held) and all(task.done() for task in self._tasks):
            # A member stopped in order leaves its store as whole as its log's commit (a kill leaves
            # them to be applied from the log at the next start).
            left = len(self._deferred) + self._held
            try:
                self._release_held()
                self._apply_deferred()
            except (sqlite3.Error, ChunkFSError) as exc:
                logger.warning("raft: applying the last %d committed entries at stop failed: %s (applied from "
                               "the log at the next start)", left, exc)
        if self.storage is not None:
            self.storage.close()

    # -- membership ----------------------------------------------------------------

    async def change_membership(self, add: int = 0, remove: int = 0) -> None:
        """Add or remove one voter; returns once the change is committed."""
        core = self.core
        if core is None or not core.is_leader:
            raise self.not_master_error()
        index = core.propose_conf_change(add=add, remove=remove)
        if index is None:
            raise Unavailable("another membership change is in progress, or the master is new: try again shortly")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._proposals[index] = (core.term, fut)
        self._wake.set()
        try:
            # Not wait_for(shield(fut)): a shielded future failed after the wait ended (the master deposed)
            # logged "Future exception was never retrieved" (found by a probe); a cancelled one is skipped.
            async with asyncio.timeout(PROPOSE_TIMEOUT):
                await fut
        except TimeoutError:
            raise Timeout("membership change not committed in time; check `chunkfs stat`") from None

    def answering_voters(self) -> frozenset[int]:
        """This master and the voters that answered it lately (empty on a follower): see RaftCore."""
        return self.core.answering_voters() if self.core is not None else frozenset()

    def match_indexes(self) -> dict[int, int]:
        """How far each voter's log matches this master's (empty on a follower)."""
        return self.core.match_indexes() if self.core is not None else {}

    def transfer_leadership(self, to: int) -> bool:
        self._lease = (0, 0.0)  # the target is elected without waiting for anyone's lease
        ok = self.core is not None and self.core.transfer_leadership(to)
        self._wake.set()
        return ok

    # -- inputs ----------------------------------------------------------------------

    def step(self, header: dict[str, Any]) -> None:
        """A message from a peer (validated by `message_from_dict`)."""
        if self.core is None:
            raise Unavailable("raft is not started yet")
        msg = message_from_dict(header)
        peer = self._peers.get(msg.src)
        if peer is not None:
            peer.heard()
        if isinstance(msg, SnapshotRequest):
            image = Image.of(msg.snapshot)
            holds = msg.snapshot.index <= self.core.commit or \
                self.core.log.term_at(msg.snapshot.index) == msg.snapshot.term
            if image is not None and not holds and not self._receiver.complete(image):
                # Its image has not arrived (in full, intact): without it the snapshot cannot be
                # installed. The master sends the image again and then this message.
                logger.info("raft: snapshot %d offered before its image arrived: ignored", image.index)
                return
        self.core.step(msg)
        self._wake.set()

    async def snapshot_piece(self, h: dict[str, Any], payload: bytes) -> int:
        """A piece of a snapshot image from the master; returns the bytes of it held, in order."""
        image = Image(h["index"], h["term"], h["size"], h["crc"])
        if image.size <= 0 or image.index <= 0:
            raise ProtocolError("a snapshot image has a positive size and index")
        return await self._receiver.piece(image, h["offset"], payload)

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            assert self.core is not None
            self.core.tick()
            self._wake.set()

    # -- the loop: persist, send, apply -----------------------------------------------

    async def _loop_or_stop(self) -> None:
        """The loop; an error it cannot go on from (a full or failing disk under the log or the store) stops it.

        What a member has written or applied half way is not known for sure after such an error,
        so it does not try again in place: the waiting requests fail with the reason, and the
        server is told to exit (`on_fatal`); started again, it reads its log back and catches up
        (a full disk: once there is room).  A loop that died silently would leave a member that
        answers connections but never votes, appends or applies: a master lost for good.
        """
        try:
            await self._loop()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever ended the loop, the member must not linger
            what = _fatal_reason(self.directory, exc)
            logger.critical("raft: MDS#%d stops: %s", self.node_id, what, exc_info=not is_disk_full(exc))
            # Retryable: a proposal sent before the error may still commit on the others; the client's
            # retry there gets its real answer (exactly-once), never a failure for a change made.
            for _, fut in self._proposals.values():
                if not fut.done():
                    fut.set_exception(NotMaster(f"MDS#{self.node_id} stopped: {what}", leader=""))
            self._proposals.clear()
            self._fail_reads()
            if self.on_fatal is not None:
                self.on_fatal(what)

    async def _loop(self) -> None:
        core, storage = self.core, self.storage
        assert core is not None and storage is not None
        was_leader = False
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._apply_due:
                self._apply_deferred()
            if self._release_due:
                self._release_held()
            while core.has_ready():
                rd = core.ready()
                hs = rd.hard_state
                if core.is_leader and rd.snapshot is None and (
                    hs is None or (hs.term, hs.vote) == (storage.hard_state.term, storage.hard_state.vote)
                ):
                    # A leader may replicate entries before its own fsync (Raft thesis
                    # 10.2.1): its messages promise nothing about its disk, and nothing
                    # is applied before the fsync below. Followers' acks go after theirs.
                    self._send(rd.messages)
                    await self._persist(storage, rd)
                else:
                    await self._persist(storage, rd)
                    self._send(rd.messages)
                self._apply(rd)
                core.advance(rd)
            if core.is_leader != was_leader:
                was_leader = core.is_leader
                self._leader_since = time.monotonic() if was_leader else 0.0
                # Becoming the master is routine (every start elects one); losing it means something went wrong.
                logger.log(
                    logging.INFO if was_leader else logging.WARNING,
                    "raft: MDS#%d is %s at term %d", self.node_id, "now the master" if was_leader else "a follower",
                    core.term,
                )
                if not was_leader:
                    self._fail_reads()
                    self._answer_proposals_unknown()
                    if self.on_follower is not None:
                        self.on_follower()
                elif self.on_leader is not None:
                    self.on_leader()
            self._report_lost_logs(core.take_lost_logs())
            await self._maybe_compact(storage)

    async def _persist(self, storage: LogStorage, rd: Ready) -> None:
        if rd.snapshot is not None and self._compacting is not None:
            await asyncio.wait([self._compacting])  # its copy must not read the store being replaced
        # One storage operation at a time: a compaction runs beside this loop (LogStorage is not
        # thread-safe, and appends and a compaction would both change its segments).
        async with self._storage_lock:
            await self._persist_locked(storage, rd)

    async def _persist_locked(self, storage: LogStorage, rd: Ready) -> None:
        hs = rd.hard_state
        if hs is not None and (hs.term, hs.vote) != (storage.hard_state.term, storage.hard_state.vote):
            # Term and vote must be on disk before any message that depends on them, and before the
            # entries and snapshot of their term: a log without a hard state is then damage (`_start`).
            # A commit index alone is not written: after a restart it is relearned from the master,
            # and the store knows what it applied (2 fsyncs saved on every batch).
            await asyncio.to_thread(storage.set_hard_state, hs)
            self._note_joined()
        if rd.snapshot is not None:
            snap = rd.snapshot
            image = Image.of(snap)
            assert image is not None
            path = self._receiver.take(image)
            self._deferred.clear()  # all below the snapshot: the image holds them
            await asyncio.to_thread(storage.install_snapshot, snap)
            await self._restore(path, snap.index)
            self._image_size = image.size
            await asyncio.to_thread(snapshot_files.forget_others, self.directory, path)
            self._since_compact = self._log_bytes = 0
            self._learn_voters(snap.voters)
            logger.warning("raft: installed snapshot %d from the master (%d bytes)", snap.index, image.size)
        if rd.entries:
            started = time.perf_counter()
            if self.core is not None and self.core.is_leader:
                if self._append_took < INLINE_APPEND_S:
                    storage.append(rd.entries)
                else:
                    await asyncio.to_thread(storage.append, rd.entries)
                self._append_took = time.perf_counter() - started
                TIMINGS.record("raft.leader_append_fsync", self._append_took)
            else:
                # A follower serves no clients: its loop may wait for the disk itself, which saves
                # the hop to a worker thread and back on every commit's critical path (its ack).
                storage.append(rd.entries)
                TIMINGS.since("raft.follower_append_fsync", started)

    def _note_joined(self) -> None:
        """This member holds Raft state: the caller records it once (``on_joined``)."""
        if not self.joined and self.on_joined is not None:
            self.joined = True
            self.on_joined()  # once in a member's life: a small file, on the loop like node.json's other writes

    def _report_lost_logs(self, lost: set[int]) -> None:
        """Say what to do about a member whose data directory was wiped or replaced by an old copy.

        It cannot rejoin as it is: it may have voted, and acknowledged entries,
        that it no longer remembers.  The way back is to remove it and add a
        new member (which gets everything from the master).
        """
        now = time.monotonic()
        for peer in sorted(lost):
            if now - self._lost_reported.get(peer, -LOST_LOG_REPORT_EVERY) < LOST_LOG_REPORT_EVERY:
                continue
            self._lost_reported[peer] = now
            what = (f"MDS#{peer} at {self.addrs.get(peer, '?')} lost log entries it had acknowledged (its data "
                    f"directory was wiped, cut or restored from an old copy): it cannot rejoin as it is")
            if self.on_lost_log is not None:
                self.on_lost_log(peer, what)  # the metadata server removes it from the group and says so
            else:
                logger.error("raft: %s; remove it with `chunkfs rm-mds %d` and add a new one with `chunkfs make-mds`",
                             what, peer)

    async def _restore(self, image: Path, index: int) -> None:
        """The state machine takes a copy of the image (the image stays this member's snapshot)."""
        assert self.sm is not None
        copy = self.directory / "restore.db.tmp"
        await asyncio.to_thread(shutil.copyfile, image, copy)
        self.sm.restore(copy, index)

    def _send(self, messages: list[Message]) -> None:
        loop_peers = self._peers
        for msg in messages:
            peer = loop_peers.get(msg.dst)
            if peer is None:
                peer = loop_peers[msg.dst] = _Peer(self, msg.dst)
            peer.send(msg)

    def _apply(self, rd: Ready) -> None:
        assert self.sm is not None and self.core is not None
        leader = self.core.is_leader
        if leader:
            self._apply_deferred()  # a new master first applies what it left for later as a follower
            if rd.committed_entries:
                self._apply_held(rd.committed_entries)
        elif rd.committed_entries:
            self._deferred.extend(rd.committed_entries)
            if len(self._deferred) >= FOLLOWER_APPLY_MAX:
                self._apply_deferred()
            elif self._apply_timer is None:
                self._apply_timer = asyncio.get_running_loop().call_later(FOLLOWER_APPLY_DELAY, self._apply_later)
        if leader and rd.committed_entries and self._applied_waiters:  # (a follower's are failed on step-down)
            upto = rd.committed_entries[-1].index
            waiting = []
            for index, fut in self._applied_waiters:
                if index > upto:
                    waiting.append((index, fut))
                elif not fut.done():
                    fut.set_result(None)
            self._applied_waiters = waiting
        for rs in rd.read_states:
            fut = self._reads.pop(rs.ctx, None)
            if fut is not None and not fut.done():
                fut.set_result(rs.index)
        for ctx in rd.failed_reads:
            fut = self._reads.pop(ctx, None)
            if fut is not None and not fut.done():
                fut.set_exception(self.not_master_error())

    def _apply_later(self) -> None:
        """The follower's timer: the loop applies the deferred entries (where an error stops it, as any apply's)."""
        self._apply_timer = None
        self._apply_due = True
        self._wake.set()

    def _apply_held(self, entries: list[Entry]) -> None:
        """The master: apply `entries` now, into the transaction it holds (LEADER_COMMIT_DELAY)."""
        assert self.sm is not None
        self.sm.hold()
        for entry in entries:
            self._apply_entry(entry)
        self._held += len(entries)
        if self._held >= LEADER_COMMIT_MAX:
            self._release_held()
        elif self._release_timer is None:
            self._release_timer = asyncio.get_running_loop().call_later(LEADER_COMMIT_DELAY, self._release_later)

    def _release_later(self) -> None:
        """The master's timer: the loop commits what it holds (where an error stops it, as any apply's)."""
        self._release_timer = None
        self._release_due = True
        self._wake.set()

    def _release_held(self) -> None:
        """Commit the transaction the master holds (before anything else is applied otherwise)."""
        self._release_due = False
        if self._release_timer is not None:
            self._release_timer.cancel()
            self._release_timer = None
        self._held = 0
        assert self.sm is not None
        self.sm.release()

    def _apply_deferred(self) -> None:
        """Apply, in one batch, the committed entries a follower left for later."""
        self._apply_due = False
        if self._apply_timer is not None:
            self._apply_timer.cancel()
            self._apply_timer = None
        if not self._deferred:
            return
        self._release_held()  # (a master that stepped down)
        assert self.sm is not None
        entries, self._deferred = self._deferred, []
        started = time.perf_counter()
        with self.sm.batch():
            for entry in entries:
                self._apply_entry(entry)
        TIMINGS.since("raft.apply_batch", started)

    def _apply_entry(self, entry: Entry) -> None:
        assert self.sm is not None and self.core is not None
        result: Any = None
        error: BaseException | None = None
        if entry.kind == EntryKind.CONFIG:
            self._learn_voters(self.core.voters)
        elif entry.data and entry.index > self.sm.applied_index():
            started = time.perf_counter()
            try:
                result = self.sm.apply(entry.index, entry.term, entry.data)
            except ChunkFSError as exc:
                error = exc
            TIMINGS.since("raft.apply", started)
            self._since_compact += 1
            self._log_bytes += len(entry.data)
        self._settle(entry, result, error)

    def _settle(self, entry: Entry, result: Any, error: BaseException | None) -> None:
        pending = self._proposals.pop(entry.index, None)
        if pending is None:
            return
        term, fut = pending
        if fut.done():
            return
        if term != entry.term:
            # Another master's entry took this index: ours was never committed.
            fut.set_exception(NotMaster("the master changed before this change committed; retry", leader=""))
        elif error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)

    def _answer_proposals_unknown(self) -> None:
        """No longer the master: changes proposed and not yet committed may still commit, by a master
        elected later that holds them, or never.  Answered so (Timeout, "it may still take effect")
        before the master's connections close, rather than left to a closed connection: a mount asks
        such a change again until a master answers it (protocol/mds_link.py), and a lost connection
        alone does not tell it that the change may be in a log."""
        for _, fut in self._proposals.values():
            if not fut.done():
                fut.set_exception(Timeout("the master stepped down before this metadata change committed; "
                                          "it may still take effect"))
        self._proposals.clear()

    def _fail_reads(self) -> None:
        for ctx, fut in list(self._reads.items()):
            if not fut.done():
                fut.set_exception(self.not_master_error())
            del self._reads[ctx]
        for w in self._read_waiters:
            if not w.done():
                w.set_exception(self.not_master_error())
        self._read_waiters = []
        self._read_in_flight = False
        self._lease = (0, 0.0)
        for _, fut in self._applied_waiters:
            if not fut.done():
                fut.set_exception(self.not_master_error())
        self._applied_waiters = []

    def _learn_voters(self, voters: tuple[int, ...] | frozenset[int]) -> None:
        for gone in set(self._peers) - set(voters):
            self._peers.pop(gone).close()
        if self.on_membership is not None:
            self.on_membership()

    async def _maybe_compact(self, storage: LogStorage) -> None:
        """Start a compaction in the background when enough log has piled up since the last."""
        core = self.core
        assert core is not None
        if (self._compacting is not None or self._since_compact < COMPACT_EVERY
                or self._log_bytes < min(self._image_size // 8, COMPACT_LOG_BYTES)
                or core.applied <= core.log.snapshot.index):
            return
        self._since_compact = self._log_bytes = 0
        self._compacting = asyncio.get_running_loop().create_task(self._compact(storage))

    async def _members_reach(self, index: int) -> None:
        """On a master: wait (bounded) until every member that answers holds the log up to `index`.

        Compacted earlier, the log no longer has the entries a member a few behind needs (the lazy
        one gets them 32 at a time): it is sent the whole image instead, a transfer that grows with
        the store (a soak: 6 of 12 compactions did, each to a member that was up and keeping up).
        """
        core = self.core
        deadline = time.monotonic() + COMPACT_CATCH_UP_WAIT
        while core is not None and core.is_leader and time.monotonic() < deadline:
            matches = core.match_indexes()
            if all(matches.get(peer, 0) >= index for peer in core.answering_voters() - {self.node_id}):
                return
            self._wake.set()  # (a lazy member's entries go with the loop's next turn at the latest)
            await asyncio.sleep(TICK)

    async def _compact(self, storage: LogStorage) -> None:
        """Copy the store into an image file off the loop, then drop the log up to the copy's index."""
        core, sm = self.core, self.sm
        assert core is not None and sm is not None
        started = time.monotonic()
        tmp = snapshot_files.scratch(self.directory)
        try:
            index = await asyncio.to_thread(sm.snapshot_to, tmp)
            term = core.log.term_at(index)
            if index <= core.log.snapshot.index or index > core.applied or term is None:
                return  # a snapshot from the master overtook this one
            image = await asyncio.to_thread(snapshot_files.seal, self.directory, tmp, index, term)
            await self._members_reach(index)
            if index <= core.log.snapshot.index:
                return  # a snapshot from a new master overtook this one meanwhile
            snap = core.compact(index, image.descriptor())
            async with self._storage_lock:
                await asyncio.to_thread(storage.compact, snap)
            self._image_size = image.size
            # Not the image a master is sending meanwhile (a CI run: a follower catching up compacted its
            # own log while it received one, deleted the part received, and had the image sent again).
            await asyncio.to_thread(snapshot_files.forget_others, self.directory, image.path(self.directory),
                                    self._receiver.receiving())
            logger.info("raft: log compacted up to index %d (image of %d bytes taken in %.1f s)", index,
                        image.size, time.monotonic() - started)
        except (OSError, sqlite3.Error, ChunkFSError) as exc:
            logger.warning("raft: compaction failed: %s (the log is kept; tried again later)", exc)
        finally:
            tmp.unlink(missing_ok=True)
            self._compacting = None


def _fatal_reason(directory: Path, exc: BaseException) -> str:
    """One line for an operator: what failed, where, and what to do."""
    if is_disk_full(exc):
        return (f"the disk under {directory} is full ({exc}): free space there, then start this metadata "
                "server again (its service manager does; or `chunkfs mds -r DIR`); it catches up from the others")
    if isinstance(exc, (OSError, sqlite3.Error)):
        return (f"writing its log or store under {directory} failed ({exc}): check the disk, then start this "
                "metadata server again; it reads its log back and catches up from the others")
    return f"its Raft loop failed ({type(exc).__name__}: {exc}): start it again; it reads its log back"
