"""Unit tests of the pure Raft core: one rule per test, driven by hand."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chunkfs.common.errors import ProtocolError
from chunkfs.raft.core import (
    LAZY_BATCH,
    TERM_LEAP_MAX,
    AppendRequest,
    AppendResponse,
    Entry,
    EntryKind,
    HardState,
    Message,
    RaftCore,
    Role,
    Snapshot,
    SnapshotRequest,
    VoteRequest,
    VoteResponse,
    message_from_dict,
)


def make(nid: int, voters: tuple[int, ...] = (1, 2, 3), **kw: object) -> RaftCore:
    return RaftCore(nid, rng=random.Random(nid), snapshot=Snapshot.initial(voters), **kw)  # type: ignore[arg-type]


def cluster(n: int = 3) -> dict[int, RaftCore]:
    return {i: make(i, tuple(range(1, n + 1))) for i in range(1, n + 1)}


READS: list[bytes] = []


def pump(nodes: dict[int, RaftCore], drop: set[int] | None = None) -> list[Message]:
    """Deliver until quiet; messages to or from nodes in `drop` are lost.  Read states go to READS."""
    sent: list[Message] = []
    queue: list[Message] = []
    for _ in range(10_000):
        for n in nodes.values():
            rd = n.ready()
            queue.extend(rd.messages)
            sent.extend(rd.messages)
            READS.extend(r.ctx for r in rd.read_states)
        if not queue:
            return sent
        m = queue.pop(0)
        if drop and (m.src in drop or m.dst in drop):
            continue
        nodes[m.dst].step(m)
    raise AssertionError("no quiescence")


def elect(nodes: dict[int, RaftCore], nid: int) -> None:
    nodes[nid].campaign()
    pump(nodes)
    assert nodes[nid].is_leader


def test_single_node_elects_itself_and_commits() -> None:
    n = make(1, (1,))
    n.campaign()
    assert n.is_leader and n.term == 1
    idx = n.propose(b"a")
    rd = n.ready()
    assert rd.hard_state == HardState(1, 1, idx)
    assert [e.data for e in rd.entries] == [b"", b"a"]
    assert [e.data for e in rd.committed_entries] == [b"", b"a"]


def test_election_replication_and_commit() -> None:
    nodes = cluster()
    elect(nodes, 1)
    idx = nodes[1].propose(b"x")
    pump(nodes)
    for _ in range(2):
        for n in nodes.values():
            n.tick()
        pump(nodes)
    assert all(n.commit >= idx for n in nodes.values())


def test_proposals_between_two_readies_go_to_each_follower_in_one_message() -> None:
    nodes = cluster()
    elect(nodes, 1)
    first = nodes[1].propose(b"a")
    nodes[1].propose(b"b")
    last = nodes[1].propose(b"c")
    appends = [m for m in nodes[1].ready().messages if isinstance(m, AppendRequest)]
    assert sorted(m.dst for m in appends) == [2, 3]
    for m in appends:
        assert [e.data for e in m.entries] == [b"a", b"b", b"c"]
        assert (m.entries[0].index, m.entries[-1].index) == (first, last)
        nodes[m.dst].step(m)
    sent = pump(nodes)
    acks = [m for m in sent if isinstance(m, AppendResponse) and m.dst == 1]
    assert len(acks) == 2  # one per follower for the three entries
    assert nodes[1].commit == last


def _appends_to(msgs: list[Message]) -> dict[int, list[bytes]]:
    out: dict[int, list[bytes]] = {}
    for m in msgs:
        if isinstance(m, AppendRequest):
            out.setdefault(m.dst, []).extend(e.data for e in m.entries)
    return out


def led_with_a_lazy_follower() -> tuple[dict[int, RaftCore], RaftCore, int, int]:
    """Three members, 1 the leader, a tick past its election (the lazy follower is chosen once a tick):
    the nodes, the leader, its lazy follower and the other one.  Heartbeats every 5 ticks."""
    nodes = {i: make(i, heartbeat_timeout=5, election_timeout=20) for i in (1, 2, 3)}
    elect(nodes, 1)
    nodes[1].tick()
    pump(nodes)
    lazy = next(iter(nodes[1]._lazy))
    return nodes, nodes[1], lazy, 5 - lazy


def test_new_entries_go_at_once_only_to_the_followers_a_commit_needs() -> None:
    nodes, leader, lazy, prompt = led_with_a_lazy_follower()
    sent = pump_after(nodes, lambda: leader.propose(b"a"))
    assert _appends_to(sent).get(prompt) == [b"a"] and not _appends_to(sent).get(lazy)
    assert leader.commit == leader.last_index  # committed with the prompt follower alone
    # A batch's worth of entries goes to the lazy follower in one message.
    sent = pump_after(nodes, lambda: [leader.propose(b"x%d" % i) for i in range(LAZY_BATCH - 1)])
    batches = [m for m in sent if isinstance(m, AppendRequest) and m.dst == lazy and m.entries]
    assert len(batches) == 1 and len(batches[0].entries) == LAZY_BATCH
    assert nodes[lazy].log.last_index == leader.last_index
    # What is left over goes with the next heartbeat.
    sent = pump_after(nodes, lambda: leader.propose(b"b"))
    assert nodes[lazy].log.last_index < leader.last_index
    for _ in range(5):
        leader.tick()
    pump(nodes)
    assert nodes[lazy].log.last_index == leader.last_index


def test_a_silent_prompt_follower_sends_everything_to_the_others_within_two_ticks() -> None:
    nodes, leader, lazy, prompt = led_with_a_lazy_follower()
    index = leader.propose(b"lost on its way")
    pump(nodes, drop={prompt})
    assert leader.commit < index
    leader.tick()  # the entry is now a tick old
    pump(nodes, drop={prompt})
    leader.tick()  # ... and still not committed: every follower gets everything
    pump(nodes, drop={prompt})
    assert leader.commit >= index, "the commit waited for the heartbeat or longer"
    assert nodes[lazy].log.last_index == leader.last_index
    leader.tick()  # from now on the silent one is the lazy one
    assert leader._lazy == frozenset({prompt})
    index = leader.propose(b"next")
    pump(nodes, drop={prompt})
    assert leader.commit >= index


def test_a_prompt_follower_reported_unreachable_sends_everything_to_the_others_at_once() -> None:
    nodes, leader, lazy, prompt = led_with_a_lazy_follower()
    leader.report_unreachable(lazy)  # the lazy one gone changes nothing
    assert leader._lazy == frozenset({lazy})
    index = leader.propose(b"to a follower that died")
    pump(nodes, drop={prompt})
    assert leader.commit < index
    leader.report_unreachable(prompt)  # its connection closed: no tick needed
    pump(nodes, drop={prompt})
    assert leader.commit >= index
    assert nodes[lazy].log.last_index == leader.last_index


def test_a_follower_asked_for_a_vote_by_one_behind_it_campaigns_at_once() -> None:
    """The master dies; the lazy follower, behind, times out first: the one that can win campaigns then."""
    nodes, leader, lazy, prompt = led_with_a_lazy_follower()
    leader.propose(b"only on the master and the prompt follower")
    pump(nodes)
    assert nodes[prompt].log.last_index > nodes[lazy].log.last_index
    for _ in range(20):  # the master is dead: an election timeout without a leader, on both
        nodes[prompt].tick()
    nodes[lazy].campaign()  # the lazy one's randomised timeout happens to run out first
    pump(nodes, drop={1})
    assert nodes[prompt].is_leader, "the follower with the longer log waited for its own timeout"
    assert nodes[lazy].leader_id == prompt


def test_with_no_lazy_batch_every_follower_gets_new_entries_at_once() -> None:
    nodes = {i: make(i, lazy_batch=0) for i in (1, 2, 3)}
    elect(nodes, 1)
    for _ in range(3):
        nodes[1].tick()
        pump(nodes)
    sent = pump_after(nodes, lambda: nodes[1].propose(b"a"))
    appends = _appends_to(sent)
    assert appends.get(2) == [b"a"] and appends.get(3) == [b"a"]


def pump_after(nodes: dict[int, RaftCore], action: object) -> list[Message]:
    action()  # type: ignore[operator]
    return pump(nodes)


def test_follower_rejects_propose() -> None:
    nodes = cluster()
    elect(nodes, 1)
    assert nodes[2].propose(b"x") is None
    assert nodes[2].leader_id == 1
    assert nodes[2].read_index(b"r") is False


def test_pre_vote_does_not_raise_term_of_isolated_node() -> None:
    nodes = cluster()
    elect(nodes, 1)
    term = nodes[3].term
    for _ in range(100):
        nodes[3].tick()
        nodes[3].ready()  # all its messages are lost
    assert nodes[3].term == term  # a partitioned node cannot disrupt the cluster on return


def test_vote_requests_ignored_within_leader_lease() -> None:
    nodes = cluster()
    elect(nodes, 1)
    f = nodes[2]
    f.step(VoteRequest(3, 2, f.term + 1, 99, 99))
    assert f.term == nodes[1].term and f.ready().messages == []


def test_a_term_far_beyond_ours_is_dropped_and_the_group_goes_on() -> None:
    """A hostile-peer probe: one answer with term 2**63-1 from a peer claiming to be a member moved every
    member to it, and no election could follow (its term would not fit).  Terms no election reaches are
    dropped, as lost messages are; a leap within TERM_LEAP_MAX is still taken."""
    nodes = cluster()
    elect(nodes, 1)
    leader = nodes[1]
    term = leader.term
    for far in (2**63 - 1, term + TERM_LEAP_MAX + 1):
        leader.step(AppendResponse(2, 1, far, False, 0))
        assert leader.term == term and leader.role is Role.LEADER
    assert leader.dropped_far_terms == 2
    leader.propose(b"x")
    pump(nodes)
    assert all(n.log.last_term == term for n in nodes.values())  # committed on, in the same term
    leader.step(AppendResponse(2, 1, term + TERM_LEAP_MAX, False, 0))
    assert leader.term == term + TERM_LEAP_MAX and leader.role is Role.FOLLOWER


def test_check_quorum_leader_steps_down_when_isolated() -> None:
    nodes = cluster()
    elect(nodes, 1)
    for _ in range(25):
        nodes[1].tick()
        nodes[1].ready()
    assert nodes[1].role is Role.FOLLOWER


def test_no_double_vote_in_a_term() -> None:
    n = make(1)
    n.step(VoteRequest(2, 1, 5, 0, 0))
    assert n.ready().messages == [VoteResponse(1, 2, 5, True)]
    n.step(VoteRequest(3, 1, 5, 0, 0))
    assert n.ready().messages == [VoteResponse(1, 3, 5, False)]


def test_vote_persisted_in_the_same_ready_as_the_grant() -> None:
    n = make(1)
    n.step(VoteRequest(2, 1, 5, 0, 0))
    rd = n.ready()
    assert rd.hard_state == HardState(5, 2, 0) and rd.messages


def test_restart_keeps_term_and_vote() -> None:
    n = make(1, hard_state=HardState(5, 2, 0))
    n.step(VoteRequest(3, 1, 5, 0, 0))
    assert n.ready().messages == [VoteResponse(1, 3, 5, False)]


def test_conflicting_suffix_is_truncated_and_reported() -> None:
    n = make(2, entries=[Entry(1, 1), Entry(1, 2), Entry(1, 3)], hard_state=HardState(1, 0, 1))
    n.ready()
    n.step(AppendRequest(1, 2, 2, 1, 1, (Entry(2, 2, EntryKind.NORMAL, b"new"),), 2))
    rd = n.ready()
    assert rd.entries == [Entry(2, 2, EntryKind.NORMAL, b"new")]
    assert n.last_index == 2
    assert rd.messages == [AppendResponse(2, 1, 2, True, 2)]


def test_read_index_needs_a_quorum_round() -> None:
    nodes = cluster()
    elect(nodes, 1)
    for _ in range(2):
        for n in nodes.values():
            n.tick()
        pump(nodes)
    READS.clear()
    assert nodes[1].read_index(b"r1")
    pump(nodes, drop={2, 3})
    assert READS == []  # no quorum answered: not served
    assert nodes[1].read_index(b"r2")
    pump(nodes)
    assert READS == [b"r1", b"r2"]  # the second round's acks confirm both, in order


def test_leadership_transfer() -> None:
    nodes = cluster()
    elect(nodes, 1)
    assert nodes[1].transfer_leadership(3)
    pump(nodes)
    assert nodes[3].is_leader and not nodes[1].is_leader


def test_a_voter_that_stops_answering_leaves_the_answering_set_within_an_election_timeout() -> None:
    """What a membership change checks first (mds/server.py `_check_majority_left`): a removal that leaves
    no majority among the members that answer commits, and then no master can be elected."""
    nodes = cluster()
    elect(nodes, 1)
    assert nodes[1].answering_voters() == {1, 2, 3}
    assert nodes[2].answering_voters() == frozenset()  # a follower does not know
    for _ in range(nodes[1].election_timeout - 1):
        for nid in (1, 2):
            nodes[nid].tick()
        pump(nodes, drop={3})  # MDS#3 is silent; MDS#2 answers the heartbeats
    assert nodes[1].answering_voters() == {1, 2, 3}  # not yet an election timeout
    for nid in (1, 2):
        nodes[nid].tick()
    pump(nodes, drop={3})
    assert nodes[1].is_leader and nodes[1].answering_voters() == {1, 2}
    nodes[1].tick()
    pump(nodes)  # it answers again
    assert nodes[1].answering_voters() == {1, 2, 3}
    fresh = cluster()  # a new master counts no member it has not heard from yet
    fresh[1].campaign()
    pump(fresh, drop={3})  # elected by MDS#2's vote alone
    assert fresh[1].is_leader and fresh[1].answering_voters() == {1, 2}


def test_compaction_then_snapshot_to_a_lagging_follower() -> None:
    nodes = cluster()
    elect(nodes, 1)
    for i in range(5):
        nodes[1].propose(b"%d" % i)
    pump(nodes, drop={3})
    for _ in range(2):
        for n in (nodes[1], nodes[2]):
            n.tick()
        pump(nodes, drop={3})
    snap = nodes[1].compact(nodes[1].applied, b"image")
    assert snap.voters == (1, 2, 3)
    for _ in range(2):
        nodes[1].tick()
        pump(nodes)
    assert nodes[3].commit >= snap.index
    assert nodes[3].log.snapshot == snap  # it got there by InstallSnapshot


def _lagging_follower_behind_a_snapshot() -> tuple[dict[int, RaftCore], Snapshot]:
    """Node 1 leads, node 3 missed everything, and node 1 compacted it away."""
    nodes = cluster()
    elect(nodes, 1)
    for i in range(5):
        nodes[1].propose(b"%d" % i)
    pump(nodes, drop={3})
    return nodes, nodes[1].compact(nodes[1].applied, b"image")


def _heartbeats_to(nodes: dict[int, RaftCore], peer: int, ticks: int) -> list[Message]:
    """What node 1 sends `peer` over `ticks` ticks, `peer` never answering (the others do)."""
    sent: list[Message] = []
    for _ in range(ticks):
        nodes[1].tick()
        sent.extend(m for m in pump(nodes, drop={peer}) if m.dst == peer)
    assert nodes[1].is_leader
    return sent


def test_a_snapshot_in_flight_is_not_sent_again_and_the_follower_gets_heartbeats() -> None:
    nodes, snap = _lagging_follower_behind_a_snapshot()
    sent = _heartbeats_to(nodes, 3, nodes[1].snapshot_timeout - 1)
    snaps = [m for m in sent if isinstance(m, SnapshotRequest)]
    beats = [m for m in sent if isinstance(m, AppendRequest)]
    assert len(snaps) == 1 and snaps[0].snapshot == snap
    assert beats and all(m.prev_index == 0 and not m.entries for m in beats)
    nodes[1].propose(b"more")
    assert not [m for m in pump(nodes, drop={3}) if m.dst == 3]  # no entries while it installs
    # A heartbeat answered before the snapshot is in changes nothing.
    nodes[3].step(beats[-1])
    for m in nodes[3].ready().messages:
        nodes[1].step(m)
    assert not [m for m in nodes[1].ready().messages if m.dst == 3]


def test_a_snapshot_not_heard_of_is_sent_again_after_the_timeout() -> None:
    nodes, snap = _lagging_follower_behind_a_snapshot()
    sent = _heartbeats_to(nodes, 3, nodes[1].snapshot_timeout + nodes[1].heartbeat_timeout + 1)
    assert len([m for m in sent if isinstance(m, SnapshotRequest)]) == 2


def test_a_transfer_reported_alive_keeps_its_deadline_and_a_failed_one_is_sent_again() -> None:
    nodes, snap = _lagging_follower_behind_a_snapshot()
    leader = nodes[1]
    sent: list[Message] = []
    for _ in range(3 * leader.snapshot_timeout):
        leader.report_snapshot(3, failed=False)
        sent.extend(_heartbeats_to(nodes, 3, 1))
    assert len([m for m in sent if isinstance(m, SnapshotRequest)]) == 1
    leader.report_snapshot(3, failed=True)
    sent = _heartbeats_to(nodes, 3, leader.heartbeat_timeout + 1)
    assert len([m for m in sent if isinstance(m, SnapshotRequest)]) == 1


def test_after_the_snapshot_is_installed_entries_flow_again() -> None:
    nodes, snap = _lagging_follower_behind_a_snapshot()
    leader = nodes[1]
    idx = leader.propose(b"after")
    assert idx is not None
    for _ in range(3):
        leader.tick()
        pump(nodes)
    assert nodes[3].log.snapshot == snap
    assert nodes[3].commit == idx and nodes[3].log.entry(idx).data == b"after"
    assert leader.match_indexes()[3] == idx


def test_a_follower_that_lost_acknowledged_entries_is_named_once_found() -> None:
    nodes = cluster()
    elect(nodes, 1)
    for i in range(5):
        nodes[1].propose(b"%d" % i)
    pump(nodes)
    assert nodes[1].take_lost_logs() == set()
    nodes[3] = make(3)  # its data directory wiped: an empty log, same id
    nodes[1].propose(b"after")
    for _ in range(3):
        nodes[1].tick()
        pump(nodes)
    assert nodes[1].take_lost_logs() == {3}
    assert nodes[1].take_lost_logs() == set()  # said once per finding


def test_malformed_messages_raise_protocol_error() -> None:
    good = AppendRequest(1, 2, 3, 4, 2, (Entry(3, 5, EntryKind.NORMAL, b"x"),), 4, 1).to_dict()
    for bad in (
        {},
        {"type": "nope"},
        {**good, "term": "3"},
        {**good, "term": -1},
        {**good, "term": 2**63},  # kept in a signed 64-bit SQLite integer: 2**64-1 stopped every server
        {**good, "commit": 2**64 - 1},
        {**good, "entries": [{"term": 1}]},
        {**good, "entries": "x"},
        {**good, "prev_index": True},
    ):
        with pytest.raises(ProtocolError):
            message_from_dict(bad)


@given(
    st.integers(0, 2**63 - 1), st.integers(0, 2**63 - 1), st.sampled_from(list(EntryKind)), st.binary(max_size=64)
)
def test_entry_round_trip(term: int, index: int, kind: EntryKind, data: bytes) -> None:
    e = Entry(term, index, kind, data)
    assert Entry.from_dict(e.to_dict()) == e
