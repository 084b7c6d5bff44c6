"""The side-by-side benchmark's steal column: which job ran while the host took this VM's cores."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))

import bench_vs_moosefs as vs  # noqa: E402

RUNS_HEADER = "target,job,rep,rc,wall_s,dropped_caches,load1\n"


def _watch_with(samples: list[tuple[float, int, int]], starts: dict[tuple[str, str], list[float]]) -> vs.StealWatch:
    watch = vs.StealWatch()
    watch.samples = samples
    watch.starts = starts
    return watch


def test_log_lines_name_the_job_that_starts() -> None:
    watch = vs.StealWatch()
    for line in [
        "[05:23:28]   [ext] fio randread_qd1 (drop_caches=yes)\n",
        "[05:23:30]   [mfs_goal3] dd write\n",
        "[05:23:31]   [local] dd read (drop_caches=yes)\n",
        "[05:23:32]   [ext] metadata (2000 files)\n",
        "[05:23:33]   [ext] untar (small files)\n",
        "[05:23:34]   [ext] cmd: python3 meta_parallel.py\n",
        "[05:23:35] cleanup (rc=0)\n",
        "[05:23:36]   [ext] fio randread_qd1 rc=1\n",  # a failure reported, not a second start
    ]:
        watch.saw(line)
    assert set(watch.starts) == {("ext", "randread_qd1"), ("mfs_goal3", "dd_write_fsync"), ("local", "dd_read"),
                                 ("ext", "meta"), ("ext", "untar"), ("ext", "cmd")}
    assert len(watch.starts[("ext", "randread_qd1")]) == 1


def test_steal_is_measured_over_each_jobs_own_window(tmp_path: Path) -> None:
    ncpu = vs.os.cpu_count() or 1
    # 100 ticks a second in all; the host steals nothing for 10 s, then a quarter of all ticks.
    samples = [(float(t), 0 if t <= 10 else (t - 10) * 25, t * 100) for t in range(0, 21)]
    runs = tmp_path / "runs.csv"
    runs.write_text(RUNS_HEADER + "ext,randwrite_qd1,1,0,8.0,no,0\nmfs_goal3,randwrite_qd1,1,0,8.0,no,0\n")
    watch = _watch_with(samples, {("ext", "randwrite_qd1"): [1.0], ("mfs_goal3", "randwrite_qd1"): [11.0]})
    got = watch.per_job(runs)
    assert got[("ext", "randwrite_qd1")] == 0.0
    assert abs(got[("mfs_goal3", "randwrite_qd1")] - 25.0 * ncpu) < 1e-6


def test_the_cpu_table_gets_a_steal_column_and_a_job_not_timed_says_so() -> None:
    summary = (
        "## Mean CPU (% of one core) during the 4k random and seq jobs, per target (all reps)\n\n"
        "| target | job | CPU master | foreign |\n|---|---|---|---|\n"
        "| ext | seqread | 0 | 89 |\n| local | seqread | 0 | 9 |\n"
    )
    rows = vs.cpu_table(summary, {("ext", "seqread"): 42.4})
    assert rows[0].endswith("| steal |")
    assert rows[1].endswith("|---|")
    assert rows[2].endswith("| 42 |")
    assert rows[3].endswith("| ? |")
