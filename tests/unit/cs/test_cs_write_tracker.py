"""The source's half of a two-phase copy: the blocks of a replica written since the copy began.

The list must be exact: a block written after the copy read it and missing from the list
would leave the new replica with old bytes (the final CRC comparison would only catch it
when the CRC changed).  So every path that changes a replica's bytes notes it, and every
path that makes the replica anew ends the tracking.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from chunkfs.common.errors import NotFound, StaleVersion
from chunkfs.cs.chunk_store import ChunkStore
from chunkfs.cs.replicator import _runs
from chunkfs.cs.write_tracker import WriteTracker

MiB = 1 << 20
BS = 64 << 10
CID = 7


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ChunkStore]:
    s = ChunkStore(tmp_path, chunk_size=MiB, block_size=BS)
    s.create(CID, 1)
    yield s
    s.close()


def test_blocks_written_after_the_start_are_listed_once_each_in_order() -> None:
    t = WriteTracker(BS, MiB)
    t.wrote(CID, 0, 10)  # before the start: not listed
    token = t.start(CID)
    t.wrote(CID, 5 * BS - 1, 2)  # straddles blocks 4 and 5
    t.wrote(CID, 2 * BS, BS)  # exactly block 2
    t.wrote(CID, 2 * BS + 7, 1)
    t.wrote(CID + 1, 0, BS)  # another chunk
    t.wrote(CID, 3 * BS, 0)  # nothing
    assert t.take(CID, token) == [2, 4, 5]
    assert t.take(CID, token) is None  # taken: the tracking ended


def test_a_wrong_token_a_new_start_and_a_forgotten_chunk_give_nothing() -> None:
    t = WriteTracker(BS, MiB)
    first = t.start(CID)
    second = t.start(CID)  # another copy began: the first one's list is gone
    assert first != second
    assert t.take(CID, first) is None
    t.wrote(CID, 0, 1)
    t.forget(CID)
    assert t.take(CID, second) is None


def test_a_truncation_lists_every_block_from_the_cut() -> None:
    t = WriteTracker(BS, MiB)
    token = t.start(CID)
    t.truncated(CID, 14 * BS + 1)
    assert t.take(CID, token) == [14, 15]


def test_tracked_chunks_are_bounded_the_oldest_dropped() -> None:
    t = WriteTracker(BS, MiB, max_tracked=2)
    tokens = [t.start(c) for c in (1, 2, 3)]
    assert t.take(1, tokens[0]) is None
    assert t.take(2, tokens[1]) == [] and t.take(3, tokens[2]) == []


def test_the_store_notes_writes_and_truncations_and_forgets_a_replica_made_anew(store: ChunkStore) -> None:
    with pytest.raises(StaleVersion):
        store.track_writes(CID, 2)
    token = store.track_writes(CID, 1)
    store.write(CID, 1, 3 * BS + 100, b"x" * 200)
    store.truncate(CID, 1, 15 * BS)
    assert store.written_since(CID, token) == [3, 15]
    with pytest.raises(NotFound, match="not tracked"):
        store.written_since(CID, token)
    token = store.track_writes(CID, 1)
    store.set_version(CID, 1, 2)  # a new version is the same replica: still tracked
    store.write(CID, 2, 0, b"y")
    assert store.written_since(CID, token) == [0]
    token = store.track_writes(CID, 2)
    store.delete(CID)
    store.create(CID, 3)
    store.write(CID, 3, 0, b"z")
    with pytest.raises(NotFound):
        store.written_since(CID, token)


def test_block_runs_are_consecutive_and_bounded() -> None:
    assert _runs([], 4) == []
    assert _runs([0, 1, 2, 5, 6, 9], 4) == [(0, 3), (5, 2), (9, 1)]
    assert _runs(list(range(10)), 4) == [(0, 4), (4, 4), (8, 2)]
