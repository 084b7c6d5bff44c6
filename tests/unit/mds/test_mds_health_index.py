"""The master's chunk-health index: kept up to date from changes, it must equal a count from scratch.

The replication monitor's own judgement is used (with a stand-in for the rest of the master), so the
property covers what `stat` shows: after any sequence of store commands, server state changes,
reconnections, replicas gained or lost, copies started or ended and chunks found blocked, the
incremental counts equal a recount of every chunk under the same states.
"""

from __future__ import annotations

import collections
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chunkfs.common.errors import ChunkFSError
from chunkfs.mds.health import ACTIVE, HEALTH_KEYS, INACTIVE, OFFLINE
from chunkfs.mds.health_index import hard_status
from chunkfs.mds.replication import ReplicationMonitor
from chunkfs.mds.server import LiveServer
from chunkfs.mds.store import MetadataStore, encode_command
from chunkfs.protocol.messages import ROOT_INO

CS = 1 << 20
SERVERS = (1, 2, 3, 4)


class Master:
    """Just enough of MetadataServer for the replication monitor's judgement."""

    def __init__(self, store: MetadataStore) -> None:
        self.store = store
        self.live: dict[int, LiveServer] = {}
        self.awake = time.monotonic
        self.node = SimpleNamespace(cluster=SimpleNamespace(chunk_size=CS))
        self.states: dict[int, str] = {}
        self.index = 0
        self.healing = ReplicationMonitor(self)  # type: ignore[arg-type]
        self.healing.index.sense = lambda: (dict(self.states), self.live)
        self.healing.index.active = True
        for cs in SERVERS:
            self.apply("register_cs", cs_id=cs, addr=f"127.0.0.1:{cs}", host=f"h{cs}", time=1.0)
            self.healing.labels[cs] = (f"dc.row.r{cs % 2}", 0)

    def apply(self, op: str, **args: Any) -> Any:
        self.index += 1
        try:
            return self.store.apply(self.index, 1, encode_command(op, **args))
        except ChunkFSError:
            return None

    def all_active(self) -> None:
        """Every server active and connected, holding nothing yet."""
        for cs in SERVERS:
            self.states[cs] = ACTIVE
            self.connect(cs, set())

    def connect(self, cs: int, holds: set[int]) -> None:
        server = LiveServer(cs, f"127.0.0.1:{cs}", f"h{cs}", None, total=100 * CS, free=50 * CS)  # type: ignore[arg-type]
        server.replicas = set(holds)
        self.live[cs] = server


def recount(m: Master) -> tuple[dict[str, int], int, dict[int, int]]:
    counts = dict.fromkeys(HEALTH_KEYS, 0)
    shared = 0
    priorities = {}
    ids = [c.chunk_id for c in m.store.all_chunks()]
    for row in m.store.chunk_rows(ids):
        verdict = m.healing._judge(row, dict(m.states))
        counts[verdict.status] += 1
        shared += verdict.shared
        if verdict.priority is not None:
            priorities[row.chunk.chunk_id] = verdict.priority
    return counts, shared, priorities


def incremental(m: Master) -> tuple[dict[str, int], int, dict[int, int]]:
    index = m.healing.index
    index.settle_now()
    return index.counts(), index.shared_count(), dict(index._priority)


step = st.one_of(
    st.tuples(st.just("create"), st.integers(0, 3)),
    st.tuples(st.just("alloc"), st.integers(0, 3), st.integers(0, 3),
              st.lists(st.sampled_from(SERVERS), max_size=4, unique=True)),
    st.tuples(st.just("set_replicas"), st.integers(1, 12), st.lists(st.sampled_from(SERVERS), max_size=4)),
    st.tuples(st.just("truncate"), st.integers(0, 3), st.integers(0, 3)),
    st.tuples(st.just("unlink"), st.integers(0, 3)),
    st.tuples(st.just("goal"), st.integers(0, 3), st.integers(1, 4), st.integers(1, 4)),
    st.tuples(st.just("tier"), st.integers(0, 3), st.integers(0, 1)),
    st.tuples(st.just("state"), st.sampled_from(SERVERS), st.sampled_from([ACTIVE, INACTIVE, OFFLINE])),
    st.tuples(st.just("connect"), st.sampled_from(SERVERS), st.booleans()),
    st.tuples(st.just("disconnect"), st.sampled_from(SERVERS)),
    st.tuples(st.just("hold"), st.sampled_from(SERVERS), st.integers(1, 12), st.booleans()),
    st.tuples(st.just("copying"), st.integers(1, 12), st.booleans()),
    st.tuples(st.just("blocked"), st.integers(1, 12), st.booleans()),
    st.tuples(st.just("check"),),
    st.tuples(st.just("check"),),
    st.tuples(st.just("check"),),
)


