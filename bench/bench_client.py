"""Sequential write and read through the client library, on ChunkFS and on the local disk.

    .venv/bin/python bench/bench_client.py [--size-mib 256] [--cs 3] [--replicas 3]

Starts a local cluster of real processes on 127.0.0.1 in a temporary folder,
writes a file of random data in 4 MiB requests with several in flight (as
`chunkfs put` does), fsyncs it on every replica, reads it back, and does the
same with a plain file on the local disk in the same folder. The figures and
the ratios go into BENCHMARKS.md between this benchmark's markers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import mmap
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from chunkfs.client.client import Client  # noqa: E402
from chunkfs.common.config import load_client_config  # noqa: E402
from chunkfs.testing.cluster import LocalCluster  # noqa: E402

MiB = 1 << 20
BLOCK = 4 * MiB
DEPTH = 4
ROOT = Path(__file__).resolve().parent.parent


async def chunkfs_run(cluster: LocalCluster, data: bytes, replicas: int) -> tuple[float, float]:
    client = Client(load_client_config(cluster.name))
    try:
        await client.set_replicas("/", replicas, min(replicas, 2))
        ino = (await client.create("/bench"))["ino"]
        sem = asyncio.Semaphore(DEPTH)

        async def put(offset: int) -> None:
            async with sem:
                await client.write(ino, offset, memoryview(data)[offset:offset + BLOCK], extend=False)

        started = time.perf_counter()
        await asyncio.gather(*(put(o) for o in range(0, len(data), BLOCK)))
        await client.fsync(ino)
        await client.extend(ino, len(data))
        write_s = time.perf_counter() - started

        async def get(offset: int) -> bytes:
            async with sem:
                return await client.read(ino, offset, BLOCK, len(data))

        started = time.perf_counter()
        parts = await asyncio.gather(*(get(o) for o in range(0, len(data), BLOCK)))
        read_s = time.perf_counter() - started
        if b"".join(parts) != data:
            raise SystemExit("benchmark read back different bytes")
        return write_s, read_s
    finally:
        await client.close()


async def chunkfs_random(cluster: LocalCluster, file_size: int, seconds: float) -> tuple[float, float]:
    """Random 4 KiB writes, then reads, one at a time (QD1) for `seconds` each: ops/s."""
    client = Client(load_client_config(cluster.name))
    rng = random.Random(1)
    try:
        ino = (await client.create("/random"))["ino"]
        for offset in range(0, file_size, BLOCK):
            await client.write(ino, offset, bytes(BLOCK), extend=False)
        await client.extend(ino, file_size)
        block = os.urandom(4096)
        rates = []
        for op in ("write", "read"):
            done, deadline = 0, time.perf_counter() + seconds
            while time.perf_counter() < deadline:
                offset = rng.randrange(file_size // 4096) * 4096
                if op == "write":
                    await client.io.write(ino, offset, block)
                else:
                    await client.io.read(ino, offset, 4096)
                done += 1
            rates.append(done / seconds)
        return rates[0], rates[1]
    finally:
        await client.close()


def local_random(path: Path, file_size: int, seconds: float) -> tuple[float, float]:
    with open(path, "wb") as fh:
        fh.truncate(file_size)
    fd = os.open(path, os.O_RDWR | os.O_DIRECT)
    buf = mmap.mmap(-1, 4096)
    buf.write(os.urandom(4096))
    rng = random.Random(1)
    rates = []
    try:
        for op in ("write", "read"):
            done, deadline = 0, time.perf_counter() + seconds
            while time.perf_counter() < deadline:
                offset = rng.randrange(file_size // 4096) * 4096
                if op == "write":
                    os.pwritev(fd, [buf], offset)
                else:
                    os.preadv(fd, [buf], offset)
                done += 1
            rates.append(done / seconds)
    finally:
        os.close(fd)
    return rates[0], rates[1]


def local_disk_run(path: Path, data: bytes) -> tuple[float, float]:
    started = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for offset in range(0, len(data), BLOCK):
        os.write(fd, memoryview(data)[offset:offset + BLOCK])
    os.fsync(fd)
    os.close(fd)
    write_s = time.perf_counter() - started
    started = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    chunks = []
    while block := os.read(fd, BLOCK):
        chunks.append(block)
    os.close(fd)
    read_s = time.perf_counter() - started
    assert b"".join(chunks) == data
    return write_s, read_s


def chunkfs_cli(*args: str, timeout: float = 60, check: bool = True) -> bool:
    """Run the ``chunkfs`` command; a failure stops the benchmark with its message (`check`) or is printed."""
    done = subprocess.run([sys.executable, "-m", "chunkfs", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)
    if done.returncode != 0:
        if check:
            raise SystemExit(f"chunkfs {' '.join(args)} failed: {done.stderr.strip()}")
        print(f"chunkfs {' '.join(args)} failed: {done.stderr.strip()}", file=sys.stderr)
    return done.returncode == 0


def metrics_addrs(base: Path, role: str | None = None) -> dict[str, str]:
    """Node folder name -> its /metrics address, for the nodes of a local cluster under `base` (of `role`)."""
    out = {}
    for path in base.rglob("node.json"):
        node = json.loads(path.read_text())
        if node.get("metrics_addr") and role in (None, node.get("role")):
            out[path.parent.name] = node["metrics_addr"]
    return out


_LAG_BUCKET = re.compile(r'^chunkfs_event_loop_lag_seconds_bucket\{le="([^"]+)"\} (\S+)$')
_PLAIN_SAMPLE = re.compile(r"^(chunkfs_[a-z_]+) (\S+)$")


def scrape_metrics(addr: str) -> dict[str, float]:
    """One daemon's /metrics ({} if it does not answer): the loop-lag histogram's buckets as "le X"
    keys, and every sample without labels under its metric name (stalls, Raft indexes, ...)."""
    try:
        text = urllib.request.urlopen(f"http://{addr}/metrics", timeout=10).read().decode()  # noqa: S310
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if m := _LAG_BUCKET.match(line):
            out[f"le {m.group(1)}"] = float(m.group(2))
        elif m := _PLAIN_SAMPLE.match(line):
            out[m.group(1)] = float(m.group(2))
    return out


@contextlib.contextmanager
def scratch_dir(prefix: str, parent: Path | None) -> Iterator[Path]:
    """A temporary folder for a benchmark's cluster, removed at the end (saying how long millions of files took)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield tmp
    finally:
        started = time.perf_counter()
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"removed {tmp} in {time.perf_counter() - started:.0f} s", flush=True)


