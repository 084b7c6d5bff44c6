"""ChunkFS, MooseFS and the local disk on the same jobs, in one run: the figures for BENCHMARKS.md.

    sudo .venv/bin/python bench/bench_vs_moosefs.py [--harness ../shared/bench/moosefs/run.sh]
        [--replicas 3] [--jobs "..."] [--extra-jobs "meta"] [--fio-size 256m] [--fio-runtime 10]
        [--repeat 2] [--record]

Starts a local ChunkFS cluster as ``chunkfs local up`` does (3 MDS, 3 chunk
servers, a FUSE mount; every metadata change fsynced on a majority), sets
``replicas=N:1`` (N = `--replicas`; MooseFS gets goal N), and runs the MooseFS
harness (`run.sh`: MooseFS in a network namespace of its own, fio jobs, the
metadata and untar scripts) with the ChunkFS mount as its ``ext`` target, so
the three targets are measured job by job, interleaved, on the same machine.
It reads the harness's summary and writes a table with ChunkFS/MooseFS and
ChunkFS/local for every row (the median of `--repeat` runs, the targets'
order reversed every second run), and CPU per job (MooseFS's processes as
the harness counts them; ChunkFS's, the harness's "foreign" column; the
host's steal, sampled here); with
`--record` it goes into BENCHMARKS.md, and a PNG of the ratios beside it when
matplotlib is installed (``pip install matplotlib``: not a dependency).

Run it on a quiet machine: with 2 cores, anything else running measures nothing.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_client import chunkfs_cli, update_benchmarks  # noqa: E402

#: The harness's target names: MooseFS at the goal asked for, ChunkFS (`ext`), the local disk.
MFS = {1: "mfs_goal1", 3: "mfs_goal3"}
#: The harness's ``cmd`` job runs this in a fresh folder of each target: metadata with several
#: processes at once, and SQLite commits (one JSON line).
PARALLEL = Path(__file__).resolve().parent / "meta_parallel.py"
#: Its figures, as rows of the table.
PARALLEL_ROWS = {
    "create_ops": "create empty file, {procs} processes (ops/s)",
    "stat_ops": "stat, {procs} processes (ops/s)",
    "unlink_ops": "unlink, {procs} processes (ops/s)",
    "sqlite_delete_tps": "SQLite commit, journal_mode=DELETE (tx/s)",
    "sqlite_wal_tps": "SQLite commit, journal_mode=WAL (tx/s)",
}


def parallel_table(out: Path) -> dict[str, dict[str, float]]:
    """{row: {target: median over the repetitions}} from each target's output of the ``cmd`` job."""
    values: dict[str, dict[str, list[float]]] = {}
    for log in sorted((out / "meta").glob("*.cmd.r*.log")):
        target = log.name.split(".cmd.r", 1)[0]
        lines = [ln for ln in log.read_text().splitlines() if ln.startswith("{")]
        if not lines:
            print(f"no figures from the cmd job on {target}: see {log}")
            continue
        result = json.loads(lines[-1])
        for key, row in PARALLEL_ROWS.items():
            if key in result:
                values.setdefault(row.format(procs=result["procs"]), {}).setdefault(target, []).append(
                    float(result[key]))
    return {row: {target: statistics.median(v) for target, v in by_target.items()}
            for row, by_target in values.items()}


def median_table(summary: str) -> dict[str, dict[str, float]]:
    """{metric: {target: value}} from the harness's "Summary: median of repetitions" table."""
    block = summary.split("## Summary: median of repetitions", 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in block.splitlines() if ln.startswith("|")]
    targets = [c.strip() for c in lines[0].strip("|").split("|")][1:]
    out: dict[str, dict[str, float]] = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        values = {}
        for target, cell in zip(targets, cells[1:], strict=False):
            number = re.sub(r"[^0-9.]", "", cell)
            if number:
                values[target] = float(number)
        out[cells[0]] = values
    return out