def run_step(m: Master, s: tuple[Any, ...]) -> None:
    kind = s[0]

    def ino(i: int) -> int:
        return m.store.child_ino(ROOT_INO, f"f{i}") or 0

    if kind == "create":
        m.apply("create", parent=ROOT_INO, name=f"f{s[1]}", mode=0o644, time=1.0, exclusive=False)
    elif kind == "alloc":
        chunk = m.apply("alloc_chunk", ino=ino(s[1]), index=s[2], replicas=s[3])
        if chunk is not None:  # the master notes the replicas it created (server._note_created)
            for cs in chunk.replicas:
                if cs in m.live:
                    m.live[cs].replicas.add(chunk.chunk_id)
            m.healing.touch(chunk.chunk_id)
    elif kind == "set_replicas":
        m.apply("set_chunk_replicas", chunk_id=s[1], replicas=s[2])
    elif kind == "truncate":
        m.apply("setattr", ino=ino(s[1]), size=s[2] * CS, time=2.0)
    elif kind == "unlink":
        m.apply("unlink", parent=ROOT_INO, name=f"f{s[1]}", time=2.0, free_ino=ino(s[1]))
    elif kind == "goal":
        m.apply("set_replicas", ino=ino(s[1]), replicas=max(s[2], s[3]), min_replicas=min(s[2], s[3]),
                recursive=False)
    elif kind == "tier":
        m.apply("set_placement", ino=ino(s[1]), recursive=False, tier=s[2])
    elif kind == "state":
        m.states[s[1]] = s[2]
    elif kind == "connect":  # a (re)registration: a new connection, holding all or none of what it lists
        cs = s[1]
        listed = {c.chunk_id for c in m.store.all_chunks() if cs in c.replicas} if s[2] else set()
        m.connect(cs, listed)
    elif kind == "disconnect":
        m.live.pop(s[1], None)
    elif kind == "hold":
        cs, chunk_id, add = s[1], s[2], s[3]
        if cs in m.live:
            if add:
                m.live[cs].replicas.add(chunk_id)
            else:
                m.live[cs].replicas.discard(chunk_id)
            m.healing.touch(chunk_id)
    elif kind == "copying":
        if s[2]:
            m.healing.copying[s[1]] = 1
        else:
            m.healing.copying.pop(s[1], None)
        m.healing.touch(s[1])
    elif kind == "blocked":
        if s[2]:
            m.healing.blocked.add(s[1])
        else:
            m.healing.blocked.discard(s[1])
        m.healing.touch(s[1])
    else:
        assert incremental(m) == recount(m)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(st.sampled_from(SERVERS), min_size=1, max_size=4, unique=True), min_size=1, max_size=10),
       st.lists(step, max_size=60))