def update_benchmarks(section: str, body: str, file: str = "BENCHMARKS.md") -> None:
    """Replace the section between `<!-- section:begin/end -->` markers of `file` (appended when missing)."""
    path = ROOT / file
    text = path.read_text() if path.exists() else "# ChunkFS benchmarks\n"
    begin, end = f"<!-- {section}:begin -->", f"<!-- {section}:end -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--cs", type=int, default=3)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--chunk-size-mib", type=int, default=64)
    parser.add_argument("--random-seconds", type=float, default=5.0, help="length of each random 4 KiB run")
    parser.add_argument("--no-record", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()
    data = os.urandom(args.size_mib * MiB)
    with tempfile.TemporaryDirectory(prefix="chunkfs-bench-") as tmp:
        os.environ["CHUNKFS_CONF_DIR"] = f"{tmp}/conf"
        cluster = LocalCluster.make(Path(tmp) / "cluster", "bench", n_cs=args.cs,
                                    chunk_size=args.chunk_size_mib * MiB)
        try:
            cluster.start_all()
            cluster.wait_ready()
            cw, cr = asyncio.run(chunkfs_run(cluster, data, args.replicas))
            rw, rr = asyncio.run(chunkfs_random(cluster, 64 * MiB, args.random_seconds))
        finally:
            cluster.stop_all()
        lw, lr = local_disk_run(Path(tmp) / "local.bin", data)
        lrw, lrr = local_random(Path(tmp) / "random.bin", 64 * MiB, args.random_seconds)
    mb = len(data) / 1e6
    rows = [
        ("sequential write, 4 MiB requests, fsync at end", mb / cw, mb / lw),
        ("sequential read, 4 MiB requests", mb / cr, mb / lr),
    ]
    body = [
        "## Client library: sequential write and read (`bench/bench_client.py`)",
        "",
        f"{args.size_mib} MiB of random data, {args.cs} chunk servers and 1 MDS on 127.0.0.1, "
        f"replicas={args.replicas}, chunk size {args.chunk_size_mib} MiB, {DEPTH} requests in flight; "
        f"local disk: the same file written with os.write and fsync, read back (from the page cache). "
        f"Machine: {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"recorded {time.strftime('%Y-%m-%d')}.",
        "",
        "| workload | ChunkFS MB/s | local disk MB/s | ChunkFS / local |",
        "| --- | ---: | ---: | ---: |",
    ]
    body += [f"| {name} | {c:.0f} | {loc:.0f} | {c / loc:.2f} |" for name, c, loc in rows]
    body += [
        "",
        "| random 4 KiB, one at a time (QD1), 64 MiB file | ChunkFS ops/s | local disk (O_DIRECT) ops/s | ratio |",
        "| --- | ---: | ---: | ---: |",
        f"| write | {rw:,.0f} | {lrw:,.0f} | {rw / lrw:.2f} |",
        f"| read | {rr:,.0f} | {lrr:,.0f} | {rr / lrr:.2f} |",
    ]
    body += ["", "MooseFS on this machine (3 replicas, the yardstick, through its FUSE mount, so not the same "
             "path): 116 MB/s write with fsync, 474 MB/s read, 5,000 random 4 KiB writes/s and 3,900 reads/s at QD1."]
    text = "\n".join(body)
    print(text)
    if not args.no_record:
        update_benchmarks("client-seq", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
