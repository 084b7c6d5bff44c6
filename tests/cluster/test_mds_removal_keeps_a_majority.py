"""`rm-mds` leaves a majority of metadata servers that answer, or refuses in one line.

A fault probe of membership changes under load: with one of three metadata servers down (killed or
frozen), `rm-mds` of a healthy one committed (the master and that one made the majority) and left a
group of two that needed the dead one: no master for minutes, every client's change failing with EIO
(for good, had the dead one's disk been lost).  And `rm-mds` of the master always handed over to the
member with the lowest id: frozen, it made the command hang while no change committed.
"""

from __future__ import annotations

import signal
import time

from chunkfs.common.config import load_client_config
from chunkfs.raft.driver import ELECTION_TIMEOUT
from chunkfs.testing.cluster import master_id

from .conftest import one_line_error, run_cli


def test_a_removal_that_would_leave_no_answering_majority_is_refused(make_cluster) -> None:
    cluster = make_cluster(n_cs=1, n_mds=3)
    with cluster.client() as c:
        c.client.mds.retry_for = 30.0
        master = master_id(c)
        down, healthy = sorted(m["id"] for m in c.cluster_stat()["mds"] if m["id"] != master)
        cluster.kill("mds", down)
        time.sleep(3 * ELECTION_TIMEOUT)  # the master stops counting it among the members that answer
        for target in (healthy, master):
            err = one_line_error(run_cli("-c", cluster.name, "rm-mds", str(target)))
            assert "would leave 2 metadata servers, of which 1 answers: a master needs 2" in err, err
            assert f"MDS#{down} does not answer" in err, err
            assert f"chunkfs rm-mds {down}" in err, err
        assert master_id(c) == master
        assert sorted(m["id"] for m in c.cluster_stat()["mds"]) == [1, 2, 3]
        c.mkdir("/changes-go-on")
        # The member that is down may go: the two left both answer.
        run = run_cli("-c", cluster.name, "rm-mds", str(down))
        assert run.returncode == 0, run.stderr
        c.mkdir("/after-its-removal")
        assert sorted(m["id"] for m in c.cluster_stat()["mds"]) == sorted([master, healthy])
    addr = cluster.find("mds", down).addr
    assert addr not in load_client_config(cluster.name).mds


def test_the_master_removed_hands_over_to_a_member_that_answers(make_cluster) -> None:
    cluster = make_cluster(n_cs=1, n_mds=3)
    proc = cluster.add_mds()
    cluster.start("mds", proc.id)
    cluster.wait_ready()
    with cluster.client() as c:
        c.client.mds.retry_for = 30.0
        master = master_id(c)
        frozen = min(m["id"] for m in c.cluster_stat()["mds"] if m["id"] != master)
        cluster.kill("mds", frozen, signal.SIGSTOP)
        try:
            time.sleep(3 * ELECTION_TIMEOUT)
            run = run_cli("-c", cluster.name, "rm-mds", str(master), timeout=60)
            assert run.returncode == 0, run.stderr
            new = master_id(c)
            assert new not in (master, frozen)
            c.mkdir("/after-the-handover")
        finally:
            cluster.kill("mds", frozen, signal.SIGCONT)
        assert sorted(m["id"] for m in c.cluster_stat()["mds"]) == sorted({1, 2, 3, proc.id} - {master})
