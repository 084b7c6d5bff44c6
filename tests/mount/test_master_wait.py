"""`-o master_wait=S`: how long a request through the mount waits for a master before it fails.

A VM image on the mount would rather wait out a metadata outage than have its
guest see I/O errors; by default (20 s) a request gives up with EIO.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import threading
import time
from pathlib import Path

from chunkfs.protocol.mds_link import DEFAULT_RETRY_FOR

from .conftest import chunkfs, local_up_mounted

OUTAGE = DEFAULT_RETRY_FOR + 5  # longer than a request waits by default


def test_a_request_waits_out_an_outage_longer_than_the_default_with_master_wait(
        tmp_path: Path, conf_dir: Path) -> None:
    with local_up_mounted(tmp_path, "mw", "-o", f"master_wait={OUTAGE * 4:g}") as (d, mnt):
        (mnt / "before").write_bytes(b"written before the outage\n")
        (mds,) = [p["pid"] for p in json.loads((d / "local.json").read_text())["processes"] if p["role"] == "mds"]
        os.kill(mds, signal.SIGKILL)
        outcome: list[object] = []

        def create() -> None:
            try:
                (mnt / "during").write_bytes(b"asked for while no master was up\n")
                outcome.append("done")
            except OSError as exc:
                outcome.append(exc)

        writer = threading.Thread(target=create)
        writer.start()
        time.sleep(OUTAGE)
        still_waiting = writer.is_alive()  # by default it would have failed with EIO by now
        done = chunkfs("local", "up", "--dir", str(d), timeout=120)
        assert done.returncode == 0, done.stderr
        writer.join(timeout=OUTAGE * 4)
        assert still_waiting and outcome == ["done"], outcome
        assert (mnt / "during").read_bytes() == b"asked for while no master was up\n"
        assert (mnt / "before").read_bytes() == b"written before the outage\n"


def test_a_bad_master_wait_is_refused_in_one_line(tmp_path: Path, conf_dir: Path) -> None:
    (tmp_path / "m").mkdir()
    done = chunkfs("-c", "nosuch", "mount", str(tmp_path / "m"), "-o", "master_wait=0")
    assert done.returncode != 0
    assert "master_wait=0 is out of range" in done.stderr and len(done.stderr.splitlines()) == 1


def test_a_mount_of_a_cluster_that_is_down_says_so(tmp_path: Path, make_cluster) -> None:
    """`mount --background` of a stopped cluster names the cause (a probe saw only "did not start listening
    within 20s", pointing to an empty log): its daemon gives up before the command stops waiting for it."""
    cluster = make_cluster(n_cs=1)
    cluster.stop_all()
    mnt = tmp_path / "down"
    mnt.mkdir()
    result = chunkfs("-c", cluster.name, "mount", str(mnt), "--background", timeout=60)
    assert result.returncode == 1
    assert "no metadata server reachable" in result.stderr and "is the cluster running?" in result.stderr, result
    assert not os.path.ismount(mnt)


def test_a_request_with_no_master_elected_fails_with_eio(make_cluster, mount) -> None:
    """One metadata server of three up: no master can be elected, and after `master_wait` a request
    through the mount fails with EIO, as the README says (it was EAGAIN, which programs retry forever)."""
    cluster = make_cluster(n_cs=1, n_mds=3, name="nomaster")
    mnt = mount(cluster, "mnt", "master_wait=2")
    (mnt / "before").mkdir()
    cluster.kill("mds", 1)
    cluster.kill("mds", 2)
    started = time.monotonic()
    try:
        (mnt / "during").mkdir()
    except OSError as exc:
        assert exc.errno == errno.EIO, f"{errno.errorcode.get(exc.errno)}: {exc}"
    else:
        raise AssertionError("a mkdir with one metadata server of three up succeeded")
    assert time.monotonic() - started < 60
