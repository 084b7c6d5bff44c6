"""Files removed: every replica of their chunks leaves every chunk server's disk, the others stay.

The master deletes removed chunks' replicas in batches (mds/deletions.py); a server that was
down meanwhile hears nothing and deletes them when it registers again.
"""

from __future__ import annotations

import os
from pathlib import Path

from chunkfs.testing.cluster import wait_for

from ._healing_helpers import chunk_maps

FILES = 40
SIZE = 4096


def _replica_files(cluster, number: int) -> set[str]:
    return {p.name for p in (Path(cluster.find("cs", number).dir) / "data" / "chunks").glob("*/*.chunk")}


def test_removed_files_leave_every_server_and_a_server_down_meanwhile_cleans_up_on_return(make_cluster) -> None:
    cluster = make_cluster(n_cs=3)
    with cluster.client() as c:
        names: dict[str, str] = {}
        data = os.urandom(SIZE)
        for n in range(FILES + 1):
            f = c.open(f"/f{n}", create=True)
            c.run(f.write(0, data))
            c.run(f.fsync())
            m = chunk_maps(c, f.ino, SIZE)[0]
            names[f"/f{n}"] = f"{m['chunk_id']:016x}_{m['version']:016x}.chunk"
            c.run(f.close())
        kept = names.pop(f"/f{FILES}")
        assert all(set(names.values()) | {kept} <= _replica_files(cluster, cs) for cs in (1, 2, 3))
        cluster.kill("cs", 3)
        for path in names:
            c.unlink(path)
        removed = set(names.values())
        for cs in (1, 2):
            wait_for(f"CS {cs} to delete the removed files' replicas",
                     lambda cs=cs: not removed & _replica_files(cluster, cs), timeout=30)
        assert removed <= _replica_files(cluster, 3)  # down: it heard nothing
        cluster.start("cs", 3)
        wait_for("the returning server to delete them", lambda: not removed & _replica_files(cluster, 3), timeout=60)
        assert all(kept in _replica_files(cluster, cs) for cs in (1, 2, 3))
        assert c.read(c.stat(f"/f{FILES}")["ino"], 0, SIZE) == data
