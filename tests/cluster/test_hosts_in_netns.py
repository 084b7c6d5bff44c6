"""Hosts, not ports: three hosts in network namespaces, each with an MDS and a chunk server; one is unplugged.

A partition here is a link going down while every process runs on, which is
what a switch port or a cable does to a real cluster: the other two hosts
elect a master if the unplugged one was it, writes go on with the replicas
that remain, nothing acknowledged is lost, and once the link is back the
host rejoins and the cluster is whole again.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chunkfs.testing import netns
from chunkfs.testing.netns import NetHosts

WHY_NOT = netns.available()
pytestmark = pytest.mark.skipif(bool(WHY_NOT), reason=f"network namespaces: {WHY_NOT}")

MiB = 1 << 20


@pytest.fixture
def net(tmp_path: Path) -> Iterator[NetHosts]:
    hosts = NetHosts(tmp_path, "hosts")
    try:
        yield hosts
    finally:
        hosts.close()


def _stat(net: NetHosts) -> dict[str, Any]:
    return json.loads(net.chunkfs("-c", "hosts", "stat", "--json").stdout)


def _until(what: str, check: Callable[[], Any], timeout: float = 90.0) -> Any:
    """Poll (bounded) until `check` is true; a command failing meanwhile (no master yet) is a no."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except RuntimeError as exc:
            last = str(exc)
        if last and not isinstance(last, str):
            return last
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")


def _whole(net: NetHosts, stat: dict[str, Any]) -> bool:
    members = {m["addr"] for m in stat["mds"] if m["role"] in ("master", "follower")}
    active = {s["addr"] for s in stat["cs"] if s["status"] == "active"}
    return len(members) == 3 and len(active) == 3


def test_a_host_unplugged_and_plugged_back(net: NetHosts, tmp_path: Path) -> None:
    hosts = [net.add_host(f"h{i}") for i in (1, 2, 3)]
    first = net.make_mds(hosts[0], init=True)
    net.start(hosts[0], first)
    for host in hosts[1:]:
        net.start(host, net.make_mds(host))
    for host in hosts:
        net.start(host, net.make_cs(host))
    _until("3 MDS members and 3 active chunk servers", lambda: _whole(net, _stat(net)))
    net.chunkfs("-c", "hosts", "set-config", "cs-inactive-timeout=2", "cs-offline-timeout=600")

    before = os.urandom(3 * MiB)
    (tmp_path / "before").write_bytes(before)
    net.chunkfs("-c", "hosts", "put", str(tmp_path / "before"), "/before")
    stat = _stat(net)
    # Three hosts, three replicas: one on each (failure domain "host").
    assert {s["host"] for s in stat["cs"]} == {"h1", "h2", "h3"}

    # Unplug the master's host: its MDS and chunk server run on, cut off.
    master_addr = next(m["addr"] for m in stat["mds"] if m["role"] == "master")
    victim = next(h for h in hosts if master_addr.startswith(h.ip + ":"))
    net.cut(victim)
    _until("a master on the other side",
           lambda: (s := _stat(net)) and any(m["role"] == "master" and not m["addr"].startswith(victim.ip + ":")
                                             for m in s["mds"]))
    during = os.urandom(2 * MiB)
    (tmp_path / "during").write_bytes(during)
    net.chunkfs("-c", "hosts", "put", str(tmp_path / "during"), "/during")
    for name, data in (("before", before), ("during", during)):
        net.chunkfs("-c", "hosts", "get", f"/{name}", str(tmp_path / f"{name}.back"))
        assert (tmp_path / f"{name}.back").read_bytes() == data, f"/{name} differs while {victim.name} is cut off"

    # Plugged back: the host rejoins (MDS as a member, CS active) and every chunk is healthy again.
    net.mend(victim)
    _until("the host to rejoin", lambda: _whole(net, _stat(net)))
    _until("every chunk healthy", lambda: (c := _stat(net)["chunks"]) and c["healthy"] == sum(c.values()))
    for name, data in (("before", before), ("during", during)):
        (tmp_path / f"{name}.back").unlink()
        net.chunkfs("-c", "hosts", "get", f"/{name}", str(tmp_path / f"{name}.back"))
        assert (tmp_path / f"{name}.back").read_bytes() == data


def test_a_program_on_a_host_shares_this_machine_s_mounts(tmp_path: Path) -> None:
    """A daemon on a host joins its network namespace and nothing else.

    With a mount namespace of its own, it would hold a private copy of every
    mount there was when it started: a FUSE mount made by another test
    outlived its unmount until this daemon exited (a CI run's `chunkfs umount`
    waited 37 s for its mount process that way).
    """
    net = NetHosts(tmp_path, "ns")
    try:
        host = net.add_host("h1")
        done = subprocess.run([*netns.enter(host), "readlink", "/proc/self/ns/mnt", "/proc/self/ns/net"],
                              capture_output=True, text=True, timeout=10, check=True)
        mnt, net_ns = done.stdout.split()
        assert mnt == os.readlink("/proc/self/ns/mnt")
        assert net_ns == f"net:[{os.stat(netns.NETNS_DIR / host.ns).st_ino}]" != os.readlink("/proc/self/ns/net")
    finally:
        net.close()


def test_the_harness_cleans_up_after_itself(tmp_path: Path) -> None:
    net = NetHosts(tmp_path, "clean")
    host = net.add_host("h1")
    names = {net.switch, net.client.ns, host.ns}
    net.close()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10, check=True).stdout
    assert not names & {line.split()[0] for line in listed.splitlines() if line.strip()}


def test_a_reader_on_an_unplugged_host_never_reads_bytes_older_than_an_acknowledged_write() -> None:
    """A partition probe: a reader holding a file open on a host whose link went down read the bytes
    from before a write acknowledged elsewhere, from its own host's replica, left behind at the old
    version (8 reads in a row here, until the link came back).  Chunk servers now serve only under a
    lease from the master, and the master drops a replica only once its server's lease ran out: the
    reader gets errors while cut off, and the new bytes once the link is back."""
    probe = subprocess.run([sys.executable, str(Path(__file__).parents[2] / "bench" / "probe_partition_read.py"),
                            "--cut-for", "10"], capture_output=True, text=True, timeout=400, check=False)
    out = probe.stdout + probe.stderr
    counts = re.search(r"reads after the acknowledgement: (\d+) stale, (\d+) failed, (\d+) new", out)
    assert probe.returncode == 0 and counts is not None, out
    stale, _, fresh = map(int, counts.groups())
    assert stale == 0 and fresh > 0, out
