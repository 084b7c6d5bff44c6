"""What a chunk server tells a new master: the chunks clients lately wrote to it alone (cs/recent_fans.py)."""

from __future__ import annotations

from chunkfs.cs.recent_fans import RecentFans


def test_the_chunks_noted_within_the_window_latest_first_and_at_most_the_bound() -> None:
    now = [100.0]
    fans = RecentFans(max_chunks=3, clock=lambda: now[0])
    fans.note(1)
    now[0] = 110.0
    fans.note(2)
    fans.note(3)
    now[0] = 120.0
    fans.note(2)  # again: its time moves on
    assert fans.since(30) == [2, 3, 1]
    assert fans.since(15) == [2, 3]
    assert fans.since(0) == [2]
    fans.note(4)  # past the bound: the one noted longest ago goes
    assert fans.since(1000) == [4, 2, 3]
