#!/usr/bin/env python3
"""Probe: does a reader on a host cut off from the cluster read bytes older than an acknowledged write?

Three hosts in network namespaces (`chunkfs.testing.netns`), each running a metadata
server and a chunk server.  A reader on a follower's host opens a file and reads it
twice a second, holding it open.  That host's link goes down; another client, outside,
overwrites the file, which the cluster acknowledges once the cut-off host's replica is
dropped.  Every read the reader makes after that acknowledgement must fail or show the
new bytes, never the old (DESIGN.md, invariant 2).  RELIABILITY.md has what this found
on 2026-12-07 (the old bytes until the link came back) and the leases that ended it;
tests/cluster/test_hosts_in_netns.py runs it.

Needs root and `ip` (network namespaces).  Exit status: 0 if no read after the
acknowledgement showed the old bytes, 1 if one did, 2 if the probe could not run.

    sudo .venv/bin/python bench/probe_partition_read.py [--cut-for 12]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from chunkfs.testing import netns
from chunkfs.testing.netns import NetHosts

CLUSTER = "partition"
#: The reader: one line per read, "<monotonic> <first 2 bytes>" or "<monotonic> ERR <error>".
READER = r"""
import asyncio, sys, time
from chunkfs.client.client import Client
async def main():
    client = Client.for_cluster(sys.argv[1])
    f = await client.open("/g")
    end = time.monotonic() + float(sys.argv[2])
    while time.monotonic() < end:
        try:
            data = await asyncio.wait_for(f.read(0, 2), 10)
            print(time.monotonic(), data.decode(), flush=True)
        except Exception as exc:
            print(time.monotonic(), "ERR", type(exc).__name__, flush=True)
        await asyncio.sleep(0.5)
asyncio.run(main())
"""
#: The writer: the file's first 4 KiB, synced, as `sys.argv[2]` ("v0" creates it).
WRITER = r"""
import asyncio, sys
from chunkfs.client.client import Client
async def main():
    client = Client.for_cluster(sys.argv[1])
    f = await (client.open("/g", create=True) if sys.argv[2] == "v0" else client.open("/g"))
    await f.write(0, sys.argv[2].encode().ljust(4096, b"."), sync=True)
    await f.close()
    await client.close()
asyncio.run(main())
"""


def _until(what: str, check, timeout: float = 90.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if result := check():
                return result
        except RuntimeError:
            pass  # no master yet
        time.sleep(0.5)
    raise SystemExit(f"probe: timed out waiting for {what}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cut-for", type=float, default=12.0, help="seconds the reader's host stays cut off")
    args = parser.parse_args()
    why_not = netns.available()
    if why_not:
        print(f"probe: cannot run: {why_not}", file=sys.stderr)
        return 2
    folder = Path(tempfile.mkdtemp(prefix="chunkfs-partition-"))
    net = NetHosts(folder, CLUSTER)
    try:
        hosts = [net.add_host(f"h{i}") for i in (1, 2, 3)]
        net.start(hosts[0], net.make_mds(hosts[0], init=True))
        for host in hosts[1:]:
            net.start(host, net.make_mds(host))
        for host in hosts:
            net.start(host, net.make_cs(host))

        def stat() -> dict:  # type: ignore[type-arg]
            return json.loads(net.chunkfs("-c", CLUSTER, "stat", "--json").stdout)

        _until("3 metadata servers and 3 active chunk servers",
               lambda: (s := stat()) and len(s["mds"]) == 3 and sum(c["status"] == "active" for c in s["cs"]) == 3)
        net.chunkfs("-c", CLUSTER, "set-config", "cs-inactive-timeout=2", "cs-offline-timeout=600")

        def run(code: str, *argv: str, host: netns.Host | None = None) -> None:
            subprocess.run([*netns.enter(host or net.client), sys.executable, "-c", code, CLUSTER, *argv],
                           env=net.env, check=True, timeout=120)

        run(WRITER, "v0")
        follower = next(h for h in hosts if any(m["addr"].startswith(h.ip + ":") and m["role"] == "follower"
                                                for m in stat()["mds"]))
        reading_for = args.cut_for + 15
        reader = subprocess.Popen([*netns.enter(follower), sys.executable, "-c", READER, CLUSTER, str(reading_for)],
                                  env=net.env, stdout=subprocess.PIPE, text=True)
        time.sleep(3)
        net.cut(follower)
        cut = time.monotonic()
        run(WRITER, "v1")
        acked = time.monotonic()
        print(f"v1 acknowledged {acked - cut:.1f} s after {follower.name} was cut off")
        time.sleep(max(0.0, args.cut_for - (acked - cut)))
        net.mend(follower)
        mended = time.monotonic()
        out, _ = reader.communicate(timeout=reading_for + 60)
    finally:
        net.close()
        shutil.rmtree(folder, ignore_errors=True)
    stale = errors = fresh = 0
    for line in out.splitlines():
        when, what = line.split(" ", 1)
        if float(when) <= acked:
            continue
        if what.startswith("ERR"):
            errors += 1
        elif what == "v0":
            stale += 1
            print(f"stale: {float(when) - cut:.1f} s after the cut ({'cut off' if float(when) < mended else 'back'})")
        else:
            fresh += 1
    print(f"reads after the acknowledgement: {stale} stale, {errors} failed, {fresh} new")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
