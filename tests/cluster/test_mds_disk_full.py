"""A metadata server whose disk fills up stops, and catches up once started again with room.

Before, the Raft loop of a server whose log or store could not be written died silently: the
process went on answering connections but never voted, appended or applied again, even after
space was freed (with all three on one full disk: no master, for good).  Now it exits with a
status its service manager restarts on, the others go on, and started again it catches up.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from chunkfs.testing.cluster import master_id, wait_for

from ._disk_helpers import on_small_disk
from .conftest import run_cli

MiB = 1 << 20
ROOM = 1 * MiB  # what is left on the small file system once it is filled
MAX_FILES = 5000
MAX_SECONDS = 180.0


def commits(c) -> dict[int, int]:
    return {m["id"]: m["commit"] for m in c.cluster_stat()["mds"] if m["role"] != "offline"}


def test_a_follower_whose_disk_fills_stops_the_others_go_on_and_it_catches_up(make_cluster, tmp_path) -> None:
    cluster = make_cluster(n_mds=3, n_cs=3)
    with cluster.client() as c:
        victim = next(n for n in (1, 2, 3) if n != master_id(c))
    proc = cluster.find("mds", victim)
    home = Path(proc.dir)
    with on_small_disk(cluster, "mds", victim, home, tmp_path / "saved", 24 * MiB):
        filler = home / "filler"
        with cluster.client() as c:
            wait_for("the follower to catch up", lambda: len(set(commits(c).values())) == 1 and len(commits(c)) == 3)
            free = os.statvfs(home).f_bavail * os.statvfs(home).f_frsize
            with open(filler, "wb") as f:
                f.truncate(0)
                f.write(bytes(max(0, free - ROOM)))
            made: list[str] = []
            started = time.monotonic()
            while cluster.running(proc) and len(made) < MAX_FILES and time.monotonic() - started < MAX_SECONDS:
                name = f"/file-{len(made):05d}-" + "n" * 150
                c.create(name)  # the other two commit it: never an error
                made.append(name)
            assert not cluster.running(proc), f"the follower lingered after {len(made)} creates"
            # Started again while still full, it stops with status 3 (restarted by the units), saying
            # what to do: it said "status 1: No space left on device" (a fault probe).
            result = run_cli("mds", "-r", str(home), "--background")
            assert result.returncode != 0 and "status 3" in result.stderr and "free space" in result.stderr, result
            assert result.stderr.count("\n") == 1, result.stderr
            filler.unlink()
            cluster.start("mds", victim)
            wait_for("the follower to be back and caught up",
                     lambda: len(commits(c)) == 3 and len(set(commits(c).values())) == 1, timeout=60)
            names = {name for name, _ino, _kind in c.listdir("/")}
            assert {n.lstrip("/") for n in made} <= names
