"""Making and running daemons: make-mds, make-cs, mds, cs."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import os
import shutil
import signal
import socket
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from chunkfs.cli import tls as tls_cli
from chunkfs.client.client import SyncClient, first_to_answer
from chunkfs.common.addr import parse_addr
from chunkfs.common.config import (
    NODE_FILE,
    SECRET_BYTES,
    ClientConfig,
    ClusterInfo,
    ConfigError,
    NodeConfig,
    check_chunk_size,
    check_cluster_name,
    check_location,
    check_tier,
    cluster_conf_path,
    load_client_config,
    load_node,
    save_client_config,
    save_node,
)
from chunkfs.common.daemon import (
    LOG_FILE,
    START_TIMEOUT,
    bind_error,
    free_port,
    last_error,
    refuse_if_running,
    rotate_log,
    run_foreground,
    start_background,
    wait_exit,
)
from chunkfs.common.durable import is_disk_full
from chunkfs.common.errors import AuthenticationFailed, ChunkFSError, Unavailable
from chunkfs.common.secret_files import SecretFiles
from chunkfs.protocol.rpc import Credentials
from chunkfs.protocol.tls import node_tls

if TYPE_CHECKING:
    from chunkfs.cs.server import ChunkServer
    from chunkfs.mds.server import MetadataServer

logger = logging.getLogger(__name__)

#: rm-mds of the master: tries while leadership moves to another MDS.
REMOVE_TRIES = 10
#: How long a daemon started in the background waits for each metadata server to say whether it accepts it.
START_CHECK_TIMEOUT = 3.0
#: How long `mds --background` waits for a new member to join the metadata group.
JOIN_WAIT = 20.0


def _check_empty_node_dir(directory: Path, cluster: str) -> None:
    if (directory / NODE_FILE).exists():
        try:
            other, _ = load_node(directory)
        except ConfigError:
            raise ConfigError(f"{directory} already holds a damaged ChunkFS node; choose an empty directory") from None
        if other.cluster.name != cluster:
            raise ConfigError(
                f"{directory} is a data directory of cluster {other.cluster.name!r}, not {cluster!r}; "
                "choose an empty directory"
            )
        raise ConfigError(f"{directory} already holds a {other.role.upper()} of cluster {cluster!r}")
    if directory.exists() and any(directory.iterdir()):
        raise ConfigError(f"{directory} is not empty; choose an empty or new directory")


def make_mds(
    cluster: str, directory: Path, addr: str, chunk_size: int, init: bool, metrics_addr: str = "",
    tls: bool = False,
) -> NodeConfig:
    """Create a cluster and its first metadata server (`init`), or add an MDS to a running cluster.

    `tls` (with `init`): the cluster runs TLS; its CA is made in this host's
    client configuration, and the MDS and the client configuration get their
    certificates.
    """
    check_cluster_name(cluster)
    check_chunk_size(chunk_size)
    parse_addr(addr)
    if not init:
        return _join_mds(cluster, directory, addr, metrics_addr)
    if (cluster_conf_path(cluster) / "cluster.json").exists():
        raise ConfigError(
            f"cluster {cluster!r} is already configured in {cluster_conf_path(cluster)}; "
            "pick another name (--name, -c) or remove that directory"
        )
    _check_empty_node_dir(directory, cluster)
    _check_addr_free(addr)
    info = ClusterInfo(cluster, str(uuid.uuid4()), chunk_size, tls=tls)
    secret = os.urandom(SECRET_BYTES)
    node = NodeConfig(role="mds", cluster=info, addr=addr, node_id=1, peers=((1, addr),), bootstrap=True,
                      metrics_addr=_metrics_addr(metrics_addr))
    made_dir, made_conf = not directory.exists(), not cluster_conf_path(cluster).exists()
    try:
        if tls:
            from chunkfs.common import certs

            certs.make_ca(tls_cli.ca_dir(cluster), cluster, info.uuid)
        save_node(directory, node, secret)
        conf = save_client_config(ClientConfig(info, (addr,), secret))
        if tls:
            tls_cli.issue_if_possible(cluster, directory, f"mds1@{addr}")
            tls_cli.issue_if_possible(cluster, conf, "client")
    except BaseException:
        # Undone, so that the same command can run again once the cause is fixed (a probe: a read-only
        # configuration folder left the MDS folder made, and the next try refused it, "already holds a MDS").
        _empty_again(directory, remove=made_dir)
        if made_conf:
            shutil.rmtree(cluster_conf_path(cluster), ignore_errors=True)
        raise
    return node


def _empty_again(directory: Path, remove: bool) -> None:
    """Remove what a failed making wrote in `directory`, which was empty (or not there: `remove` it too)."""
    if remove:
        shutil.rmtree(directory, ignore_errors=True)
        return
    for child in directory.iterdir() if directory.is_dir() else ():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _join_mds(cluster: str, directory: Path, addr: str, metrics_addr: str = "") -> NodeConfig:
    """Register a new MDS with the running cluster; it becomes a voter when it first starts."""
    client = load_client_config(cluster)
    _check_empty_node_dir(directory, cluster)
    with SyncClient(client) as c:
        # The group's members now, not the configuration's list: the master removes a member that lost
        # its log by itself, and its address may then be taken again.
        members = {str(m["addr"]): int(m["id"]) for m in c.cluster_stat()["mds"]}
        if addr in members:
            raise ConfigError(f"{addr} is already MDS#{members[addr]} of {cluster!r}: if that server's data is lost, "
                              f"take it out first with `chunkfs -c {cluster} rm-mds {members[addr]}`; else choose "
                              f"another address")
        _check_addr_free(addr)
        reply = c.add_mds(addr)
    peers = tuple((int(i), str(a)) for i, a in reply["members"])
    node = NodeConfig(role="mds", cluster=client.cluster, addr=addr, node_id=reply["id"], peers=peers,
                      metrics_addr=_metrics_addr(metrics_addr))
    save_node(directory, node, client.secret)
    if client.cluster.tls:
        tls_cli.issue_if_possible(cluster, directory, f"mds{node.node_id}@{addr}")
    save_client_config(dataclasses.replace(client, mds=client.mds if addr in client.mds else (*client.mds, addr)))
    return node


def remove_mds(cluster: str, node_id: int) -> str | None:
    """Take an MDS out of the group (the master hands over first if it is the one removed)."""
    client = load_client_config(cluster)
    with SyncClient(client) as c:
        members = {int(m["id"]): m["addr"] for m in c.cluster_stat()["mds"]}
        for attempt in range(REMOVE_TRIES):
            try:
                # The master's word first: `stat` leaves out a member never started (its address stayed
                # in the client configuration, a probe found).
                members[node_id] = c.remove_mds(node_id) or members.get(node_id)
                break
            except Unavailable:
                if attempt == REMOVE_TRIES - 1:
                    raise
                time.sleep(1.0)
    addr = members.get(node_id)
    if addr is not None and addr in client.mds and len(client.mds) > 1:
        save_client_config(dataclasses.replace(client, mds=tuple(a for a in client.mds if a != addr)))
    return addr


def make_cs(
    cluster: str, directory: Path, addr: str | None, host: str | None, metrics_addr: str = "",
    location: str = "", tier: int = 0,
) -> NodeConfig:
    client = load_client_config(cluster)
    _check_empty_node_dir(directory, cluster)
    if addr is None:
        addr = f"127.0.0.1:{free_port()}"
    else:
        _check_addr_free(addr, optional=True)
    node = NodeConfig(
        role="cs", cluster=client.cluster, addr=addr, host=host or socket.gethostname(), mds=client.mds,
        metrics_addr=_metrics_addr(metrics_addr), location=check_location(location), tier=check_tier(tier),
    )
    save_node(directory, node, client.secret)
    if client.cluster.tls:
        tls_cli.issue_if_possible(cluster, directory, f"cs@{addr}")
    return node


def _check_addr_free(addr: str, optional: bool = False) -> None:
    """Refuse an address a process on this machine listens on already (a running server's, say).

    `optional`: the command may be given no address at all (it then takes a free port).

    An address of another machine, or one not bound here, passes: the daemon's own start says
    what is wrong with it then (an operator probe: make-cs took a running member's address).
    """
    host, port = parse_addr(addr)
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the daemons listen: TIME_WAIT is no use
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"{addr} is in use on this machine (a running server listens there?): choose "
                                  f"another address with -a{', or leave -a out for a free port' if optional else ''}"
                                  ) from None


def _metrics_addr(value: str) -> str:
    """Empty or "0": no metrics listener; otherwise HOST:PORT."""
    if value in ("", "0"):
        return ""
    parse_addr(value)
    return value


def _refused(directory: Path, node: NodeConfig, secret: bytes) -> str:
    """Why the cluster's metadata servers refuse this node's secret or certificate ("" if one accepts it,
    or none answers: a cluster being started one daemon at a time)."""
    creds = Credentials(node.cluster.name, secret, node.role, f"{node.role}-start-check-{os.getpid()}",
                        tls=node_tls(directory, node.cluster), secret_files=SecretFiles(directory, secret),
                        uuid=node.cluster.uuid)

    answered, failed = asyncio.run(first_to_answer(node.mds, creds, START_CHECK_TIMEOUT))
    refusals = [str(exc) for exc in failed if isinstance(exc, AuthenticationFailed)]
    return "" if answered or not refusals else refusals[-1]


def _wait_joined(directory: Path, pid: int) -> None:
    """A new MDS asks the master to join the group once it serves: wait (bounded) for it to hold Raft
    state, or for its stop, which is said here.  A member removed before it ever started was
    "started in the background" while it only logged the master's refusal, every second."""
    deadline = time.monotonic() + JOIN_WAIT
    while time.monotonic() < deadline:
        if wait_exit(pid, 0.2):
            raise Unavailable(f"MDS of {directory} stopped again: {last_error(directory / LOG_FILE)}")
        if load_node(directory)[0].joined:
            return
    logger.warning("MDS of %s has not joined the metadata group within %g s; see %s", directory, JOIN_WAIT,
                   directory / LOG_FILE)


def _disk_full(directory: Path, role: str, exc: BaseException) -> ChunkFSError:
    return ChunkFSError(f"the disk under {directory} is full ({exc}): free space there, then start this "
                        f"{role.upper()} again")


def run_node(role: str, directory: Path, background: bool) -> int:
    directory = directory.resolve()
    node, secret = load_node(directory)
    if node.role != role:
        raise ConfigError(f"{directory} holds a {node.role.upper()}, not a {role.upper()}")
    if background:
        pid = start_background([role, "-r", str(directory)], directory, node.addr)
        refused = _refused(directory, node, secret)
        if refused:
            # It would only log the refusal, again and again, where nobody looks: stopped, and said here.
            os.kill(pid, signal.SIGTERM)
            if not wait_exit(pid, START_TIMEOUT):
                os.kill(pid, signal.SIGKILL)
            raise AuthenticationFailed(f"{role.upper()} of {directory} stopped again, refused: {refused}")
        if role == "mds" and not node.bootstrap and not node.joined:
            _wait_joined(directory, pid)
        print(f"{role.upper()} started in the background: pid {pid}, address {node.addr}, log {directory / LOG_FILE}")
        return 0
    # Before the log is rotated or the folder scanned: they are the running daemon's (a fault probe).
    refuse_if_running(directory)
    # In the background (stderr is DIR/daemon.log) the log rotates by size, as node.json says.
    rotate_log(directory / LOG_FILE, node.log_max_size, node.log_backups)
    # Each role imports its own server alone (a chunk server need not load the master's modules: about
    # 0.1 s of CPU at every start, and every command and mount imports this module).
    server: MetadataServer | ChunkServer
    try:
        if role == "mds":
            from chunkfs.mds.server import MetadataServer
            server = MetadataServer(directory, node, secret)
        else:
            from chunkfs.cs.server import ChunkServer
            server = ChunkServer(directory, node, secret)
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        # (a probe: a store made on a full disk ended in SQLite's traceback, "database or disk is full")
        raise _disk_full(directory, role, exc) from None

    async def start() -> None:
        try:
            await server.start()
        except OSError as exc:
            await server.stop()
            if is_disk_full(exc):  # (CI: a start on a full disk said "cannot listen on ...")
                raise _disk_full(directory, role, exc) from None
            raise bind_error(node.addr, exc) from None

    # A server stops itself (status 3) when it cannot go on: a metadata server's disk full or failing
    # (raft/driver.py), its folder gone (common/folder_watch.py).
    return run_foreground(directory, start, server.stop, fatal=server.failed)

