"""Bytes written and read through the cluster are counted: `stat --json`, each daemon's /metrics, `top --once`."""

from __future__ import annotations

import os
import urllib.request

from ._ops_helpers import scrape, stat, wait_for
from .conftest import run_cli

MiB = 1 << 20


def test_written_and_read_bytes_are_counted(make_cluster, tmp_path) -> None:
    make_cluster(n_cs=2)
    assert run_cli("-c", "test", "set-attr", "-R", "/", "replicas=2:2").returncode == 0
    size = 3 * MiB + 5  # four 1 MiB chunks
    src = tmp_path / "src"
    src.write_bytes(os.urandom(size))
    assert run_cli("-c", "test", "put", str(src), "/f").returncode == 0
    assert run_cli("-c", "test", "get", "/f", str(tmp_path / "back")).returncode == 0

    # Every replica stores every byte once: the two chunk servers' write counters add up to 2 x size.
    def counted():
        s = stat()
        written = sum(c["io"].get("write_bytes", 0) for c in s["cs"])
        read = sum(c["io"].get("read_bytes", 0) for c in s["cs"])
        return s if written == 2 * size and read == size else None

    s = wait_for("heartbeats to carry the I/O counters", counted)
    assert s["status"] == "healthy"
    assert s["chunks"]["healthy"] == 4
    assert not any(n for state, n in s["chunks"].items() if state != "healthy")

    # Each daemon's metrics URL is listed, and serves Prometheus text with the same numbers.
    urls = {(m["role"], m["id"]): m["url"] for m in s["metrics"]}
    assert set(urls) == {("mds", 1), ("cs", 1), ("cs", 2)}
    cs_written = 0
    for c in s["cs"]:
        page = scrape(urls[("cs", c["id"])])
        assert page['chunkfs_cs_io_bytes_total{op="write"}'] == c["io"]["write_bytes"]
        assert page['chunkfs_cs_io_operations_total{op="write"}'] == c["io"]["write_ops"] > 0
        assert page['chunkfs_cs_io_latency_seconds_count{op="write"}'] == c["io"]["write_ops"]
        assert page["chunkfs_cs_replicas"] == 4
        assert page["chunkfs_cs_space_free_bytes"] > 0
        assert page["chunkfs_event_loop_lag_seconds_count"] > 0 and "chunkfs_event_loop_lag_max_seconds" in page
        cs_written += page['chunkfs_cs_io_bytes_total{op="write"}']
    assert cs_written == 2 * size
    mds = scrape(urls[("mds", 1)])
    assert mds["chunkfs_raft_term"] == s["mds"][0]["term"]
    assert mds["chunkfs_raft_is_leader"] == 1
    assert mds['chunkfs_chunks{state="healthy"}'] == 4
    assert mds['chunkfs_chunk_servers{status="active"}'] == 2
    assert mds['chunkfs_mds_requests_total{msg="CHUNK_WRITE"}'] >= 4
    assert "process_resident_memory_bytes" in mds
    assert mds["chunkfs_event_loop_lag_seconds_count"] > 0 and "chunkfs_event_loop_stalls_total" in mds
    assert mds.get("chunkfs_replication_queue", 0) == 0

    # The dashboard is served by the master at the URL `stat` gives.
    assert s["dashboard"] == urls[("mds", 1)].removesuffix("metrics")
    with urllib.request.urlopen(s["dashboard"], timeout=10) as resp:  # noqa: S310 - loopback only
        assert b"ChunkFS dashboard" in resp.read()

    # top --once shows the same cluster in one frame.
    top = run_cli("-c", "test", "top", "--once")
    assert top.returncode == 0, top.stderr
    assert "Cluster test" in top.stdout and "status HEALTHY" in top.stdout
    assert "healthy 4" in top.stdout
    rows = [line.split() for line in top.stdout.splitlines()]
    cs_rows = [r for r in rows if len(r) > 4 and r[1] == "active"]
    assert sorted(r[0] for r in cs_rows) == ["1", "2"]
    assert all(r[4] == "4" for r in cs_rows)  # REPLICAS column
    assert any(r[:2] == ["1", "master"] for r in rows)
