"""What the `chunkfs` command refuses, found by an operator probe: one line, a non-zero status, nothing changed."""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from chunkfs.common.config import cluster_conf_path, load_client_config
from chunkfs.common.daemon import daemon_pid, pid_alive

from ._disk_helpers import mount_tmpfs, unmount
from .conftest import one_line_error, run_cli

HUGE = "99999999999999999999999"


def _usage_error(result: subprocess.CompletedProcess[str]) -> str:
    """argparse's refusal: its usage line, then one error line; status 2, no traceback."""
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 2, result.stderr
    return result.stderr.splitlines()[1]


def test_numbers_and_paths_no_message_can_carry_are_refused_before_they_go_out(conf_dir) -> None:
    """A number past 64 bits ended in the encoder's traceback (58 lines); an empty path in odd errors."""
    for args in (["rm-cs", HUGE], ["rm-mds", HUGE], ["get-event", "--limit", HUGE], ["get-event", "--since", HUGE],
                 ["rm-cs", "0"], ["get-event", "--limit", "0"], ["get-event", "--since", "-1"]):
        assert "expected a whole number" in _usage_error(run_cli("-c", "any", *args)), args
    assert "expected seconds" in _usage_error(run_cli("-c", "any", "rm-cs", "3", "--wait", "--timeout", "-1"))
    assert "1 to 64 characters" in _usage_error(run_cli("-c", "any", "tls", "issue", "--name", "a" * 300, "/tmp/x"))
    for args in (["put", "/etc/hostname", ""], ["put", "", "/a"], ["get", "", "x"], ["get", "/a", ""],
                 ["mkdir", ""], ["ls", ""]):
        assert "an empty path" in _usage_error(run_cli("-c", "any", *args)), args
    # A cluster named that has no configuration here: said so, not "no secret is staged" or "ca.key is missing".
    for args in (["secret", "finish"], ["secret", "abort"], ["tls", "issue", str(conf_dir)]):
        assert "unknown cluster 'nosuch'" in one_line_error(run_cli("-c", "nosuch", *args)), args


