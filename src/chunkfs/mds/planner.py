"""The placement and repair planner: which copies, moves and deletions to do. Pure: no I/O, no clock.

Given the chunk servers (where each is, its tier, free space, state, and how
many copies it takes part in now) and the chunks that need work (their good
replicas, goal, failure domain, tier), `Planner.plan` returns what to do:

- most endangered first: below the minimum, then below the goal (fewest good
  replicas relative to the minimum, then to the goal, first), then trims,
  then moves (draining, wrong tier, shared domain), then rebalancing;
- a copy goes to a server of the chunk's tier with room, in a failure domain
  none of the chunk's other replicas uses at the file's level, else at the
  next smaller level (`domains.choose`: rack, then host, then disk), chosen at
  random weighted by free space, so new data drifts toward emptier disks
  without herding every copy onto the emptiest one;
- no server takes part (as source or target) in more than ``per_server``
  copies at once, counting those already running, and no more than
  ``max_ops`` operations start; what does not fit now *waits* (a later
  plan, when copies end), what has no server to go to at all is *blocked*.

It is separate from the code that sends commands (replication.py) so that it
can be tested alone, on clusters of any size and shape, and so its cost can
be measured: it plans the recovery of a lost server holding 10^5 replicas
among 1,000 servers in about a second (bench/bench_planner.py, SCALE.md),
and the monitor hands it at most a few thousand chunks per pass.  So a
target is not found by scanning every server per chunk (`domains.choose`
does, which is fine for a handful of servers): servers are
drawn from a table of cumulative free space (bisect) and a draw that fails a
rule is drawn again; the weight of a server whose free space shrank with
planned copies is honoured by accepting it with probability
``free now / free at the start`` (rejection sampling, exact).  Counts of
usable servers per failure domain tell, without a scan, when no unused
domain is left at a level, so the planner steps down a level at once; an
exact scan (`domains.choose`) remains as the fallback when draws keep
failing.
"""

from __future__ import annotations

import bisect
import collections
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from chunkfs.common.placement import DEFAULT_FAILURE_DOMAIN, FAILURE_DOMAINS
from chunkfs.mds.domains import Place, choose, crowded, domain_key
from chunkfs.mds.health import ACTIVE

#: Random draws per failure-domain level before the exact scan.
DRAWS = 24
#: Urgency classes (`Need.urgency`), as replication.py's priorities.
BELOW_MIN, BELOW_GOAL, OVER_GOAL, MISPLACED, REBALANCE = range(5)


@dataclass(slots=True, frozen=True)
class Server:
    """A chunk server as the planner sees it (soft state of the master, taken at one moment)."""

    place: Place
    total: int = 0
    state: str = ACTIVE
    #: Being removed (rm-cs): takes nothing new; its replicas are the first to go.
    draining: bool = False
    #: Copies it takes part in now (as source or target).
    busy: int = 0
    #: Replicas listed on it (for rebalancing).
    replicas: int = 0

    @property
    def cs_id(self) -> int:
        return self.place.cs_id


@dataclass(slots=True, frozen=True)
class Need:
    """A chunk that needs work, with what its placement depends on."""

    chunk_id: int
    #: Replicas on active servers that hold the current version.
    good: tuple[int, ...]
    want: int
    minimum: int
    #: Replicas on servers that may come back (listed; no copy goes there, none is counted lost).
    waiting: tuple[int, ...] = ()
    failure_domain: str = DEFAULT_FAILURE_DOMAIN
    tier: int = 0
    #: Replicas to create now (health.ChunkHealth.need).
    missing: int = 0
    #: Good replicas over the goal to delete (or lost ones to forget: `untidy`).
    excess: int = 0
    untidy: bool = False
    #: A good replica to move away (draining, wrong tier, shared domain; or rebalancing).
    drop: int | None = None
    #: Only onto this server (rebalancing).
    target: int | None = None

    @property
    def urgency(self) -> int:
        if self.missing:
            return BELOW_MIN if len(self.good) < self.minimum else BELOW_GOAL
        if self.excess or self.untidy:
            return OVER_GOAL
        return REBALANCE if self.target is not None else MISPLACED

    def danger(self) -> tuple[int, int, int, int]:
        """Sort key, most endangered first: urgency, then fewest good replicas relative to the minimum and goal."""
        good = len(self.good)
        return self.urgency, good - self.minimum, good - self.want, self.chunk_id


