"""Three metadata servers: killing or freezing the master loses nothing acknowledged."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from chunkfs.client.client import SyncClient
from chunkfs.common.config import load_client_config
from chunkfs.common.errors import ChunkFSError, NotMaster, Timeout
from chunkfs.protocol import mds_link
from chunkfs.protocol.messages import Msg
from chunkfs.protocol.rpc import Credentials, connect
from chunkfs.testing.cluster import master_id

from .conftest import run_cli

MiB = 1 << 20


class Workload:
    """Metadata and data operations in a loop; remembers what was acknowledged."""

    def __init__(self, cluster) -> None:
        self.client = cluster.client()
        self.client.client.mds.retry_for = 30.0
        self.acked: dict[str, bytes] = {}
        self.errors: list[BaseException] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        c = self.client
        try:
            c.mkdir("/w")
            for i in range(10_000):
                if self.stop.is_set():
                    return
                path, data = f"/w/f{i}", os.urandom(1000 + i * 997 % 300_000)
                f = c.open(path, create=True)
                c.run(f.write(0, data))
                c.run(f.fsync())
                self.acked[path] = data
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(exc)

    def __enter__(self) -> Workload:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(60)
        self.client.close()


def test_kill_9_of_the_master_during_a_workload(make_cluster) -> None:
    cluster = make_cluster(n_cs=3, n_mds=3)
    with cluster.client() as c, Workload(cluster) as work:
        deadline = time.monotonic() + 30
        while len(work.acked) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        old = master_id(c)
        cluster.kill("mds", old)
        killed_at = time.monotonic()
        c.client.mds.retry_for = 30.0
        c.mkdir("/probe")  # retried by the client until a new master commits it
        failover = time.monotonic() - killed_at
        print(f"new master committed {failover:.2f}s after kill -9 of MDS#{old}")
        acked_before = len(work.acked)
        deadline = time.monotonic() + 30
        while len(work.acked) < acked_before + 20 and time.monotonic() < deadline and not work.errors:
            time.sleep(0.05)
        assert not work.errors, work.errors
        assert len(work.acked) >= acked_before + 20, "the workload did not carry on after failover"
        new = master_id(c)
        assert new != old
        assert failover < 20, f"failover took {failover:.1f}s"
    # Everything acknowledged is there, on the new master.
    with cluster.client() as c:
        for path, data in work.acked.items():
            attr = c.stat(path)
            assert attr["size"] == len(data), path
            assert c.read(attr["ino"], 0, len(data)) == data, path
        assert c.stat("/probe")["type"] == "d"
        # The old master comes back as a follower and catches up.
        cluster.start("mds", old)
        cluster.wait_ready()
        roles = {m["id"]: m["role"] for m in c.cluster_stat()["mds"]}
        assert roles[old] == "follower"


def test_two_of_three_killed_then_one_back(make_cluster) -> None:
    cluster = make_cluster(n_cs=2, n_mds=3)
    with cluster.client() as c:
        c.mkdir("/kept")
        master = master_id(c)
    others = [p.id for p in cluster.processes if p.role == "mds" and p.id != master]
    cluster.kill("mds", master)
    cluster.kill("mds", others[0])
    with cluster.client() as c:
        c.client.mds.retry_for = 5.0
        started = time.monotonic()
        with pytest.raises(ChunkFSError) as info:
            c.mkdir("/lost")
        assert time.monotonic() - started < 60
        message = str(info.value)
        assert "master" in message or "quorum" in message or "reach" in message, message
    cluster.start("mds", master)
    cluster.wait_ready()
    with cluster.client() as c:
        c.client.mds.retry_for = 30.0
        assert c.stat("/kept")["type"] == "d"
        c.mkdir("/after")
        names = {name for name, _, _ in c.listdir("/")}
        assert {"kept", "after"} <= names


def test_frozen_master_is_deposed_and_never_commits(make_cluster) -> None:
    """SIGSTOP cuts the master off; the others elect a new one; the old one, resumed, steps down."""
    cluster = make_cluster(n_cs=2, n_mds=3)
    with cluster.client() as c:
        c.mkdir("/before")
        old = master_id(c)
        old_proc = cluster.find("mds", old)
        os.kill(old_proc.pid, signal.SIGSTOP)
        try:
            c.client.mds.retry_for = 30.0
            c.client.mds.close()
            c.mkdir("/during")
            new = master_id(c)
            assert new != old
        finally:
            os.kill(old_proc.pid, signal.SIGCONT)
        # Asked directly (no redirects followed), the resumed ex-master refuses to act as master.
        creds = Credentials(cluster.name, load_client_config(cluster.name).secret, "client", "direct")
        with SyncClient(load_client_config(cluster.name)) as direct:
            conn = direct.run(connect(old_proc.addr, creds))
            refused = None
            for _ in range(20):
                try:
                    direct.run(conn.call(Msg.MKDIR, {"parent": 1, "name": "split-brain", "mode": 0o755}, timeout=5))
                except (NotMaster, Timeout) as exc:
                    refused = exc
                    break
                except ChunkFSError:
                    time.sleep(0.2)
            conn.close()
        assert refused is not None, "the deposed master accepted a change"
        names = {name for name, _, _ in c.listdir("/")}
        assert "split-brain" not in names
        assert {"before", "during"} <= names
        assert master_id(c) == new


@pytest.mark.parametrize(("silence_limit", "suspect", "said"), [
    (3.0, 60.0, "sent nothing for 3"),  # the connection's silence limit alone
    (60.0, mds_link.SUSPECT_SILENCE, "the others say the master is"),  # the others asked who the master is
], ids=["silence limit", "others asked"])
def test_a_request_on_the_connection_to_a_frozen_master_goes_to_the_new_one(
        make_cluster, monkeypatch, caplog, silence_limit: float, suspect: float, said: str) -> None:
    """Sent on the connection the client has to the master, frozen: it goes to the master the others elect,
    while the old one is still stopped.

    The frozen master's connection stays open and says nothing; before, the request waited for its
    whole call timeout (30 s) there, past the client's time for retries (20 s), and failed.  The
    connection is watched for silence (8 s by default), and once the master has been silent for
    SUSPECT_SILENCE the client asks the other metadata servers who the master is.  Each way alone
    moves the request here: the other one is set beyond the request's own timeout.
    """
    monkeypatch.setattr(mds_link, "SILENCE_LIMIT", silence_limit)
    monkeypatch.setattr(mds_link, "SUSPECT_SILENCE", suspect)
    cluster = make_cluster(n_cs=2, n_mds=3)
    with cluster.client() as c:
        c.mkdir("/before")  # the connection to the master is open
        old = master_id(c)
        old_proc = cluster.find("mds", old)
        os.kill(old_proc.pid, signal.SIGSTOP)
        try:
            with caplog.at_level("WARNING", logger="chunkfs.protocol"):
                c.mkdir("/during")  # with the default time for retries
            new = master_id(c)
            assert new != old
            # Still frozen: the answer came from the new master, not from the old one resumed.
            assert Path(f"/proc/{old_proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
        finally:
            os.kill(old_proc.pid, signal.SIGCONT)
        assert said in caplog.text
        names = [name for name, _, _ in c.listdir("/")]
        assert sorted(n for n in names if n in ("before", "during")) == ["before", "during"]


def test_adding_two_mds_and_removing_one_while_clients_work(make_cluster) -> None:
    cluster = make_cluster(n_cs=2, n_mds=3)
    with cluster.client() as c, Workload(cluster) as work:
        for _ in range(2):
            proc = cluster.add_mds()
            cluster.start("mds", proc.id)
        cluster.wait_ready()
        stat = c.cluster_stat()
        assert len(stat["mds"]) == 5
        assert sorted(m["role"] for m in stat["mds"]) == ["follower"] * 4 + ["master"]
        # Remove a follower, then the master itself (it hands over first).
        follower = next(m["id"] for m in stat["mds"] if m["role"] == "follower")
        run = run_cli("-c", cluster.name, "rm-mds", str(follower))
        assert run.returncode == 0, run.stderr
        cluster.kill("mds", follower)
        master = master_id(c)
        run = run_cli("-c", cluster.name, "rm-mds", str(master))
        assert run.returncode == 0, run.stderr
        cluster.kill("mds", master)
        c.client.mds.retry_for = 30.0
        c.mkdir("/after-changes")
        stat = c.cluster_stat()
        assert sorted(m["id"] for m in stat["mds"]) == sorted(
            p.id for p in cluster.processes if p.role == "mds" and p.id not in (follower, master)
        )
        time.sleep(0.5)
        assert not work.errors, work.errors
        acked = dict(work.acked)
    assert len(acked) > 5
    with cluster.client() as c:
        for path, data in acked.items():
            assert c.read(c.stat(path)["ino"], 0, len(data)) == data
