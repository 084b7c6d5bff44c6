"""Names and attributes the kernel keeps for long, kept true by the master's notices (kernel_cache.py).

Mount B looks at what mount A changes.  B's kernel is told to keep its
answers for a minute (`cache_timeout`), and we check that it does (no request
reaches B past the short timeouts), and that each of A's changes still shows
in B at once: the master's INVALIDATE notice has B's kernel drop the entry.
And when B's watch ends with its master, B's kernel forgets everything and
A's changes on the new master show too.
"""

from __future__ import annotations

import json
import mmap
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from chunkfs.testing.cluster import master_id, wait_for

#: Far beyond the short timeouts (1 s) and far beyond every wait below: an entry that is right
#: within this test's waits is right because a notice invalidated it, not because it expired.
LONG = "cache_timeout=600"
#: How long a change may take to show in the other mount (a notice's trip, the kernel's next ask).
SHOWS_WITHIN = 10.0


def kernel_requests(mnt: Path, steps: tuple[str, ...] = ("fuse.lookup", "fuse.getattr")) -> int:
    """Requests the kernel sent the mount so far (default: LOOKUP and GETATTR), from its timings (SIGUSR1)."""
    from chunkfs.client.fuse_session import TIMINGS_FILE, state_dir
    from chunkfs.common.daemon import read_pid

    sdir = state_dir(mnt)
    pid = read_pid(sdir)
    assert pid is not None
    path = sdir / TIMINGS_FILE
    path.unlink(missing_ok=True)
    os.kill(pid, signal.SIGUSR1)
    wait_for("the mount's timings", path.exists, timeout=10, pause=0.02)
    counts = json.loads(path.read_text())
    return sum(counts.get(step, {}).get("count", 0) for step in steps)


def shows(what: str, check: Callable[[], bool]) -> None:
    wait_for(what, check, timeout=SHOWS_WITHIN, pause=0.05)


