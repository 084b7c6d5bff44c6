"""How long the repair planner (mds/planner.py) takes to plan a recovery, on simulated clusters.

One command: ``.venv/bin/python bench/bench_planner.py`` (``--no-record`` to leave SCALE.md alone).
No network, no store, no other process: the planner alone, as the replication monitor calls it.

The cluster is 1,000 chunk servers in 5 rows of 10 racks of 20 (free space ~1 TiB each, varied),
files with ``replicas=3:2`` and ``failure-domain=rack``.

1. *A lost server holding 10^5 replicas*: the 10^5 chunks it held, each with two good replicas in
   two other racks, are planned at once: every copy placed (no per-server limit), and once with the
   default limits (``replication-per-cs`` 2, ``replication-max`` 16: what one monitor pass starts)
   and with ``replication-max`` 1,024 (the largest setting).
2. *10^7 chunks, a whole rack lost*: 10^7 chunks placed (3 racks each) in a flat array, one rack of
   20 servers lost, the chunks below their goal found by a scan (timed apart: the master finds them
   through its index by chunk server instead), and all their copies planned.

Time is wall-clock of one run on a shared machine (best of `--repeat` for case 1); memory is the
process's peak resident set.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import gc
import random
import resource
import sys
import time
from array import array
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_client import update_benchmarks  # noqa: E402

from chunkfs.mds.domains import domain_key  # noqa: E402
from chunkfs.mds.planner import Need, Planner, Server  # noqa: E402
from chunkfs.testing.racks import racked_servers  # noqa: E402

CHUNK = 256 << 20


def racks_of(servers: list[Server]) -> dict[str, list[int]]:
    by_rack: dict[str, list[int]] = collections.defaultdict(list)
    for s in servers:
        by_rack[domain_key(s.place, "rack")].append(s.cs_id)
    return by_rack


def lost_server_needs(servers: list[Server], lost: int, count: int, rng: random.Random) -> list[Need]:
    """The chunks a lost server held: each had two more replicas, in two other racks."""
    by_rack = racks_of(servers)
    rack_of = {cs: r for r, ids in by_rack.items() for cs in ids}
    others = [ids for r, ids in by_rack.items() if r != rack_of[lost]]
    needs = []
    for chunk in range(count):
        a, b = rng.sample(others, 2)
        good = (a[rng.randrange(len(a))], b[rng.randrange(len(b))])
        needs.append(Need(chunk, good, 3, 2, failure_domain="rack", missing=1))
    return needs


def plan(servers: list[Server], needs: list[Need], per_server: int | None, max_ops: int | None) -> tuple[float, int]:
    gc.collect()
    started = time.perf_counter()
    result = Planner(servers, CHUNK, per_server=per_server, max_ops=max_ops, rng=random.Random(1)).plan(needs)
    took = time.perf_counter() - started
    assert not result.blocked
    return took, len(result.ops)


def case_lost_server(count: int, repeat: int) -> list[str]:
    rng = random.Random(5)
    servers = racked_servers(rng)
    lost = servers[17].cs_id
    alive = [s for s in servers if s.cs_id != lost]
    needs = lost_server_needs(servers, lost, count, rng)
    rows = []
    for label, per_server, max_ops in (("all copies (no limit)", None, None),
                                       ("one pass, replication-max 1,024, per-cs 2", 2, 1024),
                                       ("one pass, defaults (max 16, per-cs 2)", 2, 16)):
        best, ops = min(plan(alive, needs, per_server, max_ops) for _ in range(repeat))
        rows.append(f"| lost server, {count:,} replicas | {label} | {ops:,} | {best * 1000:,.0f} ms |")
        print(rows[-1], flush=True)
    return rows


def case_ten_million(chunks: int) -> list[str]:
    rng = random.Random(6)
    servers = racked_servers(rng)
    racks = list(racks_of(servers).values())
    started = time.perf_counter()
    replicas = array("H")
    for _ in range(chunks):
        for rack in rng.sample(racks, 3):
            replicas.append(rack[rng.randrange(len(rack))])
    populate = time.perf_counter() - started
    lost = set(racks[7])
    started = time.perf_counter()
    needs = []
    for chunk in range(chunks):
        listed = replicas[3 * chunk:3 * chunk + 3]
        if lost.isdisjoint(listed):
            continue
        good = tuple(cs for cs in listed if cs not in lost)
        needs.append(Need(chunk, good, 3, 2, failure_domain="rack", missing=3 - len(good)))
    scan = time.perf_counter() - started
    alive = [s for s in servers if s.cs_id not in lost]
    took, ops = plan(alive, needs, None, None)
    print(f"10^7: populated in {populate:.0f} s, scan {scan:.1f} s, {len(needs):,} chunks to plan", flush=True)
    return [f"| {chunks:,} chunks, a rack of {len(lost)} servers lost | all copies (no limit) | {ops:,} | "
            f"{took * 1000:,.0f} ms (finding the {len(needs):,} chunks by a scan of the array: {scan:.1f} s, "
            "not the planner's) |"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lost-replicas", type=int, default=100_000)
    parser.add_argument("--chunks", type=int, default=10_000_000, help="the big case (0: skip it)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-record", action="store_true", help="print only; leave SCALE.md alone")
    args = parser.parse_args()
    rows = case_lost_server(args.lost_replicas, args.repeat)
    if args.chunks:
        rows += case_ten_million(args.chunks)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    body = "\n".join([
        "## The repair planner (`mds/planner.py`)",
        "",
        f"`.venv/bin/python bench/bench_planner.py` — {datetime.date.today().isoformat()}, a shared machine "
        "with 2 cores (Python " + ".".join(map(str, sys.version_info[:3])) + ").",
        "",
        "What is measured: the planner alone (no network, no store), from the server list and the chunks "
        "that need work to the list of copies, on a simulated cluster of 1,000 chunk servers in 5 rows of "
        "10 racks of 20, files `replicas=3:2`, `failure-domain=rack`. Time is wall-clock, best of "
        f"{args.repeat} for the lost server; it includes building the planner's view of the 1,000 servers. "
        "That every copy goes to a rack the chunk does not use yet, and the limits, are checked by "
        "tests/unit/mds/test_mds_planner.py, not here. A pass with the defaults still sorts all 10^5 chunks "
        "(most of its time); the monitor hands it at most 2,000 per pass.",
        "",
        "| case | plan | copies planned | time |",
        "| --- | --- | ---: | ---: |",
        *rows,
        "",
        f"Peak memory of the benchmark process: {peak:,.0f} MiB (mostly the simulated 10^7-chunk map).",
    ])
    print(body)
    if not args.no_record:
        update_benchmarks("planner", body, file="SCALE.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
