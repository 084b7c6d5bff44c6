"""A Raft snapshot of a big metadata store: how long it takes, and what it costs the event loop.

    .venv/bin/python bench/bench_snapshot.py [--files 200000] [--record]

Builds a metadata store of `--files` files with a chunk each through the
state machine's own apply path (synthetic committed entries: no network, no
Raft), then on an asyncio loop that keeps applying creates and samples its
own lag every 5 ms:

- takes a snapshot the way the master does now (`snapshot_to`: SQLite online
  backup into a file, in a worker thread), and
- for comparison, the way it did before (`serialize()` of the whole store into
  memory, on the loop), whose duration is the stall it caused,
- restores the image the way a follower installs one.

It prints one table; ``--record`` writes it into RELIABILITY.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from bench_client import update_benchmarks  # noqa: E402

from chunkfs.mds.store import MetadataStore, encode_command  # noqa: E402
from chunkfs.protocol.messages import ROOT_INO  # noqa: E402

CHUNK = 64 << 20
PER_DIR = 10_000
#: Creates applied between two turns of the loop (about 2 ms of work).
BATCH = 4


class Applier:
    """Applies commands with increasing indexes, as the Raft log does."""

    def __init__(self, store: MetadataStore) -> None:
        self.store = store
        self.index = store.applied_index
        self.dirs: list[int] = []
        self.files = 0

    def __call__(self, op: str, **args: object) -> dict:
        self.index += 1
        return self.store.apply(self.index, 1, encode_command(op, **args))

    def create_file(self) -> None:
        if self.files % PER_DIR == 0:
            self.dirs.append(int(self("mkdir", parent=ROOT_INO, name=f"d{len(self.dirs)}", mode=0o755,
                                      time=1.0)["ino"]))
        ino = int(self("create", parent=self.dirs[-1], name=f"f{self.files}", mode=0o644, time=1.0,
                       exclusive=True)["attr"]["ino"])
        self("alloc_chunk", ino=ino, index=0, replicas=[1, 2, 3])
        self.files += 1


async def lag_sampler(worst: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        await asyncio.sleep(0.005)
        worst[0] = max(worst[0], time.perf_counter() - started - 0.005)


async def applying(apply: Applier, until: asyncio.Future[object] | float) -> int:
    """Apply creates in small batches until `until` (a task done, or a perf_counter time); returns how many."""
    applied = 0
    while not (until.done() if isinstance(until, asyncio.Future) else time.perf_counter() >= until):
        apply.create_file()
        applied += 1
        if applied % BATCH == 0:
            await asyncio.sleep(0)
    return applied


async def measure(store: MetadataStore, apply: Applier, directory: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    worst = [0.0]
    stop = asyncio.Event()
    sampler = asyncio.create_task(lag_sampler(worst, stop))
    await applying(apply, time.perf_counter() + 2.0)
    out["baseline_lag_ms"] = worst[0] * 1000
    worst[0] = 0.0
    image = directory / "image.db"
    started = time.perf_counter()
    task = asyncio.ensure_future(asyncio.to_thread(store.snapshot_to, image))
    applied = await applying(apply, task)  # the loop goes on applying while the copy runs
    index = await task
    out["snapshot_s"] = time.perf_counter() - started
    out["applied_during"] = applied
    out["lag_ms"] = worst[0] * 1000
    out["image_mib"] = image.stat().st_size / (1 << 20)
    stop.set()
    await sampler
    started = time.perf_counter()
    data = store.db.serialize()
    out["serialize_s"] = time.perf_counter() - started
    out["serialize_mib"] = len(data) / (1 << 20)
    del data
    started = time.perf_counter()
    copy = directory / "restore.db"
    shutil.copyfile(image, copy)  # the follower keeps the image as its own snapshot, and restores a copy
    out["restore_copy_s"] = time.perf_counter() - started  # in a worker thread on a follower
    store.checkpoint()  # as the master's checkpointer does every 2 s
    started = time.perf_counter()
    store.restore(copy, index)
    out["restore_s"] = time.perf_counter() - started  # on the loop
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=200_000)
    parser.add_argument("--dir", type=Path, default=None, help="where to build the store (default: a temporary folder)")
    parser.add_argument("--record", action="store_true", help="write the table into RELIABILITY.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="chunkfs-snap-", dir=args.dir) as tmp:
        directory = Path(tmp)
        store = MetadataStore(directory / "metadata.sqlite", CHUNK)
        apply = Applier(store)
        started = time.perf_counter()
        for i in range(args.files):
            apply.create_file()
            if i % 2_000 == 1_999:
                store.checkpoint()  # as the master does every 2 s
            if i % 50_000 == 49_999:
                print(f"  {i + 1:,} files, {time.perf_counter() - started:.0f} s", file=sys.stderr)
        build_s = time.perf_counter() - started
        store.checkpoint()
        db_mib = (directory / "metadata.sqlite").stat().st_size / (1 << 20)
        figures = asyncio.run(measure(store, apply, directory))
        store.close()
    body = "\n".join([
        "## A snapshot of a big store (`bench/bench_snapshot.py`)", "",
        f"Recorded {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores: a store of {args.files:,} files with a "
        f"chunk each, loaded through the state machine's apply path ({args.files / build_s:,.0f} files/s, "
        f"{db_mib:,.0f} MiB), then snapshotted while the same loop kept applying creates "
        f"({figures['applied_during']:,.0f} during the copy).", "",
        f"The loop's worst lag while only applying, for comparison: {figures['baseline_lag_ms']:.0f} ms.", "",
        "| way | time (s) | image (MiB) | worst event-loop lag (ms) |",
        "| --- | ---: | ---: | ---: |",
        f"| now: `snapshot_to` (online backup into a file, worker thread) | {figures['snapshot_s']:.2f} | "
        f"{figures['image_mib']:,.0f} | {figures['lag_ms']:.0f} |",
        f"| before: `serialize()` into memory, on the loop | {figures['serialize_s']:.2f} | "
        f"{figures['serialize_mib']:,.0f} | {figures['serialize_s'] * 1000:.0f} (all of it) |",
        f"| a follower installing the image: copying it (worker thread) | {figures['restore_copy_s']:.2f} | | |",
        f"| ... then putting the copy in place of its store (on the loop) | {figures['restore_s']:.2f} | | "
        f"{figures['restore_s'] * 1000:.0f} (all of it) |",
    ])
    print(body)
    if args.record:
        update_benchmarks("snapshot", body, file="RELIABILITY.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