def test_refusals_against_a_running_cluster_change_nothing(make_cluster, tmp_path: Path) -> None:
    cluster = make_cluster(n_cs=1)
    name = cluster.name
    conf = cluster_conf_path(name)
    before = (conf / "cluster.json").read_bytes()

    # TLS turned on in the client configuration alone, the cluster still in plain TCP, cut this host off.
    err = one_line_error(run_cli("-c", name, "tls", "enable"))
    assert "still answers without TLS" in err and "nothing changed" in err, err
    assert (conf / "cluster.json").read_bytes() == before and not (conf / "ca").exists()
    # A secret staged "in" a folder that holds no cluster.
    err = one_line_error(run_cli("-c", name, "secret", "stage", "--local", str(tmp_path / "nonexistent")))
    assert "holds no node directory" in err, err
    assert not (conf / "secret.next").exists()
    # The cluster's root as the target of a copy.
    assert "root directory" in one_line_error(run_cli("-c", name, "put", "/etc/hostname", "/"))
    assert run_cli("-c", name, "ls", "/").stdout == ""
    # A tier no chunk server has: done, and said what it means.
    assert run_cli("-c", name, "mkdir", "/d").returncode == 0
    done = run_cli("-c", name, "set-attr", "/d", "tier=2")
    assert done.returncode == 0 and "no chunk server of tier 2" in done.stderr, done
    assert "no chunk server" not in run_cli("-c", name, "set-attr", "/d", "tier=0").stderr
    # `get-event --follow --limit N`: the last N, then what comes (it printed every event, then followed).
    follow = subprocess.Popen([sys.executable, "-m", "chunkfs", "-c", name, "get-event", "-f", "--limit", "1"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(3)
    finally:
        follow.terminate()
        out, _ = follow.communicate(timeout=30)
    assert len(run_cli("-c", name, "get-event").stdout.splitlines()) > 1
    assert len(out.splitlines()) == 1, out
    # Something else listening where the client configuration says a metadata server is.
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        addr = f"127.0.0.1:{server.server_address[1]}"
        (conf / "mds.list").write_text(f"{addr}\n")
        err = one_line_error(run_cli("--retry-for", "1", "-c", name, "ls", "/", timeout=120))
        assert addr in err, err
    finally:
        server.shutdown()
        server.server_close()


def test_a_daemon_started_with_a_wrong_secret_is_stopped_and_says_so(make_cluster, tmp_path: Path) -> None:
    """It said "started" (status 0), then only logged the refusal, again and again, where nobody looks."""
    cluster = make_cluster(n_cs=1)
    node_dir = tmp_path / "cs-wrong"
    assert run_cli("-c", cluster.name, "make-cs", "-r", str(node_dir)).returncode == 0
    secret = (node_dir / "secret").read_text()  # hexadecimal: another first digit makes another secret
    (node_dir / "secret").write_text(("1" if secret[0] != "1" else "2") + secret[1:])
    err = one_line_error(run_cli("cs", "-r", str(node_dir), "--background"))
    assert "stopped again, refused" in err and "secret" in err, err
    pid = daemon_pid(node_dir.resolve())
    assert pid is None or not pid_alive(pid)
    assert len(cluster.client().cluster_stat()["cs"]) == 1


def test_top_once_without_an_answer_is_one_line(make_cluster) -> None:
    """It drew its frame's message hard-wrapped onto two lines, with a prefix of its own."""
    cluster = make_cluster(n_cs=1)
    config = load_client_config(cluster.name)
    cluster.stop_all()
    assert config.mds
    err = one_line_error(run_cli("--retry-for", "1", "-c", cluster.name, "top", "--once", "--width", "80",
                                  timeout=120))
    assert "no answer from the cluster" in err, err


def test_umount_leaves_a_file_system_that_is_not_chunkfs_mounted(tmp_path: Path) -> None:
    """As root, the fusermount3 it runs unmounts anything: a tmpfs named by mistake went (status 0)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    where = tmp_path / "tmpfs"
    where.mkdir()
    mount_tmpfs(where, 1 << 20)
    try:
        err = one_line_error(run_cli("umount", str(where)))
        assert "tmpfs mount, not a ChunkFS one" in err, err
        assert os.path.ismount(where)
    finally:
        unmount(where)


def test_a_member_removed_before_it_ever_started_stops_at_its_start_and_says_why(make_cluster, tmp_path: Path) -> None:
    """An operator probe: `mds --background` of a member `rm-mds` had removed said "started", status 0, and
    the daemon then logged the master's refusal every second, for good ("create it with make-mds", which
    refused that folder: it already holds a metadata server)."""
    cluster = make_cluster(n_cs=1)
    new_dir = tmp_path / "mds-new"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        addr = f"127.0.0.1:{s.getsockname()[1]}"
    assert run_cli("-c", cluster.name, "make-mds", "-a", addr, "-r", str(new_dir), timeout=120).returncode == 0
    node_id = json.loads((new_dir / "node.json").read_text())["node_id"]
    done = run_cli("-c", cluster.name, "rm-mds", str(node_id), timeout=120)
    assert done.returncode == 0, done.stderr
    try:
        err = one_line_error(run_cli("mds", "-r", str(new_dir), "--background", timeout=120))
        assert "not a member" in err and "make-mds" in err, err
    finally:
        pid = daemon_pid(new_dir)
        if pid is not None and pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
            raise AssertionError("the removed member's daemon still ran")


def test_a_mount_over_a_running_daemons_folder_is_refused_and_so_is_an_empty_mount_point(make_cluster) -> None:
    """An operator probe: `mount --background ''` (the working directory, which held the servers' folders)
    mounted the cluster over its own servers: they stopped, and every later command hung on the mount."""
    cluster = make_cluster(n_cs=1)
    node = Path(cluster.find("cs", 1).dir)
    for over in (cluster.dir, node):
        err = one_line_error(run_cli("-c", cluster.name, "mount", "--background", str(over), timeout=60))
        assert "would hide" in err and str(cluster.dir) in err, err
        assert not os.path.ismount(over)
    assert "an empty mount point" in _usage_error(run_cli("-c", cluster.name, "mount", "--background", ""))
    assert run_cli("-c", cluster.name, "mkdir", "/still-serving").returncode == 0


def test_a_path_longer_than_a_mount_can_reach_is_refused_before_anything_is_made(conf_dir) -> None:
    """An operator probe: `mkdir -p` of 3,000 levels (6,001 bytes) ran until it was killed, 2,000 levels made."""
    deep = "/b" * 2100
    assert "shorter than 4096 bytes" in _usage_error(run_cli("-c", "any", "mkdir", "-p", deep))


def test_commands_with_standard_output_closed_do_their_work_and_do_not_abort(make_cluster, tmp_path: Path) -> None:
    """An operator probe: `put FILE /x >&-` stored the file, then aborted in libuv (exit 134): the event
    loop's first socket took the closed number 1, and libuv asserts it never closes 0-2."""
    cluster = make_cluster(n_cs=3)
    source = tmp_path / "small"
    source.write_bytes(b"kept\n")
    for args in (["put", str(source), "/small"], ["ls", "/"], ["stat"]):
        done = subprocess.run([sys.executable, "-m", "chunkfs", "-c", cluster.name, *args], stdin=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, timeout=60, check=False,
                              preexec_fn=lambda: os.close(1))  # noqa: PLW1509 - the child's own fd, before exec
        assert done.returncode == 0, (args, done.returncode, done.stderr)
    assert run_cli("-c", cluster.name, "get", "/small", "-").stdout == "kept\n"
    # A source that fails to read: said with its name (it was "Input/output error" alone), nothing left.
    err = one_line_error(run_cli("-c", cluster.name, "put", "/proc/self/mem", "/pmem"))
    assert "/proc/self/mem: reading it at byte 0" in err, err
    assert run_cli("-c", cluster.name, "ls", "/").stdout.split() == ["small"]


def test_local_up_refuses_a_bad_mount_point_or_option_before_it_makes_a_cluster(conf_dir, tmp_path: Path) -> None:
    """An operator probe: a new cluster was made and left running, then `--mount` of a file, or an `-o`
    out of range, was refused; `-o` without `--mount` was ignored without a word."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    new = tmp_path / "new"
    for args, said in ((["--mount", str(afile)], "is not a directory"),
                       (["--mount", str(tmp_path / "m"), "-o", "cache_timeout=-1"], "cache_timeout=-1"),
                       (["-o", "ro"], "give --mount")):
        err = one_line_error(run_cli("local", "up", "--dir", str(new), "--name", "nomade", *args, timeout=60))
        assert said in err, (args, err)
        assert not new.exists() and not (conf_dir / "clusters" / "nomade").exists(), args
    assert "is not a directory" in one_line_error(run_cli("local", "up", "--dir", str(afile), timeout=60))


def test_tls_enable_of_some_folders_names_the_metadata_servers_left_in_plain_tcp(make_cluster) -> None:
    """An operator probe: `tls enable` of one folder of three said only "TLS on", and the next start of the
    cluster failed on the handshake with the others."""
    cluster = make_cluster(n_cs=1, n_mds=3)
    cluster.stop_all()
    first, others = cluster.find("mds", 1), [cluster.find("mds", i) for i in (2, 3)]
    done = run_cli("-c", cluster.name, "tls", "enable", first.dir, timeout=60)
    assert done.returncode == 0, done.stderr
    warning = done.stderr.strip()
    assert warning.startswith("warning:") and "still run plain TCP" in warning, done.stderr
    assert all(p.addr in warning for p in others) and first.addr not in warning, warning
