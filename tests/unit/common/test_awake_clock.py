"""The awake clock leaves out the spans in which the process did not run, and nothing else."""

from __future__ import annotations

import asyncio
import time

from chunkfs.common.awake_clock import AwakeClock
from chunkfs.mds.open_files import OpenFileTable


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_readings_within_the_gap_follow_the_clock() -> None:
    raw = Clock()
    awake = AwakeClock(raw, tick=0.1, gap=1.0)
    start = awake()
    for _ in range(50):
        raw.now += 0.9  # late ticks, a busy loop: still running
        awake()
    assert abs(awake() - start - 45.0) < 1e-6 and awake.paused == 0


def test_a_gap_is_left_out_but_one_tick() -> None:
    raw = Clock()
    awake = AwakeClock(raw, tick=0.1, gap=1.0)
    before = awake()
    raw.now += 30  # stopped for 30 s
    after = awake()
    assert abs(after - before - 0.1) < 1e-9
    for _ in range(10):  # then running, read twice a second
        raw.now += 0.5
        awake()
    assert abs(awake() - after - 5.0) < 1e-9
    assert awake() >= after  # never goes back


def test_a_session_outlives_the_masters_own_pause_but_not_the_mounts_silence() -> None:
    raw = Clock()
    table = OpenFileTable(ttl=10, clock=AwakeClock(raw, tick=0.1, gap=1.0))
    table.open("mount", 7)
    raw.now += 2
    table.clock()
    raw.now += 60  # the master stopped for a minute: the first thing it does on resume is expire
    assert table.expire() == [] and table.held(7)
    for _ in range(100):  # running, the mount silent for 10 s
        raw.now += 0.1
        table.clock()
    assert table.expire() == [7]


def test_the_ticker_finds_a_blocked_loop_without_other_readers() -> None:
    async def main() -> float:
        awake = AwakeClock(tick=0.01)
        task = asyncio.get_running_loop().create_task(awake.run())
        await asyncio.sleep(0.05)
        time.sleep(1.5)  # the event loop blocked: nobody's messages are read
        await asyncio.sleep(0.05)
        task.cancel()
        return awake.paused

    assert asyncio.run(main()) >= 1.4  # at least the 1.5 s blocked, but one tick
