"""Chunk health kept up to date as things change, so nothing on the master walks every chunk.

The master answers ``stat``, ``/metrics``, the dashboard, ``top`` and every
mount's ``statfs`` with health counts, and its replication monitor needs the
chunks that want work.  Walking the whole chunk table for either costs time
in proportion to the cluster, on the event loop that also serves requests and
Raft (issue 14).  Instead:

- The store keeps, in the transaction of every change, a histogram of chunks
  by (replicas listed, goal, minimum) (`MetadataStore.goal_histogram`).  If
  every listed replica were good, the counts would follow from those few
  rows alone: the *hard* status of a chunk.
- This index keeps the chunks whose real status differs from their hard
  status (a server inactive or offline, a replica missing, a copy running,
  no room to place a copy), as a correction to the histogram, and the
  chunks that need work (`take`), by priority.
- A chunk is judged again only when something it depends on may have
  changed: a command changed it (the store's `chunk_listener`), a server
  that lists it changed state or connection (its chunks are paged through
  the store's index by chunk server, `settle` in bounded slices), or the
  master touched it (`touch`: a replica given or taken away, a copy started
  or ended, found blocked).

The judgement itself (`Judge`) is the replication monitor's; the states it
is given are the ones this index recorded (`states`), so every chunk's entry
agrees with them.  A server the index has not recorded yet is taken as
active and holding everything it lists: the state in which hard and real
status agree, so an empty index is consistent, and the first `observe`
pages through every server's chunks.

Work is proportional to what changed: a server going offline costs one pass
over its own chunks, in slices; a tick or a stat with nothing new costs the
same at 10^3 and 10^7 chunks.  Memory is proportional to the chunks that are
not healthy (and, on a new master, to all of them until the servers are back).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from chunkfs.mds.health import ACTIVE, HEALTH_KEYS, OFFLINE, ChunkHealth
from chunkfs.mds.held_replicas import HeldReplicas
from chunkfs.mds.store import ChunkRow, MetadataStore

logger = logging.getLogger(__name__)

_INDEX = {key: i for i, key in enumerate(HEALTH_KEYS)}
#: Chunks judged in one slice of `settle` before the event loop gets a turn (a few milliseconds).
SLICE = 1000
#: Priorities of work, as in replication.py (0 below MIN ... 3 misplaced).
PRIORITIES = 4
#: Seconds after a reset (a new master) during which a server not connected yet is left unrecorded
#: (taken as active and holding what it lists) instead of recorded as missing: it is expected back, and
#: recording it would cost a pass over its chunks, and another when it is back — at 10^6 replicas per
#: server, tens of seconds of the master's loop.  Longer than the master's own CS_RECONNECT_GRACE (10 s):
#: after a cold start of a whole cluster, chunk servers scanning 10^6 replicas each on a busy host took
#: 15-20 s to be back.  Nothing waits on it: a missing server's chunks are re-created only after
#: ``cs-offline-timeout`` (300 s by default); only ``stat`` shows them healthy a little longer.
UNSEEN_GRACE = 30.0


def hard_status(listed: int, want: int, minimum: int) -> str:
    """A chunk's status if every replica it lists is good (`ChunkHealth.status` with good = listed)."""
    if listed == 0:
        return "offline"
    if listed < minimum:
        return "urgent"
    if listed < want:
        return "degraded"
    return "healthy"


@dataclass(slots=True, frozen=True)
class Verdict:
    """What the monitor makes of one chunk under given server states."""

    status: str
    #: Work it needs now (replication.py's priorities 0-3), or None.
    priority: int | None = None
    #: Whether its good replicas share a failure domain.
    shared: bool = False
    health: ChunkHealth | None = None
    #: For misplaced chunks: the replica to move away.
    drop: int | None = None


Judge = Callable[[ChunkRow, Mapping[int, str]], Verdict]
#: Current server states and connection objects (any object; compared by identity).
Sense = Callable[[], tuple[Mapping[int, str], Mapping[int, Any]]]


