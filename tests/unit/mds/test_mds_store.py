"""The metadata state machine: namespace, chunk map, CS registry, determinism."""

from __future__ import annotations

import contextlib
import sqlite3
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chunkfs.common.change_time import KERNEL_AHEAD_NS
from chunkfs.common.errors import (
    ChunkFSError,
    DirectoryNotEmpty,
    Exists,
    InvalidArgument,
    IsADirectory,
    NameTooLong,
    NotADirectory,
    NotFound,
    SymlinkLoop,
    WritesLost,
)
from chunkfs.common.names import MAX_NAME_LEN
from chunkfs.mds.store import (
    VERSION_TERM_SHIFT,
    Chunk,
    MetadataStore,
    encode_command,
)
from chunkfs.protocol.messages import ROOT_INO

CS = 1 << 20


class Driver:
    """Applies commands with increasing indexes, like the log does."""

    def __init__(self, store: MetadataStore, term: int = 1) -> None:
        self.store = store
        self.term = term
        self.index = store.applied_index
        self.clock = 1000.0

    def __call__(self, op: str, **args: Any) -> Any:
        self.index += 1
        return self.store.apply(self.index, self.term, encode_command(op, **args))

    def tick(self) -> float:
        self.clock += 1
        return self.clock

    def mkdir(self, parent: int, name: str, mode: int = 0o755) -> int:
        return int(self("mkdir", parent=parent, name=name, mode=mode, time=self.tick())["ino"])

    def create(self, parent: int, name: str, exclusive: bool = True, mode: int = 0o644) -> int:
        result = self("create", parent=parent, name=name, mode=mode, time=self.tick(), exclusive=exclusive)
        return int(result["attr"]["ino"])

    def _held_free(self, parent: int, name: str, held: bool) -> int:
        """The `free_ino` the master would send: the named inode, unless a mount holds it open."""
        if held:
            return 0
        try:
            return int(self.store.lookup(parent, name)["ino"])
        except ChunkFSError:
            return 0

    def unlink(self, parent: int, name: str, held: bool = False) -> list[Chunk]:
        result = self("unlink", parent=parent, name=name, time=self.tick(),
                      free_ino=self._held_free(parent, name, held))
        return list(result["dropped"])

    def rmdir(self, parent: int, name: str) -> None:
        self("rmdir", parent=parent, name=name, time=self.tick())

    def rename(self, parent: int, name: str, new_parent: int, new_name: str, held: bool = False) -> list[Chunk]:
        result = self(
            "rename", parent=parent, name=name, new_parent=new_parent, new_name=new_name, time=self.tick(),
            free_ino=self._held_free(new_parent, new_name, held),
        )
        return list(result["dropped"])

    def alloc(self, ino: int, index: int, replicas: list[int] | None = None) -> Chunk:
        chunk: Chunk = self("alloc_chunk", ino=ino, index=index, replicas=replicas or [1, 2])
        return chunk


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MetadataStore]:
    s = MetadataStore(tmp_path / "meta.db", CS)
    yield s
    s.close()


@pytest.fixture
def d(store: MetadataStore) -> Driver:
    return Driver(store)


def names(store: MetadataStore, ino: int) -> list[str]:
    out, after = [], ""
    while True:
        entries, more = store.readdir(ino, after, 1000)
        out += [e[0].decode() for e in entries]
        if not more:
            return out
        after = entries[-1][0]


# -- namespace ----------------------------------------------------------------------


def test_fresh_store_has_root(store: MetadataStore) -> None:
    attr = store.getattr(ROOT_INO)
    assert attr["type"] == "d" and stat.S_ISDIR(attr["mode"])
    assert (attr["replicas"], attr["min_replicas"]) == (3, 2)
    assert store.applied_index == 0
    assert store.readdir(ROOT_INO, "", 10) == ([], False)


def test_a_batch_applies_each_command_alone_and_commits_them_together(d: Driver, store: MetadataStore) -> None:
    """A follower's batch: a failing command leaves no trace but its applied index; the others stay."""
    dir_ino = d.mkdir(ROOT_INO, "dir")
    first = store.applied_index
    with store.batch():
        d.create(ROOT_INO, "a")
        with pytest.raises(Exists):
            d.mkdir(ROOT_INO, "dir")
        with pytest.raises(NotFound):
            d("create", parent=424242, name="x", mode=0o644, time=d.tick(), exclusive=True)
        ctime = store.getattr(dir_ino)["ctime_ns"]
        with pytest.raises(IsADirectory):  # writes the directory's ctime, then fails: rolled back
            d("setattr", ino=dir_ino, size=0, time=d.tick())
        assert store.getattr(dir_ino)["ctime_ns"] == ctime
        d.create(ROOT_INO, "b")
        assert store.db.in_transaction  # one transaction for the whole batch
    assert not store.db.in_transaction
    assert store.applied_index == first + 5
    assert names(store, ROOT_INO) == ["a", "b", "dir"]
    assert store.getattr(dir_ino)["ctime_ns"] == ctime
    store.close()
    reopened = MetadataStore(store.path, CS)  # committed, not only visible to this connection
    try:
        assert reopened.applied_index == first + 5
        assert names(reopened, ROOT_INO) == ["a", "b", "dir"]
    finally:
        reopened.close()


def test_what_a_master_holds_is_read_here_and_committed_at_its_release(d: Driver, store: MetadataStore) -> None:
    """The master's open batch (`hold`): its own reads see each change, other connections the last commit."""
    first = store.applied_index
    other = sqlite3.connect(store.path, isolation_level=None)
    try:
        def committed() -> int:
            return int(other.execute("SELECT value FROM meta WHERE key = 'applied_index'").fetchone()[0])

        store.hold()
        d.create(ROOT_INO, "a")
        store.hold()  # (already held: the same transaction)
        d.create(ROOT_INO, "b")
        assert names(store, ROOT_INO) == ["a", "b"] and store.applied_index == first + 2
        assert committed() == first
        store.release()
        assert committed() == first + 2 and not store.db.in_transaction
        store.hold()
        d.create(ROOT_INO, "c")
        assert store.reset_log()  # a rewind of SQLite's log commits what is held first
        assert committed() == first + 3
        store.hold()
        d.create(ROOT_INO, "d")
    finally:
        other.close()
    store.close()  # commits what is held
    reopened = MetadataStore(store.path, CS)
    try:
        assert reopened.applied_index == first + 4 and names(reopened, ROOT_INO) == ["a", "b", "c", "d"]
    finally:
        reopened.close()


@pytest.mark.parametrize("batched", [False, True])
def test_a_command_whose_values_the_store_cannot_take_fails_alone(d: Driver, store: MetadataStore,
                                                                 batched: bool) -> None:
    """What a command's own values make SQLite or the code raise fails that command on every server,
    as an error answer does; it does not stop the server (a hostile-peer probe: a SETATTR with
    `extend` 2**64-1 stopped every metadata server at its apply, again at each restart)."""
    f = d.create(ROOT_INO, "f")
    before = store.getattr(f)
    with store.batch() if batched else contextlib.nullcontext():
        with pytest.raises(InvalidArgument, match="OverflowError"):
            d("setattr", ino=f, extend=[2**64 - 1, 0], time=d.tick())
        with pytest.raises(InvalidArgument, match="TypeError"):
            d("create", parent=ROOT_INO, name="g", mode=0o644, time=d.tick(), exclusive=True, unknown_field=1)
        d.index += 1
        with pytest.raises(InvalidArgument, match="not a metadata command"):
            store.apply(d.index, d.term, b"\x93\x01\x02\x03")  # a list, not a map
        assert store.getattr(f) == before  # the failed SETATTR left nothing
        d.create(ROOT_INO, "h")  # and the log goes on
    assert store.applied_index == d.index
    assert names(store, ROOT_INO) == ["f", "h"]


def test_mkdir_create_lookup(d: Driver, store: MetadataStore) -> None:
    a = d.mkdir(ROOT_INO, "a", 0o40750)
    f = d.create(a, "f", mode=0o100640)
    assert store.lookup(ROOT_INO, "a")["ino"] == a
    fa = store.lookup(a, "f")
    assert fa["ino"] == f and fa["type"] == "f" and fa["size"] == 0
    assert fa["mode"] == stat.S_IFREG | 0o640
    assert store.getattr(a)["mode"] == stat.S_IFDIR | 0o750
    assert store.resolve("/a/f")["ino"] == f
    assert store.resolve("a//f/")["ino"] == f
    assert store.resolve("/")["ino"] == ROOT_INO
    assert a != f and ROOT_INO not in (a, f)
    # Parent times come from the command, not the clock.
    assert store.getattr(a)["mtime_ns"] == round(d.clock * 1e9)
    with pytest.raises(NotFound):
        store.lookup(a, "g")
    with pytest.raises(NotADirectory):
        store.lookup(f, "x")
    with pytest.raises(NotADirectory):
        store.resolve("/a/f/x")
    with pytest.raises(NotFound):
        store.resolve("/b")


