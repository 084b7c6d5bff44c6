"""Grow a cluster to many small files and watch the master: create rate, idle CPU, loop lag, restarts.

    .venv/bin/python bench/bench_grow.py [--files 100000] [--step 10000] [--workers 16]

A local cluster of real processes on 127.0.0.1 (3 MDS, 3 CS, 1 MiB chunks) is
filled through the client library with 4 KiB files, a chunk each, `--workers`
at a time. After every `--step` files it records: the create rate of that
step (create + write on three replicas + size commit), the master's CPU while
the cluster is idle for a few seconds, the worst event-loop lag the master
has seen since it started (its /metrics), and whether the master changed.
At the end it measures how long every chunk takes to be healthy again after
a `kill -9` of the master and after a restart of each chunk server (issue 14's
figures). Prints a Markdown table; `--record` puts it into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_client import update_benchmarks  # noqa: E402

from chunkfs.client.client import Client  # noqa: E402
from chunkfs.testing.cluster import cluster_factory, wait_for  # noqa: E402

IDLE_S = 5.0
HEALTHY_TIMEOUT = 600.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scrape_max_lag(url: str) -> float:
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - loopback only
        for line in resp.read().decode().splitlines():
            if line.startswith("chunkfs_event_loop_lag_max_seconds"):
                return float(line.rsplit(" ", 1)[1])
    return float("nan")


async def fill(client: Client, first: int, count: int, workers: int) -> float:
    """Create files first..first+count-1 (1,000 per directory), 4 KiB each; return files per second."""
    queue = list(range(first, first + count))
    data = os.urandom(4096)
    dirs: dict[int, int] = {}

    async def directory(n: int) -> int:
        d = n // 1000
        if d not in dirs:
            try:
                dirs[d] = (await client.mkdir(f"/g/d{d:04}"))["ino"]
            except Exception:  # noqa: BLE001 - made by another worker meanwhile
                dirs[d] = (await client.resolve(f"/g/d{d:04}"))["ino"]
        return dirs[d]

    async def worker() -> None:
        while queue:
            n = queue.pop()
            attr = await client.create_at(await directory(n), f"f{n:07}", exclusive=True)
            await client.write(attr["ino"], 0, data)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return count / (time.perf_counter() - started)


def master(client: Any) -> dict[str, Any]:
    stat = client.cluster_stat()
    return next(m for m in stat["mds"] if m["role"] == "master") | {"stat": stat}


def all_healthy(client: Any, files: int) -> bool:
    """Every chunk server registered and active, every chunk healthy."""
    try:
        stat = client.cluster_stat()
    except Exception:  # noqa: BLE001 - the master may be changing
        return False
    chunks = stat["chunks"]
    return (all(s["status"] == "active" for s in stat["cs"]) and chunks.get("healthy", 0) >= files
            and sum(v for k, v in chunks.items() if k != "healthy") == 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--step", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    rows: list[str] = []
    restarts: list[str] = []
    with tempfile.TemporaryDirectory(prefix="chunkfs-grow-") as tmp, cluster_factory(Path(tmp), 1 << 20) as make:
        os.environ["CHUNKFS_CONF_DIR"] = f"{tmp}/conf"
        cluster = make(n_cs=3, name="grow", n_mds=3)
        with cluster.client() as c:
            c.client.mds.retry_for = 60.0
            c.mkdir("/g")
            first = master(c)
            done = 0
            while done < args.files:
                count = min(args.step, args.files - done)
                rate = c.run(fill(c.client, done, count, args.workers))
                done += count
                m = master(c)
                pid = next(p.pid for p in cluster.processes if p.role == "mds" and p.id == m["id"])
                before = cpu_seconds(pid)
                time.sleep(IDLE_S)
                idle = (cpu_seconds(pid) - before) / IDLE_S * 100
                url = next(x["url"] for x in m["stat"]["metrics"] if x["role"] == "mds" and x["id"] == m["id"])
                rows.append(f"| {done:,} | {rate:,.0f} | {idle:.1f} | {scrape_max_lag(url) * 1000:.0f} "
                            f"| {'no' if (m['id'], m['term']) == (first['id'], first['term']) else 'YES'} |")
                print(rows[-1], flush=True)
            # Every chunk healthy again after kill -9 of the master, and after a restart of each chunk server.
            m = master(c)
            cluster.kill("mds", m["id"], signal.SIGKILL)
            started = time.monotonic()
            wait_for("all chunks healthy under a new master", lambda: all_healthy(c, done), HEALTHY_TIMEOUT, 0.5)
            restarts.append(f"| kill -9 of the master (MDS#{m['id']}) | {time.monotonic() - started:.1f} |")
            cluster.start("mds", m["id"])
            for proc in [p for p in cluster.processes if p.role == "cs"]:
                cluster.kill("cs", proc.id, signal.SIGTERM)
                cluster.start("cs", proc.id)
                started = time.monotonic()
                wait_for(f"all chunks healthy after cs{proc.id} restarted",
                         lambda: all_healthy(c, done), HEALTHY_TIMEOUT, 0.5)
                restarts.append(f"| restart of cs{proc.id} | {time.monotonic() - started:.1f} |")
                print(restarts[-1], flush=True)
    body = [
        "## Growing a cluster to many small files (`bench/bench_grow.py`)",
        "",
        f"3 MDS, 3 CS on 127.0.0.1, 1 MiB chunks; {args.files:,} files of 4 KiB (a chunk each, on three replicas) "
        f"created through the client library, {args.workers} at a time. After each step: that step's rate, "
        f"the master's CPU over {IDLE_S:g} s of idleness, the worst event-loop lag the master has had since it "
        f"started, and whether the master changed. Recorded {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores.",
        "",
        "| files | create+write rate (files/s) | master idle CPU (%) | worst loop lag so far (ms) | master changed |",
        "| ---: | ---: | ---: | ---: | --- |",
        *rows,
        "",
        "| event | seconds until every chunk is healthy |",
        "| --- | ---: |",
        *restarts,
    ]
    text = "\n".join(body)
    print(text)
    if args.record:
        update_benchmarks("grow", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
