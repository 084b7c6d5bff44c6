"""A deterministic simulator for the Raft core: where the trust in it comes from.

Several `RaftCore`s run against a virtual clock and a simulated network.  One
seeded `random.Random` decides everything — which message is delivered next
(reordering), which are lost, duplicated or delayed, partitions, crashes,
restarts, client requests, compactions and membership changes — so a failing
run is replayed exactly from its seed.

The simulated driver does what the real one must: persist the Ready's
snapshot, entries and hard state, *then* send its messages, then apply.  A
crash discards the core and keeps only the node's persisted state; a Ready not
yet handled when the crash strikes is lost entirely, or persisted only in part
(a prefix of its entries without the hard state, as a torn batch), or
persisted but never sent.  A restart rebuilds the core from that state, as
`LogStorage.open` would.

After every step the checker verifies:

* election safety — at most one leader per term (over the whole run);
* log matching — entries with the same index and term have the same content
  and the same predecessor term, which by induction is the log matching
  property across every log that ever held them;
* leader completeness — a leader of term t holds every entry known committed
  in a term before t (checked at election and whenever a commit is learned);
* state-machine safety — no two nodes commit or apply different entries at
  one index.

At the end, the client-visible history of the key-value workload is checked
for linearizability (see `check_linearizable`).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from chunkfs.raft.core import (
    Entry,
    EntryKind,
    HardState,
    Message,
    RaftCore,
    RaftSafetyError,
    Ready,
    Role,
    Snapshot,
    message_from_dict,
)

INF = float("inf")


class InvariantViolation(AssertionError):
    """A Raft or linearizability invariant failed; the message names the seed to replay."""


# ----------------------------------------------------------------- configuration


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Knobs of one simulated run (probabilities are per simulation step)."""

    voters: int = 3
    spares: int = 1  # extra node ids that membership changes may add
    ticks: int = 150  # length of the faulty phase, in ticks
    settle_ticks: int = 120  # fault-free phase at the end (liveness check)
    election_timeout: int = 10
    heartbeat_timeout: int = 3
    max_entries_per_msg: int = 8
    max_delay: int = 2  # ticks
    drop: float = 0.05
    duplicate: float = 0.03
    crash: float = 0.006
    restart: float = 0.03
    partition: float = 0.004
    heal: float = 0.03
    client: float = 0.25
    compact: float = 0.01
    conf_change: float = 0.005
    transfer: float = 0.003
    defer_ready: float = 0.15
    codec_roundtrip: float = 0.1
    clients: int = 3
    keys: int = 2
    client_timeout: int = 30
    liveness: bool = True


# ----------------------------------------------------------------- client history


@dataclass(slots=True)
class Op:
    """One client operation as the client saw it."""

    op_id: int
    client: int
    kind: str  # "put" | "get"
    key: str
    value: str | None  # put: the value written; get: the value read
    invoke: int
    complete: int | None = None
    #: True = acknowledged, False = definitely not done, None = outcome unknown (timeout, crash).
    ok: bool | None = None
    node: int = 0
    index: int = 0
    invoke_tick: int = 0
    done: bool = False


def check_linearizable(ops: Iterable[Op]) -> tuple[bool, str]:
    """Check a history of single-key registers for linearizability.

    Keys are independent registers (linearizability is compositional, so each
    key is checked on its own).  For each key this is the Wing & Gong search
    with Lowe's memoisation (as in Knossos/Porcupine): repeatedly pick an op
    that may take effect next — one invoked before every pending op's
    response — and check it against the register's value; a put whose outcome
    is unknown may take effect at any time after its invocation or never.
    Failed ops (definitely not applied) and gets without an answer constrain
    nothing and are left out.  Sound and complete for this history model;
    exponential in the worst case, which the small per-seed histories keep cheap.
    """
    by_key: dict[str, list[Op]] = {}
    for op in ops:
        if op.kind == "put" and op.ok is not False:
            by_key.setdefault(op.key, []).append(op)
        elif op.kind == "get" and op.ok is True:
            by_key.setdefault(op.key, []).append(op)
    for key, kops in sorted(by_key.items()):
        if not _check_register(kops):
            lines = [
                f"  {o.kind} {o.key}={o.value!r} [{o.invoke}, {o.complete if o.ok else '?'}] "
                f"client={o.client} node={o.node} index={o.index} ok={o.ok}"
                for o in sorted(kops, key=lambda o: o.invoke)
            ]
            return False, f"history of key {key!r} is not linearizable:\n" + "\n".join(lines)
    return True, ""


