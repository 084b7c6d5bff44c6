"""Random file operations through the mount and on the local disk, compared after each one (fsx-style).

Writes at any offset and length (across chunk boundaries: 1 MiB chunks), reads, truncations up
and down, `posix_fallocate`, `copy_file_range` inside the file, writes and reads through a
short-lived mapping and a mapping kept open across the other operations, O_DIRECT writes and
reads on a second descriptor, fsync, close and reopen.  After each operation the size and every
byte must be what the local disk has; every call must succeed or fail alike.  A seed that fails
is printed with the last operations, so it can be replayed.
"""

from __future__ import annotations

import errno
import mmap
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .conftest import MiB

OPS = 250
MAX_SIZE = 3 * MiB
OPERATIONS = ("write", "write", "write", "read", "truncate", "fallocate", "mmap_write", "mmap_read", "fsync",
              "reopen", "copy", "direct_write", "direct_write", "direct_read", "kept_map")


class Pair:
    """One file on the mount and one on the local disk, with the same descriptors open on each."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self.fds = [os.open(p, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644) for p in paths]
        try:
            self.direct = [os.open(p, os.O_RDWR | os.O_DIRECT) for p in paths]
        except OSError as exc:  # a tmpfs under the test's folder has no O_DIRECT
            pytest.skip(f"O_DIRECT not available on {paths[1].parent}: {exc}")
        self.maps: list[mmap.mmap | None] = [None, None]
        self.log: list[tuple[Any, ...]] = []

    def both(self, what: str, call: Callable[[int], Any]) -> Any:
        """`call(i)` on the mount's side (0) and the local disk's (1): the same result or the same errno."""
        out = []
        for i in range(2):
            try:
                out.append(("ok", call(i)))
            except OSError as exc:
                out.append(("error", errno.errorcode.get(exc.errno or 0, exc.errno)))
        assert out[0] == out[1], f"{what}: mount {str(out[0])[:200]} local {str(out[1])[:200]}; last {self.log[-8:]}"
        return out[0][1]

    def check(self) -> None:
        sizes = [os.fstat(fd).st_size for fd in self.fds]
        assert sizes[0] == sizes[1], f"size: mount {sizes[0]} local {sizes[1]}; last {self.log[-8:]}"
        mine, theirs = (os.pread(fd, sizes[1] + 1, 0) for fd in self.fds)
        if mine != theirs:
            first = next((k for k, (a, b) in enumerate(zip(mine, theirs, strict=False)) if a != b), -1)
            pytest.fail(f"bytes differ from offset {first}; last {self.log[-8:]}")

    def drop_maps(self) -> None:
        for i, m in enumerate(self.maps):
            if m is not None:
                m.close()
                self.maps[i] = None

    def close(self) -> None:
        self.drop_maps()
        for fd in (*self.fds, *self.direct):
            os.close(fd)


def aligned(length: int) -> mmap.mmap:
    """A page-aligned buffer, as O_DIRECT needs."""
    return mmap.mmap(-1, length)


def step(pair: Pair, rng: random.Random) -> None:
    op = rng.choice(OPERATIONS)
    size = os.fstat(pair.fds[1]).st_size
    off = rng.randrange(MAX_SIZE)
    length = min(rng.choice([1, 7, 512, 4096, 4097, 65536, rng.randrange(1, 300_000)]), MAX_SIZE - off) or 1
    pair.log.append((op, off, length))
    fds = pair.fds
    if op == "write":
        data = rng.randbytes(length)
        pair.both(op, lambda i: os.pwrite(fds[i], data, off))
    elif op == "read":
        pair.both(op, lambda i: os.pread(fds[i], length, off))
    elif op == "truncate":
        pair.drop_maps()  # a kept mapping past the new end would fault
        pair.both(op, lambda i: os.ftruncate(fds[i], off))
    elif op == "fallocate":
        pair.both(op, lambda i: os.posix_fallocate(fds[i], off, length))
    elif op == "copy":
        src = rng.randrange(max(1, size))
        pair.both(op, lambda i: os.copy_file_range(fds[i], fds[i], length, src, off))
    elif op in ("direct_write", "direct_read"):
        start, count = off - off % 4096, max(4096, length - length % 4096)
        pair.log[-1] = (op, start, count)
        if op == "direct_write":
            buf = aligned(count)
            buf.write(rng.randbytes(count))
            pair.both(op, lambda i: os.pwritev(pair.direct[i], [buf], start))
        else:
            def direct_read(i: int) -> bytes:
                buf = aligned(count)
                return bytes(buf[:os.preadv(pair.direct[i], [buf], start)])
            pair.both(op, direct_read)
    elif op == "mmap_write" and size:
        start = rng.randrange(size)
        start -= start % mmap.ALLOCATIONGRANULARITY
        count = min(length, size - start)
        data = rng.randbytes(count)
        pair.log[-1] = (op, start, count)

        def map_write(i: int) -> None:
            with mmap.mmap(fds[i], count, offset=start) as m:
                m[:] = data
                m.flush()
        pair.both(op, map_write)
    elif op == "mmap_read" and size:
        def map_read(i: int) -> bytes:
            with mmap.mmap(fds[i], size, prot=mmap.PROT_READ) as m:
                return bytes(m[:])
        pair.both(op, map_read)
    elif op == "kept_map" and size >= MiB:
        for i in range(2):  # kept open across what follows: it must show every write made since
            if pair.maps[i] is None:
                pair.maps[i] = mmap.mmap(fds[i], MiB)
        assert bytes(pair.maps[0][:]) == bytes(pair.maps[1][:]), f"a kept mapping differs; last {pair.log[-8:]}"
    elif op == "fsync":
        pair.both(op, lambda i: os.fsync(fds[i]))
    elif op == "reopen":
        pair.drop_maps()
        for i in range(2):
            os.close(fds[i])
            fds[i] = os.open(pair.paths[i], os.O_RDWR)
    pair.check()


@pytest.mark.parametrize("seed", [1, 2])
def test_random_operations_match_the_local_disk(make_cluster, mount, tmp_path: Path, seed: int) -> None:
    cluster = make_cluster(n_cs=3, chunk_size=1 * MiB)
    mnt = mount(cluster)
    local = tmp_path / "local"
    local.mkdir()
    pair = Pair([mnt / "f", local / "f"])
    rng = random.Random(seed)
    try:
        for _ in range(OPS):
            step(pair, rng)
    finally:
        pair.close()
