"""A damaged metadata store is moved aside at start (and rebuilt from the Raft snapshot and log), never served."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from chunkfs.mds.store import MetadataStore, encode_command
from chunkfs.mds.store_check import is_damage, set_aside_if_damaged

CHUNK_SIZE = 1 << 20


def _store_with_files(path: Path, n: int) -> None:
    store = MetadataStore(path, CHUNK_SIZE)
    folder = store.apply(1, 1, encode_command("mkdir", parent=1, name="data", mode=0o755, time=1.0))["ino"]
    for i in range(n):
        store.apply(2 + i, 1, encode_command("create", parent=folder, name=f"file-{i:05d}", mode=0o644,
                                             time=2.0 + i, exclusive=True))
    store.checkpoint()
    store.close()


def _damage(path: Path, pages: range) -> None:
    """Overwrite whole pages, as a bad sector or a stray write would."""
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        for page in pages:
            if (page + 1) * 1024 <= size:
                f.seek(page * 1024)
                f.write(os.urandom(1024))


def test_an_intact_store_is_left_where_it_is(tmp_path: Path) -> None:
    path = tmp_path / "metadata.sqlite"
    _store_with_files(path, 50)
    assert set_aside_if_damaged(path) is None
    assert path.exists()
    assert set_aside_if_damaged(tmp_path / "none.sqlite") is None  # no store yet: nothing to check


def test_a_damaged_store_is_moved_aside_and_a_new_one_opens(tmp_path: Path) -> None:
    path = tmp_path / "metadata.sqlite"
    _store_with_files(path, 2000)
    _damage(path, range(4, 40, 3))
    aside = set_aside_if_damaged(path)
    assert aside is not None and aside.exists() and not path.exists()
    store = MetadataStore(path, CHUNK_SIZE)  # a new, empty store: the server restores its snapshot into it
    try:
        assert store.applied_index == 0
    finally:
        store.close()


def test_what_sqlite_says_of_a_damaged_file_is_told_from_other_errors(tmp_path: Path) -> None:
    path = tmp_path / "not-a-db"
    path.write_bytes(os.urandom(8192))
    with pytest.raises(sqlite3.DatabaseError) as caught:
        sqlite3.connect(path).execute("SELECT * FROM sqlite_master").fetchall()
    assert is_damage(caught.value)
    assert not is_damage(sqlite3.OperationalError("database is locked"))
    assert not is_damage(ValueError("no"))
