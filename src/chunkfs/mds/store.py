"""The metadata state machine over an embedded SQLite store.

Every change to metadata is a command (a msgpack map with an ``op``) that the
replicated log delivers to `MetadataStore.apply` in the same order on every
member.  `apply` is deterministic — times, ids and terms come from the command
or the log entry, never from the clock — and writes the applied index in the
same transaction as the change, so a restart re-applies exactly what is
missing and a snapshot is a consistent copy of one file.

Why SQLite: it ships with Python, its WAL mode lets reads proceed during a
write, indexes give ordered directory listings and chunk ranges without
holding the namespace in RAM, and its online backup of a read transaction
gives consistent snapshots, file to file, without fork or a pause.  The Raft log
in front of it is the durable record, so SQLite runs with ``synchronous=NORMAL``:
a power cut may roll back the last transactions, which the log replays.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import stat as statmod
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from chunkfs.common.change_time import KERNEL_AHEAD_NS, change_ctime, not_before
from chunkfs.common.errors import (
    ChunkFSError,
    DirectoryNotEmpty,
    Exists,
    InvalidArgument,
    IsADirectory,
    NotADirectory,
    NotFound,
    StaleVersion,
    SymlinkLoop,
    Unavailable,
    WritesLost,
    error_from_code,
)
from chunkfs.common.names import check_name, check_name_length, check_symlink_target, shown, to_bytes
from chunkfs.common.placement import DEFAULT_FAILURE_DOMAIN, FAILURE_DOMAINS, MAX_TIER
from chunkfs.common.settings import effective
from chunkfs.protocol.messages import ROOT_INO

logger = logging.getLogger(__name__)

#: What a command's own values make it raise, the same on every metadata server (an integer SQLite
#: cannot hold, a field of the wrong type or missing): the command fails, as one answered with an
#: error does, and the log goes on.  Raised out of `apply`, a committed command like that stopped
#: every metadata server, again at each restart (a hostile-peer probe: one SETATTR).  A fault of
#: the disk or the database (sqlite3.OperationalError, OSError) still stops this server alone.
COMMAND_FAULTS: tuple[type[Exception], ...] = (
    OverflowError, TypeError, ValueError, KeyError, IndexError, sqlite3.IntegrityError, sqlite3.InterfaceError,
)

DEFAULT_REPLICAS = 3
DEFAULT_MIN_REPLICAS = 2
MAX_REPLICAS = 16
#: Chunk versions are ``term << VERSION_TERM_SHIFT | sequence``: a newer term
#: always wins, so maps handed out by a deposed master compare as stale.
VERSION_TERM_SHIFT = 32
#: The most chunk ids one `reserve_chunk_ids` sets aside.
MAX_RESERVED_IDS = 1 << 16
#: Mount sessions the store lists at most (each a running mount; open_files.py).
MAX_SESSIONS = 10_000

#: Times are integer nanoseconds (INTEGER: a REAL column would round them to floats).
_INODES = """CREATE TABLE IF NOT EXISTS inodes (
    ino INTEGER PRIMARY KEY, type TEXT NOT NULL, mode INTEGER NOT NULL, size INTEGER NOT NULL,
    atime INTEGER NOT NULL, mtime INTEGER NOT NULL, ctime INTEGER NOT NULL,
    replicas INTEGER NOT NULL, min_replicas INTEGER NOT NULL, nlink INTEGER NOT NULL,
    chunks INTEGER NOT NULL DEFAULT 0)"""
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
{_INODES};
CREATE TABLE IF NOT EXISTS dentries (
    parent INTEGER NOT NULL, name BLOB NOT NULL, ino INTEGER NOT NULL,
    PRIMARY KEY (parent, name)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dentries_ino ON dentries(ino);
CREATE TABLE IF NOT EXISTS chunks (
    chunk_id INTEGER PRIMARY KEY, ino INTEGER NOT NULL, idx INTEGER NOT NULL,
    version INTEGER NOT NULL, replicas TEXT NOT NULL,
    nrep INTEGER NOT NULL DEFAULT 0, want INTEGER NOT NULL DEFAULT 0, minimum INTEGER NOT NULL DEFAULT 0);
CREATE UNIQUE INDEX IF NOT EXISTS chunks_file ON chunks(ino, idx);
CREATE TABLE IF NOT EXISTS chunk_replicas (
    chunk_id INTEGER NOT NULL, cs_id INTEGER NOT NULL, PRIMARY KEY (chunk_id, cs_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS chunk_replicas_cs ON chunk_replicas(cs_id);
CREATE TABLE IF NOT EXISTS cs_replicas (cs_id INTEGER PRIMARY KEY, n INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS chunk_goals (
    nrep INTEGER NOT NULL, want INTEGER NOT NULL, minimum INTEGER NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (nrep, want, minimum)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chunk_servers (
    cs_id INTEGER PRIMARY KEY, addr TEXT NOT NULL, host TEXT NOT NULL, registered REAL NOT NULL);
CREATE TABLE IF NOT EXISTS mds_members (id INTEGER PRIMARY KEY, addr TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY, time REAL NOT NULL, level TEXT NOT NULL, message TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS placement (ino INTEGER PRIMARY KEY, domain TEXT NOT NULL, tier INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS symlinks (ino INTEGER PRIMARY KEY, target BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS orphans (ino INTEGER PRIMARY KEY, since REAL NOT NULL);
CREATE TABLE IF NOT EXISTS cuts (ino INTEGER PRIMARY KEY, idx INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS trims (ino INTEGER PRIMARY KEY, idx INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS unzeroed (ino INTEGER PRIMARY KEY, size INTEGER);
CREATE TABLE IF NOT EXISTS to_trim (ino INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS removed_cs (cs_id INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS mount_sessions (name TEXT PRIMARY KEY, since REAL NOT NULL);
CREATE TABLE IF NOT EXISTS answers (
    cid TEXT NOT NULL, seq INTEGER NOT NULL, idx INTEGER NOT NULL, answer BLOB NOT NULL,
    PRIMARY KEY (cid, seq)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS answers_idx ON answers(idx);
"""
#: Bookkeeping kept by the store itself, in the transaction of every change (so it is replicated and
#: deterministic like the rest): a chunk's goal (``want``/``minimum``) follows its file's ``replicas=``,
#: the replicas it lists are also rows of ``chunk_replicas`` (indexed by chunk server: "chunks on
#: CS#n" is an index range, not a scan), ``cs_replicas`` counts them per server and ``chunk_goals``
#: counts chunks by (replicas listed, goal), and ``meta``'s ``inodes`` counts inodes (`inode_count`,
#: for ``df -i``).  So the master's health counts are a few rows to read
#: (see `goal_histogram`), whatever the number of chunks.  Created after `_migrate`, which adds the
#: columns these refer to.
_TRIGGERS = """
CREATE TRIGGER IF NOT EXISTS chunk_goals_insert AFTER INSERT ON chunks BEGIN
    INSERT INTO chunk_goals VALUES (new.nrep, new.want, new.minimum, 1)
        ON CONFLICT (nrep, want, minimum) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS chunk_goals_delete AFTER DELETE ON chunks BEGIN
    UPDATE chunk_goals SET n = n - 1 WHERE nrep = old.nrep AND want = old.want AND minimum = old.minimum;
    DELETE FROM chunk_replicas WHERE chunk_id = old.chunk_id;
END;
CREATE TRIGGER IF NOT EXISTS chunk_goals_update AFTER UPDATE OF nrep, want, minimum ON chunks
WHEN old.nrep != new.nrep OR old.want != new.want OR old.minimum != new.minimum BEGIN
    UPDATE chunk_goals SET n = n - 1 WHERE nrep = old.nrep AND want = old.want AND minimum = old.minimum;
    INSERT INTO chunk_goals VALUES (new.nrep, new.want, new.minimum, 1)
        ON CONFLICT (nrep, want, minimum) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS cs_replicas_insert AFTER INSERT ON chunk_replicas BEGIN
    INSERT INTO cs_replicas VALUES (new.cs_id, 1) ON CONFLICT (cs_id) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS cs_replicas_delete AFTER DELETE ON chunk_replicas BEGIN
    UPDATE cs_replicas SET n = n - 1 WHERE cs_id = old.cs_id;
END;
-- A file's chunk count, for st_blocks: a sparse image shows what it holds, not its size.
CREATE TRIGGER IF NOT EXISTS file_chunks_insert AFTER INSERT ON chunks BEGIN
    UPDATE inodes SET chunks = chunks + 1 WHERE ino = new.ino;
END;
CREATE TRIGGER IF NOT EXISTS file_chunks_delete AFTER DELETE ON chunks BEGIN
    UPDATE inodes SET chunks = chunks - 1 WHERE ino = old.ino;
END;
CREATE TRIGGER IF NOT EXISTS inode_count_insert AFTER INSERT ON inodes BEGIN
    UPDATE meta SET value = value + 1 WHERE key = 'inodes';
END;
CREATE TRIGGER IF NOT EXISTS inode_count_delete AFTER DELETE ON inodes BEGIN
    UPDATE meta SET value = value - 1 WHERE key = 'inodes';
END;
CREATE TRIGGER IF NOT EXISTS chunk_goal_follows_file AFTER UPDATE OF replicas, min_replicas ON inodes
WHEN old.replicas != new.replicas OR old.min_replicas != new.min_replicas BEGIN
    UPDATE chunks SET want = new.replicas, minimum = new.min_replicas WHERE ino = new.ino;
END;
"""
#: Which chunks a command changed, for the master's health bookkeeping (`MetadataStore.chunk_listener`):
#: TEMP triggers (this connection only: not replicated, not in snapshots) call back into Python.
_TOUCHED = """
CREATE TEMP TRIGGER IF NOT EXISTS touched_insert AFTER INSERT ON main.chunks BEGIN
    SELECT chunkfs_touched(new.chunk_id);
END;
CREATE TEMP TRIGGER IF NOT EXISTS touched_update AFTER UPDATE ON main.chunks BEGIN
    SELECT chunkfs_touched(new.chunk_id);
END;
CREATE TEMP TRIGGER IF NOT EXISTS touched_delete AFTER DELETE ON main.chunks BEGIN
    SELECT chunkfs_touched(old.chunk_id);
END;
CREATE TEMP TRIGGER IF NOT EXISTS touched_placement AFTER INSERT ON main.placement BEGIN
    SELECT chunkfs_touched(chunk_id) FROM main.chunks WHERE ino = new.ino;
END;
"""
#: A registration page's check: current versions of the page's chunks that list the server (+ "IN (?, ...)").
_LISTED_VERSIONS = ("SELECT c.chunk_id, c.version FROM chunk_replicas r JOIN chunks c ON c.chunk_id = r.chunk_id "
                    "WHERE r.cs_id = ? AND r.chunk_id IN")
