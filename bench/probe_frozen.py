"""Freeze one server (SIGSTOP) under a workload on the mount; report the longest stall and check every byte.

Two workloads, one at a time for 50 s; the process PID (a chunk server or a
metadata server you started) is stopped at 8 s and resumed after `--freeze`
seconds, and at the end everything acknowledged is read back:

- `image` (a VM's disk): MOUNT/img, 64 MiB written with O_DIRECT, then 4 KiB
  random O_DIRECT writes;
- `files` (metadata): new 4 KiB files in MOUNT/probe-files, each written,
  fsynced and closed.

RELIABILITY.md has the figures.

    python bench/probe_frozen.py MOUNT PID [--workload image|files] [--freeze 25]
"""

from __future__ import annotations

import argparse
import mmap
import os
import random
import signal
import time
from collections.abc import Callable

SIZE = 64 << 20
BIG = 1 << 20
SMALL = 4096
FREEZE_AT = 8.0
RUN_FOR = 50.0


class Image:
    """A VM disk: random 4 KiB O_DIRECT writes into a 64 MiB image, remembered to be checked."""

    def __init__(self, mount: str, rng: random.Random) -> None:
        self.path, self.rng = os.path.join(mount, "img"), rng
        self.expected = bytearray(SIZE)
        self.big, self.small = mmap.mmap(-1, BIG), mmap.mmap(-1, SMALL)  # O_DIRECT wants aligned buffers
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o644)
        for off in range(0, SIZE, BIG):
            self.big[:] = self.expected[off:off + BIG] = rng.randbytes(BIG)
            os.pwrite(self.fd, self.big, off)
        os.fsync(self.fd)

    def step(self) -> None:
        off = self.rng.randrange(SIZE // SMALL) * SMALL
        piece = self.rng.randbytes(SMALL)
        self.small[:] = piece
        os.pwrite(self.fd, self.small, off)
        self.expected[off:off + SMALL] = piece

    def differing(self) -> int:
        """MiB that read back different."""
        os.fsync(self.fd)
        os.close(self.fd)
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECT)
        try:
            return sum(os.preadv(fd, [self.big], off) != BIG or self.big[:] != self.expected[off:off + BIG]
                       for off in range(0, SIZE, BIG))
        finally:
            os.close(fd)


class Files:
    """New small files, each written, fsynced and closed before it counts as acknowledged."""

    def __init__(self, mount: str, rng: random.Random) -> None:
        self.dir, self.rng = os.path.join(mount, "probe-files"), rng
        os.makedirs(self.dir, exist_ok=True)
        self.acked: dict[str, bytes] = {}

    def step(self) -> None:
        path = os.path.join(self.dir, f"f{len(self.acked)}-{self.rng.getrandbits(32):08x}")
        data = self.rng.randbytes(SMALL)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.acked[path] = data

    def differing(self) -> int:
        """Acknowledged files missing or different."""
        bad = 0
        for path, data in self.acked.items():
            try:
                with open(path, "rb") as f:
                    bad += f.read() != data
            except OSError:
                bad += 1
        return bad


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mount")
    parser.add_argument("pid", type=int, help="the server to freeze")
    parser.add_argument("--workload", choices=("image", "files"), default="image")
    parser.add_argument("--freeze", type=float, default=25.0, help="seconds it stays stopped (default 25)")
    args = parser.parse_args()
    make: Callable[[str, random.Random], Image | Files] = Image if args.workload == "image" else Files
    work = make(args.mount, random.Random(7))
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
            began = time.monotonic()
            try:
                work.step()
            except OSError as exc:
                errors += 1
                print(f"failed at {began - start:.1f} s: {exc}", flush=True)
            took = time.monotonic() - began
            latencies.append(took)
            if took > 0.5:
                print(f"a step took {took:.2f} s at {began - start:.1f} s", flush=True)
    finally:
        if frozen and not resumed:
            os.kill(args.pid, signal.SIGCONT)
    differing = work.differing()
    latencies.sort()
    print(f"{len(latencies)} steps ({args.workload}), {errors} failed, longest {latencies[-1]:.2f} s, "
          f"p99.9 {latencies[int(len(latencies) * 0.999)] * 1e3:.1f} ms; differing: {differing}")
    return 1 if errors or differing else 0


if __name__ == "__main__":
    raise SystemExit(main())