def test_a_new_node_is_answered_as_it_reads_back(d: Driver, store: MetadataStore) -> None:
    """A create or mkdir builds its answer without reading the row back: it must be what a read gives."""
    plain = d.mkdir(ROOT_INO, "plain", 0o2775)  # set-group-ID: a subdirectory inherits the bit
    placed = d.mkdir(ROOT_INO, "placed")
    d("set_placement", inos=[placed], domain="rack", tier=2)
    tiered = d.mkdir(ROOT_INO, "tiered")
    d("set_placement", inos=[tiered], domain=None, tier=1)
    d("set_replicas", ino=tiered, replicas=2, min_replicas=1, recursive=False)
    for parent in (ROOT_INO, plain, placed, tiered):
        made = [d("mkdir", parent=parent, name="sub", mode=0o1777, time=d.tick()),
                d("create", parent=parent, name="file", mode=0o4755, time=d.tick(), exclusive=True)["attr"],
                d("create", parent=parent, name="file", mode=0o600, time=d.tick(), exclusive=False)["attr"]]
        for attr in made:
            assert attr == store.getattr(attr["ino"]), (parent, attr)
    assert store.lookup(plain, "sub")["mode"] & stat.S_ISGID
    assert store.lookup(placed, "file")["failure_domain"] == "rack"
    assert (store.lookup(tiered, "sub")["tier"], store.lookup(tiered, "sub")["replicas"]) == (1, 2)
    # A child of a child still inherits the placement (a copied row, not the parent's).
    deeper = d.create(store.lookup(placed, "sub")["ino"], "deeper")
    assert (store.getattr(deeper)["failure_domain"], store.getattr(deeper)["tier"]) == ("rack", 2)


def test_mkdir_errors(d: Driver) -> None:
    a = d.mkdir(ROOT_INO, "a")
    f = d.create(ROOT_INO, "f")
    with pytest.raises(Exists):
        d.mkdir(ROOT_INO, "a")
    with pytest.raises(Exists):
        d.mkdir(ROOT_INO, "f")
    with pytest.raises(NotADirectory):
        d.mkdir(f, "x")
    with pytest.raises(NotFound):
        d.mkdir(9999, "x")
    assert d.mkdir(a, "a") != a


def test_create_exclusive_and_not(d: Driver, store: MetadataStore) -> None:
    f = d.create(ROOT_INO, "f")
    with pytest.raises(Exists):
        d.create(ROOT_INO, "f", exclusive=True)
    assert d.create(ROOT_INO, "f", exclusive=False) == f
    d.mkdir(ROOT_INO, "dir")
    with pytest.raises(IsADirectory):
        d.create(ROOT_INO, "dir", exclusive=False)
    with pytest.raises(Exists):
        d.create(ROOT_INO, "dir", exclusive=True)


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "/", "a\0b", "x" * (MAX_NAME_LEN + 1), "é" * 128])
def test_bad_names(d: Driver, name: str) -> None:
    with pytest.raises(InvalidArgument):
        d.mkdir(ROOT_INO, name)
    with pytest.raises(InvalidArgument):
        d.create(ROOT_INO, name)
    d.create(ROOT_INO, "ok")
    with pytest.raises(InvalidArgument):
        d.rename(ROOT_INO, "ok", ROOT_INO, name)


def test_longest_name_ok(d: Driver, store: MetadataStore) -> None:
    d.create(ROOT_INO, "x" * MAX_NAME_LEN)
    assert names(store, ROOT_INO) == ["x" * MAX_NAME_LEN]


def test_readdir_paging(d: Driver, store: MetadataStore) -> None:
    all_names = sorted({f"n{i:03d}" for i in range(25)} | {"Z", "a", "é", "z"})
    for i, n in enumerate(reversed(all_names)):
        (d.mkdir if i % 3 == 0 else d.create)(ROOT_INO, n)
    seen: list[list[Any]] = []
    after, pages = "", 0
    while True:
        entries, more = store.readdir(ROOT_INO, after, 10)
        pages += 1
        assert len(entries) <= 10
        seen += entries
        if not more:
            break
        assert len(entries) == 10
        after = entries[-1][0]
    assert pages == 3
    # Names are bytes, in byte order (for UTF-8, the order of code points).
    assert [e[0] for e in seen] == [n.encode() for n in all_names]
    for name, ino, kind in seen:
        assert store.lookup(ROOT_INO, name)["ino"] == ino
        assert store.getattr(ino)["type"] == kind
    # Exactly a full page: "more" is False.
    entries, more = store.readdir(ROOT_INO, all_names[-11], 10)
    assert len(entries) == 10 and not more
    assert store.readdir(ROOT_INO, all_names[-1], 10) == ([], False)


def test_readdir_of_file_or_missing(d: Driver, store: MetadataStore) -> None:
    f = d.create(ROOT_INO, "f")
    with pytest.raises(NotADirectory):
        store.readdir(f, "", 10)
    with pytest.raises(NotFound):
        store.readdir(4242, "", 10)


def test_unlink_and_rmdir(d: Driver, store: MetadataStore) -> None:
    a = d.mkdir(ROOT_INO, "a")
    f = d.create(a, "f")
    d.alloc(f, 0)
    d.alloc(f, 3)
    with pytest.raises(IsADirectory):
        d.unlink(ROOT_INO, "a")
    with pytest.raises(NotADirectory):
        d.rmdir(a, "f")
    with pytest.raises(DirectoryNotEmpty):
        d.rmdir(ROOT_INO, "a")
    with pytest.raises(NotFound):
        d.unlink(a, "nope")
    with pytest.raises(NotFound):
        d.rmdir(ROOT_INO, "nope")
    dropped = d.unlink(a, "f")
    assert sorted(c.index for c in dropped) == [0, 3]
    assert list(store.all_chunks()) == []
    with pytest.raises(NotFound):
        store.getattr(f)
    d.rmdir(ROOT_INO, "a")
    # A removed directory lives on nameless a while (a process may be in it), then is freed.
    assert store.getattr(a)["nlink"] == 0 and store.readdir(a, "", 10) == ([], False)
    with pytest.raises(NotFound):
        d.create(a, "new")  # nothing new goes into a removed directory
    assert store.orphans(10, dirs_before=0) == [] and store.orphans(10) == [a]
    d("free_orphans", inos=[a])
    with pytest.raises(NotFound):
        store.getattr(a)
    assert names(store, ROOT_INO) == []


def test_inodes_are_counted_through_creates_removals_and_a_reopen(d: Driver, store: MetadataStore) -> None:
    assert store.inode_count() == 1  # the root
    a = d.mkdir(ROOT_INO, "a")
    for name in ("f", "g", "h"):
        d.create(a, name)
    d("symlink", parent=a, name="l", target=b"f", time=d.tick())
    assert store.inode_count() == 6
    d.unlink(a, "g")
    d.unlink(a, "h", held=True)  # open somewhere: the inode lives on, nameless
    assert store.inode_count() == 5
    d.rename(ROOT_INO, "a", ROOT_INO, "b")
    assert store.inode_count() == 5
    # A store from before the count was kept gets it counted when opened.
    store.db.execute("DELETE FROM meta WHERE key = 'inodes'")
    store.close()
    reopened = MetadataStore(store.path, CS)
    try:
        assert reopened.inode_count() == 5
    finally:
        reopened.close()


def test_rename_simple_and_across_dirs(d: Driver, store: MetadataStore) -> None:
    a = d.mkdir(ROOT_INO, "a")
    b = d.mkdir(ROOT_INO, "b")
    f = d.create(a, "f")
    assert d.rename(a, "f", b, "g") == []
    assert names(store, a) == [] and names(store, b) == ["g"]
    assert store.lookup(b, "g")["ino"] == f
    # Rename onto itself is a no-op.
    assert d.rename(b, "g", b, "g") == []
    assert store.lookup(b, "g")["ino"] == f
    # Directories move with their contents.
    d.rename(ROOT_INO, "b", a, "b2")
    assert store.resolve("/a/b2/g")["ino"] == f
    with pytest.raises(NotFound):
        d.rename(ROOT_INO, "nope", ROOT_INO, "x")
    with pytest.raises(NotFound):
        d.rename(ROOT_INO, "a", 4242, "x")
    with pytest.raises(NotADirectory):
        d.rename(ROOT_INO, "a", f, "x")


def test_rename_replaces_file_and_drops_its_chunks(d: Driver, store: MetadataStore) -> None:
    src = d.create(ROOT_INO, "src")
    dst = d.create(ROOT_INO, "dst")
    kept = d.alloc(src, 0)
    gone = d.alloc(dst, 0)
    dropped = d.rename(ROOT_INO, "src", ROOT_INO, "dst")
    assert [c.chunk_id for c in dropped] == [gone.chunk_id]
    assert store.lookup(ROOT_INO, "dst")["ino"] == src
    assert names(store, ROOT_INO) == ["dst"]
    with pytest.raises(NotFound):
        store.getattr(dst)
    assert [c.chunk_id for c in store.all_chunks()] == [kept.chunk_id]


def test_rename_dir_replaces_empty_dir_only(d: Driver, store: MetadataStore) -> None:
    a = d.mkdir(ROOT_INO, "a")
    empty = d.mkdir(ROOT_INO, "empty")
    full = d.mkdir(ROOT_INO, "full")
    d.create(full, "x")
    with pytest.raises(DirectoryNotEmpty):
        d.rename(ROOT_INO, "a", ROOT_INO, "full")
    assert store.lookup(ROOT_INO, "a")["ino"] == a
    d.rename(ROOT_INO, "a", ROOT_INO, "empty")
    assert store.lookup(ROOT_INO, "empty")["ino"] == a
    assert store.getattr(empty)["nlink"] == 0 and store.orphans(10) == [empty]
    assert names(store, ROOT_INO) == ["empty", "full"]


