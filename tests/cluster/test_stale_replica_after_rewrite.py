"""A chunk server misses a rewrite while it is down: back again, its stale replica is never served and is removed.

And its counterpart: a server that was down only briefly, while nothing changed, keeps its
replicas — they count again and nothing is copied.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from chunkfs.common.errors import NotFound, StaleVersion
from chunkfs.testing.cluster import wait_for

from ._healing_helpers import (
    MiB,
    check_every_replica,
    chunk_maps,
    read_replica,
    set_fast_timeouts,
)

SIZE = 3 * MiB


def test_stale_replica_after_rewrite_is_removed(make_cluster) -> None:
    cluster = make_cluster(n_cs=3)
    old, new = os.urandom(SIZE), os.urandom(SIZE)
    with cluster.client() as c:
        f = c.open("/db", create=True)
        c.run(f.write(0, old))
        c.run(f.fsync())
        before = chunk_maps(c, f.ino, SIZE)
        victim, victim_addr = before[0]["replicas"][-1]
        number = cluster.cs_number(victim)
        cluster.kill("cs", number)
        # Rewritten while it is down (the default offline timeout is minutes: nothing is re-created meanwhile).
        c.run(f.write(0, new))
        c.run(f.fsync())
        after = chunk_maps(c, f.ino, SIZE)
        assert all(victim not in [r[0] for r in m["replicas"]] for m in after)
        assert all(a["version"] > b["version"] for a, b in zip(after, before, strict=True))
        cluster.start("cs", number)
        chunks_dir = Path(cluster.find("cs", number).dir) / "data" / "chunks"

        def stale_gone() -> bool:
            names = {p.name for p in chunks_dir.glob("*/*.chunk")}
            return not any(f"{m['chunk_id']:016x}_{m['version']:016x}.chunk" in names for m in before)

        wait_for("the stale replicas to be deleted", stale_gone, timeout=60)
        # Never served: the old version is refused, whoever asks.
        with pytest.raises((StaleVersion, NotFound)):
            read_replica(c, victim_addr, before[0]["chunk_id"], before[0]["version"], 0, 4096)
        # The chunks are short of one replica: the returning server gets fresh copies.
        wait_for("every chunk back on 3 servers", lambda: c.cluster_stat()["chunks"]["healthy"] == len(before),
                 timeout=90)
        assert c.read(f.ino, 0, SIZE) == new
        check_every_replica(c, f.ino, new)
        events = " | ".join(e["message"] for e in c.events())
        assert f"CS#{victim} online" in events and "stale or orphaned" in events


def test_briefly_down_server_keeps_its_replicas(make_cluster) -> None:
    cluster = make_cluster(n_cs=4)
    data = os.urandom(SIZE)
    with cluster.client() as c:
        set_fast_timeouts(c, inactive=1, offline=600)
        f = c.open("/img", create=True)
        c.run(f.write(0, data))
        c.run(f.fsync())
        before = chunk_maps(c, f.ino, SIZE)
        victim = before[0]["replicas"][0][0]
        number = cluster.cs_number(victim)
        cluster.kill("cs", number)
        wait_for("the server to be inactive", lambda: {s["id"]: s["status"] for s in c.cluster_stat()["cs"]}[victim]
                 == "inactive", timeout=30)
        # The health counts follow the server's state at the replication monitor's next pass.
        wait_for("its chunks counted degraded", lambda: c.cluster_stat()["chunks"]["degraded"] > 0, timeout=30)
        cluster.start("cs", number)
        wait_for("the server to be active again", lambda: {s["id"]: s["status"] for s in c.cluster_stat()["cs"]}
                 [victim] == "active", timeout=30)
        wait_for("every chunk healthy", lambda: c.cluster_stat()["chunks"]["healthy"] == len(before), timeout=30)
        # Same replicas, same versions: nothing was copied, nothing dropped.
        assert chunk_maps(c, f.ino, SIZE) == before
        assert c.cluster_stat()["healing"].get("copied", 0) == 0
        check_every_replica(c, f.ino, data)