def cpu_table(summary: str, steal: dict[tuple[str, str], float]) -> list[str]:
    """The harness's CPU-per-job rows, with the host's steal during each job as a last column."""
    if "## Mean CPU" not in summary:
        return []
    block = summary.split("## Mean CPU", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in (ln for ln in block.splitlines() if ln.startswith("|")):
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == "target":
            line += " steal |"
        elif set(cells[0]) <= set("-"):
            line += "---|"
        else:
            taken = steal.get((cells[0], cells[1]))
            line += f" {'?' if taken is None else f'{taken:.0f}'} |"
        rows.append(line)
    return rows


#: The harness's log line as a job starts (on its stderr): "[12:00:00]   [ext] fio randread_qd1 (...)".
JOB_STARTS = re.compile(r"^\[[0-9:]+\]\s+\[(\w+)\] (?:fio (\w+)|(dd write|dd read|cmd|untar|metadata))")
LOGGED_JOBS = {"dd write": "dd_write_fsync", "dd read": "dd_read", "cmd": "cmd", "untar": "untar", "metadata": "meta"}


class StealWatch:
    """The host's *steal* (time this VM's vCPUs were runnable but the host ran something else), per job.

    On a shared virtual machine that is the noise no process here can see: a job run while the
    host takes a core away measures the host.  The harness counts it in its *foreign* column with
    everything else; this samples ``/proc/stat`` every quarter second and, from the harness's own
    log line at each job's start and the job's wall time (its runs.csv), gives the steal during
    each job, as % of one core like the harness's CPU columns.
    """

    PERIOD = 0.25

    def __init__(self) -> None:
        self.samples: list[tuple[float, int, int]] = []  # (time, steal ticks, all ticks)
        self.starts: dict[tuple[str, str], list[float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def _ticks() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal (guest time is inside user already)
        return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.time(), *self._ticks()))
            self._stop.wait(self.PERIOD)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def saw(self, line: str) -> None:
        """A line of the harness's log: note when a job started."""
        m = JOB_STARTS.match(line)
        if m and " rc=" not in line:  # "[ext] fio seqread rc=1" reports a failure, not a start
            job = m.group(2) or LOGGED_JOBS[m.group(3)]
            self.starts.setdefault((m.group(1), job), []).append(time.time())

    def per_job(self, runs_csv: Path) -> dict[tuple[str, str], float]:
        """{(target, job): steal, % of one core} over each job's run (the mean of its repetitions)."""
        if not runs_csv.is_file():
            return {}
        ncpu = os.cpu_count() or 1
        found: dict[tuple[str, str], list[float]] = {}
        starts = {key: list(times) for key, times in self.starts.items()}
        with runs_csv.open() as f:
            rows = list(csv.DictReader(f))
        for row in rows:
            key = (row["target"], row["job"])
            if not starts.get(key):
                continue
            t0 = starts[key].pop(0)
            window = [s for s in self.samples if t0 <= s[0] <= t0 + float(row["wall_s"]) + self.PERIOD]
            if len(window) < 2 or window[-1][2] == window[0][2]:
                continue
            stolen = (window[-1][1] - window[0][1]) / (window[-1][2] - window[0][2])
            found.setdefault(key, []).append(100.0 * ncpu * stolen)
        return {key: sum(v) / len(v) for key, v in found.items()}


def _repeats(n: int) -> str:
    if n == 1:
        return "each job once, in that order"
    return f"each job {n} times, the order reversed every second time, and the median of the {n} in the table"


def plot(rows: list[tuple[str, float]], path: Path) -> bool:
    try:
        import matplotlib  # noqa: PLC0415 - optional

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1))
    names, ratios = [r[0] for r in rows], [r[1] for r in rows]
    ax.barh(names, ratios, color=["tab:green" if r >= 1 else "tab:orange" for r in ratios])
    ax.axvline(1.0, color="black", linewidth=1)
    # Ratios span 0.05 to 50 (a stat from the kernel's cache): on a linear axis most bars vanish.
    ax.set_xscale("log")
    for y, r in enumerate(ratios):
        ax.annotate(f"{r:.2f}", (r, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
    ax.set_xlabel("ChunkFS / MooseFS, log scale (1 = as fast)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--harness", type=Path, default=ROOT.parent / "shared" / "bench" / "moosefs" / "run.sh")
    parser.add_argument("--replicas", type=int, choices=sorted(MFS), default=3)
    parser.add_argument("--jobs", default="seqwrite_fsync seqread randread_qd1 randread_qd16 randwrite_qd1 "
                                          "randwrite_qd16 randwrite_fsync untar cmd",
                        help="the harness's jobs; \"cmd\" is meta_parallel.py (processes at once, SQLite)")
    parser.add_argument("--extra-jobs", default="dd_write_fsync dd_read meta")
    parser.add_argument("--fio-size", default="512m")
    parser.add_argument("--fio-runtime", default="20")
    parser.add_argument("--files", default="2000", help="files for the metadata script")
    parser.add_argument("--procs", type=int, default=4, help="processes at once in meta_parallel.py")
    parser.add_argument("--repeat", type=int, default=2,
                        help="runs of every job on every target; the harness reverses the targets' order on "
                             "even runs and the table gives the median (a target that runs right after MooseFS "
                             "finds the disk and page cache in MooseFS's wake: one order alone favours one side)")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    if not args.harness.is_file():
        raise SystemExit(f"no MooseFS harness at {args.harness}: give its run.sh with --harness")
    if os.geteuid() != 0:
        raise SystemExit("run as root: the harness makes a network namespace and mounts MooseFS")
    mfs = MFS[args.replicas]
    with tempfile.TemporaryDirectory(prefix="chunkfs-vs-mfs-") as tmp:
        base = Path(tmp)
        os.environ["CHUNKFS_CONF_DIR"] = str(base / "conf")
        os.environ["CHUNKFS_RUN_DIR"] = str(base / "run")
        mnt = base / "mnt"
        mnt.mkdir()
        chunkfs_cli("local", "up", "--dir", str(base / "cluster"), "--name", "vsmfs", "--mount", str(mnt), timeout=300)
        try:
            chunkfs_cli("-c", "vsmfs", "set-attr", "-R", "/", f"replicas={args.replicas}:1", timeout=300)
            (mnt / "bench").mkdir()
            env = {**os.environ, "TARGETS": f"{mfs} ext local", "EXT_DIR": str(mnt / "bench"),
                   "FIO_SIZE": args.fio_size, "FIO_RUNTIME": args.fio_runtime, "REPEAT": str(args.repeat),
                   "NFILES": args.files, "JOBS": args.jobs, "EXTRA_JOBS": args.extra_jobs,
                   "OUTDIR": str(base / "out"),
                   "CMD_JOB": f"python3 {PARALLEL} --procs {args.procs} --files {int(args.files) // args.procs}"}
            steal = StealWatch()
            steal.start()
            harness = subprocess.Popen(["bash", str(args.harness)], env=env, stderr=subprocess.PIPE, text=True)
            assert harness.stderr is not None
            for line in harness.stderr:  # its log: passed on, and read for when each job starts
                sys.stderr.write(line)
                steal.saw(line)
            returncode = harness.wait(timeout=4 * 3600)
            steal.stop()
            if returncode != 0:
                raise SystemExit(f"the harness failed (exit {returncode}); its output is above")
            summary = (base / "out" / "summary.md").read_text()
            table = {**median_table(summary), **parallel_table(base / "out")}
            stolen = steal.per_job(base / "out" / "runs.csv")
        finally:
            chunkfs_cli("local", "down", "--dir", str(base / "cluster"), timeout=300, check=False)
    rows, ratios = [], []
    for metric, values in table.items():
        ours, theirs, local = values.get("ext"), values.get(mfs), values.get("local")
        if ours is None or not theirs:
            continue
        ratio = ours / theirs
        ratios.append((metric, ratio))
        vs_local, local_text = (f"{ours / local:.2f}", f"{local:,.0f}") if local else ("—", "—")
        rows.append(f"| {metric} | {theirs:,.0f} | {ours:,.0f} | **{ratio:.2f}** | {vs_local} | {local_text} |")
    png = ROOT / f"docs/vs-moosefs-replicas{args.replicas}.png"
    plotted = args.record and plot(ratios, png)
    body = [
        f"## ChunkFS and MooseFS side by side, replicas {args.replicas} (`bench/bench_vs_moosefs.py`)",
        "",
        f"One run of the MooseFS harness with the three targets interleaved job by job: MooseFS (goal "
        f"{args.replicas}), ChunkFS as `chunkfs local up` starts it (3 MDS, 3 CS, replicas {args.replicas}:1) and "
        f"the local disk; {_repeats(args.repeat)}. fio file {args.fio_size}, {args.fio_runtime} s per job, "
        f"{args.files} files for the "
        f"metadata script (one process) and as many in all for `bench/meta_parallel.py` ({args.procs} processes "
        "at once, each in its own folder; and 200 SQLite commits of one row in each journal mode). "
        f"Recorded {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores, {os.uname().machine}, "
        f"Python {sys.version.split()[0]}.",
        "",
        "| workload | MooseFS | ChunkFS | ChunkFS / MooseFS | ChunkFS / local | local disk |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        *rows,
        "",
        "CPU, % of one core, mean over each job (ChunkFS's processes are the harness's *foreign* column, "
        "which also holds the host's *steal*: time this virtual machine's cores were taken by the host, "
        "sampled from `/proc/stat` by this command; a job measured under steal measured the host):",
        "",
        *cpu_table(summary, stolen),
    ]
    if plotted:
        body += ["", f"![ChunkFS / MooseFS, replicas {args.replicas}](docs/{png.name})"]
    text = "\n".join(body)
    print(text)
    if args.record:
        update_benchmarks(f"vs-moosefs-{args.replicas}", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