def test_rename_type_mismatch(d: Driver) -> None:
    d.mkdir(ROOT_INO, "dir")
    d.create(ROOT_INO, "file")
    with pytest.raises(NotADirectory):
        d.rename(ROOT_INO, "dir", ROOT_INO, "file")
    with pytest.raises(IsADirectory):
        d.rename(ROOT_INO, "file", ROOT_INO, "dir")


def test_rename_dir_into_own_subtree(d: Driver, store: MetadataStore) -> None:
    a = d.mkdir(ROOT_INO, "a")
    b = d.mkdir(a, "b")
    c = d.mkdir(b, "c")
    for target in (a, b, c):
        with pytest.raises(InvalidArgument):
            d.rename(ROOT_INO, "a", target, "moved")
    with pytest.raises(InvalidArgument):
        d.rename(a, "b", c, "b")
    # Nothing changed.
    assert store.resolve("/a/b/c")["ino"] == c
    # Moving up is fine.
    d.rename(b, "c", ROOT_INO, "c")
    assert store.resolve("/c")["ino"] == c


def test_setattr_truncate_drops_chunks_past_end(d: Driver, store: MetadataStore) -> None:
    f = d.create(ROOT_INO, "f")
    chunks = {i: d.alloc(f, i) for i in range(5)}
    d("extend", ino=f, size=5 * CS, mtime=2000.0)

    def indexes() -> list[int]:
        return sorted(c.index for c in store.all_chunks())

    r = d("setattr", ino=f, time=d.tick(), size=3 * CS + 1)
    assert r["attr"]["size"] == 3 * CS + 1
    assert [c.index for c in r["dropped"]] == [4]
    assert r["dropped"][0] == chunks[4]
    assert indexes() == [0, 1, 2, 3]
    r = d("setattr", ino=f, time=d.tick(), size=3 * CS)
    assert [c.index for c in r["dropped"]] == [3]
    assert indexes() == [0, 1, 2]
    r = d("setattr", ino=f, time=d.tick(), size=1)
    assert sorted(c.index for c in r["dropped"]) == [1, 2]
    assert indexes() == [0]
    r = d("setattr", ino=f, time=d.tick(), size=0)
    assert [c.index for c in r["dropped"]] == [0]
    assert indexes() == []
    # Growing keeps everything.
    d.alloc(f, 0)
    r = d("setattr", ino=f, time=d.tick(), size=10 * CS)
    assert r["dropped"] == [] and indexes() == [0]
    assert store.getattr(f)["size"] == 10 * CS


def test_a_trim_drops_the_chunks_past_the_size_it_was_decided_for_and_nothing_else(d: Driver,
                                                                                    store: MetadataStore) -> None:
    """A dead writer's chunks past the size (OrphanReaper): times kept, a cut recorded; a size
    changed since the decision, or a file unlinked since, is left alone."""
    f = d.create(ROOT_INO, "f")
    d.alloc(f, 0)
    d("extend", ino=f, size=CS + 1, mtime=2000.0)
    late = {i: d.alloc(f, i) for i in (2, 3)}  # written past the size by a writer that died
    before = store.getattr(f)
    assert d("trim", ino=f, size=CS) == {"dropped": []}  # the size moved since: not this trim's
    r = d("trim", ino=f, size=CS + 1)
    assert sorted(r["dropped"], key=lambda c: c.index) == [late[2], late[3]]
    assert [c.index for c in store.all_chunks()] == [0]
    after = store.getattr(f)
    assert after["cut"] > before["cut"]
    assert {k: after[k] for k in ("size", "mtime_ns", "ctime_ns")} == {
        k: before[k] for k in ("size", "mtime_ns", "ctime_ns")}
    with pytest.raises(WritesLost):  # the writer was only silent: its size for writes before the trim fails
        d("extend", ino=f, size=4 * CS, mtime=3000.0, cut=before["cut"])
    d("extend", ino=f, size=CS + 7, mtime=3000.0, cut=after["cut"])  # writes made since: as usual
    assert store.getattr(f)["size"] == CS + 7
    assert store.unzeroed() == [f]  # until the master says it zeroed the last chunk (a next master does it)
    d("trim_zeroed", ino=f)
    assert store.unzeroed() == []
    g = d.create(ROOT_INO, "g")
    d.alloc(g, 3)
    d.unlink(ROOT_INO, "g", held=True)  # an orphan: the reaper frees it, a trim leaves it
    assert d("trim", ino=g, size=0) == {"dropped": []}
    h = d.create(ROOT_INO, "h")
    d("trim", ino=h, size=0)
    d.unlink(ROOT_INO, "h")
    assert store.unzeroed() == []  # freed: nothing left to zero


def test_a_trim_not_zeroed_yet_keeps_its_size_until_a_size_at_or_below_it(d: Driver, store: MetadataStore) -> None:
    """Its zeroing, retried, is at the trim's size: one at the file's size after a truncate that grew it
    left the dead writer's bytes in between (CI).  A size at or below the trim's was cut there itself."""
    f, g = d.create(ROOT_INO, "f"), d.create(ROOT_INO, "g")
    for ino in (f, g):
        d("extend", ino=ino, size=100, mtime=2000.0)
        d("trim", ino=ino, size=100)
    assert store.unzeroed_size(f) == store.unzeroed_size(g) == 100
    d("setattr", ino=f, time=d.tick(), size=CS)  # (the master zeroes first: this is what the store keeps)
    assert store.unzeroed_size(f) == 100
    d("setattr", ino=f, time=d.tick(), size=100)
    d("setattr", ino=g, time=d.tick(), size=7)
    assert store.unzeroed_size(f) is None and store.unzeroed_size(g) is None
    h = d.create(ROOT_INO, "h")
    assert store.unzeroed_size(h) is None


def test_a_store_from_before_trims_kept_their_size_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    s = MetadataStore(path, CS)
    d = Driver(s)
    f = d.create(ROOT_INO, "f")
    d("extend", ino=f, size=100, mtime=2000.0)
    s.db.executescript(f"""
        DROP TABLE unzeroed;
        CREATE TABLE unzeroed (ino INTEGER PRIMARY KEY);
        INSERT INTO unzeroed VALUES ({f});
    """)
    s.close()
    s = MetadataStore(path, CS)
    try:
        assert s.unzeroed() == [f] and s.unzeroed_size(f) == 100  # the file's size, as before
        Driver(s)("trim_zeroed", ino=f)
        assert s.unzeroed_size(f) is None
    finally:
        s.close()


def test_orphan_times_an_earlier_version_kept_in_nanoseconds_are_seconds_once_reopened(tmp_path: Path) -> None:
    """An earlier version stored a later master's orphan times as they came (integer nanoseconds): a folder
    removed meanwhile was never reaped (an upgrade probe).  Reopened, the store has them in seconds."""
    path = tmp_path / "mixed.db"
    s = MetadataStore(path, CS)
    d = Driver(s)
    a, b = d.mkdir(ROOT_INO, "a"), d.mkdir(ROOT_INO, "b")
    with s.db:
        s.db.execute("INSERT INTO orphans VALUES (?, ?)", (a, 1_796_681_377_716_203_500))  # as the old code did
        s.db.execute("INSERT INTO orphans VALUES (?, ?)", (b, 1_796_681_377.25))
    s.close()
    s = MetadataStore(path, CS)
    try:
        since = dict(s.db.execute("SELECT ino, since FROM orphans").fetchall())
        assert since[a] == pytest.approx(1_796_681_377.7162035) and since[b] == 1_796_681_377.25
        assert s.orphans(10, dirs_before=1_796_681_378.0) == [b, a]
    finally:
        s.close()


def test_files_noted_for_a_trim_stay_noted_until_trimmed_or_freed(d: Driver, store: MetadataStore) -> None:
    """A master notes a dead writer's files before it closes the writer's session: one that dies before it
    trims them leaves them to the next (a fault probe: 41 files never cut)."""
    f, g, h = (d.create(ROOT_INO, name) for name in "fgh")
    d("note_trims", inos=[f, g, h])
    d("note_trims", inos=[f])  # (again: once)
    assert store.to_trim() == [f, g, h] and store.noted_for_trim(g)
    d("trim", ino=f, size=0)
    assert d("trim", ino=g, size=5) == {"dropped": []}  # called off (the size moved since): not noted either
    d.unlink(ROOT_INO, "h")
    assert store.to_trim() == [] and not store.noted_for_trim(g)


