"""A master killed between committing a chunk's new version and moving its replicas there loses nothing.

`set_replicas` commits the version first and tells the servers after.  Killed in between
(a fault probe: 4 of 13 master kills during drains and replica changes), the master left
every replica one version behind the store, and the next master had each one deleted as
stale when its server registered: every copy of fsynced data.  Replicas behind are now
kept while no server holds the chunk at its version, and once every listed server is
registered they are moved to a new version and serve again (behind_replicas.py).

The state the kill leaves is made here by hand, every replica file renamed one version
back while its server is stopped: the same reports reach the master, every time.
"""

from __future__ import annotations

import os

from chunkfs.protocol.messages import Msg
from chunkfs.testing.cluster import wait_for

from ._healing_helpers import check_every_replica, replica_files
from .conftest import run_cli

MiB = 1 << 20


def _written(c, path: str, data: bytes) -> tuple[int, int, int]:
    """A file of one chunk written and synced: (its inode, the chunk's id, its version)."""
    f = c.open(path, create=True)
    c.run(f.write(0, data))
    c.run(f.fsync())
    c.run(f.close())
    m = c.run(c.client.mds.call(Msg.CHUNK_READ, {"ino": f.ino, "index": 0}))
    return f.ino, m["chunk_id"], m["version"]


def _all_behind(cluster, c, data: bytes, restarted: tuple[int, ...]) -> tuple[int, int, int]:
    """A one-chunk file whose every replica is one version behind the store, as a master killed between
    the two steps leaves it; the chunk servers `restarted` are started again.  (inode, chunk id, version)"""
    ino, chunk_id, version = _written(c, "/precious", data)
    files = replica_files(cluster, chunk_id, version)
    assert len(files) == 3
    for number in (1, 2, 3):
        cluster.kill("cs", number)
    for path in files:
        path.rename(path.with_name(f"{chunk_id:016x}_{version - 1:016x}.chunk"))
    for number in restarted:
        cluster.start("cs", number)
    return ino, chunk_id, version


def test_replicas_all_behind_the_stored_version_are_kept_and_moved_on(make_cluster) -> None:
    cluster = make_cluster(n_cs=3)
    data = os.urandom(MiB)
    with cluster.client() as c:
        ino, chunk_id, version = _all_behind(cluster, c, data, (1, 2, 3))

        def moved_on() -> dict | None:
            now = c.run(c.client.mds.call(Msg.CHUNK_READ, {"ino": ino, "index": 0}))
            return now if now["version"] > version and len(now["replicas"]) == 3 else None

        now = wait_for("the replicas behind to be moved to a new version", moved_on, timeout=60)
        assert len(replica_files(cluster, chunk_id, now["version"])) == 3
        c.client.io.forget(ino)
        assert c.read(ino, 0, MiB) == data
        check_every_replica(c, ino, data)
        events = " | ".join(e["message"] for e in c.events())
        assert "no server held its version" in events, events


def test_replicas_behind_are_moved_on_without_a_listed_server_that_stays_away(make_cluster) -> None:
    """A listed server that never comes back is waited for only until it is offline (it may have held
    the chunk at its version); then the replicas behind on the others serve again."""
    cluster = make_cluster(n_cs=3)
    data = os.urandom(MiB)
    assert run_cli("-c", "test", "set-config", "cs-inactive-timeout=1", "cs-offline-timeout=3").returncode == 0
    with cluster.client() as c:
        ino, _, version = _all_behind(cluster, c, data, (1, 2))  # CS#3 stays away

        def moved_on() -> dict | None:
            now = c.run(c.client.mds.call(Msg.CHUNK_READ, {"ino": ino, "index": 0}))
            return now if now["version"] > version and now["replicas"] else None

        now = wait_for("the replicas behind to be moved to a new version", moved_on, timeout=60)
        assert sorted(cs for cs, _ in now["replicas"]) == [1, 2]
        c.client.io.forget(ino)
        assert c.read(ino, 0, MiB) == data


def test_a_replica_behind_is_deleted_once_a_current_one_is_known(make_cluster) -> None:
    """The ordinary stale replica (its server was away while the chunk was written) still goes."""
    cluster = make_cluster(n_cs=3)
    data = os.urandom(MiB)
    with cluster.client() as c:
        ino, chunk_id, version = _written(c, "/f", data)
        cluster.kill("cs", 1)
        old = replica_files(cluster, chunk_id, version)
        stale = [p for p in old if "/cs1/" in str(p)]
        assert len(stale) == 1
        stale[0].rename(stale[0].with_name(f"{chunk_id:016x}_{version - 1:016x}.chunk"))
        cluster.start("cs", 1)
        wait_for("the replica behind to be deleted", lambda: not list(
            (cluster.dir / "cs1").glob(f"data/chunks/*/{chunk_id:016x}_{version - 1:016x}.chunk")), timeout=60)
        c.client.io.forget(ino)
        assert c.read(ino, 0, MiB) == data
