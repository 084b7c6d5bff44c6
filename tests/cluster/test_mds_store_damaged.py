"""A metadata server whose store (SQLite) was damaged on disk rebuilds it from its snapshot and log when it
starts, instead of joining with it and, once master, answering "database disk image is malformed" (a probe)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from chunkfs.mds.store import MetadataStore
from chunkfs.testing.cluster import master_id, wait_for

DIRS = 300


def _damage(path: Path) -> None:
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        for offset in range(3 * 1024, size - 1024, 3 * 1024):
            f.seek(offset)
            f.write(os.urandom(1024))


def test_a_member_with_a_damaged_store_rebuilds_it_and_holds_everything(make_cluster) -> None:
    cluster = make_cluster(n_cs=1, n_mds=3)
    with cluster.client() as c:
        c.client.mds.retry_for = 30.0
        for i in range(DIRS):
            c.mkdir(f"/d{i:04d}")
        follower = next(i for i in (1, 2, 3) if i != master_id(c))
        cluster.kill("mds", follower, signal.SIGTERM)
        node_dir = Path(cluster.find("mds", follower).dir)
        _damage(node_dir / "metadata.sqlite")
        c.mkdir("/while-it-was-down")
        cluster.start("mds", follower)

        def in_step() -> bool:
            by_id = {m["id"]: m for m in c.cluster_stat()["mds"]}
            top = max(m["commit"] for m in by_id.values())
            return by_id[follower]["role"] == "follower" and by_id[follower]["commit"] >= top > 0
        wait_for(f"MDS#{follower} back in step", in_step, timeout=60)
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
