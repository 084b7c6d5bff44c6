"""fio on a ChunkFS mount and on the local disk, with the job shapes MooseFS was measured with.

    .venv/bin/python bench/bench_fio.py [--size-mib 128] [--runtime 10] [--cs 3] [--no-record]

Starts a local cluster of real processes on 127.0.0.1 in a temporary folder,
mounts it with ``chunkfs mount --background``, and runs, on the mount and then
on a plain directory of the local disk (the same temporary folder):

* sequential 1 MiB writes, psync, through the page cache, fsync at the end;
* sequential 1 MiB reads, psync (fio drops the file's cached pages first);
* random 4 KiB reads and writes with O_DIRECT: psync at queue depth 1 and
  libaio at queue depth 16 (writes fsync at the end).

These are the jobs of the MooseFS yardstick (``bench/moosefs/jobs/*.fio`` in
the shared folder: same engines, block sizes, direct flags and fsyncs).
The table — MB/s or IOPS, ratio to the local disk, and MooseFS's figures —
goes into BENCHMARKS.md between the ``fio`` markers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_client import chunkfs_cli, update_benchmarks  # noqa: E402

from chunkfs.testing.cluster import LocalCluster  # noqa: E402

MiB = 1 << 20


@dataclass(frozen=True)
class Job:
    name: str
    label: str
    args: tuple[str, ...]
    kind: str  # "read" or "write": which side of fio's report counts
    unit: str  # "MB/s" or "IOPS"
    #: MooseFS on this machine, 3 replicas (None: not measured there).
    moosefs: float | None


JOBS = (
    Job("seqwrite_fsync", "sequential write 1 MiB, fsync at end",
        ("--rw=write", "--bs=1M", "--ioengine=psync", "--direct=0", "--end_fsync=1"), "write", "MB/s", 116),
    Job("seqread", "sequential read 1 MiB",
        ("--rw=read", "--bs=1M", "--ioengine=psync", "--direct=0"), "read", "MB/s", 474),
    Job("randread_qd1", "random read 4 KiB, QD1 (psync, O_DIRECT)",
        ("--rw=randread", "--bs=4k", "--ioengine=psync", "--iodepth=1", "--direct=1"), "read", "IOPS", 3900),
    Job("randread_qd16", "random read 4 KiB, QD16 (libaio, O_DIRECT)",
        ("--rw=randread", "--bs=4k", "--ioengine=libaio", "--iodepth=16", "--direct=1"), "read", "IOPS", None),
    Job("randwrite_qd1", "random write 4 KiB, QD1 (psync, O_DIRECT)",
        ("--rw=randwrite", "--bs=4k", "--ioengine=psync", "--iodepth=1", "--direct=1", "--end_fsync=1"),
        "write", "IOPS", 5000),
    Job("randwrite_qd16", "random write 4 KiB, QD16 (libaio, O_DIRECT)",
        ("--rw=randwrite", "--bs=4k", "--ioengine=libaio", "--iodepth=16", "--direct=1", "--end_fsync=1"),
        "write", "IOPS", None),
)


def run_fio(job: Job, directory: Path, size_mib: int, runtime: int) -> float:
    seq = job.name.startswith("seq")
    argv = [
        "fio", f"--name={job.name}", f"--directory={directory}", "--filename=bench.dat", f"--size={size_mib}m",
        "--fallocate=none", "--group_reporting=1", f"--runtime={300 if seq else runtime}",
        "--output-format=json", *job.args,
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=(300 if seq else runtime) + 120, check=False)
    if done.returncode != 0:
        raise SystemExit(f"fio {job.name} on {directory} failed:\n{done.stderr[-2000:]}")
    side = json.loads(done.stdout[done.stdout.index("{"):])["jobs"][0][job.kind]
    return side["bw_bytes"] / 1e6 if job.unit == "MB/s" else side["iops"]


def unmount(mnt: Path) -> None:
    """Unmount; if that fails (busy), detach lazily so the mount process still exits."""
    if not chunkfs_cli("umount", str(mnt), check=False):
        chunkfs_cli("umount", "--lazy", str(mnt))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=128, help="file size (default 128; MooseFS: 256)")
    parser.add_argument("--runtime", type=int, default=10, help="seconds per random job (default 10)")
    parser.add_argument("--cs", type=int, default=3)
    parser.add_argument("--chunk-size-mib", type=int, default=64)
    parser.add_argument("--jobs", default=",".join(j.name for j in JOBS), help="comma-separated subset")
    parser.add_argument("-o", dest="mount_options", action="append", default=[], help="mount options")
    parser.add_argument("--no-record", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()
    if shutil.which("fio") is None:
        raise SystemExit("fio is not installed (scripts/install.sh installs it)")
    jobs = [j for j in JOBS if j.name in args.jobs.split(",")]
    results: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="chunkfs-fio-") as tmp:
        os.environ["CHUNKFS_CONF_DIR"] = f"{tmp}/conf"
        os.environ["CHUNKFS_RUN_DIR"] = f"{tmp}/run"
        cluster = LocalCluster.make(Path(tmp) / "cluster", "bench", n_cs=args.cs,
                                    chunk_size=args.chunk_size_mib * MiB)
        mnt = Path(tmp) / "mnt"
        local = Path(tmp) / "local"
        mnt.mkdir()
        local.mkdir()
        try:
            cluster.start_all()
            cluster.wait_ready()
            argv = ["-c", "bench", "mount", str(mnt), "--background"]
            for opt in args.mount_options:
                argv += ["-o", opt]
            chunkfs_cli(*argv)
            try:
                for job in jobs:
                    value = run_fio(job, mnt, args.size_mib, args.runtime)
                    print(f"chunkfs {job.name}: {value:.0f} {job.unit}", flush=True)
                    results[job.name] = (value, 0.0)
            finally:
                unmount(mnt)
        finally:
            cluster.stop_all()
        for job in jobs:
            value = run_fio(job, local, args.size_mib, args.runtime)
            print(f"local {job.name}: {value:.0f} {job.unit}", flush=True)
            results[job.name] = (results[job.name][0], value)

    body = [
        "## fio on the mount (`bench/bench_fio.py`)",
        "",
        f"A {args.size_mib} MiB file, {args.cs} chunk servers and 1 MDS on 127.0.0.1, replicas=3:2, chunk size "
        f"{args.chunk_size_mib} MiB, mount options {','.join(args.mount_options) or 'default'}; random jobs run "
        f"{args.runtime} s. The job shapes are MooseFS's (`bench/moosefs/jobs`: psync or libaio, O_DIRECT for "
        f"random I/O, fsync at the end of writes); local disk: the same jobs on a directory of the same disk. "
        f"Machine: {os.cpu_count()} cores, Python {platform.python_version()}, recorded {time.strftime('%Y-%m-%d')}.",
        "",
        "| workload | unit | ChunkFS | local disk | ChunkFS / local | MooseFS (3 replicas) | ChunkFS / MooseFS |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for job in jobs:
        c, loc = results[job.name]
        mfs = f"{job.moosefs:,.0f}" if job.moosefs else "—"
        vs = f"{c / job.moosefs:.2f}" if job.moosefs else "—"
        body.append(f"| {job.label} | {job.unit} | {c:,.0f} | {loc:,.0f} | {c / loc:.2f} | {mfs} | {vs} |")
    text = "\n".join(body)
    print(text)
    if not args.no_record:
        update_benchmarks("fio", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
