"""make-mds, make-cs, running daemons, and `local`: a whole cluster on this machine."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from chunkfs.cli.arg_types import size
from chunkfs.cli.context import need_cluster
from chunkfs.cli.local_cluster import STATE_FILE, LocalCluster
from chunkfs.cli.nodes import make_cs, make_mds, remove_mds, run_node
from chunkfs.common.config import DEFAULT_CHUNK_SIZE, ConfigError, conf_dir

#: Seconds a mount process is given to exit after SIGTERM.
STOP_WAIT = 5.0


#: `local up` options that only shape a new cluster, with their defaults.
NEW_CLUSTER_OPTIONS = {"name": "local", "mds": 3, "cs": 3, "chunk_size": DEFAULT_CHUNK_SIZE, "tls": False}


def cmd_make_mds(args: argparse.Namespace) -> int:
    if args.tls and not args.init:
        raise ConfigError("--tls is chosen when the cluster is made (with -I); to turn it on later, "
                          "see `chunkfs tls enable --help`")
    node = make_mds(need_cluster(args), args.dir, args.addr, args.chunk_size, args.init, args.metrics_addr,
                    tls=args.tls)
    what = (f"created cluster {node.cluster.name!r} (chunk size {node.cluster.chunk_size >> 20} MiB) with MDS#1"
            if args.init else f"registered MDS#{node.node_id} of {node.cluster.name!r}")
    print(f"{what} in {args.dir}; start it with: chunkfs mds -r {args.dir} --background")
    _print_tls_note(node.cluster.name, node.cluster.tls, args.dir)
    return 0


def _print_tls_note(cluster: str, tls: bool, directory: Path) -> None:
    if tls:
        from chunkfs.cli.tls import tls_note
        from chunkfs.common.certs import NODE_CERT, TLS_DIR

        print(tls_note(cluster, directory, (directory / TLS_DIR / NODE_CERT).exists()))


def cmd_rm_mds(args: argparse.Namespace) -> int:
    addr = remove_mds(need_cluster(args), args.id)
    print(f"MDS#{args.id}{f' at {addr}' if addr else ''} removed from the metadata group; stop its process now")
    return 0


def cmd_make_cs(args: argparse.Namespace) -> int:
    node = make_cs(need_cluster(args), args.dir, args.addr, args.host, args.metrics_addr,
                   location=args.location, tier=args.tier)
    print(f"created a chunk server of {node.cluster.name!r} in {args.dir} listening on {node.addr}; "
          f"start it with: chunkfs cs -r {args.dir} --background")
    _print_tls_note(node.cluster.name, node.cluster.tls, args.dir)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    return run_node(args.role, args.dir, args.background)


def add_local_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("local", help="a whole cluster on this machine, under one directory",
                       description="Make, start, list and stop a cluster of real processes on 127.0.0.1 "
                       "whose data and logs all live under DIR.")
    lsub = p.add_subparsers(dest="local_command", metavar="ACTION", required=True)
    up = lsub.add_parser("up", help="make (if new) and start a local cluster",
                         description="Make a cluster of real processes on 127.0.0.1 in DIR (if DIR holds none yet: "
                         "--mds metadata servers, --cs chunk servers, a client configuration named --name), or "
                         "start the one DIR holds; wait until it serves; with --mount, mount it too. Example: "
                         "chunkfs local up --dir ./local-cluster --mount ./local-cluster/mnt")
    up.add_argument("--dir", required=True, type=Path, help="where data and logs go")
    up.add_argument("--name", default=NEW_CLUSTER_OPTIONS["name"], help="cluster name (default: local)")
    up.add_argument("--mds", type=int, default=NEW_CLUSTER_OPTIONS["mds"],
                    help="metadata servers (default 3: survives the loss of one)")
    up.add_argument("--cs", type=int, default=NEW_CLUSTER_OPTIONS["cs"], help="chunk servers (default 3)")
    up.add_argument("--chunk-size", type=size, default=NEW_CLUSTER_OPTIONS["chunk_size"], metavar="SIZE",
                    help="chunk size of a new cluster (default 256M; 1M-1G, a multiple of 64K)")
    up.add_argument("--mount", type=Path, metavar="MOUNTPOINT",
                    help="also mount the cluster there (created if missing); `local down` unmounts it")
    up.add_argument("-o", dest="mount_options", action="append", default=[], metavar="OPTIONS",
                    help="mount options for --mount (see `chunkfs mount --help`)")
    up.add_argument("--tls", action="store_true",
                    help="a new cluster runs every connection over TLS: a cluster CA is made and every node "
                    "and the client configuration get a certificate (see `chunkfs tls --help`)")
    up.set_defaults(func=cmd_local_up)
    st = lsub.add_parser("status", help="list the local cluster's processes",
                         description="Each daemon of the local cluster in DIR: role, id, address, folder, and its "
                                     "PID if it runs (found by the PID file in its folder, checked in /proc).")
    st.add_argument("--dir", required=True, type=Path, help="the folder `local up --dir` made")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(func=cmd_local_status)
    down = lsub.add_parser("down", help="stop exactly the processes of the local cluster",
                           description="Unmount what `local up --mount` mounted, then stop every daemon of the "
                           "cluster: each found by the PID file in its node directory, whoever started it, and "
                           "signalled only if /proc shows it is that chunkfs daemon.")
    down.add_argument("--dir", required=True, type=Path, help="the folder `local up --dir` made")
    down.set_defaults(func=cmd_local_down)


def cmd_local_up(args: argparse.Namespace) -> int:
    directory: Path = args.dir.resolve()
    # What --mount and -o need is checked before anything is made or started (a probe: a new cluster was
    # made and left running, then the mount point, a file, or an option out of range was refused).
    if args.mount is None and args.mount_options:
        raise ConfigError("-o gives options for --mount: give --mount MOUNTPOINT too")
    if args.mount is not None:
        from chunkfs.client.fuse_ops import parse_options
        from chunkfs.client.fuse_session import canonical, is_mounted

        parse_options(args.mount_options)
        mnt = canonical(args.mount)  # not a stat of it: a dead mount there fails one, and `_mount` clears it
        if not is_mounted(mnt) and mnt.exists() and not mnt.is_dir():
            raise ConfigError(f"--mount {mnt} is not a directory")
        _check_mountpoint(mnt, directory)
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"--dir {directory} is not a directory")
    if (directory / "local.json").exists():
        cluster = LocalCluster.load(directory)
        if cluster.making is not None:
            made = {role: sum(p.role == role for p in cluster.processes) for role in ("mds", "cs")}
            raise ConfigError(
                f"the making of cluster {cluster.name!r} in {directory} was cut off ({made['mds']} of "
                f"{cluster.making['mds']} metadata servers and {made['cs']} of {cluster.making['cs']} chunk "
                f"servers made): run `chunkfs local down --dir {directory}`, remove {directory} and "
                f"{conf_dir()}/clusters/{cluster.name}, and `local up` again")
        made = False
        print(f"starting the existing local cluster {cluster.name!r} in {directory}")
        ignored = [f"--{opt.replace('_', '-')}" for opt, default in NEW_CLUSTER_OPTIONS.items()
                   if getattr(args, opt) != default and not (opt == "name" and args.name == cluster.name)]
        if ignored:  # (a probe: they were ignored without a word)
            verb = "shapes" if len(ignored) == 1 else "shape"
            print(f"warning: {', '.join(ignored)} only {verb} a new cluster: ignored for the existing one in "
                  f"{directory}", file=sys.stderr)
    else:
        made = True
        if args.mds % 2 == 0 and 1 <= args.mds <= 7:  # (a probe: taken without a word; out of range: refused)
            print(f"warning: {args.mds} metadata servers survive no more failures than {args.mds - 1}: "
                  "an odd number (3 or 5) is what a majority needs", file=sys.stderr)
        directory.mkdir(parents=True, exist_ok=True)
        cluster = LocalCluster.make(directory, args.name, args.mds, args.cs, args.chunk_size, tls=args.tls)
        print(f"made cluster {cluster.name!r} in {directory}{' with TLS' if args.tls else ''}; "
              f"client configuration in {conf_dir()}/clusters/{args.name}")
    if made:
        try:
            stat = _start(cluster)
        except BaseException:
            # The making started the first metadata server: a new cluster that cannot start is left
            # stopped, not half up (a probe, on a full disk: MDS#1 ran on, `local status` said running).
            cluster.stop_all()
            raise
    else:
        stat = _start(cluster)
    n_cs = len(stat["cs"])
    print(f"cluster {cluster.name!r} is up: {len(stat['mds'])} MDS, {n_cs} chunk servers")
    if args.mount is not None:
        _mount(cluster, args.mount, args.mount_options, args.verbose)
    print("next:")
    print(f"  chunkfs -c {cluster.name} stat")
    print(f"  chunkfs -c {cluster.name} put FILE /FILE")
    print(f"  chunkfs local status --dir {directory}")
    print(f"  chunkfs local down --dir {directory}")
    return 0


def _start(cluster: LocalCluster) -> dict[str, Any]:
    """Start every daemon that is not running and wait until the cluster serves; its state."""
    started = cluster.start_all()  # (a start that fails stops what it started)
    try:
        return cluster.wait_ready()
    except BaseException:
        cluster.stop(started)  # only what this command started: a running cluster goes on
        raise


def cmd_local_status(args: argparse.Namespace) -> int:
    from chunkfs.client.fuse_session import is_mounted

    cluster = LocalCluster.load(args.dir)
    rows = cluster.status()
    if args.json:
        print(json.dumps({"name": cluster.name, "processes": rows, "mounts": cluster.mounts}, indent=2))
        return 0
    print(f"local cluster {cluster.name!r} in {cluster.dir}")
    for r in rows:
        state = f"running, pid {r['pid']}" if r["running"] else "stopped"
        print(f"  {r['role']:<4} {r['id']:>3}  {r['addr']:<22} {state}")
    for path in cluster.mounts:  # (a probe: listed alike whether mounted or not, after a restart)
        print(f"  mount     {path}  {'mounted' if is_mounted(Path(path)) else 'not mounted'}")
    return 0


def _check_mountpoint(mnt: Path, directory: Path) -> None:
    """Refuse a mount point that is the cluster's folder or holds it: the mount would hide the servers'
    own files from them (a probe mounted a cluster over its folder: "local.json: Input/output error",
    and a metadata server then hung on the mount for 40 s)."""
    from chunkfs.cli.mount import hides

    servers = [Path(p.dir).resolve() for p in LocalCluster.load(directory).processes] \
        if (directory / STATE_FILE).exists() else []
    # Inside the cluster's folder is where the examples mount (DIR/mnt); inside a server's folder is not.
    over = [directory] if mnt == directory or mnt in directory.parents else [f for f in servers if hides(mnt, f)]
    if over:
        raise ConfigError(f"--mount {mnt} would hide {over[0]} from the cluster's servers: mount it in a "
                          f"folder of its own, such as {directory / 'mnt'}")


def _mount(cluster: LocalCluster, mountpoint: Path, options: list[str], verbose: bool) -> None:
    """`chunkfs mount --background`, recorded in local.json so that `local down` unmounts it first."""
    from chunkfs.cli.mount import clear_dead, cmd_mount
    from chunkfs.client.fuse_session import canonical, is_mounted

    mnt = canonical(mountpoint)
    # A dead mount (its process killed) is cleared and mounted again; a live one of this cluster is
    # kept; any other live mount makes `mount` refuse with a one-line error.
    if not clear_dead(mnt) and str(mnt) in cluster.mounts and is_mounted(mnt):
        print(f"{mnt} is already mounted")
        return
    mnt.mkdir(parents=True, exist_ok=True)
    cmd_mount(argparse.Namespace(cluster=cluster.name, options=options, mountpoint=mnt, background=True,
                                 verbose=verbose))
    if str(mnt) not in cluster.mounts:
        cluster.mounts.append(str(mnt))
        cluster.save()


def _unmount_all(cluster: LocalCluster) -> None:
    """Unmount what `local up --mount` mounted, before its servers stop (lazily if files are still open).

    A lazily detached mount's process lives on until the last file on it is
    closed; since the cluster is going down, it is stopped (SIGTERM, then
    SIGKILL): a program still holding a file there gets errors from then on,
    as it would once the servers are gone, and the servers are stopped either way.
    """
    from chunkfs.client.fuse_session import is_mounted, state_dir, unmount
    from chunkfs.common.daemon import pid_alive, read_pid
    from chunkfs.common.errors import Unavailable

    for path in list(cluster.mounts):
        mnt = Path(path)
        if is_mounted(mnt) or read_pid(state_dir(mnt)) is not None:
            try:
                unmount(mnt)
            except Unavailable as exc:
                print(f"{exc}; unmounting lazily")
                with contextlib.suppress(Unavailable):
                    unmount(mnt, lazy=True)  # (it says so, rather than fail, when open files keep the process)
                pid = read_pid(state_dir(mnt))
                if pid is not None and pid_alive(pid):
                    print(f"files are still open on {mnt}: stopping its mount process {pid}")
                    _stop_pid(pid)
            print(f"unmounted {mnt}")
        cluster.mounts.remove(path)
        cluster.save()


def _stop_pid(pid: int) -> None:
    """SIGTERM, a bounded wait, then SIGKILL (a mount process of this cluster, found by its PID file)."""
    from chunkfs.common.daemon import pid_alive

    for sig, wait in ((signal.SIGTERM, STOP_WAIT), (signal.SIGKILL, STOP_WAIT)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not pid_alive(pid):
            return


def cmd_local_down(args: argparse.Namespace) -> int:
    cluster = LocalCluster.load(args.dir)
    _unmount_all(cluster)
    stopped = cluster.stop_all()
    print(f"stopped {stopped} process(es) of local cluster {cluster.name!r}")
    return 0
