"""Small reads of replicas kept by a chunk server on the mount's own machine come from their files
(client/local_reads.py), and never from a server that died or froze: real processes, real files."""

from __future__ import annotations

import os
import random
import signal
import time

import pytest

from chunkfs.client import local_reads
from chunkfs.client.chunk_io import ChunkMap
from chunkfs.protocol.messages import Msg

from ._ops_helpers import scrape, stat

KiB = 1 << 10
MiB = 1 << 20


def _reads_served() -> float:
    """Read requests served by every chunk server (their /metrics)."""
    return sum(scrape(m["url"])['chunkfs_cs_io_latency_seconds_count{op="read"}']
               for m in stat()["metrics"] if m["role"] == "cs")


def _small_reads(c, ino: int, data: bytes, n: int, seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(n):
        offset, length = rng.randrange(len(data) - 64 * KiB), rng.choice((512, 4 * KiB, 64 * KiB))
        assert c.read(ino, offset, length) == data[offset:offset + length]


def _file(c, data: bytes) -> tuple[int, dict]:
    f = c.open("/image", create=True)
    c.run(f.write(0, data))
    c.run(f.fsync())
    return f.ino, c.run(c.client.mds.call(Msg.CHUNK_READ, {"ino": f.ino, "index": 0}))


def test_small_reads_come_from_the_replica_files_and_large_ones_from_the_server(make_cluster) -> None:
    cluster = make_cluster(n_cs=3)
    data = os.urandom(4 * MiB)
    with cluster.client() as c:
        ino, _ = _file(c, data)
        c.client.io.forget(ino)
        before = _reads_served()
        _small_reads(c, ino, data, 60, seed=1)
        # A request now and then renews the lease on the server's life (at most one per LEASE).
        assert _reads_served() - before <= 10
        before = _reads_served()
        assert c.read(ino, 0, 4 * MiB) == data  # above LOCAL_READ_MAX: asked of a server
        assert _reads_served() - before >= 1
    with cluster.client() as c:  # the same with local reads off: every read asks a server
        c.client.io.local.enabled = False
        before = _reads_served()
        _small_reads(c, ino, data, 20, seed=2)
        assert _reads_served() - before >= 20


def test_a_killed_servers_files_are_not_read_once_a_write_moved_past_it(
    make_cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`kill -9` of the server a mount reads a chunk from, then another client's write, which drops
    that replica (a new version on the others): the mount's next read, with its map of the old
    version, must not come from the dead server's file.  The lease alone would allow it here (made
    long for this test): the connection's hang-up, seen by the kernel before the mount's event loop
    ran again, is what forbids it."""
    monkeypatch.setattr(local_reads, "LEASE", 60.0)
    cluster = make_cluster(n_cs=4)
    old = os.urandom(MiB)
    new = os.urandom(MiB)
    with cluster.client() as reader, cluster.client() as writer:
        ino, m = _file(writer, old)
        assert reader.read(ino, 0, 4 * KiB) == old[:4 * KiB]
        (first, addr), *_ = reader.client.io.read_order(ChunkMap.from_reply(m))  # the one it reads first
        assert reader.client.io.local.is_local(addr)
        cluster.kill("cs", cluster.cs_number(first))
        f = writer.open("/image")
        writer.run(f.write(0, new))  # fails on the dead server, goes again on a new chain
        writer.run(f.fsync())
        moved = writer.run(writer.client.mds.call(Msg.CHUNK_READ, {"ino": ino, "index": 0}))
        assert moved["version"] != m["version"] and first not in [r[0] for r in moved["replicas"]]
        assert reader.read(ino, 0, 4 * KiB) == new[:4 * KiB]
        assert reader.read(ino, 0, MiB) == new


def test_a_frozen_servers_files_are_not_read_once_its_lease_ran_out(make_cluster) -> None:
    """SIGSTOP keeps a server's connections open: its files are read only within LEASE of a request
    it answered, shorter than any timeout after which its replicas could be dropped."""
    cluster = make_cluster(n_cs=3)
    data = os.urandom(MiB)
    with cluster.client() as c:
        ino, m = _file(c, data)
        assert c.read(ino, 0, 4 * KiB) == data[:4 * KiB]
        local = c.client.io.local
        for cs_id, addr in m["replicas"]:
            c.run(c.client.io.server(addr))
            assert local.is_local(addr)
            number = cluster.cs_number(cs_id)
            local.heard(addr, local.now())
            assert local.read(addr, m["chunk_id"], m["version"], 8 * KiB, 4 * KiB) == data[8 * KiB:12 * KiB]
            cluster.kill("cs", number, signal.SIGSTOP)
            try:
                time.sleep(local_reads.LEASE + 0.05)
                assert local.read(addr, m["chunk_id"], m["version"], 8 * KiB, 4 * KiB) is None
            finally:
                cluster.kill("cs", number, signal.SIGCONT)
            local.heard(addr, local.now())
            assert local.read(addr, m["chunk_id"], m["version"], 8 * KiB, 4 * KiB) == data[8 * KiB:12 * KiB]