def _check_register(ops: list[Op]) -> bool:
    ops = sorted(ops, key=lambda o: o.invoke)
    n = len(ops)
    inv = [o.invoke for o in ops]
    resp = [o.complete if o.ok else INF for o in ops]
    is_get = [o.kind == "get" for o in ops]
    val = [o.value for o in ops]
    required = 0
    for i in range(n):
        if resp[i] != INF:
            required |= 1 << i
    seen: set[tuple[int, str | None]] = set()
    stack: list[tuple[int, str | None]] = [(0, None)]
    while stack:
        mask, cur = stack.pop()
        if mask & required == required:
            return True
        if (mask, cur) in seen:
            continue
        seen.add((mask, cur))
        rest = [i for i in range(n) if not mask >> i & 1]
        bound = min(resp[i] for i in rest)
        for i in rest:
            if inv[i] > bound:
                break  # sorted by invocation
            if is_get[i]:
                if val[i] == cur:
                    stack.append((mask | 1 << i, cur))
            else:
                stack.append((mask | 1 << i, val[i]))
    return False


# ------------------------------------------------------------------------- nodes


@dataclass(slots=True)
class Persisted:
    """What a node's storage holds: survives crashes."""

    hard_state: HardState
    snapshot: Snapshot
    entries: list[Entry] = field(default_factory=list)


@dataclass(slots=True)
class SimNode:
    id: int
    persisted: Persisted
    core: RaftCore | None = None
    kv: dict[str, str] = field(default_factory=dict)
    kv_applied: int = 0
    ready_deferred: bool = False
    pending_puts: dict[int, Op] = field(default_factory=dict)  # index -> op
    pending_gets: dict[bytes, Op] = field(default_factory=dict)  # ctx -> op
    incarnation: int = 0

    @property
    def up(self) -> bool:
        return self.core is not None


def kv_encode(op: Op) -> bytes:
    return msgpack.packb([op.op_id, op.key, op.value], use_bin_type=True)


def kv_snapshot(kv: dict[str, str]) -> bytes:
    return msgpack.packb(sorted(kv.items()), use_bin_type=True)


def kv_restore(data: bytes) -> dict[str, str]:
    return dict(msgpack.unpackb(data, raw=False)) if data else {}


CoreFactory = Callable[..., RaftCore]


# --------------------------------------------------------------------- simulator


