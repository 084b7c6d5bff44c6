"""Replicas a power cut left different are made the same again (cs/clean_stop.py, mds/fanned_mender.py).

Bytes written and not synced reach each replica's disk, or not, apart: after a
power cut a chunk's replicas may each hold a different part of them, every one
with good checksums, and two readers would read different bytes for good.  A
chunk server that did not stop cleanly names the chunks it wrote last, and the
master compares their replicas and makes them the same.  A chunk server killed on the same boot
finds its page cache as it left it: nothing is compared then.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from chunkfs.cs import clean_stop
from chunkfs.cs.chunk_store import ChunkStore
from chunkfs.testing.cluster import wait_for

from ._healing_helpers import MiB, chunk_maps, read_replica, replica_files

SIZE = 2 * MiB


def _replicas_of(c, ino: int, index: int) -> list[bytes]:
    m = chunk_maps(c, ino, SIZE)[index]
    return [read_replica(c, addr, m["chunk_id"], m["version"], 0, MiB) for _, addr in m["replicas"]]


def _written(cluster) -> tuple[int, bytes, dict]:
    """A file of two chunks written and synced: (its inode, its bytes, its second chunk's map)."""
    data = os.urandom(SIZE)
    with cluster.client() as c:
        f = c.open("/image", create=True)
        c.run(f.write(0, data))
        c.run(f.fsync())
        return f.ino, data, chunk_maps(c, f.ino, SIZE)[1]


def _made_the_same(c, ino: int) -> bytes:
    """Wait until the three replicas of the file's second chunk hold the same bytes; those bytes."""
    def same() -> bool:
        try:
            copies = _replicas_of(c, ino, 1)
        except Exception:  # noqa: BLE001 - a replica moving to its new version meanwhile
            return False
        return len(copies) == 3 and copies.count(copies[0]) == 3

    wait_for("the replicas of the chunk made the same", same, timeout=90)
    (kept,) = set(_replicas_of(c, ino, 1))
    return kept


@pytest.mark.parametrize("master", ["restarted", "alive"])
def test_replicas_a_power_cut_left_different_are_made_the_same(make_cluster, master: str) -> None:
    cluster = make_cluster(n_cs=3)
    ino, data, m = _written(cluster)
    replicas = replica_files(cluster, m["chunk_id"], m["version"])
    assert len(replicas) == 3
    # The cut: every chunk server gone at once (and the master too, or not); one replica kept an
    # unsynced write the others lost, its checksums with it.
    victims = [p for p in cluster.processes if p.role == "cs" or master == "restarted"]
    for proc in victims:
        cluster.kill(proc.role, proc.id)
    odd = replicas[0]
    with ChunkStore(odd.parents[3] / "data", MiB) as store:
        store.write(m["chunk_id"], m["version"], 4096, b"\xee" * 8192, sync=True)
    for mark in Path(cluster.dir).glob(f"cs*/data/{clean_stop.RUNNING_MARK}"):
        mark.write_text("an earlier boot\n")  # as the machines find them when they come back up
    for proc in victims:
        cluster.start(proc.role, proc.id)
    cluster.wait_ready()
    with cluster.client() as c:
        kept = _made_the_same(c, ino)
        assert kept in (data[MiB:], data[MiB:MiB + 4096] + b"\xee" * 8192 + data[MiB + 12288:])
        assert c.read(ino, MiB, MiB) == kept
        assert c.read(ino, 0, MiB) == data[:MiB]


def test_a_power_cut_of_one_server_does_not_undo_the_writes_the_others_hold(make_cluster) -> None:
    """Only one server's machine went down: its replica lost unsynced writes the others still hold, and
    their program, whose mount lived on, was told they were done.  The comparison copies from a replica
    whose machine stayed up; it copied from the first of the chunk's map, here the one that went down."""
    cluster = make_cluster(n_cs=3)
    ino, data, m = _written(cluster)
    first = m["replicas"][0][0]
    cluster.kill("cs", first)
    (odd,) = [p for p in replica_files(cluster, m["chunk_id"], m["version"]) if p.parents[3].name == f"cs{first}"]
    with ChunkStore(odd.parents[3] / "data", MiB) as store:  # what it held before the writes it lost
        store.write(m["chunk_id"], m["version"], 4096, bytes(8192), sync=True)
    (odd.parents[3] / "data" / clean_stop.RUNNING_MARK).write_text("an earlier boot\n")
    cluster.start("cs", first)
    cluster.wait_ready()
    with cluster.client() as c:
        assert _made_the_same(c, ino) == data[MiB:]
        assert c.read(ino, 0, SIZE) == data
