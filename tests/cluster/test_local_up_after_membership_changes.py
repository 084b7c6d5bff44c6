"""`local up` brings back a local cluster whose metadata servers changed since it was made: a server added by
hand in its folder (`make-mds -r DIR/...`) is started with the others, and one taken out with `rm-mds` is not
started again (found by a probe: the cluster came back without its new member, short of a majority)."""

from __future__ import annotations

import json
import os
import re
import shlex
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


def test_a_chunk_server_whose_folder_is_gone_is_replaced_by_following_the_advice_of_local_up(make_cluster) -> None:
    """A fault probe: the advice said `rm-cs` first, which a cluster keeping 3 replicas on 3 servers refuses
    (nowhere to copy the lost server's replicas to); the new server comes first now."""
    cluster = make_cluster(n_cs=3)
    data = os.urandom(4 << 20)
    with cluster.client() as c:
        f = c.open("/f", create=True)
        c.run(f.write(0, data))
        c.run(f.fsync())
        ids = {s["addr"]: s["id"] for s in c.cluster_stat()["cs"]}
    lost = cluster.find("cs", 2)
    cluster.kill("cs", 2)
    shutil.rmtree(lost.dir)
    done = run_cli("local", "up", "--dir", str(cluster.dir), timeout=180)
    assert done.returncode != 0
    advice = done.stderr.strip().splitlines()[-1]
    commands = re.findall(r"`(chunkfs [^`]+)`", advice)
    make = [cmd for cmd in commands if " make-cs " in cmd]
    assert make and advice.index("make-cs") < advice.index("rm-cs ID"), advice
    try:
        for argv in (shlex.split(make[0])[1:], ["local", "up", "--dir", str(cluster.dir)],
                     ["-c", cluster.name, "rm-cs", str(ids[lost.addr]), "--wait", "--timeout", "150"]):
            done = run_cli(*argv, timeout=200)
            assert done.returncode == 0, (argv, done.stdout, done.stderr)
        with cluster.client() as c:
            stat = c.cluster_stat()
            assert ids[lost.addr] not in [s["id"] for s in stat["cs"]] and len(stat["cs"]) == 3, stat["cs"]
            assert stat["chunks"]["healthy"] == 4, stat["chunks"]
            assert c.read(c.open("/f").ino, 0, len(data)) == data
    finally:
        run_cli("local", "down", "--dir", str(cluster.dir), timeout=120)