@dataclass(slots=True, frozen=True)
class Op:
    """One thing to do: ``copy`` (source -> target), ``move`` (copy, then delete `drop`), ``delete``."""

    kind: str
    chunk_id: int
    source: int | None = None
    target: int | None = None
    #: Replicas deleted once done (a move: the one moved off; a delete: the ones trimmed).
    drop: tuple[int, ...] = ()


@dataclass(slots=True)
class Plan:
    ops: list[Op] = field(default_factory=list)
    #: Chunks that could be done but not within the limits now (next plan, when copies end).
    waiting: list[int] = field(default_factory=list)
    #: Chunks below their goal with no server to copy to at all (tier, room, every domain used, ...).
    blocked: list[int] = field(default_factory=list)
    #: Chunks with no good replica: nothing to copy from.
    offline: list[int] = field(default_factory=list)


class _Tier:
    """The servers of one tier that may take copies: a weighted table to draw from, and domain counts."""

    __slots__ = ("ids", "cumulative", "total", "domains", "usable")

    def __init__(self, ids: list[int], weights: list[int], keys: Mapping[int, tuple[str, ...]]) -> None:
        self.ids = ids
        self.cumulative: list[int] = []
        running = 0
        for w in weights:
            running += w
            self.cumulative.append(running)
        self.total = running
        #: Per level (FAILURE_DOMAINS order): domain -> usable servers in it.
        self.domains: list[collections.Counter[str]] = [collections.Counter() for _ in FAILURE_DOMAINS]
        for cs in ids:
            for lvl, key in enumerate(keys[cs]):
                self.domains[lvl][key] += 1
        self.usable = len(ids)


def _keys(place: Place) -> tuple[str, ...]:
    return tuple(domain_key(place, level) for level in FAILURE_DOMAINS)


