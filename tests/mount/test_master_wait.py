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

from .conftest import chunkfs, local_up_mounted, logs_of

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
        # (CI saw EIO once, not reproduced since: the logs say which request failed, and when.)
        assert still_waiting and outcome == ["done"], \
            f"waiting at {OUTAGE:g} s: {still_waiting}; {outcome}\n{logs_of(d, mnt)}"
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


def test_a_change_a_master_held_when_it_lost_its_majority_is_answered_once_one_is_back(make_cluster, mount) -> None:
    """A fault probe (4 of 4): the master killed, the other follower killed right after the next election,
    both down longer than `master_wait`: the new master, alone, held a mkdir in its log; the mount failed it
    with EIO, and a master elected later committed it: the directory was there, and a retry got EEXIST.
    Now that master answers "it may still take effect" as it steps down, and the mount asks again until a
    master answers: no error, and exactly the directories acknowledged."""
    from chunkfs.testing.cluster import master_id, wait_for, wait_for_new_master

    cluster = make_cluster(n_cs=1, n_mds=3, name="lone")
    # Long enough for a mkdir in flight at the first kill to reach the next master (one sent to a master
    # killed with it in its log has no answer to go by: the README's "Left").
    mnt = mount(cluster, "mnt", "master_wait=6")
    (mnt / "d").mkdir()
    results: list[tuple[int, str]] = []
    stop = threading.Event()

    def make_dirs() -> None:
        for i in range(100_000):
            if stop.is_set():
                return
            try:
                os.mkdir(mnt / "d" / f"m{i}")
                results.append((i, "ok"))
            except OSError as exc:
                results.append((i, errno.errorcode.get(exc.errno or 0, str(exc.errno))))

    client = cluster.client()
    worker = threading.Thread(target=make_dirs)
    worker.start()
    try:
        time.sleep(1)
        old = master_id(client)
        cluster.kill("mds", old)
        new = wait_for_new_master(client, old)
        # Once it takes changes (a new master holds them until no mount trusts the old one's notices:
        # kernel_cache.py, rule 6; killed before, the other left it alone with nothing in its log).
        since = len(results)
        wait_for("two mkdirs answered by the new master", lambda: len(results) >= since + 2, timeout=30)
        (other,) = {1, 2, 3} - {old, new}
        cluster.kill("mds", other)  # the new master alone, with the mkdir the loop sent it
        time.sleep(10)  # past master_wait, and past the lone master's step-down
        cluster.start("mds", old)
        cluster.start("mds", other)
        time.sleep(5)
    finally:
        stop.set()
        worker.join(120)
        client.close()
    assert not worker.is_alive()
    # A mkdir sent while no master is elected fails with EIO after `master_wait` (the test above): under
    # load the lone master may step down before the loop's next mkdir reaches it, and then the outage
    # fails one every 6 s (a CI run: 2).  What must never be: a mkdir answered with an error that took
    # effect (the probe's: the held one failed, then committed), or one answered "ok" that did not.
    failed = [r for r in results if r[1] != "ok"]
    assert all(e == "EIO" for _, e in failed) and len(failed) <= 3, failed
    assert sorted(os.listdir(mnt / "d")) == sorted(f"m{i}" for i, e in results if e == "ok")
