"""A chunk server's on-disk replica store: one data directory, one file per chunk replica.

This is the chunk server's `diskfile` (in Swift's sense): every other part of the
chunk server reads and writes replicas only through `ChunkStore`.

Layout::

    ROOT/chunks/<low byte of chunk_id, 2 hex digits>/<chunk_id:016x>_<version:016x>.chunk
    ROOT/quarantine/<same name>[.<n>]            corrupt replicas, moved aside, never deleted

The version lives in the file name, so changing it is one atomic ``rename`` plus an
fsync of the directory, and "which replica is newest" is a comparison of names.

Replica file format (all integers little-endian)::

    offset 0                 header, HEADER_SIZE (4 KiB) bytes:
                               magic "CHUNKFS\\0", format version (u32), chunk_id (u64),
                               version at creation (u64), chunk_size (u64),
                               block_size (u32), CRC32C of the preceding fields (u32),
                               zero padding
    offset HEADER_SIZE       CRC table: one u32 CRC32C per block, zero-padded to a
                               multiple of TABLE_ALIGN (4 KiB)
    offset data_offset       data region, chunk_size bytes, block i at
                               data_offset + i * block_size

The header's version is only the version at creation; the file name is the truth.
The data region is sparse: it is never pre-filled, and bytes past the end of the
file read as zeros. The CRC table is written in full at creation with the CRC of an
all-zero block, so a block that was never written verifies as zeros.

Crash safety: a write puts the data down first and then the CRC entries. A crash
between the two leaves a block whose checksum does not match; that is reported as
`ChecksumMismatch` (never as silently wrong data) and the replica is repaired from
another one. Only writes that were followed by a sync (``sync=True`` or `fsync`)
are promised to survive, which is what the chunk server acknowledges.

Threading: methods may be called from several threads (the server offloads
blocking calls to a thread pool). One lock guards the index and the descriptor
cache; a striped per-chunk lock serialises the mutating calls on one chunk, so the
read-modify-write of edge blocks cannot interleave. Reads take no chunk lock: if a
block fails its checksum they re-read it under the chunk lock before calling it
corrupt, so a read racing a write never reports false corruption.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import struct
import sys
import tempfile
import threading
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from chunkfs.common.checksum import Buffer, crc32c, crc32c_replaced
from chunkfs.common.config import BLOCK_SIZE
from chunkfs.common.durable import fsync_dir, is_disk_full, write_file_durably
from chunkfs.common.errors import (
    ChecksumMismatch,
    ConfigError,
    Exists,
    InvalidArgument,
    NoSpace,
    NotFound,
    StaleVersion,
)
from chunkfs.common.replica_file import (
    CHUNKS_DIR,
    CRC_ENTRY_SIZE,
    FORMAT_VERSION,
    HEADER_CRC,
    HEADER_FIELDS,
    HEADER_SIZE,
    HEADER_USED,
    MAGIC,
    TABLE_ALIGN,
    check_header,
    chunk_subdir,
    data_offset,
    pread_full,
    read_blocks,
    read_crcs,
    replica_name,
    replica_path,
)
from chunkfs.common.writeback import start_writeback
from chunkfs.cs.write_tracker import WriteTracker

logger = logging.getLogger(__name__)

#: Default bytes covered by one checksum: the cluster's (the master reports bad ranges in it).
DEFAULT_BLOCK_SIZE = BLOCK_SIZE
#: Default bound on the number of cached open replica descriptors.
DEFAULT_MAX_OPEN_FILES = 256
#: Bytes verify() reads per system call; bounds its memory.
VERIFY_BATCH_BYTES = 4 * 1024 * 1024
#: Chunk ids and versions are unsigned 64-bit integers.
MAX_U64 = (1 << 64) - 1
#: Number of striped per-chunk locks (bounded, whatever the number of chunks).
CHUNK_LOCK_STRIPES = 64
#: Writes at least this large have the disk start on them at once (common/writeback.py); smaller ones
#: (a VM's random writes) are left to the page cache, where later writes may still change them.
WRITEBACK_MIN = 512 << 10

#: Replicas moved aside whole whose fate this store remembers (`moved_aside`), the oldest forgotten first.
MOVED_REMEMBERED = 100_000
QUARANTINE_DIR = "quarantine"
TMP_PREFIX = "."
TMP_SUFFIX = ".tmp"
_REPLICA_NAME = re.compile(r"^([0-9a-f]{16})_([0-9a-f]{16})\.chunk$")
_SUBDIR = re.compile(r"[0-9a-f]{2}")


def _block_list(blocks: list[int], shown: int = 8) -> str:
    """A short list for a log line: the first few blocks, then how many more."""
    text = ", ".join(map(str, blocks[:shown]))
    return text + (f" and {len(blocks) - shown} more" if len(blocks) > shown else "")


def _table_bytes(table: array[int]) -> bytes:
    """CRC entries as stored: little-endian uint32."""
    if sys.byteorder == "big":
        table = array("I", table)
        table.byteswap()
    return table.tobytes()


def _pwrite_full(fd: int, bufs: Sequence[Buffer], pos: int) -> None:
    """Write all of `bufs` contiguously at `pos`: one pwritev in the common case."""
    views = [memoryview(b).cast("B") for b in bufs if len(b)]
    while views:
        n = os.pwritev(fd, views, pos)
        pos += n
        # Drop what was written (short writes are rare for regular files).
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if views and n:
            views[0] = views[0][n:]


@dataclass(slots=True)
class _OpenFile:
    """A cached descriptor; closed once it is evicted and no call is using it."""

    fd: int
    refs: int = 0
    evicted: bool = False
    #: One byte per block of the data region, non-zero once this descriptor reserved the block's
    #: space (`ChunkStore._reserve`): a write into it needs no fallocate of its own. None: none yet.
    reserved: bytearray | None = None


@dataclass(slots=True)
class _Lease:
    """What one call needs while it works on one replica."""

    chunk_id: int
    version: int
    fd: int
    entry: _OpenFile = field(repr=False)


class ChunkStore:
    """The replicas of one data directory, with per-block CRC32C and versioned names.

    Synchronous by design: the chunk server runs these calls (and their fsyncs) in
    worker threads itself. OSErrors other than "no space" (EIO from a failing disk,
    for instance) are passed through so the server can mark the disk failed.
    """

    def __init__(
        self,
        root: Path,
        chunk_size: int,
        block_size: int = DEFAULT_BLOCK_SIZE,
        *,
        max_open_files: int = DEFAULT_MAX_OPEN_FILES,
    ) -> None:
        if block_size <= 0 or block_size % TABLE_ALIGN:
            raise ConfigError(
                f"block_size {block_size} must be a positive multiple of {TABLE_ALIGN}",
                option="block_size",
            )
        if chunk_size <= 0 or chunk_size % block_size:
            raise ConfigError(
                f"chunk_size {chunk_size} must be a positive multiple of block_size {block_size}",
                option="chunk_size",
            )
        if max_open_files < 1:
            raise ConfigError(f"max_open_files {max_open_files} must be at least 1", option="max_open_files")
        self.root = Path(root)
        self.chunk_size = chunk_size
        self.block_size = block_size
        self.n_blocks = chunk_size // block_size
        self.data_offset = data_offset(chunk_size, block_size)
        #: CRC32C of an all-zero block: what a never-written block verifies against.
        self.zero_crc = crc32c(bytes(block_size))
        self._new_file: bytes | None = None
        #: Blocks written to replicas being copied from here (the source's half of a two-phase copy).
        self.written = WriteTracker(block_size, chunk_size)
        self._max_open = max_open_files
        self._lock = threading.Lock()
        self._chunk_locks = [threading.Lock() for _ in range(CHUNK_LOCK_STRIPES)]
        self._index: dict[int, int] = {}
        #: Replicas created since their directory was last synced (see `create`).
        self._unsynced_names: set[int] = set()
        #: Chunks whose replica was moved aside whole since this store opened -> whether its header had
        #: never reached the disk (`moved_aside`); forgotten when the chunk is made here again.
        self._moved: OrderedDict[int, bool] = OrderedDict()
        self._files: OrderedDict[int, _OpenFile] = OrderedDict()
        #: Called (from any thread, no lock held) with a replica whose file was found missing from disk.
        self.on_missing: Callable[[int], None] | None = None
        self._closed = False
        self._chunks_dir = self.root / CHUNKS_DIR
        self._quarantine_dir = self.root / QUARANTINE_DIR
        self._prepare_dirs()
        self._scan()

    @property
    def chunks_dir(self) -> Path:
        """The folder holding the replica files (watched by common/folder_watch.py)."""
        return self._chunks_dir

    # ------------------------------------------------------------------ set-up

    def _prepare_dirs(self) -> None:
        """The store's folders, and all 256 chunk subfolders at once: a new chunk never waits for
        a mkdir and a directory fsync (sequential chunk ids would otherwise make one per chunk
        for the first 256 chunks of every server)."""
        created = False
        for d in (self.root, self._chunks_dir, self._quarantine_dir):
            if not d.is_dir():
                d.mkdir(parents=True, exist_ok=True)
                created = True
        for low in range(256):
            sub = self._chunks_dir / f"{low:02x}"
            if not sub.is_dir():
                sub.mkdir(exist_ok=True)
                created = True
        if created:
            fsync_dir(self.root)
            fsync_dir(self._chunks_dir)

    def _scan(self) -> None:
        """Build the index from file names (headers are checked lazily, on first open).

        Leftover temporary files of an interrupted create are removed; if two
        versions of one chunk exist, the highest wins and the others are removed —
        versions only grow, so the lower one is stale by definition.

        Names only, as strings (``os.scandir``), and one dict entry per replica:
        a directory of 10^6 replicas is read in a few seconds.  A `Path` and a
        list per file made the scan of 10^6 replicas outlast the 20 s a daemon
        is given to start listening.
        """
        started = time.perf_counter()
        older: dict[int, list[int]] = {}  # chunk -> versions below the highest, in the rare duplicate case
        index = self._index
        for sub in sorted(os.scandir(self._chunks_dir), key=lambda e: e.name):
            low = _SUBDIR.fullmatch(sub.name)
            if low is None or not sub.is_dir():
                logger.warning("ignoring unexpected entry %s in the chunk directory", sub.path)
                continue
            low_byte = int(sub.name, 16)
            dirty = False
            with os.scandir(sub.path) as entries:
                for entry in entries:
                    name = entry.name
                    m = _REPLICA_NAME.match(name)
                    if m is None:
                        if name.startswith(TMP_PREFIX) and name.endswith(TMP_SUFFIX):
                            logger.info("removing leftover temporary file %s", entry.path)
                            Path(entry.path).unlink(missing_ok=True)
                            dirty = True
                        else:
                            logger.warning("ignoring unexpected file %s", entry.path)
                        continue
                    chunk_id, version = int(m.group(1), 16), int(m.group(2), 16)
                    if chunk_id & 0xFF != low_byte:
                        logger.warning("ignoring misplaced replica %s (chunk %016x)", entry.path, chunk_id)
                        continue
                    have = index.get(chunk_id)
                    if have is None:
                        index[chunk_id] = version
                    else:
                        older.setdefault(chunk_id, []).append(min(have, version))
                        index[chunk_id] = max(have, version)
            if dirty:
                fsync_dir(Path(sub.path))
        for chunk_id, versions in older.items():
            keep_version = index[chunk_id]
            for version in versions:
                logger.warning(
                    "chunk %016x: removing stale version %d, keeping %d", chunk_id, version, keep_version
                )
                self._path_for(chunk_id, version).unlink(missing_ok=True)
            fsync_dir(self._dir_for(chunk_id))
        logger.info("scanned %d replica(s) in %s in %.1f s", len(index), self._chunks_dir,
                    time.perf_counter() - started)

    # ------------------------------------------------------------------ paths

    def _dir_for(self, chunk_id: int) -> Path:
        return self._chunks_dir / chunk_subdir(chunk_id)

    def _path_for(self, chunk_id: int, version: int) -> Path:
        return replica_path(self._chunks_dir, chunk_id, version)

    def _chunk_lock(self, chunk_id: int) -> threading.Lock:
        return self._chunk_locks[chunk_id % CHUNK_LOCK_STRIPES]

    # ------------------------------------------------------------------ checks

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidArgument(f"chunk store {self.root} is closed")

    @staticmethod
    def _check_u64(what: str, value: int) -> None:
        if not 0 <= value <= MAX_U64:
            raise InvalidArgument(f"{what} {value} is not an unsigned 64-bit integer")

    def check_range(self, chunk_id: int, offset: int, length: int) -> None:
        """InvalidArgument unless [offset, offset+length) lies inside a chunk."""
        if offset < 0 or length < 0 or offset + length > self.chunk_size:
            raise InvalidArgument(
                f"chunk {chunk_id:016x}: range offset={offset} length={length} "
                f"is outside the chunk (chunk_size {self.chunk_size})",
                chunk_id=chunk_id,
                offset=offset,
                length=length,
            )

    def _check_version(self, chunk_id: int, version: int) -> None:
        """Caller holds self._lock."""
        current = self._index.get(chunk_id)
        if current is None:
            raise NotFound(f"chunk {chunk_id:016x}: no replica on this server", chunk_id=chunk_id)
        if current != version:
            raise StaleVersion(
                f"chunk {chunk_id:016x}: asked for version {version}, replica is at {current}",
                chunk_id=chunk_id,
                version=version,
                current=current,
            )

    # ------------------------------------------------------------------ descriptors

    def _open_replica(self, chunk_id: int, version: int) -> int:
        """Open a replica and check its header; the header is never trusted unchecked."""
        path = self._path_for(chunk_id, version)
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            raw = os.pread(fd, HEADER_USED, 0)
            self._check_header(chunk_id, raw)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _check_header(self, chunk_id: int, raw: bytes) -> None:
        check_header(chunk_id, raw, self.chunk_size, self.block_size)

    @contextmanager
    def _lease(self, chunk_id: int, version: int | None) -> Iterator[_Lease]:
        """Check the version and hand out a cached descriptor that stays open meanwhile.

        `version=None` skips the version check (verify, quarantine).
        """
        with self._lock:
            self._check_open()
            current = self._index.get(chunk_id)
            if version is None:
                if current is None:
                    raise NotFound(f"chunk {chunk_id:016x}: no replica on this server", chunk_id=chunk_id)
                version = current
            else:
                self._check_version(chunk_id, version)
            entry = self._files.get(chunk_id)
            if entry is None:
                try:
                    fd = self._open_replica(chunk_id, version)
                except FileNotFoundError:
                    # Removed from under this server (a data directory wiped, a file deleted by hand):
                    # no replica here any more.  NotFound sends readers to the other replicas, and the
                    # master is told (`on_missing`), which drops it and has it copied again.
                    self._index.pop(chunk_id, None)
                    missing = True
                else:
                    missing = False
                    entry = _OpenFile(fd, refs=1)
                    self._files[chunk_id] = entry
                    self._evict_locked()  # never closes `entry`: it is in use
            else:
                missing = False
                self._files.move_to_end(chunk_id)
                entry.refs += 1
        if missing:
            if self.on_missing is not None:
                self.on_missing(chunk_id)
            raise NotFound(f"chunk {chunk_id:016x}: its replica file is missing from this server's disk",
                           chunk_id=chunk_id)
        assert entry is not None
        try:
            yield _Lease(chunk_id, version, entry.fd, entry)
        finally:
            with self._lock:
                entry.refs -= 1
                if entry.evicted and entry.refs == 0:
                    os.close(entry.fd)

    def _evict_locked(self) -> None:
        """Close least recently used descriptors beyond the bound (skipping ones in use).

        Walks from the least recently used end only as far as it must: a copy of the whole
        table on every replica opened was a cost of its own when many new replicas are made."""
        excess = len(self._files) - self._max_open
        if excess <= 0:
            return
        victims = []
        for chunk_id, entry in self._files.items():
            if len(victims) == excess:
                break
            if not entry.refs:
                victims.append(chunk_id)
        for chunk_id in victims:
            os.close(self._files.pop(chunk_id).fd)

    def _forget_fd_locked(self, chunk_id: int) -> None:
        entry = self._files.pop(chunk_id, None)
        if entry is None:
            return
        if entry.refs:
            entry.evicted = True  # the last user closes it
        else:
            os.close(entry.fd)

    # ------------------------------------------------------------------ index

    def list_replicas(self) -> list[tuple[int, int]]:
        """(chunk_id, version) of every replica in this directory, sorted by chunk id."""
        with self._lock:
            return sorted(self._index.items())

    def replica_ids(self) -> array[int]:
        """The chunk ids of every replica here, ascending, 8 bytes each (not a tuple per replica).

        For walks over every replica that take a while (registration, a scrub
        pass): each step then asks `versions_of` for a page of them, so a
        replica deleted meanwhile is skipped and a version changed meanwhile is
        seen as it is.  Sorting 10^6 ids takes about a second: call it off the event loop.
        """
        with self._lock:
            ids = array("Q", self._index)
        return array("Q", sorted(ids))

    def versions_of(self, chunk_ids: Sequence[int]) -> list[tuple[int, int]]:
        """(chunk_id, version) of those of `chunk_ids` held here, in the order given."""
        with self._lock:
            index = self._index
            return [(c, v) for c in chunk_ids if (v := index.get(c)) is not None]

    def replica_count(self) -> int:
        """How many replicas this directory holds (without listing them)."""
        with self._lock:
            return len(self._index)

    def version_of(self, chunk_id: int) -> int | None:
        """The version of the replica held here, or None."""
        with self._lock:
            return self._index.get(chunk_id)

    # ------------------------------------------------------------------ lifecycle

    def _encode_new_file(self, chunk_id: int, version: int) -> bytearray:
        fields = HEADER_FIELDS.pack(MAGIC, FORMAT_VERSION, chunk_id, version, self.chunk_size, self.block_size)
        header = fields + HEADER_CRC.pack(crc32c(fields))
        if self._new_file is None:  # the same for every replica but its header: made once
            table = struct.pack(f"<{self.n_blocks}I", *([self.zero_crc] * self.n_blocks))
            blank = bytearray(self.data_offset)
            blank[HEADER_SIZE : HEADER_SIZE + len(table)] = table
            self._new_file = bytes(blank)
        out = bytearray(self._new_file)
        out[: len(header)] = header
        return out

    def create(self, chunk_id: int, version: int) -> None:
        """Create an empty replica (all zeros); on disk for good at its first sync.

        No fsync here: an empty replica holds nothing anyone was promised, and
        a new file's first write comes right after (a new file, a database's
        journal), so the file and its directory entry are synced with the
        first sync of the replica's data (`write(sync=True)` or `fsync`), the
        only point at which anything was promised.  A crash before that may
        leave no replica or a torn one: a torn header is found at the first
        read and the replica is moved aside and replaced, as any corrupt one.

        Idempotent for the same version, so a retried request is harmless; another
        version already here is `Exists` — the master must delete or re-version it.
        """
        self._check_u64("chunk_id", chunk_id)
        self._check_u64("version", version)
        with self._chunk_lock(chunk_id):
            with self._lock:
                self._check_open()
                current = self._index.get(chunk_id)
            if current == version:
                return
            if current is not None:
                raise Exists(
                    f"chunk {chunk_id:016x}: a replica at version {current} exists, cannot create {version}",
                    chunk_id=chunk_id,
                    version=version,
                    current=current,
                )
            self.written.forget(chunk_id)
            d = self._dir_for(chunk_id)
            if not d.is_dir():
                d.mkdir(exist_ok=True)
                fsync_dir(self._chunks_dir)
            fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=TMP_SUFFIX, dir=d)
            try:
                try:
                    _pwrite_full(fd, [self._encode_new_file(chunk_id, version)], 0)
                finally:
                    os.close(fd)
                os.rename(tmp, self._path_for(chunk_id, version))
            except OSError as exc:
                Path(tmp).unlink(missing_ok=True)
                if is_disk_full(exc):
                    raise NoSpace(
                        f"chunk {chunk_id:016x}: no space left in {self.root} to create a replica",
                        chunk_id=chunk_id,
                    ) from exc
                raise
            with self._lock:
                self._index[chunk_id] = version
                self._unsynced_names.add(chunk_id)
                self._moved.pop(chunk_id, None)

    def set_version(self, chunk_id: int, old_version: int, new_version: int) -> None:
        """Move the replica from `old_version` to `new_version` by renaming its file.

        Idempotent if it is already at `new_version`. Versions only grow (they carry
        the master's term), which is what lets the scan resolve duplicates by
        keeping the highest one.
        """
        self._check_u64("version", new_version)
        with self._chunk_lock(chunk_id):
            with self._lock:
                self._check_open()
                current = self._index.get(chunk_id)
                if current == new_version:
                    return
                self._check_version(chunk_id, old_version)
            if new_version < old_version:
                raise InvalidArgument(
                    f"chunk {chunk_id:016x}: version may not go down ({old_version} -> {new_version})",
                    chunk_id=chunk_id,
                )
            with self._lock:
                # Renamed under the store's lock, with the index: a reader opening the replica between a
                # rename and the index's change found no file at the version the index named, and told the
                # master it was missing (a CI run: every replica of a chunk dropped so, one after another).
                os.rename(self._path_for(chunk_id, old_version), self._path_for(chunk_id, new_version))
                self._index[chunk_id] = new_version
            fsync_dir(self._dir_for(chunk_id))
            with self._lock:
                self._unsynced_names.discard(chunk_id)

    def track_writes(self, chunk_id: int, version: int) -> int:
        """Note the blocks written to this replica from now on; the token `written_since` wants.

        Under the chunk lock: no write is half done when the tracking starts.
        """
        with self._chunk_lock(chunk_id):
            with self._lock:
                self._check_open()
                self._check_version(chunk_id, version)
            return self.written.start(chunk_id)

    def written_since(self, chunk_id: int, token: int) -> list[int]:
        """The blocks written since `track_writes` gave `token`; NotFound when this server cannot say."""
        blocks = self.written.take(chunk_id, token)
        if blocks is None:
            raise NotFound(f"chunk {chunk_id:016x}: writes are not tracked here under that token (restarted, "
                           f"replica made anew, or another copy began)", chunk_id=chunk_id)
        return blocks

    def delete(self, chunk_id: int) -> None:
        """Remove the replica, whatever its version; absent is not an error."""
        if self._remove(chunk_id, None):
            fsync_dir(self._dir_for(chunk_id))

    def delete_stale(self, replicas: Sequence[tuple[int, int]]) -> None:
        """Remove the replicas a registration's answer named stale, each only if still at the version reported
        (a fresh copy made here meanwhile stays).

        Before this server takes a lease again (cs/master_lease.py): a reader whose map is older than
        the change that left one behind asks for exactly that version.  Their directories are not
        synced (as in `delete_many`): one brought back by a crash is named stale again at the next
        registration.
        """
        for chunk_id, version in replicas:
            self._remove(chunk_id, version)

    def delete_many(self, chunk_ids: list[int]) -> None:
        """Remove these replicas (removed chunks, whatever their version); absent ones are no error.

        Their directories are not synced: a master truncating a file waits for this answer
        (mds/chunks.py, `delete_cut`), and a sync is a journal commit on a disk the metadata
        servers' logs may share.  A removal lost to a crash brings the replica back, reported
        at the next registration, where the master names it stale (no chunk lists it): it
        goes again, and is never served meanwhile (no chunk lists it for a reader either).
        """
        for chunk_id in chunk_ids:
            self._remove(chunk_id, None)

    def allocated(self, chunk_ids: Sequence[int]) -> int:
        """Bytes of disk these replicas' files hold (absent ones: none): what deleting them costs.

        Unlinking a file gives back its blocks and drops its cached pages there and then,
        about half a millisecond per MiB here: a 64 MiB replica written at random took
        0.45-0.6 s.
        """
        total = 0
        for chunk_id in chunk_ids:
            version = self._index.get(chunk_id)
            if version is not None:
                with contextlib.suppress(FileNotFoundError):
                    total += os.stat(self._path_for(chunk_id, version)).st_blocks * 512
        return total

    def _remove(self, chunk_id: int, only_version: int | None) -> bool:
        """Forget the replica and unlink its file (its directory not synced); False if there was none."""
        with self._chunk_lock(chunk_id):
            with self._lock:
                self._check_open()
                if only_version is not None and self._index.get(chunk_id) != only_version:
                    return False
                version = self._index.pop(chunk_id, None)
                self._unsynced_names.discard(chunk_id)
                self.written.forget(chunk_id)
                if version is None:
                    return False
                self._forget_fd_locked(chunk_id)
            self._path_for(chunk_id, version).unlink(missing_ok=True)
            return True

    def note_moved(self, chunk_id: int, never_synced: bool) -> None:
        """Remember that this chunk's replica was moved aside whole (`quarantine`), and whether its header
        had never reached the disk: a master whose check of it lost its link asks again (mds/bad_replicas.py)."""
        with self._lock:
            self._moved[chunk_id] = never_synced
            self._moved.move_to_end(chunk_id)
            while len(self._moved) > MOVED_REMEMBERED:
                self._moved.popitem(last=False)

    def moved_aside(self, chunk_id: int) -> bool | None:
        """Whether the replica of a chunk not held here now was moved aside whole, never synced (True) or
        corrupt (False), since this store opened; None: not that."""
        with self._lock:
            return None if chunk_id in self._index else self._moved.get(chunk_id)

    def quarantine(self, chunk_id: int) -> Path:
        """Move a (corrupt) replica into quarantine/ and forget it; returns its new path.

        Never deletes: an operator may want to look at it, as with Swift's quarantine.
        """
        with self._chunk_lock(chunk_id):
            with self._lock:
                self._check_open()
                version = self._index.get(chunk_id)
                if version is None:
                    raise NotFound(f"chunk {chunk_id:016x}: no replica on this server", chunk_id=chunk_id)
                src = self._path_for(chunk_id, version)
                dst = self._quarantine_dir / src.name
                n = 0
                while dst.exists():
                    n += 1
                    dst = self._quarantine_dir / f"{src.name}.{n}"
                os.rename(src, dst)
                del self._index[chunk_id]
                self._unsynced_names.discard(chunk_id)
                self.written.forget(chunk_id)
                self._forget_fd_locked(chunk_id)
            fsync_dir(self._quarantine_dir)
            fsync_dir(src.parent)
            logger.warning("chunk %016x version %d quarantined to %s", chunk_id, version, dst)
            return dst

    def close(self) -> None:
        """Close every cached descriptor; the store cannot be used afterwards."""
        with self._lock:
            self._closed = True
            for chunk_id in list(self._files):
                self._forget_fd_locked(chunk_id)

    def __enter__(self) -> ChunkStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ data path

    def _read_crcs(self, lease: _Lease, first_block: int, count: int) -> array[int]:
        return read_crcs(lease.fd, lease.chunk_id, first_block, count)

    def _read_blocks(
        self, lease: _Lease, first_block: int, count: int
    ) -> tuple[bytes | bytearray, int | None]:
        return read_blocks(lease.fd, lease.chunk_id, self.data_offset, self.block_size, first_block, count)

    def _read_verified(
        self, lease: _Lease, first_block: int, count: int, locked: bool
    ) -> bytes | bytearray:
        """Read and verify blocks; a mismatch is confirmed under the chunk lock first.

        The re-check matters: a write puts data before its CRC, so an unlocked
        reader can see the pair half-updated. Only a mismatch that persists while
        no writer can run is corruption.
        """
        buf, bad = self._read_blocks(lease, first_block, count)
        if bad is not None and not locked:
            with self._chunk_lock(lease.chunk_id):
                buf, bad = self._read_blocks(lease, first_block, count)
        if bad is not None:
            raise self._mismatch(lease, bad)
        return buf

    def _mismatch(self, lease: _Lease, block: int) -> ChecksumMismatch:
        return ChecksumMismatch(
            f"chunk {lease.chunk_id:016x} version {lease.version}: block {block} does not match "
            f"its checksum; the replica is corrupt",
            chunk_id=lease.chunk_id,
            version=lease.version,
            block=block,
        )

    def _block_span(self, offset: int, length: int) -> tuple[int, int]:
        """First block and number of blocks covering [offset, offset+length)."""
        first = offset // self.block_size
        last = (offset + length - 1) // self.block_size
        return first, last - first + 1

    def read(self, chunk_id: int, version: int, offset: int, length: int) -> bytes:
        """Read exactly `length` bytes at `offset`, every covering block verified."""
        self.check_range(chunk_id, offset, length)
        with self._lease(chunk_id, version) as lease:
            if length == 0:
                return b""
            first, count = self._block_span(offset, length)
            buf = self._read_verified(lease, first, count, locked=False)
            start = offset - first * self.block_size
            if start == 0 and length == len(buf) and isinstance(buf, bytes):
                return buf  # block-aligned: hand out the pread result itself
            return bytes(memoryview(buf)[start : start + length])

    def _no_space(self, lease: _Lease, exc: OSError, what: str) -> NoSpace:
        return NoSpace(
            f"chunk {lease.chunk_id:016x} version {lease.version}: no space left in {self.root} "
            f"while {what}",
            chunk_id=lease.chunk_id,
            version=lease.version,
        )

    def _reserve(self, lease: _Lease, offset: int, length: int) -> None:
        """Allocate disk blocks for the data range [offset, offset + length) before overwriting it.

        With the space reserved first, "disk full" is reported before any byte of
        the old data is touched, so the replica stays verifiable. Filesystems
        without fallocate just skip this (and may then fail mid-write).

        Whole checksum blocks are reserved, once per open descriptor: the next
        writes into them skip the call (a fallocate over blocks already there
        still walks the file's extents: 12 µs of a replica's 4 KiB write, the
        largest system call it made).  A sparse replica then grows by whole
        blocks, as a qcow2 image grows by clusters.
        """
        bs = self.block_size
        first, last = offset // bs, (offset + length - 1) // bs
        reserved = lease.entry.reserved
        if reserved is None:
            reserved = lease.entry.reserved = bytearray(self.n_blocks)
        elif reserved.find(0, first, last + 1) < 0:
            return
        try:
            os.posix_fallocate(lease.fd, self.data_offset + first * bs, (last + 1 - first) * bs)
        except OSError as exc:
            if is_disk_full(exc):
                raise self._no_space(lease, exc, "reserving space for a write") from exc
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
        reserved[first:last + 1] = b"\1" * (last + 1 - first)

    def write(self, chunk_id: int, version: int, offset: int, data: Buffer, sync: bool = False) -> None:
        """Write `data` at `offset`, updating the CRC of every block it touches.

        A partial block at an edge gets its new CRC from its old one and the bytes
        replaced (`crc32c_replaced`): a fresh CRC over corrupt old bytes would
        launder the corruption, and reading the whole block to verify it cost a
        4 KiB write most of its time.  The caller's bytes go down in one pwrite
        (uncopied), then the affected CRC entries in one pwrite.  `sync=True`
        adds an fdatasync.
        """
        self.write_pieces(chunk_id, version, [(offset, data)], sync)

    def write_pieces(
        self, chunk_id: int, version: int, pieces: Sequence[tuple[int, Buffer]], sync: bool = False
    ) -> None:
        """Write each (offset, data) in its order, as `write` does, in one call under one lock.

        A mount's small writes sent together (a VM's queue of 4 KiB writes) touch
        blocks all over the chunk: the CRC entries of the span they cover are read
        once, updated as each piece is written, and written back once after all
        the data (one read and one write for the batch, not one of each per
        piece).  Every piece's space is reserved before any byte is written, so a
        full disk fails the call with the replica as it was.  Should a later piece
        fail (a failing disk), the entries of the pieces written before it are
        still written: they stay verifiable.
        """
        views = [(offset, memoryview(data).cast("B")) for offset, data in pieces]
        for offset, view in views:
            self.check_range(chunk_id, offset, len(view))
        views = [(offset, view) for offset, view in views if len(view)]
        with self._chunk_lock(chunk_id), self._lease(chunk_id, version) as lease:
            try:
                for offset, view in views:
                    self._reserve(lease, offset, len(view))
                if views:
                    self._write_views(lease, views)
                if sync:
                    os.fdatasync(lease.fd)
                    self._sync_name(lease)
            except OSError as exc:
                if is_disk_full(exc):
                    what = f"writing {len(views[0][1])} bytes at {views[0][0]}" if len(views) == 1 else \
                        f"writing {len(views)} pieces" if views else "flushing to disk"
                    raise self._no_space(lease, exc, what) from exc
                raise

    def _write_views(self, lease: _Lease, views: list[tuple[int, memoryview]]) -> None:
        bs = self.block_size
        lo = min(offset for offset, _ in views) // bs
        hi = max(offset + len(view) - 1 for offset, view in views) // bs + 1
        table = self._read_crcs(lease, lo, hi - lo)
        done: list[tuple[int, int]] = []
        try:
            for offset, view in views:
                first, crcs = self._new_crcs(lease, table, lo, offset, view)
                # The unchanged bytes of the edge blocks are already on disk (or a hole,
                # which reads as the zeros checksummed), so only the caller's bytes are
                # written: one pwrite, no copy.
                pos = self.data_offset + offset
                _pwrite_full(lease.fd, [view], pos)
                table[first - lo : first - lo + len(crcs)] = array("I", crcs)
                done.append((offset, len(view)))
                if len(view) >= WRITEBACK_MIN:
                    start_writeback(lease.fd, pos, len(view))  # the disk works while the next piece comes
        finally:
            if done:  # the data first, then its CRC entries: a crash between leaves a mismatch, never a lie
                _pwrite_full(lease.fd, [_table_bytes(table)], HEADER_SIZE + lo * CRC_ENTRY_SIZE)
                for offset, length in done:
                    self.written.wrote(lease.chunk_id, offset, length)

    def _new_crcs(
        self, lease: _Lease, table: array[int], lo: int, offset: int, view: memoryview
    ) -> tuple[int, list[int]]:
        """The first block under one piece, and the CRCs its blocks will have.

        An edge block (one the piece covers in part) gets its new CRC from its
        old one and the bytes the piece replaces (`_replaced`): only those are
        read, not the whole block.  The middle is checksummed straight from the
        caller.
        """
        bs = self.block_size
        length = len(view)
        first, count = self._block_span(offset, length)
        head_skip = offset - first * bs  # bytes of the first block kept from old data
        tail_keep = (first + count) * bs - (offset + length)  # bytes of the last block kept from old data
        if count == 1 and (head_skip or tail_keep):
            return first, [self._replaced(lease, table[first - lo], offset, view, tail_keep)]
        crcs: list[int] = []
        middle = view
        if head_skip:
            crcs.append(self._replaced(lease, table[first - lo], offset, view[: bs - head_skip], 0))
            middle = middle[bs - head_skip :]
        tail_crc: int | None = None
        if tail_keep:
            tail_part = bs - tail_keep
            tail_crc = self._replaced(
                lease, table[first + count - 1 - lo], offset + length - tail_part, middle[len(middle) - tail_part :],
                tail_keep,
            )
            middle = middle[: len(middle) - tail_part]
        crcs.extend(crc32c(middle[i : i + bs]) for i in range(0, len(middle), bs))
        if tail_crc is not None:
            crcs.append(tail_crc)
        return first, crcs

    def _replaced(self, lease: _Lease, block_crc: int, offset: int, new: memoryview, after: int) -> int:
        """The CRC of an edge block once `new` replaces its bytes at `offset` (`after` bytes before its end).

        A block whose old bytes were corrupt stays detectably corrupt (the CRC
        carries the difference): reads and the scrubber find it and repair it
        from another replica, as before the write.

        The bytes replaced are read only if the page cache has them; else the
        whole block is read, in one disk read, so that the writes that follow
        into it find it cached (after a cache drop, 4 KiB random writes each
        waited for a disk read of their own: 3,188-3,661 IOPS at QD16 against
        4,437-4,553 reading whole blocks, and 4,739-5,049 with this).
        """
        pos = self.data_offset + offset
        old = bytearray(len(new))
        try:
            cached = os.preadv(lease.fd, [old], pos, os.RWF_NOWAIT) == len(old)
        except OSError as exc:  # EAGAIN: not cached; EOPNOTSUPP: a file system without RWF_NOWAIT
            if exc.errno not in (errno.EAGAIN, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            cached = False
        if not cached:
            skip = offset % self.block_size
            block = bytearray(self.block_size)
            pread_full(lease.fd, memoryview(block), pos - skip)  # a hole past the end of the file: zeros
            old = block[skip : skip + len(new)]
        return crc32c_replaced(block_crc, old, new, after)

    def _sync_name(self, lease: _Lease) -> None:
        """After a replica's first sync: its directory entry too (`create` leaves it to this)."""
        if lease.chunk_id not in self._unsynced_names:
            return
        fsync_dir(self._dir_for(lease.chunk_id))
        with self._lock:
            self._unsynced_names.discard(lease.chunk_id)

    def _sync(self, lease: _Lease, data_only: bool) -> None:
        try:
            (os.fdatasync if data_only else os.fsync)(lease.fd)
            self._sync_name(lease)
        except OSError as exc:
            if is_disk_full(exc):
                raise self._no_space(lease, exc, "flushing to disk") from exc
            raise

    def fsync(self, chunk_id: int, version: int) -> None:
        """Make every write to the replica durable (the server runs this in a thread)."""
        with self._lease(chunk_id, version) as lease:
            self._sync(lease, data_only=False)

    def truncate(self, chunk_id: int, version: int, length: int, new_version: int | None = None) -> None:
        """Make bytes at and beyond `length` read as zeros, giving the space back; then move to `new_version`.

        The partial block at `length` is zero-filled past it (after verifying its
        old contents); whole blocks past it get the zero-block CRC and are freed by
        shrinking the file, which keeps it sparse.  With `new_version`, a writer
        that still has the old version is refused from then on (the caller keeps
        other writes out meanwhile); a replica already there was cut before (a
        command sent again).
        """
        if new_version is not None and self.version_of(chunk_id) == new_version:
            return
        self._truncate(chunk_id, version, length)
        if new_version is not None:
            self.set_version(chunk_id, version, new_version)

    def _truncate(self, chunk_id: int, version: int, length: int) -> None:
        self.check_range(chunk_id, 0, length)
        bs = self.block_size
        with self._chunk_lock(chunk_id), self._lease(chunk_id, version) as lease:
            try:
                partial = length % bs
                first_whole = -(-length // bs)
                if partial:
                    blk = length // bs
                    block = bytearray(self._read_verified(lease, blk, 1, locked=True))
                    if memoryview(block)[partial:] != bytes(bs - partial):
                        block[partial:] = bytes(bs - partial)
                        pos = self.data_offset + blk * bs
                        self._reserve(lease, blk * bs, bs)
                        _pwrite_full(lease.fd, [block], pos)
                        _pwrite_full(
                            lease.fd,
                            [struct.pack("<I", crc32c(block))],
                            HEADER_SIZE + blk * CRC_ENTRY_SIZE,
                        )
                if first_whole < self.n_blocks:
                    self._free_blocks(lease, first_whole)
                # On the disk before it is answered: a power cut that kept the new length (a rename to a
                # new version commits it with ext4's journal) but not these zeros and checksums brought
                # the old bytes back, and EIO, into a file the master had cut and grown again.
                self._sync(lease, data_only=True)
                self.written.truncated(chunk_id, length)
            except OSError as exc:
                if is_disk_full(exc):
                    raise self._no_space(lease, exc, f"truncating to {length}") from exc
                raise

    def _free_blocks(self, lease: _Lease, first: int) -> None:
        """Zero blocks [first, n_blocks) and give their space back.

        They are always the tail of the data region, so shrinking the file frees
        them and leaves a hole that reads as zeros (no fallocate needed); then
        their CRCs are reset to the zero block's.
        """
        cut = self.data_offset + first * self.block_size
        size = os.fstat(lease.fd).st_size
        if size > cut:
            os.ftruncate(lease.fd, cut)
        if lease.entry.reserved is not None:
            lease.entry.reserved[first:] = bytes(self.n_blocks - first)  # their space is gone
        count = self.n_blocks - first
        _pwrite_full(
            lease.fd,
            [struct.pack(f"<{count}I", *([self.zero_crc] * count))],
            HEADER_SIZE + first * CRC_ENTRY_SIZE,
        )

    # ------------------------------------------------------------------ inspection

    def block_checksums(self, chunk_id: int, version: int) -> list[int]:
        """The stored CRC table, one value per block (to compare replicas across servers)."""
        with self._lease(chunk_id, version) as lease:
            return list(self._read_crcs(lease, 0, self.n_blocks))

    def verify(self, chunk_id: int) -> bool:
        """Whether the whole replica (header and every block) checks out; NotFound if absent."""
        try:
            return not self.bad_blocks(chunk_id)
        except ChecksumMismatch as exc:
            logger.warning("verify: %s", exc)
            return False

    def bad_blocks(self, chunk_id: int) -> list[int]:
        """Re-read the whole replica; the blocks that fail their checksum, in order.

        Raises ChecksumMismatch when the header itself is corrupt (the replica
        cannot be trusted at all: the caller quarantines it whole), NotFound if absent.
        A block found bad is re-read under the chunk lock before it is called bad
        (a write puts data before its CRC).
        """
        per_batch = max(1, VERIFY_BATCH_BYTES // self.block_size)
        bad: list[int] = []
        with self._lease(chunk_id, None) as lease:
            self._check_linked(lease)
            # Again, not only at open: the descriptor may have been cached since long before.
            self._check_header(chunk_id, os.pread(lease.fd, HEADER_USED, 0))
            for first in range(0, self.n_blocks, per_batch):
                count = min(per_batch, self.n_blocks - first)
                suspects = self._failing_blocks(lease, first, count)
                if suspects:
                    with self._chunk_lock(chunk_id):
                        bad += [b for b in suspects if self._failing_blocks(lease, b, 1)]
        if bad:
            logger.warning("verify: chunk %016x: %d block(s) fail their checksum: %s",
                           chunk_id, len(bad), _block_list(bad))
        return bad

    def _check_linked(self, lease: _Lease) -> None:
        """NotFound if the replica's file was removed from under this server while it held it open.

        A file deleted by hand (a data folder cleaned up, `rm` of the wrong files) stays readable
        through the cached descriptor, so reads and the scrubber went on passing while the replica
        was gone from the disk for good: the next restart, or the descriptor's eviction, would lose
        it, and until then the master counted a replica that no longer existed (a fault probe).
        Found here, it is treated as missing: forgotten, and the master told (`on_missing`), which
        drops it and has the chunk copied again.
        """
        if os.fstat(lease.fd).st_nlink:
            return
        with self._lock:
            ours = self._index.get(lease.chunk_id) == lease.version  # (not a deletion of our own meanwhile)
            if ours:
                del self._index[lease.chunk_id]
                self._forget_fd_locked(lease.chunk_id)
        if ours and self.on_missing is not None:
            self.on_missing(lease.chunk_id)
        raise NotFound(f"chunk {lease.chunk_id:016x}: its replica file was removed from this server's disk",
                       chunk_id=lease.chunk_id)

    def _failing_blocks(self, lease: _Lease, first: int, count: int) -> list[int]:
        buf, bad = self._read_blocks(lease, first, count)
        if bad is None:
            return []
        crcs = self._read_crcs(lease, first, count)
        view, bs = memoryview(buf), self.block_size
        return [first + i for i in range(bad - first, count) if crc32c(view[i * bs:(i + 1) * bs]) != crcs[i]]

    def repair_block(self, chunk_id: int, version: int, block: int, data: Buffer) -> bool:
        """Replace a bad block with a good copy (from another replica); False if it is no longer bad.

        Under the chunk lock, and only while the block still fails its checksum:
        a block that a write has replaced since the copy was fetched is newer
        than the copy and is kept.  The bad bytes are first saved to
        quarantine/ (``<replica name>.block<N>``), never thrown away.  Not synced:
        the caller syncs once after its last block.
        """
        view = memoryview(data).cast("B")
        if not 0 <= block < self.n_blocks or len(view) != self.block_size:
            raise InvalidArgument(f"chunk {chunk_id:016x}: block {block} with {len(view)} bytes is not a whole block")
        with self._chunk_lock(chunk_id), self._lease(chunk_id, version) as lease:
            if not self._failing_blocks(lease, block, 1):
                return False
            pos = self.data_offset + block * self.block_size
            saved = self._quarantine_dir / f"{replica_name(chunk_id, version)}.block{block}"
            n = 0
            while saved.exists():
                n += 1
                saved = saved.with_name(f"{replica_name(chunk_id, version)}.block{block}.{n}")
            bad_bytes = bytearray(self.block_size)
            pread_full(lease.fd, memoryview(bad_bytes), pos)
            write_file_durably(saved, bytes(bad_bytes))
            try:
                self._reserve(lease, block * self.block_size, self.block_size)
                _pwrite_full(lease.fd, [view], pos)
                _pwrite_full(lease.fd, [struct.pack("<I", crc32c(view))], HEADER_SIZE + block * CRC_ENTRY_SIZE)
                self.written.wrote(chunk_id, block * self.block_size, self.block_size)
            except OSError as exc:
                if is_disk_full(exc):
                    raise self._no_space(lease, exc, f"repairing block {block}") from exc
                raise
        logger.warning("chunk %016x version %d: block %d repaired from another replica; the bad bytes are in %s",
                       chunk_id, version, block, saved)
        return True

    def take_blocks(self, chunk_id: int, version: int, blocks: Sequence[int]) -> list[int]:
        """Take these blocks as they are on the disk: each one that fails its checksum gets a checksum made
        anew from its bytes; then the replica is synced.  The ones taken so, in order.

        Only for blocks a power cut tore on every replica (an unsynced write's bytes and its checksum
        reached the disk apart): nothing in them since their last sync was promised, and a local disk
        shows what a crash left of such a write.  Anywhere else this would bless corrupt bytes; the
        master asks for it only after such a cut (mds/fanned_mender.py `take_torn`).
        """
        if any(not 0 <= b < self.n_blocks for b in blocks):
            raise InvalidArgument(f"chunk {chunk_id:016x}: block numbers must be below {self.n_blocks}")
        taken: list[int] = []
        with self._chunk_lock(chunk_id), self._lease(chunk_id, version) as lease:
            for block in sorted(set(blocks)):
                buf, bad = self._read_blocks(lease, block, 1)
                if bad is None:
                    continue
                try:
                    _pwrite_full(lease.fd, [struct.pack("<I", crc32c(buf))], HEADER_SIZE + block * CRC_ENTRY_SIZE)
                except OSError as exc:
                    if is_disk_full(exc):
                        raise self._no_space(lease, exc, f"taking block {block} as it is") from exc
                    raise
                self.written.wrote(chunk_id, block * self.block_size, self.block_size)
                taken.append(block)
            if taken:
                self._sync(lease, data_only=True)
        if taken:
            logger.warning("chunk %016x version %d: block(s) %s failed their checksum after a power cut and were "
                           "taken as they are on this disk (their checksums made anew)", chunk_id, version,
                           _block_list(taken))
        return taken

    def space(self) -> tuple[int, int]:
        """(total, free) bytes of the filesystem holding the store (free as seen by non-root)."""
        st = os.statvfs(self.root)
        return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize

    def used_bytes(self) -> int:
        """Approximate bytes the replicas occupy on disk (allocated blocks, so holes are free)."""
        with self._lock:
            paths = [self._path_for(c, v) for c, v in self._index.items()]
        total = 0
        for path in paths:
            try:
                total += path.stat().st_blocks * 512
            except FileNotFoundError:
                continue  # deleted meanwhile
        return total
