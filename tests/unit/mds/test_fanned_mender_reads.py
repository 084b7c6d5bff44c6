"""Reads of a chunk whose replicas are still to be compared go to one replica only (mds/fanned_mender.py)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from types import SimpleNamespace
from typing import Any

import pytest

from chunkfs.common.errors import Unavailable
from chunkfs.mds import fanned_mender
from chunkfs.mds.fanned_mender import FannedMender
from chunkfs.protocol.messages import FEATURE_FANNED_REPORT

REPLICAS = [[1, "a:1"], [2, "b:1"], [3, "c:1"]]


def mender() -> FannedMender:
    return FannedMender(SimpleNamespace())  # type: ignore[arg-type]


def test_a_pending_chunk_is_read_from_the_replica_its_first_read_went_to_while_its_server_holds_it() -> None:
    m = mender()
    m.pending[7] = None
    assert m.read_from(7, REPLICAS) == [[1, "a:1"]]
    # Another server first now (CS#1 back in the map after another, say): reads stay where they went.
    assert m.read_from(7, [REPLICAS[2], REPLICAS[0], REPLICAS[1]]) == [[1, "a:1"]]
    # Its server no longer holds it: the first of those that do, kept from then on.
    assert m.read_from(7, REPLICAS[1:]) == [[2, "b:1"]]
    assert m.read_from(7, REPLICAS) == [[2, "b:1"]]
    assert m.read_from(7, []) == []


def test_a_chunk_is_pending_from_its_writers_departure_until_compared_or_given_up() -> None:
    m = mender()
    seen: list[dict[int, Any]] = []

    async def mend(chunk_ids: set[int], why: str) -> None:
        seen.append(dict(m.pending))

    m._mend = mend  # type: ignore[method-assign]
    asyncio.run(m.writer_gone({5, 6}))
    assert seen == [{5: None, 6: None}]
    assert m.pending == {}


def test_a_pending_chunk_is_not_read_from_a_replica_whose_machine_went_down_while_anothers_did_not() -> None:
    """A power cut of CS#2 alone lost the unsynced writes its replica had; CS#1 and CS#3 hold them."""
    m = mender()
    m.pending[7] = None
    m.cut[7] = {2}
    assert m.read_from(7, [REPLICAS[1], REPLICAS[0], REPLICAS[2]]) == [[1, "a:1"]]
    # Pinned to it before its server named the chunk (its report came later): moved off it.
    m.pending[8] = 2
    m.cut[8] = {2}
    assert m.read_from(8, [REPLICAS[1], REPLICAS[2]]) == [[3, "c:1"]]
    # Every replica's machine went down: the first read's, as before.
    m.pending[9] = None
    m.cut[9] = {1, 2, 3}
    assert m.read_from(9, [REPLICAS[1], REPLICAS[0]]) == [[2, "b:1"]]


def test_a_server_back_from_a_power_cut_is_not_read_from_until_it_named_the_chunks_it_wrote_last() -> None:
    m = mender()
    m.reporting.add(2)
    assert m.read_from(7, REPLICAS) == [REPLICAS[0], REPLICAS[2]]
    assert m.read_from(7, [REPLICAS[1]]) == [REPLICAS[1]]  # its replica alone: read from it all the same
    assert 7 not in m.pending  # (a chunk not to be compared is not pinned)


def test_a_server_is_read_from_again_once_its_report_is_taken_or_could_not_be() -> None:
    m = FannedMender(SimpleNamespace(master_since=time.monotonic(), live={}))  # type: ignore[arg-type]

    class Refusing:
        async def call(self, *args: Any, **kw: Any) -> Any:
            raise Unavailable("connection lost")

    server = SimpleNamespace(cs_id=2, features=frozenset({FEATURE_FANNED_REPORT}), unclean=True, conn=Refusing())
    m.reporting.add(2)
    asyncio.run(m.server_back(server))  # type: ignore[arg-type]
    assert m.reporting == set()


