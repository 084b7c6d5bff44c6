"""Tests of the chunk server's on-disk replica store."""

from __future__ import annotations

import asyncio
import errno
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chunkfs.common.checksum import crc32c
from chunkfs.common.errors import (
    ChecksumMismatch,
    ConfigError,
    Exists,
    InvalidArgument,
    NoSpace,
    NotFound,
    StaleVersion,
)
from chunkfs.cs.chunk_store import HEADER_SIZE, MAGIC, ChunkStore, replica_name
from chunkfs.cs.scrubber import Scrubber

MiB = 1024 * 1024
BS = 64 * 1024
CID = 0x1234_5678_9ABC_DEF0


def pattern(n: int, seed: int = 1) -> bytes:
    """Deterministic non-zero bytes, so misplaced data shows up."""
    return bytes((i * 31 + seed) % 251 + 1 for i in range(n))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ChunkStore]:
    s = ChunkStore(tmp_path, chunk_size=MiB, block_size=BS)
    yield s
    s.close()


def replica_path(store: ChunkStore, chunk_id: int, version: int) -> Path:
    return store.root / "chunks" / f"{chunk_id & 0xFF:02x}" / replica_name(chunk_id, version)


def flip_bit(path: Path, pos: int, mask: int = 0x10) -> None:
    with open(path, "r+b") as f:
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ mask]))


