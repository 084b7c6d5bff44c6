"""A chunk server frozen with SIGSTOP (its connection stays open) goes inactive, then offline; its
chunks are re-created elsewhere; resumed, it registers again and its now-orphaned replicas are deleted."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from chunkfs.client import chunk_io
from chunkfs.testing.cluster import wait_for

from ._healing_helpers import MiB, check_every_replica, chunk_maps, set_fast_timeouts

SIZE = 4 * MiB


def test_frozen_server_is_replaced_and_cleaned_up_when_resumed(make_cluster) -> None:
    cluster = make_cluster(n_cs=4)
    data = os.urandom(SIZE)
    with cluster.client() as c:
        set_fast_timeouts(c, inactive=1, offline=3)
        f = c.open("/f", create=True)
        c.run(f.write(0, data))
        c.run(f.fsync())
        victim = chunk_maps(c, f.ino, SIZE)[0]["replicas"][0][0]
        number = cluster.cs_number(victim)
        chunks_dir = Path(cluster.find("cs", number).dir) / "data" / "chunks"
        held = {p.name for p in chunks_dir.glob("*/*.chunk")}
        assert held
        cluster.kill("cs", number, signal.SIGSTOP)
        try:
            def status() -> str:
                return {s["id"]: s["status"] for s in c.cluster_stat()["cs"]}[victim]

            wait_for("the frozen server to be inactive", lambda: status() == "inactive", timeout=30)
            wait_for("every chunk re-created without it", lambda: all(
                len(m["replicas"]) == 3 and victim not in [r[0] for r in m["replicas"]]
                for m in chunk_maps(c, f.ino, SIZE)), timeout=90)
        finally:
            cluster.kill("cs", number, signal.SIGCONT)
        wait_for("the resumed server to be active again", lambda: status() == "active", timeout=60)
        # (Rebalancing may then give it fresh replicas, at new versions: other names.)
        wait_for("its orphaned replicas to be deleted",
                 lambda: not held & {p.name for p in chunks_dir.glob("*/*.chunk")}, timeout=60)
        assert c.read(f.ino, 0, SIZE) == data
        check_every_replica(c, f.ino, data)


def test_a_replica_dropped_while_its_server_was_frozen_is_deleted_when_it_resumes(make_cluster, monkeypatch) -> None:
    """Frozen for less than it takes its link to be given up, a chunk server keeps the link and does not
    register again: the replica a writer had dropped stayed on it, at the old version, and was served to
    a reader with an older map, without the writes since (a fault probe: 54-118 blocks of 4 KiB)."""
    monkeypatch.setenv("CHUNKFS_SILENCE_LIMIT", "3")
    monkeypatch.setattr(chunk_io, "SILENCE_LIMIT", 3.0)
    cluster = make_cluster(n_cs=4)
    data = bytearray(os.urandom(MiB))
    with cluster.client() as c:
        f = c.open("/f", create=True)
        c.run(f.write(0, bytes(data)))
        c.run(f.fsync())
        before = chunk_maps(c, f.ino, MiB)[0]
        victim = before["replicas"][0][0]
        number = cluster.cs_number(victim)
        old = Path(cluster.find("cs", number).dir) / "data" / "chunks"
        name = f"{before['chunk_id']:016x}_{before['version']:016x}.chunk"
        assert list(old.glob(f"*/{name}"))
        cluster.kill("cs", number, signal.SIGSTOP)
        try:
            data[4096:8192] = os.urandom(4096)
            c.run(f.write(4096, bytes(data[4096:8192])))  # the frozen replica is dropped
            c.run(f.fsync())
            assert victim not in [r[0] for r in chunk_maps(c, f.ino, MiB)[0]["replicas"]]
        finally:
            cluster.kill("cs", number, signal.SIGCONT)
        wait_for("the dropped replica to be deleted", lambda: not list(old.glob(f"*/{name}")), timeout=30)
        assert c.read(f.ino, 0, MiB) == bytes(data)
