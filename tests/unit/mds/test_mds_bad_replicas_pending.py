"""Bad blocks no good copy was reachable for: retried when one is, a bounded slice per pass (mds/bad_replicas.py)."""

from __future__ import annotations

from collections import OrderedDict
from types import SimpleNamespace
from typing import Any

import pytest

from chunkfs.common.errors import Unavailable
from chunkfs.mds.bad_replicas import MAX_CHECKING, PENDING_CHECKED_PER_PASS, BadReplicas


def make(n: int) -> tuple[BadReplicas, list[int], list[Any], set[int]]:
    looked: list[int] = []
    spawned: list[Any] = []
    holding: set[int] = set()  # the servers other than CS#1 that hold every chunk

    def chunk(chunk_id: int) -> SimpleNamespace:
        looked.append(chunk_id)
        return SimpleNamespace(chunk_id=chunk_id, version=1, replicas=[1, 2, 3])

    def spawn(coro: Any) -> None:
        spawned.append(coro)
        coro.close()  # not run: what is started is what this test counts

    mds = SimpleNamespace(store=SimpleNamespace(chunk=chunk), live={1: object()}, spawn=spawn,
                          chunks=SimpleNamespace(holds=lambda cs, chunk_id: cs in holding))
    bad = BadReplicas(SimpleNamespace(mds=mds))  # type: ignore[arg-type]
    bad.pending = OrderedDict(((chunk_id, 1), {0, 3}) for chunk_id in range(n))
    return bad, looked, spawned, holding


def test_with_no_good_copy_up_a_pass_looks_at_a_bounded_slice_in_turn() -> None:
    n = PENDING_CHECKED_PER_PASS + 36
    bad, looked, spawned, _ = make(n)
    bad.retry_pending()
    assert looked == list(range(PENDING_CHECKED_PER_PASS))
    bad.retry_pending()  # the ones not looked at yet come first
    assert looked[PENDING_CHECKED_PER_PASS:] == list(range(PENDING_CHECKED_PER_PASS, n)) + \
        list(range(PENDING_CHECKED_PER_PASS - 36))
    assert not spawned and len(bad.pending) == n  # nothing to mend them from: all kept


def test_once_a_good_copy_is_up_the_repairs_start_and_leave_the_waiting_list() -> None:
    bad, _, spawned, holding = make(10)
    holding.add(2)
    bad.retry_pending()
    assert len(spawned) == 10 and not bad.pending
    assert bad.checking == {(chunk_id, 1) for chunk_id in range(10)}  # each handled once at a time


def test_a_report_of_blocks_already_waiting_starts_nothing_new() -> None:
    bad, _, spawned, _ = make(1)
    assert not bad.report(0, 1, "read failed", False, "client x", [3])
    assert not spawned


def test_a_servers_own_report_the_master_cannot_take_now_is_refused_so_it_comes_again() -> None:
    """A server reports a replica it moved aside once: dropped for a full queue, the master counted a
    replica no longer there.  Refused (Unavailable), its scrubber sends it again; a reader's is dropped."""
    bad, _, spawned, _ = make(0)
    for chunk_id in range(MAX_CHECKING):
        assert bad.report(100 + chunk_id, 1, "header never written", True, "CS#1's scrubber", None, True)
    with pytest.raises(Unavailable, match="again"):
        bad.report(7, 2, "header never written", True, "CS#2's scrubber", None, True)
    assert not bad.report(7, 2, "read failed", False, "client x", [3])
    with pytest.raises(Unavailable):  # the same replica already being handled: asked again after
        bad.report(100, 1, "replica file missing", True, "CS#1's scrubber", None)
    assert len(spawned) == MAX_CHECKING
    bad.checking.clear()
    assert bad.report(7, 2, "header never written", True, "CS#2's scrubber", None, True)
