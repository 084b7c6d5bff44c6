"""Which writer may send a chunk's small writes to every replica at once (mds/fan_grants.py)."""

from __future__ import annotations

from chunkfs.mds.fan_grants import FanGrants, first_version
from chunkfs.mds.store import VERSION_TERM_SHIFT, Chunk


def chunk(version: int, chunk_id: int = 7) -> Chunk:
    return Chunk(chunk_id, 2, 0, version, (1, 2, 3))


FIRST = 3 << VERSION_TERM_SHIFT  # allocated in term 3
MOVED = FIRST | 5  # any later version: a replica change, a cut, a second writer


def test_only_the_version_a_chunk_was_allocated_at_is_a_first_version() -> None:
    assert first_version(chunk(FIRST))
    assert not first_version(chunk(MOVED))


def test_the_allocating_writer_alone_may_fan_out_and_anyone_else_moves_the_chunk_first() -> None:
    grants, mine, other = FanGrants(), object(), object()
    assert grants.give(chunk(FIRST), mine)
    assert grants.holds(chunk(FIRST), mine) and not grants.must_move(chunk(FIRST), mine)
    assert not grants.holds(chunk(FIRST), other) and grants.must_move(chunk(FIRST), other)


def test_a_chunk_at_a_later_version_is_fanned_out_by_no_one_and_needs_no_move() -> None:
    grants, mine = FanGrants(), object()
    assert not grants.give(chunk(MOVED), mine)
    grants.give(chunk(FIRST), mine)
    assert not grants.holds(chunk(MOVED), mine)  # the grant was for the first version only
    assert not grants.must_move(chunk(MOVED), mine) and not grants.must_move(chunk(MOVED), object())


def test_a_first_version_nobody_here_granted_is_moved_for_any_writer() -> None:
    """A new master, or a grant the table's bound pushed out: someone may be fanning out at that version."""
    grants, mine = FanGrants(max_grants=2), object()
    assert grants.must_move(chunk(FIRST), mine)
    for chunk_id in (1, 2, 3):
        grants.give(chunk(FIRST, chunk_id), mine)
    assert len(grants) == 2 and grants.must_move(chunk(FIRST, 1), mine)  # the oldest went first
    assert grants.holds(chunk(FIRST, 3), mine)
    grants.clear()
    assert grants.must_move(chunk(FIRST, 3), mine)


def test_a_writer_that_leaves_without_a_word_leaves_every_chunk_it_fanned_out_to_to_mend() -> None:
    grants, mine, other = FanGrants(max_per_writer=2), object(), object()
    grants.give(chunk(FIRST, 1), mine)
    grants.give(chunk(FIRST, 2), mine)
    grants.forget(2)  # moved on (a second writer): a write of its may still be on some replicas only
    assert not grants.give(chunk(FIRST, 3), mine)  # past its bound: its new chunks go down the chain
    grants.give(chunk(FIRST, 4), other)
    assert grants.writer_gone(mine) == {1, 2}
    assert grants.writer_gone(mine) == set()  # (once)
    grants.writer_done(other)  # ended its session: its writes were all answered
    assert grants.writer_gone(other) == set()
