"""Pure self-healing logic: server states, chunk health, failure-domain placement, cluster settings."""

from __future__ import annotations

import random

import pytest

from chunkfs.common.errors import InvalidArgument
from chunkfs.common.settings import SETTINGS, check_update, effective
from chunkfs.mds.domains import Place, choose, crowded, domain_key, spread_possible
from chunkfs.mds.health import ACTIVE, INACTIVE, OFFLINE, classify, cs_state


def test_cs_state_follows_silence() -> None:
    assert cs_state(True, 0.5, 10, 300) == ACTIVE
    assert cs_state(True, 11, 10, 300) == INACTIVE  # connected but silent (SIGSTOP)
    assert cs_state(False, 0.0, 10, 300) == INACTIVE  # link dropped: not yet given up
    assert cs_state(False, 300, 10, 300) == OFFLINE
    assert cs_state(True, 301, 10, 300) == OFFLINE


def test_waiting_replicas_are_waited_for_unless_below_minimum() -> None:
    states = {1: ACTIVE, 2: ACTIVE, 3: INACTIVE, 4: OFFLINE}
    h = classify(7, (1, 2, 3), 3, 2, states, connected={1, 2}, holds={1, 2})
    assert (h.good, h.waiting, h.lost) == ((1, 2), (3,), ())
    assert h.need == 0 and h.status == "degraded"
    h = classify(7, (1, 3, 4), 3, 2, states, connected={1, 2}, holds={1})
    assert h.need == 2 and h.status == "urgent"  # below MIN: copy now, do not wait for CS#3
    h = classify(7, (1, 2, 4), 3, 2, states, connected={1, 2}, holds={1, 2})
    assert h.lost == (4,) and h.need == 1
    h = classify(7, (3,), 3, 2, states, connected={1, 2}, holds=set())
    assert h.status == "offline"


def test_active_server_that_lost_the_replica_counts_as_lost() -> None:
    h = classify(7, (1, 2, 3), 3, 2, {1: ACTIVE, 2: ACTIVE, 3: ACTIVE}, connected={1, 2, 3}, holds={1, 2})
    assert h.lost == (3,) and h.need == 1


def test_excess_and_untidy() -> None:
    states = {i: ACTIVE for i in range(1, 6)}
    h = classify(7, (1, 2, 3, 4), 3, 2, states, connected=set(states), holds={1, 2, 3, 4})
    assert h.excess == 1 and h.need == 0
    states[5] = OFFLINE
    h = classify(7, (1, 2, 3, 5), 3, 2, states, connected={1, 2, 3}, holds={1, 2, 3})
    assert h.untidy and h.excess == 0


def _servers() -> list[Place]:
    # Two racks: A has three hosts, B has two.
    return [Place(i, f"h{i}", f"dc.r1.{'A' if i <= 3 else 'B'}", 0, 100) for i in range(1, 6)]


@pytest.mark.parametrize("seed", range(20))
def test_rack_placement_spans_both_racks(seed: int) -> None:
    servers = _servers()
    chosen = choose(servers, 3, "rack", rng=random.Random(seed))
    racks = {domain_key(s, "rack") for s in servers if s.cs_id in chosen}
    hosts = {domain_key(s, "host") for s in servers if s.cs_id in chosen}
    assert len(chosen) == 3 and racks == {"dc.r1.A", "dc.r1.B"} and len(hosts) == 3


def test_placement_respects_existing_replicas_and_falls_back() -> None:
    servers = _servers()
    existing = [servers[0]]  # rack A
    for seed in range(10):
        chosen = choose(servers[1:], 1, "rack", existing, random.Random(seed))
        assert chosen[0] in (4, 5)  # the other rack first
    # Only one rack with room: replicas share it (on distinct hosts) rather than not being placed.
    assert sorted(choose(servers[:3], 3, "rack")) == [1, 2, 3]
    same_host = [Place(i, "h", "", 0, 100) for i in range(1, 4)]
    assert sorted(choose(same_host, 2, "host")) != []


def test_crowded_and_spread_possible() -> None:
    servers = _servers()
    two_in_a = [servers[0], servers[1]]
    assert [p.cs_id for p in crowded(two_in_a, "rack")] == [2]
    assert spread_possible(two_in_a, servers[3:], "rack")
    assert not spread_possible(two_in_a, servers[2:3], "rack")
    assert crowded(two_in_a, "host") == []


def test_settings_defaults_and_checks() -> None:
    values = effective({})
    assert values["cs-offline-timeout"] == 300 and values["cs-inactive-timeout"] == 10
    assert effective({"cs-offline-timeout": "5", "replication-max": "junk"})["cs-offline-timeout"] == 5
    assert effective({"replication-max": "junk"})["replication-max"] == SETTINGS["replication-max"].default
    assert check_update(values, {"cs-offline-timeout": "604799"}) == {"cs-offline-timeout": "604799"}
    assert check_update(values, {"scrub-rate": "0.25"}) == {"scrub-rate": "0.25"}
    with pytest.raises(InvalidArgument, match="must be longer"):
        check_update(values, {"cs-offline-timeout": "5"})  # not above the inactive timeout (10)
    with pytest.raises(InvalidArgument, match="unknown setting"):
        check_update(values, {"cs-offline": "5"})
    with pytest.raises(InvalidArgument, match="between 0.01 and 10000 MiB/s"):
        check_update(values, {"scrub-rate": "0"})
    # Bounds as people write them (an operator probe: "between 1 and 3.1536e+07 s", "100 and 1e+08 events").
    with pytest.raises(InvalidArgument, match="between 1 and 31536000 s$"):
        check_update(values, {"scrub-interval": "1e9"})
    with pytest.raises(InvalidArgument, match="between 100 and 100000000 events$"):
        check_update(values, {"event-log-max": "5"})
    with pytest.raises(InvalidArgument, match="whole number"):
        check_update(values, {"replication-per-cs": "1.5"})
    for bad in ("inf", "nan", "1e999", "-inf"):  # (an operator probe: an internal error for the whole-number ones)
        for name in ("event-log-max", "scrub-rate"):
            with pytest.raises(InvalidArgument, match="not a finite number"):
                check_update(values, {name: bad})