def test_a_file_counts_its_chunks_for_st_blocks(d: Driver, store: MetadataStore) -> None:
    f = d.create(ROOT_INO, "f")
    assert store.getattr(f)["chunks"] == 0
    for index in (0, 3, 7):
        d.alloc(f, index)
    d.alloc(f, 3)  # a retried allocation: the same chunk, counted once
    d("extend", ino=f, size=8 * CS, mtime=2000.0)
    assert store.getattr(f)["chunks"] == 3
    [[_, _, _, listed]], _ = store.readdir(ROOT_INO, "", 10, attrs=True)
    assert listed["chunks"] == 3
    d("setattr", ino=f, time=d.tick(), size=3 * CS + 1)  # chunk 7 dropped, 3 stays (it holds the end)
    assert store.getattr(f)["chunks"] == 2
    g = d.create(ROOT_INO, "g")
    d.alloc(g, 0)
    d.rename(ROOT_INO, "g", ROOT_INO, "f")  # replaces f: its chunks go, g's count moves with g
    assert store.getattr(g)["chunks"] == 1


def test_a_store_from_before_the_chunk_count_counts_on_opening(tmp_path: Path) -> None:
    path = tmp_path / "meta.db"
    s = MetadataStore(path, CS)
    d = Driver(s)
    f = d.create(ROOT_INO, "f")
    d.alloc(f, 0)
    d.alloc(f, 2)
    s.close()
    db = sqlite3.connect(path)
    db.executescript("DROP TRIGGER file_chunks_insert; DROP TRIGGER file_chunks_delete; "
                     "ALTER TABLE inodes DROP COLUMN chunks;")
    db.close()
    s = MetadataStore(path, CS)
    try:
        assert s.getattr(f)["chunks"] == 2 and s.getattr(ROOT_INO)["chunks"] == 0
        Driver(s, term=2).alloc(f, 1)
        assert s.getattr(f)["chunks"] == 3
    finally:
        s.close()


def test_setattr_mode_times_and_errors(d: Driver, store: MetadataStore) -> None:
    f = d.create(ROOT_INO, "f")
    dd = d.mkdir(ROOT_INO, "d")
    # Times set by a client are integer nanoseconds, kept exactly.
    r = d("setattr", ino=f, time=5000.0, mode=0o100600 | 0o4000, mtime=12_500_000_001, atime=7)
    attr = r["attr"]
    assert attr["mode"] == stat.S_IFREG | 0o4600
    assert (attr["mtime_ns"], attr["atime_ns"], attr["ctime_ns"]) == (12_500_000_001, 7, 5000 * 10**9)
    assert attr["size"] == 0
    with pytest.raises(IsADirectory):
        d("setattr", ino=dd, time=1.0, size=0)
    with pytest.raises(InvalidArgument):
        d("setattr", ino=f, time=1.0, size=-1)
    with pytest.raises(NotFound):
        d("setattr", ino=4242, time=1.0, mode=0o600)
    d("setattr", ino=dd, time=1.0, mode=0o700)
    assert store.getattr(dd)["mode"] == stat.S_IFDIR | 0o700


def test_extend_never_shrinks(d: Driver, store: MetadataStore) -> None:
    f = d.create(ROOT_INO, "f")
    assert d("extend", ino=f, size=100, mtime=3000.0)["size"] == 100
    attr = d("extend", ino=f, size=50, mtime=10.0)
    assert attr["size"] == 100
    assert attr["mtime_ns"] == 3000 * 10**9
    assert d("extend", ino=f, size=101, mtime=3001.5)["size"] == 101
    # A future mtime (set by utime) gives way to a write's time; ctime follows the write too.
    d("setattr", ino=f, time=3002.0, mtime=9 * 10**18)
    attr = d("extend", ino=f, size=101, mtime=3003 * 10**9 + 7, time=3003.5)
    assert (attr["mtime_ns"], attr["ctime_ns"]) == (3003 * 10**9 + 7, 3003 * 10**9 + 7)
    dd = d.mkdir(ROOT_INO, "d")
    with pytest.raises(IsADirectory):
        d("extend", ino=dd, size=1, mtime=1.0)
    with pytest.raises(NotFound):
        d("extend", ino=4242, size=1, mtime=1.0)


def test_a_touch_a_moment_ahead_of_the_masters_clock_is_not_undone_by_the_next_write_or_truncate(
        d: Driver, store: MetadataStore) -> None:
    """The kernel's "now" for a touch may be up to a tick past the coarse clock the master stamps with
    (`KERNEL_AHEAD_NS`): its ctime is that instant, and a write or truncate right after it keeps it."""
    f = d.create(ROOT_INO, "f")
    now = 4000 * 10**9
    touched = now + 2_300_000  # 2.3 ms ahead, as seen on Linux 6.18
    attr = d("setattr", ino=f, time=now, mtime=touched, atime=touched)["attr"]
    assert (attr["mtime_ns"], attr["ctime_ns"]) == (touched, touched)
    attr = d("extend", ino=f, size=10, mtime=now + 1_000_000, time=now + 1_000_000)  # a write a moment later
    assert (attr["mtime_ns"], attr["ctime_ns"]) == (touched, touched)
    attr = d("setattr", ino=f, time=now + 2_000_000, size=5)["attr"]
    assert (attr["mtime_ns"], attr["ctime_ns"]) == (touched, touched)
    # Further ahead than a tick: set on purpose, and a write makes mtime its own time.
    ahead = now + KERNEL_AHEAD_NS + 5_000_000 + 10**9
    attr = d("setattr", ino=f, time=now + 3_000_000, mtime=ahead)["attr"]
    assert (attr["mtime_ns"], attr["ctime_ns"]) == (ahead, now + 3_000_000)
    attr = d("extend", ino=f, size=10, mtime=now + 4_000_000, time=now + 4_000_000)
    assert attr["mtime_ns"] == now + 4_000_000


def test_set_replicas_recursive_and_inherited(d: Driver, store: MetadataStore) -> None:
    a = d.mkdir(ROOT_INO, "a")
    b = d.mkdir(a, "b")
    f1 = d.create(a, "f1")
    f2 = d.create(b, "f2")
    other = d.create(ROOT_INO, "other")
    assert d("set_replicas", ino=a, replicas=2, min_replicas=1, recursive=False) == 1
    assert store.getattr(a)["replicas"] == 2
    assert store.getattr(b)["replicas"] == 3
    assert d("set_replicas", ino=a, replicas=5, min_replicas=3, recursive=True) == 4
    for ino in (a, b, f1, f2):
        attr = store.getattr(ino)
        assert (attr["replicas"], attr["min_replicas"]) == (5, 3), ino
    assert store.getattr(other)["replicas"] == 3
    assert store.getattr(ROOT_INO)["replicas"] == 3
    # New files and directories inherit from their parent.
    f3 = d.create(b, "f3")
    c = d.mkdir(b, "c")
    f4 = d.create(c, "f4")
    for ino in (f3, c, f4):
        assert (store.getattr(ino)["replicas"], store.getattr(ino)["min_replicas"]) == (5, 3)
    assert d("set_replicas", ino=f1, replicas=1, min_replicas=1, recursive=True) == 1


@pytest.mark.parametrize(("n", "m"), [(0, 0), (2, 3), (17, 2), (3, 0), (-1, -2)])
def test_set_replicas_bad_values(d: Driver, store: MetadataStore, n: int, m: int) -> None:
    with pytest.raises(InvalidArgument):
        d("set_replicas", ino=ROOT_INO, replicas=n, min_replicas=m, recursive=True)
    assert store.getattr(ROOT_INO)["replicas"] == 3


def test_set_replicas_missing_inode(d: Driver) -> None:
    with pytest.raises(NotFound):
        d("set_replicas", ino=4242, replicas=2, min_replicas=1, recursive=False)


# -- chunks ---------------------------------------------------------------------------


def test_alloc_chunk_idempotent_and_versioned(store: MetadataStore) -> None:
    d = Driver(store, term=7)
    f = d.create(ROOT_INO, "f")
    c0 = d.alloc(f, 0, [3, 1, 2])
    assert c0.replicas == (3, 1, 2)
    assert c0.version >> VERSION_TERM_SHIFT == 7
    assert (c0.ino, c0.index) == (f, 0)
    assert d.alloc(f, 0, [9]) == c0
    assert store.chunk_at(f, 0) == c0
    assert store.chunk(c0.chunk_id) == c0
    c1 = d.alloc(f, 1)
    assert c1.chunk_id != c0.chunk_id
    assert c1.version > c0.version
    d.term = 8
    c2 = d.alloc(f, 2)
    assert c2.version >> VERSION_TERM_SHIFT == 8
    assert c2.version > c1.version
    assert d.alloc(f, 0) == c0  # still the old one
    assert store.chunk_versions([c0.chunk_id, c2.chunk_id, 999]) == {c0.chunk_id: c0.version, c2.chunk_id: c2.version}
    assert store.chunk_at(f, 5) is None and store.chunk(999) is None


def test_alloc_chunk_errors(d: Driver) -> None:
    dd = d.mkdir(ROOT_INO, "d")
    with pytest.raises(IsADirectory):
        d.alloc(dd, 0)
    with pytest.raises(NotFound):
        d.alloc(4242, 0)


