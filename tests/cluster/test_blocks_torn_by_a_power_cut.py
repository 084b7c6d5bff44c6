"""A block a power cut tore on every replica reads as the cut left it, as a local disk's would.

An unsynced write's bytes and its block's checksum reach a replica's disk apart,
or not at all: after a power cut a block may fail its checksum on every replica
of its chunk.  Nothing in it since its last sync was promised, and a local disk
shows what a crash left of such a write; failing it with EIO for good kept
programs that recover from a crash on their own (SQLite's write-ahead log) from
opening their files.  So when every replica's server came back from its machine
going down and named the chunk among those it wrote last, the master takes the
block as it is on one replica (its checksum made anew) and copies it to the
others.  A block bad on every replica without such a cut is corruption, and
stays an error.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from chunkfs.common.config import BLOCK_SIZE
from chunkfs.common.errors import ChecksumMismatch, ChunkFSError
from chunkfs.cs import clean_stop
from chunkfs.cs.chunk_store import ChunkStore
from chunkfs.testing.cluster import wait_for

from ._healing_helpers import MiB, check_every_replica, chunk_maps, replica_files

SIZE = 2 * MiB
#: Where in the file the cut left its torn bytes: inside the second block of the first chunk.
TORN_AT, TORN = BLOCK_SIZE + 4096, b"\xee" * 4096


def _tear(replica: Path) -> None:
    """Bytes of an unsynced write on the disk, the block's checksum not (the data region is the file's last MiB)."""
    with open(replica, "r+b") as fh:
        fh.seek(os.path.getsize(replica) - MiB + TORN_AT)
        fh.write(TORN)


def _events(c) -> str:
    return " | ".join(e["message"] for e in c.events())


def _cut(cluster, replicas: list[Path], boot: str, meanwhile: Callable[[], None] | None = None) -> None:
    """Every chunk server gone at once; `replicas` torn meanwhile (and `meanwhile` done); back on the same boot
    or another one."""
    servers = [p for p in cluster.processes if p.role == "cs"]
    for proc in servers:
        cluster.kill(proc.role, proc.id)
    for replica in replicas:
        _tear(replica)
    if meanwhile is not None:
        meanwhile()
    if boot == "another":
        for mark in Path(cluster.dir).glob(f"cs*/data/{clean_stop.RUNNING_MARK}"):
            mark.write_text("an earlier boot\n")  # as the machines find them when they come back up
    for proc in servers:
        cluster.start(proc.role, proc.id)
    cluster.wait_ready()


def _written(cluster, c, name: str) -> tuple[Any, bytes, dict[str, Any], list[Path]]:
    """A 2 MiB file, fsynced: (the file, its bytes, its first chunk's map, that chunk's replica files in the
    map's order)."""
    data = os.urandom(SIZE)
    f = c.open(name, create=True)
    c.run(f.write(0, data))
    c.run(f.fsync())
    m = chunk_maps(c, f.ino, SIZE)[0]
    by_id = {json.loads((p.parents[3] / "node.json").read_text())["node_id"]: p
             for p in replica_files(cluster, m["chunk_id"], m["version"])}
    assert len(by_id) == 3
    return f, data, m, [by_id[cs] for cs, _ in m["replicas"]]


def _mds_logs(cluster) -> str:
    return "".join(p.read_text(errors="replace") for p in Path(cluster.dir).glob("mds*/daemon.log"))


def _wait_readable(c, f, want: bytes) -> None:
    def readable() -> bool:
        try:
            return c.read(f.ino, 0, SIZE) == want
        except ChunkFSError:
            return False

    wait_for("the torn block to read as the cut left it", readable, timeout=90)
    check_every_replica(c, f.ino, want)


@pytest.mark.parametrize("boot", ["another", "same"])
def test_a_block_torn_on_every_replica_reads_as_the_cut_left_it_only_after_a_power_cut(make_cluster, boot: str) -> None:
    cluster = make_cluster(n_cs=3)
    with cluster.client() as c:
        f, data, _, replicas = _written(cluster, c, "/image")
    _cut(cluster, replicas, boot)
    with cluster.client() as c:
        if boot == "same":
            # Killed on the same boot: the page cache kept what was written, so a bad block is corruption.
            with pytest.raises(ChecksumMismatch):
                c.read(f.ino, BLOCK_SIZE, 10)
            wait_for("an event naming the lost range", lambda: "bad on every replica" in _events(c), timeout=60)
            with pytest.raises(ChecksumMismatch):
                c.read(f.ino, BLOCK_SIZE, 10)
            assert "torn by a power cut" not in _events(c)
            return
        _wait_readable(c, f, data[:TORN_AT] + TORN + data[TORN_AT + len(TORN):])
        events = _events(c)
        assert "torn by a power cut" in events, events
        assert "bad on every replica" not in events, events


def _other_write(replicas: list[Path], m: dict[str, Any]) -> Callable[[], None]:
    def write() -> None:  # the others' bytes and checksums both reached their disks
        for replica in replicas[1:]:
            with ChunkStore(replica.parents[3] / "data", MiB) as store:
                store.write(m["chunk_id"], m["version"], TORN_AT, b"\x11" * len(TORN), sync=True)
    return write


def test_a_block_torn_on_the_first_replica_where_the_others_differ_is_taken_from_it(make_cluster) -> None:
    """The replicas of a chunk written last before the cut are compared and made the first one's: its torn
    block is taken as it is there, and copied over the others' (which hold another unsynced write)."""
    cluster = make_cluster(n_cs=3)
    with cluster.client() as c:
        f, data, m, replicas = _written(cluster, c, "/image")
    _cut(cluster, replicas[:1], "another", _other_write(replicas, m))
    # Not read before the comparison: a read failing on the first replica would have it made again from the
    # others (their bytes are as good: nothing there was promised), and this comparison is what is tested.
    wait_for("the master to take the torn block", lambda: "taken as they are there" in _mds_logs(cluster),
             timeout=90)
    with cluster.client() as c:
        _wait_readable(c, f, data[:TORN_AT] + TORN + data[TORN_AT + len(TORN):])


@pytest.mark.parametrize("reader", ["new", "kept"])
def test_reads_of_replicas_still_to_be_compared_after_a_power_cut_get_the_same_bytes_every_time(
        make_cluster, reader: str) -> None:
    """Read at once after the cut, while the master has yet to compare the chunk's replicas: each read gets
    the bytes the comparison keeps (before, the other replicas' for seconds, then the first one's).  By a
    reader that comes after the cut, and by one that read the file before it (its maps kept)."""
    cluster = make_cluster(n_cs=3)
    with cluster.client() as c:
        f, data, m, replicas = _written(cluster, c, "/image")
    compared = re.compile("written to every replica at once (are the same|had replicas that differed)")
    before = len(compared.findall(_mds_logs(cluster)))
    torn = data[:TORN_AT] + TORN + data[TORN_AT + len(TORN):]
    other = data[:TORN_AT] + b"\x11" * len(TORN) + data[TORN_AT + len(TORN):]
    seen: list[bytes] = []
    with cluster.client() as c:
        if reader == "kept":
            assert c.read(f.ino, 0, SIZE) == data
        _cut(cluster, replicas[:1], "another", _other_write(replicas, m))
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with contextlib.suppress(ChunkFSError):  # (an error is not an answer; both answers are counted)
                seen.append(c.read(f.ino, 0, SIZE))
            time.sleep(0.25)
        wait_for("the replicas to be compared", lambda: len(compared.findall(_mds_logs(cluster))) > before,
                 timeout=90)
        final = c.read(f.ino, 0, SIZE)
        check_every_replica(c, f.ino, final)
    assert final in (torn, other)
    assert seen and all(got == final for got in seen), [
        "torn" if got == torn else "others" if got == other else "neither" for got in seen]
