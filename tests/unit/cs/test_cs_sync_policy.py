"""Which replica syncs run on the chunk server's event loop (cs/sync_policy.py)."""

from __future__ import annotations

from chunkfs.cs.sync_policy import INLINE_SYNC_MAX, INLINE_SYNC_S, SyncPolicy


def test_a_sync_after_small_writes_runs_on_the_loop_and_its_count_starts_again() -> None:
    p = SyncPolicy()
    p.wrote(7, 4096)
    p.wrote(7, 4096)
    assert p.sync_inline(7)
    assert not p.sync_inline(7), "nothing counted since that sync: not known to be small"
    p.wrote(7, INLINE_SYNC_MAX)
    assert p.sync_inline(7)


def test_a_sync_after_much_data_or_of_an_uncounted_chunk_runs_in_a_thread() -> None:
    p = SyncPolicy()
    p.wrote(1, INLINE_SYNC_MAX)
    p.wrote(1, 1)
    assert not p.sync_inline(1)
    assert not p.sync_inline(2), "never written through this server: its dirty data is unknown"


def test_a_slow_last_sync_sends_the_next_ones_to_a_thread_until_one_is_quick() -> None:
    p = SyncPolicy()
    p.synced(INLINE_SYNC_S * 5)
    p.wrote(3, 4096)
    assert not p.sync_inline(3)
    p.synced(INLINE_SYNC_S / 10)
    p.wrote(3, 4096)
    assert p.sync_inline(3)


def test_the_table_of_counted_chunks_is_bounded() -> None:
    p = SyncPolicy(max_tracked=2)
    for chunk in (1, 2, 3):
        p.wrote(chunk, 4096)
    assert len(p.unsynced) == 2
    p.wrote(1, 4096)  # a counted chunk goes on being counted
    assert p.unsynced[1] == 8192
    assert not p.sync_inline(3)
    assert p.sync_inline(1)
