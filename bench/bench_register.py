"""How long chunk servers holding 10^6 replicas each take to register, before and after a master change.

    .venv/bin/python bench/bench_register.py [--replicas 1000000] [--servers 3] [--dir DIR] [--record]

Real processes on 127.0.0.1 (3 MDS, `--servers` chunk servers, 1 MiB chunks),
with the chunks put in place cheaply instead of written through the network
(10^6 writes would take hours here; `chunkfs.testing.preload`, shared with the tests):

- **the master's store** is loaded through the state machine's own apply path
  (synthetic committed entries: files of 1,000 chunks, every chunk on every
  chunk server, goal = `--servers` copies) into the most advanced MDS's store
  while the cluster is down; its applied index is then set back to what it was
  (the Raft log never saw these entries, so the log stays the authority for
  everything after), and the same image is copied to every MDS, so all three
  agree;
- **each chunk server's data directory** gets one empty file per replica,
  named ``<chunk id>_<version>.chunk`` as the store would name it.  The chunk
  server's start-up scan reads names only (headers are checked on first open),
  so these are real replicas as far as registration goes; the scrubber is
  slowed to its minimum rate so it does not quarantine them during the run.

Then it starts the three MDS, waits for a master, starts every chunk server
at once and measures, by polling ``stat`` (the CLUSTER_STAT request):

- **registered**: seconds from starting the chunk servers until every one is
  active with all its replicas counted and every chunk healthy (this includes
  each chunk server's own start-up scan, which is read from its log);
- the same **after a master change** (``kill -9`` of the master): from the
  kill until a new master knows every replica again;
- the **worst event-loop lag** of each MDS in each phase, from the loop-lag
  histogram and stall counter in its ``/metrics``.

``--record`` writes the figures into SCALE.md (section ``register``).  Every
daemon is stopped by PID and the temporary directory (millions of files) is
removed at the end.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import os
import platform
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_client import metrics_addrs, scrape_metrics, scratch_dir, update_benchmarks  # noqa: E402

from chunkfs.common.daemon import LOG_FILE  # noqa: E402
from chunkfs.common.errors import ChunkFSError  # noqa: E402
from chunkfs.testing.cluster import LocalCluster, master_id, wait_members_in_step  # noqa: E402
from chunkfs.testing.preload import STORE_FILE, applied_index, copy_store, load_chunks, replica_files  # noqa: E402

CHUNK = 1 << 20
#: How long each phase may take before the benchmark gives up (seconds).
PHASE_LIMIT = 900.0
_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def worst_lag(start: dict[str, float], end: dict[str, float]) -> str:
    """The worst loop lag between two scrapes, as the bound of the histogram bucket it fell in."""
    if not end:
        return "n/a (not running)"
    bounds = sorted((float(k.split()[1]), k) for k in end if k.startswith("le ") and k != "le +Inf")
    total = end.get("le +Inf", 0) - start.get("le +Inf", 0)
    below = 0.0
    for bound, key in bounds:
        if end[key] - start.get(key, 0) >= total:
            worst = f"≤ {bound * 1000:,.0f} ms" if bound > below else "0 ms"
            break
        below = bound
    else:
        worst = f"> {below * 1000:,.0f} ms"
    stalls = int(end.get("chunkfs_event_loop_stalls_total", 0) - start.get("chunkfs_event_loop_stalls_total", 0))
    return f"{worst}, {stalls} stall(s) over 200 ms"


def everything_known(cluster: LocalCluster, n: int, servers: int) -> bool:
    """Every chunk server active with all `n` replicas counted, and every chunk healthy."""
    try:
        with cluster.client() as c:
            c.client.mds.retry_for = 5.0
            stat = c.cluster_stat()
    except ChunkFSError:
        return False
    active = [s for s in stat["cs"] if s["status"] == "active" and s["replicas"] >= n]
    return len(active) == servers and stat["chunks"]["healthy"] >= n


def wait(what: str, check: Any, limit: float = PHASE_LIMIT, pause: float = 0.5) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > limit:
            raise SystemExit(f"gave up after {limit:g} s waiting for {what}")
        time.sleep(pause)
    return time.monotonic() - started


def log_seconds(path: Path, pattern: str) -> list[tuple[float, str]]:
    """(UNIX time, line) of the log lines matching `pattern`."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if re.search(pattern, line) and _LOG_TIME.match(line):
            out.append((log_seconds_of(line), line))
    return out


def log_seconds_of(line: str) -> float:
    m = _LOG_TIME.match(line)
    return datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp() if m else 0.0


def phase(cluster: LocalCluster, metrics: dict[str, str], n: int, servers: int, start: Any) -> dict[str, Any]:
    """Run `start()` and time until every replica is known again; the MDS loops' worst lag meanwhile."""
    before = {node: scrape_metrics(addr) for node, addr in metrics.items()}
    began = time.time()
    start()
    seconds = wait("every replica known", lambda: everything_known(cluster, n, servers))
    after = {node: scrape_metrics(addr) for node, addr in metrics.items()}
    for node in sorted(metrics):
        for _, line in log_seconds(cluster.dir / node / LOG_FILE, r"event loop (stalled|blocked)"):
            if _LOG_TIME.match(line) and log_seconds_of(line) >= began:
                print(f"{node}: {line}", flush=True)
    return {"seconds": seconds, "began": began,
            "lag": {node: worst_lag(before[node], after[node]) for node in sorted(metrics)}}