class Planner:
    """One plan's view of the servers; `plan` may be called more than once (limits carry over)."""

    def __init__(self, servers: Iterable[Server], chunk_size: int, per_server: int | None = None,
                 max_ops: int | None = None, rng: random.Random | None = None) -> None:
        self.chunk_size = chunk_size
        self.per_server = per_server if per_server is not None else 1 << 62
        self.budget = max_ops if max_ops is not None else 1 << 62
        self.rng = rng or random.Random()  # noqa: S311 - placement, not security
        self.servers: dict[int, Server] = {s.cs_id: s for s in servers}
        self.keys: dict[int, tuple[str, ...]] = {cs: _keys(s.place) for cs, s in self.servers.items()}
        self.busy: dict[int, int] = {cs: s.busy for cs, s in self.servers.items()}
        self.free: dict[int, int] = {cs: s.place.free for cs, s in self.servers.items()}
        self._start_free = dict(self.free)
        by_tier: dict[int, list[int]] = collections.defaultdict(list)
        for cs, s in sorted(self.servers.items()):
            if self.takes_new(s):
                by_tier[s.place.tier].append(cs)
        #: Servers that could take a copy when the plan started (room, state): for `blocked`.
        self.able: dict[int, set[int]] = {tier: set(ids) for tier, ids in by_tier.items()}
        self.tiers: dict[int, _Tier] = {}
        for tier, ids in by_tier.items():
            self.tiers[tier] = _Tier(ids, [max(self.free[cs], 1) for cs in ids], self.keys)
            for cs in ids:
                if self.busy[cs] >= self.per_server:
                    self._retire(cs)

    def takes_new(self, server: Server) -> bool:
        """Whether new replicas may go to this server at all (active, not draining, room for a chunk)."""
        return server.state == ACTIVE and not server.draining and server.place.free > self.chunk_size

    # -- bookkeeping of one plan --------------------------------------------------------

    def _usable(self, cs: int) -> bool:
        return self.busy[cs] < self.per_server and self.free[cs] > self.chunk_size

    def _retire(self, cs: int) -> None:
        """`cs` can take no more copies in this plan: its domains lose one usable server."""
        tier = self.tiers[self.servers[cs].place.tier]
        tier.usable -= 1
        for lvl, key in enumerate(self.keys[cs]):
            counter = tier.domains[lvl]
            counter[key] -= 1
            if counter[key] <= 0:
                del counter[key]

    def _take(self, source: int, target: int) -> None:
        """A copy from `source` to `target` is planned: both are busier, the target has less room."""
        source_was = self._usable(source) and self._in_table(source)
        self.busy[source] += 1
        self.busy[target] += 1
        self.free[target] -= self.chunk_size
        if source_was and not self._usable(source):
            self._retire(source)
        if not self._usable(target):  # the target came from the table, so it was usable
            self._retire(target)

    def _in_table(self, cs: int) -> bool:
        server = self.servers.get(cs)
        return server is not None and cs in self.able.get(server.place.tier, ())

    # -- choosing --------------------------------------------------------------------------

    def choose_target(self, tier: int, level: str, existing: Sequence[int], exclude: Iterable[int] = ()) -> int | None:
        """A server for one new replica, or None: see the module's docstring for the rules."""
        table = self.tiers.get(tier)
        if table is None or table.usable <= 0:
            return None
        excluded = set(exclude) | set(existing)
        placed = [self.keys[cs] for cs in existing if cs in self.keys]
        for lvl in range(FAILURE_DOMAINS.index(level), -1, -1):
            used = {k[lvl] for k in placed}
            counts = table.domains[lvl]
            if sum(1 for d in used if d in counts) >= len(counts):
                continue  # every domain with a usable server is used: a smaller level decides
            found = self._draw(table, lvl, used, excluded)
            if found is None:
                found = self._scan(table, lvl, used, excluded)
            if found is not None:
                return found
        return None

    def _draw(self, table: _Tier, lvl: int, used: set[str], excluded: set[int]) -> int | None:
        rng, ids, cumulative, total = self.rng, table.ids, table.cumulative, table.total
        for _ in range(DRAWS):
            cs = ids[bisect.bisect_right(cumulative, rng.random() * total)] if total else ids[0]
            if cs in excluded or self.keys[cs][lvl] in used or not self._usable(cs):
                continue
            start = max(self._start_free[cs], 1)
            if rng.random() * start < self.free[cs]:
                return cs
        return None

    def _scan(self, table: _Tier, lvl: int, used: set[str], excluded: set[int]) -> int | None:
        eligible = [self.servers[cs].place for cs in table.ids
                    if cs not in excluded and self._usable(cs) and self.keys[cs][lvl] not in used]
        if not eligible:
            return None
        chosen = choose([Place(p.cs_id, p.host, p.location, p.tier, self.free[p.cs_id]) for p in eligible],
                        1, FAILURE_DOMAINS[lvl], rng=self.rng)
        return chosen[0] if chosen else None

    def choose_source(self, good: Sequence[int]) -> int | None:
        """The least busy good replica within the limit (ties broken at random), or None."""
        best, best_key = None, None
        for cs in good:
            if cs not in self.busy or self.busy[cs] >= self.per_server:
                continue
            key = (self.busy[cs], self.rng.random())
            if best_key is None or key < best_key:
                best, best_key = cs, key
        return best

    def _blocked(self, need: Need) -> bool:
        """No server at all could take a replica of this chunk (ignoring the limits of this plan)."""
        able = self.able.get(need.tier, set())
        if need.target is not None:
            return need.target not in able or need.target in need.good or need.target in need.waiting
        listed = len(need.good) + len(need.waiting)
        if len(able) > listed:
            return False  # more able servers than replicas: one is free (the usual case, no set built)
        return len(able) <= sum(1 for cs in set(need.good) | set(need.waiting) if cs in able)

    # -- the plan ------------------------------------------------------------------------

    def plan(self, needs: Iterable[Need]) -> Plan:
        """What to do for `needs` now, most endangered first."""
        out = Plan()
        for need in sorted(needs, key=Need.danger):
            if self.budget <= 0:
                out.waiting.append(need.chunk_id)
                continue
            if need.urgency == OVER_GOAL:
                victims = pick_victims(need.good, need.excess, self.servers, need.failure_domain, need.tier)
                out.ops.append(Op("delete", need.chunk_id, drop=tuple(victims)))
                self.budget -= 1
                continue
            if not need.good:
                out.offline.append(need.chunk_id)
                continue
            if self._blocked(need):
                if need.urgency <= BELOW_GOAL:
                    out.blocked.append(need.chunk_id)
                continue  # a move with nowhere to go: nothing to do
            op = self._copy(need)
            if op is None:
                out.waiting.append(need.chunk_id)
            else:
                out.ops.append(op)
                self.budget -= 1
        return out

    def _copy(self, need: Need) -> Op | None:
        source = self.choose_source(need.good)
        if source is None:
            return None
        keep = [cs for cs in (*need.good, *need.waiting) if cs != need.drop]
        listed = (*need.good, *need.waiting)
        if need.target is not None:
            target = need.target if self._in_table(need.target) and self._usable(need.target) else None
        else:
            target = self.choose_target(need.tier, need.failure_domain, keep, listed)
        if target is None:
            return None
        self._take(source, target)
        if need.drop is None:
            return Op("copy", need.chunk_id, source, target)
        return Op("move", need.chunk_id, source, target, (need.drop,))


