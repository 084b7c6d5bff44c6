#!/usr/bin/env python3
"""Metadata with several processes at once, and SQLite commits, in the current folder: one JSON line.

    python3 meta_parallel.py [--procs 4] [--files 500] [--commits 200]

What `bench_vs_moosefs.py` runs as the MooseFS harness's ``cmd`` job, in a
fresh folder of each target (MooseFS, the ChunkFS mount, the local disk), so
the three are measured in the same run:

- `--procs` processes, each in a folder of its own, create `--files` empty
  files (``open(O_CREAT|O_EXCL)`` + ``close``, as the harness's meta_bench.py
  does), then stat them, then unlink them.  The phases start together (a
  barrier) and each phase's rate is all the processes' operations over the
  time from the common start to the last one's end;
- SQLite: `--commits` transactions of one row each, one at a time, in the
  default journal mode (DELETE) and in WAL, with SQLite's default
  ``synchronous`` (every commit durable).

Standard library only: the harness runs it with the system's python3.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sqlite3
import time
from multiprocessing.synchronize import Barrier

PHASES = ("create", "stat", "unlink")


def worker(folder: str, files: int, barrier: Barrier) -> None:
    os.mkdir(folder)
    names = [os.path.join(folder, f"f{i:06d}") for i in range(files)]
    barrier.wait()
    for name in names:
        os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    barrier.wait()
    for name in names:
        os.stat(name)
    barrier.wait()
    for name in names:
        os.unlink(name)
    barrier.wait()
    os.rmdir(folder)


def parallel(procs: int, files: int) -> dict[str, float]:
    """ops/s of each phase, all processes together."""
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(procs + 1)
    workers = [ctx.Process(target=worker, args=(f"p{i}", files, barrier)) for i in range(procs)]
    for w in workers:
        w.start()
    out: dict[str, float] = {}
    try:
        barrier.wait(timeout=300)
        for phase in PHASES:
            started = time.perf_counter()
            barrier.wait(timeout=900)
            out[f"{phase}_ops"] = round(procs * files / (time.perf_counter() - started), 1)
    finally:
        for w in workers:
            w.join(timeout=60)
            if w.is_alive():
                w.kill()
    if any(w.exitcode != 0 for w in workers):
        raise SystemExit(f"a worker failed: exit codes {[w.exitcode for w in workers]}")
    return out


def sqlite_commits(mode: str, commits: int) -> float:
    """Committed transactions per second."""
    path = f"bench-{mode}.db"
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute(f"PRAGMA journal_mode={mode}")
        db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
        row = os.urandom(100)
        started = time.perf_counter()
        for _ in range(commits):
            db.execute("BEGIN")
            db.execute("INSERT INTO t (v) VALUES (?)", (row,))
            db.execute("COMMIT")
        return round(commits / (time.perf_counter() - started), 1)
    finally:
        db.close()
        for suffix in ("", "-journal", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.unlink(path + suffix)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--files", type=int, default=500, help="files per process")
    parser.add_argument("--commits", type=int, default=200, help="SQLite transactions per journal mode")
    args = parser.parse_args()
    result: dict[str, float] = {"procs": args.procs, "files": args.files, "commits": args.commits}
    result.update(parallel(args.procs, args.files))
    result["sqlite_delete_tps"] = sqlite_commits("delete", args.commits)
    result["sqlite_wal_tps"] = sqlite_commits("wal", args.commits)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
