"""Snapshots every few dozen changes while followers are frozen, killed and restarted: every MDS ends equal.

A fault probe of the snapshot path: a follower killed in the middle of
receiving an image (it resumes or starts again), one frozen while the master
compacts (it needs a snapshot on waking), one that compacts its own store
while an image from the master arrives.  At the end every metadata server's
store holds exactly the directories whose creation was acknowledged.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import threading
import time
from pathlib import Path

from chunkfs.common.daemon import LOG_FILE
from chunkfs.common.errors import ChunkFSError
from chunkfs.testing.cluster import master_id, wait_for

#: Rounds of faults at least, and at most while no follower has installed a snapshot yet (whether a round
#: sends one to a snapshot depends on when the master compacts: a CI run had none in 6).
ROUNDS, MAX_ROUNDS = 6, 16


def _names(node_dir: Path) -> set[str]:
    """The names in the root directory of one MDS's store (read beside the running daemon, or after it)."""
    db = sqlite3.connect(node_dir / "metadata.sqlite")
    try:
        return {bytes(r[0]).decode() for r in db.execute("SELECT name FROM dentries WHERE parent = 1")}
    finally:
        db.close()


def _logs(cluster) -> str:
    return "".join((Path(cluster.find("mds", n).dir) / LOG_FILE).read_text(errors="replace") for n in (1, 2, 3))


def test_followers_frozen_and_killed_through_snapshots_end_with_the_same_store(make_cluster, monkeypatch) -> None:
    monkeypatch.setenv("CHUNKFS_RAFT_COMPACT_EVERY", "30")
    monkeypatch.setenv("CHUNKFS_RAFT_SNAPSHOT_PIECE", "4096")
    cluster = make_cluster(n_cs=1, n_mds=3)
    rng = random.Random(7)
    acked: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def writer() -> None:
        with cluster.client() as c:
            c.client.mds.retry_for = 30.0
            for i in range(100_000):
                if stop.is_set():
                    return
                try:
                    c.mkdir(f"/d{i}")
                except ChunkFSError as exc:  # noqa: PERF203 - a retry exhausted is a failure of the test
                    errors.append(exc)
                    return
                acked.append(f"d{i}")

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        with cluster.client() as c:
            for done in range(MAX_ROUNDS):
                if done >= ROUNDS and "installed snapshot" in _logs(cluster):
                    break
                master = master_id(c)
                follower = rng.choice([n for n in (1, 2, 3) if n != master])
                before = len(acked)
                if rng.random() < 0.5:
                    cluster.kill("mds", follower, signal.SIGSTOP)
                    wait_for("changes while a follower is frozen", lambda b=before: len(acked) >= b + 80, timeout=60)
                    cluster.kill("mds", follower, signal.SIGCONT)
                else:
                    cluster.kill("mds", follower, signal.SIGKILL)
                    wait_for("changes while a follower is down", lambda b=before: len(acked) >= b + 80, timeout=60)
                    cluster.start("mds", follower)
                    # Killed again soon after it starts: often in the middle of receiving an image.
                    time.sleep(rng.uniform(0.05, 0.4))
                    cluster.kill("mds", follower, signal.SIGKILL)
                    cluster.start("mds", follower)
                assert not errors, errors
            stop.set()
            thread.join(60)
            assert not errors, errors
            c.mkdir("/last")
            acked.append("last")
            wait_for("every MDS to follow again", lambda: sorted(m["role"] for m in c.cluster_stat()["mds"]) ==
                     ["follower", "follower", "master"], timeout=60)
            wait_for("every MDS to apply the last change", lambda: all(
                "last" in _names(Path(cluster.find("mds", n).dir)) for n in (1, 2, 3)), timeout=60)
    finally:
        stop.set()
        thread.join(60)
    cluster.stop_all()
    logs = _logs(cluster)
    assert "installed snapshot" in logs  # the faults did send followers to snapshots
    assert "Traceback" not in logs and "Task was destroyed" not in logs  # also none when they stopped
    stores = [_names(Path(cluster.find("mds", n).dir)) for n in (1, 2, 3)]
    assert set(acked) <= stores[0], sorted(set(acked) - stores[0])[:5]
    assert stores[0] == stores[1] == stores[2]
