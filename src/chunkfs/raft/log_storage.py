"""Durable Raft log storage: segment files, a hard-state file and a snapshot file.

Layout of a storage directory::

    hardstate                   term, vote, commit    (replaced atomically)
    snapshot                    the latest snapshot   (replaced atomically)
    log-<first index:020d>.seg  records, oldest first

A record is ``<u32 length><u32 crc32c(body)><body>`` with a msgpack body
``[term, index, kind, data]``.  The newest segment is written ahead with
zeros, `PREALLOCATE` bytes at a time, so a batch's `fdatasync` only flushes
data: on ext4, syncing a file that grew also commits the journal (measured
here: 120 against 200 µs per sync, 40 against 65 µs of CPU).  A zero length
ends the records; a segment is cut to its records when the next one starts.

Small files are replaced the way Swift's diskfile does it: write a temporary
file, fsync it, rename it into place, fsync the directory.  A batch of entries costs one fsync (two when a segment
is rolled over), which is what lets the driver amortise fsync across
proposals.

Recovery (`LogStorage.open`) reads every record and checks its CRC.  A bad
record at the end of the last segment is a torn write from a crash (the batch
was never acknowledged, since messages leave only after fsync): it is cut off.
A bad record followed by a good one, or in any but the last segment, is
corruption in the middle of the log, which Raft cannot repair locally:
`LogCorruption` is raised so an operator replaces the node's data.  (Over
zeros written ahead, a power cut in the middle of a batch's write may leave a
later page of it on disk without an earlier one: an unacknowledged batch that
looks like that corruption.  The window is the one write before its sync.)

Crash-ordering choices, each safe to interrupt at any point:

* `append`: entries, then (separately) `set_hard_state`; a crash in between
  leaves entries of a newer term than the hard state, which the core handles
  (no vote was sent in that term, since votes are persisted first).
* truncation of a conflicting suffix: later segments are deleted newest first,
  then the containing one is truncated; any interrupted state is a prefix of
  the old log, and only entries beyond the conflict point are lost.
* `compact`/`install_snapshot`: the snapshot is made durable first, and only
  then are segments deleted; on open, entries at or below the snapshot are
  ignored and entries after it are kept only if they continue it.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgpack

from chunkfs.common.checksum import crc32c
from chunkfs.common.durable import fsync_dir, write_file_durably
from chunkfs.common.errors import ChecksumMismatch, InvalidArgument
from chunkfs.raft.core import Entry, EntryKind, HardState, Snapshot

logger = logging.getLogger(__name__)

_HEADER = struct.Struct("<II")
_FILE_MAGIC = b"CFRS"  # ChunkFS Raft State: prefix of hardstate/snapshot files
_MAX_RECORD = 1 << 30
HARDSTATE_FILE = "hardstate"
SNAPSHOT_FILE = "snapshot"
_SEG_PREFIX = "log-"
_SEG_SUFFIX = ".seg"
#: Zeros written ahead of the newest segment's records at a time (one journal commit per this many bytes).
PREALLOCATE = 1 << 20


class LogCorruption(ChecksumMismatch):
    """The Raft log is corrupt before its end; this node's Raft data must be rebuilt."""

    code = "checksum"


def _encode_small(obj: object) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return _FILE_MAGIC + _HEADER.pack(len(body), crc32c(body)) + body


def _decode_small(path: Path) -> object | None:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    hdr = len(_FILE_MAGIC) + _HEADER.size
    if len(raw) < hdr or raw[:4] != _FILE_MAGIC:
        raise LogCorruption(f"{path}: bad header", path=str(path))
    length, crc = _HEADER.unpack_from(raw, 4)
    body = raw[hdr:]
    if len(body) != length or crc32c(body) != crc:
        # Written via rename, so a crash cannot tear it: this is real corruption.
        raise LogCorruption(f"{path}: checksum mismatch", path=str(path))
    return msgpack.unpackb(body, raw=False)


