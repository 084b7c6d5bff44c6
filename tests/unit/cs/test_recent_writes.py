"""What a chunk server tells a new master of writers' recent writes (cs/recent_writes.py)."""

from __future__ import annotations

from chunkfs.cs.recent_writes import RecentWrites
from chunkfs.protocol.messages import FANNED_REPORT_WINDOW


def test_the_chunks_fanned_out_to_within_the_window_latest_first_and_at_most_the_bound() -> None:
    now = [100.0]
    recent = RecentWrites(max_chunks=3, clock=lambda: now[0])
    recent.fanned(1)
    now[0] = 110.0
    recent.fanned(2)
    recent.fanned(3)
    now[0] = 120.0
    recent.fanned(2)  # again: its time moves on
    assert recent.fanned_since(30) == [2, 3, 1]
    assert recent.fanned_since(15) == [2, 3]
    assert recent.fanned_since(0) == [2]
    recent.fanned(4)  # past the bound: the one noted longest ago goes
    assert recent.fanned_since(1000) == [4, 2, 3]


def test_how_far_writes_reached_each_chunk_before_a_moment_the_furthest_kept() -> None:
    now = [100.0]
    recent = RecentWrites(max_chunks=3, clock=lambda: now[0])
    recent.wrote(1, 4096)
    recent.wrote(1, 100)  # an earlier offset: the furthest end stays
    recent.wrote(2, 50)
    now[0] = 130.0
    recent.wrote(3, 7)
    assert recent.ends_between(60, 0) == [(3, 7), (2, 50), (1, 4096)]
    # Written in the last 20 s (since a new master's election): a live writer's, left out.
    assert recent.ends_between(60, 20) == [(2, 50), (1, 4096)]
    assert recent.ends_between(20, 0) == [(3, 7)]  # (older than the window: left out)
    recent.wrote(4, 1)  # past the bound: the one noted longest ago goes
    assert [chunk for chunk, _ in recent.ends_between(1000, 0)] == [4, 3, 2]
    assert recent.fanned_since(1000) == []  # (a write is not a fanned one)


def test_an_end_from_before_the_window_is_not_kept_by_a_later_write() -> None:
    now = [100.0]
    recent = RecentWrites(clock=lambda: now[0])
    recent.wrote(1, 4096)
    now[0] += FANNED_REPORT_WINDOW + 1  # (the file may have been cut since: that end says nothing now)
    recent.wrote(1, 10)
    assert recent.ends_between(FANNED_REPORT_WINDOW, 0) == [(1, 10)]


def test_a_chunk_written_again_below_its_furthest_end_is_still_named_with_that_end() -> None:
    """A fault probe: a live writer's appends after the election, below where a dead writer had written
    in the same chunk, hid the chunk from the report (its time was the live writer's), and the dead
    writer's bytes were never cut."""
    now = [100.0]
    recent = RecentWrites(clock=lambda: now[0])
    recent.wrote(1, 217_384)  # the dead writer's, before the election
    now[0] = 130.0
    recent.wrote(1, 1_100)  # a live writer's, after it
    assert recent.ends_between(60, 20) == [(1, 217_384)]
    recent.wrote(1, 300_000)  # taken further after the election: a live writer's, to commit
    assert recent.ends_between(60, 20) == []


def test_a_chunk_cut_is_named_with_no_end_past_the_cut() -> None:
    """A chunk cut (a truncation, a dead writer's trim) holds nothing past the cut: a next master told of
    the old end trimmed the file again for nothing, moving its chunks to new versions under live
    writers (a probe: up to 11 times a file, one per new master)."""
    now = [100.0]
    recent = RecentWrites(clock=lambda: now[0])
    recent.wrote(1, 8192)
    recent.wrote(2, 100)
    recent.cut(1, 100)
    recent.cut(2, 4096)  # (a cut past the end changes nothing)
    recent.cut(3, 0)  # (nor one of a chunk never written here)
    now[0] = 130.0
    assert recent.ends_between(60, 20) == [(2, 100), (1, 100)]


def test_the_writes_a_writer_sent_a_replica_alone_counted_from_its_making_and_only_then() -> None:
    recent = RecentWrites(max_chunks=2)
    recent.fanned(1)  # made before this server started: not known
    assert recent.fanned_writes(1) is None
    recent.born(2)
    assert recent.fanned_writes(2) == 0
    recent.fanned(2)
    recent.fanned(2)
    assert recent.fanned_writes(2) == 2
    recent.born(3)
    recent.fanned(3)
    recent.born(4)  # past the bound: the count noted longest ago (chunk 2's) is no longer known
    assert (recent.fanned_writes(2), recent.fanned_writes(3), recent.fanned_writes(4)) == (None, 1, 0)
