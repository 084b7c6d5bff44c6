"""Stripe locks: several at once, per stripe strictly in arrival order, no deadlock, nothing left queued."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from chunkfs.cs.stripe_locks import StripeLocks

STRIPES = 4


async def _run(requests: list[tuple[list[int], int]], locks: StripeLocks) -> list[tuple[str, int]]:
    """Start every request in order (each holds its chunks' locks for `turns` loop turns); the log."""
    log: list[tuple[str, int]] = []

    async def one(i: int, chunk_ids: list[int], turns: int) -> None:
        async with locks.hold(chunk_ids):
            log.append(("in", i))
            for _ in range(turns):
                await asyncio.sleep(0)
            log.append(("out", i))

    tasks = [asyncio.get_running_loop().create_task(one(i, ids, turns)) for i, (ids, turns) in enumerate(requests)]
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    return log


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.lists(st.integers(0, 2 * STRIPES - 1), max_size=3), st.integers(0, 3)),
                max_size=12))
def test_each_stripe_is_held_by_one_request_at_a_time_in_the_order_they_arrived(
    requests: list[tuple[list[int], int]],
) -> None:
    locks = StripeLocks(STRIPES)
    log = asyncio.run(_run(requests, locks))
    stripes = [{c % STRIPES for c in ids} for ids, _ in requests]
    holding: dict[int, int] = {}
    entered: dict[int, list[int]] = {s: [] for s in range(STRIPES)}
    for what, i in log:
        for s in stripes[i]:
            if what == "in":
                assert s not in holding, f"request {i} entered stripe {s} held by request {holding.get(s)}"
                holding[s] = i
                entered[s].append(i)
            else:
                del holding[s]
    for s, order in entered.items():
        assert order == [i for i in range(len(requests)) if s in stripes[i]], f"stripe {s} out of arrival order"
    assert locks.busy() == 0


def test_a_request_waiting_for_one_stripe_keeps_its_place_in_the_others() -> None:
    async def scenario() -> list[tuple[str, int]]:
        locks = StripeLocks(STRIPES)
        log = await _run([([1], 3), ([1, 2], 0), ([2], 0)], locks)
        assert locks.busy() == 0
        return log

    # Plain locks taken one after the other let request 2 have stripe 2 while request 1 waits for stripe 1.
    assert asyncio.run(scenario()) == [("in", 0), ("out", 0), ("in", 1), ("out", 1), ("in", 2), ("out", 2)]


def test_a_cancelled_waiter_leaves_every_queue_and_lets_those_behind_it_go() -> None:
    async def scenario() -> None:
        locks = StripeLocks(STRIPES)
        release = asyncio.Event()
        entered: list[str] = []

        async def hold(name: str, chunk_ids: list[int], until: asyncio.Event | None = None) -> None:
            async with locks.hold(chunk_ids):
                entered.append(name)
                if until is not None:
                    await until.wait()

        first = asyncio.ensure_future(hold("first", [1], release))
        await asyncio.sleep(0)
        waiter = asyncio.ensure_future(hold("waiter", [1, 2]))  # first in stripe 2's queue, waits for 1
        behind = asyncio.ensure_future(hold("behind", [2]))
        await asyncio.sleep(0)
        assert entered == ["first"]
        waiter.cancel()
        await asyncio.wait_for(behind, 5)  # stripe 2 is free once the waiter is gone, stripe 1 still held
        assert entered == ["first", "behind"]
        release.set()
        await asyncio.wait_for(first, 5)
        assert waiter.cancelled() and locks.busy() == 0

    asyncio.run(scenario())


def test_an_error_inside_gives_the_locks_back() -> None:
    async def scenario() -> None:
        locks = StripeLocks(STRIPES)
        try:
            async with locks.hold([3, 7]):
                raise ValueError("disk")
        except ValueError:
            pass
        assert locks.busy() == 0
        async with locks.hold([3]):  # taken at once: nothing waits
            assert locks.busy() == 1

    asyncio.run(scenario())
