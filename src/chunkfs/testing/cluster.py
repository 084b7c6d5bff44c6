"""The local-cluster harness shared by the cluster and mount tests and the benchmarks.

It builds on `chunkfs.cli.local_cluster.LocalCluster`, the launcher behind
`chunkfs local up`, and adds what only tests need: a factory that stops every
process it started, and polling helpers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from chunkfs.cli.local_cluster import LocalCluster, Process
from chunkfs.client.client import SyncClient
from chunkfs.common.errors import Unavailable

__all__ = ["LocalCluster", "Process", "cluster_factory", "master_id", "member_in_step", "wait_for", "wait_for_async",
           "wait_for_new_master", "wait_members_in_step"]


@contextlib.contextmanager
def cluster_factory(base: Path, chunk_size: int) -> Iterator[Callable[..., LocalCluster]]:
    """Make and start local clusters under `base`; every process they started is stopped at the end, by PID.

    The fixture behind the cluster and mount tests.
    """
    made: list[LocalCluster] = []

    def make(n_cs: int = 3, chunk_size: int = chunk_size, name: str = "test", n_mds: int = 1,
             tls: bool = False) -> LocalCluster:
        cluster = LocalCluster.make(base / f"cluster-{name}", name, n_mds=n_mds, n_cs=n_cs, chunk_size=chunk_size,
                                    tls=tls)
        made.append(cluster)
        cluster.start_all()
        cluster.wait_ready()
        return cluster

    try:
        yield make
    finally:
        for cluster in made:
            cluster.stop_all()


def master_id(client: SyncClient) -> int:
    """The id of the one metadata server that is master now (fails if there is not exactly one)."""
    masters = [m["id"] for m in client.cluster_stat()["mds"] if m["role"] == "master"]
    if len(masters) != 1:
        raise Unavailable(f"expected one master, found {masters}")
    return int(masters[0])


def member_in_step(client: SyncClient, node_id: int) -> bool:
    """Whether MDS#`node_id` follows with the highest commit index any member reports (it acknowledged all)."""
    by_id = {m["id"]: m for m in client.cluster_stat()["mds"]}
    top = max(m["commit"] for m in by_id.values())
    return node_id in by_id and by_id[node_id]["role"] == "follower" and by_id[node_id]["commit"] >= top > 0


def wait_members_in_step(client: SyncClient, timeout: float = 30.0) -> None:
    """Until every metadata server has the master's commit index: then each one's log holds what any
    store applied (before stopping a cluster whose store is copied to every member: testing/preload.py)."""

    def in_step() -> bool:
        return len({m["commit"] for m in client.cluster_stat()["mds"]}) == 1

    wait_for("the metadata servers in step", in_step, timeout=timeout)


def wait_for_new_master(client: SyncClient, old: int, timeout: float = 60.0) -> int:
    """The id of the master elected after `old` stopped (fails after `timeout` seconds)."""

    def other() -> int | None:
        try:
            now = master_id(client)
        except Unavailable:
            return None  # none elected yet (or two, for a moment)
        return now if now != old else None

    return int(wait_for(f"a master other than MDS#{old}", other, timeout=timeout))


def wait_for(what: str, check: Callable[[], Any], timeout: float = 90.0, pause: float = 0.25) -> Any:
    """Poll `check` until it returns something true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(pause)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")


async def wait_for_async(what: str, check: Callable[[], Any], timeout: float = 5.0, pause: float = 0.01) -> Any:
    """`wait_for` inside an event loop: the loop turns between checks (for tests of in-process servers)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        await asyncio.sleep(pause)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")
