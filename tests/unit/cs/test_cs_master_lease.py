"""A chunk server serves replicas only under a lease from the master (cs/master_lease.py): counted from
the sending of a request a master answered with one; a read without it waits a while, then is refused."""

from __future__ import annotations

import asyncio

import pytest

from chunkfs.common.errors import Unavailable
from chunkfs.cs.master_lease import MasterLease
from chunkfs.protocol.messages import REPLICA_LEASE


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_none_until_a_master_answers_and_it_runs_from_the_sending() -> None:
    clock = Clock()
    lease = MasterLease(clock)
    assert not lease.holds()  # a server just started serves nothing before a master answered it
    lease.renewed(clock.now - 1.0)  # answered a second after it was sent
    assert lease.holds()
    clock.now += REPLICA_LEASE - 1.0
    assert not lease.holds()
    lease.renewed(clock.now - 10.0)  # an answer to an old request renews nothing
    assert not lease.holds()


def test_a_master_that_grants_none_is_served_as_before() -> None:
    clock = Clock()
    lease = MasterLease(clock)
    lease.not_granted()
    clock.now += 10 * REPLICA_LEASE
    assert lease.holds()
    lease.renewed(clock.now)  # a master that grants one: enforced again
    clock.now += REPLICA_LEASE
    assert not lease.holds()


async def test_a_read_waits_for_the_lease_and_is_refused_without_it() -> None:
    lease = MasterLease()
    with pytest.raises(Unavailable, match="cs3 serves no replica now: no master has answered it since it started"):
        await lease.wait("cs3", timeout=0.1)
    waiting = asyncio.ensure_future(lease.wait("cs3", timeout=30.0))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    lease.renewed(asyncio.get_running_loop().time())  # (the loop's clock is the monotonic one)
    await asyncio.wait_for(waiting, 5.0)