class Simulator:
    """N Raft cores, a virtual clock, a hostile network, clients and the checker."""

    def __init__(
        self,
        seed: int,
        config: SimConfig | None = None,
        *,
        core_factory: CoreFactory = RaftCore,
    ) -> None:
        self.seed = seed
        self.cfg = config or SimConfig()
        self.rng = random.Random(seed)
        self.core_factory = core_factory
        self.now = 0
        self.clock = 0  # event counter: strictly increasing times for the history
        self.steps = 0
        self.nodes: dict[int, SimNode] = {}
        initial = tuple(range(1, self.cfg.voters + 1))
        for nid in range(1, self.cfg.voters + self.cfg.spares + 1):
            snap = Snapshot.initial(initial if nid in initial else ())
            self.nodes[nid] = SimNode(nid, Persisted(HardState(), snap))
            self._start(nid)
        self.in_flight: list[tuple[int, Message]] = []
        self.groups: dict[int, int] | None = None  # node -> partition group
        self.drop_filter: Callable[[Message], bool] | None = None
        self.faults = True
        self.history: list[Op] = []
        self._next_op = 1
        self._client_busy: dict[int, Op | None] = {c: None for c in range(self.cfg.clients)}
        self._leader_hint = 1
        # checker state
        self._leaders: dict[int, int] = {}
        self._seen_entries: dict[tuple[int, int], tuple[int, bytes, int | None]] = {}
        self._committed: dict[int, Entry] = {}
        self._applied: dict[int, Entry] = {}
        self._checked_commit: dict[int, int] = {}
        self.trace: list[str] = []
        #: What the run exercised (crashes, snapshots installed, ...), to prove it did something.
        self.stats: Counter[str] = Counter()

    # ------------------------------------------------------------ failures

    def fail(self, what: str) -> None:
        tail = "\n".join(self.trace[-25:])
        raise InvariantViolation(
            f"seed={self.seed} step={self.steps} tick={self.now}: {what}\n"
            f"replay with: --seed-start {self.seed} --seeds 1\nlast events:\n{tail}"
        )

    def _log(self, event: str) -> None:
        self.stats[event.split(" ", 1)[0]] += 1
        self.trace.append(f"[{self.now}] {event}")
        if len(self.trace) > 200:
            del self.trace[:100]

    # --------------------------------------------------------------- nodes

    def _start(self, nid: int) -> None:
        node = self.nodes[nid]
        p = node.persisted
        node.incarnation += 1
        node.core = self.core_factory(
            nid,
            rng=random.Random(self.seed * 1_000_003 + nid * 1009 + node.incarnation),
            snapshot=p.snapshot,
            hard_state=p.hard_state,
            entries=list(p.entries),
            election_timeout=self.cfg.election_timeout,
            heartbeat_timeout=self.cfg.heartbeat_timeout,
            max_entries_per_msg=self.cfg.max_entries_per_msg,
        )
        node.kv = kv_restore(p.snapshot.data)
        node.kv_applied = p.snapshot.index
        node.ready_deferred = False

    def crash(self, nid: int, mode: int | None = None) -> None:
        """Kill a node.  mode: 0 lose the unhandled Ready, 1 persist part of it, 2 persist it all."""
        node = self.nodes[nid]
        core = node.core
        if core is None:
            return
        if mode is None:
            mode = self.rng.randrange(3)
        if core.has_ready():
            rd = core.ready()
            self._check_ready(node, rd)
            if mode >= 1:
                cut = len(rd.entries) if mode == 2 else self.rng.randrange(len(rd.entries) + 1)
                self._persist(node, rd, cut, with_hard_state=mode == 2)
        self._log(f"crash {nid} mode={mode}")
        node.core = None
        for op in list(node.pending_puts.values()) + list(node.pending_gets.values()):
            self._finish(op, None)
        node.pending_puts.clear()
        node.pending_gets.clear()

    def restart(self, nid: int) -> None:
        if self.nodes[nid].up:
            return
        self._log(f"restart {nid}")
        self._start(nid)

    def partition(self, *groups: Iterable[int]) -> None:
        """Split the network; nodes not named form one more group."""
        self.groups = {}
        for g, members in enumerate(groups):
            for nid in members:
                self.groups[nid] = g
        for nid in self.nodes:
            self.groups.setdefault(nid, len(groups))
        self._log(f"partition {sorted(self.groups.items())}")

    def heal(self) -> None:
        self.groups = None
        self._log("heal")

    def connected(self, a: int, b: int) -> bool:
        return self.groups is None or self.groups[a] == self.groups[b]

    def leaders(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.core is not None and n.core.role is Role.LEADER]

    def leader(self) -> SimNode | None:
        """The leader with the highest term, if any."""
        ls = self.leaders()
        return max(ls, key=lambda n: n.core.term) if ls else None  # type: ignore[union-attr]

    # --------------------------------------------------------------- ready

    def _persist(self, node: SimNode, rd: Ready, cut: int, *, with_hard_state: bool) -> None:
        p = node.persisted
        if rd.snapshot is not None:
            p.snapshot = rd.snapshot
            p.entries = []
        entries = rd.entries[:cut]
        if entries:
            first = entries[0].index
            p.entries = [e for e in p.entries if e.index < first]
            expected = (p.entries[-1].index if p.entries else p.snapshot.index) + 1
            if first != expected:
                self.fail(f"node {node.id} persisted entries starting at {first}, log ends at {expected - 1}")
            p.entries.extend(entries)
        if with_hard_state and rd.hard_state is not None:
            p.hard_state = rd.hard_state

    def handle_ready(self, node: SimNode) -> None:
        core = node.core
        node.ready_deferred = False
        if core is None or not core.has_ready():
            return
        rd = core.ready()
        self._check_ready(node, rd)
        self._persist(node, rd, len(rd.entries), with_hard_state=True)
        for m in rd.messages:
            self.send(m)
        if rd.snapshot is not None:
            self._log(f"installed-snapshot {node.id} at {rd.snapshot.index}")
            node.kv = kv_restore(rd.snapshot.data)
            node.kv_applied = rd.snapshot.index
            for idx in [i for i in node.pending_puts if i <= rd.snapshot.index]:
                self._finish(node.pending_puts.pop(idx), None)  # outcome unknown to this node
        for e in rd.committed_entries:
            self._apply(node, e)
        for rs in rd.read_states:
            op = node.pending_gets.pop(rs.ctx, None)
            if node.kv_applied < rs.index:
                self.fail(f"node {node.id} served read at index {rs.index} with applied {node.kv_applied}")
            if op is not None:
                op.value = node.kv.get(op.key)
                op.index = rs.index
                self._finish(op, True)
        for ctx in rd.failed_reads:
            op = node.pending_gets.pop(ctx, None)
            if op is not None:
                self._finish(op, False)
        core.advance(rd)

    def _apply(self, node: SimNode, e: Entry) -> None:
        if e.index != node.kv_applied + 1:
            self.fail(f"node {node.id} applies index {e.index} after {node.kv_applied}")
        prev = self._applied.get(e.index)
        if prev is None:
            self._applied[e.index] = e
        elif prev != e:
            self.fail(f"state machine safety: node {node.id} applies {e} but {prev} was applied at that index")
        node.kv_applied = e.index
        op = node.pending_puts.pop(e.index, None)
        if e.kind == EntryKind.NORMAL and e.data:
            op_id, key, value = msgpack.unpackb(e.data, raw=False)
            node.kv[key] = value
            if op is not None:
                self._finish(op, op.op_id == op_id)
        elif op is not None:
            self._finish(op, False)

    # ------------------------------------------------------------ checking

    def _check_ready(self, node: SimNode, rd: Ready) -> None:
        core = node.core
        assert core is not None
        if rd.snapshot is not None:
            c = self._committed.get(rd.snapshot.index)
            if c is not None and c.term != rd.snapshot.term:
                self.fail(f"node {node.id} got snapshot {rd.snapshot.index}/{rd.snapshot.term}, committed {c}")
        prev_term = core.log.term_at(rd.entries[0].index - 1) if rd.entries else None
        for e in rd.entries:
            key = (e.index, e.term)
            got = (int(e.kind), e.data, prev_term)
            seen = self._seen_entries.get(key)
            if seen is None:
                self._seen_entries[key] = got
            elif seen != got:
                self.fail(f"log matching: entry {key} on node {node.id} is {got}, elsewhere {seen}")
            prev_term = e.term

    def check_invariants(self) -> None:
        """Run after every step."""
        for node in self.nodes.values():
            core = node.core
            if core is None:
                continue
            if core.role is Role.LEADER:
                holder = self._leaders.setdefault(core.term, node.id)
                if holder != node.id:
                    self.fail(f"election safety: nodes {holder} and {node.id} both lead term {core.term}")
                if self._checked_commit.get(-node.id) != core.term:
                    self._checked_commit[-node.id] = core.term
                    self._log(f"leader {node.id} term {core.term}")
                    for idx, e in self._committed.items():
                        self._check_leader_has(node, idx, e)
            last = self._checked_commit.get(node.id, 0)
            if core.commit > last:
                lo = max(last, core.log.snapshot.index) + 1
                for idx in range(lo, core.commit + 1):
                    e = core.log.entry(idx)
                    c = self._committed.get(idx)
                    if c is None:
                        self._committed[idx] = e
                        for ln in self.leaders():
                            self._check_leader_has(ln, idx, e)
                    elif c != e:
                        self.fail(f"state machine safety: node {node.id} committed {e} at {idx}, elsewhere {c}")
            self._checked_commit[node.id] = core.commit

    def _check_leader_has(self, node: SimNode, idx: int, e: Entry) -> None:
        core = node.core
        assert core is not None
        if e.term >= core.term or idx <= core.log.snapshot.index:
            return
        if core.log.term_at(idx) != e.term:
            self.fail(
                f"leader completeness: leader {node.id} of term {core.term} lacks committed "
                f"entry {idx}/{e.term} (has term {core.log.term_at(idx)})"
            )

    # ------------------------------------------------------------- network

    def send(self, m: Message) -> None:
        if self.drop_filter is not None and self.drop_filter(m):
            return
        copies = 1
        if self.faults:
            if self.rng.random() < self.cfg.drop:
                return
            if self.rng.random() < self.cfg.duplicate:
                copies = 2
        for _ in range(copies):
            delay = self.rng.randint(0, self.cfg.max_delay) if self.faults else 0
            self.in_flight.append((self.now + delay, m))

    def deliver_one(self) -> bool:
        """Deliver a random deliverable message (random choice = reordering)."""
        ready = [k for k, (t, _) in enumerate(self.in_flight) if t <= self.now]
        if not ready:
            return False
        k = ready[self.rng.randrange(len(ready))] if self.faults else ready[0]
        _, m = self.in_flight.pop(k)
        self.deliver(m)
        return True

    def deliver_all(self, limit: int = 100_000) -> None:
        """Deliver every due message, including those they cause (fault-free scripting)."""
        for _ in range(limit):
            if not self.deliver_one():
                return
            self.check_invariants()
        self.fail("messages keep flowing without a tick")

    def inject(self, m: Message) -> None:
        """Hand a message straight to its destination (scripted scenarios)."""
        node = self.nodes[m.dst]
        if node.core is not None:
            self._input(node, lambda c: c.step(m))
            self.check_invariants()

    def force_elect(self, nid: int, attempts: int = 5) -> None:
        """Make `nid` leader the way a leadership transfer does (TimeoutNow skips the lease)."""
        from chunkfs.raft.core import TimeoutNow

        for _ in range(attempts):
            core = self.nodes[nid].core
            assert core is not None, f"node {nid} is down"
            if core.is_leader:
                return
            self.inject(TimeoutNow(0, nid, core.term))
            self.deliver_all()
            if core.is_leader:
                return
        raise AssertionError(f"node {nid} could not be elected")

    def deliver(self, m: Message) -> None:
        node = self.nodes.get(m.dst)
        if node is None or node.core is None or not self.connected(m.src, m.dst):
            return
        if self.faults and self.rng.random() < self.cfg.codec_roundtrip:
            m = message_from_dict(m.to_dict())
        self._input(node, lambda c: c.step(m))

    def _input(self, node: SimNode, fn: Callable[[RaftCore], Any]) -> Any:
        core = node.core
        assert core is not None
        try:
            result = fn(core)
        except RaftSafetyError as exc:
            self.fail(f"core detected a safety violation: {exc}")
        if node.ready_deferred or (self.faults and self.rng.random() < self.cfg.defer_ready):
            node.ready_deferred = True  # handled at the next tick: a crash before then loses it
        else:
            self.handle_ready(node)
        return result

    def tick(self) -> None:
        self.now += 1
        for node in self.nodes.values():
            if node.core is not None:
                self.handle_ready(node)
                self._input(node, lambda c: c.tick())
                if node.core is not None and node.core._lazy:
                    self.stats["lazy-ticks"] += 1  # a leader sent new entries to some followers in batches
                if node.ready_deferred and not self.faults:
                    self.handle_ready(node)
        for op in list(self._client_busy.values()):
            if op is not None and self.now - op.invoke_tick > self.cfg.client_timeout:
                self._finish(op, None)

    # ------------------------------------------------------------- clients

    def _new_op(self, client: int, kind: str, key: str, value: str | None) -> Op:
        self.clock += 1
        op = Op(self._next_op, client, kind, key, value, self.clock, invoke_tick=self.now)
        self._next_op += 1
        self.history.append(op)
        return op

    def _finish(self, op: Op, ok: bool | None) -> None:
        if op.done:
            return
        op.done = True
        self.clock += 1
        op.ok = ok
        op.complete = self.clock if ok is not None else None
        if self._client_busy.get(op.client) is op:
            self._client_busy[op.client] = None
        for node in self.nodes.values():
            if node.pending_puts.get(op.index) is op:
                del node.pending_puts[op.index]
            for ctx, g in list(node.pending_gets.items()):
                if g is op:
                    del node.pending_gets[ctx]

    def submit(self, client: int, nid: int, kind: str, key: str, value: str | None = None) -> Op:
        """A client sends one request to node `nid`."""
        op = self._new_op(client, kind, key, value if kind == "put" else None)
        op.node = nid
        self._client_busy[client] = op
        node = self.nodes[nid]
        if node.core is None:
            self._finish(op, False)
            return op
        if kind == "put":
            idx = self._input(node, lambda c: c.propose(kv_encode(op)))
            if idx is None:
                self._finish(op, False)
                self._redirect(node)
            else:
                op.index = idx
                node.pending_puts[idx] = op
        else:
            ctx = op.op_id.to_bytes(8, "big")
            node.pending_gets[ctx] = op
            if not self._input(node, lambda c: c.read_index(ctx)):
                node.pending_gets.pop(ctx, None)
                self._finish(op, False)
                self._redirect(node)
        return op

    def _redirect(self, node: SimNode) -> None:
        """Follow the leader hint in a NotMaster answer, as a real client does."""
        hint = node.core.leader_id if node.core is not None else 0
        self._leader_hint = hint if hint in self.nodes else self.rng.choice(list(self.nodes))

    def _client_step(self) -> None:
        idle = [c for c, op in self._client_busy.items() if op is None]
        if not idle:
            return
        client = self.rng.choice(idle)
        nid = self._leader_hint if self._leader_hint in self.nodes and self.rng.random() < 0.8 else (
            self.rng.choice(list(self.nodes))
        )
        key = f"k{self.rng.randrange(self.cfg.keys)}"
        if self.rng.random() < 0.5:
            self.submit(client, nid, "put", key, f"v{self._next_op}")
        else:
            self.submit(client, nid, "get", key)

    # -------------------------------------------------------------- faults

    def _fault_step(self) -> None:
        r = self.rng.random
        cfg = self.cfg
        if r() < cfg.crash:
            up = [n for n in self.nodes.values() if n.up]
            if up:
                self.crash(self.rng.choice(up).id)
        if r() < cfg.restart:
            down = [n for n in self.nodes.values() if not n.up]
            if down:
                self.restart(self.rng.choice(down).id)
        if self.groups is None and r() < cfg.partition:
            ids = list(self.nodes)
            self.rng.shuffle(ids)
            cut = self.rng.randrange(1, len(ids))
            self.partition(ids[:cut])
        elif self.groups is not None and r() < cfg.heal:
            self.heal()
        if r() < cfg.compact:
            cands = [
                n for n in self.nodes.values() if n.core is not None and n.kv_applied - n.core.log.snapshot.index >= 4
            ]
            if cands:
                self.compact(self.rng.choice(cands).id)
        if r() < cfg.conf_change:
            self.random_conf_change()
        if r() < cfg.transfer:
            ld = self.leader()
            if ld is not None and ld.core is not None:
                others = [v for v in ld.core.voters if v != ld.id]
                if others:
                    target = self.rng.choice(others)
                    self._log(f"transfer {ld.id} -> {target}")
                    self._input(ld, lambda c: c.transfer_leadership(target))

    def compact(self, nid: int) -> None:
        node = self.nodes[nid]
        core = node.core
        if core is None or node.ready_deferred or node.kv_applied <= core.log.snapshot.index:
            return
        snap = core.compact(node.kv_applied, kv_snapshot(node.kv))
        p = node.persisted
        p.snapshot = snap
        p.entries = [e for e in p.entries if e.index > snap.index]
        self._log(f"compact {nid} at {snap.index}")

    def conf_change(self, nid: int, *, add: int = 0, remove: int = 0) -> int | None:
        node = self.nodes[nid]
        if node.core is None:
            return None
        idx = self._input(node, lambda c: c.propose_conf_change(add=add, remove=remove))
        self._log(f"conf-change on {nid}: add={add} remove={remove} -> {idx}")
        return idx

    def random_conf_change(self) -> None:
        ld = self.leader()
        if ld is None or ld.core is None:
            return
        voters = ld.core.voters
        others = [n for n in self.nodes if n not in voters]
        if others and (len(voters) <= 2 or self.rng.random() < 0.5):
            self.conf_change(ld.id, add=self.rng.choice(others))
        elif len(voters) > 2:
            self.conf_change(ld.id, remove=self.rng.choice(sorted(voters)))

    # ----------------------------------------------------------------- run

    def step(self) -> None:
        """One simulation step: deliver a message, tick, or act as a client / fault."""
        self.steps += 1
        r = self.rng.random()
        if r < 0.7 and self.deliver_one():
            pass
        elif r < 0.7 + 0.3 * self.cfg.client:
            self._client_step()
        else:
            self.tick()
        if self.faults:
            self._fault_step()
        self.check_invariants()

    def run_ticks(self, ticks: int, *, clients: bool = True) -> None:
        """Run until `ticks` more ticks have passed (faults as currently enabled)."""
        end = self.now + ticks
        while self.now < end:
            if self.faults:
                self.step()
                continue
            # Fault-free: deliver everything due, then maybe a client op, then tick.
            self.steps += 1
            while self.deliver_one():
                self.check_invariants()
            if clients and self.rng.random() < self.cfg.client:
                self._client_step()
            self.tick()
            self.check_invariants()

    def settle(self) -> None:
        """Heal, restart everyone, stop faults; then require progress (liveness)."""
        self.faults = False
        self.heal()
        for nid in self.nodes:
            self.restart(nid)
        for node in self.nodes.values():
            self.handle_ready(node)
        self.run_ticks(self.cfg.settle_ticks)
        if self.cfg.liveness:
            ld = self.leader()
            if ld is None:
                self.fail("liveness: no leader after the network healed")
            op = self.submit(-1, ld.id, "put", "k0", "final")
            self.run_ticks(self.cfg.election_timeout * 3, clients=False)
            if op.ok is not True:
                self.fail(f"liveness: a put to leader {ld.id} did not complete after healing")

    def finish(self) -> None:
        """End-of-run checks: linearizability of the client history."""
        ok, why = check_linearizable(self.history)
        if not ok:
            self.fail(why)

    def run(self) -> Simulator:
        self._client_busy[-1] = None
        self.run_ticks(self.cfg.ticks)
        self.settle()
        self.finish()
        return self