def _write_at(fd: int, buf: bytes | bytearray, pos: int) -> None:
    view = memoryview(buf)
    while view:
        n = os.pwrite(fd, view, pos)
        view = view[n:]
        pos += n


def encode_record(entry: Entry) -> bytes:
    body = msgpack.packb([entry.term, entry.index, int(entry.kind), entry.data], use_bin_type=True)
    return _HEADER.pack(len(body), crc32c(body)) + body


@dataclass(slots=True)
class _Segment:
    path: Path
    first_index: int
    #: Byte offset of each record; offsets[k] holds entry first_index + k.
    offsets: list[int] = field(default_factory=list)
    #: End of the records.
    size: int = 0
    #: Length of the file: the records, then zeros written ahead (see `PREALLOCATE`).
    allocated: int = 0

    @property
    def last_index(self) -> int:
        return self.first_index + len(self.offsets) - 1


@dataclass(slots=True)
class Recovered:
    """What `open` found: hand it to `RaftCore(hard_state=..., snapshot=..., entries=...)`."""

    hard_state: HardState
    snapshot: Snapshot | None
    entries: list[Entry]
    #: Bytes cut off a torn tail (0 if the log ended cleanly).
    torn_bytes: int = 0


class LogStorage:
    """One node's durable Raft state.  Single-threaded: the driver serialises calls."""

    def __init__(self, path: Path, segment_bytes: int) -> None:
        self.path = path
        self.segment_bytes = segment_bytes
        self._segments: list[_Segment] = []
        self._fd: int | None = None  # open for append on the last segment
        self._fd_seg: _Segment | None = None
        self.hard_state = HardState()
        self.snapshot: Snapshot | None = None

    # ---------------------------------------------------------------- open

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, segment_bytes: int = 64 << 20) -> tuple[LogStorage, Recovered]:
        """Open (creating if needed) and recover; returns the storage and what it holds."""
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        for stale in p.glob("*.tmp"):
            stale.unlink()  # an interrupted durable write; the old file is intact
        self = cls(p, segment_bytes)
        hs = _decode_small(p / HARDSTATE_FILE)
        if hs is not None:
            self.hard_state = HardState.from_dict(hs)  # type: ignore[arg-type]
        snap = _decode_small(p / SNAPSHOT_FILE)
        if snap is not None:
            self.snapshot = Snapshot.from_dict(snap)  # type: ignore[arg-type]
        entries, torn = self._load_segments()
        return self, Recovered(self.hard_state, self.snapshot, entries, torn)

    def _segment_paths(self) -> list[tuple[int, Path]]:
        out = []
        for f in self.path.iterdir():
            name = f.name
            if name.startswith(_SEG_PREFIX) and name.endswith(_SEG_SUFFIX):
                try:
                    out.append((int(name[len(_SEG_PREFIX): -len(_SEG_SUFFIX)]), f))
                except ValueError:
                    continue
        return sorted(out)

    def _load_segments(self) -> tuple[list[Entry], int]:
        entries: list[Entry] = []
        torn = 0
        paths = self._segment_paths()
        expected: int | None = None
        for n, (first, path) in enumerate(paths):
            is_last = n == len(paths) - 1
            raw = path.read_bytes()
            seg = _Segment(path, first)
            if expected is not None and first != expected:
                raise LogCorruption(f"{path}: segment starts at {first}, expected {expected}", path=str(path))
            off = 0
            while off < len(raw):
                entry, end = self._parse_record(raw, off, first + len(seg.offsets))
                if entry is None and raw.count(0, off) == len(raw) - off:
                    break  # the zeros written ahead: the records end here
                if entry is None:
                    if is_last and not self._valid_record_follows(raw, off):
                        torn = len(raw) - off
                        logger.warning("raft log %s: cutting %d torn bytes at offset %d", path, torn, off)
                        with open(path, "r+b") as f:
                            f.truncate(off)
                            os.fsync(f.fileno())
                        raw = raw[:off]
                        break
                    raise LogCorruption(f"{path}: corrupt record at offset {off}", path=str(path), offset=off)
                seg.offsets.append(off)
                entries.append(entry)
                off = end
            seg.size = off
            seg.allocated = len(raw)
            expected = first + len(seg.offsets)
            self._segments.append(seg)
        # Keep only entries that continue the snapshot (see the module docstring).
        if self.snapshot is not None and entries:
            s = self.snapshot
            by_index = {e.index: e for e in entries if e.index == s.index}
            tail = [e for e in entries if e.index > s.index]
            anchored = (s.index in by_index and by_index[s.index].term == s.term) or (
                tail and tail[0].index == s.index + 1 and s.index not in by_index
            )
            if not anchored:
                tail = []
            entries = tail
            if not tail:
                self._drop_all_segments()
        return entries, torn

    @staticmethod
    def _parse_record(raw: bytes, off: int, want_index: int) -> tuple[Entry | None, int]:
        if off + _HEADER.size > len(raw):
            return None, off
        length, crc = _HEADER.unpack_from(raw, off)
        start = off + _HEADER.size
        if length == 0 or length > _MAX_RECORD or start + length > len(raw):
            return None, off
        body = raw[start: start + length]
        if crc32c(body) != crc:
            return None, off
        try:
            term, index, kind, data = msgpack.unpackb(body, raw=False)
            entry = Entry(int(term), int(index), EntryKind(kind), bytes(data))
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            # The CRC matched, so this is not a torn write but a writer bug.
            raise LogCorruption(f"raft log record at index {want_index} does not decode") from exc
        if index != want_index:
            raise LogCorruption(f"raft log record has index {index}, expected {want_index}", index=index)
        return entry, start + length

    @classmethod
    def _valid_record_follows(cls, raw: bytes, off: int) -> bool:
        """After a bad record: is there an intact record right behind it?

        Only checkable when the bad record's length field is plausible (a bit
        flip in its body); then an intact successor proves mid-log corruption
        rather than a torn tail.
        """
        if off + _HEADER.size > len(raw):
            return False
        length, _ = _HEADER.unpack_from(raw, off)
        nxt = off + _HEADER.size + length
        if length == 0 or nxt + _HEADER.size > len(raw):
            return False
        nlen, ncrc = _HEADER.unpack_from(raw, nxt)
        body = raw[nxt + _HEADER.size: nxt + _HEADER.size + nlen]
        return nlen > 0 and len(body) == nlen and crc32c(body) == ncrc

    # ------------------------------------------------------------ accessors

    @property
    def first_index(self) -> int:
        return self._segments[0].first_index if self._segments and self._segments[0].offsets else (
            self.last_index + 1
        )

    @property
    def last_index(self) -> int:
        for seg in reversed(self._segments):
            if seg.offsets:
                return seg.last_index
        return self.snapshot.index if self.snapshot else 0

    # -------------------------------------------------------------- writing

    def set_hard_state(self, hs: HardState) -> None:
        write_file_durably(self.path / HARDSTATE_FILE, _encode_small(hs.to_dict()), mode=0o600)
        self.hard_state = hs

    def append(self, entries: Sequence[Entry]) -> None:
        """Append a batch with one fsync; entries at or after entries[0].index are replaced."""
        if not entries:
            return
        first = entries[0].index
        for k, e in enumerate(entries):
            if e.index != first + k:
                raise InvalidArgument("raft entries to append are not contiguous", index=e.index)
        if first <= self.last_index:
            self._truncate_from(first)
        if first != self.last_index + 1:
            raise InvalidArgument(f"raft append at {first} leaves a gap after {self.last_index}", index=first)
        buf = bytearray()
        seg = self._current_segment(first)
        for e in entries:
            if seg.size + len(buf) >= self.segment_bytes and seg.offsets:
                self._write(seg, buf)
                buf = bytearray()
                seg = self._new_segment(e.index)
            rec = encode_record(e)
            seg.offsets.append(seg.size + len(buf))
            buf += rec
        self._write(seg, buf)
        os.fdatasync(self._fd_for(seg))

    def compact(self, snapshot: Snapshot) -> None:
        """The application snapshotted at `snapshot.index`: store it, drop older segments."""
        write_file_durably(self.path / SNAPSHOT_FILE, _encode_small(snapshot.to_dict()), mode=0o600)
        self.snapshot = snapshot
        removed = False
        # A segment can go when the next one starts at or below snapshot.index + 1.
        while len(self._segments) > 1 and self._segments[1].first_index <= snapshot.index + 1:
            self._unlink(self._segments.pop(0))
            removed = True
        if self._segments and self._segments[0].offsets and self._segments[0].last_index <= snapshot.index:
            self._drop_all_segments()
            return
        if removed:
            fsync_dir(self.path)

    def install_snapshot(self, snapshot: Snapshot) -> None:
        """A snapshot from the leader replaces the whole log."""
        write_file_durably(self.path / SNAPSHOT_FILE, _encode_small(snapshot.to_dict()), mode=0o600)
        self.snapshot = snapshot
        self._drop_all_segments()

    def close(self) -> None:
        self._close_fd()

    # ------------------------------------------------------------ internals

    def _fd_for(self, seg: _Segment) -> int:
        """The append descriptor, which always belongs to the newest segment."""
        if self._fd is not None and self._fd_seg is not seg:
            self._close_fd()
        if self._fd is None:
            self._fd = os.open(seg.path, os.O_WRONLY | os.O_CREAT, 0o600)
            self._fd_seg = seg
        return self._fd

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = None
        self._fd_seg = None

    def _write(self, seg: _Segment, buf: bytes | bytearray) -> None:
        fd = self._fd_for(seg)
        pos = seg.size
        _write_at(fd, buf, pos)
        seg.size = pos + len(buf)
        if seg.size > seg.allocated:
            ahead = max(seg.size, min(seg.size + PREALLOCATE, self.segment_bytes))
            _write_at(fd, bytes(ahead - seg.size), seg.size)
            seg.allocated = ahead

    def _current_segment(self, first: int) -> _Segment:
        if self._segments:
            seg = self._segments[-1]
            if seg.offsets or seg.first_index == first:
                return seg
            self._unlink(self._segments.pop())
        return self._new_segment(first)

    def _new_segment(self, first: int) -> _Segment:
        if self._fd is not None and self._fd_seg is not None:
            done = self._fd_seg
            if done.allocated > done.size:
                os.ftruncate(self._fd, done.size)  # its zeros written ahead: only the newest segment has them
                done.allocated = done.size
            os.fsync(self._fd)  # the previous segment's part of this batch
            self._close_fd()
        seg = _Segment(self.path / f"{_SEG_PREFIX}{first:020d}{_SEG_SUFFIX}", first)
        self._segments.append(seg)
        self._fd = os.open(seg.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self._fd_seg = seg
        fsync_dir(self.path)
        return seg

    def _unlink(self, seg: _Segment) -> None:
        if self._fd_seg is seg:
            self._close_fd()
        try:
            seg.path.unlink()
        except FileNotFoundError:
            pass

    def _drop_all_segments(self) -> None:
        self._close_fd()
        while self._segments:
            self._unlink(self._segments.pop())  # newest first: an interruption leaves a prefix
        fsync_dir(self.path)

    def _truncate_from(self, index: int) -> None:
        if self.snapshot is not None and index <= self.snapshot.index:
            raise InvalidArgument(f"cannot truncate at {index}: compacted up to {self.snapshot.index}", index=index)
        removed = False
        while self._segments and self._segments[-1].first_index >= index:
            self._unlink(self._segments.pop())
            removed = True
        if removed:
            fsync_dir(self.path)
        if not self._segments:
            return
        seg = self._segments[-1]
        k = index - seg.first_index
        if k < len(seg.offsets):
            cut = seg.offsets[k]
            del seg.offsets[k:]
            fd = self._fd_for(seg)
            os.ftruncate(fd, cut)
            os.fsync(fd)
            seg.size = seg.allocated = cut
