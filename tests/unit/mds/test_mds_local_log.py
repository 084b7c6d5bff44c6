"""The one-member log: ordering, results, replay, torn tails, terms."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from chunkfs.common.errors import Exists, NotFound
from chunkfs.mds import local_log
from chunkfs.mds.local_log import LocalLog, _read_journal
from chunkfs.mds.store import ROOT_INO, MetadataStore, encode_command

pytestmark = pytest.mark.timeout(30)


class Recorder:
    """An apply function that remembers what it saw and keeps an applied index."""

    def __init__(self, applied: int = 0, fail_on: bytes | None = None) -> None:
        self.seen: list[tuple[int, int, bytes]] = []
        self.applied = applied
        self.fail_on = fail_on

    def __call__(self, index: int, term: int, data: bytes) -> Any:
        assert index == self.applied + 1, f"applied {index} after {self.applied}"
        self.seen.append((index, term, data))
        self.applied = index
        if data == self.fail_on:
            raise NotFound(f"failing on purpose at {index}")
        return ("ok", index, data)


@pytest.fixture
async def logs(tmp_path: Path) -> AsyncIterator[list[LocalLog]]:
    """Every log made in a test is stopped at the end."""
    made: list[LocalLog] = []
    yield made
    for log in made:
        await log.stop()


async def started(logs: list[LocalLog], directory: Path, apply: Any, applied: int = 0) -> LocalLog:
    log = LocalLog(directory, "127.0.0.1:1", 1)
    logs.append(log)
    await asyncio.wait_for(log.start(apply, applied), 10)
    return log


async def test_proposals_applied_in_order_with_results(tmp_path: Path, logs: list[LocalLog]) -> None:
    rec = Recorder()
    log = await started(logs, tmp_path, rec)
    assert log.term == 1 and log.is_leader() and log.leader_hint() == "127.0.0.1:1"
    first = await asyncio.wait_for(log.propose(b"one"), 5)
    assert first == ("ok", 1, b"one")
    # Many at once: batched, but each gets its own result, in order.
    cmds = [f"c{i}".encode() for i in range(300)]
    results = await asyncio.wait_for(asyncio.gather(*(log.propose(c) for c in cmds)), 10)
    assert [r[2] for r in results] == cmds
    assert [r[1] for r in results] == list(range(2, 302))
    assert [s[2] for s in rec.seen] == [b"one", *cmds]
    assert all(s[1] == 1 for s in rec.seen)
    assert log.commit_index == 301
    assert log.members()[0]["commit"] == 301


async def test_apply_exception_reaches_proposer_and_log_goes_on(tmp_path: Path, logs: list[LocalLog]) -> None:
    rec = Recorder(fail_on=b"bad")
    log = await started(logs, tmp_path, rec)
    a, b, c = await asyncio.wait_for(
        asyncio.gather(log.propose(b"a"), log.propose(b"bad"), log.propose(b"c"), return_exceptions=True), 5
    )
    assert a == ("ok", 1, b"a")
    assert isinstance(b, NotFound) and "at 2" in str(b)
    assert c == ("ok", 3, b"c")
    assert await asyncio.wait_for(log.propose(b"d"), 5) == ("ok", 4, b"d")


async def test_restart_reapplies_only_past_applied_index(tmp_path: Path, logs: list[LocalLog]) -> None:
    rec = Recorder()
    log = await started(logs, tmp_path, rec)
    for i in range(10):
        await asyncio.wait_for(log.propose(f"e{i}".encode()), 5)
    await log.stop()

    # The state machine had applied up to 6: entries 7..10 are applied again, once, with their old term.
    rec2 = Recorder(applied=6)
    log2 = await started(logs, tmp_path, rec2, applied=6)
    assert [s[0] for s in rec2.seen] == [7, 8, 9, 10]
    assert [s[2] for s in rec2.seen] == [b"e6", b"e7", b"e8", b"e9"]
    assert all(s[1] == 1 for s in rec2.seen)
    assert log2.term == 2
    assert log2.commit_index == 10
    # New entries continue the index and carry the new term.
    assert await asyncio.wait_for(log2.propose(b"new"), 5) == ("ok", 11, b"new")
    assert rec2.seen[-1] == (11, 2, b"new")
    await log2.stop()

    # Fully applied: nothing is re-applied.
    rec3 = Recorder(applied=11)
    log3 = await started(logs, tmp_path, rec3, applied=11)
    assert rec3.seen == []
    assert log3.term == 3 and log3.commit_index == 11


async def test_each_start_bumps_term(tmp_path: Path, logs: list[LocalLog]) -> None:
    terms = []
    for _ in range(4):
        log = await started(logs, tmp_path, Recorder())
        terms.append(log.term)
        await log.stop()
    assert terms == [1, 2, 3, 4]
    assert (tmp_path / "term").read_text().strip() == "4"


async def fill(tmp_path: Path, logs: list[LocalLog], n: int) -> int:
    log = await started(logs, tmp_path, Recorder())
    for i in range(n):
        await asyncio.wait_for(log.propose(f"entry-{i}".encode()), 5)
    await log.stop()
    return (tmp_path / "journal").stat().st_size


@pytest.mark.parametrize(
    "garbage",
    [b"\x00", b"\xff" * 7, b"\x00\x00\x00\x10" + b"\x00" * 4 + b"short", b"\xff\xff\xff\xff" * 3, os.urandom(100)],
    ids=["1byte", "7bytes", "shortbody", "hugelen", "random"],
)
async def test_torn_tail_garbage_is_cut(tmp_path: Path, logs: list[LocalLog], garbage: bytes) -> None:
    size = await fill(tmp_path, logs, 5)
    with open(tmp_path / "journal", "ab") as fh:
        fh.write(garbage)
    rec = Recorder()
    log = await started(logs, tmp_path, rec)
    assert [s[2] for s in rec.seen] == [f"entry-{i}".encode() for i in range(5)]
    assert (tmp_path / "journal").stat().st_size == size
    assert await asyncio.wait_for(log.propose(b"after"), 5) == ("ok", 6, b"after")
    await log.stop()
    entries, end = _read_journal(tmp_path / "journal")
    assert [e[0] for e in entries] == [1, 2, 3, 4, 5, 6]
    assert end == (tmp_path / "journal").stat().st_size


async def test_truncated_mid_record_is_cut(tmp_path: Path, logs: list[LocalLog]) -> None:
    size = await fill(tmp_path, logs, 5)
    entries, _ = _read_journal(tmp_path / "journal")
    assert len(entries) == 5
    os.truncate(tmp_path / "journal", size - 3)
    rec = Recorder()
    log = await started(logs, tmp_path, rec)
    assert [s[0] for s in rec.seen] == [1, 2, 3, 4]
    assert log.commit_index == 4
    assert await asyncio.wait_for(log.propose(b"x"), 5) == ("ok", 5, b"x")
    await log.stop()
    assert [e[2] for e in _read_journal(tmp_path / "journal")[0]] == [*(f"entry-{i}".encode() for i in range(4)), b"x"]


async def test_corrupted_last_record_is_cut(tmp_path: Path, logs: list[LocalLog]) -> None:
    size = await fill(tmp_path, logs, 3)
    with open(tmp_path / "journal", "r+b") as fh:
        fh.seek(size - 1)
        last = fh.read(1)
        fh.seek(size - 1)
        fh.write(bytes([last[0] ^ 0xFF]))
    rec = Recorder()
    await started(logs, tmp_path, rec)
    assert [s[0] for s in rec.seen] == [1, 2]


async def test_record_format(tmp_path: Path, logs: list[LocalLog]) -> None:
    await fill(tmp_path, logs, 2)
    data = (tmp_path / "journal").read_bytes()
    length = int.from_bytes(data[:4], "big")
    body = data[8 : 8 + length]
    assert msgpack.unpackb(body, raw=False) == [1, 1, b"entry-0"]


async def test_with_metadata_store(tmp_path: Path, logs: list[LocalLog]) -> None:
    store = MetadataStore(tmp_path / "meta.db", 1 << 20)
    try:
        log = await started(logs, tmp_path / "log", store.apply, store.applied_index)
        cmd = encode_command("mkdir", parent=ROOT_INO, name="a", mode=0o755, time=1.0)
        attr = await asyncio.wait_for(log.propose(cmd), 5)
        assert attr["type"] == "d"
        with pytest.raises(Exists):
            await asyncio.wait_for(log.propose(cmd), 5)
        f = await asyncio.wait_for(
            log.propose(encode_command("create", parent=ROOT_INO, name="f", mode=0o644, time=2.0, exclusive=True)), 5
        )
        alloc = encode_command("alloc_chunk", ino=f["ino"], index=0, replicas=[1])
        chunk = await asyncio.wait_for(log.propose(alloc), 5)
        assert chunk.version >> 32 == log.term == 1
        assert store.applied_index == 4
    finally:
        store.close()


async def test_replay_survives_entries_that_failed_the_first_time(tmp_path: Path, logs: list[LocalLog]) -> None:
    store = MetadataStore(tmp_path / "meta.db", 1 << 20)
    try:
        log = await started(logs, tmp_path / "log", store.apply, store.applied_index)
        mk = encode_command("mkdir", parent=ROOT_INO, name="a", mode=0o755, time=1.0)
        await asyncio.wait_for(log.propose(mk), 5)
        with pytest.raises(Exists):
            await asyncio.wait_for(log.propose(mk), 5)
        await asyncio.wait_for(log.propose(encode_command("mkdir", parent=ROOT_INO, name="b", mode=0o755, time=2.0)), 5)
        await log.stop()
    finally:
        store.close()
    # The store lost its state (synchronous=NORMAL after a power cut, or a rebuilt store):
    # the journal is the durable record and must bring it back.
    os.remove(tmp_path / "meta.db")
    store = MetadataStore(tmp_path / "meta.db", 1 << 20)
    try:
        await started(logs, tmp_path / "log", store.apply, store.applied_index)
        assert store.lookup(ROOT_INO, "b")["type"] == "d"
        assert store.applied_index == 3
    finally:
        store.close()


async def test_failed_append_does_not_lose_later_acknowledged_entries(
    tmp_path: Path, logs: list[LocalLog], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_append = local_log._append
    failures = [True]

    def flaky_append(fd: int, data: bytes) -> None:
        if failures:
            failures.pop()
            os.write(fd, data[: len(data) // 2])  # a short write, then the disk says no
            raise OSError(5, "Input/output error")
        real_append(fd, data)

    monkeypatch.setattr(local_log, "_append", flaky_append)
    rec = Recorder()
    log = await started(logs, tmp_path, rec)
    with pytest.raises(OSError):
        await asyncio.wait_for(log.propose(b"refused"), 5)
    assert await asyncio.wait_for(log.propose(b"acknowledged"), 5) == ("ok", 1, b"acknowledged")
    await log.stop()

    rec2 = Recorder()
    await started(logs, tmp_path, rec2)
    assert [s[2] for s in rec2.seen] == [b"acknowledged"]
