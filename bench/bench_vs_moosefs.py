"""ChunkFS, MooseFS and the local disk on the same jobs, in one run: the figures for BENCHMARKS.md.

    sudo .venv/bin/python bench/bench_vs_moosefs.py [--harness ../shared/bench/moosefs/run.sh]
        [--replicas 3] [--jobs "..."] [--extra-jobs "meta"] [--fio-size 256m] [--fio-runtime 10] [--record]

Starts a local ChunkFS cluster as ``chunkfs local up`` does (3 MDS, 3 chunk
servers, a FUSE mount; every metadata change fsynced on a majority), sets
``replicas=N:1`` (N = `--replicas`; MooseFS gets goal N), and runs the MooseFS
harness (`run.sh`: MooseFS in a network namespace of its own, fio jobs, the
metadata and untar scripts) with the ChunkFS mount as its ``ext`` target, so
the three targets are measured job by job, interleaved, on the same machine.
It reads the harness's summary and writes a table with ChunkFS/MooseFS and
ChunkFS/local for every row, and CPU per job (MooseFS's processes as the
harness counts them; ChunkFS's, the harness's "foreign" column); with
`--record` it goes into BENCHMARKS.md, and a PNG of the ratios beside it when
matplotlib is installed (``pip install matplotlib``: not a dependency).

Run it on a quiet machine: with 2 cores, anything else running measures nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
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
    """{row: {target: value}} from each target's output of the ``cmd`` job (meta_parallel.py)."""
    table: dict[str, dict[str, float]] = {}
    for log in sorted((out / "meta").glob("*.cmd.r*.log")):
        target = log.name.split(".cmd.r", 1)[0]
        lines = [ln for ln in log.read_text().splitlines() if ln.startswith("{")]
        if not lines:
            print(f"no figures from the cmd job on {target}: see {log}")
            continue
        result = json.loads(lines[-1])
        for key, row in PARALLEL_ROWS.items():
            if key in result:
                table.setdefault(row.format(procs=result["procs"]), {})[target] = float(result[key])
    return table


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


def cpu_table(summary: str) -> list[str]:
    """The harness's CPU-per-job rows, as they are."""
    if "## Mean CPU" not in summary:
        return []
    block = summary.split("## Mean CPU", 1)[1].split("\n## ", 1)[0]
    return [ln for ln in block.splitlines() if ln.startswith("|")]


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
                   "FIO_SIZE": args.fio_size, "FIO_RUNTIME": args.fio_runtime, "REPEAT": "1",
                   "NFILES": args.files, "JOBS": args.jobs, "EXTRA_JOBS": args.extra_jobs,
                   "OUTDIR": str(base / "out"),
                   "CMD_JOB": f"python3 {PARALLEL} --procs {args.procs} --files {int(args.files) // args.procs}"}
            done = subprocess.run(["bash", str(args.harness)], env=env, timeout=4 * 3600, check=False)
            if done.returncode != 0:
                raise SystemExit(f"the harness failed (exit {done.returncode}); its output is above")
            summary = (base / "out" / "summary.md").read_text()
            table = {**median_table(summary), **parallel_table(base / "out")}
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
        f"the local disk. fio file {args.fio_size}, {args.fio_runtime} s per job, {args.files} files for the "
        f"metadata script (one process) and as many in all for `bench/meta_parallel.py` ({args.procs} processes "
        "at once, each in its own folder; and 200 SQLite commits of one row in each journal mode). "
        f"Recorded {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores, {os.uname().machine}, "
        f"Python {sys.version.split()[0]}.",
        "",
        "| workload | MooseFS | ChunkFS | ChunkFS / MooseFS | ChunkFS / local | local disk |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        *rows,
        "",
        "CPU, % of one core, mean over each job (ChunkFS's processes are the harness's *foreign* column):",
        "",
        *cpu_table(summary),
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
