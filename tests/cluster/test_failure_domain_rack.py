"""Five chunk servers on two racks, `failure-domain=rack`: every chunk has a replica in each rack.

And tiers: files with `tier=1` go to tier-1 servers only.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from chunkfs.common.config import load_node, save_node
from chunkfs.common.errors import NoSpace
from chunkfs.testing.cluster import LocalCluster

from ._healing_helpers import MiB, check_every_replica, chunk_maps
from .conftest import run_cli

SIZE = 8 * MiB


def _make(tmp_path, labels: list[tuple[str, str, int]]) -> LocalCluster:
    cluster = LocalCluster.make(tmp_path / "racks", "racks", n_cs=1, chunk_size=MiB)
    # The first server was made unlabelled: label it as `make-cs --host --location --tier` would.
    first = Path(cluster.find("cs", 1).dir)
    node, secret = load_node(first)
    host, location, tier = labels[0]
    save_node(first, dataclasses.replace(node, host=host, location=location, tier=tier), secret)
    for host, location, tier in labels[1:]:
        cluster.add_cs(host=host, location=location, tier=tier)
    cluster.start_all()
    cluster.wait_ready()
    return cluster


def test_every_chunk_spans_both_racks(tmp_path, conf_dir) -> None:
    # Five servers, each its own host: three in rack A, two in rack B.
    labels = [(f"h{i}", f"dc1.row1.{'A' if i < 3 else 'B'}", 0) for i in range(5)]
    cluster = _make(tmp_path, labels)
    try:
        # By address, as the master lists them: `status()` names only servers registered by then.
        rack_at = {p.addr: labels[p.id - 1][1] for p in cluster.processes if p.role == "cs"}
        assert run_cli("-c", "racks", "mkdir", "/vm").returncode == 0
        result = run_cli("-c", "racks", "set-attr", "/vm", "failure-domain=rack", "replicas=3:2")
        assert result.returncode == 0, result.stderr
        assert "failure-domain=rack" in run_cli("-c", "racks", "get-attr", "/vm").stdout
        data = os.urandom(SIZE)
        with cluster.client() as c:
            f = c.open("/vm/disk.img", create=True)  # inherits failure-domain=rack
            c.run(f.write(0, data))
            c.run(f.fsync())
            maps = chunk_maps(c, f.ino, SIZE)
            for m in maps:
                racks = {rack_at[addr] for _, addr in m["replicas"]}
                assert len(m["replicas"]) == 3 and racks == {"dc1.row1.A", "dc1.row1.B"}, m
            assert c.cluster_stat()["healing"]["domain_shared"] == len(maps)  # 3 replicas, 2 racks: one shares
            check_every_replica(c, f.ino, data)
    finally:
        cluster.stop_all()


def test_tier_keeps_files_on_their_tier(tmp_path, conf_dir) -> None:
    labels = [(f"h{i}", "", 0 if i < 3 else 1) for i in range(5)]
    cluster = _make(tmp_path, labels)
    try:
        # By address, as the master lists them (a server's id is in its node.json only once it registered).
        tier_at = {p.addr: labels[p.id - 1][2] for p in cluster.processes if p.role == "cs"}
        assert run_cli("-c", "racks", "mkdir", "/fast").returncode == 0
        done = run_cli("-c", "racks", "set-attr", "/fast", "tier=1", "replicas=2:1")
        assert done.returncode == 0 and done.stderr == "", done
        # More than the tier has (a probe: said nothing, then writes failed "no space" with the disks empty).
        done = run_cli("-c", "racks", "set-attr", "/fast", "replicas=3:3")
        assert "the cluster has 2 chunk server(s) of tier 1 (of 5): a write that needs a new" in done.stderr, done
        with cluster.client() as c:
            f = c.open("/fast/too-many", create=True)
            with pytest.raises(NoSpace, match="2 chunk server.s. of tier 1 .the file's tier=. online, 3 needed"):
                c.run(f.write(0, b"x"))
        assert run_cli("-c", "racks", "set-attr", "/fast", "replicas=2:1").stderr == ""
        data = os.urandom(4 * MiB)
        with cluster.client() as c:
            fast = c.open("/fast/db", create=True)
            c.run(fast.write(0, data))
            c.run(fast.fsync())
            slow = c.open("/bulk", create=True)
            c.run(slow.write(0, data))
            c.run(slow.fsync())
            tier = {s["id"]: tier_at[s["addr"]] for s in c.cluster_stat()["cs"]}
            assert all(tier[cs] == 1 for m in chunk_maps(c, fast.ino, len(data)) for cs, _ in m["replicas"])
            assert all(tier[cs] == 0 for m in chunk_maps(c, slow.ino, len(data)) for cs, _ in m["replicas"])
    finally:
        cluster.stop_all()
