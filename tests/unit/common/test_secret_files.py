"""The secret files of a node: staging, promoting, and a running node following them (common/secret_files.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from chunkfs.common import secret_files
from chunkfs.common.config import SECRET_FILE, ConfigError, read_secret, write_secret
from chunkfs.common.secret_files import NEXT_SECRET_FILE, RELOAD_INTERVAL, SecretFiles, fingerprint

OLD, NEW = b"\x01" * 32, b"\x02" * 32


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def node(tmp_path: Path) -> Path:
    write_secret(tmp_path / SECRET_FILE, OLD)
    return tmp_path


def test_stage_promote_and_a_running_node_follows(node: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    clock = Clock()
    files = SecretFiles(node, OLD, clock=clock)
    assert files.get() == (OLD, None)
    secret_files.stage(node, NEW)
    assert (node / NEXT_SECRET_FILE).stat().st_mode & 0o077 == 0, "a secret must not be readable by others"
    # Within the interval the node has not looked yet; after it, it holds both.
    assert files.get() == (OLD, None)
    clock.now += RELOAD_INTERVAL
    assert files.get() == (OLD, NEW)
    assert fingerprint(NEW) in caplog.text and NEW.hex() not in caplog.text
    secret_files.promote(node)
    assert not (node / NEXT_SECRET_FILE).exists() and read_secret(node / SECRET_FILE) == NEW
    clock.now += RELOAD_INTERVAL
    assert files.get() == (NEW, None)


def test_unstage_drops_the_next_secret(node: Path) -> None:
    clock = Clock()
    files = SecretFiles(node, OLD, clock=clock)
    secret_files.stage(node, NEW)
    secret_files.unstage(node)
    clock.now += RELOAD_INTERVAL
    assert files.get() == (OLD, None)
    secret_files.unstage(node)  # nothing staged: nothing to do


def test_a_damaged_next_secret_keeps_the_secrets_the_node_has(node: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    files = SecretFiles(node, OLD, clock=clock)
    (node / NEXT_SECRET_FILE).write_text("not hex, half copied")
    clock.now += RELOAD_INTERVAL
    assert files.get() == (OLD, None)
    assert NEXT_SECRET_FILE in caplog.text
    # Promoting it is refused with one line naming the file, and the current secret stays.
    with pytest.raises(ConfigError, match=NEXT_SECRET_FILE):
        secret_files.promote(node)
    assert read_secret(node / SECRET_FILE) == OLD
    # Once the file is whole, the node picks it up.
    secret_files.stage(node, NEW)
    clock.now += RELOAD_INTERVAL
    assert files.get() == (OLD, NEW)


def test_the_files_are_looked_at_once_an_interval(node: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    files = SecretFiles(node, OLD, clock=clock)
    files.get()
    stats = []
    real = secret_files._stamp
    monkeypatch.setattr(secret_files, "_stamp", lambda path: stats.append(path) or real(path))
    for _ in range(100):
        files.get()
    assert stats == []
    clock.now += RELOAD_INTERVAL
    files.get()
    assert len(stats) == 2


def test_the_configured_secret_holds_until_the_files_change(node: Path) -> None:
    """A node given another secret than its file (a test's bad client) keeps it: only a change on disk counts."""
    clock = Clock()
    secret_files.stage(node, NEW)
    files = SecretFiles(node, b"\x09" * 32, clock=clock)
    clock.now += RELOAD_INTERVAL
    assert files.get() == (b"\x09" * 32, NEW)  # a rotation already staged is seen at start
    secret_files.promote(node)
    clock.now += RELOAD_INTERVAL
    assert files.get() == (NEW, None)
