"""The `chunkfs` command against a running cluster: results, and one-line errors that change nothing."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from chunkfs.testing.cluster import wait_for

from ._disk_helpers import mount_tmpfs, unmount
from .conftest import one_line_error, run_cli

MiB = 1 << 20


def test_put_get_ls_rm_and_attributes(make_cluster, tmp_path) -> None:
    cluster = make_cluster(n_cs=3)
    name = cluster.name
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(5 * MiB + 17))
    # Into a folder not made yet (the README's quick start did that): one line saying how to make it.
    err = one_line_error(run_cli("-c", name, "put", str(src), "/a/b/file"))
    assert f"make it first: chunkfs -c {name} mkdir -p /a/b" in err
    assert run_cli("-c", name, "mkdir", "-p", "/a/b").returncode == 0
    assert run_cli("-c", name, "put", str(src), "/a/b/file").returncode == 0
    assert run_cli("-c", name, "get", "/a/b/file", str(tmp_path / "back")).returncode == 0
    assert (tmp_path / "back").read_bytes() == src.read_bytes()
    assert run_cli("-c", name, "ls", "/a/b").stdout.split() == ["file"]

    result = run_cli("-c", name, "set-attr", "-R", "/a", "replicas=2:1")
    assert result.returncode == 0, result.stderr
    assert "replicas=2:1" in run_cli("-c", name, "get-attr", "/a/b/file").stdout
    assert run_cli("-c", name, "put", str(src), "/a/new").returncode == 0
    assert "replicas=2:1" in run_cli("-c", name, "get-attr", "/a/new").stdout

    stat = json.loads(run_cli("-c", name, "stat", "--json").stdout)
    assert {"mds", "cs", "chunks"} <= set(stat)
    assert stat["inodes"] == 5  # the root, /a, /a/b, /a/b/file and /a/new
    assert "files: 5 " in run_cli("-c", name, "stat").stdout
    assert all({"id", "addr", "role"} <= set(m) for m in stat["mds"])
    assert all({"id", "addr", "host", "status"} <= set(s) for s in stat["cs"])
    local = json.loads(run_cli("local", "status", "--dir", str(cluster.dir), "--json").stdout)
    local_ids = {(p["role"], p["id"]) for p in local["processes"]}
    assert local_ids == {("mds", m["id"]) for m in stat["mds"]} | {("cs", s["id"]) for s in stat["cs"]}
    assert all(p["running"] and p["pid"] for p in local["processes"])

    events = json.loads(run_cli("-c", name, "get-event", "--json").stdout)
    assert any("online" in e["message"] for e in events)
    seqs = [e["seq"] for e in events]
    assert len(seqs) >= 3
    # The newest by default (it showed the oldest 1000 and hid the rest: a probe); --since pages forward.
    newest = json.loads(run_cli("-c", name, "get-event", "--json", "--limit", "2").stdout)
    assert len(newest) == 2 and newest[1]["seq"] == newest[0]["seq"] + 1 >= seqs[-1]  # (more may come meanwhile)
    first = json.loads(run_cli("-c", name, "get-event", "--json", "--since", "0", "--limit", "2").stdout)
    assert [e["seq"] for e in first] == seqs[:2]

    # A goal the cluster cannot meet is set (servers may be added), and said so (a fault probe: it was silent).
    result = run_cli("-c", name, "set-attr", "/a", "replicas=9:8")
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("warning: /a keeps replicas=9:8 on servers of tier 0, and the cluster has 3 "
                                    "chunk server(s): a write that needs a new chunk there fails"), result
    result = run_cli("-c", name, "set-attr", "/a", "replicas=5:2")
    assert "stay below their goal (at 3) until there are 5" in result.stderr, result
    assert run_cli("-c", name, "set-attr", "/a", "replicas=3:2").stderr == ""
    # Each said in the event log, which then tells of the copies (a probe: changes of goal went unsaid).
    said = [e["message"] for e in json.loads(run_cli("-c", name, "get-event", "--json", "--limit", "10").stdout)]
    assert [m for m in said if " set on /a" in m][-3:] == [
        "replicas=9:8 set on /a: 1 item(s)", "replicas=5:2 set on /a: 1 item(s)", "replicas=3:2 set on /a: 1 item(s)"]

    assert run_cli("-c", name, "rm", "-r", "/a").returncode == 0
    assert run_cli("-c", name, "ls", "/").stdout.strip() == ""


def test_bad_input_gets_a_one_line_error_and_changes_nothing(make_cluster, tmp_path) -> None:
    cluster = make_cluster(n_cs=2)
    name = cluster.name
    src = tmp_path / "f"
    src.write_bytes(b"hello")
    assert run_cli("-c", name, "put", str(src), "/f").returncode == 0

    assert "unknown cluster" in one_line_error(run_cli("-c", "nosuch", "ls", "/"))
    assert "no such" in one_line_error(run_cli("-c", name, "get", "/missing", str(tmp_path / "x"))).lower()
    assert not (tmp_path / "x").exists()
    assert "no such local file" in one_line_error(run_cli("-c", name, "put", str(tmp_path / "nope"), "/g"))
    assert "is a directory" in one_line_error(run_cli("-c", name, "put", str(tmp_path), "/g"))
    # Into a "folder" that is a file: the error alone, no warning about a copy never made (a probe).
    assert "not a directory" in one_line_error(run_cli("-c", name, "put", str(src), "/f/x")).lower()
    # A local file that is not a regular one is read to its end, as cp does (it said "no such local file").
    assert run_cli("-c", name, "put", "/dev/null", "/empty").returncode == 0
    assert run_cli("-c", name, "get", "/empty", "-").stdout == ""
    assert run_cli("-c", name, "rm", "/empty").returncode == 0
    for bad in ("replicas=0", "replicas=3:4", "replicas=x", "goal=3", "replicas=99"):
        assert "replicas" in one_line_error(run_cli("-c", name, "set-attr", "/f", bad))
    assert "replicas=3:2" in run_cli("-c", name, "get-attr", "/f").stdout
    assert "no cluster given" in one_line_error(run_cli("ls", "/"))
    one_line_error(run_cli("-c", name, "rm", "/"))
    # `rm -r /` refuses before removing anything (a probe: it emptied the cluster, then failed on the root).
    assert "refusing to remove the cluster's root" in one_line_error(run_cli("-c", name, "rm", "-r", "/"))
    assert run_cli("-c", name, "ls", "/").stdout.split() == ["f"]
    assert "root directory" in one_line_error(run_cli("-c", name, "mkdir", "/"))
    # Said of the path, not of an inode number (a probe), and the same for a folder to mount on.
    assert "'/f/x': a name on the way is not a directory" in one_line_error(run_cli("-c", name, "ls", "/f/x"))
    assert "does not exist; create it first" in one_line_error(run_cli("-c", name, "mount", "/nonexistent/mnt"))
    assert "failure-domain=" in one_line_error(run_cli("-c", name, "set-attr", "/f", "foo=1"))
    # A drain with nowhere to move the replicas to is refused, saying why (a probe's waited forever).
    assert "add a server first" in one_line_error(run_cli("-c", name, "rm-cs", "1", "--wait", "--timeout", "5"))
    assert len(json.loads(run_cli("-c", name, "stat", "--json").stdout)["cs"]) == 2
    assert run_cli("-c", name, "mkdir", "-p", "/").returncode == 0
    # Local files and folders that cannot be used: one line naming them, no traceback (a probe found several).
    assert "/no: no such local folder" in one_line_error(run_cli("-c", name, "get", "/f", str(tmp_path / "no/x")))
    assert "Not a directory" in one_line_error(run_cli("local", "status", "--dir", str(src)))
    bad_size = run_cli("local", "up", "--dir", str(tmp_path / "new"), "--chunk-size", "abc")
    assert bad_size.returncode == 2 and "bad size 'abc'" in bad_size.stderr and "Traceback" not in bad_size.stderr
    one_line_error(run_cli("-c", name, "mkdir", "/f/sub"))
    assert run_cli("-c", name, "get", "/f", "-").stdout == "hello"

    # Below the minimum number of replicas a copy fails cleanly: the old file stays, no new one appears.
    cluster.kill("cs", 2)
    with cluster.client() as client:
        wait_for("the master to see CS#2 gone",
                 lambda: {s["id"]: s["status"] for s in client.cluster_stat()["cs"]}[2] != "active")
    src.write_bytes(b"new content")
    # The error names the missing server and does not claim the cluster is full.  (`--retry-for 2`: a
    # script that would rather fail fast than wait 20 s for the server to come back says so.)  A master
    # still waiting for its servers to report (master for less than CS_RECONNECT_GRACE) says which, too.
    error = one_line_error(run_cli("--retry-for", "2", "-c", name, "put", str(src), "/f"))
    assert ("CS#2 not connected" in error or "chunk servers [2]" in error) and "space left" not in error, error
    # Nor is a new file made.
    error = one_line_error(run_cli("--retry-for", "2", "-c", name, "put", str(src), "/g"))
    assert ("CS#2 not connected" in error or "chunk servers [2]" in error) and "space left" not in error, error
    assert run_cli("-c", name, "ls", "/").stdout.split() == ["f"]
    assert run_cli("-c", name, "get", "/f", "-").stdout == "hello"
    # A bigger copy has several writes on their way when the first fails: still one line (a fault
    # probe saw asyncio's tracebacks of the writes left running).
    src.write_bytes(os.urandom(6 * MiB))
    one_line_error(run_cli("--retry-for", "2", "-c", name, "put", str(src), "/big"))
    assert run_cli("-c", name, "ls", "/").stdout.split() == ["f"]


def test_a_get_that_fails_leaves_the_local_file_as_it_was(make_cluster, tmp_path) -> None:
    """A fault probe: `get` of a file with a block bad on every replica emptied the local file it was
    to replace, and its error said nothing of what to do."""
    cluster = make_cluster(n_cs=3)
    name = cluster.name
    src = tmp_path / "src"
    src.write_bytes(os.urandom(300 * 1024))  # one chunk
    assert run_cli("-c", name, "put", str(src), "/f").returncode == 0
    replicas = [path for i in (1, 2, 3) for path in Path(cluster.find("cs", i).dir).rglob("*.chunk")]
    assert len(replicas) == 3, replicas
    for path in replicas:  # the same block bad everywhere: no replica can mend it
        with open(path, "r+b") as f:
            f.seek(path.stat().st_size - 8192)  # in the data, near its end
            f.write(os.urandom(4096))
    dest = tmp_path / "dest"
    dest.write_bytes(b"precious local data")
    dest.chmod(0o640)
    failed = run_cli("-c", name, "get", "/f", str(dest))
    assert dest.read_bytes() == b"precious local data"
    assert "from a backup" in one_line_error(failed)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["dest", "src"]  # no partial copy left

    # A good copy replaces it, and keeps its mode (as cp does).
    src.write_bytes(b"new")
    assert run_cli("-c", name, "put", str(src), "/g").returncode == 0
    assert run_cli("-c", name, "get", "/g", str(dest)).returncode == 0
    assert dest.read_bytes() == b"new" and (dest.stat().st_mode & 0o777) == 0o640
    # To a pipe reached as /dev/stdout (its link names no real path: it failed), and into no folder.
    piped = subprocess.run([sys.executable, "-m", "chunkfs", "-c", name, "get", "/g", "/dev/stdout"],
                           capture_output=True, timeout=60, check=False)
    assert piped.returncode == 0 and piped.stdout == b"new", piped
    with cluster.client() as c:  # a link in the cluster is followed, as cp does (it said "not a regular file")
        c.symlink("/g", "/lnk")
    assert run_cli("-c", name, "get", "/lnk", str(tmp_path / "via-link")).returncode == 0
    assert (tmp_path / "via-link").read_bytes() == b"new"
    err = one_line_error(run_cli("-c", name, "get", "/g", str(tmp_path / "nodir" / "x")))
    assert f"{tmp_path / 'nodir'}: no such local folder" in err


def test_ctrl_c_ends_a_following_command_with_one_line(make_cluster) -> None:
    """Ctrl-C is how `get-event --follow` is left: "interrupted" and status 130, no traceback (an
    operator probe saw asyncio's tracebacks of the client's cleanup, cut off by the loop closing)."""
    cluster = make_cluster(n_cs=1)
    with subprocess.Popen([sys.executable, "-m", "chunkfs", "-c", cluster.name, "get-event", "--follow"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as follow:
        assert follow.stdout is not None
        follow.stdout.readline()  # following: it has printed the first event
        follow.send_signal(signal.SIGINT)
        _, err = follow.communicate(timeout=30)
    assert follow.returncode == 130 and err == "chunkfs: interrupted\n", err


def test_a_put_stopped_by_sigterm_leaves_no_partial_copy(make_cluster, tmp_path) -> None:
    """`kill` (SIGTERM) or a closed terminal (SIGHUP) ends a command as Ctrl-C does: the hidden partial
    copy is removed, one line says why (a probe found `.NAME.part-PID` files left holding chunks)."""
    cluster = make_cluster(n_cs=3)
    src = tmp_path / "big"
    with open(src, "wb") as f:
        f.truncate(1 << 30)  # read as zeros, written whole: long enough to be cut off
    with cluster.client() as c, subprocess.Popen(
            [sys.executable, "-m", "chunkfs", "-c", cluster.name, "put", str(src), "/big"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as put:
        wait_for("the partial copy to appear", lambda: any(n.startswith(".big.part-") for n, *_ in c.listdir("/")))
        put.send_signal(signal.SIGTERM)
        _, err = put.communicate(timeout=60)
        assert put.returncode == 128 + signal.SIGTERM and err == "chunkfs: stopped by SIGTERM\n", (put.returncode, err)
        assert [n for n, *_ in c.listdir("/")] == []


def test_port_in_use_and_foreign_data_directory(make_cluster, tmp_path) -> None:
    cluster = make_cluster(n_cs=1, name="first")
    mds_dir = tmp_path / "mds-second"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        # Nodes are not made on an address something listens on (an operator probe: make-cs took a
        # running member's, and its server could never start).
        err = one_line_error(run_cli("-c", "second", "make-mds", "-I", "-a", f"127.0.0.1:{port}", "-r",
                                      str(mds_dir), "--chunk-size", "1M"))
        assert f"127.0.0.1:{port} is in use on this machine" in err
        err = one_line_error(run_cli("-c", "first", "make-cs", "-a", f"127.0.0.1:{port}", "-r",
                                      str(tmp_path / "cs-busy")))
        assert f"127.0.0.1:{port} is in use on this machine" in err
    assert run_cli("-c", "second", "make-mds", "-I", "-a", f"127.0.0.1:{port}", "-r", str(mds_dir),
                   "--chunk-size", "1M").returncode == 0
    with socket.socket() as busy:  # taken after the node was made: its start says so
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind(("127.0.0.1", port))
        busy.listen()
        err = one_line_error(run_cli("mds", "-r", str(mds_dir), "--background"))
        assert "address already in use" in err
        # In the foreground the daemon's log goes to stderr too; the error is its last line.
        result = run_cli("mds", "-r", str(mds_dir))
        assert result.returncode != 0
        assert result.stderr.splitlines()[-1].startswith("chunkfs: error: cannot listen on")

    # A data directory of cluster "first" cannot become a chunk server of "second".
    first_cs = cluster.find("cs", 1).dir
    err = one_line_error(run_cli("-c", "second", "make-cs", "-r", first_cs))
    assert "cluster 'first'" in err
    assert cluster.running(cluster.find("cs", 1))
    err = one_line_error(run_cli("-c", "second", "make-mds", "-I", "-a", "127.0.0.1:1", "-r", str(tmp_path / "z")))
    assert "already configured" in err
    one_line_error(run_cli("-c", "third", "make-mds", "-I", "-a", "nohost", "-r", str(tmp_path / "y")))
    one_line_error(run_cli("-c", "bad name!", "make-mds", "-I", "-a", "127.0.0.1:1", "-r", str(tmp_path / "w")))
    one_line_error(run_cli("cs", "-r", str(tmp_path / "not-a-node")))


def test_get_onto_a_full_disk_names_the_file(make_cluster, tmp_path) -> None:
    """A probe: `get` onto a full file system said only "No space left on device"."""
    cluster = make_cluster(n_cs=2)
    src = tmp_path / "big"
    src.write_bytes(os.urandom(1 << 20))
    assert run_cli("-c", cluster.name, "put", str(src), "/big").returncode == 0
    small = tmp_path / "small"
    small.mkdir()
    mount_tmpfs(small, 256 << 10)
    try:
        error = one_line_error(run_cli("-c", cluster.name, "get", "/big", str(small / "out")))
        assert f"{small / 'out'}: No space left on device" in error, error
        assert list(small.iterdir()) == []  # no partial copy left
    finally:
        unmount(small)


@pytest.mark.parametrize("mib", [2, 3])
def test_local_up_on_a_full_disk_says_so_and_leaves_nothing_running(tmp_path, conf_dir, mib: int) -> None:
    """A probe: `local up` on a full file system said "see daemon.log" (0 bytes: the disk was full) and
    left the first metadata server running, a half-made cluster that `local status` called running.
    The disk fills at different steps (a daemon's Raft log, its store, `local up`'s own list of servers:
    CI's said only "No space left on device"), the more so at 3 MiB."""
    small = tmp_path / "small"
    small.mkdir()
    mount_tmpfs(small, mib << 20)
    try:
        up = run_cli("local", "up", "--dir", str(small / "c"), "--name", "fulldisk", timeout=120)
        error = one_line_error(up)
        assert "full" in error, error
        status = run_cli("local", "status", "--dir", str(small / "c"), "--json")
        assert status.returncode == 0, status.stderr
        assert not [p for p in json.loads(status.stdout)["processes"] if p["running"]], status.stdout
    finally:
        run_cli("local", "down", "--dir", str(small / "c"))
        unmount(small)
