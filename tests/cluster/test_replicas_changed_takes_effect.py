"""`set-attr replicas=` on a file that has data: extra replicas are trimmed, missing ones created, in the background."""

from __future__ import annotations

import os
from pathlib import Path

from chunkfs.testing.cluster import wait_for

from ._healing_helpers import MiB, check_every_replica, chunk_maps
from .conftest import run_cli

SIZE = 4 * MiB


def test_lowering_and_raising_replicas(make_cluster) -> None:
    cluster = make_cluster(n_cs=4)
    data = os.urandom(SIZE)
    with cluster.client() as c:
        f = c.open("/file", create=True)
        c.run(f.write(0, data))
        c.run(f.fsync())

        def replica_files() -> int:
            return len(list(Path(cluster.dir).glob("cs*/data/chunks/*/*.chunk")))

        def all_at(n: int):
            return lambda: all(len(m["replicas"]) == n for m in chunk_maps(c, f.ino, SIZE)) \
                and replica_files() == n * SIZE // MiB and c.cluster_stat()["chunks"]["healthy"] == SIZE // MiB

        assert all_at(3)()
        assert run_cli("-c", cluster.name, "set-attr", "/file", "replicas=2:1").returncode == 0
        wait_for("every chunk trimmed to 2 replicas", all_at(2), timeout=60)
        check_every_replica(c, f.ino, data)
        assert run_cli("-c", cluster.name, "set-attr", "/file", "replicas=4:2").returncode == 0
        wait_for("every chunk copied to 4 replicas", all_at(4), timeout=60)
        check_every_replica(c, f.ino, data)
        assert c.read(f.ino, 0, SIZE) == data
