"""Known hard cases for Raft, replayed as named scenarios in the simulator."""

from __future__ import annotations

import random

import pytest

from chunkfs.raft.core import AppendRequest, EntryKind, Message, RaftCore, Snapshot

from .simulator import InvariantViolation, SimConfig, Simulator

QUIET = SimConfig(voters=5, spares=0, election_timeout=50, heartbeat_timeout=2, max_entries_per_msg=1,
                  liveness=False)


def quiet_sim(cfg: SimConfig = QUIET, core_factory: type[RaftCore] = RaftCore) -> Simulator:
    """A fault-free simulator where only the script causes elections."""
    sim = Simulator(0, cfg, core_factory=core_factory)
    sim.faults = False
    return sim


def settle(sim: Simulator, ticks: int = 4) -> None:
    for _ in range(ticks):
        sim.deliver_all()
        sim.tick()
        sim.check_invariants()
    sim.deliver_all()


def put(sim: Simulator, nid: int, key: str, value: str, ticks: int = 4):  # noqa: ANN201
    op = sim.submit(0, nid, "put", key, value)
    settle(sim, ticks)
    return op


# ------------------------------------------------------------------- Figure 8


class PrevTermCommitCore(RaftCore):
    """Planted bug: commits by counting replicas even for entries of earlier terms."""

    def _commit_allowed(self, index: int) -> bool:
        return True


def figure8(core_factory: type[RaftCore]) -> Simulator:
    """The Raft paper's Figure 8, step by step (S1..S5 are nodes 1..5)."""
    sim = quiet_sim(core_factory=core_factory)
    sim.force_elect(1)
    settle(sim)
    base = sim.nodes[1].core.log.last_index  # type: ignore[union-attr]
    # (a) S1 leads and replicates an entry at base+1 to S2 only.
    sim.drop_filter = lambda m: isinstance(m, AppendRequest) and m.src == 1 and m.dst in (3, 4, 5)
    put(sim, 1, "x", "from-S1")
    assert sim.nodes[2].core.log.last_index == base + 1  # type: ignore[union-attr]
    sim.crash(1, mode=2)
    # (b) S5 is elected by S3, S4 and itself, writes base+1 in its term, replicates nothing.
    sim.drop_filter = lambda m: isinstance(m, AppendRequest) and m.src == 5
    sim.partition([2])
    sim.force_elect(5)
    assert sim.nodes[5].core.log.last_index == base + 1  # type: ignore[union-attr]
    sim.crash(5, mode=2)
    sim.heal()
    # (c) S1 restarts, is elected (S2, S3, S4), and copies its old entry to S3 — but
    #     its own new-term entry reaches nobody.  The old entry is now on a majority.
    sim.restart(1)
    s1 = sim.nodes[1].core
    assert s1 is not None
    old_term = s1.log.term_at(base + 1)
    assert old_term is not None
    sim.drop_filter = lambda m: (
        isinstance(m, AppendRequest) and m.src == 1 and any(e.term > old_term for e in m.entries)
    )
    sim.force_elect(1)
    term_c = s1.term
    settle(sim, 6)
    assert sim.nodes[3].core.log.term_at(base + 1) != term_c  # type: ignore[union-attr]
    assert sum(
        1 for n in sim.nodes.values()
        if n.core is not None and n.core.log.term_at(base + 1) == s1.log.term_at(base + 1)
    ) >= 3
    committed_old = s1.commit >= base + 1
    # (d) S1 crashes; S5 restarts and is elected with S2, S3, S4: it overwrites base+1.
    sim.crash(1, mode=2)
    sim.drop_filter = None
    sim.restart(5)
    sim.force_elect(5)
    settle(sim, 8)
    sim.restart(1)
    settle(sim, 8)
    sim.finish()
    sim.committed_old = committed_old  # type: ignore[attr-defined]
    return sim


def test_figure8_correct_core_does_not_commit_old_term_entry() -> None:
    sim = figure8(RaftCore)
    assert not sim.committed_old  # type: ignore[attr-defined]
    # Every node ends with S5's entry at that index, and the S1 put was never acknowledged.
    (s1_put,) = [o for o in sim.history if o.kind == "put"]
    assert s1_put.ok is not True


def test_figure8_planted_bug_is_caught() -> None:
    with pytest.raises(InvariantViolation, match="leader completeness|safety"):
        figure8(PrevTermCommitCore)


# ------------------------------------------------------- restart of all members


@pytest.mark.parametrize("seed", range(40))
def test_simultaneous_restart_of_all_members_loses_nothing(seed: int) -> None:
    cfg = SimConfig(voters=3, spares=0, crash=0.0, partition=0.0, conf_change=0.0, ticks=60, client=0.4)
    sim = Simulator(seed, cfg)
    sim.run_ticks(60)
    acked = [o for o in sim.history if o.kind == "put" and o.ok]
    for nid in sim.nodes:
        sim.crash(nid)  # each with its own random crash mode: unhandled Ready lost / torn / kept
    sim.run_ticks(3)
    for nid in sim.nodes:
        sim.restart(nid)
    sim.run_ticks(60)
    sim.settle()
    sim.finish()  # linearizability: later gets see every acknowledged put
    for op in acked:
        assert sim._applied[op.index].data.find(op.value.encode()) >= 0, (seed, op)  # type: ignore[union-attr]


