"""A follower applies committed entries later, in batches; a master never waits for that.

The driver (raft/driver.py) hands a follower's committed entries to the
state machine FOLLOWER_APPLY_DELAY after the first of them, in one batch, so
the follower's SQLite transaction does not run right after its
acknowledgement on the core the master needs.  These tests drive
`RaftLog._apply` with a stand-in core and state machine: what is applied,
when, in which order and in how many batches.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from chunkfs.raft import driver
from chunkfs.raft.core import Entry, EntryKind, Ready
from chunkfs.raft.driver import RaftLog, StateMachine

pytestmark = pytest.mark.timeout(30)


class Recorder:
    """A state machine that records each apply and which batch it was in."""

    def __init__(self) -> None:
        self.applied: list[tuple[int, int]] = []  # (index, batch number; 0 outside a batch)
        self.batches = 0
        self._batch = 0

    def apply(self, index: int, term: int, data: bytes) -> bytes:
        self.applied.append((index, self._batch))
        return data

    def applied_index(self) -> int:
        return self.applied[-1][0] if self.applied else 0

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        self.batches += 1
        self._batch = self.batches
        try:
            yield
        finally:
            self._batch = 0

    def machine(self) -> StateMachine:
        return StateMachine(apply=self.apply, applied_index=self.applied_index, snapshot_to=lambda p: 0,
                            restore=lambda p, i: None, batch=self.batch)


def entries(first: int, last: int) -> list[Entry]:
    return [Entry(1, i, EntryKind.NORMAL, b"x%d" % i) for i in range(first, last + 1)]


def member(tmp_path: Path, rec: Recorder, leader: bool) -> RaftLog:
    raft = RaftLog(tmp_path, 1, {}, None)  # type: ignore[arg-type]
    raft.core = SimpleNamespace(is_leader=leader, voters=frozenset({1, 2, 3}))  # type: ignore[assignment]
    raft.sm = rec.machine()
    return raft


async def test_a_follower_applies_later_in_one_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(driver, "FOLLOWER_APPLY_DELAY", 0.05)
    rec = Recorder()
    raft = member(tmp_path, rec, leader=False)
    raft._apply(Ready(committed_entries=entries(1, 2)))
    raft._apply(Ready(committed_entries=entries(3, 3)))
    assert rec.applied == []  # nothing at once
    await asyncio.wait_for(raft._wake.wait(), 5)  # the timer asks the loop to apply them
    raft._wake.clear()
    assert raft._apply_due
    raft._apply_deferred()  # what the loop does when woken so
    assert rec.applied == [(1, 1), (2, 1), (3, 1)]
    assert rec.batches == 1 and raft._apply_timer is None


async def test_a_new_master_applies_what_it_deferred_first_in_order(tmp_path: Path) -> None:
    rec = Recorder()
    raft = member(tmp_path, rec, leader=False)
    raft._apply(Ready(committed_entries=entries(1, 3)))
    raft.core.is_leader = True  # type: ignore[union-attr]  # elected before the timer fired
    raft._apply(Ready(committed_entries=entries(4, 5)))
    assert rec.applied == [(1, 1), (2, 1), (3, 1), (4, 0), (5, 0)]
    assert raft._apply_timer is None and not raft._deferred


async def test_a_master_applies_at_once(tmp_path: Path) -> None:
    rec = Recorder()
    raft = member(tmp_path, rec, leader=True)
    raft._apply(Ready(committed_entries=entries(1, 2)))
    assert rec.applied == [(1, 0), (2, 0)] and rec.batches == 0


async def test_a_follower_far_behind_applies_without_waiting(tmp_path: Path) -> None:
    rec = Recorder()
    raft = member(tmp_path, rec, leader=False)
    raft._apply(Ready(committed_entries=entries(1, driver.FOLLOWER_APPLY_MAX)))
    assert len(rec.applied) == driver.FOLLOWER_APPLY_MAX and rec.batches == 1


async def test_a_follower_stopped_in_order_applies_what_it_deferred(tmp_path: Path) -> None:
    rec = Recorder()
    raft = member(tmp_path, rec, leader=False)
    raft._apply(Ready(committed_entries=entries(1, 3)))
    await raft.stop()
    assert rec.applied == [(1, 1), (2, 1), (3, 1)] and raft._apply_timer is None


async def test_the_loop_applies_what_the_timer_made_due(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole path on a follower: deferred, the timer fires, the driver's loop wakes and applies them."""
    monkeypatch.setattr(driver, "FOLLOWER_APPLY_DELAY", 0.02)
    rec = Recorder()
    raft = member(tmp_path, rec, leader=False)
    raft.core = SimpleNamespace(  # type: ignore[assignment]
        is_leader=False, term=1, voters=frozenset({1, 2, 3}), has_ready=lambda: False, take_lost_logs=set)
    raft.storage = SimpleNamespace()  # type: ignore[assignment]  # nothing to persist: no Ready
    loop = asyncio.get_running_loop().create_task(raft._loop())
    try:
        raft._apply(Ready(committed_entries=entries(1, 2)))
        assert rec.applied == []
        for _ in range(250):  # bounded: 5 s
            if rec.applied:
                break
            await asyncio.sleep(0.02)
        assert rec.applied == [(1, 1), (2, 1)] and not raft._apply_due and not raft._deferred
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