def test_set_chunk_replicas_bumps_version(store: MetadataStore) -> None:
    d = Driver(store, term=3)
    f = d.create(ROOT_INO, "f")
    c = d.alloc(f, 0, [1, 2, 3])
    c2: Chunk = d("set_chunk_replicas", chunk_id=c.chunk_id, replicas=[1, 3])
    assert c2.version > c.version
    assert c2.replicas == (1, 3)
    assert (c2.chunk_id, c2.ino, c2.index) == (c.chunk_id, f, 0)
    assert store.chunk(c.chunk_id) == c2
    d.term = 4
    c3: Chunk = d("set_chunk_replicas", chunk_id=c.chunk_id, replicas=[])
    assert c3.version > c2.version and c3.version >> VERSION_TERM_SHIFT == 4
    assert store.chunk(c.chunk_id) == c3 and c3.replicas == ()
    with pytest.raises(NotFound):
        d("set_chunk_replicas", chunk_id=999, replicas=[1])


def test_register_cs_assigns_ids(d: Driver, store: MetadataStore) -> None:
    assert d("register_cs", cs_id=0, addr="h1:1", host="h1", time=1.0) == 1
    assert d("register_cs", cs_id=0, addr="h2:1", host="h2", time=1.0) == 2
    assert d("register_cs", cs_id=10, addr="h3:1", host="h3", time=1.0) == 10
    assert d("register_cs", cs_id=0, addr="h4:1", host="h4", time=1.0) == 11
    assert d("register_cs", cs_id=2, addr="h2:9", host="h2b", time=2.0) == 2
    assert d("register_cs", cs_id=5, addr="h5:1", host="h5", time=2.0) == 5
    assert d("register_cs", cs_id=0, addr="h6:1", host="h6", time=2.0) == 12
    assert store.chunk_servers() == [
        {"id": 1, "addr": "h1:1", "host": "h1"},
        {"id": 2, "addr": "h2:9", "host": "h2b"},
        {"id": 5, "addr": "h5:1", "host": "h5"},
        {"id": 10, "addr": "h3:1", "host": "h3"},
        {"id": 11, "addr": "h4:1", "host": "h4"},
        {"id": 12, "addr": "h6:1", "host": "h6"},
    ]


def test_a_writers_late_extend_does_not_regrow_a_file_cut_since(d: Driver, store: MetadataStore) -> None:
    """A writer reports its writes' end with the last cut it knew of: one from before a later cut is not taken.

    A probe found a logger's close on one mount regrowing, with zeros, a file another mount had truncated.
    """
    ino = d.create(ROOT_INO, "log")
    known = store.getattr(ino)["cut"]
    assert known == 0
    d("extend", ino=ino, size=100, mtime=int(d.tick() * 1e9), time=d.clock, cut=known)
    assert store.getattr(ino)["size"] == 100
    d("setattr", ino=ino, time=d.tick(), size=0)  # another client's truncate
    cut = store.getattr(ino)["cut"]
    assert cut > known
    d("extend", ino=ino, size=1300, mtime=int(d.tick() * 1e9), time=d.clock, cut=known)  # written before the cut
    assert store.getattr(ino)["size"] == 0
    d("setattr", ino=ino, time=d.tick(), extend=[60, int(d.clock * 1e9), known])  # the same, with a setattr
    assert store.getattr(ino)["size"] == 0
    d("extend", ino=ino, size=13, mtime=int(d.tick() * 1e9), time=d.clock, cut=cut)  # written after it, knowing it
    assert store.getattr(ino)["size"] == 13
    d("extend", ino=ino, size=20, mtime=int(d.tick() * 1e9), time=d.clock)  # a writer that knows no cuts: as before
    assert store.getattr(ino)["size"] == 20
    # O_TRUNC is a cut too; and the record goes with the inode.
    d("create", parent=ROOT_INO, name="log", mode=0o644, time=d.tick(), exclusive=False, truncate=True)
    assert store.getattr(ino)["cut"] > cut
    d("unlink", parent=ROOT_INO, name="log", time=d.tick(), free_ino=ino)  # held open nowhere: freed
    assert store.db.execute("SELECT count(*) FROM cuts").fetchone()[0] == 0
    assert "cut" not in store.getattr(ROOT_INO)


def test_a_removed_chunk_server_never_registers_again(d: Driver, store: MetadataStore) -> None:
    """rm-cs is kept in the store, so a new master refuses the server too; a new registration gets a new id."""
    cs = d("register_cs", cs_id=0, addr="h1:1", host="h1", time=1.0)
    d("remove_cs", cs_id=cs)
    assert store.cs_removed(cs) and store.chunk_servers() == []
    with pytest.raises(InvalidArgument, match="removed"):
        d("register_cs", cs_id=cs, addr="h1:1", host="h1", time=2.0)
    assert store.chunk_servers() == []
    assert d("register_cs", cs_id=0, addr="h1:1", host="h1", time=3.0) != cs


def test_the_first_event_dates_a_new_root(d: Driver, store: MetadataStore) -> None:
    """A new store's root has no time (1970); the cluster's first event (its first election) dates it, once."""
    assert store.getattr(ROOT_INO)["mtime_ns"] == 0
    d("event", time=1234.5, level="info", message="MDS#1 is the master")
    attr = store.getattr(ROOT_INO)
    assert (attr["atime_ns"], attr["mtime_ns"], attr["ctime_ns"]) == (1234_500_000_000,) * 3
    d("event", time=5000.0, level="info", message="MDS#2 is the master")
    assert store.getattr(ROOT_INO)["mtime_ns"] == 1234_500_000_000


def test_the_event_log_keeps_its_window(d: Driver, store: MetadataStore) -> None:
    """Bounded history: at most event-log-max events, none older than event-log-days (settings)."""
    from chunkfs.mds.store import EVENT_TRIM_BATCH

    d("set_config", values={"event-log-max": "100"})
    for i in range(150):
        d("event", time=1000.0 + i, level="info", message=f"m{i}")
    kept = store.events(0, 1000)
    assert len(kept) == 100 and kept[0]["message"] == "m50" and kept[-1]["message"] == "m149"
    # Older than the age window: gone with the next event.
    d("event", time=1000.0 + 2 * 86400, level="info", message="two days later")
    d("set_config", values={"event-log-days": "1"})
    d("event", time=1000.0 + 2 * 86400 + 1, level="info", message="and one more")
    assert [e["message"] for e in store.events(0, 1000)] == ["two days later", "and one more"]
    # A window made much smaller trims in bounded steps, one batch per new event.
    d("set_config", values={"event-log-days": "3650", "event-log-max": str(10 * EVENT_TRIM_BATCH)})
    for i in range(3 * EVENT_TRIM_BATCH):
        d("event", time=5e6, level="info", message=f"n{i}")
    d("set_config", values={"event-log-max": "100"})
    before = len(store.events(0, 10**6))
    d("event", time=5e6, level="info", message="after")
    assert len(store.events(0, 10**6)) == before + 1 - EVENT_TRIM_BATCH


