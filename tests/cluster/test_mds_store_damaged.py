"""A metadata server whose store (SQLite) was damaged on disk rebuilds it from its snapshot and log when it
starts, instead of joining with it and, once master, answering "database disk image is malformed" (a probe)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

from chunkfs.client.client import SyncClient
from chunkfs.mds.server import CHECKPOINT_INTERVAL
from chunkfs.mds.store import MetadataStore
from chunkfs.testing.cluster import LocalCluster, master_id, member_in_step, wait_for, wait_for_new_master

DIRS = 300


def _damage(path: Path) -> None:
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        for offset in range(3 * 1024, size - 1024, 3 * 1024):
            f.seek(offset)
            f.write(os.urandom(1024))


@contextlib.contextmanager
def _three_with_dirs(make_cluster) -> Iterator[tuple[LocalCluster, SyncClient, int]]:
    """Three metadata servers holding DIRS directories: (the cluster, a client, a follower's id)."""
    cluster = make_cluster(n_cs=1, n_mds=3)
    with cluster.client() as c:
        c.client.mds.retry_for = 30.0
        for i in range(DIRS):
            c.mkdir(f"/d{i:04d}")
        yield cluster, c, next(i for i in (1, 2, 3) if i != master_id(c))


def test_a_member_with_a_damaged_store_rebuilds_it_and_holds_everything(make_cluster) -> None:
    with _three_with_dirs(make_cluster) as (cluster, c, follower):
        cluster.kill("mds", follower, signal.SIGTERM)
        node_dir = Path(cluster.find("mds", follower).dir)
        _damage(node_dir / "metadata.sqlite")
        c.mkdir("/while-it-was-down")
        cluster.start("mds", follower)
        wait_for(f"MDS#{follower} back in step", lambda: member_in_step(c, follower), timeout=60)
        cluster.kill("mds", follower, signal.SIGTERM)
    log = (node_dir / "daemon.log").read_text()
    assert "is damaged" in log and "rebuilding it" in log, log[-3000:]
    assert list(node_dir.glob("metadata.sqlite.damaged-*")), "the damaged store was not kept aside"
    store = MetadataStore(node_dir / "metadata.sqlite", 1 << 20)
    try:
        names, after = [], ""
        while True:
            entries, more = store.readdir(1, after, 1000)
            names += [e[0].decode() for e in entries]
            if not more:
                break
            after = entries[-1][0]
    finally:
        store.close()
    # Its store holds what it held before, and what it caught up on (entries it had not applied yet when
    # stopped stay in its log, applied when it starts).
    assert {f"d{i:04d}" for i in range(DIRS)} | {"while-it-was-down"} <= set(names)



def test_a_member_whose_store_was_damaged_while_it_ran_stops_and_rebuilds(make_cluster) -> None:
    """Found by a probe: the damage showed only as WARNINGs of failed checkpoints, for minutes, until the member
    became master and acted on what the damage made of its store (replicas of files it no longer found were
    deleted).  Now damage a checkpoint meets stops the member, and so does damage a new master finds when it
    checks its store first thing; either way another member serves, and this one rebuilds when started again."""
    with _three_with_dirs(make_cluster) as (cluster, c, damaged):
        proc = cluster.find("mds", damaged)
        node_dir = Path(proc.dir)
        time.sleep(3 * CHECKPOINT_INTERVAL)  # the changes checkpointed into the file: its pages are read from it
        _damage(node_dir / "metadata.sqlite")
        for i in range(12):  # changes to checkpoint; and masters changed, to elect it (each time 1 in 2)
            c.mkdir(f"/later{i}")
            time.sleep(2 * CHECKPOINT_INTERVAL)
            if cluster.live_pid(proc) is None:
                break
            old = master_id(c)
            if old != damaged:
                cluster.kill("mds", old, signal.SIGKILL)
                wait_for_new_master(c, old)
                cluster.start("mds", old)
        wait_for(f"MDS#{damaged}, whose store is damaged, to stop", lambda: cluster.live_pid(proc) is None,
                 timeout=60)
        log = (node_dir / "daemon.log").read_text()
        assert "is damaged" in log and "stopping with status 3" in log, log[-3000:]
        c.mkdir("/after")  # the others serve
        cluster.start("mds", damaged)
        wait_for(f"MDS#{damaged} back", lambda: damaged in {m["id"] for m in c.cluster_stat()["mds"]
                                                           if m["role"] == "follower"}, timeout=60)
        assert {f"d{i:04d}" for i in range(DIRS)} | {"after"} <= {name for name, _ino, _type in c.listdir("/")}
    assert "moved aside" in (node_dir / "daemon.log").read_text()