class ChunkHealthIndex:
    def __init__(self, store: MetadataStore, judge: Judge, sense: Sense) -> None:
        self.store = store
        self.judge = judge
        self.sense = sense
        self.active = False
        self.unseen_grace = UNSEEN_GRACE
        #: Chunks whose replicas are being made while their allocation commits (`ReplicaSets.making`):
        #: no server counts as holding them yet, which is no shortage.  Judged when that is done (touched).
        self.held: Collection[int] = frozenset()
        self.reset()

    def reset(self) -> None:
        """Forget everything (a new master): the next `observe` re-judges every server's chunks."""
        #: Server states (and connections) the entries below reflect.
        self.states: dict[int, str] = {}
        self._links: dict[int, Any] = {}
        #: Servers whose chunks are being judged again: cs_id -> last chunk id done.
        self._pending: dict[int, int] = {}
        self._dirty: set[int] = set()
        #: chunk_id -> hard status index * 8 + real status index, for chunks where they differ.
        self._odd: dict[int, int] = {}
        self._delta = [0] * len(HEALTH_KEYS)
        self._shared: set[int] = set()
        self._priority: dict[int, int] = {}
        self._attention: list[dict[int, None]] = [{} for _ in range(PRIORITIES)]
        self._since = time.monotonic()
        #: Servers left unrecorded by the last `observe` (in the grace, or still reporting their replicas).
        self._unseen: set[int] = set()
        #: Chunks judged while a server they list was left unrecorded: judged again once it is recorded.
        self._provisional: set[int] = set()

    # -- what may have changed ---------------------------------------------------------

    def chunks_changed(self, chunk_ids: list[int]) -> None:
        """The store's listener: commands created, changed or removed these chunks."""
        if self.active:
            self._dirty.update(chunk_ids)

    def touch(self, chunk_id: int) -> None:
        """Something the judgement depends on changed for this chunk (a replica held, a copy, blocked)."""
        if self.active:
            self._dirty.add(chunk_id)

    def rejudge_server(self, cs_id: int) -> None:
        """Judge every chunk listing `cs_id` again (its labels, draining, ...)."""
        if self.active:
            self._pending[cs_id] = 0

    def observe(self) -> None:
        """Compare the servers' states and connections with the recorded ones; queue the changed servers.

        Two cases skip the pass over a server's chunks that a change costs:

        - a server still reporting its replicas (a registration in pages) keeps
          the state recorded before: its chunks are judged once, when it has
          reported them all, not once as "reporting" and again as "active";
        - a server never recorded since the reset, which is not connected yet
          within `unseen_grace`, stays unrecorded; and one that then comes back
          active has only the chunks it does not hold judged (its
          `HeldReplicas.missing`): for every other chunk listing it, "active and
          holding" is what the empty index already assumed.
        """
        states, links = self.sense()
        listed = self.store.replica_counts()
        in_grace = time.monotonic() - self._since < self.unseen_grace
        unseen: set[int] = set()
        for cs in set(states) | set(self.states) | set(listed):
            state = states.get(cs, OFFLINE)
            link = links.get(cs)
            recorded = cs in self.states
            if recorded and self.states[cs] == state and self._links.get(cs) is link:
                continue
            if link is not None and getattr(link, "reporting", False) or \
                    not recorded and link is None and state != OFFLINE and in_grace:
                unseen.add(cs)
                continue
            held = getattr(link, "replicas", None)
            self.states[cs] = state
            self._links[cs] = link
            if not recorded and state == ACTIVE and isinstance(held, HeldReplicas):
                self._dirty.update(held.missing)
            else:
                if listed.get(cs, 0) >= SLICE:  # a pass worth knowing about when the master is busy
                    logger.info("chunk health: judging the %d chunks on CS#%d again (now %s)", listed[cs], cs, state)
                self._pending[cs] = 0
        if self._provisional and unseen != self._unseen:
            self._dirty.update(self._provisional)  # judged while a server now recorded was not
            self._provisional.clear()
        self._unseen = unseen

    # -- catching up -----------------------------------------------------------------------

    def backlog(self) -> int:
        """Roughly how many chunks are still to be judged again."""
        return len(self._dirty) + sum(self.store.replicas_on(cs) for cs in self._pending)

    def settle_some(self, budget: int = SLICE) -> bool:
        """Judge up to about `budget` chunks that may have changed; True once none is left."""
        done = 0
        while self._dirty and done < budget:
            ids = [self._dirty.pop() for _ in range(min(len(self._dirty), 500, budget - done))]
            rows = self.store.chunk_rows(ids)
            for row in rows:
                if row.chunk.chunk_id not in self.held:
                    self._judge(row)
            found = {row.chunk.chunk_id for row in rows}
            for chunk_id in ids:
                if chunk_id not in found:
                    self._forget(chunk_id)
            done += len(ids)
        while self._pending and done < budget:
            cs, after = next(iter(self._pending.items()))
            limit = max(1, min(SLICE, budget - done))
            rows = self.store.chunk_rows_on(cs, after, limit)
            for row in rows:
                if row.chunk.chunk_id not in self.held:
                    self._judge(row)
            if len(rows) < limit:
                del self._pending[cs]
            else:
                self._pending[cs] = rows[-1].chunk.chunk_id
            done += len(rows) + 1
        return not self._dirty and not self._pending

    def settle_now(self, max_rounds: int = 1_000_000) -> None:
        """Catch up completely, without yielding (tests, benchmarks, start-up)."""
        for _ in range(max_rounds):
            self.observe()
            if self.settle_some(SLICE * 10):
                return
        raise RuntimeError("chunk health did not settle")

    async def settle(self, timeout: float) -> bool:
        """Catch up in slices, the event loop turning between them; False if `timeout` ran out first."""
        deadline = time.monotonic() + timeout
        while True:
            self.observe()
            if self.settle_some():
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0)

    # -- bookkeeping -----------------------------------------------------------------------

    def _judge(self, row: ChunkRow) -> Verdict:
        chunk_id = row.chunk.chunk_id
        if self._unseen and not self._unseen.isdisjoint(row.chunk.replicas):
            self._provisional.add(chunk_id)
        verdict = self.judge(row, self.states)
        hard = _INDEX[hard_status(len(row.chunk.replicas), row.want, row.minimum)]
        self._set_status(chunk_id, hard, _INDEX[verdict.status])
        if verdict.shared:
            self._shared.add(chunk_id)
        else:
            self._shared.discard(chunk_id)
        self._set_priority(chunk_id, verdict.priority)
        return verdict

    def _forget(self, chunk_id: int) -> None:
        self._set_status(chunk_id, 0, 0)
        self._shared.discard(chunk_id)
        self._set_priority(chunk_id, None)

    def _set_status(self, chunk_id: int, hard: int, real: int) -> None:
        old = self._odd.pop(chunk_id, None)
        if old is not None:
            self._delta[old >> 3] += 1
            self._delta[old & 7] -= 1
        if hard != real:
            self._odd[chunk_id] = hard << 3 | real
            self._delta[hard] -= 1
            self._delta[real] += 1

    def _set_priority(self, chunk_id: int, priority: int | None) -> None:
        old = self._priority.get(chunk_id)
        if old == priority:
            return
        if old is not None:
            del self._attention[old][chunk_id]
            del self._priority[chunk_id]
        if priority is not None:
            self._attention[priority][chunk_id] = None
            self._priority[chunk_id] = priority

    def judge_rows(self, rows: list[ChunkRow], asked: list[int]) -> list[tuple[ChunkRow, Verdict]]:
        """Judge these chunks now (the monitor, before working on them); `asked` ones not found are forgotten."""
        found = {row.chunk.chunk_id for row in rows}
        for chunk_id in asked:
            if chunk_id not in found:
                self._forget(chunk_id)
        return [(row, self._judge(row)) for row in rows]

    # -- answers ---------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Chunks by health, each in exactly one bucket (`HEALTH_KEYS`)."""
        out = dict.fromkeys(HEALTH_KEYS, 0)
        for listed, want, minimum, n in self.store.goal_histogram():
            out[hard_status(listed, want, minimum)] += n
        for i, key in enumerate(HEALTH_KEYS):
            out[key] += self._delta[i]
        return out

    def shared_count(self) -> int:
        return len(self._shared)

    def waiting_work(self, priority: int) -> int:
        """Chunks known to need work of this priority."""
        return len(self._attention[priority])

    def priority_of(self, chunk_id: int) -> int | None:
        return self._priority.get(chunk_id)

    def take(self, limit: int) -> list[int]:
        """Up to `limit` chunks that need work, most urgent first; the ones taken go to the back of their line."""
        out: list[int] = []
        for line in self._attention:
            for chunk_id in list(itertools.islice(line, limit - len(out))):
                out.append(chunk_id)
                del line[chunk_id]
                line[chunk_id] = None
            if len(out) >= limit:
                break
        return out
