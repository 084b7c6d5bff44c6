"""What a replication tick, a `stat`/`statfs` and a /metrics scrape cost the master at 10^3 .. 10^6 chunks.

    .venv/bin/python bench/bench_master_scale.py [--sizes 1000,10000,100000,1000000] [--no-record]

No network and no other process: for each size N it loads N chunks into a
`MetadataStore` through the state machine's own apply path (synthetic
committed entries: 3 chunk servers, files of 1,000 chunks each at
replicas=3, every chunk on all three), then stands the real replication
monitor, `MetadataServer.cluster_stat`/`_on_cluster_stat` and the /metrics
collector over it, with the three chunk servers "connected" and holding every
replica (a stand-in for the rest of the master: no Raft, no sockets).  It
times, as medians of several runs:

- **stat / statfs**: the master's side of ``CLUSTER_STAT`` (what ``stat``,
  ``top``, the dashboard and each mount's ``statfs`` ask);
- **scrape**: rendering ``/metrics``;
- **tick**: one pass of the replication monitor with nothing to do;
- **old stat**: what one stat cost before (a pass over every chunk in Python,
  as the old ``ReplicationMonitor.report`` did), for comparison;
- **catch-up**: judging every chunk again, as a new master does (in slices of
  `SLICE` chunks with the loop turning between them; the worst slice is the
  longest the loop is held), and the same after one chunk server goes
  offline (its chunks only), with a stat and a tick while it is offline.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_client import update_benchmarks  # noqa: E402

from chunkfs.common.errors import ChunkFSError  # noqa: E402
from chunkfs.mds import replication  # noqa: E402
from chunkfs.mds.chunks import ReplicaSets  # noqa: E402
from chunkfs.mds.cluster_view import ClusterView  # noqa: E402
from chunkfs.mds.domains import crowded  # noqa: E402
from chunkfs.mds.health import HEALTH_KEYS  # noqa: E402
from chunkfs.mds.health_index import SLICE  # noqa: E402
from chunkfs.mds.metrics import MdsMetrics  # noqa: E402
from chunkfs.mds.server import LiveServer, MetadataServer  # noqa: E402
from chunkfs.mds.store import MetadataStore, encode_command  # noqa: E402
from chunkfs.protocol.messages import ROOT_INO  # noqa: E402

CHUNK = 1 << 20
PER_FILE = 1000
SERVERS = (1, 2, 3)


class FakeMaster:
    """The parts of MetadataServer that the monitor, cluster_stat and the metrics collector use."""

    def __init__(self, store: MetadataStore) -> None:
        self.store = store
        self.live: dict[int, LiveServer] = {}
        self.node = SimpleNamespace(
            node_id=1, addr="127.0.0.1:9600", metrics_addr="",
            cluster=SimpleNamespace(name="bench", uuid="bench", chunk_size=CHUNK))
        self.raft = SimpleNamespace(core=None, is_leader=lambda: True)
        self.log = SimpleNamespace(members=lambda: [{"id": 1, "role": "master", "addr": self.node.addr}],
                                   read_barrier=self._nothing)
        self.rpc = SimpleNamespace(connections=[])
        self.master_since = time.monotonic() - 3600
        self.chunks = ReplicaSets(self.live, self.propose, self._no_call, self.spawn)
        self.healing = replication.ReplicationMonitor(self)  # type: ignore[arg-type]
        self.chunks.on_change = self.healing.touch
        self.view = ClusterView(self)  # type: ignore[arg-type]
        self.metrics = MdsMetrics(self)  # type: ignore[arg-type]

    cluster_stat = MetadataServer.cluster_stat

    async def _nothing(self) -> None:
        return None

    async def event(self, level: str, message: str) -> None:
        return None

    async def propose(self, op: str, **args: Any) -> Any:
        raise AssertionError(f"the benchmark commits nothing through the master ({op})")

    async def _no_call(self, cs_id: int, msg: Any, header: dict[str, Any]) -> dict[str, Any]:
        raise AssertionError("the benchmark sends nothing to chunk servers")

    def spawn(self, coro: Any) -> None:
        coro.close()  # no copies in a benchmark

    def heartbeat(self) -> None:
        now = time.monotonic()
        for server in self.live.values():
            server.last_seen = now


def load(store: MetadataStore, n: int) -> float:
    """N chunks through apply, as committed log entries would bring them; returns seconds."""
    index = 0

    def apply(op: str, **args: Any) -> Any:
        nonlocal index
        index += 1
        return store.apply(index, 1, encode_command(op, **args))

    started = time.perf_counter()
    for cs in SERVERS:
        apply("register_cs", cs_id=cs, addr=f"127.0.0.1:{9700 + cs}", host=f"host{cs}", time=1.0)
    ino = 0
    for i in range(n):
        if i % PER_FILE == 0:
            ino = apply("create", parent=ROOT_INO, name=f"f{i // PER_FILE}", mode=0o644, time=1.0,
                        exclusive=True)["attr"]["ino"]
        apply("alloc_chunk", ino=ino, index=i % PER_FILE, replicas=list(SERVERS))
    return time.perf_counter() - started


def old_stat(master: FakeMaster) -> float:
    """One pass over every chunk in Python, as the old report() did on every stat and tick."""
    healing = master.healing
    states = healing.compute_states()
    attrs: dict[int, dict[str, Any]] = {}
    counts = dict.fromkeys(HEALTH_KEYS, 0)
    started = time.perf_counter()
    for chunk in master.store.all_chunks():
        try:
            h = healing.health(chunk, attrs, states)
        except ChunkFSError:
            continue
        counts[h.status] += 1
        places = [p for cs in h.good if (p := healing.place_of(cs)) is not None]
        crowded(places, attrs[chunk.ino].get("failure_domain", "host"))
    return time.perf_counter() - started


def catch_up(master: FakeMaster) -> tuple[float, float]:
    """Judge what changed until nothing is left, slice by slice: (total seconds, worst slice)."""
    index = master.healing.index
    total = worst = 0.0
    for _ in range(10_000_000):
        master.heartbeat()  # a real master reads heartbeats between slices
        started = time.perf_counter()
        index.observe()
        done = index.settle_some(SLICE)
        spent = time.perf_counter() - started
        total += spent
        worst = max(worst, spent)
        if done:
            return total, worst
    raise RuntimeError("no catch-up")


def median_time(fn: Any, runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def measure(n: int, tmp: Path, with_old: bool) -> dict[str, Any]:
    store = MetadataStore(tmp / f"m{n}.db", CHUNK)
    out: dict[str, Any] = {"n": n}
    out["load"] = load(store, n)
    master = FakeMaster(store)
    ids = [c.chunk_id for c in store.all_chunks()]
    for cs in SERVERS:
        server = LiveServer(cs, f"127.0.0.1:{9700 + cs}", f"host{cs}", None, total=1 << 50,  # type: ignore[arg-type]
                            free=1 << 49)
        server.replicas = set(ids)
        master.live[cs] = server
        master.healing.on_register(cs, "", 0)
    healing = master.healing
    healing.index.reset()
    healing.index.active = True
    master.heartbeat()
    out["catch_up"], out["catch_up_worst"] = catch_up(master)  # a new master: every chunk once per server
    healing._sweep_after = None
    healing._shape_changed = time.monotonic() - 3600
    stat = await MetadataServer._on_cluster_stat(master, None, {})  # type: ignore[arg-type]
    assert stat["stat"]["chunks"]["healthy"] == n, stat["stat"]["chunks"]
    runs = 20

    async def timed(coro_fn: Any) -> float:
        times = []
        for _ in range(runs):
            master.heartbeat()
            started = time.perf_counter()
            await coro_fn()
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    out["stat"] = await timed(lambda: MetadataServer._on_cluster_stat(master, None, {}))  # type: ignore[arg-type]
    out["scrape"] = await timed(master.metrics._metrics)
    out["tick"] = await timed(healing._tick)
    if with_old:
        master.heartbeat()
        out["old_stat"] = min(old_stat(master) for _ in range(1 if n >= 100_000 else 3))
    # One chunk server goes offline (silent past cs-offline-timeout): only its chunks are judged again.
    gone = master.live.pop(3)
    healing.silent_since[3] = time.monotonic() - 10_000
    master.heartbeat()
    out["offline_catch_up"], out["offline_worst"] = catch_up(master)
    counts = (await MetadataServer._on_cluster_stat(master, None, {}))["stat"]["chunks"]  # type: ignore[arg-type]
    assert counts["healthy"] == 0 and counts["degraded"] == n, counts
    out["offline_stat"] = await timed(lambda: MetadataServer._on_cluster_stat(master, None, {}))  # type: ignore
    out["offline_tick"] = await timed(healing._tick)
    master.live[3] = gone
    healing.silent_since.pop(3, None)
    store.close()
    return out


def ms(seconds: float) -> str:
    value = seconds * 1000
    return f"{value:,.2f}" if value < 10 else f"{value:,.0f}"


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| chunks | load (µs per alloc) | stat / statfs (ms) | /metrics scrape (ms) | tick, idle (ms) | "
        "old stat: full pass (ms) | new-master catch-up (s) | worst slice (ms) | one CS offline: catch-up (s) | "
        "worst slice (ms) | stat (ms) | tick (ms) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        old = ms(r["old_stat"]) if "old_stat" in r else "—"
        lines.append(
            f"| {r['n']:,} | {r['load'] / r['n'] * 1e6:,.0f} | {ms(r['stat'])} | {ms(r['scrape'])} | {ms(r['tick'])} | "
            f"{old} | {r['catch_up']:,.1f} | {ms(r['catch_up_worst'])} | {r['offline_catch_up']:,.1f} | "
            f"{ms(r['offline_worst'])} | {ms(r['offline_stat'])} | {ms(r['offline_tick'])} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000", help="comma-separated chunk counts")
    parser.add_argument("--old-max", type=int, default=1_000_000, help="largest size to time the old full pass at")
    parser.add_argument("--note", default="", help="a sentence added under the table (e.g. the machine's load)")
    parser.add_argument("--no-record", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    results = []
    with tempfile.TemporaryDirectory(prefix="chunkfs-bench-") as tmp:
        for n in sizes:
            r = asyncio.run(measure(n, Path(tmp), n <= args.old_max))
            results.append(r)
            print(f"{n:,} chunks: " + ", ".join(f"{k}={v:.4f}" for k, v in r.items() if k != "n"), flush=True)
    body = table(results)
    print(body)
    if args.no_record:
        return 0
    today = datetime.date.today().isoformat()
    update_benchmarks("master-scale", "\n".join([
        "## The master at 10^3-10^6 chunks (`bench/bench_master_scale.py`)",
        "",
        f"Recorded {today} on {os.cpu_count()} cores, Python {platform.python_version()}. The store is loaded "
        "through the state machine's own apply path (synthetic committed entries, not the network): 3 chunk "
        f"servers, files of {PER_FILE:,} chunks, every chunk on all three. Times are the master's side only "
        "(no Raft round trip, no sockets), medians of 20 runs; `stat / statfs` is the `CLUSTER_STAT` handler "
        "that `stat`, `top`, the dashboard and each mount's `statfs` call. *Old stat* is one pass over every "
        "chunk in Python, which is what every stat, scrape, statfs and tick cost before the health index. "
        f"Catch-up is done in slices of {SLICE:,} chunks with the event loop turning between them; the worst "
        "slice is the longest the loop is held.",
        "",
        body,
        *(["", args.note] if args.note else []),
    ]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
