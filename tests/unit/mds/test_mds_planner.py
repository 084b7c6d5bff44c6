"""The placement and repair planner (mds/planner.py), alone: simulated clusters, no master, no network.

The big case is a cluster of 1,000 servers in 5 rows of 10 racks of 20 servers.  A bounded version
(10^5 chunks, one server lost) runs in the normal suite; the 10^7-chunk version (a whole rack lost)
is a slow soak (CHUNKFS_SLOW=1).  Every case checks what the plan does, never how long it took.
"""

from __future__ import annotations

import collections
import os
import random
from array import array

import pytest

from chunkfs.mds.domains import Place, domain_key
from chunkfs.mds.health import INACTIVE
from chunkfs.mds.planner import Need, Planner, Server, pick_victims, plan_rebalance
from chunkfs.testing.racks import racked_servers

CHUNK = 64 << 20
SLOW = os.environ.get("CHUNKFS_SLOW") == "1"


def server(cs: int, location: str, tier: int = 0, free: int = 100 * CHUNK, **kw: object) -> Server:
    return Server(Place(cs, f"h{cs}", location, tier, free), total=200 * CHUNK, **kw)  # type: ignore[arg-type]


def small() -> list[Server]:
    """Two racks: A has servers 1-3 (hosts h1-h3), B has 4-5."""
    return [server(i, f"dc.r1.{'A' if i <= 3 else 'B'}") for i in range(1, 6)]


def rack_of(servers: list[Server]) -> dict[int, str]:
    return {s.cs_id: domain_key(s.place, "rack") for s in servers}


# -- small clusters: the rules one by one -------------------------------------------------------


@pytest.mark.parametrize("seed", range(10))
def test_copy_goes_to_the_rack_not_used_yet(seed: int) -> None:
    servers = small()
    plan = Planner(servers, CHUNK, rng=random.Random(seed)).plan(
        [Need(7, (1, 2), 3, 2, failure_domain="rack", missing=1)])
    (op,) = plan.ops
    assert op.kind == "copy" and op.source in (1, 2) and op.target in (4, 5)


def test_two_replicas_share_a_domain_only_when_unavoidable() -> None:
    servers = small()
    # Both racks used: a third replica must share one, but on a host not used yet.
    plan = Planner(servers, CHUNK, rng=random.Random(1)).plan(
        [Need(7, (1, 4), 3, 2, failure_domain="rack", missing=1)])
    assert plan.ops[0].target in (2, 3, 5)
    # Every server of the tier already lists it: blocked, not waiting.
    plan = Planner(servers, CHUNK).plan([Need(8, (1, 2, 3), 6, 2, waiting=(4, 5), missing=1)])
    assert plan.blocked == [8] and plan.ops == []


def test_most_endangered_first_within_the_limits() -> None:
    servers = [server(i, f"dc.r1.R{i}") for i in range(1, 9)]
    needs = [
        Need(1, (1, 2), 3, 2, missing=1),          # below the goal
        Need(2, (3,), 3, 2, missing=2),            # below the minimum: first
        Need(3, (4, 5, 6, 7), 3, 2, excess=1),     # over the goal
        Need(4, (1, 2, 3), 3, 2, drop=3),          # misplaced
    ]
    plan = Planner(servers, CHUNK, max_ops=3, rng=random.Random(0)).plan(needs)
    assert [op.chunk_id for op in plan.ops] == [2, 1, 3]
    assert plan.waiting == [4]
    assert [op.kind for op in plan.ops] == ["copy", "copy", "delete"]


def test_fewest_good_replicas_relative_to_the_goal_first() -> None:
    servers = [server(i, f"dc.r1.R{i}") for i in range(1, 9)]
    needs = [Need(1, (1, 2), 4, 1, missing=2), Need(2, (3, 4), 3, 1, missing=1), Need(3, (5,), 2, 1, missing=1)]
    plan = Planner(servers, CHUNK, rng=random.Random(0)).plan(needs)
    assert [op.chunk_id for op in plan.ops] == [3, 1, 2]


