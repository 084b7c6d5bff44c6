"""A chunk server holding many replicas registers, and registers again with a new master (issue 13).

Far past the old cliffs (20,000 replicas broke the receive buffer, 60,000 the header limit) in the
normal suite; 10^6 in the slow soak (CHUNKFS_SLOW=1; `bench/bench_register.py` times it).  The
chunks are put in place without writing them (chunkfs.testing.preload: the store loaded through
its own apply path, one empty file per replica), with 3 MDS and one chunk server holding them all.
Every replica must be known — the server active, every chunk healthy, its online event counting
them all current — first, and again after `kill -9` of the master.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest

from chunkfs.testing.cluster import master_id, wait_for, wait_members_in_step
from chunkfs.testing.preload import preload

CHUNK = 1 << 20


def known(c, n: int) -> bool:
    stat = c.cluster_stat()
    servers = stat["cs"]
    return len(servers) == 1 and servers[0]["status"] == "active" and stat["chunks"]["healthy"] == n


def online(c, since: int) -> list[str]:
    return [e["message"] for e in c.events(since) if re.search(r"CS#\d+ online", e["message"])]


def registers_before_and_after_a_master_change(make_cluster, n: int, timeout: float) -> None:
    cluster = make_cluster(n_cs=1, n_mds=3)
    cs_ids = [r["id"] for r in cluster.status() if r["role"] == "cs"]
    mds = [p for p in cluster.processes if p.role == "mds"]
    (cs,) = [p for p in cluster.processes if p.role == "cs"]
    with cluster.client() as c:
        c.set_config({"scrub-rate": "0.01"})  # the preloaded replicas are empty files: never read them
        # The chunk server first, and the event its departure commits on every member: stopped together,
        # that commit reached some members' logs and not others (CI), and the newest store, copied to
        # every member, was ahead of a log.
        seq = max((e["seq"] for e in c.events()), default=0)
        cluster.kill("cs", cs.id, signal.SIGTERM)
        wait_for("the chunk server's departure",
                 lambda: [e for e in c.events(seq) if f"CS#{cs_ids[0]} connection from" in e["message"]])
        wait_members_in_step(c)  # the newest store is copied to every member
    cluster.stop_all()
    preload([Path(p.dir) for p in mds], [Path(cs.dir) / "data"], CHUNK, n, cs_ids)
    for p in mds:
        cluster.start("mds", p.id)
    pages = -(-n // 4096)
    with cluster.client() as c:
        c.client.mds.retry_for = 60.0
        wait_for("a master", lambda: master_id(c), timeout=60)
        seq = max((e["seq"] for e in c.events()), default=0)
        cluster.start("cs", cs.id)
        wait_for(f"{n} replicas known", lambda: known(c, n), timeout=timeout, pause=1.0)
        events = wait_for("its online event", lambda: online(c, seq), timeout=30)
        assert any(f"{n} replica(s) current, 0 stale or orphaned to delete in {pages} pages" in e
                   for e in events), events

        old = master_id(c)
        seq = max(e["seq"] for e in c.events())
        cluster.kill("mds", old)
        wait_for(f"{n} replicas known to a new master", lambda: master_id(c) != old and known(c, n),
                 timeout=timeout, pause=1.0)
        events = wait_for("its online event with the new master", lambda: online(c, seq), timeout=30)
        assert any(f"{n} replica(s) current, 0 stale or orphaned to delete in {pages} pages" in e
                   for e in events), events


@pytest.mark.timeout(300)
def test_cs_with_20000_replicas_registers_before_and_after_a_master_change(make_cluster) -> None:
    registers_before_and_after_a_master_change(make_cluster, 20_000, timeout=90)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_cs_with_a_million_replicas_registers_before_and_after_a_master_change(make_cluster) -> None:
    registers_before_and_after_a_master_change(make_cluster, 1_000_000, timeout=300)
