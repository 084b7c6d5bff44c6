"""`local up` brings back a local cluster whose metadata servers changed since it was made: a server added by
hand in its folder (`make-mds -r DIR/...`) is started with the others, and one taken out with `rm-mds` is not
started again (found by a probe: the cluster came back without its new member, short of a majority)."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

from .conftest import run_cli


def _free_addr() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def _running(directory: Path) -> dict[str, bool]:
    done = run_cli("local", "status", "--dir", str(directory), "--json")
    assert done.returncode == 0, done.stderr
    return {Path(p["dir"]).name: p["running"] for p in json.loads(done.stdout)["processes"]}


def test_local_up_starts_a_member_made_by_hand_and_not_one_removed(make_cluster) -> None:
    cluster = make_cluster(n_cs=1, n_mds=3)
    new_dir = cluster.dir / "mds-new"
    for argv in (("-c", cluster.name, "make-mds", "-a", _free_addr(), "-r", str(new_dir)),
                 ("mds", "-r", str(new_dir), "--background"),
                 ("-c", cluster.name, "rm-mds", "3")):
        done = run_cli(*argv, timeout=120)
        assert done.returncode == 0, (argv, done.stderr)
    cluster.kill("mds", 3)  # "stop its process now", as rm-mds says
    assert "mds3" not in _running(cluster.dir)  # (a probe: listed as "stopped", which local up would not start)
    for verb in ("down", "up"):
        done = run_cli("local", verb, "--dir", str(cluster.dir), timeout=180)
        assert done.returncode == 0, (verb, done.stdout, done.stderr)
    running = _running(cluster.dir)
    assert running.get("mds-new") and running["mds1"] and running["mds2"], running
    assert not running.get("mds3"), running
    done = run_cli("-c", cluster.name, "mkdir", "/after-local-up", timeout=120)
    assert done.returncode == 0, done.stderr


def test_local_up_with_a_folder_gone_says_how_to_replace_it_and_stops_nothing(make_cluster) -> None:
    """A probe: `local up` after a follower's folder was removed failed on it, then stopped every daemon of
    the running cluster (its failure path stopped them all, not only what it had started)."""
    cluster = make_cluster(n_cs=1, n_mds=3)
    cluster.kill("mds", 3)
    shutil.rmtree(cluster.find("mds", 3).dir)
    done = run_cli("local", "up", "--dir", str(cluster.dir), timeout=180)
    assert done.returncode != 0
    error = done.stderr.strip().splitlines()[-1]
    assert "MDS 3" in error and "is gone" in error and "rm-mds" in error and "make-mds" in error, done.stderr
    running = _running(cluster.dir)
    assert running["mds1"] and running["mds2"] and running["cs1"], running  # the cluster goes on
    done = run_cli("-c", cluster.name, "mkdir", "/still-up", timeout=120)
    assert done.returncode == 0, done.stderr


def test_local_up_of_a_cluster_whose_making_was_cut_off_says_so(tmp_path: Path, conf_dir: Path,
                                                                 monkeypatch) -> None:
    """Ctrl-C during the first `local up` left 1 of 3 servers made; the next `local up` called that
    cluster up with 0 chunk servers, and every write then failed (a docs probe)."""
    from chunkfs.cli.local_cluster import LocalCluster

    def cut_off(self, *args, **kwargs):
        raise KeyboardInterrupt

    directory = tmp_path / "cut"
    with monkeypatch.context() as m:
        m.setattr(LocalCluster, "add_cs", cut_off)
        try:
            LocalCluster.make(directory, "cut", n_mds=1, n_cs=3, chunk_size=1 << 20)
        except KeyboardInterrupt:
            pass
        else:
            raise AssertionError("the making was not cut off")
    done = run_cli("local", "up", "--dir", str(directory), timeout=60)
    assert done.returncode != 0 and done.stderr.count("\n") == 1, done
    assert "was cut off (1 of 1 metadata servers and 0 of 3 chunk servers made)" in done.stderr
    assert run_cli("local", "down", "--dir", str(directory)).returncode == 0