def pick_victims(good: Sequence[int], count: int, servers: Mapping[int, Server], level: str, tier: int) -> list[int]:
    """Which `count` good replicas to delete: draining servers first, then the wrong tier, then
    those sharing a failure domain, then the fullest (least free space)."""
    places = {cs: servers[cs].place for cs in good if cs in servers}
    crowd = {p.cs_id for p in crowded(list(places.values()), level)}

    def badness(cs: int) -> tuple[bool, bool, bool, int]:
        server = servers.get(cs)
        place = places.get(cs)
        return (server is not None and server.draining, place is None or place.tier != tier, cs in crowd,
                -(place.free if place else 0))

    return sorted(good, key=badness, reverse=True)[:count]


def plan_rebalance(
    servers: Iterable[Server], chunk_size: int, band: float, max_moves: int,
    movable: Callable[[int], Iterable[Need]], taken: set[int] | None = None,
) -> list[Need]:
    """Up to `max_moves` per tier from the fullest servers to the emptiest, until all are within `band` of the average.

    Fullness is listed replicas x chunk size / capacity, so servers of different sizes fill alike.  A
    move goes only where it narrows the gap by at least one replica, and never into a shared failure
    domain (the next pass would only move it back).  `movable(cs)`: chunks on `cs` that may move now
    (healthy, nothing waiting), as the caller pages them; `taken`: chunks already planned.
    """
    taken = set() if taken is None else taken
    everyone = {s.cs_id: s for s in servers}
    by_tier: dict[int, dict[int, Server]] = collections.defaultdict(dict)
    for s in everyone.values():
        if s.state == ACTIVE and not s.draining and s.total > 0:
            by_tier[s.place.tier][s.cs_id] = s
    out: list[Need] = []
    for _tier, group in sorted(by_tier.items()):
        if len(group) >= 2:
            out += _rebalance_tier(group, everyone, chunk_size, band, max_moves, movable, taken)
    return out


def _rebalance_tier(group: dict[int, Server], everyone: Mapping[int, Server], chunk_size: int, band: float,
                    max_moves: int, movable: Callable[[int], Iterable[Need]], taken: set[int]) -> list[Need]:
    used = {cs: s.replicas for cs, s in group.items()}
    average = sum(used.values()) * chunk_size / sum(s.total for s in group.values())

    def fill(cs: int) -> float:
        return used[cs] * chunk_size / group[cs].total

    moves: list[Need] = []
    pages: dict[int, list[Need]] = {}
    for _ in range(max_moves):
        full = max(group, key=fill)
        empty = min(group, key=fill)
        if fill(full) <= average * (1 + band) and fill(empty) >= average * (1 - band):
            break
        if used[full] - used[empty] < 2:
            break
        into = group[empty].place
        if full not in pages:
            pages[full] = list(movable(full))
        for need in pages[full]:
            if empty in need.good or empty in need.waiting or need.chunk_id in taken or \
                    need.tier != into.tier or full not in need.good:
                continue
            now = [everyone[cs].place for cs in need.good if cs in everyone]
            after = [p for p in now if p.cs_id != full] + [into]
            if len(crowded(after, need.failure_domain)) > len(crowded(now, need.failure_domain)):
                continue
            moves.append(Need(need.chunk_id, need.good, need.want, need.minimum, need.waiting,
                              need.failure_domain, need.tier, drop=full, target=empty))
            taken.add(need.chunk_id)
            used[full] -= 1
            used[empty] += 1
            break
        else:
            break
    return moves
