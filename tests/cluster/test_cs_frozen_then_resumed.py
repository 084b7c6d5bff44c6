"""A chunk server frozen with SIGSTOP (its connection stays open) goes inactive, then offline; its
chunks are re-created elsewhere; resumed, it registers again and its now-orphaned replicas are deleted."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from chunkfs.testing.cluster import wait_for

from ._healing_helpers import MiB, check_every_replica, chunk_maps, set_fast_timeouts

SIZE = 4 * MiB


def test_frozen_server_is_replaced_and_cleaned_up_when_resumed(make_cluster) -> None:
    cluster = make_cluster(n_cs=4)
    data = os.urandom(SIZE)
    with cluster.client() as c:
        set_fast_timeouts(c, inactive=1, offline=3)
        f = c.open("/f", create=True)
        c.run(f.write(0, data))
        c.run(f.fsync())
        victim = chunk_maps(c, f.ino, SIZE)[0]["replicas"][0][0]
        number = cluster.cs_number(victim)
        chunks_dir = Path(cluster.find("cs", number).dir) / "data" / "chunks"
        held = {p.name for p in chunks_dir.glob("*/*.chunk")}
        assert held
        cluster.kill("cs", number, signal.SIGSTOP)
        try:
            def status() -> str:
                return {s["id"]: s["status"] for s in c.cluster_stat()["cs"]}[victim]

            wait_for("the frozen server to be inactive", lambda: status() == "inactive", timeout=30)
            wait_for("every chunk re-created without it", lambda: all(
                len(m["replicas"]) == 3 and victim not in [r[0] for r in m["replicas"]]
                for m in chunk_maps(c, f.ino, SIZE)), timeout=90)
        finally:
            cluster.kill("cs", number, signal.SIGCONT)
        wait_for("the resumed server to be active again", lambda: status() == "active", timeout=60)
        # (Rebalancing may then give it fresh replicas, at new versions: other names.)
        wait_for("its orphaned replicas to be deleted",
                 lambda: not held & {p.name for p in chunks_dir.glob("*/*.chunk")}, timeout=60)
        assert c.read(f.ino, 0, SIZE) == data
        check_every_replica(c, f.ino, data)
