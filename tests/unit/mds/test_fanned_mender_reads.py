"""Reads of a chunk whose replicas are still to be compared go to one replica only (mds/fanned_mender.py)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

from chunkfs.common.errors import Unavailable
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