def test_a_chunk_in_two_batches_stays_pending_until_the_second_is_done() -> None:
    """A dead mount's chunks and a server's report after a power cut may name one chunk twice: the first
    batch's end must not let reads of it go anywhere while the second still waits to compare it."""
    m = mender()
    seen: list[dict[int, Any]] = []

    async def mend(chunk_ids: set[int], why: str) -> None:
        await asyncio.sleep(0)  # (the second batch comes meanwhile, and waits for this one)
        seen.append(dict(m.pending))

    m._mend = mend  # type: ignore[method-assign]

    async def both() -> None:
        first = asyncio.create_task(m.writer_gone({5, 6}))
        second = asyncio.create_task(m.writer_gone({6, 7}))
        await first
        seen.append(dict(m.pending))
        await second

    asyncio.run(both())
    assert seen == [{5: None, 6: None, 7: None}, {6: None, 7: None}, {6: None, 7: None}]
    assert m.pending == {} and m._batches == {}


def test_a_server_cut_again_while_its_chunks_are_compared_has_the_ones_done_compared_again(monkeypatch) -> None:
    """A probe: cut, back, cut again 1-2 s later, while the master still compared the chunks it named (one
    waiting for the server itself): those compared already were skipped at its second return, as still
    queued, and its replica kept the writes it lost the second time, for good (6 of 7 rounds)."""
    monkeypatch.setattr(fanned_mender, "MEND_RETRY", 0.01)
    chunk = SimpleNamespace(replicas=[1, 2, 3], version=5)  # (not a first version: compared whoever wrote it)
    mds = SimpleNamespace(master_since=time.monotonic(), live={}, log=SimpleNamespace(term=1),
                          store=SimpleNamespace(chunk=lambda chunk_id: chunk),
                          raft=SimpleNamespace(is_leader=lambda: True))
    m = FannedMender(mds)  # type: ignore[arg-type]
    compared: list[int] = []
    away = [True]  # chunk 2's comparison waits for the server, away again

    async def make_same(chunk_id: int) -> int:
        await asyncio.sleep(0)
        if chunk_id == 2 and away[0]:
            raise Unavailable("CS#1 not connected")
        compared.append(chunk_id)
        return 0

    class Reporting:
        async def call(self, *args: Any, **kw: Any) -> Any:
            return {"chunks": [1, 2]}, b""

    m.make_same = make_same  # type: ignore[method-assign]
    server = SimpleNamespace(cs_id=1, features=frozenset({FEATURE_FANNED_REPORT}), unclean=True, conn=Reporting())

    async def cut_twice() -> None:
        first = asyncio.create_task(m.server_back(server))  # type: ignore[arg-type]
        for _ in range(100):
            await asyncio.sleep(0.001)
            if compared == [1]:
                break
        second = asyncio.create_task(m.server_back(server))  # type: ignore[arg-type]  # back again
        await asyncio.sleep(0.02)
        away[0] = False
        await asyncio.gather(first, second)

    asyncio.run(cut_twice())
    assert sorted(compared) == [1, 1, 2]
    assert m.pending == {} and m._batches == {}


def test_no_chunk_is_compared_before_each_of_its_servers_back_from_a_power_cut_named_what_it_wrote_last() -> None:
    """A dead mount's chunk, compared once its servers are back: one of them back from a power cut, its report
    still to come, is not known yet to have lost writes, and must not be the one copied from."""
    chunk = SimpleNamespace(chunk_id=7, ino=1, index=0, replicas=[1, 2, 3], version=5)

    class Chunks:
        def lock(self, ino: int, index: int) -> contextlib.AbstractAsyncContextManager[None]:
            return contextlib.nullcontext()  # type: ignore[return-value]

        def holds(self, cs: int, chunk_id: int) -> bool:
            return True

    async def move_on(c: Any) -> Any:
        raise AssertionError("moved on, to be compared")

    mds = SimpleNamespace(store=SimpleNamespace(chunk=lambda chunk_id: chunk), chunks=Chunks(), move_on=move_on)
    m = FannedMender(mds)  # type: ignore[arg-type]
    m.reporting.add(2)
    with pytest.raises(Unavailable, match="CS 2 back from a power cut"):
        asyncio.run(m.make_same(7))
