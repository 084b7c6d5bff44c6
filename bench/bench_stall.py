"""The master under a loaded machine: worst event-loop lag, stalls and master changes during a metadata storm.

    .venv/bin/python bench/bench_stall.py [--seconds 60] [--cpu-hogs 2] [--record]

Starts the cluster the quick start starts (``chunkfs local up``: 3 MDS, 3 CS,
a mount) and, for `--seconds`, loads this machine the way a busy host is
loaded: `--cpu-hogs` processes spinning, one process writing to the local disk
with an fsync every 4 MiB, and two threads creating, writing and unlinking
small files through the mount as fast as they can.  Every second it reads
each metadata server's ``/metrics``: the worst event-loop lag, the stalls
counted (loop late by more than 200 ms) and the Raft term (a new term is a
master change).  It prints the figures; ``--record`` writes them into
RELIABILITY.md.  Every load process is stopped by PID at the end.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from bench_client import chunkfs_cli, metrics_addrs, update_benchmarks  # noqa: E402

_GAUGE = re.compile(r"^(chunkfs_event_loop_stalls_total|chunkfs_raft_term|chunkfs_raft_is_leader) (\S+)$")
_BUCKET = re.compile(r'^chunkfs_event_loop_lag_seconds_bucket\{le="([^"]+)"\} (\S+)$')


def spin(until: float) -> None:
    while time.monotonic() < until:
        pass


def disk_hog(path: str, until: float) -> None:
    block = os.urandom(1 << 20)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        written = 0
        while time.monotonic() < until:
            os.write(fd, block)
            written += 1
            if written % 4 == 0:
                os.fsync(fd)
            if written >= 256:  # keep it to 256 MiB on disk
                os.lseek(fd, 0, os.SEEK_SET)
                written = 0
    finally:
        os.close(fd)


def storm(directory: Path, until: float, counts: list[int], errors: list[str]) -> None:
    directory.mkdir(exist_ok=True)
    i = 0
    while time.monotonic() < until:
        path = directory / f"f{i % 200}"
        try:
            path.write_bytes(b"x" * 4096)
            if i % 2:
                path.unlink()
            counts[0] += 1
        except OSError as exc:
            if len(errors) < 10:
                errors.append(f"{path.name}: {exc}")
        i += 1


def scrape(addr: str) -> dict[str, float]:
    """Counters and gauges, and the loop-lag histogram's buckets as ("le", bound) keys."""
    text = urllib.request.urlopen(f"http://{addr}/metrics", timeout=5).read().decode()  # noqa: S310
    out: dict[str, float] = {}
    for line in text.splitlines():
        if m := _GAUGE.match(line):
            out[m.group(1)] = float(m.group(2))
        elif m := _BUCKET.match(line):
            out[f"le {m.group(1)}"] = float(m.group(2))
    return out


def worst_lag(start: dict[str, float], end: dict[str, float]) -> str:
    """The worst loop lag during the run, as the histogram bucket it fell in (counts are cumulative)."""
    bounds = sorted((float(k.split()[1]), k) for k in end if k.startswith("le ") and k != "le +Inf")
    total = end.get("le +Inf", 0) - start.get("le +Inf", 0)
    below = 0.0
    for bound, key in bounds:
        if end[key] - start.get(key, 0) >= total:
            return f"≤ {bound * 1000:,.0f}" if bound > below else "0"
        below = bound
    return f"> {below * 1000:,.0f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--cpu-hogs", type=int, default=2)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="chunkfs-stall-") as tmp:
        os.environ["CHUNKFS_CONF_DIR"] = f"{tmp}/conf"
        base, mnt = Path(tmp) / "cluster", Path(tmp) / "mnt"
        chunkfs_cli("local", "up", "--dir", str(base), "--name", "stall", "--mount", str(mnt), timeout=180)
        metrics = metrics_addrs(base, "mds")
        start = {node: scrape(addr) for node, addr in metrics.items()}
        until = time.monotonic() + args.seconds
        hogs = [multiprocessing.Process(target=spin, args=(until,)) for _ in range(args.cpu_hogs)]
        hogs.append(multiprocessing.Process(target=disk_hog, args=(f"{tmp}/hog", until)))
        for hog in hogs:
            hog.start()
        counts, errors = [0], []
        storms = [threading.Thread(target=storm, args=(mnt / f"s{k}", until, counts, errors)) for k in range(2)]
        for t in storms:
            t.start()
        loads = []
        try:
            while time.monotonic() < until:
                time.sleep(1.0)
                loads.append(os.getloadavg()[0])
        finally:
            for t in storms:
                t.join(args.seconds + 60)
            for hog in hogs:
                hog.join(30)
                if hog.is_alive():
                    hog.kill()
                    hog.join(5)
        end = {node: scrape(addr) for node, addr in metrics.items()}
        chunkfs_cli("local", "down", "--dir", str(base), timeout=180)
    terms = {node: int(end[node]["chunkfs_raft_term"] - start[node]["chunkfs_raft_term"]) for node in end}
    rows = [f"| {node} | {'master' if end[node].get('chunkfs_raft_is_leader') else 'follower'} | "
            f"{worst_lag(start[node], end[node])} | "
            f"{int(end[node]['chunkfs_event_loop_stalls_total'] - start[node]['chunkfs_event_loop_stalls_total'])}"
            f" | {terms[node]} |" for node in sorted(end)]
    body = "\n".join([
        "## The master on a loaded machine (`bench/bench_stall.py`)", "",
        f"Recorded {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores: `chunkfs local up` (3 MDS, 3 CS, a mount), "
        f"{args.seconds:g} s with {args.cpu_hogs} processes spinning, one writing to the local disk with an fsync "
        f"every 4 MiB, and two threads writing and unlinking 4 KiB files through the mount "
        f"({counts[0]:,} done, {len(errors)} errors); load average {min(loads):.1f}-{max(loads):.1f}.", "",
        "| MDS | role at the end | worst loop lag (ms) | stalls over 200 ms | new terms (master changes) |",
        "| --- | --- | ---: | ---: | ---: |", *rows])
    print(body)
    if errors:
        print("errors:", *errors, sep="\n  ")
    if args.record:
        update_benchmarks("stall", body, file="RELIABILITY.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
