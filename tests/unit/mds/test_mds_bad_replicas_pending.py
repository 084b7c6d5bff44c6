"""Bad blocks no good copy was reachable for: retried when one is, a bounded slice per pass (mds/bad_replicas.py)."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from types import SimpleNamespace
from typing import Any

import pytest

from chunkfs.common.errors import NotFound, Unavailable
from chunkfs.mds import bad_replicas
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
    with pytest.raises(Unavailable):  # one it asks the master to check (left in place): the same
        bad.report(7, 2, "header never written", False, "CS#2 at its start", None, from_server=True)
    with pytest.raises(Unavailable):  # the same replica already being handled: asked again after
        bad.report(100, 1, "replica file missing", True, "CS#1's scrubber", None)
    assert len(spawned) == MAX_CHECKING
    bad.checking.clear()
    assert bad.report(7, 2, "header never written", True, "CS#2's scrubber", None, True)


def test_a_chunk_that_could_not_be_made_again_is_tried_again_while_it_lists_that_server_alone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A power-cut probe: a never-synced chunk's last replica could not be made again (its server's link
    dropped at that moment), and the chunk stayed offline for good.  Now tried again on a later pass."""
    replicas = {5: [1], 6: [1], 7: [2, 3]}  # chunk 6 was copied meanwhile; chunk 7 lists others now
    live: dict[int, object] = {}
    spawned: list[Any] = []
    remade: list[tuple[int, int]] = []

    async def drop_corrupt(chunk_id: int, cs_id: int, *args: Any) -> None:
        remade.append((chunk_id, cs_id))

    def spawn(coro: Any) -> None:
        spawned.append(coro)

    mds = SimpleNamespace(store=SimpleNamespace(chunk=lambda i: SimpleNamespace(replicas=replicas[i])),
                          live=live, spawn=spawn,
                          chunks=SimpleNamespace(holds=lambda cs, chunk_id: chunk_id == 6))
    bad = BadReplicas(SimpleNamespace(mds=mds, drop_corrupt=drop_corrupt))  # type: ignore[arg-type]
    clock = [100.0]
    monkeypatch.setattr(bad_replicas.time, "monotonic", lambda: clock[0])
    for chunk_id in (5, 6, 7):
        bad.remake_later(chunk_id, 1)
    bad.retry_pending()
    assert list(bad.later) == [(5, 1)] and not spawned  # the others need it no more; too soon for 5
    clock[0] += bad_replicas.LOOK_AGAIN_WAIT
    bad.retry_pending()
    assert not spawned  # its server is not back
    live[1] = object()
    bad.retry_pending()
    assert len(spawned) == 1 and not bad.later
    asyncio.run(spawned[0])
    assert remade == [(5, 1)] and not bad.checking


def test_a_check_whose_link_was_lost_is_asked_again_once_its_server_is_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """A power-cut probe: a server's check moved a never-synced replica aside and its answer was lost with
    the link; nothing asked again, the master listed a replica no longer there, the chunk offline for good."""
    live: dict[int, object] = {1: object()}
    spawned: list[Any] = []
    answers: list[Any] = [Unavailable("connection to cs1 closed"), {"ok": False, "whole": True, "unsynced": True}]
    dropped: list[tuple[Any, ...]] = []

    async def cs_call(cs: int, msg: Any, header: dict[str, Any]) -> dict[str, Any]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def drop_corrupt(*args: Any) -> None:
        dropped.append(args)

    chunk = SimpleNamespace(chunk_id=5, version=1, replicas=(1, 2))
    mds = SimpleNamespace(store=SimpleNamespace(chunk=lambda i: chunk), live=live, spawn=spawned.append,
                          _cs_call=cs_call, chunks=SimpleNamespace(holds=lambda cs, chunk_id: True))
    bad = BadReplicas(SimpleNamespace(mds=mds, drop_corrupt=drop_corrupt))  # type: ignore[arg-type]
    clock = [100.0]
    monkeypatch.setattr(bad_replicas.time, "monotonic", lambda: clock[0])
    assert bad.report(5, 1, "a read failed its checksum", False, "client x", None)
    asyncio.run(spawned.pop())
    assert list(bad.later) == [(5, 1)] and not dropped and not bad.checking
    del live[1]
    clock[0] += bad_replicas.LOOK_AGAIN_WAIT
    bad.retry_pending()
    assert not spawned  # not back yet
    live[1] = object()
    bad.retry_pending()
    asyncio.run(spawned.pop())
    assert [args[:2] + args[4:] for args in dropped] == [(5, 1, True)] and not bad.later


def test_a_replica_found_without_a_header_at_its_servers_start_and_gone_since_is_taken_as_found() -> None:
    """A power-cut probe: a server asked at its start for a check of a never-synced replica, which was
    deleted meanwhile (left behind at an old version), and the check's NotFound left the chunk listed
    there alone, offline for good.  As found at the start: never synced.  A reader's report: as before."""
    dropped: list[tuple[Any, ...]] = []
    spawned: list[Any] = []

    async def cs_call(cs: int, msg: Any, header: dict[str, Any]) -> dict[str, Any]:
        raise NotFound("chunk: no replica on this server")

    async def drop_corrupt(*args: Any) -> None:
        dropped.append(args)

    chunk = SimpleNamespace(chunk_id=5, version=1, replicas=(3,))
    mds = SimpleNamespace(store=SimpleNamespace(chunk=lambda i: chunk), live={3: object()}, spawn=spawned.append,
                          _cs_call=cs_call)
    bad = BadReplicas(SimpleNamespace(mds=mds, drop_corrupt=drop_corrupt))  # type: ignore[arg-type]
    assert bad.report(5, 3, "a read failed its checksum", False, "client x", None)
    asyncio.run(spawned.pop())
    assert not dropped and not bad.later
    assert bad.report(5, 3, "header never written", False, "CS#3 at its start", None, True, from_server=True)
    asyncio.run(spawned.pop())
    assert [args[:2] + args[4:] for args in dropped] == [(5, 3, True)]


@pytest.mark.parametrize("cut", [True, False])
def test_a_single_replicas_block_bad_after_a_power_cut_is_taken_and_otherwise_named_lost(cut: bool) -> None:
    """replicas=1: nothing to mend the block from.  Torn by a power cut of its server (fanned_mender.py
    `torn_everywhere`), it is taken as it is; anywhere else it is lost, and an event names it."""
    events: list[str] = []
    taken: list[tuple[int, list[int]]] = []

    async def event(level: str, text: str) -> None:
        events.append(text)

    async def take_torn(chunk_id: int, blocks: list[int]) -> list[int]:
        taken.append((chunk_id, blocks))
        return blocks

    chunk = SimpleNamespace(chunk_id=5, version=1, replicas=[1], ino=9, index=0)
    mds = SimpleNamespace(event=event, store=SimpleNamespace(path_of=lambda ino: "/db-wal"),
                          node=SimpleNamespace(cluster=SimpleNamespace(chunk_size=1 << 20)),
                          mender=SimpleNamespace(torn_everywhere=lambda c: cut, take_torn=take_torn))
    bad = BadReplicas(SimpleNamespace(mds=mds))  # type: ignore[arg-type]
    asyncio.run(bad._repair(chunk, 1, [2], "CS#1's scrubber"))  # type: ignore[arg-type]
    if cut:
        assert taken == [(5, [2])] and not bad.lost
        assert len(events) == 1 and "torn by a power cut" in events[0] and "bad on every replica" not in events[0]
    else:
        assert not taken and bad.lost == {(5, 1): {2}}
        assert len(events) == 1 and "bad on every replica" in events[0]
