"""Until when a chunk server may still serve what a master leaves behind (mds/replica_leases.py)."""

from __future__ import annotations

from chunkfs.mds.replica_leases import HANDOVER, SERVED_FOR, ReplicaLeases


def test_a_server_heard_from_counts_from_then_and_one_not_heard_from_the_term_start() -> None:
    mono, awake = [1000.0], [500.0]  # the awake clock left 500 s of this master's pauses out
    heard = {1: 497.0}  # 3 s ago, on the awake clock
    leases = ReplicaLeases(lambda: awake[0], heard.get, lambda: 990.0, clock=lambda: mono[0])
    assert leases.ends(1) == 997.0 + SERVED_FOR
    assert leases.ends(2) == 990.0 + HANDOVER + SERVED_FOR  # a predecessor's lease, at the latest
    assert leases.left(1) == SERVED_FOR - 3.0
    heard[1] = 100.0  # heard from long ago, in an earlier term: the term's start is later
    assert leases.ends(1) == 990.0 + HANDOVER + SERVED_FOR
    mono[0] += 60.0
    awake[0] += 60.0
    assert leases.left(1) == leases.left(2) == 0.0


def test_a_pause_of_this_master_only_makes_the_wait_longer() -> None:
    """A stretch the awake clock left out (this master stopped) counts as no time since the server was
    heard from: the deadline comes later on the monotonic clock, never sooner."""
    mono, awake = [1000.0], [500.0]
    leases = ReplicaLeases(lambda: awake[0], {1: 499.0}.get, lambda: 0.0, clock=lambda: mono[0])
    before = leases.ends(1)
    mono[0] += 10.0  # paused: the monotonic clock ran on, the awake clock did not
    assert leases.ends(1) == before + 10.0
