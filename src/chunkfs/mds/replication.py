"""The replication monitor: the master's loop that keeps every chunk at its goal.

Once a second (while this MDS is the master) it

1. works out each chunk server's state from its heartbeats — active,
   inactive, offline (`health.cs_state`) — and says so in the event log when
   one changes;
2. takes the chunks that need work from its health index (`health_index`:
   kept up to date from the changes themselves, never by walking every
   chunk), by danger (`health.classify`): below ``MIN`` first, then below
   ``N``, then over-replicated ones to trim, then moves for draining; and
   when nothing else is to do, plans rebalancing from per-server counts;
3. starts copies within bounds — at most ``replication-max`` in the cluster and
   ``replication-per-cs`` per server, each fetched by the target at most
   ``replication-rate`` — and keeps a progress figure for ``stat``.

Copies go chunk server to chunk server (``CS_REPLICATE``: the target reads the
source with ``CS_READ``), never through the master.

A copy has two phases, so that writers wait only for what changed.  First the
target copies the whole chunk while writers go on (the chain does not include
it yet); the source notes every block written from the start of that copy on
(cs/write_tracker.py).  Then the chunk is frozen: under the chunk's allocation
lock (which every ``CHUNK_WRITE`` takes) the master moves the current replicas
to a new version, so a writer holding the old map gets ``StaleVersion`` and
asks for a new map — and waits on that lock.  A write already under way
finishes first (the chunk server renames a replica under the same lock its
writes hold).  The target moves its copy to the new version, fetches only the
blocks the source noted, checks its whole CRC table against the source's, and
the master commits the bigger replica set with yet another version.  Writes
to that chunk wait for the blocks written during the first phase, not for a
whole chunk (256 MiB at `replication-rate`: seconds).  When the first phase
failed or the source cannot say what changed (it restarted), the frozen phase
copies the whole chunk, as a one-phase copy does.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from chunkfs.common.config import check_location, check_tier
from chunkfs.common.errors import ChecksumMismatch, ChunkFSError, ConfigError, InvalidArgument, NotFound, Unavailable
from chunkfs.common.settings import CS_SETTINGS, check_update, effective
from chunkfs.mds.bad_replicas import BadReplicas
from chunkfs.mds.domains import Place, choose, crowded, spread_possible
from chunkfs.mds.health import ACTIVE, INACTIVE, OFFLINE, ChunkHealth, classify, cs_state
from chunkfs.mds.health_index import ChunkHealthIndex, Verdict
from chunkfs.mds.planner import BELOW_GOAL, REBALANCE, Need, Planner, Server, pick_victims, plan_rebalance
from chunkfs.mds.store import Chunk, ChunkRow
from chunkfs.protocol.messages import Msg

if TYPE_CHECKING:
    from chunkfs.mds.server import LiveServer, MetadataServer

logger = logging.getLogger(__name__)

#: Seconds between two passes of the monitor (longer when a pass itself is slow).
TICK = 1.0
#: After becoming master, how long to wait for chunk servers to reconnect
#: before treating the missing ones as offline (dropping their replicas).
CS_RECONNECT_GRACE = 10.0
#: Moves (rebalancing) started per pass.
MAX_MOVES_PER_TICK = 8
#: Rebalancing waits until no chunk has been created or removed for this long: data being
#: written is placed on emptier servers anyway, and moving it meanwhile would only churn.
REBALANCE_QUIET = 10.0
#: Chunks that need work looked at per pass (most endangered first; the rest on later passes).
MAX_CHECKED_PER_TICK = 2000
#: Time per pass for the health index to catch up with servers that changed state (in slices).
SETTLE_PER_TICK = 0.5
#: How long `stat` waits for the health index to catch up before it answers with what it has.
SETTLE_FOR_STAT = 3.0
#: Chunks of the fullest server looked at per rebalancing plan.
REBALANCE_SCAN = 2000
#: Chunks re-checked per pass by a sweep (after a registration: new room may let misplaced chunks move).
SWEEP_PER_TICK = 2000


#: A unit of work is a planner.Need; its urgency: 0 below MIN, 1 below N, 2 over-replicated (trim),
#: 3 misplaced (drain, tier, domain), 4 rebalancing (the health index's priorities, and the planner's order).


def _n(count: int) -> str:
    return f"{count:,}"


@dataclass(slots=True)
class Episode:
    """One stretch of healing: from the first chunk found short to the last copy done."""

    started: float = field(default_factory=time.monotonic)
    started_wall: float = field(default_factory=time.time)
    copies: int = 0
    trims: int = 0
    moves: int = 0
    failures: int = 0
    bytes: int = 0
    left: int = 0
    #: When the last copy of the episode ended (the rate is over the copying time, not the idle tail).
    last_done: float = 0.0

    def summary(self) -> dict[str, Any]:
        end = self.last_done if self.left == 0 and self.last_done else time.monotonic()
        elapsed = max(end - self.started, 1e-6)
        done = self.copies + self.moves
        total = done + self.left
        return {
            "active": True, "copied": self.copies, "moved": self.moves, "trimmed": self.trims,
            "failed": self.failures, "left": self.left, "bytes": self.bytes,
            "seconds": round(elapsed, 3), "rate_mib_s": round(self.bytes / elapsed / (1 << 20), 3),
            "percent": 100 if total == 0 else int(100 * done / total),
        }


class ReplicationMonitor:
    """Soft state and the loop; rebuilt from nothing whenever this MDS becomes master."""

    def __init__(self, mds: MetadataServer) -> None:
        self.mds = mds
        #: cs_id -> its last sign of life (on `clock`), for servers not connected now.
        self.silent_since: dict[int, float] = {}
        #: Where each server is (soft: from registration): cs_id -> (location, tier).
        self.labels: dict[int, tuple[str, int]] = {}
        self.states: dict[int, str] = {}
        self.copying: dict[int, int] = {}  # chunk_id -> target
        self.trimming: set[int] = set()
        self.busy: collections.Counter[int] = collections.Counter()
        self.blocked: set[int] = set()
        #: Replicas that failed a checksum: their bad blocks mended from the others (bad_replicas.py).
        self.bad = BadReplicas(self)
        self.draining: set[int] = set()
        #: Servers this master removed at the end of their drain (ids are never given again).
        self.drained: set[int] = set()
        #: Chunk health kept up to date from changes (health_index.py); valid while this MDS is master.
        self.index = ChunkHealthIndex(mds.store, self._judge, self._sense)
        mds.store.chunk_listener = self.index.chunks_changed
        #: A pass over every chunk, a slice per tick, to find chunks that can now move (None: none running).
        self._sweep_after: int | None = None
        self._rebalance_after: dict[int, int] = {}
        self.episode: Episode | None = None
        self._work: list[Need] = []
        self._work_settings: dict[str, float] = {}
        self.last_episode: dict[str, Any] | None = None
        #: Silence is measured on the master's awake clock: its own pauses are not the servers' fault.
        self.clock = mds.awake
        self._started = self.clock()
        self._task: asyncio.Task[None] | None = None
        self._rng = random.Random()  # noqa: S311 - placement only
        self._settings: dict[str, float] = {}
        #: (number of chunks, highest chunk id) and when it last changed: rebalancing waits for quiet.
        self._shape = (0, 0)
        self._shape_changed = time.monotonic()
        #: When an event last said that replication started (not said twice in a row).
        self._announced = False

    # -- life cycle ----------------------------------------------------------------

    def start(self) -> None:
        """On becoming master: servers not connected yet are silent from now on."""
        now = self.clock()
        self._started = now
        self.silent_since = {cs["id"]: now for cs in self.mds.store.chunk_servers() if cs["id"] not in self.mds.live}
        self.states = {}
        self.blocked = set()
        self._settings = {}
        self.episode = None
        self.index.reset()
        self.index.active = True
        self._sweep_after = 0
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = self.mds.spawn(self._run())

    def admit(self, cs_id: int) -> None:
        """Before a registration: a server removed with rm-cs does not come back by itself."""
        if self.mds.store.cs_removed(cs_id):  # kept in the store (rm-cs): every later master knows it too
            raise InvalidArgument(
                f"CS#{cs_id} was removed from the cluster (rm-cs): stop it, or wipe it and make-cs again",
                removed=cs_id)

    def on_register(self, cs_id: int, location: str, tier: int) -> None:
        try:
            check_location(location)
            check_tier(tier)
        except ConfigError as exc:
            logger.warning("CS#%d registered a bad location or tier (%s): placed as unlabelled, tier 0", cs_id, exc)
            location, tier = "", 0
        self.silent_since.pop(cs_id, None)
        self.labels[cs_id] = (location, tier)
        # More room, maybe a new tier or failure domain: chunks elsewhere may now move.
        self._sweep_after = 0

    def labels_of(self, cs_id: int) -> dict[str, Any]:
        location, tier = self.labels.get(cs_id, ("", 0))
        return {"location": location, "tier": tier, "draining": cs_id in self.draining}

    def on_disconnect(self, server: LiveServer) -> None:
        self.silent_since[server.cs_id] = server.last_seen

    def settings(self, fresh: bool = False) -> dict[str, float]:
        """The cluster settings; re-read from the store each pass (and when asked), cached between."""
        if fresh or not self._settings:
            try:
                self._settings = effective(self.mds.store.settings())
            except sqlite3.Error:  # the store is closed: shutting down
                return self._settings or effective({})
        return self._settings

    def cs_settings(self) -> dict[str, float]:
        values = self.settings()
        return {k: values[k] for k in CS_SETTINGS}

    # -- states --------------------------------------------------------------------

    def compute_states(self, settings: dict[str, float] | None = None) -> dict[int, str]:
        settings = settings or self.settings()
        now = self.clock()
        out = {}
        for cs in self.mds.store.chunk_servers():
            cs_id = cs["id"]
            live = self.mds.live.get(cs_id)
            if live is not None:
                silent = now - live.last_seen
            else:
                silent = now - self.silent_since.setdefault(cs_id, self._started)
            out[cs_id] = cs_state(
                live is not None, silent, settings["cs-inactive-timeout"], settings["cs-offline-timeout"])
            if live is not None and live.reporting and out[cs_id] == ACTIVE:
                out[cs_id] = INACTIVE  # still reporting its replicas: not fully known yet
            if cs_id in self.draining and live is None:
                out[cs_id] = OFFLINE  # being removed: nothing to wait for
        return out

    def is_active(self, cs_id: int) -> bool:
        """Whether new replicas may go to this server now."""
        live = self.mds.live.get(cs_id)
        if live is None or live.reporting or cs_id in self.draining:
            return False
        return self.clock() - live.last_seen < self.settings()["cs-inactive-timeout"]

    def _sense(self) -> tuple[dict[int, str], dict[int, LiveServer]]:
        return self.compute_states(), self.mds.live

    def touch(self, chunk_id: int) -> None:
        """A replica of the chunk was given or taken away, or its copy started or ended: judge it again."""
        self.index.touch(chunk_id)

    def _judge(self, row: ChunkRow, states: Mapping[int, str]) -> Verdict:
        """A chunk's health, the work it needs and its status for `stat`, under the given server states."""
        chunk = row.chunk
        chunk_id = chunk.chunk_id
        live = self.mds.live
        holds = {cs for cs in chunk.replicas if cs in live and chunk_id in live[cs].replicas}
        # A server still reporting its replicas counts as not connected yet: a replica it has
        # not reported is waiting (it may well be there), not lost.
        connected = {cs for cs in chunk.replicas if cs in live and not live[cs].reporting}
        h = classify(chunk_id, chunk.replicas, row.want, row.minimum, states, connected, holds)
        drop = None
        priority: int | None = None
        if h.need:
            priority = 0 if len(h.good) < h.minimum else 1
        elif h.excess or h.untidy:
            priority = 2
        elif not h.waiting or self.draining.intersection(h.good):
            # A drain does not wait for another replica's server to come back or go offline (a probe's
            # drain stood still for the 300 s of `cs-offline-timeout` of a server killed meanwhile, the
            # chunks' one other replica not on the leaving server meanwhile); the copy keeps the waiting one.
            drop = self._misplaced(h, {"failure_domain": row.failure_domain, "tier": row.tier})
            priority = None if drop is None else 3
        status = h.status
        if status != "offline":
            if priority in (0, 1) and chunk_id in self.blocked:
                status = "blocked"
            elif chunk_id in self.copying and h.need:
                status = "replicating"  # healing; a chunk being moved (rebalancing) stays healthy
        places = [p for cs in h.good if (p := self.place_of(cs)) is not None]
        return Verdict(status, priority, bool(crowded(places, row.failure_domain)), h, drop)

    async def settle(self, timeout: float = SETTLE_FOR_STAT) -> bool:
        """Let the health index catch up (in slices) before counts are shown."""
        if not self.index.active:
            return True
        return await self.index.settle(timeout)

    def _attr(self, ino: int, attrs: dict[int, dict[str, Any]]) -> dict[str, Any]:
        if ino not in attrs:
            attrs[ino] = self.mds.store.getattr(ino)
        return attrs[ino]

    def health(self, chunk: Chunk, attrs: dict[int, dict[str, Any]], states: dict[int, str]) -> ChunkHealth:
        attr = self._attr(chunk.ino, attrs)
        live = self.mds.live
        holds = {cs for cs in chunk.replicas if cs in live and chunk.chunk_id in live[cs].replicas}
        # A server still reporting its replicas counts as not connected yet: a replica it has
        # not reported is waiting (it may well be there), not lost.
        connected = {cs for cs in chunk.replicas if cs in live and not live[cs].reporting}
        return classify(chunk.chunk_id, chunk.replicas, attr["replicas"], attr["min_replicas"], states, connected,
                        holds)

    # -- placement -----------------------------------------------------------------

    def place_of(self, cs_id: int) -> Place | None:
        server = self.mds.live.get(cs_id)
        if server is None:
            return None
        location, tier = self.labels.get(cs_id, ("", 0))
        return Place(cs_id, server.host, location, tier, server.free)

    def candidates(self, attr: dict[str, Any], exclude: set[int] | frozenset[int] = frozenset()) -> list[Place]:
        """Servers that may take a new replica of a file with these attributes."""
        size = self.mds.node.cluster.chunk_size
        out = []
        for cs_id, server in self.mds.live.items():
            if cs_id in exclude or server.free <= size or not self.is_active(cs_id):
                continue
            place = self.place_of(cs_id)
            if place is not None and place.tier == attr.get("tier", 0):
                out.append(place)
        return out

    def place(self, attr: dict[str, Any], count: int, exclude: set[int] | frozenset[int] = frozenset(),
              existing: list[int] | tuple[int, ...] = (), pool: list[Place] | None = None) -> list[int]:
        """Choose servers for `count` new replicas: the file's tier, distinct failure domains first."""
        pool = self.candidates(attr, set(exclude) | set(existing)) if pool is None else pool
        placed = [p for cs in existing if (p := self.place_of(cs)) is not None]
        return choose(pool, count, attr.get("failure_domain", "host"), placed, self._rng)

    def _misplaced(self, h: ChunkHealth, attr: dict[str, Any]) -> int | None:
        """A good replica that should move (draining server, wrong tier, crowded domain), if one can."""
        for cs in h.good:
            if cs in self.draining:
                return cs
        places = [p for cs in h.good if (p := self.place_of(cs)) is not None]
        tier = attr.get("tier", 0)
        wrong = [p.cs_id for p in places if p.tier != tier]
        if wrong and self.candidates(attr, set(h.good) | set(h.waiting)):
            return wrong[0]
        level = attr.get("failure_domain", "host")
        crowd = crowded(places, level)
        if crowd and spread_possible(places, self.candidates(attr, set(h.good) | set(h.waiting)), level):
            return crowd[-1].cs_id
        return None

    # -- the loop ------------------------------------------------------------------

    async def _run(self) -> None:
        logger.info("replication monitor started")
        while self.mds.raft.is_leader():
            started = time.monotonic()
            try:
                await self._tick()
            except ChunkFSError as exc:
                logger.warning("replication monitor: %s", exc)
            except Exception:
                logger.exception("replication monitor pass failed")
            spent = time.monotonic() - started
            await asyncio.sleep(max(TICK, 2 * spent))
        self.index.active = False
        self.index.reset()
        logger.info("replication monitor stopped: this MDS is no longer the master")

    async def _tick(self) -> None:
        settings = self.settings(fresh=True)
        states = self.compute_states(settings)
        previous = self.states
        # A server still reporting its replicas keeps its last announced state, so that a
        # registration in pages is not announced as "inactive", then "active again".
        reporting = {cs for cs, server in self.mds.live.items() if server.reporting}
        self.states = {cs: previous[cs] if cs in reporting else st for cs, st in states.items()
                       if cs not in reporting or cs in previous}
        for cs, state in states.items():
            server = self.mds.live.get(cs)
            if state == OFFLINE and server is not None:
                # Connected but silent too long (frozen): drop the link, so that when it wakes it
                # registers again and learns which of its replicas are stale.
                logger.warning("CS#%d silent for too long on a live connection: closing it", cs)
                server.conn.close()
        changed = {cs: st for cs, st in states.items()
                   if cs not in reporting and previous.get(cs, ACTIVE if st == ACTIVE else None) != st}
        settled = time.monotonic() - self.mds.master_since > CS_RECONNECT_GRACE
        store = self.mds.store
        caught_up = await self.index.settle(SETTLE_PER_TICK)
        shape = (store.chunk_count(), store.last_chunk_id())
        if shape != self._shape:
            self._shape, self._shape_changed = shape, time.monotonic()
        short = self.index.waiting_work(0) + self.index.waiting_work(1)
        urgent = self.index.waiting_work(0)
        for cs, st in sorted(changed.items()):
            lost = store.replicas_on(cs) if st == OFFLINE else 0
            await self._announce(cs, st, previous.get(cs), lost, short, settings)
        if not settled:
            return
        await self._remove_the_drained()
        self._sweep()
        self.bad.retry_pending()
        checked = self.index.take(MAX_CHECKED_PER_TICK)
        work: list[Need] = []
        for row, verdict in self.index.judge_rows(store.chunk_rows(checked), checked):
            h = verdict.health
            if verdict.priority is None or h is None:
                continue
            if verdict.priority <= 1 and reporting.intersection(h.waiting):
                continue  # its server is still listing its replicas: most likely there, wait
            work.append(Need(
                row.chunk.chunk_id, h.good, row.want, row.minimum, h.waiting, row.failure_domain, row.tier,
                missing=h.need, excess=h.excess, untidy=h.untidy, drop=verdict.drop if verdict.priority == 3 else None))
        quiet = time.monotonic() - self._shape_changed >= REBALANCE_QUIET
        if not work and not self.copying and not self.trimming and quiet and caught_up and not short:
            work = self._plan_rebalance(settings)
        self._work, self._work_settings = work, settings
        found = self._start_work(work, settings)
        blocked = {c for c in (self.blocked - set(checked)) | found if self.index.priority_of(c) in (0, 1)}
        for chunk_id in blocked ^ self.blocked:
            self.index.touch(chunk_id)
        self.blocked = blocked
        busy = bool(self.copying or self.trimming)
        unchecked = short - sum(1 for c in checked if self.index.priority_of(c) in (0, 1))
        pending = sum(1 for n in work if n.urgency <= BELOW_GOAL and n.chunk_id not in self.blocked) + \
            max(0, unchecked)
        moving = self.index.waiting_work(3) + sum(1 for n in work if n.urgency == REBALANCE)
        if self.episode is None and (pending or busy):
            self.episode = Episode()
            if short and not self._announced:
                await self.mds.event(
                    "warning", f"{_n(short)} chunk(s) below their replica goal ({_n(urgent)} below the minimum); "
                    "replication started")
        if self.episode is not None:
            self.episode.left = short + moving
            if not pending and not busy and not moving:
                await self._finish_episode()

    def _sweep(self) -> None:
        """Re-check a slice of every chunk (after a registration), so chunks that can now move are found."""
        if self._sweep_after is None:
            return
        rows = self.mds.store.chunk_rows_after(self._sweep_after, SWEEP_PER_TICK)
        self.index.judge_rows(rows, [])
        self._sweep_after = rows[-1].chunk.chunk_id if len(rows) == SWEEP_PER_TICK else None

    async def _announce(
        self, cs_id: int, state: str, before: str | None, lost: int, short: int, settings: dict[str, float]
    ) -> None:
        if state == INACTIVE and before == ACTIVE:
            if cs_id not in self.mds.live:
                return  # disconnected: its "connection lost" event said so (this one said "silent for 10 s"
                # a second after a kill -9, a fault probe found)
            await self.mds.event(
                "warning", f"CS#{cs_id} inactive: silent for {settings['cs-inactive-timeout']:g} s; no new "
                f"chunks go there; offline after {settings['cs-offline-timeout']:g} s")
        elif state == OFFLINE:
            if lost:
                what = f"{_n(lost)} replica(s) given up; {_n(short)} chunk(s) below their replica goal; " \
                    "replication started"
                self._announced = True
            else:
                what = "it held no replicas"
            # A server being drained is offline as soon as it disconnects: nothing to wait for (it said
            # "silent for over 300 s" two seconds after a kill, a probe found).
            why = "disconnected while being drained" if cs_id in self.draining else \
                f"silent for over {settings['cs-offline-timeout']:g} s"
            await self.mds.event("error" if lost else "warning", f"CS#{cs_id} offline: {why}; {what}")
        elif state == ACTIVE and before in (INACTIVE, OFFLINE):
            await self.mds.event("info", f"CS#{cs_id} active again")

    async def _finish_episode(self) -> None:
        """Say so in the event log first, then show the episode as closed (so the event is there by then)."""
        episode = self.episode
        assert episode is not None
        summary = episode.summary()
        if episode.copies or episode.moves or episode.trims:
            parts = []
            if episode.copies:
                parts.append(f"{_n(episode.copies)} replica(s) copied")
            if episode.moves:
                parts.append(f"{_n(episode.moves)} moved")
            if episode.trims:
                parts.append(f"{_n(episode.trims)} extra trimmed")
            blocked = f"; {_n(len(self.blocked))} chunk(s) cannot be placed (add chunk servers)" if self.blocked \
                else "; every chunk is at its goal"
            await self.mds.event(
                "info", f"replication finished: {', '.join(parts)} ({episode.bytes / (1 << 20):.1f} MiB in "
                f"{summary['seconds']:.1f} s, {summary['rate_mib_s']:.1f} MiB/s){blocked}")
        self._announced = False
        self.episode = None
        summary["active"] = False
        summary["finished"] = time.time()
        self.last_episode = summary

    # -- choosing work -------------------------------------------------------------------

    def _refill(self) -> None:
        """A copy finished: start more from the last pass's list at once, not a tick later."""
        if self._work and self.mds.raft.is_leader():
            self._start_work(self._work, self._work_settings)

    def planner_view(self, counts: bool = False) -> list[Server]:
        """The connected chunk servers as the planner sees them (`counts`: with replicas listed, to rebalance)."""
        per_cs = self.mds.store.replica_counts() if counts else {}
        out = []
        for cs, server in self.mds.live.items():
            place = self.place_of(cs)
            if place is not None:
                out.append(Server(place, server.total, ACTIVE if self.is_active(cs) else INACTIVE, cs in self.draining,
                                  self.busy[cs], per_cs.get(cs, 0)))
        return out

    def _start_work(self, work: list[Need], settings: dict[str, float]) -> set[int]:
        """Start what the planner says within the bounds; returns the chunks that cannot be placed.

        What is started (or cannot be done at all) leaves the list; what waits for a free
        server stays, for `_refill` to start when a copy ends.
        """
        running = len(self.copying) + len(self.trimming)
        todo = [n for n in work if n.chunk_id not in self.copying and n.chunk_id not in self.trimming]
        planner = Planner(self.planner_view(), self.mds.node.cluster.chunk_size,
                          per_server=int(settings["replication-per-cs"]),
                          max_ops=max(0, int(settings["replication-max"]) - running), rng=self._rng)
        plan = planner.plan(todo)
        for op in plan.ops:
            chunk_id = op.chunk_id
            if op.kind == "delete":
                self.trimming.add(chunk_id)
                self.mds.spawn(self._trim(chunk_id))
                continue
            assert op.source is not None and op.target is not None
            self.copying[chunk_id] = op.target
            self.index.touch(chunk_id)
            self.busy[op.source] += 1
            self.busy[op.target] += 1
            self.mds.spawn(self._copy(chunk_id, op.source, op.target, op.drop[0] if op.drop else None, settings))
        waiting = set(plan.waiting)
        self._work = [n for n in todo if n.chunk_id in waiting]
        return set(plan.blocked)

    def _plan_rebalance(self, settings: dict[str, float]) -> list[Need]:
        """Moves from the fullest servers to the emptiest of each tier (planner.plan_rebalance).

        Replicas per server are counters kept by the store, and the chunks to move are looked for
        among a page of the fullest server's own (its index range).
        """
        return plan_rebalance(self.planner_view(counts=True), self.mds.node.cluster.chunk_size,
                              settings["rebalance-band"] / 100, MAX_MOVES_PER_TICK, self._movable)

    def _movable(self, cs_id: int) -> list[Need]:
        """Healthy chunks on `cs_id` with nothing waiting: they may move (rebalancing)."""
        out = []
        for row in self._movable_on(cs_id):
            verdict = self._judge(row, self.index.states)
            h = verdict.health
            if h is None or verdict.priority is not None or h.waiting or cs_id not in h.good:
                continue
            out.append(Need(row.chunk.chunk_id, h.good, row.want, row.minimum, h.waiting, row.failure_domain,
                            row.tier))
        return out

    def _movable_on(self, cs_id: int) -> list[ChunkRow]:
        """A page of the chunks listing `cs_id`, from where the last plan stopped (so all get their turn)."""
        after = self._rebalance_after.get(cs_id, 0)
        rows = self.mds.store.chunk_rows_on(cs_id, after, REBALANCE_SCAN)
        self._rebalance_after[cs_id] = rows[-1].chunk.chunk_id if len(rows) == REBALANCE_SCAN else 0
        return rows

    # -- copies --------------------------------------------------------------------

    async def _copy(
        self, chunk_id: int, source: int, target: int, drop: int | None, settings: dict[str, float]
    ) -> None:
        placed = False
        try:
            bulk = await self._copy_bulk(chunk_id, source, target, settings)
            placed = await self._copy_frozen(chunk_id, source, target, drop, settings, bulk)
        except ChunkFSError as exc:
            logger.warning("copy of chunk %#x from CS#%d to CS#%d failed: %s", chunk_id, source, target, exc)
            if self.episode is not None:
                self.episode.failures += 1
            if isinstance(exc, ChecksumMismatch):
                # The source's replica may be the bad one (its header never reached the disk before a power
                # cut: copies from it failed in a loop until a reader met it, a probe).  Have it checked.
                self.bad.report(chunk_id, source, f"a copy from it to CS#{target} failed: {str(exc)[:200]}",
                                False, "the replication monitor", None)
        finally:
            self.copying.pop(chunk_id, None)
            self.index.touch(chunk_id)
            self.busy[source] -= 1
            self.busy[target] -= 1
            if not placed:
                chunk = self.mds.store.chunk(chunk_id)
                if chunk is None or target not in chunk.replicas:
                    await self.mds.chunks.delete_replica(target, chunk_id)
            self._refill()

    async def _replicate(
        self, source: int, target: int, settings: dict[str, float], header: dict[str, Any]
    ) -> dict[str, Any]:
        """CS_REPLICATE to `target`, fetching from `source` at the cluster's replication rate; the answer."""
        mds = self.mds
        server, src = mds.live.get(target), mds.live.get(source)
        if server is None or src is None:
            raise Unavailable(f"CS#{target if server is None else source} is offline")
        rate = int(settings["replication-rate"] * (1 << 20))
        size = mds.node.cluster.chunk_size
        reply, _ = await server.conn.call(Msg.CS_REPLICATE, {
            **header, "source": src.addr, "source_id": source, "rate": rate}, timeout=30.0 + 4 * size / rate)
        return reply

    async def _copy_bulk(
        self, chunk_id: int, source: int, target: int, settings: dict[str, float]
    ) -> tuple[list[int], int] | None:
        """Phase 1: the whole chunk copied to `target` while writers go on; ([version, token], bytes) for phase 2.

        None when it failed: phase 2 then copies the whole chunk, frozen, as a one-phase copy does.
        """
        chunk = self.mds.store.chunk(chunk_id)
        if chunk is None:
            return None
        try:
            reply = await self._replicate(source, target, settings, {
                "chunk_id": chunk_id, "version": chunk.version, "track": True})
        except ChunkFSError as exc:
            server = self.mds.live.get(target)
            if server is None or server.conn.closed:
                raise  # the target itself is gone (or frozen: given up): no frozen copy to it either
            logger.info("bulk copy of chunk %#x from CS#%d to CS#%d failed (%s); copying it frozen",
                        chunk_id, source, target, exc)
            return None
        token = reply.get("token")
        return None if token is None else ([chunk.version, int(token)], int(reply["bytes"]))

    async def _copy_frozen(
        self, chunk_id: int, source: int, target: int, drop: int | None, settings: dict[str, float],
        bulk: tuple[list[int], int] | None = None,
    ) -> bool:
        mds, chunks = self.mds, self.mds.chunks
        chunk = mds.store.chunk(chunk_id)
        if chunk is None:
            return False
        async with chunks.lock_for(chunk):
            chunk = mds.store.chunk(chunk_id)
            if chunk is None:
                return False
            h = self.health(chunk, {}, self.compute_states(settings))
            if source not in h.good or target in h.good or (drop is None and not h.need) or \
                    (drop is not None and drop not in h.good):
                logger.info("copy of chunk %#x from CS#%d to CS#%d no longer needed (good %s, need %d)%s",
                            chunk_id, source, target, sorted(h.good), h.need, "; its bulk copy is dropped" * bool(bulk))
                return False
            # Freeze: the replicas to copy from move to a new version (writers with the old map must ask
            # again, and wait on the lock); silent ones keep their place in the list but are not asked.
            # A waiting one still connected is asked too: with the inactive timeout as short as the
            # heartbeat period (1 s each), a healthy server is "inactive" for a moment of every second,
            # and left at the old version it was copied to again at once (12 copies for a dead
            # server's 11 replicas, in a test).  One that does not answer is dropped (`failed`).
            keep = [cs for cs in chunk.replicas if cs in h.good or cs in h.waiting]
            asked = [*h.good, *(cs for cs in h.waiting if chunks.holds(cs, chunk_id))]
            freeze = await chunks.set_replicas(chunk, keep, move=asked)
            frozen, failed = freeze.chunk, freeze.failed
            if source in failed:
                raise Unavailable(f"CS#{source} failed while the copy was being prepared")
            # With a bulk copy made (phase 1), only the blocks written since are fetched now.
            reply = await self._replicate(source, target, settings, {
                "chunk_id": chunk_id, "version": frozen.version, **({} if bulk is None else {"since": bulk[0]})})
            final = [cs for cs in frozen.replicas if cs not in failed and cs != drop] + [target]
            new = (await chunks.set_replicas(
                frozen, final, move=[cs for cs in final if cs in asked or cs == target],
                delete=() if drop is None else (drop,))).chunk
        copied = int(reply["bytes"]) + (0 if bulk is None else bulk[1])  # a copy made: both phases
        if self.episode is not None:
            if drop is None:
                self.episode.copies += 1
            else:
                self.episode.moves += 1
            self.episode.bytes += copied
            self.episode.last_done = time.monotonic()
        logger.info("chunk %#x copied from CS#%d to CS#%d (%d bytes)%s; version %#x", chunk_id, source, target,
                    copied, f", moved off CS#{drop}" if drop is not None else "", new.version)
        return True

    async def _trim(self, chunk_id: int) -> None:
        try:
            await self._trim_locked(chunk_id)
        except ChunkFSError as exc:
            logger.warning("trimming chunk %#x failed: %s", chunk_id, exc)
        finally:
            self.trimming.discard(chunk_id)
            self._refill()

    async def _trim_locked(self, chunk_id: int) -> None:
        mds, chunks = self.mds, self.mds.chunks
        chunk = mds.store.chunk(chunk_id)
        if chunk is None:
            return
        async with chunks.lock_for(chunk):
            chunk = mds.store.chunk(chunk_id)
            if chunk is None:
                return
            h = self.health(chunk, {}, self.compute_states())
            if not (h.excess or h.untidy):
                return
            attr = mds.store.getattr(chunk.ino)
            servers = {s.cs_id: s for s in self.planner_view()}
            victims = pick_victims(h.good, h.excess, servers, attr.get("failure_domain", "host"), attr.get("tier", 0))
            keep = [cs for cs in h.good if cs not in victims]
            await chunks.set_replicas(chunk, keep, move=keep, delete=victims)
        if self.episode is not None and victims:
            self.episode.trims += 1

    # -- bad replicas ----------------------------------------------------------------------

    async def drop_corrupt(self, chunk_id: int, cs_id: int, reason: str, reporter: str,
                           unsynced: bool = False) -> None:
        """Drop a replica whose header is corrupt (its server moved it aside) or whose file is gone from its
        server's disk; a good copy replaces it.

        `unsynced`: its header never reached the disk (a power cut).  Every sync of a chunk reaches
        every replica the chunk lists, and a replica joins a chunk after its allocation only synced
        (a copy): so while such a replica was listed, nothing in the chunk was promised.  The chunk's
        last replica is then made again, empty, where it was: the file reads zeros there, as a local
        disk shows what was not synced before a crash, instead of failing with EIO for good (a
        power-cut probe: SQLite's unsynced `-shm` file kept a WAL database from opening).  So is one
        whose other listed replicas no server holds now (a re-probe: the last of them deleted as left
        behind at an old version, and the chunk left listed on a server holding nothing); they are
        taken off the list.
        """
        mds, chunks = self.mds, self.mds.chunks
        chunks.lost(cs_id, chunk_id)
        chunk = mds.store.chunk(chunk_id)
        if chunk is None or cs_id not in chunk.replicas:
            return
        async with chunks.lock_for(chunk):
            # Decided under the chunk's lock, on the chunk as it is then: a reader reports every replica
            # at once, and each was judged the last one's drop by none (a power-cut probe: every replica
            # of such chunks dropped, the chunk lost for good).
            chunk = mds.store.chunk(chunk_id)
            if chunk is None or cs_id not in chunk.replicas:
                return
            last = chunk.replicas == (cs_id,)
            remade = unsynced and not any(cs != cs_id and chunks.holds(cs, chunk_id) for cs in chunk.replicas)
            if remade:
                if not last:
                    chunk = (await chunks.set_replicas(chunk, [cs_id], move=())).chunk
                failed = await chunks.create_replicas(chunk, [cs_id])
            elif not last:
                await chunks.set_replicas(chunk, [cs for cs in chunk.replicas if cs != cs_id])
        if last and not remade:
            # Dropped, it would be deleted as an orphan where it is found again (a report made in error: a
            # CI run saw a replica reported missing while it was being renamed to a new version).
            await mds.event(
                "error", f"CS#{cs_id}'s replica of chunk {chunk_id:#x} is corrupt or missing ({reason[:160]}; "
                f"found by {reporter}), and it is the chunk's last: kept listed, with nothing to copy from; "
                f"the part of {mds.store.path_of(chunk.ino)} it holds cannot be read until that server has it again")
            return
        if not remade:
            await mds.event(
                "warning", f"CS#{cs_id}'s replica of chunk {chunk_id:#x} is corrupt or missing ({reason[:160]}; "
                f"found by {reporter}): dropped; a good replica is being copied to replace it")
            return
        if failed:
            self.bad.remake_later(chunk_id, cs_id)
        what = "could not make it again there (tried again shortly)" if failed else \
            "made again there, empty (it reads as zeros)"
        await mds.event(
            "error" if failed else "warning",
            f"chunk {chunk_id:#x}: its last replica, on CS#{cs_id}, had never been synced when its server "
            f"stopped (a power cut?): no sync of the chunk ever completed, so nothing in it was promised; {what}")

    # -- draining --------------------------------------------------------------------------

    def replicas_on(self, cs_id: int) -> int:
        return self.mds.store.replicas_on(cs_id)

    async def rm_cs(self, cs_id: int, cancel: bool) -> dict[str, Any]:
        """Drain a chunk server (moves in the background) and remove it from the registry once empty.

        `chunkfs rm-cs --wait` calls this until `removed`; after a master change
        the next call starts the drain again on the new master.
        """
        mds = self.mds
        await mds.log.read_barrier()
        if cs_id in self.drained and not cancel:  # (the end of its drain removed it: `rm-cs --wait` asks again)
            return {"left": 0, "removed": True}
        if cs_id not in {cs["id"] for cs in mds.store.chunk_servers()}:
            raise NotFound(f"no CS#{cs_id} in this cluster")
        if cancel:
            if cs_id not in self.draining:  # (an operator probe: it said "cancelled")
                raise InvalidArgument(f"CS#{cs_id} is not being drained: nothing to cancel")
            self.draining.discard(cs_id)
            self.index.rejudge_server(cs_id)
            await mds.event("info", f"CS#{cs_id}: draining cancelled; it takes new chunks again")
            return {"left": self.replicas_on(cs_id), "removed": False}
        if cs_id not in self.draining:
            # A new master counts only the servers that reconnected: it refused with "the only active
            # chunk server" right after a failover (a fault probe).  Unavailable: the command retries.
            mds.check_servers_settled()
            # Connected, not only heard from within the inactive timeout: with that timeout as short as the
            # heartbeat's period, a healthy server is inactive for a moment of every second (a CI run under
            # load: a drain refused for "only 2 other active servers" of 3 connected).
            others = [s for s in mds.live.values() if s.cs_id != cs_id and s.cs_id not in self.draining]
            if not others:
                alone = "the only active chunk server" if self.is_active(cs_id) and cs_id in mds.live else \
                    "not active, and no other chunk server is either"
                raise InvalidArgument(f"CS#{cs_id} is {alone}; start or add another before removing it")
            goal = mds.store.highest_goal_on(cs_id)
            if goal > len(others):
                # Its replicas would have nowhere to go: every other server holds those chunks already.
                # (A probe's drain of one of three servers at replicas=3 waited forever, looking finished.)
                raise InvalidArgument(
                    f"CS#{cs_id} holds replicas of chunks kept on {goal} servers (replicas={goal}), and only "
                    f"{len(others)} other active chunk server(s) remain to take them: add a server first, or "
                    f"lower those files' replicas= (set-attr) to at most {len(others)}")
            self.draining.add(cs_id)
            self.index.rejudge_server(cs_id)
            await mds.event("warning", f"CS#{cs_id} is being drained: its {_n(self.replicas_on(cs_id))} "
                             "replica(s) move to other servers, then it is removed")
        left = self.replicas_on(cs_id)
        if left:
            return {"left": left, "removed": False}
        await self._remove_drained(cs_id)
        return {"left": 0, "removed": True}

    async def _remove_drained(self, cs_id: int) -> None:
        """Remove a drained (empty) chunk server from the cluster."""
        if cs_id not in self.draining:
            return  # (removed meanwhile: the monitor's pass and an `rm-cs` both found it empty)
        mds = self.mds
        self.draining.discard(cs_id)
        try:
            await mds.propose("remove_cs", cs_id=cs_id)
        except BaseException:
            self.draining.add(cs_id)
            raise
        self.drained.add(cs_id)
        self.labels.pop(cs_id, None)
        self.silent_since.pop(cs_id, None)
        server = mds.live.pop(cs_id, None)
        if server is not None:
            server.conn.close()
        await mds.event("info", f"CS#{cs_id} drained and removed from the cluster; its process, if it runs, "
                                "stops by itself")

    async def _remove_the_drained(self) -> None:
        """Servers whose drain ended: removed now, as the drain's event said (a fault probe: without --wait,
        an empty server stayed listed, "inactive, 0 replicas", until `rm-cs` was run again)."""
        for cs_id in sorted(self.draining):
            if not self.replicas_on(cs_id):
                await self._remove_drained(cs_id)

    async def set_config(self, values: dict[str, Any]) -> dict[str, float]:
        text = check_update(self.settings(), values)
        stored = await self.mds.propose("set_config", values=text)
        self._settings = effective(stored)
        await self.mds.event("info", "cluster settings changed: " + ", ".join(f"{k}={v}" for k, v in text.items()))
        return effective(stored)

    # -- reporting -------------------------------------------------------------------------

    def report(self) -> tuple[dict[str, int], dict[int, int], dict[int, str]]:
        """Chunk health counts, replicas listed per server, and server states (for `stat`).

        Counts come from the health index (as of its last catch-up: `settle` first for exact
        ones) and replicas per server from the store's counters: the same cost at any size.
        """
        return self.index.counts(), self.mds.store.replica_counts(), self.compute_states()

    def progress(self) -> dict[str, Any]:
        extra = {"domain_shared": self.index.shared_count(), "draining": sorted(self.draining)}
        backlog = self.index.backlog() if self.index.active else 0
        if backlog:
            extra["recounting"] = backlog  # chunks whose health is still being worked out
        if self.episode is not None:
            return {**self.episode.summary(), **extra}
        if self.last_episode is not None:
            return {**self.last_episode, "percent": 100, **extra}
        return {"active": False, "percent": 100, **extra}
