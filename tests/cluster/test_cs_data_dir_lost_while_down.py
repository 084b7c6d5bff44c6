"""A chunk server's data directory is deleted while it is down; it restarts empty and is healed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from chunkfs.testing.cluster import wait_for

from ._healing_helpers import MiB, check_every_replica, chunk_maps, set_fast_timeouts

SIZE = 6 * MiB + 4321


def test_server_restarted_empty_gets_its_replicas_back(make_cluster) -> None:
    cluster = make_cluster(n_cs=3)
    data = os.urandom(SIZE)
    with cluster.client() as c:
        f = c.open("/disk.img", create=True)
        c.run(f.write(0, data))
        c.run(f.fsync())
        maps = chunk_maps(c, f.ino, SIZE)
        victim = maps[0]["replicas"][0][0]
        number = cluster.cs_number(victim)
        cluster.kill("cs", number)
        data_dir = Path(cluster.find("cs", number).dir) / "data"
        assert any(data_dir.glob("chunks/*/*.chunk"))
        shutil.rmtree(data_dir)
        cluster.start("cs", number)

        def healed() -> bool:
            ms = chunk_maps(c, f.ino, SIZE)
            stat = c.cluster_stat()
            return stat["chunks"]["healthy"] == len(maps) and all(
                victim in [r[0] for r in m["replicas"]] for m in ms)

        wait_for("the emptied server to get a replica of every chunk back", healed, timeout=90)
        assert len(list(data_dir.glob("chunks/*/*.chunk"))) == len(maps)
        assert c.read(f.ino, 0, SIZE) == data
        check_every_replica(c, f.ino, data)  # the emptied server's new replicas too, byte for byte
        wait_for("the healing to be reported finished",
                 lambda: any("replication finished" in e["message"] for e in c.events()), timeout=30)


def test_server_whose_data_directory_is_removed_while_it_runs_stops_and_is_healed(make_cluster) -> None:
    """`rm -rf` of a running server's data directory (found by a fault probe: the server stayed active,
    its chunks counted healthy, and reads of them failed with EIO).  It stops, saying why; the master
    copies its replicas from the others; every byte reads back."""
    cluster = make_cluster(n_cs=4)
    data = os.urandom(SIZE)
    with cluster.client() as c:
        set_fast_timeouts(c, inactive=1, offline=3)
        f = c.open("/disk.img", create=True)
        c.run(f.write(0, data))
        c.run(f.fsync())
        maps = chunk_maps(c, f.ino, SIZE)
        victim = maps[0]["replicas"][0][0]
        proc = cluster.find("cs", cluster.cs_number(victim))
        shutil.rmtree(Path(proc.dir) / "data")
        wait_for("the server to stop by itself", lambda: not cluster.running(proc), timeout=60)
        log = (Path(proc.dir) / "daemon.log").read_text()
        assert "stopping with status 3" in log and "was removed while this server ran" in log, log[-2000:]
        assert c.read(f.ino, 0, SIZE) == data

        def healed() -> bool:
            return c.cluster_stat()["chunks"]["healthy"] == len(maps) and all(
                victim not in [r[0] for r in m["replicas"]] and len(m["replicas"]) == 3
                for m in chunk_maps(c, f.ino, SIZE))

        wait_for("the master to copy the lost replicas to the other servers", healed, timeout=120)
        check_every_replica(c, f.ino, data)
