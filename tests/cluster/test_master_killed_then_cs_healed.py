"""The master MDS and a chunk server are killed together: the new master's replication monitor heals,
with the settings the old master stored (they are replicated metadata)."""

from __future__ import annotations

import os

from chunkfs.testing.cluster import wait_for

from ._healing_helpers import MiB, check_every_replica, chunk_maps, set_fast_timeouts

SIZE = 6 * MiB


def test_new_master_heals_with_replicated_settings(make_cluster) -> None:
    cluster = make_cluster(n_cs=4, n_mds=3)
    data = os.urandom(SIZE)
    with cluster.client() as c:
        set_fast_timeouts(c, inactive=1, offline=3)
        f = c.open("/img", create=True)
        c.run(f.write(0, data))
        c.run(f.fsync())
        victim = chunk_maps(c, f.ino, SIZE)[0]["replicas"][0][0]
        master = next(m["id"] for m in c.cluster_stat()["mds"] if m["role"] == "master")
        cluster.kill("mds", master)
        cluster.kill("cs", cluster.cs_number(victim))

        def healed() -> bool:
            stat = c.cluster_stat()
            return stat["chunks"]["healthy"] == SIZE // MiB and all(
                len(m["replicas"]) == 3 and victim not in [r[0] for r in m["replicas"]]
                for m in chunk_maps(c, f.ino, SIZE))

        wait_for("the new master to re-create the lost replicas", healed, timeout=120)
        stat = c.cluster_stat()
        assert next(m["id"] for m in stat["mds"] if m["role"] == "master") != master
        assert {s["id"]: s["status"] for s in stat["cs"]}[victim] == "offline"
        assert c.read(f.ino, 0, SIZE) == data
        check_every_replica(c, f.ino, data)
