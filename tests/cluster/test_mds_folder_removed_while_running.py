"""A metadata server whose folder is removed while it runs stops (common/folder_watch.py), and the others go on.

Left running, it went on voting and acknowledging changes with a Raft log and
a store that no start of it could find again (a probe's `rm -rf` of a running
cluster's folder left the metadata servers running for minutes, where the
chunk servers had stopped).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from chunkfs.common import daemon
from chunkfs.testing.cluster import master_id


def test_a_follower_whose_folder_is_removed_stops_and_the_group_goes_on(make_cluster) -> None:
    cluster = make_cluster(n_cs=1, n_mds=3)
    with cluster.client() as c:
        c.client.mds.retry_for = 30.0
        c.mkdir("/before")
        victim = next(n for n in (1, 2, 3) if n != master_id(c))
        proc = cluster.find("mds", victim)
        pid = cluster.live_pid(proc)
        assert pid is not None
        child = daemon._children.get(pid)  # started by this test's cluster: its exit status can be read
        shutil.rmtree(Path(proc.dir))
        assert daemon.wait_exit(pid, 30.0), f"MDS#{victim} still runs 30 s after its folder was removed"
        if child is not None:
            assert child.returncode == 3, f"MDS#{victim} exited with status {child.returncode}, not 3 (it must stop)"
        c.mkdir("/after")  # a majority is left
        assert {"before", "after"} <= {name for name, _ino, _type in c.listdir("/")}
