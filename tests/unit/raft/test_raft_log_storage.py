"""Durable Raft log storage: round trips, truncation, torn tails, corruption, crashes."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chunkfs.raft import log_storage as ls
from chunkfs.raft.core import Entry, EntryKind, HardState, Snapshot
from chunkfs.raft.log_storage import LogCorruption, LogStorage


def ents(lo: int, hi: int, term: int = 1, size: int = 10) -> list[Entry]:
    return [Entry(term, i, EntryKind.NORMAL, bytes([i % 251]) * size) for i in range(lo, hi + 1)]


def reopen(path: Path, **kw: int) -> tuple[LogStorage, ls.Recovered]:
    return LogStorage.open(path, **kw)


def segs(path: Path) -> list[str]:
    return sorted(p.name for p in path.glob("log-*.seg"))


def test_round_trip_entries_and_hard_state(tmp_path: Path) -> None:
    st, rec = reopen(tmp_path)
    assert rec.entries == [] and rec.snapshot is None and rec.hard_state == HardState()
    st.append(ents(1, 5))
    st.append([Entry(2, 6, EntryKind.CONFIG, b"1,2,3")])
    st.set_hard_state(HardState(2, 3, 4))
    st.close()
    st, rec = reopen(tmp_path)
    assert rec.entries == ents(1, 5) + [Entry(2, 6, EntryKind.CONFIG, b"1,2,3")]
    assert rec.hard_state == HardState(2, 3, 4)
    assert rec.torn_bytes == 0
    assert st.last_index == 6


def test_truncates_conflicting_suffix_across_segments(tmp_path: Path) -> None:
    st, _ = reopen(tmp_path, segment_bytes=64)
    st.append(ents(1, 20))
    assert len(segs(tmp_path)) > 3
    st.append(ents(7, 9, term=2))
    assert st.last_index == 9
    st.append(ents(10, 11, term=2))
    st.close()
    _, rec = reopen(tmp_path, segment_bytes=64)
    assert rec.entries == ents(1, 6) + ents(7, 11, term=2)


def test_append_with_gap_is_refused(tmp_path: Path) -> None:
    st, _ = reopen(tmp_path)
    st.append(ents(1, 3))
    with pytest.raises(ls.InvalidArgument):
        st.append(ents(5, 6))


@pytest.mark.parametrize("cut", [1, 5, 8, 12])
def test_torn_tail_is_cut_and_log_stays_usable(tmp_path: Path, cut: int) -> None:
    st, _ = reopen(tmp_path)
    st.append(ents(1, 4))
    st.append(ents(5, 6))
    st.close()
    (seg,) = tmp_path.glob("log-*.seg")
    data = seg.read_bytes()
    end = sum(len(ls.encode_record(e)) for e in ents(1, 6))
    seg.write_bytes(data[:end - cut] + bytes(len(data) - end + cut))  # the last record was only partly written
    st, rec = reopen(tmp_path)
    assert rec.entries == ents(1, 5)
    assert rec.torn_bytes > 0
    st.append(ents(6, 7, term=2))
    st.close()
    _, rec = reopen(tmp_path)
    assert rec.entries == ents(1, 5) + ents(6, 7, term=2)


def test_zeros_after_the_records_end_the_log_and_appends_go_over_them(tmp_path: Path) -> None:
    st, _ = reopen(tmp_path)
    st.append(ents(1, 3))
    st.close()
    (seg,) = tmp_path.glob("log-*.seg")
    with open(seg, "ab") as f:
        f.write(b"\0" * 4096)  # written ahead, or the file grew and the data never reached the disk
    st, rec = reopen(tmp_path)
    assert rec.entries == ents(1, 3)
    assert rec.torn_bytes == 0
    st.append(ents(4, 5))
    st.close()
    _, rec = reopen(tmp_path)
    assert rec.entries == ents(1, 5)


def test_the_newest_segment_is_written_ahead_with_zeros_and_cut_to_its_records_at_a_roll(tmp_path: Path) -> None:
    """A sync of a file that does not grow flushes data only (no journal commit on ext4)."""
    st, _ = reopen(tmp_path, segment_bytes=4 * ls.PREALLOCATE)
    st.append(ents(1, 3))
    (seg,) = tmp_path.glob("log-*.seg")
    records = sum(len(ls.encode_record(e)) for e in ents(1, 3))
    assert seg.stat().st_size == records + ls.PREALLOCATE
    st.append(ents(4, 4))
    assert seg.stat().st_size == records + ls.PREALLOCATE  # the next record went over the zeros
    big = [Entry(1, 5, EntryKind.NORMAL, b"x" * (2 * ls.PREALLOCATE)), *ents(6, 7),
           Entry(1, 8, EntryKind.NORMAL, b"y" * (2 * ls.PREALLOCATE))]
    for e in big:
        st.append([e])  # past the zeros: more are written, never past segment_bytes
        assert records < seg.stat().st_size <= 4 * ls.PREALLOCATE or e.index == 8
    st.append(ents(9, 9))  # the first segment is full: a roll
    assert segs(tmp_path) == [seg.name, f"log-{9:020d}.seg"]
    assert seg.stat().st_size == sum(len(ls.encode_record(e)) for e in ents(1, 4) + big)
    st.close()
    _, rec = reopen(tmp_path, segment_bytes=4 * ls.PREALLOCATE)
    assert [e.index for e in rec.entries] == list(range(1, 10)) and rec.torn_bytes == 0


def test_corrupt_last_record_is_torn_tail(tmp_path: Path) -> None:
    st, _ = reopen(tmp_path)
    st.append(ents(1, 3))
    st.close()
    (seg,) = tmp_path.glob("log-*.seg")
    data = bytearray(seg.read_bytes())
    data[sum(len(ls.encode_record(e)) for e in ents(1, 3)) - 2] ^= 0xFF
    seg.write_bytes(bytes(data))
    _, rec = reopen(tmp_path)
    assert rec.entries == ents(1, 2)


def test_corruption_in_the_middle_raises(tmp_path: Path) -> None:
    st, _ = reopen(tmp_path)
    st.append(ents(1, 5))
    st.close()
    (seg,) = tmp_path.glob("log-*.seg")
    data = bytearray(seg.read_bytes())
    rec_len = len(ls.encode_record(ents(1, 1)[0]))
    data[2 * rec_len + 10] ^= 0x01  # a bit flip in the third record's body
    seg.write_bytes(bytes(data))
    with pytest.raises(LogCorruption):
        reopen(tmp_path)


def test_corruption_in_an_older_segment_raises(tmp_path: Path) -> None:
    st, _ = reopen(tmp_path, segment_bytes=64)
    st.append(ents(1, 12))
    st.close()
    first = tmp_path / segs(tmp_path)[0]
    data = bytearray(first.read_bytes())
    data[-3] ^= 0x10
    first.write_bytes(bytes(data))
    with pytest.raises(LogCorruption):
        reopen(tmp_path, segment_bytes=64)


def test_corrupt_hard_state_raises(tmp_path: Path) -> None:
    st, _ = reopen(tmp_path)
    st.set_hard_state(HardState(5, 1, 0))
    st.close()
    hs = tmp_path / ls.HARDSTATE_FILE
    data = bytearray(hs.read_bytes())
    data[-1] ^= 1
    hs.write_bytes(bytes(data))
    with pytest.raises(LogCorruption):
        reopen(tmp_path)


def test_compaction_removes_old_segments(tmp_path: Path) -> None:
    st, _ = reopen(tmp_path, segment_bytes=64)
    st.append(ents(1, 30))
    before = segs(tmp_path)
    snap = Snapshot(20, 1, (1, 2, 3), b"state@20")
    st.compact(snap)
    after = segs(tmp_path)
    assert len(after) < len(before)
    st.append(ents(31, 32))
    st.close()
    _, rec = reopen(tmp_path, segment_bytes=64)
    assert rec.snapshot == snap
    assert rec.entries == ents(21, 32)


def test_compaction_of_everything_then_append(tmp_path: Path) -> None:
    st, _ = reopen(tmp_path)
    st.append(ents(1, 5))
    st.compact(Snapshot(5, 1, (1,), b"s"))
    assert segs(tmp_path) == []
    st.append(ents(6, 7))
    st.close()
    _, rec = reopen(tmp_path)
    assert rec.entries == ents(6, 7) and rec.snapshot == Snapshot(5, 1, (1,), b"s")


def test_install_snapshot_replaces_log(tmp_path: Path) -> None:
    st, _ = reopen(tmp_path)
    st.append(ents(1, 5))
    snap = Snapshot(40, 3, (1, 2), b"x" * 1000)
    st.install_snapshot(snap)
    st.append(ents(41, 42, term=3))
    st.close()
    _, rec = reopen(tmp_path)
    assert rec.snapshot == snap and rec.entries == ents(41, 42, term=3)


def test_leftover_temp_file_is_ignored(tmp_path: Path) -> None:
    st, _ = reopen(tmp_path)
    st.set_hard_state(HardState(3, 2, 1))
    st.close()
    (tmp_path / (ls.HARDSTATE_FILE + ".tmp")).write_bytes(b"half-writ")
    _, rec = reopen(tmp_path)
    assert rec.hard_state == HardState(3, 2, 1)
    assert not list(tmp_path.glob("*.tmp"))


# ---------------------------------------------------------------- crash points


class Crash(Exception):
    pass


@pytest.fixture
def crash_after(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[int], None]]:
    """Make the n-th durable file-system step (write/fsync/rename/unlink/truncate) 'crash'.

    Data written before the crash stays visible (as if it reached the disk),
    which is the harder case for recovery: half-finished operations are seen.
    """
    state = {"left": -1}
    real = {
        "pwrite": os.pwrite, "write": os.write, "fsync": os.fsync, "fdatasync": os.fdatasync, "replace": os.replace,
        "ftruncate": os.ftruncate,
    }
    real_unlink = Path.unlink

    def step() -> None:
        if state["left"] == 0:
            raise Crash
        if state["left"] > 0:
            state["left"] -= 1

    def wrap(name: str) -> Callable[..., object]:
        def f(*a: object, **k: object) -> object:
            step()
            return real[name](*a, **k)
        return f

    for name in real:
        monkeypatch.setattr(ls.os, name, wrap(name))

    def unlink(self: Path, missing_ok: bool = False) -> None:
        step()
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)

    def arm(n: int) -> None:
        state["left"] = n

    yield arm
    state["left"] = -1


def _check_consistent(rec: ls.Recovered) -> None:
    expected = (rec.snapshot.index if rec.snapshot else 0) + 1
    for e in rec.entries:
        assert e.index == expected
        expected += 1


@pytest.mark.parametrize("op", ["truncating_append", "compact", "install_snapshot", "hard_state", "roll"])
def test_crash_between_steps_recovers_old_or_new(
    tmp_path: Path, op: str, crash_after: Callable[[int], None]
) -> None:
    base = tmp_path / "base"
    st, _ = reopen(base, segment_bytes=80)
    st.append(ents(1, 12))
    st.set_hard_state(HardState(1, 1, 6))
    st.close()
    old = ents(1, 12)

    def run(s: LogStorage) -> None:
        if op == "truncating_append":
            s.append(ents(5, 8, term=2))
        elif op == "compact":
            s.compact(Snapshot(9, 1, (1, 2, 3), b"s9"))
        elif op == "install_snapshot":
            s.install_snapshot(Snapshot(30, 4, (1, 2, 3), b"s30"))
        elif op == "hard_state":
            s.set_hard_state(HardState(2, 3, 12))
        else:
            s.append(ents(13, 30))

    crashes = 0
    for n in range(200):
        work = tmp_path / f"w{n}"
        shutil.copytree(base, work)
        s, _ = reopen(work, segment_bytes=80)
        crash_after(n)
        try:
            run(s)
        except Crash:
            crashes += 1
            crash_after(-1)
            s.close()
        else:
            crash_after(-1)
            s.close()
            _, rec = reopen(work, segment_bytes=80)
            _check_consistent(rec)
            break
        s2, rec = reopen(work, segment_bytes=80)
        _check_consistent(rec)
        if op == "truncating_append":
            # A prefix of the old log (never beyond the conflict point lost more than the suffix),
            # possibly followed by some of the new entries.
            assert [e for e in rec.entries if e.index < 5] == old[:4]
            assert all(e.term == 2 for e in rec.entries if e.index >= 5) or \
                rec.entries == old[: len(rec.entries)]
        elif op == "compact":
            assert rec.snapshot in (None, Snapshot(9, 1, (1, 2, 3), b"s9"))
            assert rec.entries[-1] == old[-1]  # nothing after the snapshot is lost
        elif op == "install_snapshot":
            if rec.snapshot is None:
                assert rec.entries == old[: len(rec.entries)] and len(rec.entries) >= 6
            else:
                assert rec.entries == []  # old entries do not continue the new snapshot
        elif op == "hard_state":
            assert rec.hard_state in (HardState(1, 1, 6), HardState(2, 3, 12))
        else:
            assert rec.entries[:12] == old
        # Whatever survived, the storage accepts the operation again after the crash.
        run(s2)
        s2.close()
        _, rec = reopen(work, segment_bytes=80)
        _check_consistent(rec)
    assert crashes > 0
