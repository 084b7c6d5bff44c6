"""A metadata server whose folder was put back from an old copy: its log lacks entries it had acknowledged, which
nothing in the folder shows; the master sees it, removes it from the group and says what to do, and the founder
founds nothing.  (A folder emptied but for node.json is refused by the member itself: test_mds_log_damaged.py.)"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from chunkfs.common.config import load_node
from chunkfs.common.errors import ChunkFSError
from chunkfs.testing.cluster import master_id, member_in_step, wait_for


def _quietly(check):  # a request may meet the wiped member, whose redirect is followed next time
    def run():
        with contextlib.suppress(ChunkFSError):
            return check()
        return None
    return run


def test_a_founder_put_back_from_an_old_copy_is_removed_by_the_master_and_founds_no_new_group(
        make_cluster, tmp_path: Path) -> None:
    cluster = make_cluster(n_cs=1, n_mds=3)
    founder = Path(cluster.find("mds", 1).dir)
    old_copy = tmp_path / "mds1-copy"
    with cluster.client() as c:
        c.client.mds.retry_for = 30.0
        for i in range(20):
            c.mkdir(f"/d{i}")
        assert not load_node(founder)[0].bootstrap  # founded once, never again
        cluster.kill("mds", 1, signal.SIGTERM)
        shutil.copytree(founder, old_copy, symlinks=True)  # an operator's backup of this one member
        cluster.start("mds", 1)
        for i in range(20):
            c.mkdir(f"/e{i}")  # acknowledged by MDS#1 too, once it follows in step
        if master_id(c) == 1:  # let another lead, with MDS#1 a follower it has heard from
            cluster.kill("mds", 1, signal.SIGKILL)
            wait_for("a new master", _quietly(lambda: master_id(c) != 1), timeout=30)
            cluster.start("mds", 1)
            c.mkdir("/while-mds1-follows")
        # The master's view: MDS#1 acknowledged everything it has.
        wait_for("MDS#1 to follow in step", _quietly(lambda: member_in_step(c, 1)), timeout=30)
        cluster.kill("mds", 1, signal.SIGTERM)
        shutil.rmtree(founder)
        shutil.copytree(old_copy, founder, symlinks=True)
        (founder / "chunkfs.pid").unlink(missing_ok=True)
        cluster.start("mds", 1)
        c.mkdir("/after")  # the others go on
        # It could help elect a master lacking what it had acknowledged: it leaves the group, durably.
        wait_for("an event saying MDS#1 was removed, with the command that adds a new one", _quietly(lambda: any(
            "MDS#1 removed" in e["message"] and "chunkfs make-mds" in e["message"] for e in c.events())), timeout=30)
        members = {m["id"]: m["role"] for m in c.cluster_stat()["mds"]}
        assert 1 not in members and list(members.values()).count("master") == 1, members
        assert "after" in [name for name, _ino, _type in c.listdir("/")]
        # The repair the event names: a new member at the same address, from an empty folder.
        addr = cluster.find("mds", 1).addr
        cluster.kill("mds", 1, signal.SIGTERM)
        shutil.rmtree(founder)
        made = subprocess.run([sys.executable, "-m", "chunkfs", "-c", cluster.name, "make-mds", "-a", addr,
                               "-r", str(founder)], capture_output=True, text=True, timeout=60, check=False)
        assert made.returncode == 0, made.stderr
        new_id = load_node(founder)[0].node_id
        cluster.start("mds", 1)
        wait_for(f"the new MDS#{new_id} at {addr} in step", _quietly(lambda: member_in_step(c, new_id)), timeout=60)
    log = (founder / "daemon.log").read_text()
    assert "is now the master" not in log, log[-2000:]  # it did not found a group of its own
