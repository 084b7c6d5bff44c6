"""A full disk met by a command or by a daemon's start: one line that names the file and says to free space,
and nothing half-written left behind (CI: `local up` on a full disk said only "No space left on device",
without saying where or what to do; a probe: a metadata server started on a full disk ended in SQLite's
traceback, "database or disk is full")."""

from __future__ import annotations

import errno
import logging
import os
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from chunkfs.cli import local_cluster, nodes
from chunkfs.cli.main import main
from chunkfs.common.durable import is_disk_full, write_file_durably


@pytest.fixture(autouse=True)
def _logging_put_back() -> Iterator[None]:
    """`main` sets the root logger up as a command does (level ERROR): put back, or a later test in the
    same process captures no warning (CI: the secret-files test)."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    root.setLevel(level)
    root.handlers[:] = handlers


def _free_addr() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def test_what_counts_as_a_full_disk() -> None:
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert is_disk_full(sqlite3.OperationalError("database or disk is full"))
    assert not is_disk_full(OSError(errno.EIO, "Input/output error"))
    assert not is_disk_full(sqlite3.OperationalError("database is locked"))
    assert not is_disk_full(ValueError("full"))


def test_a_durable_write_that_finds_the_disk_full_names_its_file_and_leaves_the_old_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "local.json"
    target.write_bytes(b"old")

    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError) as failed:
        write_file_durably(target, b"new")
    monkeypatch.undo()
    assert failed.value.filename == str(target)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["local.json"]  # no temp file left


def test_a_command_that_finds_the_disk_full_says_where_and_what_to_do(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    where = str(tmp_path / "c" / "local.json")

    def full(directory: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", where)

    monkeypatch.setattr(local_cluster.LocalCluster, "load", staticmethod(full))
    assert main(["local", "status", "--dir", str(tmp_path / "c")]) == 1
    err = capsys.readouterr().err
    assert err == (f"chunkfs: error: {where}: No space left on device: the disk is full; free space there and "
                   "run the command again\n"), err


def test_a_metadata_server_whose_store_finds_the_disk_full_says_so_in_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CHUNKFS_CONF_DIR", str(tmp_path / "conf"))
    directory = tmp_path / "mds1"
    nodes.make_mds("full", directory, _free_addr(), 1 << 20, init=True)
    from chunkfs.mds import server

    def full(self: object, *args: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(server.MetadataServer, "__init__", full)
    assert main(["mds", "-r", str(directory)]) == 1
    err = capsys.readouterr().err.splitlines()[-1]
    assert err == (f"chunkfs: error: the disk under {directory} is full (database or disk is full): free space "
                   "there, then start this MDS again"), err