def run(base: Path, n: int, servers: int) -> dict[str, Any]:
    os.environ["CHUNKFS_CONF_DIR"] = str(base / "conf")
    cluster = LocalCluster.make(base / "cluster", "reg", n_mds=3, n_cs=servers, chunk_size=CHUNK)
    out: dict[str, Any] = {"n": n, "servers": servers}
    try:
        cluster.start_all()
        cluster.wait_ready(timeout=60)
        with cluster.client() as c:
            c.run(c.client.set_config({"scrub-rate": "0.01"}))
            wait_members_in_step(c)  # the newest store is copied to every member (testing/preload.py)
        cs_ids = sorted(r["id"] for r in cluster.status() if r["role"] == "cs")
        cluster.stop_all()
        mds = [p for p in cluster.processes if p.role == "mds"]
        stores = [Path(p.dir) / STORE_FILE for p in mds]
        newest = max(stores, key=lambda s: applied_index(s, CHUNK))
        started = time.perf_counter()
        first = load_chunks(newest, CHUNK, n, cs_ids)
        copy_store(newest, stores)
        out["load_seconds"] = time.perf_counter() - started
        cs_dirs = [Path(p.dir) for p in cluster.processes if p.role == "cs"]
        started = time.perf_counter()
        replica_files(newest, CHUNK, first, [d / "data" for d in cs_dirs])
        out["files_seconds"] = time.perf_counter() - started
        print(f"loaded {n:,} chunks in {out['load_seconds']:.0f} s, {n * servers:,} replica files in "
              f"{out['files_seconds']:.0f} s", flush=True)
        for p in mds:
            cluster.start("mds", p.id)
        wait("a master", lambda: _master(cluster) is not None, limit=120)
        metrics = metrics_addrs(base / "cluster", "mds")

        def start_cs() -> None:
            # All at once, as after a power cut: each waits for its own start-up scan.
            with concurrent.futures.ThreadPoolExecutor(servers) as pool:
                list(pool.map(lambda p: cluster.start("cs", p.id), [p for p in cluster.processes if p.role == "cs"]))
            cluster.save()  # the threads each saved the state file; once more with every PID

        out["first"] = phase(cluster, metrics, n, servers, start_cs)
        out["scan"] = [_scan_seconds(d) for d in cs_dirs]
        print(f"registered: {out['first']}; scans {out['scan']}", flush=True)
        old = _master(cluster)
        assert old is not None
        out["second"] = phase(cluster, metrics, n, servers, lambda: cluster.kill("mds", old, signal.SIGKILL))
        out["new_master"] = _master(cluster)
        print(f"after a master change (MDS#{old} killed, MDS#{out['new_master']} master): {out['second']}",
              flush=True)
    finally:
        cluster.stop_all()
    return out


def _master(cluster: LocalCluster) -> int | None:
    try:
        with cluster.client() as c:
            c.client.mds.retry_for = 2.0
            return master_id(c)
    except ChunkFSError:
        return None


def _scan_seconds(cs_dir: Path) -> float | None:
    """The chunk server's start-up scan, from its log line (ChunkStore logs it)."""
    lines = log_seconds(cs_dir / LOG_FILE, r"scanned \d+ replica")
    if not lines:
        return None
    m = re.search(r"in ([\d.]+) s", lines[-1][1])
    return float(m.group(1)) if m else None


def report(r: dict[str, Any]) -> str:
    date = datetime.date.today().isoformat()
    lines = [
        f"## Registration at {r['n']:,} replicas per chunk server (`bench/bench_register.py`)",
        "",
        f"Recorded {date} on 2 cores ({platform.machine()}), Python {platform.python_version()}, on a shared "
        "machine (other work was running: figures are noisy, take them as orders of magnitude). "
        f"`.venv/bin/python bench/bench_register.py --replicas {r['n']} --servers {r['servers']} --record`: "
        f"3 MDS and {r['servers']} chunk servers on 127.0.0.1, 1 MiB chunks, every chunk on every server. "
        "The chunks were loaded into the master's store through the state machine's own apply path "
        "(synthetic committed entries, not the network) and each chunk server's directory holds one empty "
        "file per replica, named as the store names them (its start-up scan reads names only).",
        "",
        "| phase | replicas per server | seconds until every replica is known | chunk-server start-up scan |",
        "| --- | ---: | ---: | ---: |",
        f"| first start of the chunk servers | {r['n']:,} | {r['first']['seconds']:.1f} | "
        + ", ".join("n/a" if s is None else f"{s:.1f} s" for s in r["scan"]) + " |",
        f"| after `kill -9` of the master (MDS#{r.get('new_master')} took over) | {r['n']:,} | "
        f"{r['second']['seconds']:.1f} | — |",
        "",
        "Worst event-loop lag of each MDS during each phase (the bucket of its loop-lag histogram):",
        "",
        "| MDS | first registration | after the master change |",
        "| --- | --- | --- |",
    ]
    for node in sorted(r["first"]["lag"]):
        lines.append(f"| {node} | {r['first']['lag'][node]} | {r['second']['lag'].get(node, 'n/a')} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=1_000_000, help="replicas per chunk server")
    parser.add_argument("--servers", type=int, default=3, help="chunk servers (each holds every chunk)")
    parser.add_argument("--dir", type=Path, default=None, help="where to put the cluster (a temporary folder)")
    parser.add_argument("--record", action="store_true", help="write the figures into SCALE.md")
    args = parser.parse_args()
    with scratch_dir("chunkfs-register-", args.dir) as tmp:
        result = run(tmp, args.replicas, args.servers)
    text = report(result)
    print(text)
    if args.record:
        update_benchmarks("register", text, file="SCALE.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
