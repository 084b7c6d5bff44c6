"""A whole cluster of real processes on 127.0.0.1, under one directory.

`chunkfs local up` uses `LocalCluster`, and the test harness
(`chunkfs.testing.cluster`) builds on it: every daemon is a separate OS
process started with the ``chunkfs`` command itself, listening on a port
chosen when the cluster is made.  A daemon is found by the PID file
in its node directory, whoever started it (``local up``, a test, or an operator
with ``chunkfs mds -r DIR --background``), and believed only if
``/proc/PID/cmdline`` is ``chunkfs`` naming that directory; it is stopped by
that PID — never by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from chunkfs.cli.nodes import make_cs, make_mds
from chunkfs.cli.services import unlisted_node_dirs
from chunkfs.client.client import SyncClient
from chunkfs.common.config import NODE_FILE, REMOVED_FILE, ConfigError, load_client_config, load_node
from chunkfs.common.daemon import (
    daemon_pid,
    free_port,
    is_chunkfs_process,
    pid_alive,
    reap,
    start_background,
    wait_exit,
)
from chunkfs.common.durable import write_file_durably
from chunkfs.common.errors import ChunkFSError, Unavailable

STATE_FILE = "local.json"
READY_TIMEOUT = 30.0


@dataclass(slots=True)
class Process:
    role: str  # "mds" or "cs"
    id: int
    dir: str
    addr: str
    pid: int = 0


def _replace_hint(cluster: str, proc: Process) -> str:
    """What to do about a daemon of the cluster whose folder is gone (removed, or its disk lost)."""
    if proc.role == "mds":
        return (f"the folder of MDS {proc.id}, {proc.dir}, is gone: take it out of the metadata group with "
                f"`chunkfs -c {cluster} rm-mds ID` (its id, from `chunkfs -c {cluster} stat`) and add a new one "
                f"with `chunkfs -c {cluster} make-mds -r {proc.dir} -a {proc.addr}`")
    # The new server first: a cluster keeping as many replicas as it has servers refuses to drain the lost
    # one before there is a server to copy its replicas to (a fault probe followed the other order).
    return (f"the folder of chunk server {proc.id}, {proc.dir}, is gone: make a new one in its place with "
            f"`chunkfs -c {cluster} make-cs -r {proc.dir} -a {proc.addr}`, start it (`local up` again), then take "
            f"the lost one out with `chunkfs -c {cluster} rm-cs ID` (its id, from `chunkfs -c {cluster} stat`; its "
            "replicas are copied again from the others)")


class LocalCluster:
    def __init__(self, directory: Path, name: str) -> None:
        self.dir = directory.resolve()
        self.name = name
        self.processes: list[Process] = []
        #: Mount points of this cluster made by `local up --mount` (unmounted first by `local down`).
        self.mounts: list[str] = []
        #: While the cluster is being made: how many servers of each role it is to have (saved, so that a
        #: making cut off, by Ctrl-C say, is not taken for a whole cluster: a probe's was, with 0 chunk servers).
        self.making: dict[str, int] | None = None

    # -- making ---------------------------------------------------------------

    @classmethod
    def make(
        cls, directory: Path, name: str, n_mds: int = 1, n_cs: int = 3, chunk_size: int = 256 << 20,
        tls: bool = False,
    ) -> LocalCluster:
        if n_mds not in (1, 3, 5) and not 1 <= n_mds <= 7:
            raise ConfigError("--mds must be between 1 and 7 (3 or 5 survive the loss of 1 or 2)")
        if not 1 <= n_cs <= 64:
            raise ConfigError("--cs must be between 1 and 64")
        directory = directory.resolve()
        if (directory / STATE_FILE).exists():
            raise ConfigError(f"{directory} already holds a local cluster: start it with "
                              f"`chunkfs local up --dir {directory}` or remove it")
        cluster = cls(directory, name)
        cluster.making = {"mds": n_mds, "cs": n_cs}
        mds_dir = directory / "mds1"
        # With TLS, the cluster CA lands in the client configuration, and every node made here gets its
        # certificate from it (make_mds, make_cs).
        node = make_mds(name, mds_dir, f"127.0.0.1:{free_port()}", chunk_size, init=True,
                        metrics_addr=f"127.0.0.1:{free_port()}", tls=tls)
        cluster.processes.append(Process("mds", 1, str(mds_dir), node.addr))
        cluster.save()
        try:
            for _ in range(n_mds - 1):
                # Joining needs a running master: the founder starts now.
                if not cluster.running(cluster.processes[0]):
                    cluster.start("mds", 1)
                cluster.add_mds()
            for _ in range(n_cs):
                cluster.add_cs(host=None)
        except BaseException:
            cluster.stop_all()
            raise
        cluster.making = None
        cluster.save()
        return cluster

    def add_mds(self) -> Process:
        """Register one more MDS with the running cluster (it joins the group when started)."""
        number = 1 + max(p.id for p in self.processes if p.role == "mds")
        mds_dir = self.dir / f"mds{number}"
        node = make_mds(self.name, mds_dir, f"127.0.0.1:{free_port()}", 1 << 20, init=False,
                        metrics_addr=f"127.0.0.1:{free_port()}")
        proc = Process("mds", node.node_id, str(mds_dir), node.addr)
        self.processes.append(proc)
        self.save()
        return proc

    def add_cs(self, host: str | None = None, location: str = "", tier: int = 0) -> Process:
        number = 1 + sum(1 for p in self.processes if p.role == "cs")
        cs_dir = self.dir / f"cs{number}"
        node = make_cs(self.name, cs_dir, None, host, metrics_addr=f"127.0.0.1:{free_port()}",
                       location=location, tier=tier)
        proc = Process("cs", number, str(cs_dir), node.addr)
        self.processes.append(proc)
        self.save()
        return proc

    @classmethod
    def load(cls, directory: Path) -> LocalCluster:
        directory = directory.resolve()
        try:
            data = json.loads((directory / STATE_FILE).read_text())
            cluster = cls(directory, data["name"])
            cluster.processes = [Process(**p) for p in data["processes"]]
            if not isinstance(cluster.name, str) or not all(
                    isinstance(p.dir, str) and isinstance(p.addr, str) and isinstance(p.id, int)
                    for p in cluster.processes):
                raise ValueError("a name, or a server's dir, addr or id, of the wrong type")
            cluster.mounts = [str(m) for m in data.get("mounts", [])]
            cluster.making = data.get("making")
        except FileNotFoundError:
            raise ConfigError(
                f"{directory} holds no local cluster (no {STATE_FILE}): create one with `local up`"
            ) from None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            what = exc.strerror if isinstance(exc, OSError) else f"no {exc}" if isinstance(exc, KeyError) else exc
            raise ConfigError(
                f"{directory / STATE_FILE} is damaged ({what}): the servers' own folders in {directory} are "
                "untouched; mend the file (\"name\", and \"processes\": each server's role, id, dir and addr)"
            ) from None
        return cluster

    def save(self) -> None:
        data: dict[str, Any] = {"name": self.name, "processes": [asdict(p) for p in self.processes],
                                "mounts": self.mounts}
        if self.making is not None:
            data["making"] = self.making
        write_file_durably(self.dir / STATE_FILE, json.dumps(data, indent=2).encode())  # (a crash leaves the old)

    # -- running --------------------------------------------------------------

    def find(self, role: str, number: int) -> Process:
        for proc in self.processes:
            if proc.role == role and proc.id == number:
                return proc
        raise ConfigError(f"no {role}{number} in this local cluster")

    def start(self, role: str, number: int) -> Process:
        proc = self.find(role, number)
        proc.pid = start_background([role, "-r", proc.dir], Path(proc.dir), proc.addr)
        self.save()
        return proc

    def start_all(self) -> list[Process]:
        """Start every daemon of the cluster that is not running; the ones started.

        Daemons made by hand in the cluster's folder (``make-mds``/``make-cs -r DIR/...``) are its
        own from now on; a metadata server taken out with ``rm-mds`` (its address gone from the
        client configuration) is not started again, nor a chunk server removed with ``rm-cs`` (the mark
        it left in its folder).  A daemon whose folder is gone starts nothing
        (a one-line error says how to replace it), and the ones running go on; should a start
        fail, the ones this call started are stopped again, and only those.
        """
        for found in self._unlisted():
            if found.role == "cs":
                found.id = 1 + max((p.id for p in self.processes if p.role == "cs"), default=0)
            self.processes.append(found)
        removed = self._removed()
        self.processes = [p for p in self.processes if p not in removed]
        self.save()
        gone = [p for p in self.processes if not (Path(p.dir) / NODE_FILE).is_file() and not self.running(p)]
        if gone:
            raise ConfigError("; ".join(_replace_hint(self.name, p) for p in gone) + "; nothing was started")
        started: list[Process] = []
        try:
            for proc in self.processes:
                if not self.running(proc):
                    started.append(self.start(proc.role, proc.id))
        except BaseException:
            self.stop(started)
            raise
        return started

    def stop(self, procs: list[Process]) -> None:
        """Stop these daemons (those one `start_all` started), leaving the others running."""
        for proc in procs:
            with contextlib.suppress(OSError):
                self.kill(proc.role, proc.id, signal.SIGTERM)

    def cs_number(self, cs_id: int) -> int:
        """The process number (``csN`` folder) of chunk server CS#`cs_id`, as the master numbers it."""
        for proc in self.processes:
            if proc.role == "cs":
                with contextlib.suppress(ConfigError):
                    if load_node(Path(proc.dir))[0].node_id == cs_id:
                        return proc.id
        raise ConfigError(f"CS#{cs_id} is not in this local cluster")

    def live_pid(self, proc: Process) -> int | None:
        """The PID of `proc`'s daemon if it runs: from its node directory's PID file, checked in /proc."""
        pid = daemon_pid(Path(proc.dir))
        if pid is not None:
            proc.pid = pid  # started by someone else (by hand, another `local up`): remember it
        return pid

    def running(self, proc: Process) -> bool:
        return self.live_pid(proc) is not None

    def kill(self, role: str, number: int, sig: int = signal.SIGKILL) -> None:
        """Signal one daemon by the PID in its PID file (checked to be that daemon)."""
        proc = self.find(role, number)
        pid = self.live_pid(proc)
        if pid is not None:
            os.kill(pid, sig)
            if sig in (signal.SIGKILL, signal.SIGTERM):
                self._wait_gone(proc, pid)

    def _wait_gone(self, proc: Process, pid: int, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not reap(pid, 0.05) and time.monotonic() < deadline:
            time.sleep(0.02)
        if not reap(pid, 0) and is_chunkfs_process(pid, Path(proc.dir)):  # still that daemon: SIGKILL
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            wait_exit(pid, 5.0)

    def _unlisted(self) -> list[Process]:
        """Node folders inside the cluster's folder that it did not make (make-cs/make-mds -r DIR/...):
        their daemons are the cluster's too (a probe's `local down` left two running)."""
        found = []
        for directory in unlisted_node_dirs(self.dir, [Path(p.dir) for p in self.processes]):
            with contextlib.suppress(ConfigError, OSError):
                node = load_node(directory)[0]
                found.append(Process(node.role, node.node_id, str(directory), node.addr))
        return found

    def stop_all(self) -> int:
        """Stop every daemon of the cluster found by its PID file; return how many were running."""
        found = [(proc, pid) for proc in [*self.processes, *self._unlisted()]
                 if (pid := self.live_pid(proc)) is not None]
        for _proc, pid in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
                os.kill(pid, signal.SIGCONT)  # a SIGSTOPped daemon handles the SIGTERM only once it runs again
        for proc, pid in found:
            self._wait_gone(proc, pid)
        # Daemons this process started and someone killed: reap them (never signal a PID not checked above).
        for proc in self.processes:
            if proc.pid and not pid_alive(proc.pid):
                reap(proc.pid, 0)
        self.save()
        return len(found)

    def _removed(self) -> list[Process]:
        """The daemons the cluster removed: a chunk server taken out with ``rm-cs`` (the mark it left in its
        folder), a metadata server taken out with ``rm-mds`` (its address gone from the client configuration;
        never all of them: that is a stale configuration)."""
        removed = [p for p in self.processes if p.role == "cs" and (Path(p.dir) / REMOVED_FILE).is_file()]
        with contextlib.suppress(ConfigError):
            members = set(load_client_config(self.name).mds)
            gone = [p for p in self.processes if p.role == "mds" and p.addr not in members]
            if len(gone) < sum(p.role == "mds" for p in self.processes):
                removed += gone
        return removed

    def status(self) -> list[dict[str, Any]]:
        """A row per daemon, those the cluster removed left out once stopped (a probe: `local status` still
        listed an MDS taken out with rm-mds, as "stopped", which `local up` would not start)."""
        out = []
        removed = self._removed()
        for proc in [*self.processes, *self._unlisted()]:
            if proc in removed and not self.running(proc):
                continue
            node_id = proc.id
            # The cluster's own numbering (a chunk server's, or a metadata server made again with make-mds).
            with contextlib.suppress(ConfigError):
                node_id = load_node(Path(proc.dir))[0].node_id or node_id
            pid = self.live_pid(proc)
            out.append({"role": proc.role, "id": node_id, "pid": pid, "addr": proc.addr, "dir": proc.dir,
                        "running": pid is not None})
        return out

    def client(self) -> SyncClient:
        return SyncClient(load_client_config(self.name))

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> dict[str, Any]:
        """Wait until a master answers, every running MDS is a member and every running CS is active."""
        want = {p.addr for p in self.processes if p.role == "cs" and self.running(p)}
        want_mds = {p.addr for p in self.processes if p.role == "mds" and self.running(p)}
        deadline = time.monotonic() + timeout
        last: object = None
        with self.client() as client:
            client.client.mds.retry_for = 2.0
            while time.monotonic() < deadline:
                try:
                    stat = client.cluster_stat()
                    active = {s["addr"] for s in stat["cs"] if s["status"] == "active"}
                    members = {m["addr"] for m in stat["mds"] if m["role"] in ("master", "follower")}
                    if want <= active and want_mds <= members:
                        return stat
                    last = (f"chunk servers not yet active: {sorted(want - active)}; "
                            f"metadata servers not yet members: {sorted(want_mds - members)}")
                except ChunkFSError as exc:
                    last = exc
                time.sleep(0.1)
        raise Unavailable(f"the local cluster did not become ready within {timeout:g}s: {last}")