def test_events(d: Driver, store: MetadataStore) -> None:
    seqs = [d("event", time=float(i), level="info", message=f"m{i}") for i in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    ev = store.events(0, 100)
    assert [e["message"] for e in ev] == ["m0", "m1", "m2", "m3", "m4"]
    assert store.events(2, 2) == [
        {"seq": 3, "time": 2.0, "level": "info", "message": "m2"},
        {"seq": 4, "time": 3.0, "level": "info", "message": "m3"},
    ]
    assert store.events(5, 10) == []


# -- apply bookkeeping ----------------------------------------------------------------


def test_errors_still_advance_applied_index_and_change_nothing(d: Driver, store: MetadataStore) -> None:
    a = d.mkdir(ROOT_INO, "a")
    d.create(a, "x")
    before = store.getattr(a), store.getattr(ROOT_INO), names(store, ROOT_INO)
    assert store.applied_index == 2
    with pytest.raises(DirectoryNotEmpty):
        d.rmdir(ROOT_INO, "a")
    assert store.applied_index == 3
    with pytest.raises(Exists):
        d.mkdir(ROOT_INO, "a")
    assert store.applied_index == 4
    with pytest.raises(InvalidArgument):
        d("set_replicas", ino=ROOT_INO, replicas=0, min_replicas=0, recursive=True)
    assert store.applied_index == 5
    assert (store.getattr(a), store.getattr(ROOT_INO), names(store, ROOT_INO)) == before


def test_applied_index_is_what_the_log_says(store: MetadataStore) -> None:
    store.apply(41, 1, encode_command("mkdir", parent=ROOT_INO, name="a", mode=0o755, time=1.0))
    assert store.applied_index == 41
    with pytest.raises(Exists):
        store.apply(57, 1, encode_command("mkdir", parent=ROOT_INO, name="a", mode=0o755, time=1.0))
    assert store.applied_index == 57


def test_unknown_op_still_advances_applied_index(store: MetadataStore) -> None:
    with pytest.raises(InvalidArgument):
        store.apply(1, 1, encode_command("frobnicate"))
    assert store.applied_index == 1


def test_reopen_keeps_state(tmp_path: Path) -> None:
    path = tmp_path / "meta.db"
    s = MetadataStore(path, CS)
    d = Driver(s, term=2)
    a = d.mkdir(ROOT_INO, "a")
    f = d.create(a, "f")
    c = d.alloc(f, 0)
    d("register_cs", cs_id=0, addr="h:1", host="h", time=1.0)
    d("event", time=1.0, level="info", message="hello")
    with pytest.raises(Exists):
        d.mkdir(ROOT_INO, "a")
    dump_before = dump(s)
    s.close()
    s2 = MetadataStore(path, CS)
    try:
        assert s2.applied_index == 6
        assert dump(s2) == dump_before
        d2 = Driver(s2, term=3)
        g = d2.create(a, "g")
        assert g not in (ROOT_INO, a, f)
        c2 = d2.alloc(g, 0)
        assert c2.chunk_id != c.chunk_id and c2.version > c.version
        assert d2("register_cs", cs_id=0, addr="h:2", host="h", time=2.0) == 2
        assert d2("event", time=2.0, level="info", message="again") == 2
    finally:
        s2.close()


# -- determinism, and a model of the namespace --------------------------------------------


def dump(store: MetadataStore) -> dict[str, Any]:
    tree: dict[str, Any] = {}

    def walk(ino: int, path: str) -> None:
        tree[path] = store.getattr(ino)
        if tree[path]["type"] == "d":
            for name, child, _ in store.readdir(ino, "", 10_000)[0]:
                name = name.decode()
                walk(child, f"{path}/{name}")

    walk(ROOT_INO, "")
    return {
        "tree": tree,
        "chunks": sorted(store.all_chunks(), key=lambda c: c.chunk_id),
        "cs": store.chunk_servers(),
        "events": store.events(0, 10_000),
        "applied": store.applied_index,
    }


NAMES = ["a", "b", "c"]


@st.composite
def commands(draw: st.DrawFn) -> list[tuple[str, dict[str, Any]]]:
    """Random commands with small inode numbers and names, so they often collide."""
    ino = st.integers(1, 12)
    name = st.sampled_from(NAMES)
    time = st.floats(0, 1e6, allow_nan=False)
    one = st.one_of(
        st.builds(lambda p, n, t: ("mkdir", {"parent": p, "name": n, "mode": 0o755, "time": t}), ino, name, time),
        st.builds(
            lambda p, n, t, x: ("create", {"parent": p, "name": n, "mode": 0o644, "time": t, "exclusive": x}),
            ino, name, time, st.booleans(),
        ),
        st.builds(lambda p, n, t: ("unlink", {"parent": p, "name": n, "time": t}), ino, name, time),
        st.builds(lambda p, n, t: ("rmdir", {"parent": p, "name": n, "time": t}), ino, name, time),
        st.builds(
            lambda p, n, q, m, t: ("rename", {"parent": p, "name": n, "new_parent": q, "new_name": m, "time": t}),
            ino, name, ino, name, time,
        ),
        st.builds(
            lambda i, s, t: ("setattr", {"ino": i, "size": s, "time": t}), ino, st.integers(0, 4 * CS), time
        ),
        st.builds(lambda i, s, t: ("extend", {"ino": i, "size": s, "mtime": t}), ino, st.integers(0, 4 * CS), time),
        st.builds(
            lambda i, k, r: ("alloc_chunk", {"ino": i, "index": k, "replicas": r}),
            ino, st.integers(0, 4), st.lists(st.integers(1, 5), max_size=3),
        ),
        st.builds(
            lambda c, r: ("set_chunk_replicas", {"chunk_id": c, "replicas": r}),
            st.integers(1, 6), st.lists(st.integers(1, 5), max_size=3),
        ),
        st.builds(
            lambda i, n, r: ("set_replicas", {"ino": i, "replicas": n, "min_replicas": 1, "recursive": r}),
            ino, st.integers(1, 4), st.booleans(),
        ),
        st.builds(
            lambda c, a: ("register_cs", {"cs_id": c, "addr": a, "host": a, "time": 1.0}),
            st.integers(0, 3), st.sampled_from(["h1:1", "h2:1"]),
        ),
    )
    return draw(st.lists(one, max_size=40))


def run_all(store: MetadataStore, cmds: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    outcomes = []
    for i, (op, args) in enumerate(cmds, start=1):
        try:
            outcomes.append(store.apply(i, 1 + i // 10, encode_command(op, **args)))
        except ChunkFSError as exc:
            outcomes.append((type(exc).__name__, str(exc)))
    return outcomes


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(commands())
def test_same_commands_same_state(cmds: list[tuple[str, dict[str, Any]]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        s1 = MetadataStore(Path(tmp) / "one.db", CS)
        s2 = MetadataStore(Path(tmp) / "two.db", CS)
        try:
            assert run_all(s1, cmds) == run_all(s2, cmds)
            assert dump(s1) == dump(s2)
            assert s1.applied_index == len(cmds)
        finally:
            s1.close()
            s2.close()


class Model:
    """The namespace as a dict of paths; POSIX-like rules, independent of the store."""

    def __init__(self) -> None:
        self.nodes: dict[tuple[str, ...], str] = {(): "d"}

    def children(self, path: tuple[str, ...]) -> list[tuple[str, ...]]:
        return [p for p in self.nodes if len(p) == len(path) + 1 and p[: len(path)] == path]

    def _dir(self, path: tuple[str, ...] | None) -> type[ChunkFSError] | None:
        if path is None or path not in self.nodes:
            return NotFound
        return None if self.nodes[path] == "d" else NotADirectory

    def apply(self, op: str, p: tuple[str, ...] | None, n: str, q: tuple[str, ...] | None, m: str,
              exclusive: bool) -> type[ChunkFSError] | None:
        if op in ("mkdir", "create"):
            target = None if p is None else (*p, n)
            if op == "create" and target in self.nodes:
                if exclusive:
                    return Exists
                return IsADirectory if self.nodes[target] == "d" else None
            err = self._dir(p)
            if err:
                return err
            assert target is not None
            if target in self.nodes:
                return Exists
            self.nodes[target] = "d" if op == "mkdir" else "f"
            return None
        err = self._dir(p)
        if err:
            return err
        assert p is not None
        src = (*p, n)
        if src not in self.nodes:
            return NotFound
        kind = self.nodes[src]
        if op == "unlink":
            if kind == "d":
                return IsADirectory
            del self.nodes[src]
            return None
        if op == "rmdir":
            if kind != "d":
                return NotADirectory
            if self.children(src):
                return DirectoryNotEmpty
            del self.nodes[src]
            return None
        assert op == "rename"
        err = self._dir(q)
        if err:
            return err
        assert q is not None
        if kind == "d" and q[: len(src)] == src:
            return InvalidArgument
        dst = (*q, m)
        if dst == src:
            return None
        if dst in self.nodes:
            tkind = self.nodes[dst]
            if kind == "d" and tkind != "d":
                return NotADirectory
            if kind != "d" and tkind == "d":
                return IsADirectory
            if tkind == "d" and self.children(dst):
                return DirectoryNotEmpty
            del self.nodes[dst]
        for path in sorted(self.nodes):
            if path[: len(src)] == src:
                self.nodes[(*dst, *path[len(src):])] = self.nodes.pop(path)
        return None


@st.composite
def namespace_ops(draw: st.DrawFn) -> list[tuple[str, int, str, int, str, bool]]:
    op = st.sampled_from(["mkdir", "mkdir", "create", "unlink", "rmdir", "rename", "rename"])
    pick = st.integers(0, 30)
    name = st.sampled_from(NAMES)
    return draw(st.lists(st.tuples(op, pick, name, pick, name, st.booleans()), max_size=50))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(namespace_ops())
def test_namespace_matches_model(ops: list[tuple[str, int, str, int, str, bool]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = MetadataStore(Path(tmp) / "m.db", CS)
        try:
            d = Driver(store)
            model = Model()
            for op, pi, n, qi, m, exclusive in ops:
                # Pick parents among existing paths, plus "gone" (an inode that no longer exists).
                paths = sorted(model.nodes)
                choices: list[tuple[str, ...] | None] = [*paths, None]
                p, q = choices[pi % len(choices)], choices[qi % len(choices)]
                pino = store.resolve("/".join(p))["ino"] if p is not None else 99_999
                qino = store.resolve("/".join(q))["ino"] if q is not None else 99_999
                expected = model.apply(op, p, n, q, m, exclusive)
                try:
                    if op == "mkdir":
                        d.mkdir(pino, n)
                    elif op == "create":
                        d.create(pino, n, exclusive=exclusive)
                    elif op == "unlink":
                        d.unlink(pino, n)
                    elif op == "rmdir":
                        d.rmdir(pino, n)
                    else:
                        d.rename(pino, n, qino, m)
                    got: type[ChunkFSError] | None = None
                except ChunkFSError as exc:
                    got = type(exc)
                assert got is expected, (op, p, n, q, m)
                tree = dump(store)["tree"]
                assert {tuple(k.split("/")[1:]): v["type"] for k, v in tree.items()} == model.nodes
                # A directory links from its name, its "." and each subdirectory's "..".
                for path, kind in model.nodes.items():
                    if kind == "d":
                        subdirs = sum(model.nodes[c] == "d" for c in model.children(path))
                        assert tree["/".join(("", *path)) if path else ""]["nlink"] == 2 + subdirs, path
        finally:
            store.close()


def test_unlinked_file_held_open_is_kept_as_orphan_until_freed(d: Driver, store: MetadataStore) -> None:
    f = d.create(ROOT_INO, "f")
    d.alloc(f, 0)
    assert d.unlink(ROOT_INO, "f", held=True) == []
    attr = store.getattr(f)
    assert attr["nlink"] == 0 and store.orphans(10) == [f]
    assert names(store, ROOT_INO) == []
    d.create(ROOT_INO, "f")  # the name is free again
    assert d("free_orphans", inos=[f + 1, 4242]) == []  # not orphans: left alone
    dropped = d("free_orphans", inos=[f])
    assert [c.ino for c in dropped] == [f]
    with pytest.raises(NotFound):
        store.getattr(f)
    assert store.orphans(10) == []


def test_free_decided_for_another_inode_keeps_an_orphan(d: Driver, store: MetadataStore) -> None:
    """The master decided to free the inode a name had; if the name moved on meanwhile, nothing is freed."""
    old = d.create(ROOT_INO, "f")
    d.unlink(ROOT_INO, "f")
    new = d.create(ROOT_INO, "f")
    result = d("unlink", parent=ROOT_INO, name="f", time=d.tick(), free_ino=old)
    assert result == {"dropped": [], "orphan": new}


def test_rename_over_an_open_file_orphans_it(d: Driver, store: MetadataStore) -> None:
    a = d.create(ROOT_INO, "a")
    b = d.create(ROOT_INO, "b")
    d.alloc(b, 0)
    assert d.rename(ROOT_INO, "a", ROOT_INO, "b", held=True) == []
    assert store.lookup(ROOT_INO, "b")["ino"] == a
    assert store.orphans(10) == [b] and store.getattr(b)["nlink"] == 0


def test_create_with_truncate(d: Driver, store: MetadataStore) -> None:
    f = d.create(ROOT_INO, "f")
    d.alloc(f, 0)
    d.alloc(f, 1)
    d("extend", ino=f, size=CS + 10, mtime=d.tick())
    result = d("create", parent=ROOT_INO, name="f", mode=0o644, time=d.tick(), exclusive=False, truncate=True)
    assert result["attr"]["size"] == 0
    assert result["attr"]["mtime_ns"] == round(d.clock * 1e9) == result["attr"]["ctime_ns"]
    assert sorted(c.index for c in result["dropped"]) == [0, 1]
    assert list(store.all_chunks()) == []


def test_symbolic_links(d: Driver, store: MetadataStore) -> None:
    a = d.mkdir(ROOT_INO, "a")
    f = d.create(a, "f")
    link = d("symlink", parent=ROOT_INO, name="l", target=b"a/f", time=d.tick())
    assert link["type"] == "l" and link["target"] == b"a/f" and link["size"] == 3
    assert stat.S_ISLNK(link["mode"]) and link["nlink"] == 1
    d("symlink", parent=ROOT_INO, name="up", target=b"/a", time=d.tick())
    d("symlink", parent=a, name="loop", target=b"loop", time=d.tick())
    assert store.resolve("/l")["ino"] == link["ino"]  # the last component is not followed
    assert store.resolve("/l", follow=True)["ino"] == f
    assert store.resolve("/up/f")["ino"] == f
    assert store.resolve("/a/../l", follow=True)["ino"] == f
    with pytest.raises(SymlinkLoop):
        store.resolve("/a/loop", follow=True)
    with pytest.raises(InvalidArgument):
        d("symlink", parent=ROOT_INO, name="empty", target=b"", time=d.tick())
    with pytest.raises(NameTooLong):
        d("symlink", parent=ROOT_INO, name="big", target=b"x" * 4096, time=d.tick())
    with pytest.raises(InvalidArgument):
        d("setattr", ino=link["ino"], size=0, time=d.tick())
    assert d.unlink(ROOT_INO, "l") == [] and store.orphans(10) == []
    with pytest.raises(NotFound):
        store.getattr(link["ino"])


@pytest.mark.parametrize("op", ["lookup", "unlink", "rmdir", "rename", "create", "mkdir", "resolve"])
def test_names_over_255_bytes_are_too_long_everywhere(d: Driver, store: MetadataStore, op: str) -> None:
    long = "x" * (MAX_NAME_LEN + 1)
    calls = {
        "lookup": lambda: store.lookup(ROOT_INO, long),
        "unlink": lambda: d.unlink(ROOT_INO, long),
        "rmdir": lambda: d.rmdir(ROOT_INO, long),
        "rename": lambda: d.rename(ROOT_INO, long, ROOT_INO, "y"),
        "create": lambda: d.create(ROOT_INO, long, exclusive=False),
        "mkdir": lambda: d.mkdir(ROOT_INO, long),
        "resolve": lambda: store.resolve(f"/{long}/z"),
    }
    with pytest.raises(NameTooLong):
        calls[op]()


def test_setattr_changes_ctime_also_for_times(d: Driver, store: MetadataStore) -> None:
    f = d.create(ROOT_INO, "f")
    now = d.tick()
    attr = d("setattr", ino=f, time=now, mtime=5 * 10**9, atime=4 * 10**9)["attr"]
    assert (attr["atime_ns"], attr["mtime_ns"], attr["ctime_ns"]) == (4 * 10**9, 5 * 10**9, round(now * 1e9))
    # utimensat(UTIME_NOW) from a mount: mtime and ctime are one instant.
    attr = d("setattr", ino=f, time=now + 1.2, mtime=round((now + 1) * 1e9))["attr"]
    assert attr["mtime_ns"] == attr["ctime_ns"] == round((now + 1) * 1e9)
    # A time set on purpose near now, most of a second before or ahead: ctime is the change's own (a
    # POSIX probe saw ctime take such an mtime, and the next change move it backwards).
    for at, mtime in ((now + 3, now + 2.1), (now + 5, now + 5.8), (now + 7, now + 7.04)):
        attr = d("setattr", ino=f, time=at, mtime=round(mtime * 1e9))["attr"]
        assert attr["ctime_ns"] == round(at * 1e9) and attr["mtime_ns"] == round(mtime * 1e9)


def test_store_from_before_link_counts_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    s = MetadataStore(path, CS)
    d = Driver(s)
    a = d.mkdir(ROOT_INO, "a")
    d.mkdir(a, "b")
    d.create(a, "f")
    # What an older version wrote: times as REAL seconds, no link counts, no schema version.
    s.db.executescript("""
        CREATE TABLE old AS SELECT ino, type, mode, size, atime / 1e9 AS atime, mtime / 1e9 AS mtime,
            ctime / 1e9 AS ctime, replicas, min_replicas FROM inodes;
        DROP TABLE inodes;
        CREATE TABLE inodes (ino INTEGER PRIMARY KEY, type TEXT NOT NULL, mode INTEGER NOT NULL,
            size INTEGER NOT NULL, atime REAL NOT NULL, mtime REAL NOT NULL, ctime REAL NOT NULL,
            replicas INTEGER NOT NULL, min_replicas INTEGER NOT NULL);
        INSERT INTO inodes SELECT * FROM old;
        DROP TABLE old;
        DELETE FROM meta WHERE key = 'schema';
    """)
    s.close()
    s = MetadataStore(path, CS)
    try:
        assert s.getattr(ROOT_INO)["nlink"] == 3 and s.getattr(a)["nlink"] == 3
        assert s.lookup(a, "f")["nlink"] == 1
        assert s.getattr(a)["mtime_ns"] == round(d.clock * 1e9)
    finally:
        s.close()


def test_rename_noreplace(d: Driver, store: MetadataStore) -> None:
    a = d.create(ROOT_INO, "a")
    d.create(ROOT_INO, "b")
    with pytest.raises(Exists):
        d("rename", parent=ROOT_INO, name="a", new_parent=ROOT_INO, new_name="b", time=d.tick(), noreplace=True)
    d("rename", parent=ROOT_INO, name="a", new_parent=ROOT_INO, new_name="c", time=d.tick(), noreplace=True)
    assert store.lookup(ROOT_INO, "c")["ino"] == a


def test_a_retried_change_is_answered_not_done_twice(d: Driver, store: MetadataStore) -> None:
    """Exactly-once: the same client request id gets the first answer, also for errors, and nothing changes."""
    req = ["client-a", 7, 7]
    first = d("mkdir", parent=ROOT_INO, name="x", mode=0o755, time=d.tick(), req=req)
    again = d("mkdir", parent=ROOT_INO, name="x", mode=0o755, time=d.tick(), req=req)
    assert again == first
    with pytest.raises(Exists):  # another request (another number) for the same name: a real conflict
        d("mkdir", parent=ROOT_INO, name="x", mode=0o755, time=d.tick(), req=["client-a", 8, 7])
    f = d.create(ROOT_INO, "f")
    d.alloc(f, 0)
    gone = d("unlink", parent=ROOT_INO, name="f", time=d.tick(), free_ino=f, req=["client-b", 1, 1])
    assert len(gone["dropped"]) == 1
    d.create(ROOT_INO, "f")  # someone makes a new "f"; the retried unlink must not remove it
    assert d("unlink", parent=ROOT_INO, name="f", time=d.tick(), free_ino=0, req=["client-b", 1, 1]) == {
        "dropped": [], "orphan": 0}
    assert names(store, ROOT_INO) == ["f", "x"]
    # A failed change fails the same way when retried, even once it would succeed.
    with pytest.raises(NotFound):
        d("rmdir", parent=ROOT_INO, name="y", time=d.tick(), req=["client-c", 1, 1])
    d.mkdir(ROOT_INO, "y")
    with pytest.raises(NotFound):
        d("rmdir", parent=ROOT_INO, name="y", time=d.tick(), req=["client-c", 1, 1])
    # Answers below the client's lowest unanswered number are forgotten.
    d("mkdir", parent=ROOT_INO, name="z", mode=0o755, time=d.tick(), req=["client-a", 9, 9])
    rows = store.db.execute("SELECT seq FROM answers WHERE cid = 'client-a' ORDER BY seq").fetchall()
    assert [r[0] for r in rows] == [9]


def test_names_are_bytes_of_any_encoding(d: Driver, store: MetadataStore) -> None:
    """Any byte but "/" and NUL: a Latin-1 tree copies in as it is."""
    latin = "café".encode("latin-1")
    f = d.create(ROOT_INO, latin)
    d.mkdir(ROOT_INO, b"dir\xff")
    assert store.lookup(ROOT_INO, latin)["ino"] == f
    assert [e[0] for e in store.readdir(ROOT_INO, b"", 10)[0]] == [b"caf\xe9", b"dir\xff"]
    assert store.resolve(b"/dir\xff")["type"] == "d"
    assert store.resolve("/dir\udcff")["type"] == "d"  # the same name as text (os.fsdecode)
    d.rename(ROOT_INO, latin, ROOT_INO, b"\xe9t\xe9")
    assert [e[0] for e in store.readdir(ROOT_INO, b"", 10)[0]] == [b"dir\xff", b"\xe9t\xe9"]
    with pytest.raises(InvalidArgument):
        d.create(ROOT_INO, b"a/b")


def test_the_store_never_checkpoints_on_the_applying_connection(d: Driver, store: MetadataStore,
                                                                tmp_path: Path) -> None:
    """Checkpoints (which fsync the database file) run apart, on a connection of their own."""
    assert store.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    for i in range(300):
        d("mkdir", parent=1, name=f"d{i}", mode=0o755, time=1.0)
    wal = tmp_path / "meta.db-wal"
    assert wal.stat().st_size > 0
    frames, copied = store.checkpoint()
    assert frames > 0 and copied == frames
    # What was checkpointed is in the database file itself: a copy of that file alone has it.
    import shutil
    import sqlite3

    shutil.copy(tmp_path / "meta.db", tmp_path / "copy.db")
    copy = sqlite3.connect(tmp_path / "copy.db")
    try:
        assert copy.execute("SELECT count(*) FROM dentries WHERE parent = 1").fetchone()[0] == 300
    finally:
        copy.close()
    d("mkdir", parent=1, name="after", mode=0o755, time=1.0)  # the store goes on as before
    assert "after" in names(store, 1)


def test_a_snapshot_is_one_applied_state_taken_while_changes_go_on(d: Driver, store: MetadataStore,
                                                                    tmp_path: Path) -> None:
    """`snapshot_to` runs in a thread beside the applying one: its copy is exactly the state at its index."""
    import sqlite3
    import threading

    for i in range(300):
        d.mkdir(ROOT_INO, f"a{i}")
    before = d.index
    image = tmp_path / "image.db"
    taken: list[int] = []
    thread = threading.Thread(target=lambda: taken.append(store.snapshot_to(image)))
    thread.start()
    applied_during = 0
    while thread.is_alive() and applied_during < 5_000:
        d.mkdir(ROOT_INO, f"b{applied_during}")
        applied_during += 1
    thread.join(60)
    index = taken[0]
    assert before <= index <= d.index
    copy = sqlite3.connect(image)
    try:
        assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert copy.execute("SELECT value FROM meta WHERE key = 'applied_index'").fetchone()[0] == index
        # Every mkdir is one index: the copy holds exactly those up to its own.
        assert copy.execute("SELECT count(*) FROM dentries WHERE parent = ?", (ROOT_INO,)).fetchone()[0] == \
            300 + (index - before)
    finally:
        copy.close()
    assert not list(tmp_path.glob("image.db-*"))  # one self-contained file


def test_a_store_restored_from_an_image_is_that_image_and_goes_on(d: Driver, store: MetadataStore,
                                                                  tmp_path: Path) -> None:
    d.mkdir(ROOT_INO, "kept")
    image = tmp_path / "image.db"
    index = store.snapshot_to(image)
    d.mkdir(ROOT_INO, "after-the-image")
    store.restore(image, index)
    assert not image.exists()  # moved into place, not copied
    import time

    for _ in range(500):  # the old files go in a worker thread
        if not list(tmp_path.glob("*.old")):
            break
        time.sleep(0.01)
    assert not list(tmp_path.glob("*.old"))
    assert names(store, ROOT_INO) == ["kept"]
    assert store.applied_index == index
    d.index = index
    d.mkdir(ROOT_INO, "next")
    assert names(store, ROOT_INO) == ["kept", "next"]


def _log_size_while_checkpointed(store: MetadataStore, d: Driver, reset_every: int) -> int:
    """The write-ahead log's size after 60 passes of 40 changes, checkpointed beside them the way the
    server does (a worker thread, all the time); every `reset_every` passes, `reset_log` (0: never)."""
    stop = threading.Event()
    turn = threading.Lock()  # the server rewinds right after a checkpoint returned, never during one

    def checkpoints() -> None:
        while not stop.is_set():
            with turn:
                store.checkpoint()

    thread = threading.Thread(target=checkpoints)
    thread.start()
    try:
        for n in range(60):
            for i in range(40):
                d.mkdir(ROOT_INO, f"p{n}-{i}")
            if reset_every and n % reset_every == 0:
                with turn:
                    store.reset_log()
    finally:
        stop.set()
        thread.join()
    return store.log_bytes()


def test_the_write_ahead_log_is_rewound_while_changes_keep_coming(store: MetadataStore, d: Driver) -> None:
    # Checkpoints alone, while changes keep coming, never rewind the log: here it grew to 17 MB for
    # these 2,400 changes (0.5 GiB after 24,000 small files in a cluster). Rewound every 5 passes,
    # it holds about the pages of those passes (1.5 MB here).
    size = _log_size_while_checkpointed(store, d, reset_every=5)
    assert size < 8 << 20, size
    assert len(names(store, ROOT_INO)) == 60 * 40


def test_rewinding_the_log_never_waits_for_a_snapshot_copy(store: MetadataStore, d: Driver) -> None:
    # reset_log runs on the event loop; a snapshot holds the files' lock for all of its copy (seconds
    # at 10^7 files): the rewind is skipped then, not waited for.
    d.mkdir(ROOT_INO, "a")
    with store._files_lock:
        assert store.reset_log() is False
    assert store.reset_log() is True


def test_setattr_does_a_pending_extend_first_and_takes_the_mounts_ctime(d: Driver, store: MetadataStore) -> None:
    f = d.create(ROOT_INO, "f")
    wrote, old, made = 1_700_000_000_000_000_000, 1_500_000_000_000_000_000, 1_700_000_000_500_000_000
    attr = d("setattr", ino=f, time=d.tick(), mtime=old, extend=[4000, wrote], ctime=made)["attr"]
    assert (attr["size"], attr["mtime_ns"], attr["ctime_ns"]) == (4000, old, made)  # the times set after the write
    attr = d("setattr", ino=f, time=d.tick(), mode=0o600, extend=[100, wrote])["attr"]
    assert attr["size"] == 4000 and stat.S_IMODE(attr["mode"]) == 0o600  # an extend never shrinks
    assert attr["ctime_ns"] == int(d.clock * 1e9)  # no ctime given: the master's time
    with pytest.raises(IsADirectory):
        d("setattr", ino=ROOT_INO, time=d.tick(), extend=[1, wrote])
    assert store.getattr(f)["size"] == 4000


def test_mount_sessions_are_listed_until_closed(d: Driver, store: MetadataStore, tmp_path: Path) -> None:
    d("open_session", session="m1/a", time=1.0)
    d("open_session", session="m1/a", time=2.0)  # a retry, or a second master's: once
    d("open_session", session="m2/b", time=3.0)
    assert sorted(store.sessions()) == ["m1/a", "m2/b"]
    d("close_sessions", sessions=["m1/a", "never/listed"])
    assert store.sessions() == ["m2/b"]
    again = MetadataStore(tmp_path / "meta.db", CS)  # in the database: it outlives a restart
    try:
        assert again.sessions() == ["m2/b"]
    finally:
        again.close()


def test_a_metadata_servers_id_is_never_given_twice(d: Driver, store: MetadataStore) -> None:
    """A removed member may still run, and Raft knows members by their ids (found by a probe: the member added
    after the one with the highest id was removed got that id again)."""
    assert d("add_mds", addr="127.0.0.1:1001", node_id=1) == 1
    assert d("add_mds", addr="127.0.0.1:1002") == 2
    assert d("add_mds", addr="127.0.0.1:1003") == 3
    d("remove_mds", node_id=3)
    assert d("add_mds", addr="127.0.0.1:1003") == 4  # the same address, a new member
    d("remove_mds", node_id=4)
    d("remove_mds", node_id=2)
    assert d("add_mds", addr="127.0.0.1:1005") == 5
    assert store.mds_members() == {1: "127.0.0.1:1001", 5: "127.0.0.1:1005"}