#: Answers to clients' changes are kept for retries at most this many log entries (far longer than
#: any client retries: seconds of work even on a busy cluster), so the table stays bounded.
ANSWER_WINDOW = 1_000_000
#: Answers past the window are deleted at every this many log entries, not at each (one statement
#: fewer per change; the table holds at most this many more).
ANSWER_PRUNE_EVERY = 256
#: SQLite page size of a new store (see `_open`).
PAGE_SIZE = 1024
#: How long the applying connection waits for a lock held by another (Python's default).
BUSY_TIMEOUT_MS = 5000
#: Symbolic links followed while resolving one path (Linux's limit).
MAX_SYMLINK_HOPS = 40
#: Events deleted at most per new event when the event log is over its window.
EVENT_TRIM_BATCH = 1000
#: Directory levels `path_of` climbs at most (a bound, not a limit anyone meets).
MAX_PATH_DEPTH = 4096
#: Mode bits by inode type ("f" file, "d" directory, "l" symbolic link).
_TYPE_BITS = {"f": statmod.S_IFREG, "d": statmod.S_IFDIR, "l": statmod.S_IFLNK}


@dataclass(slots=True, frozen=True)
class Chunk:
    chunk_id: int
    ino: int
    index: int
    version: int
    replicas: tuple[int, ...]


#: Schema versions: 2 keeps inode times as integer nanoseconds, counts links, and names are bytes.
SCHEMA_VERSION = 2


def _ns(t: float | int) -> int:
    """An inode time as integer nanoseconds.

    Commands carry the master's clock (``time``) as integer nanoseconds (float seconds before
    2026-12-07, and still for events and registrations), as are times a client sets or wrote at;
    nanoseconds survive exactly (utimensat, ``cp -p``, ``tar``), which float seconds cannot.
    """
    return t if isinstance(t, int) else round(t * 1_000_000_000)


#: An orphan's time above this is nanoseconds, not seconds (in seconds it would be some 30 million years on).
_NS_ABOVE = 1e15


def _seconds(t: float | int) -> float:
    """A command's ``time`` as float seconds (when an orphan was made: its age is judged against `time.time`)."""
    return t / 1_000_000_000 if isinstance(t, int) else t


@dataclass(slots=True, frozen=True)
class ChunkRow:
    """A chunk with what its health depends on in the store: its file's goal and placement."""

    chunk: Chunk
    want: int
    minimum: int
    failure_domain: str
    tier: int


_ROW_SELECT = (
    "SELECT c.chunk_id, c.ino, c.idx, c.version, c.replicas, c.want, c.minimum, p.domain, p.tier "
    "FROM chunks c LEFT JOIN placement p ON p.ino = c.ino "
)


def _row(r: tuple[Any, ...]) -> ChunkRow:
    return ChunkRow(Chunk(r[0], r[1], r[2], r[3], _replicas_of(r[4])), r[5], r[6],
                    r[7] or DEFAULT_FAILURE_DOMAIN, r[8] or 0)


#: An inode's attributes: `_ATTR_SELECT` + a WHERE clause, rows turned into dicts by `_attr_of`.
_ATTR_SELECT = (
    "SELECT i.ino, type, mode, size, atime, mtime, ctime, replicas, min_replicas, nlink, chunks, p.domain, p.tier, "
    "s.target, c.idx "
    "FROM inodes i LEFT JOIN placement p ON p.ino = i.ino LEFT JOIN symlinks s ON s.ino = i.ino "
    "LEFT JOIN cuts c ON c.ino = i.ino "
)


def _attr_of(row: tuple[Any, ...]) -> dict[str, Any]:
    ino, kind, mode, size, atime, mtime, ctime, replicas, min_replicas, nlink, chunks, domain, tier, target, cut = row
    attr = {
        "ino": ino, "type": kind, "mode": mode | _TYPE_BITS[kind], "nlink": nlink,
        "size": size, "chunks": chunks, "atime_ns": atime, "mtime_ns": mtime, "ctime_ns": ctime,
        "replicas": replicas, "min_replicas": min_replicas,
        "failure_domain": domain or DEFAULT_FAILURE_DOMAIN, "tier": tier or 0,
    }
    if target is not None:
        attr["target"] = bytes(target)
    if kind == "f":
        attr["cut"] = cut or 0  # see `MetadataStore._cut`
    return attr


def _without_dropped(result: Any) -> Any:
    """A change's answer as kept for retries: plain data, without the chunks it dropped (freed once)."""
    if isinstance(result, dict) and "dropped" in result:
        return {**result, "dropped": []}
    return result


def _replay(answer: dict[str, Any]) -> Any:
    """The first answer again: the result, or the same error raised."""
    if "error" in answer:
        code, message = answer["error"]
        raise error_from_code(code, message)
    return answer["ok"]


def encode_command(op: str, **args: Any) -> bytes:
    return msgpack.packb({"op": op, **args}, use_bin_type=True)


def _replicas_text(cs_ids: list[int] | tuple[int, ...]) -> str:
    return ",".join(str(i) for i in cs_ids)


def _replicas_of(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",")) if text else ()


def _distinct(cs_ids: list[int] | tuple[int, ...]) -> tuple[int, ...]:
    """A replica set lists a server once (first place kept)."""
    return tuple(dict.fromkeys(int(cs) for cs in cs_ids))