def size_of(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def test_another_mounts_changes_show_at_once_while_the_kernel_keeps_answers_for_long(make_cluster, mount) -> None:
    cluster = make_cluster(n_cs=3)
    a, b = mount(cluster, "a"), mount(cluster, "b", LONG)
    (a / "d").mkdir()
    (a / "d" / "f").write_bytes(b"x" * 10)
    shows("the file in B", lambda: size_of(b / "d" / "f") == 10)
    assert not (b / "d" / "new").exists()  # a negative entry in B's kernel

    # Past the short timeouts, B's kernel still answers by itself: no request reaches B.  (An answer
    # given while a notice arrived is kept for the short time only: hence a few tries.)
    wait_for("B's kernel keeping answers for long", lambda: _kept(b, b / "d" / "f", b / "d"), timeout=30)
    assert (b / "d" / "f").stat().st_size == 10

    # Each change A makes shows in B, though B's kernel was told to keep the old answers for 600 s.
    (a / "d" / "f").write_bytes(b"y" * 20)
    shows("the new size in B", lambda: size_of(b / "d" / "f") == 20)
    assert (b / "d" / "f").read_bytes() == b"y" * 20
    os.chmod(a / "d" / "f", 0o600)
    shows("the new mode in B", lambda: stat.S_IMODE((b / "d" / "f").stat().st_mode) == 0o600)
    (a / "d" / "new").write_bytes(b"new")
    shows("the new name in B", lambda: (b / "d" / "new").exists())
    os.rename(a / "d" / "f", a / "d" / "g")
    shows("the rename in B", lambda: not (b / "d" / "f").exists() and size_of(b / "d" / "g") == 20)
    (a / "d" / "e").mkdir()
    shows("the new directory's link in B", lambda: (b / "d").stat().st_nlink == 3)
    (a / "d" / "g").unlink()
    shows("the unlink in B", lambda: not (b / "d" / "g").exists())
    assert sorted(os.listdir(b / "d")) == ["e", "new"]

    # B's own changes: A sees them too (A's short timeouts, or A's own notices).
    (b / "d" / "from-b").write_bytes(b"b")
    shows("B's file in A", lambda: size_of(a / "d" / "from-b") == 1)


def test_names_missing_from_a_directory_known_whole_are_not_asked_for(make_cluster, mount) -> None:
    cluster = make_cluster(n_cs=3)
    a, b = mount(cluster, "a"), mount(cluster, "b", LONG)
    lookups = ("mds.LOOKUP",)
    (b / "mine").mkdir()
    wait_for("B watching", lambda: _kept(b, b / "mine"), timeout=30)
    # B made it: creating names there asks the master nothing before each create.
    before = kernel_requests(b, lookups)
    for i in range(10):
        (b / "mine" / f"f{i}").write_bytes(b"")
    assert not (b / "mine" / "nothing").exists()
    assert kernel_requests(b, lookups) == before
    # A's name there shows in B all the same: the notice makes the directory unknown again.
    (a / "mine" / "from-a").write_bytes(b"a")
    shows("A's file in B's directory", lambda: size_of(b / "mine" / "from-a") == 1)
    # A directory B listed whole is known too, until A changes a name in it.
    (a / "theirs").mkdir()
    (a / "theirs" / "x").write_bytes(b"x")
    shows("A's directory in B", lambda: sorted(os.listdir(b / "theirs")) == ["x"])
    before = kernel_requests(b, lookups)
    assert not (b / "theirs" / "y").exists()
    if kernel_requests(b, lookups) != before:  # the listing raced a notice: list again, now quiet
        os.listdir(b / "theirs")
        before = kernel_requests(b, lookups)
        assert not (b / "theirs" / "y2").exists()
    assert kernel_requests(b, lookups) == before
    (a / "theirs" / "y").write_bytes(b"yy")
    shows("A's new name in B's listed directory", lambda: size_of(b / "theirs" / "y") == 2)


def test_a_new_master_ends_the_watch_and_the_kernel_forgets_what_it_kept(make_cluster, mount) -> None:
    cluster = make_cluster(n_cs=3, n_mds=3)
    a, b = mount(cluster, "a"), mount(cluster, "b", LONG)
    (a / "f").write_bytes(b"1")
    shows("the file in B", lambda: size_of(b / "f") == 1)
    with cluster.client() as client:
        old = master_id(client)
    cluster.kill("mds", old)
    # A changes it through the new master; B, which heard nothing from it yet, sees the change anyway.
    (a / "f").write_bytes(b"22")
    shows("A's change in B after the master changed", lambda: size_of(b / "f") == 2)
    (a / "g").write_bytes(b"333")
    shows("A's new file in B", lambda: size_of(b / "g") == 3)
    # And B watches the new master: its kernel keeps answers for long again, and notices arrive.
    wait_for("B's kernel keeping answers for long again", lambda: _kept(b, b / "g"), timeout=30)
    (a / "g").unlink()
    shows("the unlink in B through the new master", lambda: not (b / "g").exists())


def _kept(mnt: Path, *paths: Path) -> bool:
    """Whether, 1.5 s (past the short timeouts) after a stat, 20 more of `paths` reach the mount not at all."""
    for path in paths:
        path.stat()
    time.sleep(1.5)
    before = kernel_requests(mnt)
    for _ in range(20):
        for path in paths:
            path.stat()
    return kernel_requests(mnt) == before


def test_a_storm_of_changes_in_one_mount_converges_in_the_other(make_cluster, mount) -> None:
    """Random creates, writes, renames and unlinks in A while B keeps looking (listing, stat, lookups of
    names that come and go): afterwards B sees exactly what A sees, however the notices raced B's requests."""
    import random

    cluster = make_cluster(n_cs=3)
    a, b = mount(cluster, "a"), mount(cluster, "b", LONG)
    (a / "d").mkdir()
    shows("the directory in B", lambda: (b / "d").is_dir())
    rng = random.Random(7)
    names = [f"n{i}" for i in range(12)]
    for step in range(150):
        name, other = rng.choice(names), rng.choice(names)
        path = a / "d" / name
        op = rng.random()
        if op < 0.35:
            path.write_bytes(b"x" * rng.randrange(1, 50))
        elif op < 0.55 and path.exists():
            path.unlink()
        elif op < 0.75 and path.exists():
            os.rename(path, a / "d" / other)
        elif op < 0.85:
            (a / "d" / f"dir-{name}").mkdir(exist_ok=True)
        # B looks meanwhile: what it caches now is what the notices must correct.
        if step % 3 == 0:
            os.listdir(b / "d")
        size_of(b / "d" / rng.choice(names))

    def same() -> bool:
        want = {n: size_of(a / "d" / n) for n in os.listdir(a / "d")}
        have = {n: size_of(b / "d" / n) for n in os.listdir(b / "d")}
        gone = [n for n in names if n not in want and (b / "d" / n).exists()]
        return want == have and not gone

    shows("B's view of the directory to match A's", same)


def _two_mounts_a_watching(make_cluster, mount) -> tuple[Path, Path]:
    """Mounts A and B of a new cluster, with a folder "d", once A's kernel keeps answers for long."""
    cluster = make_cluster(n_cs=3)
    a, b = mount(cluster, "a"), mount(cluster, "b")
    (a / "d").mkdir()
    wait_for("A watching", lambda: _kept(a, a / "d"), timeout=30)
    return a, b


def test_an_open_files_attributes_are_answered_by_the_mount_and_stay_true(make_cluster, mount) -> None:
    """A database's fstat after each write is answered from what the master last said of the open
    file, without a round trip; another mount's change, and this mount's own rename and unlink
    (which move the file's ctime and nlink), still show at once."""
    a, b = _two_mounts_a_watching(make_cluster, mount)
    fd = os.open(a / "d" / "db", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.pwrite(fd, b"x" * 100, 0)
        os.fstat(fd)
        asked, answered = kernel_requests(a, ("mds.GETATTR",)), kernel_requests(a, ("fuse.getattr",))
        for i in range(1, 21):
            os.pwrite(fd, b"y" * 10, 1000 * i)
            assert os.fstat(fd).st_size == 1000 * i + 10
        assert kernel_requests(a, ("fuse.getattr",)) > answered  # the kernel asked the mount ...
        assert kernel_requests(a, ("mds.GETATTR",)) == asked  # ... which did not ask the master

        os.chmod(b / "d" / "db", 0o600)
        shows("B's chmod in A's fstat", lambda: stat.S_IMODE(os.fstat(fd).st_mode) == 0o600)
        before = os.fstat(fd).st_ctime_ns
        time.sleep(0.01)
        os.rename(a / "d" / "db", a / "d" / "db2")
        moved = os.fstat(fd)
        assert moved.st_ctime_ns > before and moved.st_nlink == 1
        time.sleep(0.01)
        os.unlink(a / "d" / "db2")
        gone = os.fstat(fd)
        assert gone.st_ctime_ns > moved.st_ctime_ns and gone.st_nlink == 0
        assert gone.st_size == 20010 and os.pread(fd, 10, 20000) == b"y" * 10
    finally:
        os.close(fd)


def test_what_this_mount_did_to_an_open_file_wins_over_an_older_answer_kept_for_it(make_cluster, mount) -> None:
    """A file held open here, and reopened with O_TRUNC or grown by another handle: stat, fstat and
    reads follow the truncation (an answer kept from before it must not bring the old size back);
    a time set, then a write, then a close: ctime stays the write's, as the kernel was told, and the
    master keeps that ctime (not its commit's)."""
    a, b = _two_mounts_a_watching(make_cluster, mount)
    path = a / "d" / "f"
    path.write_bytes(b"x" * 5000)
    held = os.open(path, os.O_RDWR)
    try:
        assert os.fstat(held).st_size == 5000  # the master's answer, kept for the open file
        os.close(os.open(path, os.O_WRONLY | os.O_TRUNC))
        assert os.fstat(held).st_size == 0 and path.stat().st_size == 0
        assert os.pread(held, 100, 0) == b""
        os.pwrite(held, b"y" * 10, 0)
        assert os.fstat(held).st_size == 10 and path.read_bytes() == b"y" * 10

        other = os.open(path, os.O_RDWR)
        os.utime(other, ns=(1_500_000_000_000_000_000, 1_600_000_000_000_000_000))
        time.sleep(0.01)
        os.pwrite(other, b"z", 10)
        told = os.fstat(other)
        os.close(other)  # commits the size, the write's mtime and the atime set before it
        for _ in range(3):
            now = os.fstat(held)
            assert (now.st_size, now.st_mtime_ns, now.st_ctime_ns) == (11, told.st_mtime_ns, told.st_ctime_ns)
            assert now.st_atime_ns == 1_500_000_000_000_000_000
            time.sleep(0.2)
        seen = (b / "d" / "f").stat()  # what the master keeps, as a mount that never saw the file gets it
        assert (seen.st_size, seen.st_mtime_ns, seen.st_ctime_ns) == (11, told.st_mtime_ns, told.st_ctime_ns)
    finally:
        os.close(held)


def test_a_directory_another_mount_removed_lists_empty_for_a_process_inside_it(make_cluster, mount) -> None:
    """A process in a directory another mount removes sees what it would on a local disk, once the
    notice is in: no links, and an empty listing (not even "." and "..")."""
    cluster = make_cluster(n_cs=3)
    a, b = mount(cluster, "a"), mount(cluster, "b")
    (a / "d").mkdir()
    shows("the directory in B", lambda: (b / "d").is_dir())
    probe = ("import os, sys, time\n"
             "os.chdir(sys.argv[1])\n"
             "print(sorted(os.listdir('.')), os.stat('.').st_nlink, flush=True)\n"
             "sys.stdin.readline()\n"
             "for _ in range(200):\n"
             "    if os.stat('.').st_nlink == 0: break\n"
             "    time.sleep(0.05)\n"
             "print(sorted(os.listdir('.')), os.stat('.').st_nlink, flush=True)\n")
    with subprocess.Popen([sys.executable, "-c", probe, str(a / "d")], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None and proc.stdin is not None
            assert proc.stdout.readline().strip() == "[] 2"
            os.rmdir(b / "d")
            proc.stdin.write("\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "[] 0"
        finally:
            proc.kill()


def test_another_mounts_rewrite_shows_through_a_held_file_and_a_mapping(make_cluster, mount) -> None:
    """Mount B rewrites a file in place and sets its old mtime back (`cp -p`, `rsync -a --inplace`,
    `tar x` over a file): size and mtime are as before, so the kernel's own check (size or mtime
    changed: drop the pages) cannot see it.  A process in mount A that holds the file open reads the
    new bytes, and one that maps it sees them, as on a local disk: the notice drops A's cached pages."""
    cluster = make_cluster(n_cs=3)
    a, b = mount(cluster, "a"), mount(cluster, "b")
    old, new = b"old-content-" * 400, b"NEW-CONTENT-" * 400
    (a / "f").write_bytes(old)
    os.utime(a / "f", ns=(1_000_000_000, 1_000_000_000))
    shows("the file in B", lambda: size_of(b / "f") == len(old))
    held = os.open(a / "f", os.O_RDONLY)
    try:
        assert os.pread(held, len(old), 0) == old  # in A's page cache now
        with open(a / "f", "rb") as mapped_file, mmap.mmap(mapped_file.fileno(), 0, prot=mmap.PROT_READ) as mapped:
            assert mapped[:12] == old[:12]
            with open(b / "f", "r+b") as f:
                f.write(new)
            os.utime(b / "f", ns=(1_000_000_000, 1_000_000_000))
            shows("B's bytes in A's mapping", lambda: mapped[:12] == new[:12])
            shows("B's bytes through A's held file", lambda: os.pread(held, len(new), 0) == new)
            assert os.stat(a / "f").st_mtime_ns == 1_000_000_000
    finally:
        os.close(held)
