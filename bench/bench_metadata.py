"""Durable metadata operations per second (create, stat, unlink) with 1 and 3 MDS.

    .venv/bin/python bench/bench_metadata.py [--files 2000] [--workers 16]

Starts a local cluster of real processes on 127.0.0.1 for each MDS count,
creates, stats and unlinks `--files` files from `--workers` concurrent
tasks through the client library (each create and unlink is committed to the
Raft log on a majority and fsynced before it is acknowledged; each stat is a
linearizable read), and does the same with plain files on the local disk
(create+fsync of the directory, stat, unlink+fsync of the directory). Also
measures failover: the time from `kill -9` of the master until a metadata
change commits again. Figures go into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_client import update_benchmarks  # noqa: E402

from chunkfs.client.client import Client  # noqa: E402
from chunkfs.common.config import load_client_config  # noqa: E402
from chunkfs.testing.cluster import LocalCluster  # noqa: E402


async def run_ops(client: Client, files: int, workers: int) -> dict[str, float]:
    await client.mkdir("/bench")
    names = [f"/bench/f{i}" for i in range(files)]
    rates: dict[str, float] = {}
    async def worker(op: str, queue: list[str]) -> None:
        while queue:
            path = queue.pop()
            if op == "create":
                await client.create(path, exclusive=True)
            elif op == "stat":
                await client.stat(path)
            else:
                await client.unlink(path)

    for op in ("create", "stat", "unlink"):
        queue = list(names)
        started = time.perf_counter()
        await asyncio.gather(*(worker(op, queue) for _ in range(workers)))
        rates[op] = files / (time.perf_counter() - started)
    return rates


def local_ops(directory: Path, files: int) -> dict[str, float]:
    directory.mkdir()
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    names = [directory / f"f{i}" for i in range(files)]
    rates = {}
    started = time.perf_counter()
    for path in names:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        os.fsync(dfd)
    rates["create"] = files / (time.perf_counter() - started)
    started = time.perf_counter()
    for path in names:
        os.stat(path)
    rates["stat"] = files / (time.perf_counter() - started)
    started = time.perf_counter()
    for path in names:
        os.unlink(path)
        os.fsync(dfd)
    rates["unlink"] = files / (time.perf_counter() - started)
    os.close(dfd)
    return rates


async def bench(name: str, files: int, workers: int) -> dict[str, float]:
    client = Client(load_client_config(name))
    try:
        return await run_ops(client, files, workers)
    finally:
        await client.close()


async def failover_seconds(cluster: LocalCluster) -> float:
    client = Client(load_client_config(cluster.name))
    try:
        master = next(m["id"] for m in (await client.cluster_stat())["mds"] if m["role"] == "master")
        cluster.kill("mds", master)
        started = time.perf_counter()
        client.mds.retry_for = 60.0
        await client.mkdir("/after-failover")
        return time.perf_counter() - started
    finally:
        await client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    results: dict[str, dict[str, float]] = {}
    failover = 0.0
    with tempfile.TemporaryDirectory(prefix="chunkfs-bench-") as tmp:
        os.environ["CHUNKFS_CONF_DIR"] = f"{tmp}/conf"
        for n_mds in (1, 3):
            cluster = LocalCluster.make(Path(tmp) / f"c{n_mds}", f"meta{n_mds}", n_mds=n_mds, n_cs=1,
                                        chunk_size=1 << 20)
            try:
                cluster.start_all()
                cluster.wait_ready()

                results[f"{n_mds} MDS"] = asyncio.run(bench(cluster.name, args.files, args.workers))
                if n_mds == 3:
                    failover = asyncio.run(failover_seconds(cluster))
            finally:
                cluster.stop_all()
        results["local disk"] = local_ops(Path(tmp) / "local", args.files)
    body = [
        "## Metadata operations (`bench/bench_metadata.py`)",
        "",
        f"{args.files} files, {args.workers} concurrent requests from one client; each create and unlink is "
        "acknowledged only once committed (fsynced) on a majority of the MDS; stat is a linearizable read. "
        "Local disk: the same operations with an fsync of the directory after each create and unlink, one at "
        f"a time. Recorded {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores.",
        "",
        "| operation | 1 MDS ops/s | 3 MDS ops/s | local disk ops/s | 3 MDS / local |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for op in ("create", "stat", "unlink"):
        one, three, local = results["1 MDS"][op], results["3 MDS"][op], results["local disk"][op]
        body.append(f"| {op} | {one:,.0f} | {three:,.0f} | {local:,.0f} | {three / local:.2f} |")
    body += ["", f"Failover: a metadata change committed {failover:.2f} s after `kill -9` of the master "
             "(3 MDS, default timeouts: elections after 1-2 s of silence).",
             "", "MooseFS on this machine (the yardstick): 3,400 file creates per second through its FUSE mount."]
    text = "\n".join(body)
    print(text)
    if not args.no_record:
        update_benchmarks("metadata", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
