"""Which replica a mount reads a chunk from (client/chunk_io.py, `ChunkIO.read_order`)."""

from __future__ import annotations

import time
from collections import Counter
from types import SimpleNamespace
from typing import Any

from chunkfs.client.chunk_io import ChunkIO, ChunkMap

REPLICAS = ((1, "127.0.0.1:1"), (2, "127.0.0.1:2"), (3, "127.0.0.1:3"))


def chunk(chunk_id: int, replicas: tuple[tuple[int, str], ...] = REPLICAS) -> ChunkMap:
    return ChunkMap(chunk_id, 7, replicas)


def mount() -> ChunkIO:
    client: Any = SimpleNamespace(chunk_size=64 << 20)  # read_order needs nothing else of the client
    return ChunkIO(client)


def test_a_chunk_is_read_from_the_same_replica_first_and_every_replica_is_tried() -> None:
    io = mount()
    for chunk_id in range(1, 50):
        order = io.read_order(chunk(chunk_id))
        assert sorted(order) == sorted(REPLICAS)
        assert all(io.read_order(chunk(chunk_id)) == order for _ in range(5))


def test_chunks_and_mounts_start_at_different_replicas() -> None:
    io = mount()
    firsts = Counter(io.read_order(chunk(c))[0][0] for c in range(1, 301))
    assert set(firsts) == {1, 2, 3} and min(firsts.values()) == 100
    per_mount = {mount().read_order(chunk(5))[0] for _ in range(60)}
    assert len(per_mount) > 1


def test_one_or_no_replica() -> None:
    io = mount()
    assert io.read_order(chunk(3, REPLICAS[:1])) == [REPLICAS[0]]
    assert io.read_order(chunk(3, ())) == []


def test_a_replica_on_this_machine_comes_first_and_the_others_keep_their_turn() -> None:
    io = mount()
    plain = {c: io.read_order(chunk(c)) for c in range(1, 60)}
    io.local.is_local = lambda addr: addr == "127.0.0.1:2"  # type: ignore[method-assign]
    io.local.found_any = lambda: True  # type: ignore[method-assign]
    for c, before in plain.items():
        order = io.read_order(chunk(c))
        assert order[0] == REPLICAS[1]
        assert order[1:] == [r for r in before if r != REPLICAS[1]]


def test_a_replica_that_did_not_answer_comes_last_for_a_while_and_the_others_keep_their_turn() -> None:
    io = mount()
    plain = {c: io.read_order(chunk(c)) for c in range(1, 60)}
    io._unanswered[REPLICAS[0][1]] = time.monotonic() + 30  # a read or connect to CS#1 given up
    for c, before in plain.items():
        assert io.read_order(chunk(c)) == [r for r in before if r != REPLICAS[0]] + [REPLICAS[0]]
    io._unanswered[REPLICAS[0][1]] = time.monotonic() - 0.001  # some time later: its turn again
    assert all(io.read_order(chunk(c)) == before for c, before in plain.items())
    assert io._unanswered == {}
