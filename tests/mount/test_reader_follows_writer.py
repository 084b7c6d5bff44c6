"""A process that follows a file another process of the same mount writes (a log shipper, `tail -f`
done with `fstat` and `pread`) reads exactly the bytes written, never zeros.

A buffered write copies its bytes into the kernel's page cache and then sends them to the mount;
the follower's `fstat` in that moment shows a new mtime, and the kernel drops the file's cached
pages.  The follower's next read then asked the mount for the page while the write was still on its
way to the chunk servers: the page came back without the write's bytes (zeros past the old end) and
the kernel kept it.  A read now waits for this mount's writes in flight that it covers.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

SECONDS = 2.5
LINES = 20_000


def _write_lines(path: str, until: float) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        for i in range(LINES):
            if time.time() > until:
                break
            os.write(fd, (f"line {i:06d} " + "y" * (i % 97) + "\n").encode())
    finally:
        os.close(fd)


def _follow(path: Path) -> tuple[bytes, int]:
    """Follow `path` while a writer process appends to it; what was read, and how many reads saw zeros."""
    path.touch()
    until = time.time() + SECONDS
    writer = multiprocessing.get_context("fork").Process(target=_write_lines, args=(str(path), until))
    writer.start()
    got = bytearray()
    zeros = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        deadline = time.monotonic() + SECONDS + 30
        while time.monotonic() < deadline:
            alive = writer.is_alive()
            size = os.fstat(fd).st_size
            if size > len(got):
                data = os.pread(fd, size - len(got), len(got))
                zeros += b"\0" in data
                got += data
            elif not alive:
                break
    finally:
        os.close(fd)
        writer.join(timeout=30)
    return bytes(got), zeros


def test_a_follower_of_a_file_being_written_in_the_same_mount_reads_no_zeros(make_cluster, mount) -> None:
    cluster = make_cluster(n_cs=3)
    mnt = mount(cluster)
    for round_ in range(2):
        path = mnt / f"follow{round_}.log"
        got, zeros = _follow(path)
        written = path.read_bytes()
        assert b"\0" not in written, "the file itself holds zeros"
        assert zeros == 0, f"round {round_}: {zeros} reads of the follower returned zeros"
        assert got == written, f"round {round_}: the follower read {len(got)} bytes that differ from the file"