# ------------------------------------------------- stale reads on an ex-leader


class StaleReadCore(RaftCore):
    """Planted bug: serves ReadIndex without confirming leadership with a quorum."""

    def _register_read(self, ctx: bytes) -> None:
        from chunkfs.raft.core import ReadState

        self._confirmed_reads.append(ReadState(self.commit, ctx))


def partitioned_ex_leader(core_factory: type[RaftCore]) -> Simulator:
    sim = quiet_sim(SimConfig(voters=5, spares=0, election_timeout=20, heartbeat_timeout=2, liveness=False),
                    core_factory)
    sim.force_elect(1)
    settle(sim)
    assert put(sim, 1, "x", "old").ok
    # Node 1 is cut off; the majority elects node 2 at once and writes a new value,
    # before node 1's check-quorum has noticed anything.
    sim.partition([1])
    sim.force_elect(2)
    new = put(sim, 2, "x", "new", ticks=2)
    assert new.ok
    assert sim.nodes[1].core.is_leader  # type: ignore[union-attr]  (it still believes it leads)
    stale = sim.submit(1, 1, "get", "x")
    settle(sim, 30)  # long enough for node 1 to step down by check-quorum
    assert not sim.nodes[1].core.is_leader  # type: ignore[union-attr]
    sim.heal()
    settle(sim, 10)
    sim.finish()
    sim.stale_read = stale  # type: ignore[attr-defined]
    return sim


def test_partitioned_ex_leader_does_not_serve_stale_reads() -> None:
    sim = partitioned_ex_leader(RaftCore)
    stale = sim.stale_read  # type: ignore[attr-defined]
    assert stale.ok is False  # failed when it stepped down: "not leader, retry elsewhere"


def test_planted_stale_read_is_caught() -> None:
    with pytest.raises(InvariantViolation, match="not linearizable"):
        partitioned_ex_leader(StaleReadCore)


# ---------------------------------------------------- membership under faults


def test_leader_removes_itself_and_new_node_catches_up_by_snapshot() -> None:
    sim = quiet_sim(SimConfig(voters=3, spares=1, election_timeout=20, heartbeat_timeout=2, liveness=False))
    sim.force_elect(1)
    settle(sim)
    for i in range(10):
        assert put(sim, 1, f"k{i % 2}", f"v{i}", ticks=1).ok
    for nid in (1, 2, 3):
        sim.compact(nid)
    sim.crash(3, mode=2)  # a fault during the change: the new config needs node 4 too
    assert sim.conf_change(1, add=4) is not None
    settle(sim, 6)
    assert sim.stats["installed-snapshot"] >= 1
    assert sim.nodes[4].core.voters == frozenset({1, 2, 3, 4})  # type: ignore[union-attr]
    assert sim.conf_change(1, remove=1) is not None
    settle(sim, 6)
    assert not sim.nodes[1].core.is_leader  # type: ignore[union-attr]
    sim.restart(3)
    settle(sim, 60)
    leader = sim.leader()
    assert leader is not None and leader.id in (2, 3, 4)
    assert put(sim, leader.id, "k0", "after").ok
    sim.finish()


def test_concurrent_config_change_is_refused() -> None:
    sim = quiet_sim(SimConfig(voters=3, spares=2, election_timeout=20, liveness=False))
    sim.force_elect(1)
    settle(sim)
    sim.partition([1])  # nothing can commit now
    assert sim.conf_change(1, add=4) is not None
    assert sim.conf_change(1, add=5) is None  # the first one is not committed yet
    sim.heal()
    settle(sim)
    assert sim.conf_change(1, add=5) is not None


@pytest.mark.parametrize("seed", range(60))
def test_membership_churn_during_faults(seed: int) -> None:
    cfg = SimConfig(voters=3, spares=2, conf_change=0.08, crash=0.01, partition=0.01, compact=0.03,
                    ticks=200)
    sim = Simulator(seed, cfg)
    sim.run()
    changes = [e for e in sim._committed.values() if e.kind == EntryKind.CONFIG]
    assert changes or seed % 7 == 0  # almost every run commits at least one change


def test_message_codec_round_trip() -> None:
    """Every message kind survives to_dict/from_dict (the simulator also does this at random)."""
    from chunkfs.raft.core import (
        AppendResponse,
        Entry,
        SnapshotRequest,
        TimeoutNow,
        VoteRequest,
        VoteResponse,
        message_from_dict,
    )

    msgs: list[Message] = [
        VoteRequest(1, 2, 3, 4, 5, pre_vote=True, transfer=False),
        VoteResponse(2, 1, 3, True, pre_vote=True),
        AppendRequest(1, 2, 3, 4, 2, (Entry(3, 5, EntryKind.CONFIG, b"1,2"),), 4, 7),
        AppendResponse(2, 1, 3, False, 4, 2, 7),
        SnapshotRequest(1, 2, 3, Snapshot(9, 3, (1, 2), b"img"), 1),
        TimeoutNow(1, 2, 3),
    ]
    for m in msgs:
        assert message_from_dict(m.to_dict()) == m
        assert type(m).from_dict(m.to_dict()) == m  # type: ignore[union-attr]
    random.Random(0)
