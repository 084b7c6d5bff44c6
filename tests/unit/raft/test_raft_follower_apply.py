"""A follower applies committed entries later, in batches; a master at once, and commits them later.

The driver (raft/driver.py) hands a follower's committed entries to the
state machine FOLLOWER_APPLY_DELAY after the first of them, in one batch, so
the follower's SQLite transaction does not run right after its
acknowledgement on the core the master needs.  The master applies each
entry at once (its answer is the result), into a transaction it holds open
and commits LEADER_COMMIT_DELAY after the first entry in it.  These tests
drive `RaftLog._apply` with a stand-in core and state machine: what is
applied, when, in which order, in how many batches, and what is committed.
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
        #: The applied index as of the last commit of a batch.
        self.committed = 0

    def apply(self, index: int, term: int, data: bytes) -> bytes:
        self.applied.append((index, self._batch))
        return data

    def applied_index(self) -> int:
        return self.applied[-1][0] if self.applied else 0

    def hold(self) -> None:
        if not self._batch:
            self.batches += 1
            self._batch = self.batches

    def release(self) -> None:
        if self._batch:
            self._batch = 0
            self.committed = self.applied_index()

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        assert not self._batch, "batches do not nest"
        self.hold()
        try:
            yield
        finally:
            self.release()

    def machine(self) -> StateMachine:
        return StateMachine(apply=self.apply, applied_index=self.applied_index, snapshot_to=lambda p: 0,
                            restore=lambda p, i: None, batch=self.batch, hold=self.hold, release=self.release)


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
    assert rec.applied == [(1, 1), (2, 1), (3, 1), (4, 2), (5, 2)]
    assert rec.committed == 3  # its own are held
    assert raft._apply_timer is None and not raft._deferred


async def test_a_master_applies_at_once_and_commits_later_in_one_batch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(driver, "LEADER_COMMIT_DELAY", 0.05)
    rec = Recorder()
    raft = member(tmp_path, rec, leader=True)
    raft._apply(Ready(committed_entries=entries(1, 2)))
    raft._apply(Ready(committed_entries=entries(3, 3)))
    assert rec.applied == [(1, 1), (2, 1), (3, 1)]  # at once: its answers are the results
    assert rec.committed == 0
    await asyncio.wait_for(raft._wake.wait(), 5)  # the timer asks the loop to commit them
    raft._wake.clear()
    assert raft._release_due
    raft._release_held()  # what the loop does when woken so
    assert rec.committed == 3 and rec.batches == 1 and raft._release_timer is None
    raft._apply(Ready(committed_entries=entries(4, 4)))
    assert rec.applied[-1] == (4, 2) and rec.committed == 3


async def test_a_master_holding_many_commits_at_once(tmp_path: Path) -> None:
    rec = Recorder()
    raft = member(tmp_path, rec, leader=True)
    raft._apply(Ready(committed_entries=entries(1, driver.LEADER_COMMIT_MAX)))
    assert rec.committed == driver.LEADER_COMMIT_MAX and raft._release_timer is None


async def test_a_master_that_steps_down_commits_what_it_held_before_it_applies_as_a_follower(
        tmp_path: Path) -> None:
    rec = Recorder()
    raft = member(tmp_path, rec, leader=True)
    raft._apply(Ready(committed_entries=entries(1, 2)))
    raft.core.is_leader = False  # type: ignore[union-attr]
    raft._apply(Ready(committed_entries=entries(3, 4)))
    raft._apply_deferred()
    assert rec.applied == [(1, 1), (2, 1), (3, 2), (4, 2)] and rec.committed == 4


async def test_a_master_stopped_in_order_commits_what_it_held(tmp_path: Path) -> None:
    rec = Recorder()
    raft = member(tmp_path, rec, leader=True)
    raft._apply(Ready(committed_entries=entries(1, 2)))
    await raft.stop()
    assert rec.committed == 2 and raft._release_timer is None


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


@pytest.mark.parametrize("leader", [False, True])
async def test_the_loop_applies_and_commits_what_the_timer_made_due(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, leader: bool) -> None:
    """The whole path: deferred or held, the timer fires, the driver's loop wakes, applies and commits them."""
    monkeypatch.setattr(driver, "FOLLOWER_APPLY_DELAY", 0.02)
    monkeypatch.setattr(driver, "LEADER_COMMIT_DELAY", 0.02)
    rec = Recorder()
    raft = member(tmp_path, rec, leader=leader)
    raft.core = SimpleNamespace(  # type: ignore[assignment]
        is_leader=leader, term=1, voters=frozenset({1, 2, 3}), has_ready=lambda: False, take_lost_logs=set)
    raft.storage = SimpleNamespace()  # type: ignore[assignment]  # nothing to persist: no Ready
    loop = asyncio.get_running_loop().create_task(raft._loop())
    try:
        raft._apply(Ready(committed_entries=entries(1, 2)))
        assert rec.applied == ([(1, 1), (2, 1)] if leader else []) and rec.committed == 0
        for _ in range(250):  # bounded: 5 s
            if rec.committed:
                break
            await asyncio.sleep(0.02)
        assert rec.applied == [(1, 1), (2, 1)] and rec.committed == 2
        assert not raft._apply_due and not raft._deferred and not raft._release_due and not raft._held
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
