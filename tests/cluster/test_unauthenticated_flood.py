"""A flood of connections that never authenticate costs a daemon almost no memory and denies no one service.

Before, a frame that announced an 8 MiB payload made the daemon allocate it
before the peer had proven anything: four 60-byte connections took a master
from 65 MiB to over 1 GiB resident, and every idle connection was kept.
"""

from __future__ import annotations

import contextlib
import re
import socket
import time
from pathlib import Path

import pytest

from chunkfs.common.addr import parse_addr
from chunkfs.protocol.frame import MAX_PAYLOAD_LEN, Kind, pack_prefix
from chunkfs.protocol.messages import Msg
from chunkfs.protocol.rpc import HANDSHAKE_TIMEOUT, MAX_UNAUTHENTICATED_PER_HOST
from chunkfs.testing.cluster import master_id
from chunkfs.testing.probes import rss, still_open

from .conftest import run_cli

MiB = 1 << 20


@pytest.mark.parametrize("role", ["mds", "cs"])
def test_flood_of_unauthenticated_connections(make_cluster, role) -> None:
    cluster = make_cluster(n_cs=1)
    proc = next(p for p in cluster.processes if p.role == role)
    host, port = parse_addr(proc.addr)
    before = rss(proc.pid)
    announce = pack_prefix(Kind.REQUEST, Msg.HELLO, 0, 20, MAX_PAYLOAD_LEN)
    socks: list[socket.socket] = []
    peak = before
    try:
        for i in range(200):
            sock = socket.create_connection((host, port), timeout=10)
            socks.append(sock)
            if i % 2 == 0:
                with contextlib.suppress(OSError):
                    sock.sendall(announce)  # 24 bytes announcing 8 MiB
            if i % 20 == 0:
                peak = max(peak, rss(proc.pid))
        time.sleep(0.5)
        peak = max(peak, rss(proc.pid))
        # Announcing payloads closed half of them at once; of the idle rest, only a capped number is kept.
        assert sum(still_open(s) for s in socks) <= MAX_UNAUTHENTICATED_PER_HOST
        # Someone with the secret is served throughout.
        with cluster.client() as c:
            assert c.cluster_stat()["cluster"]["name"] == cluster.name
        # And the kept ones are closed once the handshake deadline has passed.
        deadline = time.monotonic() + HANDSHAKE_TIMEOUT + 10
        while any(still_open(s) for s in socks) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(still_open(s) for s in socks)
    finally:
        for sock in socks:
            sock.close()
    # 100 announced payloads would be 800 MiB; a few MiB of growth is the interpreter's own noise.
    assert peak - before < 32 * MiB, f"resident memory grew from {before / MiB:.0f} to {peak / MiB:.0f} MiB"
    assert rss(proc.pid) - before < 32 * MiB


def test_a_flood_of_bad_frames_before_the_handshake_takes_a_few_log_lines(make_cluster, monkeypatch) -> None:
    """One line per interval with a count, naming the peer (a probe: 3,000 connections each sending a
    bad frame at once took 3,001 lines, most from "?": 280 KB/s of log, rotations used up in minutes).
    The count of the last interval is said at its end (a re-probe: it waited for the next bad peer)."""
    monkeypatch.setenv("CHUNKFS_REFUSAL_LOG_INTERVAL", "2")
    cluster = make_cluster(n_cs=1)
    proc = next(p for p in cluster.processes if p.role == "mds")
    host, port = parse_addr(proc.addr)
    log = Path(proc.dir) / "daemon.log"
    start = log.stat().st_size
    flood = 300
    for _ in range(flood):
        with socket.create_connection((host, port), timeout=10) as sock, contextlib.suppress(OSError):
            sock.sendall(b"XXXX" + bytes(20))
            sock.recv(4096)  # its error frame, then the close
    time.sleep(3)  # the interval's end
    with log.open("rb") as fh:
        fh.seek(start)
        lines = [line for line in fh.read().decode(errors="replace").splitlines() if "refused" in line]
    assert 2 <= len(lines) <= 20, lines
    assert all("from ?" not in line for line in lines), lines
    assert "bad frame magic" in lines[0]
    said = sum(int(m.group(1)) if (m := re.search(r"(\d+) more", line)) else 0 for line in lines)
    assert said + sum("connection from" in line for line in lines) == flood, lines


def test_a_client_refused_for_the_connections_still_authenticating_is_told_so(make_cluster) -> None:
    """A probe: with its address's connections still authenticating at the cap, a command was closed
    on without a word and failed with a follower's "not the master"."""
    cluster = make_cluster(n_cs=1, n_mds=3)
    with cluster.client() as c:
        master = cluster.find("mds", master_id(c))
    host, port = parse_addr(master.addr)
    socks = [socket.create_connection((host, port), timeout=10) for _ in range(MAX_UNAUTHENTICATED_PER_HOST)]
    try:
        time.sleep(0.5)
        error = run_cli("--retry-for", "2", "-c", cluster.name, "ls", "/").stderr
        assert "still proving the cluster secret" in error, error
    finally:
        for sock in socks:
            sock.close()
    assert run_cli("-c", cluster.name, "ls", "/").returncode == 0
