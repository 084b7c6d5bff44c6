"""The benchmark tools, run for a moment each, so they cannot rot between measurements.

Figures are not checked (tests never check wall-clock time): only that each
tool runs on a real mount and reports every figure it promises.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .conftest import run

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_meta_parallel_reports_every_figure_on_the_mount(make_cluster, mount) -> None:
    mnt = mount(make_cluster(n_cs=3))
    work = mnt / "bench"
    work.mkdir()
    done = run(sys.executable, BENCH / "meta_parallel.py", "--procs", "2", "--files", "5", "--commits", "3",
               cwd=work, timeout=300)
    result = json.loads(done.stdout.splitlines()[-1])
    for key in ("create_ops", "stat_ops", "unlink_ops", "sqlite_delete_tps", "sqlite_wal_tps"):
        assert result[key] > 0, (key, result)
    assert list(work.iterdir()) == []  # its folders and databases are gone


def test_breakdown_prints_every_phase_with_requests_and_cpu(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(BENCH / "bench_breakdown.py"), "--n", "2"], capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    tables = done.stdout.split("**")[1::2]
    assert len(tables) == 11, done.stdout
    assert done.stdout.count("CPU µs per operation") == 11
    assert "| mount | `mds.SETATTR` |" in done.stdout  # the extracted file's mode and times
    assert "| mount | `mds.CREATE` |" in done.stdout
    assert "`raft.propose_to_applied`" in done.stdout
    assert "| mount | `cs.CS_WRITE` |" in done.stdout


def test_floor_prints_every_skeleton_with_a_rate(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(BENCH / "bench_floor.py"), "--seconds", "0.3", "--dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| commit") or line.startswith("| 4 KiB")]
    assert len(rows) == 4, done.stdout
    for row in rows:
        ops = float(row.split("|")[2].replace(",", ""))
        assert ops > 0, row
