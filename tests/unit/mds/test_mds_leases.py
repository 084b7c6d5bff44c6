"""Exclusive leases on the master: one holder, expiry, and the grace period of a new master."""

from __future__ import annotations

import pytest

from chunkfs.common.errors import Busy, InvalidArgument, Unavailable
from chunkfs.mds.leases import LeaseTable


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_one_holder_at_a_time_until_release_or_expiry() -> None:
    clock = Clock()
    t = LeaseTable(ttl=10, clock=clock)
    assert t.grant(5, "A", "acquire") == 10
    assert t.grant(5, "A", "acquire") == 10  # idempotent for its holder
    with pytest.raises(Busy) as info:
        t.grant(5, "B", "acquire")
    assert "A" in str(info.value) and info.value.context["holder"] == "A"
    t.release(5, "B")  # not B's: nothing happens
    with pytest.raises(Busy):
        t.grant(5, "B", "renew")
    t.release(5, "A")
    assert t.grant(5, "B", "acquire") == 10
    clock.now += 10.5  # B never renewed
    assert t.grant(5, "A", "acquire") == 10
    clock.now += 5
    t.grant(5, "A", "renew")
    clock.now += 8  # renewed 8 s ago: still A's
    with pytest.raises(Busy):
        t.grant(5, "B", "acquire")


def test_new_master_lets_holders_reclaim_before_anyone_acquires() -> None:
    clock = Clock()
    t = LeaseTable(ttl=10, clock=clock)
    t.grant(1, "A", "acquire")
    t.start_grace()  # this server became master again: the table is gone
    with pytest.raises(Unavailable):
        t.grant(1, "B", "acquire")
    t.grant(1, "A", "renew")  # the holder reclaims it
    with pytest.raises(Busy):
        t.grant(1, "B", "acquire")
    with pytest.raises(Unavailable):
        t.grant(2, "B", "acquire")  # a file nobody reclaimed: still in grace
    clock.now += 10.1
    assert t.grant(2, "B", "acquire") == 10
    with pytest.raises(InvalidArgument):
        t.grant(3, "B", "steal")


def test_table_is_bounded() -> None:
    clock = Clock()
    t = LeaseTable(ttl=10, clock=clock, max_leases=3)
    for ino in range(3):
        t.grant(ino, "A", "acquire")
    with pytest.raises(Unavailable):
        t.grant(9, "A", "acquire")
    clock.now += 11  # all expired: purged to make room
    t.grant(9, "A", "acquire")
    assert set(t.held) == {9}