def test_per_server_limit_counts_running_copies() -> None:
    servers = [server(1, "dc.r.A", busy=2), server(2, "dc.r.B"), server(3, "dc.r.C"), server(4, "dc.r.D")]
    plan = Planner(servers, CHUNK, per_server=2, rng=random.Random(0)).plan(
        [Need(i, (1, 2), 3, 2, missing=1) for i in range(10)])
    counts = collections.Counter(cs for op in plan.ops for cs in (op.source, op.target))
    assert 1 not in counts  # already at its limit
    assert all(n <= 2 for n in counts.values())
    assert len(plan.ops) + len(plan.waiting) == 10 and plan.waiting


def test_no_target_without_room_inactive_draining_or_other_tier() -> None:
    servers = [
        server(1, "dc.r.A"), server(2, "dc.r.B"),
        server(3, "dc.r.C", free=CHUNK),           # no room for a chunk
        server(4, "dc.r.D", state=INACTIVE),
        server(5, "dc.r.E", draining=True),
        server(6, "dc.r.F", tier=1),
        server(7, "dc.r.G"),
    ]
    for seed in range(20):
        plan = Planner(servers, CHUNK, rng=random.Random(seed)).plan([Need(1, (1, 2), 3, 2, missing=1)])
        assert plan.ops[0].target == 7
    plan = Planner(servers, CHUNK).plan([Need(1, (6,), 2, 1, tier=1, missing=1)])
    assert plan.blocked == [1]


def test_planned_copies_use_up_room() -> None:
    servers = [server(1, "dc.r.A"), server(2, "dc.r.B", free=3 * CHUNK), server(3, "dc.r.C", free=3 * CHUNK)]
    plan = Planner(servers, CHUNK, rng=random.Random(0)).plan([Need(i, (1,), 2, 1, missing=1) for i in range(10)])
    assert collections.Counter(op.target for op in plan.ops) == {2: 2, 3: 2}
    assert len(plan.waiting) == 6


def test_a_move_keeps_the_chunk_spread_and_drops_the_moved_replica() -> None:
    servers = small()
    plan = Planner(servers, CHUNK, rng=random.Random(3)).plan(
        [Need(9, (1, 2, 4), 3, 2, failure_domain="rack", drop=2)])
    (op,) = plan.ops
    assert op.kind == "move" and op.drop == (2,) and op.target == 5


def test_victims_draining_then_wrong_tier_then_crowded_then_fullest() -> None:
    servers = {s.cs_id: s for s in [
        server(1, "dc.r.A", free=50 * CHUNK), server(2, "dc.r.A", free=10 * CHUNK),
        server(3, "dc.r.B", free=5 * CHUNK), server(4, "dc.r.C", tier=1), server(5, "dc.r.D", draining=True),
    ]}
    assert pick_victims([1, 2, 3, 4, 5], 1, servers, "rack", 0) == [5]
    assert pick_victims([1, 2, 3, 4], 1, servers, "rack", 0) == [4]
    assert pick_victims([1, 2, 3], 1, servers, "rack", 0) == [2]  # the later of the two in rack A
    assert pick_victims([1, 3], 1, servers, "rack", 0) == [3]     # the fuller one
    plan = Planner(list(servers.values()), CHUNK).plan([Need(1, (1, 2, 3, 5), 3, 2, excess=1)])
    assert plan.ops[0].kind == "delete" and plan.ops[0].drop == (5,)


def test_rebalance_moves_from_fullest_to_emptiest_within_the_band() -> None:
    servers = [server(1, "dc.r.A", replicas=100), server(2, "dc.r.B", replicas=100),
               server(3, "dc.r.C", replicas=100), server(4, "dc.r.D", replicas=0)]
    pages = {cs: [Need(cs * 1000 + i, (cs, (cs % 3) + 1), 2, 1) for i in range(50)] for cs in (1, 2, 3)}
    moves = plan_rebalance(servers, CHUNK, 0.1, 8, lambda cs: pages.get(cs, []))
    assert len(moves) == 8 and all(m.target == 4 and m.drop in m.good for m in moves)
    assert len({m.chunk_id for m in moves}) == 8
    assert plan_rebalance([server(1, "dc.r.A", replicas=10), server(2, "dc.r.B", replicas=10)], CHUNK, 0.1, 8,
                          lambda cs: pages.get(cs, [])) == []


# -- 1,000 servers in racks and rows ------------------------------------------------------------



