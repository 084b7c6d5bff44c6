"""A daemon restarted by hand is still part of the local cluster: `local status` shows it, `local down`
stops it, `local up` neither fails nor stops half the cluster; a stale PID file never gets a stranger killed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from chunkfs.common.daemon import PID_FILE, read_pid, wait_exit

from .conftest import run_cli


def _status(directory: Path) -> dict[tuple[str, str], dict]:
    done = run_cli("local", "status", "--dir", str(directory), "--json")
    assert done.returncode == 0, done.stderr
    return {(p["role"], Path(p["dir"]).name): p for p in json.loads(done.stdout)["processes"]}


def test_daemons_restarted_by_hand_are_found_by_their_pid_files(make_cluster) -> None:
    cluster = make_cluster(n_cs=2, n_mds=1)
    mds_dir, cs_dir = Path(cluster.find("mds", 1).dir), Path(cluster.find("cs", 1).dir)
    cluster.kill("mds", 1, signal.SIGTERM)
    cluster.kill("cs", 1, signal.SIGTERM)
    for role, directory in (("mds", mds_dir), ("cs", cs_dir)):
        done = run_cli(role, "-r", str(directory), "--background")
        assert done.returncode == 0, done.stderr
    by_hand = {"mds1": read_pid(mds_dir), "cs1": read_pid(cs_dir)}
    assert all(by_hand.values())

    rows = _status(cluster.dir)
    assert all(r["running"] for r in rows.values()), rows
    assert rows[("mds", "mds1")]["pid"] == by_hand["mds1"] and rows[("cs", "cs1")]["pid"] == by_hand["cs1"]
    text = run_cli("local", "status", "--dir", str(cluster.dir)).stdout
    assert "stopped" not in text and f"pid {by_hand['mds1']}" in text, text

    # `local up` on the running cluster starts nothing and stops nothing.
    before = {name: r["pid"] for (_, name), r in rows.items()}
    done = run_cli("local", "up", "--dir", str(cluster.dir), timeout=120)
    assert done.returncode == 0, done.stderr
    assert {name: r["pid"] for (_, name), r in _status(cluster.dir).items()} == before

    # `local down` stops all of them, the hand-started ones too.
    done = run_cli("local", "down", "--dir", str(cluster.dir), timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"stopped {len(before)} process(es)" in done.stdout, done.stdout
    for pid in before.values():
        assert wait_exit(pid, 30), f"pid {pid} still runs after `local down`"
    assert not any(r["running"] for r in _status(cluster.dir).values())


def test_a_stale_pid_file_naming_another_process_is_left_alone(make_cluster) -> None:
    cluster = make_cluster(n_cs=1, n_mds=1)
    cs_dir = Path(cluster.find("cs", 1).dir)
    cluster.kill("cs", 1, signal.SIGKILL)  # leaves its PID file behind
    # The kernel gave the dead daemon's number to another program: a process of ours stands in for it.
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", str(cs_dir)])
    try:
        (cs_dir / PID_FILE).write_text(f"{stranger.pid}\n")
        rows = _status(cluster.dir)
        assert not rows[("cs", "cs1")]["running"] and rows[("cs", "cs1")]["pid"] is None
        services = json.loads(run_cli("list-services", "--dir", str(cluster.dir), "--json").stdout)
        assert [r["state"] for r in services if r["dir"] == str(cs_dir)] == ["dead"]

        # `local up` starts the chunk server despite the stale PID file; `local down` stops the cluster
        # and never the stranger, even when its number is in a PID file again.
        done = run_cli("local", "up", "--dir", str(cluster.dir), timeout=120)
        assert done.returncode == 0, done.stderr
        restarted = read_pid(cs_dir)
        assert restarted not in (None, stranger.pid)
        assert _status(cluster.dir)[("cs", "cs1")]["pid"] == restarted
        done = run_cli("local", "down", "--dir", str(cluster.dir), timeout=120)
        assert done.returncode == 0 and "stopped 2 process(es)" in done.stdout, done.stdout + done.stderr
        assert wait_exit(restarted, 30)
        (cs_dir / PID_FILE).write_text(f"{stranger.pid}\n")
        done = run_cli("local", "down", "--dir", str(cluster.dir), timeout=120)
        assert done.returncode == 0 and "stopped 0 process(es)" in done.stdout, done.stdout + done.stderr
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait(30)


def test_local_down_stops_a_daemon_made_by_hand_inside_the_clusters_folder(make_cluster) -> None:
    """make-cs -r DIR/extra, started by hand: `local down` stops it too (a probe's was left running)."""
    cluster = make_cluster(n_cs=1, n_mds=1)
    extra = cluster.dir / "extra-cs"
    assert run_cli("-c", cluster.name, "make-cs", "-r", str(extra)).returncode == 0
    assert run_cli("cs", "-r", str(extra), "--background").returncode == 0
    pid = read_pid(extra)
    assert pid
    # `list-services --dir` and `secret ... --local` (through the same list of node folders) count it
    # too (an operator probe: `secret finish --local` left such a node accepting the old secret).
    services = json.loads(run_cli("list-services", "--dir", str(cluster.dir), "--json").stdout)
    assert str(extra.resolve()) in {s["dir"] for s in services}, services
    done = run_cli("local", "down", "--dir", str(cluster.dir))
    assert done.returncode == 0 and "stopped 3 process(es)" in done.stdout, done
    assert wait_exit(pid, 15.0)


def test_a_second_daemon_on_a_running_ones_folder_is_refused_before_touching_it(make_cluster) -> None:
    """A fault probe: `chunkfs cs -r DIR` on a running chunk server's folder scanned its replicas
    (and rotated its log) before saying it was in use.  Now the one-line refusal comes first."""
    cluster = make_cluster(n_cs=1, n_mds=1)
    for role in ("cs", "mds"):
        directory = Path(cluster.find(role, 1).dir)
        logs = sorted(p.name for p in directory.glob("daemon.log*"))
        done = run_cli(role, "-r", str(directory))
        assert done.returncode == 1, done
        assert done.stderr.startswith("chunkfs: error: a daemon is already running on") \
            and done.stderr.count("\n") == 1, done.stderr
        assert sorted(p.name for p in directory.glob("daemon.log*")) == logs  # its log not rotated
        assert cluster.running(cluster.find(role, 1))
