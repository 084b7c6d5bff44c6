"""Where one operation's time goes, through a real mount: every FUSE request, master request and Raft step.

    .venv/bin/python bench/bench_breakdown.py [--n 500] [--record]

Starts the cluster the quick start starts (``chunkfs local up``: 3 MDS, 3 CS,
a mount), then runs, one at a time through the mount, `--n` of each
operation: create an empty file (``open(O_CREAT|O_EXCL)`` + ``close``, as
``touch``), ``stat``, write 4 KiB to a new file and close it, extract a
6 KiB file as GNU tar does (create 0600, write, ``fchown``, ``fchmod``,
close, ``utimensat`` by name), ``unlink``,
SQLite commits (one row per transaction, default journal mode and WAL), and
4 KiB O_DIRECT random writes (alone, and each followed by fdatasync: a VM's
flush) and reads in a 64 MiB disk image.  Around each phase it reads the
mount's step timings (``kill -USR1``, see common/timings.py) and every
server's ``chunkfs_mds_step_seconds`` or ``chunkfs_cs_step_seconds`` from
``/metrics``, and prints per operation: how many of each request or step
it took and the mean time of each.  ``--record`` writes the table into
BENCHMARKS.md.  Run it on a quiet machine: it measures latency.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import mmap
import os
import random
import re
import signal
import sqlite3
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_client import chunkfs_cli, metrics_addrs, update_benchmarks  # noqa: E402

from chunkfs.client.fuse_session import TIMINGS_FILE, state_dir  # noqa: E402
from chunkfs.common.daemon import read_pid  # noqa: E402

CLUSTER = "breakdown"
Steps = dict[str, tuple[int, float]]  # step -> (count, total seconds)
_SAMPLE = re.compile(r'^chunkfs_(?:mds|cs)_step_seconds_(count|sum)\{step="([^"]+)"\} (\S+)$')


def mount_steps(mnt: Path) -> Steps:
    """The mount's timings: SIGUSR1, then its timings.json (bounded wait)."""
    sdir = state_dir(mnt)
    pid = read_pid(sdir)
    if pid is None:
        raise SystemExit(f"no mount process for {mnt}")
    path = sdir / TIMINGS_FILE
    path.unlink(missing_ok=True)
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit("the mount did not write its timings within 10 s")
        time.sleep(0.02)
    return {k: (v["count"], v["total_s"]) for k, v in json.loads(path.read_text()).items()}


def server_steps(metrics_addrs: dict[str, str], names: dict[str, str] | None = None) -> dict[str, Steps]:
    """Each server's step timings, by node name; the master's is named "master", the others by folder.

    `names`, if given, gets each folder's name in the result."""
    out: dict[str, Steps] = {}
    for node, addr in sorted(metrics_addrs.items()):
        text = urllib.request.urlopen(f"http://{addr}/metrics", timeout=10).read().decode()  # noqa: S310
        steps: dict[str, list[float]] = {}
        leader = False
        for line in text.splitlines():
            if line.startswith("chunkfs_raft_is_leader "):
                leader = float(line.split()[1]) == 1
            m = _SAMPLE.match(line)
            if m:
                kind, step, value = m.groups()
                steps.setdefault(step, [0, 0.0])[0 if kind == "count" else 1] = float(value)
        name = "master" if leader else f"follower {node}" if node.startswith("mds") else node
        if names is not None:
            names[node] = name
        out[name] = {k: (int(c), s) for k, (c, s) in steps.items()}
    return out


