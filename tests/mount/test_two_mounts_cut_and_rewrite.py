"""Two mounts write a file whose chunk one of them cut away and made again (found by a probe of the mount).

Mount B keeps the chain it wrote a chunk through.  When A truncates the file
below that chunk (the chunk is deleted) and writes there again (a new chunk
at the same place), B's next write goes to the deleted chunk first, and its
chunk server answers "no replica on this server".  That says nothing about
the new chunk's replicas: the master must answer B with the new chunk's
chain, not drop a healthy replica of the new chunk (which then kept the old
version and served it to A's reads: A read its own old bytes and zeros where
B had written and closed).  And a reader whose map is older than a replica's
version asks the master for the current map before it tries the others.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from .conftest import MiB, chunkfs, write_and_close

CHUNK = 4 * MiB  # the make_cluster fixture's chunk size


def pread(path: Path, length: int, offset: int, flags: int = 0) -> bytes:
    fd = os.open(path, os.O_RDONLY | flags)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def test_a_write_through_a_deleted_chunks_chain_drops_no_replica_and_is_read_back(make_cluster, mount) -> None:
    cluster = make_cluster(n_cs=3)
    a, b = mount(cluster, "a"), mount(cluster, "b")
    for trial in range(3):
        name = f"f{trial}"
        (a / name).write_bytes(b"")
        write_and_close(b / name, b"o" * 2 * CHUNK, 0)  # B's chains for chunks 0 and 1
        os.truncate(a / name, CHUNK - 1000)  # A cuts chunk 1 away ...
        write_and_close(a / name, b"a" * 5000, CHUNK - 2000)  # ... and makes a new chunk 1
        write_and_close(b / name, b"b" * 40_000, CHUNK + 1000)  # B writes into it, then closes
        want = b"b" * 40_000
        assert pread(b / name, 40_000, CHUNK + 1000) == want
        got = pread(a / name, 40_000, CHUNK + 1000)
        assert got == want, f"trial {trial}: A read {got.count(b'a')} of its own old bytes and {got.count(0)} zeros"
        assert pread(a / name, 40_000, CHUNK + 1000, os.O_DIRECT) == want
        assert pread(a / name, 1000, CHUNK - 1000) == b"a" * 1000
    events = chunkfs("-c", cluster.name, "get-event").stdout
    assert "dropped" not in events, f"a healthy replica was dropped:\n{events}"


def test_a_write_inside_a_file_another_mount_cut_does_not_bring_back_its_old_size(make_cluster, mount) -> None:
    """B opened the file when it was long; A cuts it; B writes inside the new end and closes.

    B's close commits the end of what B wrote, not the size B saw at open:
    the file is 110 bytes, as on a local disk, not its old 2 chunks.
    """
    cluster = make_cluster(n_cs=3)
    a, b = mount(cluster, "a"), mount(cluster, "b")
    for trial in range(3):
        name = f"g{trial}"
        (a / name).write_bytes(b"x" * 2 * CHUNK)
        fd = os.open(b / name, os.O_RDWR)
        try:
            os.truncate(a / name, 10)
            assert os.pwrite(fd, b"B" * 10, 100) == 10
        finally:
            os.close(fd)
        fd = os.open(a / name, os.O_RDONLY)  # close-to-open: A opens after B closed
        try:
            assert os.fstat(fd).st_size == 110, f"trial {trial}"
        finally:
            os.close(fd)
        assert (a / name).read_bytes() == b"x" * 10 + bytes(90) + b"B" * 10
        assert (b / name).read_bytes() == b"x" * 10 + bytes(90) + b"B" * 10


def test_a_write_after_another_mounts_cut_returned_is_not_lost_with_the_cut_chunk(make_cluster, mount) -> None:
    """B holds the file open with a chain for chunk 1; A cuts chunk 1 away; B writes there at once.

    B's write starts after A's truncation returned, so it must outlive it, as on a local disk.
    The master answers a truncation only once the cut chunk's replicas are deleted: B's write
    finds none and asks for the chunk as it is now, instead of landing in a replica about to go
    (before, the deletion ran beside the answer and the write could win the race, then vanish).
    """
    cluster = make_cluster(n_cs=3)
    a, b = mount(cluster, "a"), mount(cluster, "b")
    for trial in range(5):
        name = f"g{trial}"
        (a / name).write_bytes(b"o" * 2 * CHUNK)
        fd = os.open(b / name, os.O_WRONLY | os.O_DIRECT)
        try:
            buf = bytearray(b"p" * 4096)
            os.pwrite(fd, buf, CHUNK + 4096)  # B's chain for chunk 1
            os.truncate(a / name, CHUNK - 4096)  # A cuts chunk 1 away
            buf[:] = b"q" * 4096
            os.pwrite(fd, buf, CHUNK + 8192)  # B writes into the cut-away range right after
            os.fsync(fd)
        finally:
            os.close(fd)
        got = pread(a / name, 4096, CHUNK + 8192)
        assert got == b"q" * 4096, f"trial {trial}: B's write after the cut read back as {got[:8]!r}..."
        assert pread(a / name, 4096, CHUNK + 4096) == bytes(4096)  # cut, and B did not write it again


def test_a_writers_close_after_another_mounts_cut_does_not_regrow_the_file_with_zeros(make_cluster, mount) -> None:
    """B wrote, A cut the file (truncate, or O_TRUNC and new bytes), then B closed (found by a probe).

    B's writes came before the cut: as on a local disk, the cut decides the size. Before, B's close
    committed the end of its writes, and the file grew back with zeros where the cut removed them.
    A logger that goes on appending after logrotate's copytruncate writes at the new end.
    """
    cluster = make_cluster(n_cs=3)
    a, b = mount(cluster, "a"), mount(cluster, "b")
    # The logger and copytruncate.
    (a / "app.log").write_bytes(b"")
    fd = os.open(b / "app.log", os.O_WRONLY | os.O_APPEND)
    try:
        for i in range(100):
            os.write(fd, b"log line %03d\n" % i)
        os.truncate(a / "app.log", 0)
        os.write(fd, b"after the rotation\n")
    finally:
        os.close(fd)
    assert (a / "app.log").read_bytes() == b"after the rotation\n"
    # A write inside the file, then a cut below it, to 0 and to the middle of it, and a rewrite.
    for what, cut, want in (
        ("truncate(0)", lambda p: os.truncate(p, 0), b""),
        ("truncate(55)", lambda p: os.truncate(p, 55), b"x" * 50 + b"B" * 5),
        ("O_TRUNC and new bytes", lambda p: p.write_bytes(b"A-new-content"), b"A-new-content"),
    ):
        name = f"h-{len(want)}"
        (a / name).write_bytes(b"x" * 100)
        fd = os.open(b / name, os.O_RDWR)
        try:
            assert os.pwrite(fd, b"B" * 10, 50) == 10
            if what == "truncate(55)":
                os.fsync(fd)  # committed or not, B's write comes before the cut
            cut(a / name)
        finally:
            os.close(fd)
        assert (a / name).read_bytes() == want, what
        assert (b / name).read_bytes() == want, what


def test_a_mount_without_the_kernels_long_cache_follows_cuts_too(make_cluster, mount) -> None:
    """B runs with cache_timeout=0; it still hears of A's cuts (a probe found its writes regrowing the
    file with zeros when it did not): its writes before a cut do not regrow the file, one after counts."""
    cluster = make_cluster(n_cs=3)
    a, b = mount(cluster, "a"), mount(cluster, "b", "cache_timeout=0")
    (a / "g").write_bytes(b"x" * 2 * CHUNK)
    fd = os.open(b / "g", os.O_RDWR)
    try:
        os.truncate(a / "g", 10)
        assert os.pwrite(fd, b"B" * 10, 100) == 10
    finally:
        os.close(fd)
    assert (a / "g").read_bytes() == b"x" * 10 + bytes(90) + b"B" * 10
    fd = os.open(b / "h", os.O_WRONLY | os.O_CREAT)
    try:
        os.write(fd, b"x" * 5000)
        os.truncate(a / "h", 0)
    finally:
        os.close(fd)
    assert (a / "h").read_bytes() == b""


def test_appends_on_one_mount_while_another_rewrites_the_file_with_o_trunc_do_not_fail(make_cluster, mount) -> None:
    """A rewrites a file over and over (`open(..., "w")`: O_TRUNC, one byte, close); B appends to it meanwhile.

    On a local disk every write succeeds.  B's write met a chunk A's O_TRUNC deleted, and the master,
    asked for the chunk there now, found the one it was working on cut away too while it waited (A's
    next rewrite): it answered "chunk no longer exists", and B's write failed with ENOENT (a probe:
    15 of 130 appends in 10 s).  Now the master looks again and answers with the chunk there then.
    """
    cluster = make_cluster(n_cs=3)
    a, b = mount(cluster, "a"), mount(cluster, "b")
    (a / "n").write_bytes(b"c")
    stop = time.monotonic() + 6
    errors: list[str] = []
    appends = 0

    def rewrite() -> None:
        while time.monotonic() < stop:
            (a / "n").write_bytes(b"c")

    writer = threading.Thread(target=rewrite)
    writer.start()
    try:
        while time.monotonic() < stop:
            fd = os.open(b / "n", os.O_WRONLY | os.O_APPEND)
            try:
                os.write(fd, b"x")
                appends += 1
            except OSError as exc:
                errors.append(exc.strerror or str(exc))
            finally:
                os.close(fd)
    finally:
        writer.join()
    assert appends > 10
    assert errors == [], f"{len(errors)} of {appends + len(errors)} appends failed: {sorted(set(errors))}"