def populate(servers: list[Server], chunks: int, rng: random.Random) -> array:
    """Replicas of `chunks` chunks, 3 each in 3 distinct racks: a flat array (3 server ids per chunk)."""
    by_rack: dict[str, list[int]] = collections.defaultdict(list)
    for s in servers:
        by_rack[domain_key(s.place, "rack")].append(s.cs_id)
    racks = list(by_rack.values())
    replicas = array("H")
    for _ in range(chunks):
        for rack in rng.sample(racks, 3):
            replicas.append(rack[rng.randrange(len(rack))])
    return replicas


def lose(replicas: array, lost: set[int]) -> list[Need]:
    """The chunks a lost set of servers leaves below their goal (replicas=3:2, failure-domain=rack)."""
    needs = []
    for chunk in range(len(replicas) // 3):
        listed = replicas[3 * chunk:3 * chunk + 3]
        if lost.isdisjoint(listed):
            continue
        good = tuple(cs for cs in listed if cs not in lost)
        needs.append(Need(chunk, good, 3, 2, failure_domain="rack", missing=3 - len(good)))
    return needs


def check_recovery(servers: list[Server], needs: list[Need], lost: set[int], per_server: int | None) -> None:
    alive = [s for s in servers if s.cs_id not in lost]
    rack = rack_of(servers)
    planner = Planner(alive, 1 << 26, per_server=per_server, rng=random.Random(7))
    plan = planner.plan(needs)
    by_id = {n.chunk_id: n for n in needs}
    assert plan.blocked == [] and plan.offline == []
    assert len(plan.ops) + len(plan.waiting) == len(needs)
    used = collections.Counter()
    for op in plan.ops:
        need = by_id[op.chunk_id]
        assert op.kind == "copy" and op.source in need.good and op.target not in lost
        assert op.target not in need.good
        # Never two replicas in one rack: 50 racks, at most 3 used.
        assert rack[op.target] not in {rack[cs] for cs in need.good}
        used[op.source] += 1
        used[op.target] += 1
    if per_server is None:
        assert plan.waiting == []
        # Spread by free space (about equal here): no server takes a crowd of the copies.
        targets = collections.Counter(op.target for op in plan.ops)
        assert max(targets.values()) <= max(10, 4 * len(plan.ops) / len(alive))
    else:
        assert max(used.values()) <= per_server
        # Only the limit makes a chunk wait: all its sources are busy, or every target it could use.
        for chunk_id in plan.waiting:
            need = by_id[chunk_id]
            if all(used[cs] >= per_server for cs in need.good):
                continue
            racks = {rack[cs] for cs in need.good}
            assert not [s for s in alive if used[s.cs_id] < per_server and rack[s.cs_id] not in racks]
    # Most endangered first: chunks that lost two replicas come before those that lost one.
    order = [len(by_id[op.chunk_id].good) for op in plan.ops]
    assert order == sorted(order)


def test_a_thousand_servers_recover_a_lost_server() -> None:
    rng = random.Random(1)
    servers = racked_servers(rng)
    replicas = populate(servers, 100_000, rng)
    lost = {17}
    needs = lose(replicas, lost)
    assert len(needs) > 200  # about 3 x 10^5 / 1,000
    check_recovery(servers, needs, lost, None)
    check_recovery(servers, needs, lost, 2)


def test_a_thousand_servers_recover_a_lost_rack_and_a_server_elsewhere() -> None:
    rng = random.Random(2)
    servers = racked_servers(rng)
    replicas = populate(servers, 30_000, rng)
    lost = set(range(21, 41)) | {500}  # rack 1 of row 0, and one server in another row
    needs = lose(replicas, lost)
    assert any(len(n.good) == 1 for n in needs)
    check_recovery(servers, needs, lost, None)


@pytest.mark.slow
@pytest.mark.skipif(not SLOW, reason="slow soak test: set CHUNKFS_SLOW=1 to run it")
def test_a_thousand_servers_ten_million_chunks_lose_a_rack() -> None:
    rng = random.Random(3)
    servers = racked_servers(rng)
    replicas = populate(servers, 10_000_000, rng)
    lost = set(range(201, 221))  # a whole rack: about 6 x 10^5 chunks below their goal
    needs = lose(replicas, lost)
    assert len(needs) > 500_000
    check_recovery(servers, needs, lost, None)