def test_layout_and_header(store: ChunkStore) -> None:
    store.create(CID, 7)
    path = replica_path(store, CID, 7)
    assert path.name == "123456789abcdef0_0000000000000007.chunk"
    assert path.parent.name == "f0"
    raw = path.read_bytes()
    assert raw.startswith(MAGIC)
    assert store.data_offset == HEADER_SIZE + 4096
    assert len(raw) == store.data_offset  # data region is not written at all
    assert (store.root / "quarantine").is_dir()
    assert store.block_checksums(CID, 7) == [crc32c(bytes(BS))] * (MiB // BS)


def test_round_trip_unaligned(store: ChunkStore) -> None:
    store.create(CID, 1)
    data = pattern(3 * BS + 1234)
    offset = BS // 2 + 17
    store.write(CID, 1, offset, data)
    assert store.read(CID, 1, offset, len(data)) == data
    # Sub-ranges crossing block edges, and neighbours that must still be zero.
    assert store.read(CID, 1, offset + 100, 2 * BS) == data[100 : 100 + 2 * BS]
    assert store.read(CID, 1, 0, offset) == bytes(offset)
    tail = offset + len(data)
    assert store.read(CID, 1, tail, MiB - tail) == bytes(MiB - tail)
    # Overwrite inside one block, preserving both sides.
    store.write(CID, 1, offset + 10, b"xyz")
    expected = bytearray(data)
    expected[10:13] = b"xyz"
    assert store.read(CID, 1, offset, len(data)) == bytes(expected)
    assert store.verify(CID)


def test_write_accepts_memoryview_and_aligned(store: ChunkStore) -> None:
    store.create(CID, 1)
    buf = bytearray(pattern(2 * BS))
    store.write(CID, 1, BS, memoryview(buf), sync=True)
    assert store.read(CID, 1, BS, 2 * BS) == bytes(buf)
    assert store.read(CID, 1, 0, 0) == b""


def test_unwritten_reads_zero(store: ChunkStore) -> None:
    store.create(CID, 1)
    assert store.read(CID, 1, 0, MiB) == bytes(MiB)
    assert store.read(CID, 1, 12345, 99) == bytes(99)


def test_file_stays_sparse(tmp_path: Path) -> None:
    with ChunkStore(tmp_path, chunk_size=4 * MiB, block_size=BS) as s:
        s.create(CID, 1)
        s.write(CID, 1, 2 * MiB, pattern(BS), sync=True)
        st_ = replica_path(s, CID, 1).stat()
        assert st_.st_blocks * 512 <= 256 * 1024
        assert s.used_bytes() == st_.st_blocks * 512
        total, free = s.space()
        assert total > 0 and 0 <= free <= total


def test_bounds(store: ChunkStore) -> None:
    store.create(CID, 1)
    for offset, length in [(-1, 1), (0, MiB + 1), (MiB, 1), (MiB - 10, 11), (0, -1)]:
        with pytest.raises(InvalidArgument):
            store.read(CID, 1, offset, length)
    with pytest.raises(InvalidArgument):
        store.write(CID, 1, MiB - 1, b"ab")
    with pytest.raises(InvalidArgument):
        store.write(CID, 1, -1, b"a")
    with pytest.raises(InvalidArgument):
        store.truncate(CID, 1, MiB + 1)
    store.write(CID, 1, MiB - 2, b"ab")
    assert store.read(CID, 1, MiB - 2, 2) == b"ab"


def test_bad_geometry_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        ChunkStore(tmp_path, chunk_size=MiB, block_size=1000)
    with pytest.raises(ConfigError):
        ChunkStore(tmp_path, chunk_size=MiB + BS // 2, block_size=BS)


def test_versions(store: ChunkStore) -> None:
    with pytest.raises(NotFound):
        store.read(CID, 1, 0, 1)
    store.create(CID, 5)
    store.create(CID, 5)  # idempotent
    with pytest.raises(Exists):
        store.create(CID, 6)
    with pytest.raises(StaleVersion):
        store.read(CID, 4, 0, 1)
    with pytest.raises(StaleVersion):
        store.write(CID, 6, 0, b"x")
    with pytest.raises(StaleVersion):
        store.set_version(CID, 4, 9)
    store.write(CID, 5, 0, b"hello")
    store.set_version(CID, 5, 9)
    store.set_version(CID, 5, 9)  # idempotent retry
    assert store.version_of(CID) == 9
    assert not replica_path(store, CID, 5).exists()
    assert replica_path(store, CID, 9).exists()
    with pytest.raises(StaleVersion):
        store.read(CID, 5, 0, 5)
    assert store.read(CID, 9, 0, 5) == b"hello"
    with pytest.raises(InvalidArgument):
        store.set_version(CID, 9, 3)
    with pytest.raises(NotFound):
        store.set_version(CID + 1, 1, 2)


def test_reopen(tmp_path: Path) -> None:
    with ChunkStore(tmp_path, chunk_size=MiB, block_size=BS) as s:
        for i in range(5):
            s.create(i * 257, i + 1)
            s.write(i * 257, i + 1, i * 1000, pattern(5000, seed=i))
        s.set_version(0, 1, 42)
        s.delete(257)
        s.delete(257)  # absent is fine
    with ChunkStore(tmp_path, chunk_size=MiB, block_size=BS) as s:
        assert s.list_replicas() == [(0, 42), (2 * 257, 3), (3 * 257, 4), (4 * 257, 5)]
        assert s.version_of(257) is None
        assert s.read(0, 42, 0, 5000) == pattern(5000, seed=0)
        assert s.read(3 * 257, 4, 3000, 5000) == pattern(5000, seed=3)


def test_a_batch_of_deletions_forgets_and_removes_each(tmp_path: Path) -> None:
    with ChunkStore(tmp_path, chunk_size=MiB, block_size=BS) as s:
        for chunk_id in (0x100, 0x200, 0x300, 1):
            s.create(chunk_id, 7)
        s.write(0x200, 7, 0, b"x" * BS)
        s.delete_many([0x100, 0x200, 1, 0x999])  # one never held: no error
        assert s.version_of(0x200) is None
        with pytest.raises(NotFound):
            s.write(0x200, 7, 0, b"y" * BS)  # refused at once: the writer asks the master again
        assert not any(any(s._dir_for(c).glob(f"{c:016x}_*")) for c in (0x100, 0x200, 1))
    with ChunkStore(tmp_path, chunk_size=MiB, block_size=BS) as s:
        assert s.list_replicas() == [(0x300, 7)]


def test_reopen_with_other_geometry_refused(tmp_path: Path) -> None:
    with ChunkStore(tmp_path, chunk_size=MiB, block_size=BS) as s:
        s.create(CID, 1)
    with ChunkStore(tmp_path, chunk_size=2 * MiB, block_size=BS) as s, pytest.raises(ConfigError):
        s.read(CID, 1, 0, 1)


def test_duplicate_versions_keep_highest(tmp_path: Path) -> None:
    with ChunkStore(tmp_path, chunk_size=MiB, block_size=BS) as s:
        s.create(CID, 3)
        s.write(CID, 3, 0, b"old")
        s.set_version(CID, 3, 4)
        s.write(CID, 4, 0, b"new")
        s.create(CID + 1, 1)
        d = replica_path(s, CID, 4).parent
    # Simulate a crash that left two files for one chunk and a half-made temp file.
    (d / replica_name(CID, 2)).write_bytes((d / replica_name(CID, 4)).read_bytes())
    (d / ".leftover.tmp").write_bytes(b"junk")
    (d / "README").write_text("not a replica")
    with ChunkStore(tmp_path, chunk_size=MiB, block_size=BS) as s:
        assert s.list_replicas() == [(CID, 4), (CID + 1, 1)]
        assert s.read(CID, 4, 0, 3) == b"new"
    assert not (d / replica_name(CID, 2)).exists()
    assert not (d / ".leftover.tmp").exists()
    assert (d / "README").exists()  # unknown files are left alone


def test_corruption_detected(store: ChunkStore) -> None:
    store.create(CID, 1)
    data = pattern(4 * BS)
    store.write(CID, 1, 0, data)
    store.close()
    s = ChunkStore(store.root, chunk_size=MiB, block_size=BS)
    path = replica_path(s, CID, 1)
    flip_bit(path, s.data_offset + 2 * BS + 100)
    with pytest.raises(ChecksumMismatch) as info:
        s.read(CID, 1, 2 * BS, 10)
    assert info.value.context["block"] == 2
    assert info.value.context["chunk_id"] == CID
    assert "block 2" in str(info.value)
    # Blocks that are fine still read.
    assert s.read(CID, 1, 0, 2 * BS) == data[: 2 * BS]
    assert s.read(CID, 1, 3 * BS, BS) == data[3 * BS :]
    assert not s.verify(CID)
    # A partial write into the corrupt block does not launder it with a fresh CRC: it stays bad.
    s.write(CID, 1, 2 * BS + 5, b"abc")
    s.write(CID, 1, 5, pattern(2 * BS))  # corrupt block 2 is the tail edge
    assert s.bad_blocks(CID) == [2]
    with pytest.raises(ChecksumMismatch):
        s.read(CID, 1, 2 * BS, 10)
    with pytest.raises(ChecksumMismatch):
        s.truncate(CID, 1, 2 * BS + 7)
    assert not s.verify(CID)
    # A full-block overwrite replaces the bad data legitimately.
    s.write(CID, 1, 2 * BS, pattern(BS, seed=9))
    assert s.verify(CID)
    s.close()


def test_bad_blocks_lists_every_bad_block_and_repair_replaces_only_those(store: ChunkStore) -> None:
    store.create(CID, 1)
    data = pattern(8 * BS)
    store.write(CID, 1, 0, data)
    path = replica_path(store, CID, 1)
    flip_bit(path, store.data_offset + 2 * BS + 100)
    flip_bit(path, store.data_offset + 5 * BS)
    flip_bit(path, HEADER_SIZE + 4 * 7)  # the CRC entry of block 7: the block reads as bad too
    assert store.bad_blocks(CID) == [2, 5, 7]
    assert not store.verify(CID)
    # The good blocks stay readable meanwhile.
    assert store.read(CID, 1, 0, 2 * BS) == data[:2 * BS]
    assert store.read(CID, 1, 3 * BS, 2 * BS) == data[3 * BS:5 * BS]
    for block in (2, 5, 7):
        assert store.repair_block(CID, 1, block, data[block * BS:(block + 1) * BS])
    assert store.bad_blocks(CID) == []
    assert store.read(CID, 1, 0, 8 * BS) == data
    # The bad bytes were kept, one file per block, never thrown away.
    saved = sorted(p.name for p in (store.root / "quarantine").iterdir())
    assert saved == [f"{replica_name(CID, 1)}.block{b}" for b in (2, 5, 7)]
    bad2 = (store.root / "quarantine" / saved[0]).read_bytes()
    assert len(bad2) == BS and bad2 != data[2 * BS:3 * BS]
    assert sum(x != y for x, y in zip(bad2, data[2 * BS:3 * BS], strict=True)) == 1


def test_repair_keeps_a_block_rewritten_since_the_copy_was_fetched(store: ChunkStore) -> None:
    store.create(CID, 1)
    store.write(CID, 1, 0, pattern(2 * BS))
    flip_bit(replica_path(store, CID, 1), store.data_offset + BS + 9)
    stale_copy = pattern(BS)  # what another replica held before the overwrite below
    newer = pattern(BS, seed=7)
    store.write(CID, 1, BS, newer)  # a whole-block write replaces the bad block legitimately
    assert not store.repair_block(CID, 1, 1, stale_copy)
    assert store.read(CID, 1, BS, BS) == newer
    assert not (store.root / "quarantine").exists() or not list((store.root / "quarantine").iterdir())


def test_repair_checks_its_arguments(store: ChunkStore) -> None:
    store.create(CID, 3)
    with pytest.raises(InvalidArgument):
        store.repair_block(CID, 3, 0, b"short")
    with pytest.raises(InvalidArgument):
        store.repair_block(CID, 3, store.n_blocks, bytes(BS))
    with pytest.raises(StaleVersion):
        store.repair_block(CID, 2, 0, bytes(BS))


def test_take_blocks_makes_the_checksums_of_failing_blocks_anew_and_leaves_the_rest(store: ChunkStore) -> None:
    """What a power cut left of an unsynced write (its bytes on the disk, the block's checksum not): taken."""
    store.create(CID, 1)
    data = pattern(4 * BS)
    store.write(CID, 1, 0, data, sync=True)
    path = replica_path(store, CID, 1)
    with open(path, "r+b") as fh:
        fh.seek(store.data_offset + 2 * BS + 10)
        fh.write(b"torn")
    torn = data[:2 * BS + 10] + b"torn" + data[2 * BS + 14:]
    with pytest.raises(ChecksumMismatch):
        store.read(CID, 1, 2 * BS, BS)
    before = store.block_checksums(CID, 1)
    assert store.take_blocks(CID, 1, [1, 2, 3]) == [2]  # blocks 1 and 3 did not fail: left as they were
    assert store.bad_blocks(CID) == []
    assert store.read(CID, 1, 0, 4 * BS) == torn
    after = store.block_checksums(CID, 1)
    assert after[2] == crc32c(torn[2 * BS:3 * BS]) != before[2]
    assert after[:2] + after[3:] == before[:2] + before[3:]
    assert store.take_blocks(CID, 1, [2]) == []  # taken once: nothing fails any more
    with pytest.raises(InvalidArgument):
        store.take_blocks(CID, 1, [store.n_blocks])
    with pytest.raises(StaleVersion):
        store.take_blocks(CID, 2, [0])


def test_a_corrupt_header_makes_bad_blocks_raise(store: ChunkStore) -> None:
    store.create(CID, 1)
    store.close()
    s = ChunkStore(store.root, chunk_size=MiB, block_size=BS)
    flip_bit(replica_path(s, CID, 1), 20)
    with pytest.raises(ChecksumMismatch, match="header"):
        s.bad_blocks(CID)
    with pytest.raises(NotFound):
        s.bad_blocks(CID + 1)
    s.close()


def test_a_header_corrupted_while_the_replica_is_open_is_found(store: ChunkStore) -> None:
    store.create(CID, 1)
    store.write(CID, 1, 0, b"x")  # the descriptor is now cached: no open will check the header again
    flip_bit(replica_path(store, CID, 1), 3)
    assert not store.verify(CID)
    with pytest.raises(ChecksumMismatch, match="header"):
        store.bad_blocks(CID)


def test_corrupt_crc_table_and_header(store: ChunkStore) -> None:
    store.create(CID, 1)
    store.create(CID + 1, 1)
    store.close()
    s = ChunkStore(store.root, chunk_size=MiB, block_size=BS)
    flip_bit(replica_path(s, CID, 1), HEADER_SIZE + 4 * 3)  # CRC of block 3
    flip_bit(replica_path(s, CID + 1, 1), 20)  # header
    assert not s.verify(CID)
    with pytest.raises(ChecksumMismatch):
        s.read(CID, 1, 3 * BS, 1)
    assert not s.verify(CID + 1)
    with pytest.raises(ChecksumMismatch):
        s.read(CID + 1, 1, 0, 1)
    s.close()


def test_quarantine(store: ChunkStore) -> None:
    store.create(CID, 1)
    store.write(CID, 1, 0, b"data")
    dest = store.quarantine(CID)
    assert dest.parent == store.root / "quarantine"
    assert dest.exists()
    assert not replica_path(store, CID, 1).exists()
    assert store.version_of(CID) is None
    with pytest.raises(NotFound):
        store.read(CID, 1, 0, 1)
    with pytest.raises(NotFound):
        store.quarantine(CID)
    # A second quarantine of the same name does not overwrite the first.
    store.create(CID, 1)
    dest2 = store.quarantine(CID)
    assert dest2 != dest and dest.exists() and dest2.exists()
    store.close()
    with ChunkStore(store.root, chunk_size=MiB, block_size=BS) as s:
        assert s.list_replicas() == []


def test_truncate(store: ChunkStore) -> None:
    store.create(CID, 1)
    data = pattern(MiB)
    store.write(CID, 1, 0, data)
    path = replica_path(store, CID, 1)
    store.truncate(CID, 1, 3 * BS + 100)
    assert store.read(CID, 1, 0, 3 * BS + 100) == data[: 3 * BS + 100]
    assert store.read(CID, 1, 3 * BS + 100, MiB - 3 * BS - 100) == bytes(MiB - 3 * BS - 100)
    assert store.verify(CID)
    assert path.stat().st_size == store.data_offset + 4 * BS
    assert path.stat().st_blocks * 512 <= store.data_offset + 4 * BS + 64 * 1024
    # Writing past the truncation point again works and leaves a zero gap.
    store.write(CID, 1, 10 * BS, b"z" * 10)
    assert store.read(CID, 1, 4 * BS, 6 * BS) == bytes(6 * BS)
    store.truncate(CID, 1, 0)
    assert store.read(CID, 1, 0, MiB) == bytes(MiB)
    assert store.block_checksums(CID, 1) == [store.zero_crc] * store.n_blocks
    store.truncate(CID, 1, MiB)  # no-op
    assert store.verify(CID)


def test_no_space_reported_and_old_data_intact(store: ChunkStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.create(CID, 1)
    store.write(CID, 1, 0, pattern(2 * BS))

    def full(fd: int, pos: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(NoSpace) as info:
        store.write(CID, 1, 100, b"q" * (3 * BS))
    assert "no space" in str(info.value)
    monkeypatch.undo()
    assert store.read(CID, 1, 0, 2 * BS) == pattern(2 * BS)
    assert store.verify(CID)


def test_no_space_for_any_piece_leaves_every_piece_unwritten(
    store: ChunkStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.create(CID, 1)
    store.write(CID, 1, 0, pattern(2 * BS))
    real = os.posix_fallocate

    def full_past_block_2(fd: int, pos: int, length: int) -> None:
        if pos >= store.data_offset + 2 * BS:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, pos, length)

    monkeypatch.setattr(os, "posix_fallocate", full_past_block_2)
    with pytest.raises(NoSpace):  # block 3 was never written: its space is reserved first, and there is none
        store.write_pieces(CID, 1, [(10, b"a" * 100), (3 * BS + 5, b"b" * 100)])
    monkeypatch.undo()
    assert store.read(CID, 1, 0, 4 * BS) == pattern(2 * BS) + bytes(2 * BS)  # not even the first piece
    assert store.verify(CID)


def test_a_block_reserved_once_is_not_reserved_again_until_cut_away(
    store: ChunkStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.create(CID, 1)
    calls: list[tuple[int, int]] = []
    real = os.posix_fallocate

    def counted(fd: int, pos: int, length: int) -> None:
        calls.append((pos - store.data_offset, length))
        real(fd, pos, length)

    monkeypatch.setattr(os, "posix_fallocate", counted)
    store.write(CID, 1, BS + 100, b"x" * 10)
    assert calls == [(BS, BS)]  # the whole block
    store.write(CID, 1, BS + 4000, b"y" * 10)
    store.write_pieces(CID, 1, [(BS, b"z"), (2 * BS - 1, b"w")])
    assert calls == [(BS, BS)]  # nothing new to reserve
    store.write(CID, 1, BS - 5, b"v" * 10)  # across blocks 0 and 1: block 0 is new
    assert calls == [(BS, BS), (0, 2 * BS)]
    store.truncate(CID, 1, BS // 2)  # block 1 freed
    store.write(CID, 1, BS + 1, b"u")
    assert calls[-1] == (BS, BS)
    expected = bytearray(2 * BS)  # all that was written before lay past the cut
    expected[BS + 1] = ord("u")
    assert store.read(CID, 1, 0, 2 * BS) == expected
    assert store.verify(CID)


def test_pieces_over_a_corrupt_block_are_written_and_leave_it_bad_and_the_rest_verifiable(store: ChunkStore) -> None:
    store.create(CID, 1)
    store.write(CID, 1, 0, pattern(4 * BS))
    flip_bit(replica_path(store, CID, 1), store.data_offset + 2 * BS + 100)
    store.write_pieces(CID, 1, [(5, b"x" * 10), (3 * BS + 7, b"y" * 10), (2 * BS + 5, b"z" * 3), (BS, b"w")])
    model = bytearray(pattern(4 * BS))
    model[5:15] = b"x" * 10
    model[3 * BS + 7 : 3 * BS + 17] = b"y" * 10
    model[BS : BS + 1] = b"w"
    assert store.read(CID, 1, 0, 2 * BS) == model[: 2 * BS]  # written, and their checksums with them
    assert store.read(CID, 1, 3 * BS, BS) == model[3 * BS :]
    assert store.bad_blocks(CID) == [2]  # the corrupt block, and no other
    store.write(CID, 1, 2 * BS, model[2 * BS : 3 * BS])  # a whole-block write replaces it legitimately
    assert store.verify(CID)


def test_block_checksums_match_across_replicas(tmp_path: Path) -> None:
    a = ChunkStore(tmp_path / "a", chunk_size=MiB, block_size=BS)
    b = ChunkStore(tmp_path / "b", chunk_size=MiB, block_size=BS)
    for s in (a, b):
        s.create(CID, 1)
    a.write(CID, 1, 100, pattern(3 * BS))
    b.write(CID, 1, 100, pattern(BS))
    b.write(CID, 1, 100 + BS, pattern(3 * BS)[BS:])
    assert a.block_checksums(CID, 1) == b.block_checksums(CID, 1)
    a.close()
    b.close()


def test_fd_cache_is_bounded(tmp_path: Path) -> None:
    with ChunkStore(tmp_path, chunk_size=MiB, block_size=BS, max_open_files=4) as s:
        for i in range(20):
            s.create(i, 1)
            s.write(i, 1, 0, pattern(10, seed=i))
        assert list(s._files) == [16, 17, 18, 19]  # the least recently used went first
        for i in range(20):
            assert s.read(i, 1, 0, 10) == pattern(10, seed=i)
        fds = [e.fd for e in s._files.values()]
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)
    with pytest.raises(InvalidArgument):
        s.read(0, 1, 0, 1)


def test_concurrent_reads_and_writes_never_see_false_corruption(store: ChunkStore) -> None:
    store.create(CID, 1)
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for i in range(300):
                store.write(CID, 1, 1000, pattern(2 * BS, seed=i))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            stop.set()

    def reader() -> None:
        try:
            while not stop.is_set():
                store.read(CID, 1, 0, 3 * BS)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert store.verify(CID)


# Small geometry so random operations hit block edges often.
P_CHUNK = 64 * 1024
P_BLOCK = 4096

_write = st.tuples(
    st.just("write"),
    st.integers(0, P_CHUNK - 1),
    st.integers(1, 3 * P_BLOCK),
    st.integers(0, 255),
)
_truncate = st.tuples(st.just("truncate"), st.integers(0, P_CHUNK), st.just(0), st.just(0))
#: Several writes in one call (a mount's small writes sent together), overlapping one another at times.
_pieces = st.tuples(st.just("pieces"), st.lists(_write, min_size=1, max_size=6), st.just(0), st.just(0))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(st.one_of(_write, _truncate, _pieces), max_size=25), probes=st.lists(st.integers(0, P_CHUNK)))
def test_model_random_writes_and_truncates(
    ops: list[tuple[str, Any, int, int]], probes: list[int]
) -> None:
    model = bytearray(P_CHUNK)
    with tempfile.TemporaryDirectory() as d, ChunkStore(Path(d), P_CHUNK, P_BLOCK) as s:
        s.create(1, 1)
        for op, a, n, seed in ops:
            if op == "write":
                n = min(n, P_CHUNK - a)
                data = pattern(n, seed)
                s.write(1, 1, a, data)
                model[a : a + n] = data
            elif op == "pieces":
                pieces = [(b, pattern(min(m, P_CHUNK - b), k)) for _, b, m, k in a]
                s.write_pieces(1, 1, pieces)
                for b, data in pieces:
                    model[b : b + len(data)] = data
            else:
                s.truncate(1, 1, a)
                model[a:] = bytes(P_CHUNK - a)
        assert s.read(1, 1, 0, P_CHUNK) == bytes(model)
        for i in range(0, len(probes) - 1, 2):
            lo, hi = sorted(probes[i : i + 2])
            assert s.read(1, 1, lo, hi - lo) == bytes(model[lo:hi])
        assert s.verify(1)
        view = memoryview(model)
        expected = [crc32c(view[i : i + P_BLOCK]) for i in range(0, P_CHUNK, P_BLOCK)]
        assert s.block_checksums(1, 1) == expected


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flip=st.integers(0, P_CHUNK * 8 - 1), ops=st.lists(st.one_of(_write, _pieces), max_size=20))
def test_model_a_corrupt_block_stays_bad_until_rewritten_whole(
    flip: int, ops: list[tuple[str, Any, int, int]]
) -> None:
    """Writes update an edge block's CRC from its old one: a flipped bit stays visible, whatever is written
    around it or over it, until a write covers the whole block; every other block verifies."""
    bad = flip // 8 // P_BLOCK
    model = bytearray(pattern(P_CHUNK, 7))
    with tempfile.TemporaryDirectory() as d, ChunkStore(Path(d), P_CHUNK, P_BLOCK) as s:
        s.create(1, 1)
        s.write(1, 1, 0, model)
        flip_bit(replica_path(s, 1, 1), s.data_offset + flip // 8, 1 << (flip % 8))
        writes = [(a, n, seed) for op, a, n, seed in ops if op == "write"]
        writes += [(b, m, k) for op, pieces, _, _ in ops if op == "pieces" for _, b, m, k in pieces]
        for a, n, seed in writes:
            data = pattern(min(n, P_CHUNK - a), seed)
            s.write(1, 1, a, data)
            model[a : a + len(data)] = data
            if a <= bad * P_BLOCK and a + len(data) >= (bad + 1) * P_BLOCK:
                bad = -1  # rewritten whole: a fresh CRC over the caller's bytes
        assert s.bad_blocks(1) == ([bad] if bad >= 0 else [])
        good = [i for i in range(P_CHUNK // P_BLOCK) if i != bad]
        for i in good:
            assert s.read(1, 1, i * P_BLOCK, P_BLOCK) == model[i * P_BLOCK : (i + 1) * P_BLOCK]


def test_a_new_replica_reaches_the_disk_with_its_first_sync(store: ChunkStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Creating costs no fsync; the first sync of the replica's data makes its name durable too, once."""
    from chunkfs.cs import chunk_store

    store.create(CID + 256, 1)  # the same subdirectory (by the low byte) exists from now on
    store.create(CID + 257, 1)
    synced: list[Path] = []
    fsyncs: list[int] = []
    monkeypatch.setattr(chunk_store, "fsync_dir", lambda path: synced.append(path))
    real_fsync, real_fdatasync = os.fsync, os.fdatasync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd))[1])
    monkeypatch.setattr(os, "fdatasync", lambda fd: (fsyncs.append(fd), real_fdatasync(fd))[1])
    store.create(CID, 1)
    assert synced == [] and fsyncs == []  # nothing promised yet, nothing synced
    store.write(CID, 1, 0, b"data", sync=False)
    assert synced == []
    store.fsync(CID, 1)
    assert synced == [replica_path(store, CID, 1).parent] and len(fsyncs) == 1
    store.fsync(CID, 1)
    assert len(synced) == 1  # the name only once
    store.write(CID + 257, 1, 0, b"data", sync=True)  # a synchronous write is a first sync too
    assert synced[-1] == replica_path(store, CID + 257, 1).parent and len(synced) == 2


def test_an_edge_block_not_in_the_page_cache_is_read_whole(store: ChunkStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bytes a write replaces are read alone only when cached; else the whole block, which caches it."""
    store.create(CID, 1)
    data = bytearray(pattern(4 * BS))
    store.write(CID, 1, 0, data)
    real = os.preadv
    reads: list[tuple[int, bool]] = []

    def preadv(fd: int, bufs: list[Any], pos: int, flags: int = 0) -> int:
        size = sum(len(b) for b in bufs)
        reads.append((size, bool(flags & os.RWF_NOWAIT)))
        if flags & os.RWF_NOWAIT and cold:
            raise BlockingIOError(errno.EAGAIN, "not cached")
        return real(fd, bufs, pos, flags)

    monkeypatch.setattr(os, "preadv", preadv)
    for cold in (False, True):
        reads.clear()
        store.write(CID, 1, BS + 100 + cold * BS, b"x" * 10)
        data[BS + 100 + cold * BS : BS + 110 + cold * BS] = b"x" * 10
        assert reads == ([(10, True), (BS, False)] if cold else [(10, True)])
    monkeypatch.undo()
    assert store.read(CID, 1, 0, 4 * BS) == data
    assert store.verify(CID)


def _two_written_first_closed(s: ChunkStore) -> None:
    """Chunks 1 and 2 made at version 5 and written; a store of one open file (max_open_files=1) then
    holds chunk 2's descriptor only: the next read of chunk 1 opens its file."""
    s.create(1, 5)
    s.write(1, 5, 0, b"a" * 10)
    s.create(2, 5)
    s.write(2, 5, 0, b"b" * 10)


def test_a_replica_file_missing_from_disk_is_not_found_and_told(tmp_path: Path) -> None:
    """A replica file removed from under the server (a data directory wiped, a file deleted by hand).

    Found by a probe: the read failed with an internal error (FileNotFoundError) that sent the client
    to no other replica, and nobody told the master.  Now: NotFound (readers try the others), the
    replica is gone from the index, and `on_missing` names it (the server tells the master).
    """
    missing: list[int] = []
    with ChunkStore(tmp_path, chunk_size=MiB, block_size=BS, max_open_files=1) as s:
        s.on_missing = missing.append
        _two_written_first_closed(s)
        replica_path(s, 1, 5).unlink()
        with pytest.raises(NotFound, match="missing"):
            s.read(1, 5, 0, 10)
        assert missing == [1]
        assert 1 not in s.replica_ids()
        with pytest.raises(NotFound):  # no replica here now: the same answer, told once
            s.read(1, 5, 0, 10)
        assert missing == [1]
        assert s.read(2, 5, 0, 10) == b"b" * 10


def test_a_replica_read_while_its_version_changes_is_not_reported_missing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A CI run: a replica opened (no descriptor cached) between the rename of a version change and
    the index's update was looked for under its old name, found missing, forgotten and reported; the
    master dropped every replica of the chunk so, one after another.  A read meanwhile now waits for
    the change and finds the replica at its new version."""
    missing: list[int] = []
    found: list[object] = []
    with ChunkStore(tmp_path, chunk_size=MiB, block_size=BS, max_open_files=1) as s:
        s.on_missing = missing.append
        _two_written_first_closed(s)

        def verify() -> None:
            try:
                found.append(s.bad_blocks(1))  # as the scrubber's check: whatever version the index names
            except Exception as exc:  # noqa: BLE001 (the failure is the finding)
                found.append(exc)

        real_rename = os.rename

        def rename_then_read(src: Any, dst: Any) -> None:
            real_rename(src, dst)
            reader = threading.Thread(target=verify)
            reader.start()
            reader.join(timeout=1.0)  # (still waiting, now: it may not look before the index is updated)
            threads.append(reader)

        threads: list[threading.Thread] = []
        monkeypatch.setattr(os, "rename", rename_then_read)
        s.set_version(1, 5, 6)
        monkeypatch.setattr(os, "rename", real_rename)
        for reader in threads:
            reader.join(timeout=10.0)
        assert found == [[]]
        assert missing == []
        assert s.read(1, 6, 0, 10) == b"a" * 10


def test_a_replica_file_deleted_while_held_open_is_found_by_the_scrubbers_read(tmp_path: Path) -> None:
    """A fault probe: a replica file deleted by hand while its descriptor was cached stayed readable
    through it, so the scrubber's passes found it whole and the master counted it, until a restart
    lost it.  The scrubber's full read (`bad_blocks`) now finds it unlinked: NotFound, told once."""
    missing: list[int] = []
    with ChunkStore(tmp_path, chunk_size=MiB, block_size=BS) as s:
        s.on_missing = missing.append
        s.create(1, 5)
        s.write(1, 5, 0, b"a" * 10)
        assert s.bad_blocks(1) == []  # its descriptor is cached now
        replica_path(s, 1, 5).unlink()
        with pytest.raises(NotFound, match="removed"):
            s.bad_blocks(1)
        assert missing == [1]
        assert 1 not in s.replica_ids()
        with pytest.raises(NotFound):
            s.read(1, 5, 0, 10)
        assert missing == [1]


def test_a_cut_with_a_new_version_moves_the_replica_and_refuses_the_old_version_after(store: ChunkStore) -> None:
    store.create(CID, 1)
    store.write(CID, 1, 0, pattern(2 * BS))
    store.truncate(CID, 1, BS + 10, new_version=2)
    assert store.version_of(CID) == 2
    assert store.read(CID, 2, 0, 2 * BS) == pattern(BS + 10) + bytes(BS - 10)
    with pytest.raises(StaleVersion):  # a write still at the old version, in flight during the cut
        store.write(CID, 1, BS + 20, b"late")
    store.truncate(CID, 1, BS + 10, new_version=2)  # the command sent again: already done
    store.write(CID, 2, BS + 20, b"next")
    assert store.read(CID, 2, BS, BS)[:30] == pattern(BS + 10)[BS:] + bytes(10) + b"next" + bytes(6)
    assert store.verify(CID)


def test_a_replica_moved_aside_is_remembered_until_the_chunk_is_made_here_again(store: ChunkStore) -> None:
    """A master whose check of a replica lost its answer asks again (scrubber.py): the store says it
    moved it aside, and whether it had never been synced, until the chunk is made here again."""
    store.create(CID, 5)
    store.quarantine(CID)
    assert store.moved_aside(CID) is None  # (the caller notes what it found)
    store.note_moved(CID, True)
    assert store.moved_aside(CID) is True
    store.create(CID, 9)
    assert store.moved_aside(CID) is None
    store.quarantine(CID)
    store.note_moved(CID, False)
    assert store.moved_aside(CID) is False


def test_a_check_asked_again_after_its_answer_was_lost_says_the_same(tmp_path: Path) -> None:
    """The scrubber's check (CS_VERIFY_CHUNK) of a replica whose header never reached the disk moves it
    aside; asked again (the master's link dropped before the answer), it says the same, not NotFound."""
    with ChunkStore(tmp_path, chunk_size=MiB, block_size=BS) as s:
        s.create(CID, 5)
        with open(replica_path(s, CID, 5), "r+b") as fh:
            fh.write(bytes(HEADER_SIZE))  # as a power cut leaves a header never synced
        scrubber = Scrubber(SimpleNamespace(store=s))  # type: ignore[arg-type]
        first = asyncio.run(scrubber.check(CID))
        assert first == {"ok": False, "bad": [], "whole": True, "unsynced": True}
        assert asyncio.run(scrubber.check(CID)) == first
        with pytest.raises(NotFound):  # a chunk never here: as before
            asyncio.run(scrubber.check(CID + 1))
