"""``chunkfs secret``: rotate the cluster secret while the cluster serves.

  stage [DIR ...]    make a new secret and put it beside the current one, as
                     secret.next, in this host's client configuration and in
                     each node directory DIR (--local: every node of a local
                     cluster).  Running daemons pick it up within a second and
                     accept both secrets.  Run again to copy an already staged
                     secret to more directories.
  check              connect to every metadata and chunk server proving only
                     the next secret: lists those that do not accept it yet.
  finish [DIR ...]   after a passing check, secret.next replaces secret in the
                     client configuration and in each DIR: from then on the
                     old secret is refused, on new connections and on open
                     ones (their peers prove the new secret or are closed).
  abort [DIR ...]    drop secret.next again (before finishing).

On several hosts: stage on one, copy secret.next (mode 0600) into every node
directory and every client configuration on the others, run check, then finish
on each host (``chunkfs -c NAME secret finish DIR ...``, or rename secret.next
to secret).  At the end each daemon asks the peers of connections opened with
the old secret to prove the new one: those that hold it go on without a pause,
the others are closed within 10 s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path

from chunkfs.cli.context import known_cluster
from chunkfs.cli.services import node_dirs
from chunkfs.client.client import SyncClient, ping_node
from chunkfs.common import secret_files
from chunkfs.common.config import (
    SECRET_BYTES,
    SECRET_FILE,
    ConfigError,
    cluster_conf_path,
    load_client_config,
    load_node,
    read_secret,
)
from chunkfs.common.errors import ChunkFSError
from chunkfs.common.secret_files import fingerprint, read_next_secret
from chunkfs.protocol.rpc import Credentials
from chunkfs.protocol.tls import node_tls

#: `check` waits this long by default for daemons to notice secret.next (they look once a second).
CHECK_WAIT = 5.0
CHECK_TIMEOUT = 5.0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("secret", help="rotate the cluster secret without stopping the cluster",
                       description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    ssub = p.add_subparsers(dest="secret_command", metavar="ACTION", required=True)
    for name, func, what in (
        ("stage", cmd_stage, "put a new secret beside the current one (secret.next)"),
        ("finish", cmd_finish, "make the staged secret the only one"),
        ("abort", cmd_abort, "drop the staged secret"),
    ):
        a = ssub.add_parser(name, help=what, description=f"{what[0].upper()}{what[1:]}, in this host's client "
                            "configuration and in each node directory given.")
        a.add_argument("dirs", type=Path, nargs="*", metavar="DIR", help="node directories on this host")
        a.add_argument("--local", type=Path, metavar="LOCALDIR",
                       help="also every node directory of the local cluster in LOCALDIR (`chunkfs local up`)")
        if name == "finish":
            a.add_argument("--force", action="store_true",
                           help="finish even if some daemon does not accept the new secret yet (it is then cut off)")
            a.add_argument("--wait", type=float, default=CHECK_WAIT, metavar="SECONDS",
                           help=f"how long the check waits for daemons to notice (default {CHECK_WAIT:g})")
        a.set_defaults(func=func)
    c = ssub.add_parser("check", help="list the daemons that do not accept the staged secret yet",
                        description="Connect to every metadata and chunk server the master lists, proving only the "
                        "staged secret; exit status 1 if any refuses.")
    c.add_argument("--wait", type=float, default=CHECK_WAIT, metavar="SECONDS",
                   help=f"retry refusing daemons this long (default {CHECK_WAIT:g}; they look once a second)")
    c.set_defaults(func=cmd_check)


def _dirs(args: argparse.Namespace, cluster: str) -> list[Path]:
    """The node directories named, each checked to be a node of `cluster`."""
    dirs = list(args.dirs)
    if args.local is not None:
        found = node_dirs(args.local)
        if not found:
            raise ConfigError(f"{args.local} holds no node directory (the folder `chunkfs local up --dir` made): "
                              "nothing staged")
        dirs += found
    for directory in dirs:
        node, _ = load_node(directory)
        if node.cluster.name != cluster:
            raise ConfigError(f"{directory} is a node of cluster {node.cluster.name!r}, not {cluster!r}")
    return dirs


def cmd_stage(args: argparse.Namespace) -> int:
    cluster = known_cluster(args)
    conf = cluster_conf_path(cluster)
    current = load_client_config(cluster).secret
    staged = read_next_secret(conf)
    dirs = _dirs(args, cluster)
    if staged is None:
        staged = os.urandom(SECRET_BYTES)
    for directory in dirs:
        theirs = read_secret(directory / SECRET_FILE)
        if theirs == staged:
            continue  # finished there already
        if theirs != current:
            raise ConfigError(f"{directory} holds secret {fingerprint(theirs)}, not this cluster's current "
                              f"{fingerprint(current)}: fix it (copy {conf / SECRET_FILE}) before rotating")
    for directory in [conf, *dirs]:
        if read_secret(directory / SECRET_FILE) != staged:
            secret_files.stage(directory, staged)
    print(f"secret {fingerprint(staged)} staged beside {fingerprint(current)} in {conf} and {len(dirs)} node "
          f"director{'y' if len(dirs) == 1 else 'ies'}; copy {conf / secret_files.NEXT_SECRET_FILE} to the other "
          f"hosts' node directories and client configurations, then: chunkfs -c {cluster} secret check")
    return 0


async def _accepts(addr: str, creds: Credentials) -> str:
    """Empty if the daemon at `addr` accepts `creds`, else why not."""
    try:
        await ping_node(addr, creds, CHECK_TIMEOUT)
    except ChunkFSError as exc:
        return str(exc)
    return ""


def check(cluster: str, wait: float) -> dict[str, str]:
    """Daemon address -> why it refuses the staged secret, for those that do (retried for `wait` seconds)."""
    config = load_client_config(cluster)
    staged = read_next_secret(cluster_conf_path(cluster))
    if staged is None:
        raise ConfigError(f"no secret is staged for cluster {cluster!r}: run `chunkfs -c {cluster} secret stage`")
    with SyncClient(config) as client:
        stat = client.cluster_stat()
    addrs = [m["addr"] for m in stat["mds"]] + [s["addr"] for s in stat["cs"] if s["status"] != "failed"]
    tls = node_tls(cluster_conf_path(cluster), config.cluster)
    creds = Credentials(cluster, staged, "client", f"secret-check-{os.getpid()}", tls=tls)
    deadline = time.monotonic() + wait
    refusing = dict.fromkeys(addrs, "not tried")
    while True:
        for addr in list(refusing):
            why = asyncio.run(_accepts(addr, creds))
            if why:
                refusing[addr] = why
            else:
                del refusing[addr]
        if not refusing or time.monotonic() >= deadline:
            return refusing
        time.sleep(0.5)


def cmd_check(args: argparse.Namespace) -> int:
    cluster = known_cluster(args)
    refusing = check(cluster, args.wait)
    for addr, why in refusing.items():
        print(f"{addr}: does not accept the staged secret: {why}")
    if refusing:
        print(f"{len(refusing)} daemon(s) do not accept the staged secret yet: copy secret.next into their "
              "directories (they notice within a second)")
        return 1
    print("every metadata and chunk server accepts the staged secret; finish with: "
          f"chunkfs -c {cluster} secret finish DIR ... (on every host)")
    return 0


def cmd_finish(args: argparse.Namespace) -> int:
    cluster = known_cluster(args)
    conf = cluster_conf_path(cluster)
    dirs = _dirs(args, cluster)
    staged = read_next_secret(conf)
    if staged is not None and not args.force:
        refusing = check(cluster, args.wait)
        if refusing:
            raise ConfigError(f"{len(refusing)} daemon(s) do not accept the staged secret yet "
                              f"({', '.join(refusing)}): copy secret.next to them, or finish with --force")
    done = 0
    for directory in [conf, *dirs]:
        if (directory / secret_files.NEXT_SECRET_FILE).exists():
            secret_files.promote(directory)
            done += 1
        elif staged is not None and read_secret(directory / SECRET_FILE) != staged:
            raise ConfigError(f"{directory} has no staged secret: stage it first (chunkfs -c {cluster} secret "
                              f"stage {directory})")
    if not done:  # (a probe: it claimed success with nothing staged anywhere)
        raise ConfigError(f"no secret is staged in {conf} or the directories given: nothing to finish "
                          f"(a rotation starts with: chunkfs -c {cluster} secret stage)")
    now = read_secret(conf / SECRET_FILE)
    print(f"secret {fingerprint(now)} is now the only one in {done} place(s); the old secret is refused there")
    return 0


def cmd_abort(args: argparse.Namespace) -> int:
    cluster = known_cluster(args)
    dirs = _dirs(args, cluster)
    dropped = [directory for directory in [cluster_conf_path(cluster), *dirs] if secret_files.unstage(directory)]
    if not dropped:
        raise ConfigError(f"no secret is staged in {cluster_conf_path(cluster)} or the directories given: "
                          "nothing to abort")
    print(f"staged secret dropped in {len(dropped)} place(s): {', '.join(map(str, dropped))}")
    return 0
