"""Resident memory of a master and a chunk server under a flood of unauthenticated connections.

    .venv/bin/python bench/bench_flood.py [--connections 2000] [--announcing 100]

Starts a local cluster (1 MDS, 1 CS) of real processes on 127.0.0.1. Against
each daemon it opens `--connections` TCP connections that never authenticate;
`--announcing` of them send a frame header announcing an 8 MiB payload (what
took a master from 65 MiB to over 1 GiB before). It records the daemon's
resident memory before, at its peak while the connections are open, and
after they are closed; how many connections the daemon still held open; and
whether a client with the secret was served during the flood. Prints a
Markdown table for RELIABILITY.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from chunkfs.common.addr import parse_addr  # noqa: E402
from chunkfs.protocol.frame import MAX_PAYLOAD_LEN, Kind, pack_prefix  # noqa: E402
from chunkfs.protocol.messages import Msg  # noqa: E402
from chunkfs.testing.cluster import LocalCluster, cluster_factory  # noqa: E402
from chunkfs.testing.probes import rss, still_open  # noqa: E402

MiB = 1 << 20


def flood(cluster: LocalCluster, role: str, connections: int, announcing: int) -> dict[str, object]:
    proc = next(p for p in cluster.processes if p.role == role)
    host, port = parse_addr(proc.addr)
    announce = pack_prefix(Kind.REQUEST, Msg.HELLO, 0, 20, MAX_PAYLOAD_LEN)
    before = peak = rss(proc.pid)
    socks: list[socket.socket] = []
    served = True
    try:
        for i in range(connections):
            try:
                sock = socket.create_connection((host, port), timeout=5)
            except OSError:
                continue
            socks.append(sock)
            if i < announcing:
                with contextlib.suppress(OSError):
                    sock.sendall(announce)
            if i % 50 == 0:
                peak = max(peak, rss(proc.pid))
        time.sleep(1)
        peak = max(peak, rss(proc.pid))
        held = sum(still_open(s) for s in socks)
        try:
            with cluster.client() as c:
                c.cluster_stat()
        except Exception:  # noqa: BLE001 - reported as "not served"
            served = False
    finally:
        for sock in socks:
            sock.close()
    time.sleep(1)
    return {"role": role, "before": before, "peak": peak, "after": rss(proc.pid), "held": held,
            "tried": connections, "announcing": announcing, "served": served}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--announcing", type=int, default=100)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="chunkfs-flood-") as tmp, cluster_factory(Path(tmp), 1 << 20) as make:
        os.environ["CHUNKFS_CONF_DIR"] = f"{tmp}/conf"
        cluster = make(n_cs=1, name="flood")
        for role in ("mds", "cs"):
            rows.append(flood(cluster, role, args.connections, args.announcing))
    print("| daemon | connections tried (announcing 8 MiB) | still held after 1 s | RSS before (MiB) "
          "| peak (MiB) | after (MiB) | client with the secret served |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        print(f"| {r['role']} | {r['tried']:,} ({r['announcing']}) | {r['held']} | {r['before'] / MiB:.0f} "
              f"| {r['peak'] / MiB:.0f} | {r['after'] / MiB:.0f} | {'yes' if r['served'] else 'NO'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