class MetadataStore:
    """The namespace, the chunk map and the chunk-server registry."""

    def __init__(self, path: Path, chunk_size: int) -> None:
        self.path = path
        self.chunk_size = chunk_size
        #: Called after a command with the ids of the chunks it created, changed or removed (also
        #: their goal or placement); the master's replication monitor re-checks just those.
        self.chunk_listener: Callable[[list[int]], None] | None = None
        self._touched: list[int] = []
        #: Between `hold` and `release`: each command is a savepoint of the batch's one transaction.
        self._batched = False
        #: The log index of the command being applied (`_cut` records it).
        self._index = 0
        #: Held while the database files are checkpointed, replaced (restore) or closed.
        self._files_lock = threading.Lock()
        for suffix in ("", "-wal"):  # a store replaced just before a stop (see `restore`)
            path.with_name(f"{path.name}{suffix}.old").unlink(missing_ok=True)
        self._open()
        with self._tx():
            if self._meta("applied_index") is None:
                self._set_meta("applied_index", 0)
                self._set_meta("next_ino", ROOT_INO + 1)
                self._set_meta("next_chunk_id", 1)
                self._set_meta("next_cs_id", 1)
                self._set_meta("version_seq", 0)
                self._set_meta("event_seq", 0)
                self._set_meta("chunk_size", chunk_size)
                self._set_meta("schema", SCHEMA_VERSION)
                self.db.execute(
                    "INSERT INTO inodes VALUES (?, 'd', ?, 0, 0, 0, 0, ?, ?, 2, 0)",
                    (ROOT_INO, 0o755, DEFAULT_REPLICAS, DEFAULT_MIN_REPLICAS),
                )

    def _open(self) -> None:
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                  timeout=BUSY_TIMEOUT_MS / 1000)
        # Small pages: a change rewrites a few whole pages (of each table and index it touches) into
        # the write-ahead log, and its rows are small. A create wrote 29.6 KiB of log with 4 KiB
        # pages, 8.1 KiB with 1 KiB pages, and applied in 97-101 µs instead of 124-144 µs.
        # Only a new, empty database takes it; an existing one keeps its page size.
        self.db.execute(f"PRAGMA page_size={PAGE_SIZE}")
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        # Never on this connection: a checkpoint fsyncs the database file, and this connection
        # applies changes on the event loop (see `checkpoint`).
        self.db.execute("PRAGMA wal_autocheckpoint=0")
        # After a burst the write-ahead log is cut back to this size once it is reused, not kept at its peak.
        self.db.execute("PRAGMA journal_size_limit=67108864")
        self.db.executescript(_SCHEMA)
        self._migrate()
        self.db.executescript(_TRIGGERS)
        if self._meta("inodes") is None:  # a new store, or one from before the count was kept
            with self._tx():
                self._set_meta("inodes", self.db.execute("SELECT COUNT(*) FROM inodes").fetchone()[0])
        self.db.create_function("chunkfs_touched", 1, self._touched.append)
        self.db.executescript(_TOUCHED)

    def _migrate(self) -> None:
        """Bring a store written by an older version up to this schema (deterministically: every member does it)."""
        if self._meta("applied_index") is not None and (self._meta("schema") or 1) < SCHEMA_VERSION:
            self._migrate_inodes()
        with self._tx():
            # An earlier version applies a later master's times (integer nanoseconds) as they come, where this
            # one takes seconds (`_seconds`): a rolling upgrade left removed folders' times so on an old
            # member, which never reaped them once master (an upgrade probe).  The same instants in seconds.
            self.db.execute("UPDATE orphans SET since = since / 1e9 WHERE since > ?", (_NS_ABOVE,))
        if "chunks" not in {row[1] for row in self.db.execute("PRAGMA table_info(inodes)")}:
            with self._tx():  # a store from before files counted their chunks
                self.db.execute("ALTER TABLE inodes ADD COLUMN chunks INTEGER NOT NULL DEFAULT 0")
                self.db.execute("UPDATE inodes SET chunks = (SELECT COUNT(*) FROM chunks c WHERE c.ino = inodes.ino) "
                                "WHERE type = 'f'")
        if "size" not in {row[1] for row in self.db.execute("PRAGMA table_info(unzeroed)")}:
            with self._tx():  # a store from before trims kept their size (NULL: the file's size then)
                self.db.execute("ALTER TABLE unzeroed ADD COLUMN size INTEGER")
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(chunks)")}
        if "nrep" not in columns:
            # Replica lists were comma-separated text only: index them by chunk server, count them.
            with self._tx():
                for column in ("nrep", "want", "minimum"):
                    self.db.execute(f"ALTER TABLE chunks ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0")
                self.db.execute(
                    "UPDATE chunks SET want = (SELECT replicas FROM inodes i WHERE i.ino = chunks.ino), "
                    "minimum = (SELECT min_replicas FROM inodes i WHERE i.ino = chunks.ino)")
                rows = self.db.execute("SELECT chunk_id, replicas FROM chunks").fetchall()
                for chunk_id, text in rows:
                    listed = _distinct(_replicas_of(text))
                    self.db.executemany("INSERT INTO chunk_replicas VALUES (?, ?)", [(chunk_id, cs) for cs in listed])
                    self.db.execute("UPDATE chunks SET nrep = ? WHERE chunk_id = ?", (len(listed), chunk_id))
                self.db.execute("DELETE FROM cs_replicas")
                self.db.execute("INSERT INTO cs_replicas SELECT cs_id, COUNT(*) FROM chunk_replicas GROUP BY cs_id")
                self.db.execute("DELETE FROM chunk_goals")
                self.db.execute(
                    "INSERT INTO chunk_goals SELECT nrep, want, minimum, COUNT(*) FROM chunks "
                    "GROUP BY nrep, want, minimum")

    def _migrate_inodes(self) -> None:
        """Schema 1 kept times as REAL seconds (a column type SQLite would keep rounding to), no link counts,
        and names as text."""
        with self._tx():
            # Triggers are made again after migrating (_TRIGGERS); a rename would drag them along.
            for (trigger,) in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
                self.db.execute(f'DROP TRIGGER "{trigger}"')
            self.db.execute("ALTER TABLE inodes RENAME TO inodes_v1")
            self.db.execute(_INODES)
            self.db.execute(
                "INSERT INTO inodes SELECT ino, type, mode, size, CAST(ROUND(atime * 1e9) AS INTEGER), "
                "CAST(ROUND(mtime * 1e9) AS INTEGER), CAST(ROUND(ctime * 1e9) AS INTEGER), replicas, min_replicas, "
                "CASE type WHEN 'd' THEN 2 + (SELECT COUNT(*) FROM dentries d JOIN inodes_v1 c ON c.ino = d.ino "
                "WHERE d.parent = inodes_v1.ino AND c.type = 'd') ELSE 1 END, "
                "(SELECT COUNT(*) FROM chunks k WHERE k.ino = inodes_v1.ino) FROM inodes_v1")
            self.db.execute("DROP TABLE inodes_v1")
            # Names were TEXT: the same bytes (UTF-8), now compared as bytes like every new name.
            self.db.execute("UPDATE dentries SET name = CAST(name AS BLOB)")
            self._set_meta("schema", SCHEMA_VERSION)
        logger.info("metadata store %s migrated to schema %d", self.path, SCHEMA_VERSION)

    def close(self) -> None:
        with self._files_lock:
            try:
                self.release()
            finally:
                self.db.close()

    def checkpoint(self) -> tuple[int, int]:
        """Copy the write-ahead log into the database file; (frames in the log, frames copied).

        Run in a worker thread on a connection of its own, so the event loop that
        applies changes never waits for the fsyncs a checkpoint makes (on a
        loaded disk they can take seconds: a master that stops answering loses
        its leadership).  PASSIVE never waits for the writer: what it could not
        copy is copied next time.
        """
        with self._files_lock:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=0)
            try:
                _busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            finally:
                conn.close()
        return int(frames), int(copied)

    def log_bytes(self) -> int:
        """The size of the write-ahead log file now."""
        try:
            return os.path.getsize(f"{self.path}-wal")
        except OSError:
            return 0

    def reset_log(self) -> bool:
        """Copy what the last `checkpoint` could not and rewind the write-ahead log; False if a reader held it.

        `checkpoint` alone never gets the log rewound while changes keep
        coming: each pass copies the frames there were when it started, and
        the ones written meanwhile keep the next change from starting the log
        over, so it grew without bound (0.5 GiB after 24,000 small files).
        Run right after a `checkpoint`, on this (the applying) connection, so
        no change is applied meanwhile: only the frames of the last moments
        are left to copy (1-11 ms here).  The next change then writes at the
        log's start, and the file is cut back to `journal_size_limit`.  A
        reader (a snapshot being copied) is not waited for, nor is the lock
        a snapshot holds for all of its copy: this runs on the event loop.
        """
        if not self._files_lock.acquire(blocking=False):
            return False
        try:
            self.release()  # (a checkpoint waits for no transaction of its own connection)
            self.db.execute("PRAGMA busy_timeout=0")
            try:
                busy, _frames, _copied = self.db.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
            finally:
                self.db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        finally:
            self._files_lock.release()
        return int(busy) == 0

    # -- plumbing --------------------------------------------------------------

    @contextmanager
    def _tx(self) -> Iterator[None]:
        self._begin()
        try:
            yield
        except BaseException:
            self._rollback()
            raise
        self._commit()

    def _begin(self) -> None:
        self.db.execute("SAVEPOINT command" if self._batched else "BEGIN IMMEDIATE")

    def _commit(self) -> None:
        self.db.execute("RELEASE command" if self._batched else "COMMIT")

    def _rollback(self) -> None:
        if not self.db.in_transaction:
            return  # SQLite rolled it back itself (an I/O error, a full disk): the error goes on up
        if self._batched:
            self.db.execute("ROLLBACK TO command")
            self.db.execute("RELEASE command")
        else:
            self.db.execute("ROLLBACK")

    def hold(self) -> None:
        """Apply the next commands in one transaction, each a savepoint of it, until `release` commits it.

        Both the master and the followers apply what was committed in batches
        (raft/driver.py): SQLite then writes each page the commands changed
        once per batch, not once per command, and syncs nothing per command
        either way (``synchronous=NORMAL``; the Raft log is the durable
        record, and a store that loses its last batch applies it again from
        the log).  Reads on this connection see every command applied; other
        connections (a checkpoint, a snapshot's copy) see the last batch
        committed, whose applied index is in it.
        """
        if not self._batched:
            self.db.execute("BEGIN IMMEDIATE")
            self._batched = True

    def release(self) -> None:
        """Commit the batch `hold` began (nothing if none).

        What the batch applied before an error is committed all the same: the
        applied index always matches the changes on disk.
        """
        if not self._batched:
            return
        self._batched = False
        if self.db.in_transaction:  # else SQLite rolled it back itself, and the error went on up
            self.db.execute("COMMIT")

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Apply several commands in one transaction (`hold`), committed at the end."""
        assert not self._batched, "batches do not nest"
        self.hold()
        try:
            yield
        finally:
            self.release()

    def _meta(self, key: str) -> int | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else int(row[0])

    def _set_meta(self, key: str, value: int) -> None:
        # An upsert changes the row in place; INSERT OR REPLACE deleted and re-inserted it (and its key).
        self.db.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        (key, value))

    def _next(self, key: str) -> int:
        """The counter's value, counted up in the same statement."""
        rows = self.db.execute("UPDATE meta SET value = value + 1 WHERE key = ? RETURNING value - 1", (key,)).fetchall()
        assert rows, f"no counter {key!r}"
        return int(rows[0][0])

    @property
    def applied_index(self) -> int:
        return self._meta("applied_index") or 0

    def inode_count(self) -> int:
        """Files, directories and links, the root included (kept by a trigger: no scan)."""
        return self._meta("inodes") or 0

    # -- apply -----------------------------------------------------------------

    def apply(self, index: int, term: int, data: bytes) -> Any:
        """Apply one committed command; errors are results too, and deterministic.

        A command that carries a client's request id (``req``: client id,
        sequence number, lowest number the client may still retry) is done at
        most once: a retry of it — sent again because the answer was lost to
        a timeout or a master change — gets the first answer, kept in the
        same transaction as the change (Raft thesis, 6.3).  Chunks a change
        dropped are not in a repeated answer: the first one freed them.
        """
        try:
            command = msgpack.unpackb(data, raw=False)
            op = command.pop("op")
            req = command.pop("req", None)
        except (*COMMAND_FAULTS, AttributeError, msgpack.UnpackException) as exc:
            logger.error("entry %d is not a metadata command (%s): skipped, as on every metadata server", index, exc)
            with self._tx():
                self._set_meta("applied_index", index)
            raise InvalidArgument(f"entry {index} is not a metadata command") from None
        for key in ("name", "new_name"):
            if isinstance(command.get(key), str):
                command[key] = to_bytes(command[key])  # a name sent as text (the CLI, an older client)
        handler = getattr(self, f"_op_{op}", None)
        if handler is None:
            # A command from a newer version: skip it, deterministically, like any failed command.
            with self._tx():
                self._set_meta("applied_index", index)
            raise InvalidArgument(f"unknown metadata command {op!r}")
        self._begin()
        self._index = index
        answered = None
        try:
            if req is not None:
                answered = self._answer_of(index, req)
            if answered is None:
                result = handler(term=term, **command)
        except (ChunkFSError, *COMMAND_FAULTS) as exc:
            if not isinstance(exc, ChunkFSError):
                logger.error("metadata command %r at entry %d failed: skipped, as on every metadata server",
                             op, index, exc_info=exc)
                exc = InvalidArgument(f"{op}: a value the store cannot take ({type(exc).__name__}: {exc})")
            self._rollback()
            self._touched.clear()
            with self._tx():
                self._set_meta("applied_index", index)
                if req is not None:
                    self._keep_answer(index, req, {"error": [exc.code, str(exc)]})
            raise exc from None
        except BaseException:
            self._rollback()
            self._touched.clear()
            raise
        if answered is not None:
            self._set_meta("applied_index", index)
            self._commit()
            return _replay(answered)
        if req is not None:
            self._keep_answer(index, req, {"ok": _without_dropped(result)})
        self._set_meta("applied_index", index)
        self._commit()
        if self._touched:
            touched = list(dict.fromkeys(self._touched))
            self._touched.clear()
            if self.chunk_listener is not None:
                self.chunk_listener(touched)
        return result

    def _answer_of(self, index: int, req: list[Any]) -> dict[str, Any] | None:
        """The kept answer to this request, if it was done; forget what the client will not ask again."""
        cid, seq, low = str(req[0]), int(req[1]), int(req[2])
        self.db.execute("DELETE FROM answers WHERE cid = ? AND seq < ?", (cid, low))
        if index % ANSWER_PRUNE_EVERY == 0:
            self.db.execute("DELETE FROM answers WHERE idx < ?", (index - ANSWER_WINDOW,))
        row = self.db.execute("SELECT answer FROM answers WHERE cid = ? AND seq = ?", (cid, seq)).fetchone()
        return None if row is None else msgpack.unpackb(row[0], raw=False)

    def answered(self, cid: str, seq: int) -> bool:
        """Whether the client's request `seq` was done (its answer kept): a retry of it is answered as it was."""
        return self.db.execute("SELECT 1 FROM answers WHERE cid = ? AND seq = ?", (cid, seq)).fetchone() is not None

    def _keep_answer(self, index: int, req: list[Any], answer: dict[str, Any]) -> None:
        self.db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?)",
                        (str(req[0]), int(req[1]), index, msgpack.packb(answer, use_bin_type=True)))

    def _new_version(self, term: int) -> int:
        return (term << VERSION_TERM_SHIFT) | self._next("version_seq")

    def _op_mkdir(self, term: int, parent: int, name: str, mode: int, time: float) -> dict[str, Any]:
        return self._make_node(parent, name, "d", mode, time)

    def _op_create(
        self, term: int, parent: int, name: str, mode: int, time: float, exclusive: bool, truncate: bool = False
    ) -> dict[str, Any]:
        """Create a file, or (not `exclusive`) open the one there, cut to size 0 if `truncate` (O_TRUNC).

        A truncated file's chunks are in the result's ``dropped`` list: the
        master deletes their replicas.
        """
        check_name_length(name)
        existing = self._child(parent, name)
        if existing is None:
            return {"attr": self._make_node(parent, name, "f", mode, time, absent=True), "dropped": []}
        if exclusive:
            raise Exists(f"{shown(name)} already exists")
        attr = self.getattr(existing)
        if attr["type"] == "d":
            raise IsADirectory(f"{shown(name)} is a directory")
        if attr["type"] != "f":
            raise Exists(f"{shown(name)} exists and is not a regular file")
        if not truncate:
            return {"attr": attr, "dropped": []}
        return self._op_setattr(term, existing, time, size=0)

    def _op_symlink(self, term: int, parent: int, name: str, target: bytes, time: float) -> dict[str, Any]:
        check_symlink_target(target)
        attr = self._make_node(parent, name, "l", 0o777, time)
        self.db.execute("INSERT INTO symlinks VALUES (?, ?)", (attr["ino"], target))
        self.db.execute("UPDATE inodes SET size = ? WHERE ino = ?", (len(target), attr["ino"]))
        return self.getattr(attr["ino"])

    def _make_node(
        self, parent: int, name: str, kind: str, mode: int, time: float, absent: bool = False
    ) -> dict[str, Any]:
        """A new inode named `name` in `parent`; `absent`: the caller has just found no such name."""
        check_name(name)
        pattr = self._live_dir_attr(parent)
        if not absent and self._child(parent, name) is not None:
            raise Exists(f"{shown(name)} already exists")
        ino, t = self._next("next_ino"), _ns(time)
        if kind == "d" and pattr["mode"] & statmod.S_ISGID:
            mode |= statmod.S_ISGID  # a directory in a set-group-ID directory inherits the bit
        nlink = 2 if kind == "d" else 1
        self.db.execute(
            "INSERT INTO inodes VALUES (?, ?, ?, 0, ?, ?, ?, ?, ?, ?, 0)",
            (ino, kind, mode & 0o7777, t, t, t, pattr["replicas"], pattr["min_replicas"], nlink),
        )
        self.db.execute("INSERT INTO dentries VALUES (?, ?, ?)", (parent, name, ino))
        # A new subdirectory's ".." is one more link to its parent.
        self.db.execute("UPDATE inodes SET mtime = ?, ctime = ?, nlink = nlink + ? WHERE ino = ?",
                        (t, t, int(kind == "d"), parent))
        # Failure domain and tier are inherited like replicas (no row: the defaults, so none is needed then).
        domain, tier = pattr["failure_domain"], pattr["tier"]
        if domain != DEFAULT_FAILURE_DOMAIN or tier != 0:
            self.db.execute("INSERT INTO placement VALUES (?, ?, ?)", (ino, domain, tier))
        # What `getattr` would read back, without reading it: the row just written, as `_ATTR_SELECT` has it.
        return _attr_of((ino, kind, mode & 0o7777, 0, t, t, t, pattr["replicas"], pattr["min_replicas"], nlink, 0,
                         domain, tier, None, None))

    def _op_setattr(
        self,
        term: int,
        ino: int,
        time: float,
        size: int | None = None,
        mode: int | None = None,
        mtime: int | float | None = None,
        atime: int | float | None = None,
        extend: list[int] | None = None,
        ctime: int | None = None,
    ) -> dict[str, Any]:
        """Change attributes; `mtime`/`atime` in nanoseconds.  Every change of an inode moves its ctime.

        `extend` ([size, mtime] or [size, mtime, cut]): a writer's `extend` not sent yet, done first (one
        commit for both).
        `ctime`: when the mount made the change (times it set on an open file and commits later).
        """
        if extend is not None:
            self._op_extend(term, ino, extend[0], extend[1], time, extend[2] if len(extend) > 2 else None)
        attr = self.getattr(ino)
        dropped: list[Chunk] = []
        now = _ns(time)
        if ctime is not None:
            new_ctime = _ns(ctime)
        else:
            set_now = mtime if mtime is not None else atime
            new_ctime = change_ctime(None if set_now is None else _ns(set_now), now, attr["ctime_ns"])
        self.db.execute("UPDATE inodes SET ctime = ? WHERE ino = ?", (new_ctime, ino))
        if size is not None:
            if attr["type"] == "d":
                raise IsADirectory("cannot set the size of a directory")
            if attr["type"] != "f":
                raise InvalidArgument("only a regular file has a size to set")
            if size < 0:
                raise InvalidArgument("size must not be negative")
            self._cut(ino)
            first_dropped = -(-size // self.chunk_size)
            dropped = self._chunks_from(ino, first_dropped)
            self.db.execute("DELETE FROM chunks WHERE ino = ? AND idx >= ?", (ino, first_dropped))
            cut_at = not_before(now, new_ctime)  # (after a touch a moment ago, by the kernel's clock)
            self.db.execute("UPDATE inodes SET size = ?, mtime = ?, ctime = ? WHERE ino = ?",
                            (size, cut_at, cut_at, ino))
            # A size at or below a trim's not zeroed yet: the master cut the last chunk at it (server
            # `_setattr`), which zeroed what the trim would have.  (One above waits for the zeroing.)
            self.db.execute("DELETE FROM unzeroed WHERE ino = ? AND (size IS NULL OR size >= ?)", (ino, size))
        if mode is not None:
            self.db.execute("UPDATE inodes SET mode = ? WHERE ino = ?", (mode & 0o7777, ino))
        if mtime is not None:
            self.db.execute("UPDATE inodes SET mtime = ? WHERE ino = ?", (_ns(mtime), ino))
        if atime is not None:
            self.db.execute("UPDATE inodes SET atime = ? WHERE ino = ?", (_ns(atime), ino))
        return {"attr": self.getattr(ino), "dropped": dropped}

    def _op_trim(self, term: int, ino: int, size: int) -> dict[str, Any]:
        """A departed writer's bytes past the file's `size` go: its chunks past it dropped, a cut recorded.

        Only if the file still has that size and a name (another change since decides otherwise);
        its times do not move: nobody changed the file (OrphanReaper trims what a dead mount left,
        and zeroes the rest of the last chunk after this).  A size its writer commits later, for
        writes made before, fails (`WritesLost`): a mount that was only silent learns that its
        writes were cut, instead of an fsync that says they are there.
        """
        self.db.execute("DELETE FROM to_trim WHERE ino = ?", (ino,))  # trimmed now, or called off
        attr = self.getattr(ino)
        if attr["type"] != "f" or attr["size"] != size or attr["nlink"] == 0:
            return {"dropped": []}
        self._cut(ino)
        self.db.execute("INSERT OR REPLACE INTO trims VALUES (?, ?)", (ino, self._index))
        self.db.execute("INSERT OR REPLACE INTO unzeroed VALUES (?, ?)", (ino, size))
        first_dropped = -(-size // self.chunk_size)
        dropped = self._chunks_from(ino, first_dropped)
        self.db.execute("DELETE FROM chunks WHERE ino = ? AND idx >= ?", (ino, first_dropped))
        return {"attr": self.getattr(ino), "dropped": dropped}

    def _op_trim_zeroed(self, term: int, ino: int) -> dict[str, Any]:
        """The last chunk of a trimmed file was zeroed past its size (a next master need not do it again)."""
        self.db.execute("DELETE FROM unzeroed WHERE ino = ?", (ino,))
        return {}

    def unzeroed(self) -> list[int]:
        """Files trimmed whose last chunk a master has not yet said it zeroed past the size."""
        return [int(r[0]) for r in self.db.execute("SELECT ino FROM unzeroed ORDER BY ino")]

    def unzeroed_size(self, ino: int) -> int | None:
        """The size `ino` was trimmed at, if its last chunk is still to zero past it; None if not.

        The trim's size, not the file's: a size set since (a truncate that grew the file before
        the zeroing was done, and cut at the grown size) left the dead writer's bytes in between.
        """
        row = self.db.execute("SELECT size FROM unzeroed WHERE ino = ?", (ino,)).fetchone()  # (on every open)
        if row is None:
            return None
        return int(self.getattr(ino)["size"] if row[0] is None else row[0])  # (NULL: a row from before trims kept it)

    def _op_note_trims(self, term: int, inos: list[int]) -> None:
        """Files a dead writer may have written past their size, to trim once nobody holds them (`trim`
        takes each off): noted before its session is closed, so that a next master trims them too."""
        self.db.executemany("INSERT OR IGNORE INTO to_trim VALUES (?)", [(ino,) for ino in inos])

    def to_trim(self) -> list[int]:
        """Files noted for a trim (`_op_note_trims`) and not trimmed yet."""
        return [int(r[0]) for r in self.db.execute("SELECT ino FROM to_trim ORDER BY ino")]

    def noted_for_trim(self, ino: int) -> bool:
        """Whether `ino` is among `to_trim`."""
        return self.db.execute("SELECT 1 FROM to_trim WHERE ino = ?", (ino,)).fetchone() is not None

    def _cut(self, ino: int) -> None:
        """Record that the file's size was set (truncated, or opened with O_TRUNC) by this command.

        A writer reports its writes' end later (EXTEND, at flush, fsync or
        close), with the last cut it knew of.  Writes made before a cut it did
        not know of were cut by it (or were outgrown, or shrunk, by the size
        it set): their end must not grow the file again.  It did, with zeros,
        where the cut had removed the bytes (a probe: a logger's close on one
        mount after `truncate` on another, as logrotate's copytruncate does).
        The log index orders cuts; it is the file's ``cut`` attribute.
        """
        self.db.execute("INSERT OR REPLACE INTO cuts VALUES (?, ?)", (ino, self._index))

    def _op_extend(
        self, term: int, ino: int, size: int, mtime: int | float, time: float | None = None, cut: int | None = None
    ) -> dict[str, Any]:
        """A writer's writes reached `size`, the last at `mtime`; `cut`: the file's last cut the writer knew of."""
        attr = self.getattr(ino)
        if attr["type"] != "f":
            raise IsADirectory("not a regular file")
        if cut is not None and cut < attr["cut"]:
            trimmed = self.db.execute("SELECT idx FROM trims WHERE ino = ?", (ino,)).fetchone()
            if trimmed is not None and trimmed[0] > cut:
                raise WritesLost(
                    f"inode {ino}: writes past its size were cut, their writer taken for dead (a mount silent for "
                    "longer than session-timeout, or a writer lost with the master); write them again")
            size = 0  # written before a cut the writer had not heard of: that cut decided the size
        # `mtime` is the writer's last write.  mtime never goes back for a writer that reports
        # late, except from the future (an earlier utime, past the master's clock `time` by more
        # than the kernel's "now" may be): a write makes it now, as on a local disk.  ctime is at
        # least the write's time.
        future = 1 << 62 if time is None else _ns(time) + KERNEL_AHEAD_NS  # without the master's clock: none
        mtime = _ns(mtime)
        self.db.execute(
            "UPDATE inodes SET size = MAX(size, ?), mtime = CASE WHEN mtime > ? THEN ? ELSE MAX(mtime, ?) END, "
            "ctime = MAX(ctime, ?) WHERE ino = ?",
            (size, future, mtime, mtime, mtime, ino),
        )
        return self.getattr(ino)

    def _op_unlink(self, term: int, parent: int, name: str, time: float, free_ino: int = 0) -> dict[str, Any]:
        """Remove a name; see `_remove_entry` for what happens to a file's inode and chunks."""
        ino = self._existing_child(parent, name)
        kind = self.getattr(ino)["type"]
        if kind == "d":
            raise IsADirectory(f"{shown(name)} is a directory: use rmdir")
        result = self._remove_entry(parent, name, ino, time, free_ino, kind)
        self.db.execute("UPDATE inodes SET mtime = ?, ctime = ? WHERE ino = ?", (_ns(time), _ns(time), parent))
        return result

    def _remove_entry(
        self, parent: int, name: str, ino: int, time: float, free_ino: int, kind: str | None = None
    ) -> dict[str, Any]:
        """Take a file's or a link's name away.

        A regular file may still be open in some mount (POSIX: it lives until
        its last close), which only the master's soft state knows.  So the
        file is freed here only when the master said so for exactly this inode
        (`free_ino`, decided when it proposed the command); otherwise it
        becomes an *orphan*: no name, ``nlink`` 0, chunks kept, freed by a
        later ``free_orphans`` once no mount holds it.  The result names the
        chunks to delete and the orphan made, if any.  `kind`: the inode's type, if the caller read it.
        """
        self.db.execute("DELETE FROM dentries WHERE parent = ? AND name = ?", (parent, name))
        if (kind or self.getattr(ino)["type"]) == "f" and free_ino != ino:
            self.db.execute("UPDATE inodes SET nlink = 0, ctime = ? WHERE ino = ?", (_ns(time), ino))
            self.db.execute("INSERT OR REPLACE INTO orphans VALUES (?, ?)", (ino, _seconds(time)))
            return {"dropped": [], "orphan": ino}
        return {"dropped": self._free_inode(ino), "orphan": 0}

    def _free_inode(self, ino: int) -> list[Chunk]:
        dropped = self._chunks_from(ino, 0)
        for table in ("chunks", "inodes", "placement", "symlinks", "orphans", "cuts", "trims", "unzeroed", "to_trim"):
            self.db.execute(f"DELETE FROM {table} WHERE ino = ?", (ino,))  # noqa: S608 - fixed names
        return dropped

    def _op_free_orphans(self, term: int, inos: list[int]) -> list[Chunk]:
        """Free orphaned files no mount holds open any more; inodes that are not orphans are left alone."""
        dropped: list[Chunk] = []
        for ino in inos:
            if self.db.execute("SELECT 1 FROM orphans WHERE ino = ?", (ino,)).fetchone() is not None:
                dropped.extend(self._free_inode(ino))
        return dropped

    def orphans(self, limit: int, dirs_before: float = 1e300) -> list[int]:
        """Inodes without a name, oldest first: files (kept while a mount may hold them open) and
        directories removed before `dirs_before` (kept a while for whoever is still in them)."""
        return [int(r[0]) for r in self.db.execute(
            "SELECT o.ino FROM orphans o JOIN inodes i USING (ino) WHERE i.type != 'd' OR o.since < ? "
            "ORDER BY o.since LIMIT ?", (dirs_before, limit))]

    def orphans_among(self, inos: list[int]) -> list[int]:
        out: list[int] = []
        for start in range(0, len(inos), 500):
            part = inos[start:start + 500]
            marks = ",".join("?" * len(part))
            out.extend(int(r[0]) for r in self.db.execute(
                f"SELECT ino FROM orphans WHERE ino IN ({marks})", part))  # noqa: S608 - only placeholders
        return out

    def _op_open_session(self, term: int, session: str, time: float) -> None:
        """A mount's session, listed so that a new master knows which mounts may hold files open."""
        if self.db.execute("SELECT 1 FROM mount_sessions WHERE name = ?", (session,)).fetchone() is not None:
            return
        if self.db.execute("SELECT COUNT(*) FROM mount_sessions").fetchone()[0] >= MAX_SESSIONS:
            raise Unavailable(
                f"too many mount sessions ({MAX_SESSIONS}); unmount some, or wait for dead ones to expire")
        self.db.execute("INSERT INTO mount_sessions (name, since) VALUES (?, ?)", (session, time))

    def _op_close_sessions(self, term: int, sessions: list[str]) -> None:
        """Mounts unmounted, or silent past `session-timeout`: nothing of theirs is waited for any more."""
        self.db.executemany("DELETE FROM mount_sessions WHERE name = ?", [(name,) for name in sessions])

    def sessions(self) -> list[str]:
        return [str(r[0]) for r in self.db.execute("SELECT name FROM mount_sessions")]

    def child_ino(self, parent: int, name: str | bytes) -> int | None:
        """The inode named `name` in `parent`, if any (no checks: for the master's own decisions)."""
        return self._child(parent, to_bytes(name))

    def _op_rmdir(self, term: int, parent: int, name: str, time: float) -> None:
        ino = self._existing_child(parent, name)
        self._dir_attr(ino)
        if self.db.execute("SELECT 1 FROM dentries WHERE parent = ? LIMIT 1", (ino,)).fetchone():
            raise DirectoryNotEmpty(f"directory {shown(name)} is not empty")
        self.db.execute("DELETE FROM dentries WHERE parent = ? AND name = ?", (parent, name))
        # Kept as an orphan for a while: a process may still be in it or hold it open (fstat,
        # readdir of nothing); the master frees it later (open_files.OrphanReaper).
        self.db.execute("UPDATE inodes SET nlink = 0, ctime = ? WHERE ino = ?", (_ns(time), ino))
        self.db.execute("INSERT OR REPLACE INTO orphans VALUES (?, ?)", (ino, _seconds(time)))
        self.db.execute("UPDATE inodes SET mtime = ?, ctime = ?, nlink = nlink - 1 WHERE ino = ?",
                        (_ns(time), _ns(time), parent))

    def _op_rename(
        self, term: int, parent: int, name: str, new_parent: int, new_name: str, time: float, free_ino: int = 0,
        noreplace: bool = False,
    ) -> dict[str, Any]:
        """Move a name; a file or link it replaces goes as with unlink (`_remove_entry`)."""
        check_name_length(name)
        check_name(new_name)
        ino = self._existing_child(parent, name)
        self._live_dir_attr(new_parent)
        kind = self.getattr(ino)["type"]
        if kind == "d":
            # A directory must not move below itself.
            cursor = new_parent
            while cursor != ROOT_INO:
                if cursor == ino:
                    raise InvalidArgument("cannot move a directory inside itself")
                cursor = self._parent_of(cursor)
        result: dict[str, Any] = {"dropped": [], "orphan": 0}
        target = self._child(new_parent, new_name)
        if target == ino:
            return result
        if target is not None:
            if noreplace:
                raise Exists(f"{shown(new_name)} already exists")
            tkind = self.getattr(target)["type"]
            if kind == "d" and tkind != "d":
                raise NotADirectory(f"{shown(new_name)} is not a directory")
            if kind != "d" and tkind == "d":
                raise IsADirectory(f"{shown(new_name)} is a directory")
            if tkind == "d":
                self._op_rmdir(term, new_parent, new_name, time)
            else:
                result = self._remove_entry(new_parent, new_name, target, time, free_ino)
        self.db.execute(
            "UPDATE dentries SET parent = ?, name = ? WHERE parent = ? AND name = ?",
            (new_parent, new_name, parent, name),
        )
        t = _ns(time)
        self.db.execute("UPDATE inodes SET ctime = ? WHERE ino = ?", (t, ino))
        self.db.execute("UPDATE inodes SET mtime = ?, ctime = ? WHERE ino IN (?, ?)", (t, t, parent, new_parent))
        if kind == "d" and parent != new_parent:
            # The moved directory's ".." now links to its new parent.
            self.db.execute("UPDATE inodes SET nlink = nlink - 1 WHERE ino = ?", (parent,))
            self.db.execute("UPDATE inodes SET nlink = nlink + 1 WHERE ino = ?", (new_parent,))
        return result

    def _op_set_replicas(
        self, term: int, replicas: int, min_replicas: int, ino: int = 0, recursive: bool = False,
        inos: list[int] | None = None,
    ) -> int:
        """Set ``replicas=N:MIN`` on the inodes `inos` (one page of a walk, subtree.py); the number that exist.

        The form with `ino` and `recursive` (the whole subtree in one apply) is
        what masters proposed before walking in pages: kept so that their log
        entries apply as they did.
        """
        if not 1 <= min_replicas <= replicas <= MAX_REPLICAS:
            raise InvalidArgument(f"replicas must satisfy 1 <= MIN <= N <= {MAX_REPLICAS}")
        if inos is not None:
            changed = 0
            for current in inos:
                changed += self.db.execute("UPDATE inodes SET replicas = ?, min_replicas = ? WHERE ino = ?",
                                           (replicas, min_replicas, int(current))).rowcount
            return changed
        self.getattr(ino)
        todo, changed = [ino], 0
        while todo:
            current = todo.pop()
            self.db.execute(
                "UPDATE inodes SET replicas = ?, min_replicas = ? WHERE ino = ?", (replicas, min_replicas, current)
            )
            changed += 1
            if recursive:
                todo.extend(
                    row[0] for row in self.db.execute("SELECT ino FROM dentries WHERE parent = ?", (current,))
                )
        return changed

    def _op_reserve_chunk_ids(self, term: int, count: int) -> list[int]:
        """Set aside `count` chunk ids, [first, end): the master gives them to new chunks whose replicas
        it creates while their allocation commits.  Ids set aside and never used are simply skipped."""
        if not 1 <= count <= MAX_RESERVED_IDS:
            raise InvalidArgument(f"reserve between 1 and {MAX_RESERVED_IDS} chunk ids")
        first = self._meta("next_chunk_id") or 1
        self._set_meta("next_chunk_id", first + count)
        return [first, first + count]

    def _op_alloc_chunk(
        self, term: int, ino: int, index: int, replicas: list[int], chunk_id: int | None = None,
        version: int | None = None,
    ) -> Chunk:
        """A file's chunk `index` on `replicas`; an existing one is returned as it is (a retry).

        `chunk_id` and `version`, when given, were chosen by the master from ids set aside
        (`reserve_chunk_ids`), so that the replicas could be made while this committed.
        """
        existing = self.chunk_at(ino, index)
        if existing is not None:
            return existing
        attr = self.getattr(ino)
        if attr["type"] != "f":
            raise IsADirectory("not a regular file")
        if chunk_id is None or version is None:
            chunk_id = self._next("next_chunk_id")
            version = self._new_version(term)
        else:
            if not 0 < chunk_id < (self._meta("next_chunk_id") or 1) or self.chunk(chunk_id) is not None:
                raise InvalidArgument(f"chunk id {chunk_id:#x} was not set aside, or is taken")
            # Versions given to this chunk later must be above this one (see _new_version).
            low = version & ((1 << VERSION_TERM_SHIFT) - 1)
            if low >= (self._meta("version_seq") or 0):
                self._set_meta("version_seq", low + 1)
        listed = _distinct(replicas)
        self.db.execute(
            "INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (chunk_id, ino, index, version, _replicas_text(listed), len(listed), attr["replicas"],
             attr["min_replicas"]),
        )
        self.db.executemany("INSERT INTO chunk_replicas VALUES (?, ?)", [(chunk_id, cs) for cs in listed])
        return Chunk(chunk_id, ino, index, version, listed)

    def _op_set_chunk_replicas(
        self, term: int, chunk_id: int, replicas: list[int], expect_version: int | None = None
    ) -> Chunk:
        """A new replica set is a new version: replicas left out become stale.

        With `expect_version`, only if the chunk is still at that version (the
        replication monitor's compare-and-set: nothing changed under its copy).
        """
        chunk = self.chunk(chunk_id)
        if chunk is None:
            raise NotFound(f"chunk {chunk_id:#x} no longer exists")
        if expect_version is not None and chunk.version != expect_version:
            raise StaleVersion(
                f"chunk {chunk_id:#x} is at version {chunk.version:#x}, not {expect_version:#x}",
                chunk_id=chunk_id,
            )
        version = self._new_version(term)
        listed = _distinct(replicas)
        self.db.execute(
            "UPDATE chunks SET version = ?, replicas = ?, nrep = ? WHERE chunk_id = ?",
            (version, _replicas_text(listed), len(listed), chunk_id),
        )
        gone, added = set(chunk.replicas) - set(listed), set(listed) - set(chunk.replicas)
        self.db.executemany("DELETE FROM chunk_replicas WHERE chunk_id = ? AND cs_id = ?",
                            [(chunk_id, cs) for cs in sorted(gone)])
        self.db.executemany("INSERT INTO chunk_replicas VALUES (?, ?)", [(chunk_id, cs) for cs in sorted(added)])
        return Chunk(chunk_id, chunk.ino, chunk.index, version, listed)

    def _op_register_cs(self, term: int, cs_id: int, addr: str, host: str, time: float) -> int:
        if self.cs_removed(cs_id):
            raise InvalidArgument(f"CS#{cs_id} was removed from the cluster (rm-cs)")
        if cs_id == 0 or self.db.execute("SELECT 1 FROM chunk_servers WHERE cs_id = ?", (cs_id,)).fetchone() is None:
            if cs_id == 0:
                cs_id = self._next("next_cs_id")
            self.db.execute("INSERT INTO chunk_servers VALUES (?, ?, ?, ?)", (cs_id, addr, host, time))
            self._set_meta("next_cs_id", max(self._meta("next_cs_id") or 1, cs_id + 1))
        else:
            self.db.execute("UPDATE chunk_servers SET addr = ?, host = ? WHERE cs_id = ?", (addr, host, cs_id))
        return cs_id

    def _op_add_mds(self, term: int, addr: str, node_id: int = 0) -> int:
        """Register a metadata server's address; the founding MDS registers itself with its id."""
        row = self.db.execute("SELECT id FROM mds_members WHERE addr = ?", (addr,)).fetchone()
        if row is not None:
            return int(row[0])
        issued = self._meta("next_mds_id") or 0  # (none in a store from before it was kept)
        if node_id == 0:
            # Id 1 is the founding MDS (make-mds -I), even before it has registered itself.  An id is never
            # given twice: a removed member may still run, and Raft knows members by their ids.
            node_id = max(1 + (self.db.execute("SELECT MAX(id) FROM mds_members").fetchone()[0] or 1), issued)
        self.db.execute("INSERT INTO mds_members VALUES (?, ?)", (node_id, addr))
        self._set_meta("next_mds_id", max(node_id + 1, issued))
        return node_id

    def _op_remove_mds(self, term: int, node_id: int) -> None:
        self.db.execute("DELETE FROM mds_members WHERE id = ?", (node_id,))

    def mds_members(self) -> dict[int, str]:
        return {int(r[0]): str(r[1]) for r in self.db.execute("SELECT id, addr FROM mds_members ORDER BY id")}

    # -- snapshots ---------------------------------------------------------------

    def snapshot_to(self, path: Path) -> int:
        """Copy the whole store into `path` (fsynced), consistent at one applied index; returns that index.

        Runs in a worker thread while the event loop goes on applying: a read
        transaction on a connection of its own pins one state of the
        write-ahead-logged database, and SQLite's online backup copies exactly
        that state, page by page, from disk to disk (never the whole store in
        RAM).  The image knows its own applied index, which is the index of the
        snapshot it makes.
        """
        with self._files_lock:  # not while the files are replaced (restore) or closed
            src = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            try:
                src.execute("BEGIN")
                row = src.execute("SELECT value FROM meta WHERE key = 'applied_index'").fetchone()
                index = int(row[0]) if row else 0
                path.unlink(missing_ok=True)
                dst = sqlite3.connect(path, isolation_level=None)
                try:
                    src.backup(dst)
                finally:
                    dst.close()
                src.execute("COMMIT")
            finally:
                src.close()
        with path.open("rb+") as f:
            os.fsync(f.fileno())
        return index

    def restore(self, image: Path, index: int) -> None:
        """Replace the whole store with a snapshot image taken at log `index` (the file is moved, not copied).

        The old database and write-ahead log keep a second name until a worker
        thread removes them: freeing gigabytes of disk blocks is the file
        system's work, and it would otherwise be done here, on the event loop.
        """
        trash = [self.path.with_name(f"{self.path.name}{suffix}.old") for suffix in ("", "-wal")]
        self.release()
        with self._files_lock:  # not under a checkpoint's feet
            for name, old in zip(("", "-wal"), trash, strict=True):
                old.unlink(missing_ok=True)
                with contextlib.suppress(FileNotFoundError):
                    os.link(self.path.with_name(self.path.name + name), old)
            self.db.close()
            for suffix in ("-wal", "-shm"):
                self.path.with_name(self.path.name + suffix).unlink(missing_ok=True)
            os.replace(image, self.path)
            self._open()
        with self._tx():
            self._set_meta("applied_index", max(self.applied_index, index))
        threading.Thread(target=lambda: [p.unlink(missing_ok=True) for p in trash], daemon=True,
                         name="drop-old-store").start()

    def _op_set_config(self, term: int, values: dict[str, str]) -> dict[str, str]:
        """Cluster settings (checked by the master before proposing); values are text."""
        for key, value in sorted(values.items()):
            self.db.execute("INSERT OR REPLACE INTO settings VALUES (?, ?)", (str(key), str(value)))
        return self.settings()

    def _op_set_placement(
        self, term: int, recursive: bool = False, domain: str | None = None, tier: int | None = None, ino: int = 0,
        inos: list[int] | None = None,
    ) -> int:
        """Set `failure-domain=` and/or `tier=` on the inodes `inos` (one page of a walk, subtree.py).

        The form with `ino` and `recursive` walks the whole subtree in one apply:
        kept for the log entries of masters from before the walk in pages.
        """
        if domain is not None and domain not in FAILURE_DOMAINS:
            raise InvalidArgument(f"failure-domain must be one of {', '.join(FAILURE_DOMAINS)}")
        if tier is not None and not 0 <= tier <= MAX_TIER:
            raise InvalidArgument(f"tier must be 0-{MAX_TIER}")
        if inos is not None:
            changed = 0
            for current in inos:
                try:
                    attr = self.getattr(int(current))
                except NotFound:
                    continue  # removed since the master read the page
                self._place(attr, domain, tier)
                changed += 1
            return changed
        self.getattr(ino)
        todo, changed = [ino], 0
        while todo:
            current = todo.pop()
            self._place(self.getattr(current), domain, tier)
            changed += 1
            if recursive:
                todo.extend(
                    row[0] for row in self.db.execute("SELECT ino FROM dentries WHERE parent = ?", (current,))
                )
        return changed

    def _place(self, attr: dict[str, Any], domain: str | None, tier: int | None) -> None:
        self.db.execute("INSERT OR REPLACE INTO placement VALUES (?, ?, ?)", (
            attr["ino"], domain if domain is not None else attr["failure_domain"],
            tier if tier is not None else attr["tier"]))

    def _op_remove_cs(self, term: int, cs_id: int) -> None:
        """Forget a drained chunk server (the master checked that no chunk lists it), for good: its id
        never registers again (a probe saw a removed server rejoin once the master changed, when only
        the master's memory refused it).  A wiped server made again with make-cs gets a new id."""
        self.db.execute("DELETE FROM chunk_servers WHERE cs_id = ?", (cs_id,))
        self.db.execute("INSERT OR IGNORE INTO removed_cs VALUES (?)", (cs_id,))

    def cs_removed(self, cs_id: int) -> bool:
        """Whether chunk server `cs_id` was removed with rm-cs."""
        return self.db.execute("SELECT 1 FROM removed_cs WHERE cs_id = ?", (cs_id,)).fetchone() is not None

    def settings(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in self.db.execute("SELECT key, value FROM settings ORDER BY key")}

    def _op_event(self, term: int, time: float, level: str, message: str) -> int:
        seq = self._next("event_seq") + 1
        self.db.execute("INSERT INTO events VALUES (?, ?, ?, ?)", (seq, time, level, message))
        if seq == 1:
            # The cluster's first event (its first master's election) dates the root, which every MDS
            # made alike with no time when its store was new: no clock is replicated before a command.
            t = _ns(time)
            self.db.execute("UPDATE inodes SET atime = ?, mtime = ?, ctime = ? WHERE ino = ? AND ctime = 0",
                            (t, t, t, ROOT_INO))
        self._trim_events(seq, time)
        return seq

    def _trim_events(self, newest: int, now: float) -> None:
        """Keep the event log within its window (settings event-log-max and -days).

        In the apply, from replicated values only (the event's own time), so every
        MDS keeps the same events.  At most EVENT_TRIM_BATCH go per new event: a
        window made smaller deletes the excess over the next events, never in one
        long transaction.
        """
        window = effective(self.settings())
        oldest_seq = newest - int(window["event-log-max"])
        oldest_time = now - window["event-log-days"] * 86400
        first = self.db.execute("SELECT seq, time FROM events ORDER BY seq LIMIT 1").fetchone()
        if first is None or (first[0] > oldest_seq and first[1] >= oldest_time):
            return  # the oldest event is within the window: the usual case, one row read
        self.db.execute(
            "DELETE FROM events WHERE seq IN (SELECT seq FROM (SELECT seq, time FROM events ORDER BY seq LIMIT ?) "
            "WHERE seq <= ? OR time < ?)", (EVENT_TRIM_BATCH, oldest_seq, oldest_time))

    # -- reads -----------------------------------------------------------------

    def getattr(self, ino: int) -> dict[str, Any]:
        row = self.db.execute(_ATTR_SELECT + "WHERE i.ino = ?", (ino,)).fetchone()
        if row is None:
            raise NotFound(f"inode {ino} does not exist")
        return _attr_of(row)

    def cut_of(self, ino: int) -> int:
        """The file's last cut (its attribute "cut", `_cut`), 0 if it was never cut."""
        row = self.db.execute("SELECT idx FROM cuts WHERE ino = ?", (ino,)).fetchone()
        return 0 if row is None else int(row[0])

    def _child(self, parent: int, name: bytes) -> int | None:
        row = self.db.execute("SELECT ino FROM dentries WHERE parent = ? AND name = ?", (parent, name)).fetchone()
        return None if row is None else int(row[0])

    def _existing_child(self, parent: int, name: str) -> int:
        check_name_length(name)
        self._dir_attr(parent)
        ino = self._child(parent, name)
        if ino is None:
            raise NotFound(f"{shown(name)} does not exist")
        return ino

    def path_of(self, ino: int) -> str:
        """A file's path, for messages to operators; a removed file is named by its inode number."""
        parts: list[str] = []
        for _ in range(MAX_PATH_DEPTH):
            if ino == ROOT_INO:
                return "/" + "/".join(reversed(parts))
            row = self.db.execute("SELECT parent, name FROM dentries WHERE ino = ?", (ino,)).fetchone()
            if row is None:
                break
            parts.append(to_bytes(row[1]).decode("utf-8", "replace"))
            ino = int(row[0])
        return f"(removed file, inode {ino})" if not parts else f"(removed)/{'/'.join(reversed(parts))}"

    def parent_of(self, ino: int) -> int:
        """The directory holding `ino` (the root for the root, and for a removed inode)."""
        return self._parent_of(ino)

    def _parent_of(self, ino: int) -> int:
        row = self.db.execute("SELECT parent FROM dentries WHERE ino = ?", (ino,)).fetchone()
        return ROOT_INO if row is None else int(row[0])

    def _dir_attr(self, ino: int) -> dict[str, Any]:
        attr = self.getattr(ino)
        if attr["type"] != "d":
            raise NotADirectory(f"inode {ino} is not a directory")
        return attr

    def _live_dir_attr(self, ino: int) -> dict[str, Any]:
        """A directory new names may go into: not one that was removed (POSIX: ENOENT)."""
        attr = self._dir_attr(ino)
        if attr["nlink"] == 0:
            raise NotFound(f"directory inode {ino} was removed")
        return attr

    def lookup(self, parent: int, name: str | bytes) -> dict[str, Any]:
        return self.getattr(self._existing_child(parent, to_bytes(name)))

    def resolve(self, path: str | bytes, follow: bool = False) -> dict[str, Any]:
        """The inode at `path` from the root, following symbolic links on the way (and at the end if `follow`).

        A link's target is taken relative to the cluster's root when
        absolute, else to the link's directory, as a mount would see it.
        """
        raw = to_bytes(path)
        parts = [p for p in raw.split(b"/") if p and p != b"."]
        stack = [ROOT_INO]  # the directories walked, for ".."
        hops = 0
        while parts:
            part = parts.pop(0)
            if self.getattr(stack[-1])["type"] != "d":  # (said of the path, not of an inode number: a probe)
                raise NotADirectory(f"{shown(raw)}: a name on the way is not a directory")
            if part == b"..":
                if len(stack) > 1:
                    stack.pop()
                continue
            check_name_length(part)
            child = self._child(stack[-1], part)
            if child is None:
                raise NotFound(f"{shown(raw)}: no such file or directory")
            attr = self.getattr(child)
            if attr["type"] == "l" and (parts or follow):
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise SymlinkLoop(f"{shown(raw)}: more than {MAX_SYMLINK_HOPS} symbolic links on the way")
                target = attr["target"]
                if target.startswith(b"/"):
                    stack = [ROOT_INO]
                parts = [p for p in target.split(b"/") if p and p != b"."] + parts
                continue
            stack.append(child)
        return self.getattr(stack[-1])

    def readdir(
        self, ino: int, after: str | bytes, limit: int, attrs: bool = False
    ) -> tuple[list[list[Any]], bool]:
        """A page of [name (bytes), inode, type] after the name `after`, in byte order; with `attrs`,
        each entry's attributes too (one query for the page, not one request per entry)."""
        self._dir_attr(ino)
        if not attrs:
            rows = self.db.execute(
                "SELECT d.name, d.ino, i.type FROM dentries d JOIN inodes i ON i.ino = d.ino "
                "WHERE d.parent = ? AND d.name > ? ORDER BY d.name LIMIT ?",
                (ino, to_bytes(after), limit + 1),
            ).fetchall()
            return [list(r) for r in rows[:limit]], len(rows) > limit
        rows = self.db.execute(
            "SELECT d.name, " + _ATTR_SELECT.removeprefix("SELECT ") +
            "JOIN dentries d ON d.ino = i.ino WHERE d.parent = ? AND d.name > ? ORDER BY d.name LIMIT ?",
            (ino, to_bytes(after), limit + 1),
        ).fetchall()
        out = []
        for r in rows[:limit]:
            attr = _attr_of(r[1:])
            out.append([r[0], attr["ino"], attr["type"], attr])
        return out, len(rows) > limit

    def children_after(self, parent: int, after: bytes, limit: int) -> list[tuple[bytes, int, str, int]]:
        """(name, inode, type, size) of `parent`'s entries named after `after`, by name: one page of a walk."""
        return [(bytes(r[0]), int(r[1]), str(r[2]), int(r[3])) for r in self.db.execute(
            "SELECT d.name, d.ino, i.type, i.size FROM dentries d JOIN inodes i ON i.ino = d.ino "
            "WHERE d.parent = ? AND d.name > ? ORDER BY d.name LIMIT ?", (parent, after, limit))]

    def chunks_version(self, ino: int) -> int:
        """The highest version among the file's chunks (0: none): it changes whenever a chunk is made,
        cut away or given a new version, so a mount knows when its cached chunk maps may be old."""
        row = self.db.execute("SELECT max(version) FROM chunks WHERE ino = ?", (ino,)).fetchone()
        return int(row[0] or 0)

    def chunk_at(self, ino: int, index: int) -> Chunk | None:
        row = self.db.execute(
            "SELECT chunk_id, version, replicas FROM chunks WHERE ino = ? AND idx = ?", (ino, index)
        ).fetchone()
        return None if row is None else Chunk(row[0], ino, index, row[1], _replicas_of(row[2]))

    def chunk(self, chunk_id: int) -> Chunk | None:
        row = self.db.execute(
            "SELECT ino, idx, version, replicas FROM chunks WHERE chunk_id = ?", (chunk_id,)
        ).fetchone()
        return None if row is None else Chunk(chunk_id, row[0], row[1], row[2], _replicas_of(row[3]))

    def _chunks_from(self, ino: int, first_index: int) -> list[Chunk]:
        rows = self.db.execute(
            "SELECT chunk_id, idx, version, replicas FROM chunks WHERE ino = ? AND idx >= ?", (ino, first_index)
        ).fetchall()
        return [Chunk(r[0], ino, r[1], r[2], _replicas_of(r[3])) for r in rows]

    def chunk_rows(self, chunk_ids: list[int]) -> list[ChunkRow]:
        """The given chunks with their goal and placement (absent ones are left out)."""
        out: list[ChunkRow] = []
        for start in range(0, len(chunk_ids), 500):
            part = chunk_ids[start:start + 500]
            marks = ",".join("?" * len(part))
            out.extend(_row(r) for r in self.db.execute(
                _ROW_SELECT + f"WHERE c.chunk_id IN ({marks})", part))  # noqa: S608 - only placeholders
        return out

    def chunk_rows_on(self, cs_id: int, after: int, limit: int) -> list[ChunkRow]:
        """Chunks that list `cs_id`, by id from just after `after`: one page of an index range."""
        return [_row(r) for r in self.db.execute(
            _ROW_SELECT + "JOIN chunk_replicas r ON r.chunk_id = c.chunk_id "
            "WHERE r.cs_id = ? AND r.chunk_id > ? ORDER BY r.chunk_id LIMIT ?", (cs_id, after, limit))]

    def chunk_rows_after(self, after: int, limit: int) -> list[ChunkRow]:
        """One page of all chunks by id, from just after `after` (a sweep in bounded slices)."""
        return [_row(r) for r in self.db.execute(
            _ROW_SELECT + "WHERE c.chunk_id > ? ORDER BY c.chunk_id LIMIT ?", (after, limit))]

    def replicas_on(self, cs_id: int) -> int:
        """How many chunks list `cs_id` (a counter kept on apply, not a count)."""
        row = self.db.execute("SELECT n FROM cs_replicas WHERE cs_id = ?", (cs_id,)).fetchone()
        return 0 if row is None else int(row[0])

    def highest_goal_on(self, cs_id: int) -> int:
        """The most replicas (``replicas=``) any chunk with a replica on `cs_id` is to have (0: none).

        A scan of the server's chunks: for rm-cs, once per drain, not for every request.
        """
        row = self.db.execute(
            "SELECT MAX(c.want) FROM chunk_replicas r JOIN chunks c ON c.chunk_id = r.chunk_id WHERE r.cs_id = ?",
            (cs_id,)).fetchone()
        return int(row[0] or 0)

    def replica_counts(self) -> dict[int, int]:
        """Replicas listed per chunk server (servers listed by no chunk are left out)."""
        return {int(r[0]): int(r[1]) for r in self.db.execute("SELECT cs_id, n FROM cs_replicas WHERE n > 0")}

    def goal_histogram(self) -> list[tuple[int, int, int, int]]:
        """Chunks counted by (replicas listed, goal, minimum): a few rows, kept on apply."""
        return [(int(r[0]), int(r[1]), int(r[2]), int(r[3]))
                for r in self.db.execute("SELECT nrep, want, minimum, n FROM chunk_goals WHERE n > 0")]

    def chunk_count(self) -> int:
        row = self.db.execute("SELECT coalesce(sum(n), 0) FROM chunk_goals").fetchone()
        return int(row[0])

    def last_chunk_id(self) -> int:
        return (self._meta("next_chunk_id") or 1) - 1

    def all_chunks(self) -> Iterator[Chunk]:
        for r in self.db.execute("SELECT chunk_id, ino, idx, version, replicas FROM chunks"):
            yield Chunk(r[0], r[1], r[2], r[3], _replicas_of(r[4]))

    def chunk_versions(self, chunk_ids: list[int]) -> dict[int, int]:
        """Current versions of the given chunks (absent ones are left out)."""
        out: dict[int, int] = {}
        for start in range(0, len(chunk_ids), 500):
            part = chunk_ids[start:start + 500]
            marks = ",".join("?" * len(part))
            for cid, ver in self.db.execute(f"SELECT chunk_id, version FROM chunks WHERE chunk_id IN ({marks})", part):  # noqa: S608
                out[cid] = ver
        return out

    def listed_versions(self, cs_id: int, chunk_ids: list[int]) -> dict[int, int]:
        """Current versions of those of the given chunks that list `cs_id` (a registration page's check)."""
        out: dict[int, int] = {}
        for start in range(0, len(chunk_ids), 500):
            part = chunk_ids[start:start + 500]
            marks = ",".join("?" * len(part))
            query = f"{_LISTED_VERSIONS} ({marks})"  # noqa: S608 - only placeholders
            out.update(self.db.execute(query, [cs_id, *part]))
        return out

    def listed_range(self, cs_id: int, after: int, upto: int, limit: int) -> list[tuple[int, int]]:
        """(chunk id, version) of the chunks that list `cs_id` in (after, upto], ascending, at most `limit`.

        A registration page's check and what it did not name, in one index range.
        """
        return self.db.execute(
            "SELECT r.chunk_id, c.version FROM chunk_replicas r JOIN chunks c ON c.chunk_id = r.chunk_id "
            "WHERE r.cs_id = ? AND r.chunk_id > ? AND r.chunk_id <= ? ORDER BY r.chunk_id LIMIT ?",
            (cs_id, after, upto, limit)).fetchall()

    def listed_on(self, cs_id: int, after: int, upto: int, limit: int) -> list[int]:
        """Ids of the chunks that list `cs_id` in (after, upto], ascending, at most `limit`: an index range."""
        return [int(r[0]) for r in self.db.execute(
            "SELECT chunk_id FROM chunk_replicas WHERE cs_id = ? AND chunk_id > ? AND chunk_id <= ? "
            "ORDER BY chunk_id LIMIT ?", (cs_id, after, upto, limit))]

    def still_listed(self, cs_id: int, chunk_ids: list[int]) -> set[int]:
        """Those of the given chunks that still list `cs_id`."""
        out: set[int] = set()
        for start in range(0, len(chunk_ids), 500):
            part = chunk_ids[start:start + 500]
            marks = ",".join("?" * len(part))
            out.update(int(r[0]) for r in self.db.execute(
                f"SELECT chunk_id FROM chunk_replicas WHERE cs_id = ? AND chunk_id IN ({marks})",  # noqa: S608
                [cs_id, *part]))
        return out

    def chunk_servers(self) -> list[dict[str, Any]]:
        return [
            {"id": r[0], "addr": r[1], "host": r[2]}
            for r in self.db.execute("SELECT cs_id, addr, host FROM chunk_servers ORDER BY cs_id")
        ]

    def events(self, since: int, limit: int) -> list[dict[str, Any]]:
        return [
            {"seq": r[0], "time": r[1], "level": r[2], "message": r[3]}
            for r in self.db.execute(
                "SELECT seq, time, level, message FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (since, limit)
            )
        ]

    def last_event_seq(self) -> int:
        """The sequence number of the newest event (0 if none), so viewers can ask for the last few."""
        row = self.db.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
        return int(row[0])
