"""A metadata server that missed a compacted log catches up from an image streamed in pieces."""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path

from chunkfs.client.client import ping_node
from chunkfs.common.daemon import LOG_FILE
from chunkfs.testing.cluster import master_id, wait_for


def _log(cluster, number: int) -> str:
    path = Path(cluster.find("mds", number).dir) / LOG_FILE
    return path.read_text(errors="replace") if path.exists() else ""


def test_a_lagging_mds_installs_a_streamed_snapshot_and_holds_everything(make_cluster, monkeypatch) -> None:
    # Compact every 40 entries, and send images 8 KiB at a time: the store's image takes many pieces.
    monkeypatch.setenv("CHUNKFS_RAFT_COMPACT_EVERY", "40")
    monkeypatch.setenv("CHUNKFS_RAFT_SNAPSHOT_PIECE", "8192")
    cluster = make_cluster(n_cs=1, n_mds=3)
    with cluster.client() as c:
        master = master_id(c)
        lagging = next(n for n in (1, 2, 3) if n != master)
        cluster.kill("mds", lagging, signal.SIGTERM)
        for i in range(400):
            c.mkdir(f"/d{i:03}")
        wait_for("the master to compact its log", lambda: "log compacted" in _log(cluster, master), timeout=60)

        cluster.start("mds", lagging)
        wait_for("the lagging MDS to install a snapshot", lambda: "installed snapshot" in _log(cluster, lagging),
                 timeout=60)
        c.mkdir("/after")  # committed with it a member again
        # Everything the master had committed by then, applied to the lagging member's own store (its
        # role says "follower" as soon as it is connected, caught up or not).
        committed = next(m["commit"] for m in c.cluster_stat()["mds"] if m["role"] == "master")
        addr = cluster.find("mds", lagging).addr
        wait_for("the lagging MDS to apply what came after",
                 lambda: c.run(ping_node(addr, c.client.creds, 5.0))["applied"] >= committed, timeout=30)

    master_log = _log(cluster, master)
    assert "sent to MDS#" in master_log
    assert master_log.count("needs snapshot") == master_log.count("sent to MDS#")  # no transfer left half done
    cluster.kill("mds", lagging, signal.SIGTERM)
    node_dir = Path(cluster.find("mds", lagging).dir)
    db = sqlite3.connect(f"file:{node_dir / 'metadata.sqlite'}?mode=ro", uri=True)
    try:
        names = {bytes(r[0]).decode() for r in db.execute("SELECT name FROM dentries WHERE parent = 1")}
    finally:
        db.close()
    assert {f"d{i:03}" for i in range(400)} <= names
    images = sorted(p.name for p in (node_dir / "raft").glob("*.db*"))
    assert len(images) == 1 and images[0].startswith("snapshot-"), images  # nothing half received left behind
    # It starts again from its own snapshot and log.
    cluster.start("mds", lagging)
    with cluster.client() as c:
        wait_for("the restarted MDS to be a follower again", lambda: any(
            m["id"] == lagging and m["role"] == "follower" for m in c.cluster_stat()["mds"]), timeout=30)
        assert "after" in [name for name, _ino, _type in c.listdir("/")]


def test_members_that_keep_up_get_no_snapshot_when_the_master_compacts(make_cluster, monkeypatch) -> None:
    """A soak: 6 of the master's 12 compactions sent its whole image to a follower that was up and only a few
    entries behind (the lazy one gets new entries 32 at a time): a transfer that grows with the store, for
    nothing.  The master now waits (bounded) for the members that answer to hold the image's index first."""
    monkeypatch.setenv("CHUNKFS_RAFT_COMPACT_EVERY", "40")
    cluster = make_cluster(n_cs=1, n_mds=3)
    with cluster.client() as c:
        master = master_id(c)
        for i in range(400):
            c.mkdir(f"/d{i:03}")
        wait_for("the master to compact its log", lambda: _log(cluster, master).count("log compacted") >= 3,
                 timeout=60)
    for number in (1, 2, 3):
        assert "installed snapshot" not in _log(cluster, number), number
    assert "needs snapshot" not in _log(cluster, master)
