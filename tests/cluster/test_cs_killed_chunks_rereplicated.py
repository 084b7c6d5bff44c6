"""`kill -9` of one of 4 chunk servers: once it is offline, every chunk is copied back to 3 replicas."""

from __future__ import annotations

import importlib.util
import os
import platform
import re
import time
from pathlib import Path

from chunkfs.testing.cluster import wait_for

from ._healing_helpers import MiB, chunk_maps
from .conftest import run_cli

ROOT = Path(__file__).resolve().parents[2]
SIZE = 12 * MiB


def _record(rate_mib_s: float, copied: int, seconds: float, wall: float) -> None:
    """Write the figures to BENCHMARKS.md when asked (CHUNKFS_RECORD=1), so plain test runs leave the tree alone."""
    print(f"re-replication: {copied} replicas in {seconds:.2f}s ({rate_mib_s:.1f} MiB/s), kill to healthy {wall:.1f}s")
    if os.environ.get("CHUNKFS_RECORD") != "1":
        return
    spec = importlib.util.spec_from_file_location("bench_client", ROOT / "bench" / "bench_client.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.update_benchmarks("healing", "\n".join([
        "## Re-replication after `kill -9` of a chunk server",
        "",
        "`tests/cluster/test_cs_killed_chunks_rereplicated.py`: 4 chunk servers on one machine "
        f"({platform.machine()}, {os.cpu_count()} CPUs), 1 MiB chunks, a {SIZE // MiB} MiB file at replicas=3, "
        "`replication-rate` 64 MiB/s per server, `cs-offline-timeout` 3 s.",
        "",
        "| replicas copied | MiB copied | copy time (s) | recovery rate (MiB/s) | kill to healthy (s) |",
        "| ---: | ---: | ---: | ---: | ---: |",
        f"| {copied} | {copied:.0f} | {seconds:.2f} | {rate_mib_s:.1f} | {wall:.1f} |",
        "",
        "Kill to healthy includes the offline timeout (3 s here, 300 s by default).",
    ]))


def test_killed_cs_chunks_back_to_three_replicas(make_cluster) -> None:
    cluster = make_cluster(n_cs=4)
    # Settings through the real command, read back the same way.
    # (No rebalancing in this test: band 100 %.)
    result = run_cli("-c", cluster.name, "set-config", "cs-inactive-timeout=1", "cs-offline-timeout=3",
                     "rebalance-band=100")
    assert result.returncode == 0, result.stderr
    result = run_cli("-c", cluster.name, "get-config")
    assert "cs-offline-timeout=3" in result.stdout and "cs-inactive-timeout=1" in result.stdout
    bad = run_cli("-c", cluster.name, "set-config", "cs-offline-timeout=0.5")
    assert bad.returncode != 0 and "cs-offline-timeout" in bad.stderr

    data = os.urandom(SIZE)
    with cluster.client() as c:
        f = c.open("/vm.img", create=True)
        c.run(f.write(0, data))
        c.run(f.fsync())
        maps = chunk_maps(c, f.ino, SIZE)
        assert all(len(m["replicas"]) == 3 for m in maps)
        counts: dict[int, int] = {}
        for m in maps:
            for cs, _ in m["replicas"]:
                counts[cs] = counts.get(cs, 0) + 1
        victim = max(counts, key=lambda cs: counts[cs])
        killed_at = time.monotonic()
        cluster.kill("cs", cluster.cs_number(victim))

        def healed() -> bool:
            stat = c.cluster_stat()
            ms = chunk_maps(c, f.ino, SIZE)
            return (stat["chunks"]["healthy"] == len(maps)
                    and all(len(m["replicas"]) == 3 and victim not in [r[0] for r in m["replicas"]] for m in ms))

        # While inactive (before the offline timeout) nothing is copied; then everything is.
        wait_for("CS to be offline and every chunk back to 3 replicas", healed, timeout=120)
        wall = time.monotonic() - killed_at
        stat = c.cluster_stat()
        assert {s["id"]: s["status"] for s in stat["cs"]}[victim] == "offline"
        healing = wait_for("the healing episode to close", lambda: (
            h if not (h := c.cluster_stat()["healing"])["active"] else None), timeout=30)
        events = " | ".join(e["message"] for e in c.events())
        # Exactly the victim's replicas are copied, unless another server fell silent past the
        # inactive timeout (1 s here) and did not answer the copy's version move: its replica is
        # left at the old version and copied again.  (A server merely late with its heartbeat, 1 s
        # apart, is asked too: before, it was left behind, and CI once saw 11 copies for 10
        # replicas, a later run 12 for 11; replication.py `_copy_frozen`.)
        others_silent = re.findall(rf"CS#(?!{victim}\b)\d+ inactive", events)
        if others_silent:
            assert counts[victim] <= healing["copied"] <= counts[victim] + len(maps), events
        else:
            assert healing["copied"] == counts[victim], events
        assert healing["bytes"] == healing["copied"] * MiB
        assert c.read(f.ino, 0, SIZE) == data
        assert f"CS#{victim} offline" in events
        assert "replication started" in events and "replication finished" in events
    _record(healing["rate_mib_s"], healing["copied"], healing["seconds"], wall)
