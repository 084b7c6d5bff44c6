"""Freeze one chunk server under a VM-like writer on the mount; report the longest stall and check every byte.

Writes MOUNT/img (64 MiB, O_DIRECT), then 4 KiB random O_DIRECT writes one at a
time for 50 s; the process PID (a chunk server you started) is stopped with
SIGSTOP at 8 s and resumed after `--freeze` seconds.  Then every byte is read
back and compared with what was written.  RELIABILITY.md has the figures.

    python bench/probe_frozen_cs.py MOUNT PID [--freeze 25]
"""

from __future__ import annotations

import argparse
import mmap
import os
import random
import signal
import time

SIZE = 64 << 20
BIG = 1 << 20
SMALL = 4096
FREEZE_AT = 8.0
RUN_FOR = 50.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mount")
    parser.add_argument("pid", type=int, help="the chunk server to freeze")
    parser.add_argument("--freeze", type=float, default=25.0, help="seconds it stays stopped (default 25)")
    args = parser.parse_args()
    rng = random.Random(7)
    expected = bytearray(SIZE)
    big, small = mmap.mmap(-1, BIG), mmap.mmap(-1, SMALL)  # O_DIRECT wants aligned buffers: mapped pages
    fd = os.open(os.path.join(args.mount, "img"), os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o644)
    for off in range(0, SIZE, BIG):
        big[:] = expected[off:off + BIG] = rng.randbytes(BIG)
        os.pwrite(fd, big, off)
    os.fsync(fd)
    latencies: list[float] = []
    errors, frozen, resumed, start = 0, False, False, time.monotonic()
    try:
        while time.monotonic() - start < RUN_FOR:
            now = time.monotonic() - start
            if not frozen and now >= FREEZE_AT:
                os.kill(args.pid, signal.SIGSTOP)
                frozen = True
                print(f"stopped PID {args.pid} at {now:.1f} s", flush=True)
            if frozen and not resumed and now >= FREEZE_AT + args.freeze:
                os.kill(args.pid, signal.SIGCONT)
                resumed = True
                print(f"resumed it at {now:.1f} s", flush=True)
            off = rng.randrange(SIZE // SMALL) * SMALL
            piece = rng.randbytes(SMALL)
            small[:] = piece
            began = time.monotonic()
            try:
                os.pwrite(fd, small, off)
                expected[off:off + SMALL] = piece
            except OSError as exc:
                errors += 1
                print(f"write at {off} failed: {exc}", flush=True)
            took = time.monotonic() - began
            latencies.append(took)
            if took > 0.5:
                print(f"a write took {took:.2f} s at {began - start:.1f} s", flush=True)
    finally:
        if frozen and not resumed:
            os.kill(args.pid, signal.SIGCONT)
    os.fsync(fd)
    os.close(fd)
    fd = os.open(os.path.join(args.mount, "img"), os.O_RDONLY | os.O_DIRECT)
    differing = sum(os.preadv(fd, [big], off) != BIG or big[:] != expected[off:off + BIG]
                    for off in range(0, SIZE, BIG))
    os.close(fd)
    latencies.sort()
    print(f"{len(latencies)} writes, {errors} failed, longest {latencies[-1]:.2f} s, "
          f"p99.9 {latencies[int(len(latencies) * 0.999)] * 1e3:.1f} ms; MiB differing: {differing}")
    return 1 if errors or differing else 0


if __name__ == "__main__":
    raise SystemExit(main())