def profile(seed: int) -> SimConfig:
    """The configuration CI uses for `seed`: three profiles in rotation."""
    kind = seed % 3
    if kind == 0:
        return SimConfig()
    if kind == 1:  # five voters, a lossier network, more crashes and partitions
        return SimConfig(voters=5, spares=1, drop=0.12, duplicate=0.05, crash=0.01, partition=0.008,
                         max_delay=4, keys=3)
    # membership churn and compaction (InstallSnapshot), tiny batches
    return SimConfig(voters=3, spares=2, conf_change=0.03, compact=0.05, max_entries_per_msg=2,
                     election_timeout=8, heartbeat_timeout=2)


def run_seed(seed: int, config: SimConfig | None = None, *, core_factory: CoreFactory = RaftCore) -> Simulator:
    """Run one randomised simulation (`profile(seed)` by default); raises InvariantViolation naming the seed."""
    return Simulator(seed, config or profile(seed), core_factory=core_factory).run()


def summarize(sims: Iterable[Simulator]) -> dict[str, int]:
    """Counters over runs, to show that the runs did exercise something."""
    out: Counter[str] = Counter()
    for s in sims:
        out.update(s.stats)
        out["runs"] += 1
        out["ops_ok"] += sum(1 for o in s.history if o.ok)
        out["puts_ok"] += sum(1 for o in s.history if o.ok and o.kind == "put")
        out["gets_ok"] += sum(1 for o in s.history if o.ok and o.kind == "get")
        out["terms"] += len(s._leaders)
        out["commits"] += len(s._committed)
        out["unknown"] += sum(1 for o in s.history if o.ok is None)
        out["failed"] += sum(1 for o in s.history if o.ok is False)
    return dict(out)
