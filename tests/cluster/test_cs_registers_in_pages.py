"""A chunk server holding more replicas than one frame may carry registers in pages, before and after
a chunk-server restart and a master change, and every chunk is healthy again (issue 14).

In production a page is 4,096 replicas and the old single-frame registration broke at about 20,000
(the receive buffer) or 60,000 (the header limit).  Here CHUNKFS_REPLICA_PAGE=32 lowers the most
replicas one frame may carry, for every daemon, so a few hundred chunks make each server's list
span many frames: the old protocol (every replica in one CS_REGISTER) is refused by the master,
and only the paged one gets the servers back.
"""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from chunkfs.common.daemon import LOG_FILE
from chunkfs.testing.cluster import master_id, wait_for

from ._healing_helpers import MiB

PAGE = 32
CHUNKS = 8 * PAGE + 5  # nine pages per server, the last one short
REWRITTEN = 40  # chunks written while one server is down: its replicas of them go stale


def chunk_data(index: int, generation: int) -> bytes:
    return bytes([index % 251, generation]) * 2048


def write_chunks(c, f, indexes: range | list[int], generation: int) -> None:
    async def run() -> None:
        limit = asyncio.Semaphore(16)

        async def one(i: int) -> None:
            async with limit:
                await f.write(i * MiB, chunk_data(i, generation))

        await asyncio.gather(*(one(i) for i in indexes))

    c.run(run())


def all_healthy(c, want_cs: int) -> dict | None:
    stat = c.cluster_stat()
    active = [s for s in stat["cs"] if s["status"] == "active"]
    if stat["chunks"]["healthy"] == CHUNKS and len(active) == want_cs and \
            all(s["replicas"] == CHUNKS for s in active):
        return stat
    return None


def online_events(c, since: int) -> list[str]:
    return [e["message"] for e in c.events(since) if re.search(r"CS#\d+ online", e["message"])]


@pytest.mark.timeout(240)
def test_registration_in_pages_survives_cs_restart_and_master_change(make_cluster, monkeypatch) -> None:
    monkeypatch.setenv("CHUNKFS_REPLICA_PAGE", str(PAGE))
    cluster = make_cluster(n_cs=3, n_mds=3)
    with cluster.client() as c:
        c.client.mds.retry_for = 60.0
        f = c.open("/many-chunks.img", create=True)
        write_chunks(c, f, range(CHUNKS), 1)
        c.run(f.fsync())
        wait_for("every chunk on all three servers", lambda: all_healthy(c, 3), timeout=60)

        # 1. Restart one chunk server after some of its replicas went stale.
        victim = cluster.cs_number(1)
        cluster.kill("cs", victim)
        seq = max((e["seq"] for e in c.events()), default=0)
        write_chunks(c, f, range(REWRITTEN), 2)  # the two survivors move to a new version
        c.run(f.fsync())
        cluster.start("cs", victim)
        wait_for("the restarted server back and every chunk healthy", lambda: all_healthy(c, 3), timeout=90)
        events = wait_for("its registration event", lambda: online_events(c, seq), timeout=30)
        assert any("CS#1 online" in e and f"{CHUNKS - REWRITTEN} replica(s) current" in e
                   and f"{REWRITTEN} stale or orphaned to delete in 9 pages" in e for e in events), events

        # 2. Kill the master: a new one knows no chunk server until each has reported every page.
        old = master_id(c)
        seq = max(e["seq"] for e in c.events())
        cluster.kill("mds", old)
        started = time.monotonic()
        wait_for("a new master with every chunk healthy", lambda: all_healthy(c, 3), timeout=90)
        print(f"new master: every chunk healthy {time.monotonic() - started:.1f}s after kill -9 of MDS#{old}")
        assert master_id(c) != old
        events = wait_for("three registrations with the new master", lambda: (
            ev if len(ev := online_events(c, seq)) >= 3 else None), timeout=30)
        assert sum(f"{CHUNKS} replica(s) current, 0 stale or orphaned to delete in 9 pages" in e
                   for e in events) >= 3, events

        # 3. And a chunk server restart under the new master.
        cluster.kill("cs", cluster.cs_number(2))
        cluster.start("cs", cluster.cs_number(2))
        wait_for("every chunk healthy after a restart under the new master", lambda: all_healthy(c, 3),
                 timeout=90)
        cluster.start("mds", old)

        for i in range(CHUNKS):
            want = chunk_data(i, 2 if i < REWRITTEN else 1)
            assert c.read(f.ino, i * MiB, len(want)) == want, f"chunk {i}"
    for n in (1, 2, 3):
        log = (cluster.dir / f"cs{n}" / LOG_FILE).read_text()
        assert "replicas reported in 9 page(s)" in log, f"cs{n} did not register in pages"
