"""A chunk server whose disk fills up loses its replicas, not the write.

Before, with one chunk server on a full file system, the writer got ENOSPC
although the other replicas (above MIN) were fine and the cluster had space;
nothing was logged and no event was recorded.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

import pytest

from chunkfs.common.errors import NoSpace
from chunkfs.testing.cluster import wait_for

from ._disk_helpers import on_small_disk

MiB = 1 << 20


def test_full_disk_on_one_replica_drops_it_and_the_write_goes_on(make_cluster, tmp_path) -> None:
    cluster = make_cluster(n_cs=3)
    victim = cluster.find("cs", 3)
    with on_small_disk(cluster, "cs", 3, Path(victim.dir) / "data", tmp_path / "saved-data", 5 * MiB):
        cluster.wait_ready()
        with cluster.client() as c:
            cs_id = next(s["id"] for s in c.cluster_stat()["cs"] if s["addr"] == victim.addr)
            blob = os.urandom(16 * MiB)
            f = c.create("/big")
            c.write(f["ino"], 0, blob)  # 16 chunks; CS on 5 MiB fills after a few
            c.fsync(f["ino"])
            assert c.read(f["ino"], 0, len(blob)) == blob
            events = [e["message"] for e in c.events()]
            dropped = [m for m in events if f"CS {cs_id} dropped" in m or f"on CS {cs_id}" in m]
            assert dropped and any("no space" in m.lower() or "no_space" in m for m in dropped), events[-10:]
            # The full server is shown full and takes no new chunks: a second file lands on the other two.
            assert next(s for s in c.cluster_stat()["cs"] if s["id"] == cs_id)["full"]
            g = c.create("/after")
            c.write(g["ino"], 0, os.urandom(3 * MiB))
            maps = [c.run(c.client.io._write_map(g["ino"], i, set())) for i in range(3)]
            assert all(cs_id not in {r[0] for r in m.replicas} for m in maps)
            # Every chunk has its two good replicas (MIN), and the rest is repaired elsewhere when space allows.
            wait_for("every chunk readable", lambda: c.read(f["ino"], 0, len(blob)) == blob, timeout=30)


def test_full_disks_on_every_replica_of_a_chunk_give_enospc_not_a_wait(make_cluster, tmp_path) -> None:
    """Both replicas of a chunk (replicas 2:2, no replica to spare) full: the write fails with ENOSPC after
    its tries, not with EIO after the client's whole wait for a chain the master could not give (a fault
    probe: 4 of 4 writes waited 20 s for EIO)."""
    cluster = make_cluster(n_cs=2)
    with contextlib.ExitStack() as disks:
        for number in (1, 2):
            node = cluster.find("cs", number)
            disks.enter_context(on_small_disk(cluster, "cs", number, Path(node.dir) / "data",
                                              tmp_path / f"saved-{number}", 5 * MiB))
        cluster.wait_ready()
        with cluster.client() as c:
            c.set_replicas("/", 2, 2)
            f = c.create("/big")
            c.client.mds.retry_for = 10.0
            blob = os.urandom(16 * MiB)
            written = 0
            with pytest.raises(NoSpace) as full:
                for offset in range(0, len(blob), MiB // 4):
                    c.write(f["ino"], offset, blob[offset:offset + MiB // 4])
                    written = offset + MiB // 4
            assert full.value.errno == errno.ENOSPC
            assert written > 0
            c.client.mds.retry_for = 30.0
            assert c.read(f["ino"], 0, written) == blob[:written]  # what was written before stays