def test_incremental_counts_equal_a_recount(first: list[list[int]], steps: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = MetadataStore(Path(tmp) / "m.db", CS)
        try:
            m = Master(store)
            m.all_active()
            for i in range(4):
                run_step(m, ("create", i))
            for i, replicas in enumerate(first):  # some chunks to start with, each held where it is listed
                run_step(m, ("alloc", i % 4, i // 4, replicas))
            assert incremental(m) == recount(m)
            for s in steps:
                run_step(m, s)
            assert incremental(m) == recount(m)
        finally:
            store.close()


def test_counts_follow_a_server_going_offline_and_back(tmp_path: Path) -> None:
    store = MetadataStore(tmp_path / "m.db", CS)
    m = Master(store)
    m.all_active()
    run_step(m, ("create", 0))
    for i in range(30):
        run_step(m, ("alloc", 0, i, [1 + i % 4, 1 + (i + 1) % 4, 1 + (i + 2) % 4]))
    index = m.healing.index
    index.settle_now()
    assert index.counts()["healthy"] == 30 and len(index._odd) == 0  # nothing kept for healthy chunks
    m.states[2] = INACTIVE
    index.settle_now()
    counts = index.counts()
    assert counts["degraded"] == store.replicas_on(2) == 23 and counts["healthy"] == 7
    assert index.waiting_work(1) == 0  # waiting for CS#2 to come back, not copying yet
    m.states[2] = OFFLINE
    index.settle_now()
    assert index.waiting_work(1) == 23
    first = index.take(5)
    assert index.take(100)[-5:] == first  # the ones taken went to the back of the line
    m.states[2] = ACTIVE
    index.settle_now()
    assert index.counts()["healthy"] == 30 and index.waiting_work(1) == 0 and not index._odd
    store.close()


def test_hard_status_matches_a_chunk_with_every_replica_good() -> None:
    from chunkfs.mds.health import classify

    for listed in range(5):
        for want in range(1, 5):
            for minimum in range(1, want + 1):
                replicas = tuple(range(1, listed + 1))
                states = dict.fromkeys(replicas, ACTIVE)
                h = classify(1, replicas, want, minimum, states, set(replicas), set(replicas))
                assert h.status == hard_status(listed, want, minimum)


def test_index_is_idle_when_this_mds_is_not_master(tmp_path: Path) -> None:
    store = MetadataStore(tmp_path / "m.db", CS)
    m = Master(store)
    m.healing.index.active = False
    m.healing.index.reset()
    run_step(m, ("create", 0))
    run_step(m, ("alloc", 0, 0, [1, 2]))
    assert not m.healing.index._dirty  # a follower keeps nothing per change
    store.close()


def test_counts_are_cheap_reads(tmp_path: Path) -> None:
    """counts() reads the goal histogram (a few rows) and the corrections, never the chunks table."""
    store = MetadataStore(tmp_path / "m.db", CS)
    m = Master(store)
    m.all_active()
    run_step(m, ("create", 0))
    for i in range(50):
        run_step(m, ("alloc", 0, i, [1, 2, 3]))
    m.healing.index.settle_now()
    statements: collections.Counter[str] = collections.Counter()
    store.db.set_trace_callback(lambda sql: statements.update([sql.split()[0] + " " + sql.split("FROM")[1].split()[0]
                                                              if "FROM" in sql else sql]))
    assert m.healing.index.counts()["healthy"] == 50
    store.db.set_trace_callback(None)
    assert set(statements) == {"SELECT chunk_goals"}
    store.close()


def test_a_chunk_whose_replicas_are_being_made_is_judged_once_they_are(tmp_path: Path) -> None:
    """An allocation commits while its replicas are made (`ReplicaSets.allocate_created`): meanwhile the
    chunk lists servers not yet counted as holding it.  Judged then, it was "below the minimum", and the
    master announced "replication started" for a healthy new chunk (seen by a probe, 10 times in 14,000
    operations).  Held back while its replicas are made, it is judged once they are."""
    store = MetadataStore(tmp_path / "m.db", CS)
    m = Master(store)
    m.all_active()
    run_step(m, ("create", 0))
    index = m.healing.index
    index.settle_now()
    making: set[int] = set()
    index.held = making
    f0 = store.child_ino(ROOT_INO, "f0")
    making.add(store.last_chunk_id() + 1)
    chunk = m.apply("alloc_chunk", ino=f0, index=0, replicas=[1, 2, 3])  # committed; no server holds it yet
    assert chunk.chunk_id in making
    index.settle_now()
    assert index.waiting_work(0) == index.waiting_work(1) == 0 and index.counts()["healthy"] == 1
    for cs in chunk.replicas:  # made: the servers hold it, and it is judged
        m.live[cs].replicas.add(chunk.chunk_id)
    making.discard(chunk.chunk_id)
    m.healing.touch(chunk.chunk_id)
    index.settle_now()
    assert index.counts()["healthy"] == 1 and not index._priority
    # Without the hold, the same moment is a chunk below its minimum.
    index.held = frozenset()
    chunk = m.apply("alloc_chunk", ino=f0, index=1, replicas=[1, 2, 3])
    index.settle_now()
    assert index.waiting_work(0) == 1
    store.close()
