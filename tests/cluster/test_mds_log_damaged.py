"""A metadata server whose Raft log is damaged refuses to start, in one line that names the repair.

Raft counts on a member's log staying as it acknowledged it: a record damaged before the end, or a
log whose hard state (the term and the vote cast in it) is gone, cannot be mended in place (a member
that forgot its vote could vote twice in one term).  Found by a probe: the first said only "corrupt
record at offset N", the second started without a word.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

from chunkfs.testing.cluster import master_id


def _follower_stopped_after_changes(cluster) -> tuple[int, Path]:
    with cluster.client() as c:
        c.client.mds.retry_for = 30.0
        for i in range(50):
            c.mkdir(f"/d{i}")
        follower = next(i for i in (1, 2, 3) if i != master_id(c))
    cluster.kill("mds", follower, signal.SIGTERM)
    return follower, Path(cluster.find("mds", follower).dir)


def _start_in_foreground(node_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "chunkfs", "mds", "-r", str(node_dir)],
                          capture_output=True, text=True, timeout=60, check=False)


def _assert_refused_with_the_repair(done: subprocess.CompletedProcess[str], node_id: int, what: str) -> None:
    assert done.returncode != 0
    error = [line for line in done.stderr.splitlines() if line.startswith("chunkfs: error")]
    assert len(error) == 1, done.stderr[-2000:]
    assert what in error[0] and f"chunkfs rm-mds {node_id}" in error[0] and "make-mds" in error[0], error[0]


def test_a_member_whose_log_is_damaged_mid_way_refuses_to_start_and_names_the_repair(make_cluster) -> None:
    cluster = make_cluster(n_cs=1, n_mds=3)
    node_id, node_dir = _follower_stopped_after_changes(cluster)
    segment = sorted((node_dir / "raft").glob("log-*.seg"))[-1]
    raw = bytearray(segment.read_bytes())
    records_end = len(raw.rstrip(b"\0"))
    middle = records_end // 2
    raw[middle:middle + 8] = bytes(b ^ 0xFF for b in raw[middle:middle + 8])
    segment.write_bytes(raw)
    _assert_refused_with_the_repair(_start_in_foreground(node_dir), node_id, "is damaged")


def test_a_member_whose_hard_state_is_gone_refuses_to_start_and_names_the_repair(make_cluster) -> None:
    cluster = make_cluster(n_cs=1, n_mds=3)
    node_id, node_dir = _follower_stopped_after_changes(cluster)
    (node_dir / "raft" / "hardstate").unlink()
    _assert_refused_with_the_repair(_start_in_foreground(node_dir), node_id, "hardstate is missing")


def test_a_member_whose_log_was_cut_short_refuses_to_start_and_names_the_repair(make_cluster) -> None:
    """Found by a probe: a cut log (or a damaged record near its end) was taken for a crash's torn record and
    cut off, and the member started without what it had acknowledged; with no master up to notice, it could
    help elect one that lacks those changes.  Its store has applied entries beyond the log's end: damage."""
    cluster = make_cluster(n_cs=1, n_mds=3)
    node_id, node_dir = _follower_stopped_after_changes(cluster)
    segment = sorted((node_dir / "raft").glob("log-*.seg"))[-1]
    raw = segment.read_bytes()
    records_end = len(raw.rstrip(b"\0"))
    with open(segment, "r+b") as f:
        f.truncate(records_end * 2 // 3)
    _assert_refused_with_the_repair(_start_in_foreground(node_dir), node_id, "applied entries up to")


def test_a_member_whose_folder_was_emptied_but_for_its_identity_refuses_to_start(make_cluster) -> None:
    """node.json says it has held Raft state (`joined`); with none now, it would have forgotten its votes and
    what it acknowledged, and could help elect a master lacking those changes while no master is up."""
    cluster = make_cluster(n_cs=1, n_mds=3)
    node_id, node_dir = _follower_stopped_after_changes(cluster)
    for p in node_dir.iterdir():
        if p.name not in ("node.json", "secret"):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    _assert_refused_with_the_repair(_start_in_foreground(node_dir), node_id, "holds no Raft state")