def processes(base: Path, mnt: Path) -> dict[str, int]:
    """Folder name -> PID of every daemon of the cluster under `base`, the mount's and this process's."""
    out = {"bench": os.getpid()}
    for path in base.rglob("node.json"):
        pid = read_pid(path.parent)
        if pid is not None:
            out[path.parent.name] = pid
    pid = read_pid(state_dir(mnt))
    if pid is not None:
        out["mount"] = pid
    return out


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """CPU time so far of each process, all its threads, from the scheduler's own nanosecond counters
    (/proc/PID/task/*/schedstat: finer than the 10 ms ticks of /proc/PID/stat)."""
    out = {}
    for name, pid in pids.items():
        total = 0
        for task in Path(f"/proc/{pid}/task").glob("*"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += int((task / "schedstat").read_text().split()[0])
        out[name] = total / 1e9
    return out


def diff(after: Steps, before: Steps) -> Steps:
    out = {}
    for step, (count, total) in after.items():
        c0, t0 = before.get(step, (0, 0.0))
        if count > c0:
            out[step] = (count - c0, total - t0)
    return out


def phases(
    mnt: Path, dbs: dict[str, sqlite3.Connection], direct_fds: list[int]
) -> list[tuple[str, Callable[[int], None]]]:
    """The operations, each a function of its number; what they leave open is in `dbs` and `direct_fds`."""
    work = mnt / "breakdown"
    work.mkdir(exist_ok=True)
    block = os.urandom(4096)

    def create(i: int) -> None:
        os.close(os.open(work / f"e{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))

    def stat(i: int) -> None:
        os.stat(work / f"e{i}")

    def unlink(i: int) -> None:
        os.unlink(work / f"e{i}")

    def write_close(i: int) -> None:
        fd = os.open(work / f"w{i}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, block)
        finally:
            os.close(fd)

    header = os.urandom(6144)  # about the mean file of /usr/include/linux (6,129 bytes), the harness's untar tree

    def extract(i: int) -> None:
        """One file as `tar -x` writes it (strace of GNU tar 1.35): made 0600, written, given its owner
        and mode while open, closed, then its times set by name."""
        path = work / f"x{i}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, header)
            os.fchown(fd, os.getuid(), os.getgid())
            os.fchmod(fd, 0o644)
        finally:
            os.close(fd)
        os.utime(path, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))

    def read_back(i: int) -> None:
        """One file as `tar -d` compares it (strace of GNU tar 1.35): looked at by name, opened, read
        whole, closed.  It reads what the extract phase wrote: run both (`--only "extract,read back"`)."""
        path = work / f"x{i}"
        if not os.path.exists(path):
            raise SystemExit(f"{path} is missing: the read-back phase reads the extract phase's files; "
                             f"run both (--only \"extract,read back\")")
        os.lstat(path)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            os.read(fd, len(header))
        finally:
            os.close(fd)

    def sqlite_commit(mode: str) -> Callable[[int], None]:
        def commit(i: int) -> None:
            db = dbs.get(mode)
            if db is None:
                db = dbs[mode] = sqlite3.connect(work / f"{mode}.db", isolation_level=None)
                db.execute(f"PRAGMA journal_mode={mode}")
                db.execute("CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v BLOB)")
            db.execute("BEGIN")
            db.execute("INSERT INTO t (v) VALUES (?)", (block[:100],))
            db.execute("COMMIT")
        return commit

    image, page = work / "vm.img", mmap.mmap(-1, 4096)  # O_DIRECT wants an aligned buffer: a mapped page
    page.write(block)
    rng = random.Random(1)  # noqa: S311 - offsets, not secrets

    def image_fd() -> int:
        if not direct_fds:
            with open(image, "wb") as f:  # a 64 MiB disk image, written once
                for _ in range(64):
                    f.write(os.urandom(1 << 20))
                f.flush()
                os.fsync(f.fileno())
            direct_fds.append(os.open(image, os.O_RDWR | os.O_DIRECT))
        return direct_fds[0]

    def direct_write(i: int) -> None:
        os.pwrite(image_fd(), page, rng.randrange(16384) * 4096)

    def direct_write_datasync(i: int) -> None:
        direct_write(i)
        os.fdatasync(image_fd())

    def direct_read(i: int) -> None:
        os.preadv(image_fd(), [page], rng.randrange(16384) * 4096)

    return [("create empty file", create), ("stat", stat), ("unlink", unlink),
            ("write 4 KiB to a new file and close", write_close),
            ("extract a 6 KiB file as tar does", extract),
            ("read back a 6 KiB file as tar -d does", read_back),
            ("SQLite commit, journal_mode=DELETE", sqlite_commit("delete")),
            ("SQLite commit, journal_mode=WAL", sqlite_commit("wal")),
            ("4 KiB random write, O_DIRECT, one at a time", direct_write),
            ("4 KiB random write, O_DIRECT, fdatasync after each", direct_write_datasync),
            ("4 KiB random read, O_DIRECT, one at a time", direct_read)]


def table(name: str, n: int, seconds: float, mount: Steps, servers: dict[str, Steps], cpu: dict[str, float]) -> str:
    busy = ", ".join(f"{who} {used / n * 1e6:,.0f}" for who, used in sorted(cpu.items(), key=lambda kv: -kv[1])
                     if used / n >= 1e-6)
    lines = [f"**{name}**: {n} operations, {seconds / n * 1e6:,.0f} µs each ({n / seconds:,.0f}/s)", "",
             f"CPU µs per operation ({sum(cpu.values()) / n * 1e6:,.0f} in all, on {os.cpu_count()} cores): "
             f"{busy}", "",
             "| where | step | per operation | mean µs | µs per operation |", "| --- | --- | ---: | ---: | ---: |"]

    def rows(where: str, steps: Steps, prefixes: tuple[str, ...]) -> None:
        for step, (count, total) in sorted(steps.items(), key=lambda kv: -kv[1][1]):
            if step.startswith(prefixes) and count / n >= 0.01:
                lines.append(f"| {where} | `{step}` | {count / n:.2f} | {total / count * 1e6:,.0f} | "
                             f"{total / n * 1e6:,.0f} |")

    rows("mount", mount, ("fuse.", "mds.", "cs.", "local."))
    for server, steps in sorted(servers.items()):
        rows(server, steps, ("serve.", "raft.", "alloc.", "cs."))
    return "\n".join(lines)


def chosen(name: str, only: str) -> bool:
    """Whether phase `name` is one of `--only`: comma-separated pieces of names ("" : every phase)."""
    return any(piece.strip() in name for piece in only.split(","))


def elsewhere(directory: Path, n: int, only: str) -> int:
    """The same operations in another folder, timed as a whole: the yardstick for each table."""
    with tempfile.TemporaryDirectory(prefix="breakdown-", dir=directory) as tmp:
        dbs: dict[str, sqlite3.Connection] = {}
        direct_fds: list[int] = []
        for name, op in phases(Path(tmp), dbs, direct_fds):
            if not chosen(name, only):
                continue
            op(-1)
            started = time.perf_counter()
            for i in range(n):
                op(i)
            seconds = time.perf_counter() - started
            print(f"{name}: {seconds / n * 1e6:,.0f} µs each ({n / seconds:,.0f}/s)", flush=True)
        for db in dbs.values():
            db.close()
        for fd in direct_fds:
            os.close(fd)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=500, help="operations per phase (default 500)")
    parser.add_argument("--record", action="store_true", help="write the tables into BENCHMARKS.md")
    parser.add_argument("--only", default="", help="run only the phases whose name contains this text (several: "
                        "comma-separated, e.g. \"create,unlink\")")
    parser.add_argument("--dir", type=Path, help="run the same operations in this folder instead (the local disk, "
                        "another file system's mount): times only, no cluster")
    args = parser.parse_args()
    if args.dir is not None:
        return elsewhere(args.dir, args.n, args.only)
    with tempfile.TemporaryDirectory(prefix="chunkfs-breakdown-") as tmp:
        os.environ["CHUNKFS_CONF_DIR"] = f"{tmp}/conf"
        base, mnt = Path(tmp) / "cluster", Path(tmp) / "mnt"
        chunkfs_cli("local", "up", "--dir", str(base), "--name", CLUSTER, "--mount", str(mnt), timeout=180)
        try:
            metrics = metrics_addrs(base)
            pids = processes(base, mnt)
            out = []
            dbs: dict[str, sqlite3.Connection] = {}
            direct_fds: list[int] = []
            for name, op in phases(mnt, dbs, direct_fds):
                if not chosen(name, args.only):
                    continue
                op(-1)  # warm up (opens the database, fills caches) outside the figures
                m0, s0 = mount_steps(mnt), server_steps(metrics)
                c0 = cpu_seconds(pids)
                started = time.perf_counter()
                for i in range(args.n):
                    op(i)
                seconds = time.perf_counter() - started
                c1 = cpu_seconds(pids)
                roles: dict[str, str] = {}
                m1, s1 = mount_steps(mnt), server_steps(metrics, roles)
                servers = {k: diff(v, s0.get(k, {})) for k, v in s1.items()}
                cpu = {roles.get(k, k): c1[k] - c0.get(k, 0.0) for k in c1}
                out.append(table(name, args.n, seconds, diff(m1, m0), servers, cpu))
                print(out[-1] + "\n", flush=True)
            for db in dbs.values():
                db.close()  # nothing left open on the mount: it unmounts at once
            for fd in direct_fds:
                os.close(fd)
        finally:
            chunkfs_cli("local", "down", "--dir", str(base), timeout=180)
    if args.record:
        update_benchmarks("breakdown", "\n\n".join([
            "## Where one operation's time goes (`bench/bench_breakdown.py`)", "",
            f"Recorded {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores, Python {sys.version.split()[0]}: "
            "the cluster `chunkfs local up` starts (3 MDS, 3 CS, a mount), one operation at a time through the "
            "mount. *mount* rows are the mount's FUSE requests (`fuse.*`), its requests to the master as the mount "
            "waits for them (`mds.*`, round trip included) and to chunk servers (`cs.*`); *master* and *follower* "
            "rows are the metadata servers' own time: requests served (`serve.*`), Raft append+fsync, "
            "`raft.propose_to_applied` (a change from proposal until applied: the commit's round trip to a "
            "follower) and `raft.apply` (the SQLite transaction); *csN* rows are the chunk servers': requests "
            "served, the write on their own disk (`cs.own_write`) and the wait for the other replicas' answers "
            "(`cs.replicas_answered`, on the server the write was sent to).",
            *out,
        ]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
