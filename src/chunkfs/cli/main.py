"""The ``chunkfs`` command, in the style of Virtuozzo Storage's ``vstorage``.

    chunkfs -c NAME COMMAND [options]

Every failure ends with one line on stderr that says what went wrong and what
to do, and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from chunkfs import __version__
from chunkfs.cli.arg_types import seconds, size, whole
from chunkfs.common.config import DEFAULT_CHUNK_SIZE
from chunkfs.common.durable import is_disk_full
from chunkfs.common.errors import ChunkFSError
from chunkfs.protocol.mds_link import DEFAULT_RETRY_FOR

EPILOG = """\
Client configuration is read from $CHUNKFS_CONF_DIR/clusters/NAME/ (default /etc/chunkfs).
Start a whole cluster on this machine:  chunkfs local up --dir DIR --name NAME
"""


def build_parser() -> argparse.ArgumentParser:
    from chunkfs.cli import files, local

    parser = argparse.ArgumentParser(
        prog="chunkfs", description="ChunkFS, a distributed storage cluster: metadata servers, chunk servers and "
        "FUSE mounts. `chunkfs COMMAND --help` explains each command.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-c", "--cluster", metavar="NAME",
                        help="the cluster to act on (no default: its client configuration is "
                             "/etc/chunkfs/clusters/NAME, or under $CHUNKFS_CONF_DIR; made by make-mds -I or local up)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debugging detail")
    parser.add_argument("--retry-for", type=seconds, metavar="SECONDS",
                        help="how long a command keeps retrying while the cluster cannot do it yet (no master "
                        f"elected, too few chunk servers up) before it fails (default {DEFAULT_RETRY_FOR:g}; "
                        "make-mds, rm-mds, secret, local and mount wait as each needs)")
    parser.add_argument("--version", action="version", version=f"chunkfs {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("make-mds", help="create a cluster (-I) and its first MDS, or add an MDS to a cluster",
                       description="Create a metadata server's directory. With -I, also create the cluster: "
                       "its id, its secret and the client configuration in $CHUNKFS_CONF_DIR/clusters/NAME. "
                       "Without -I, register a new MDS with the running cluster NAME; it joins the "
                       "replicated metadata group when it is started. Use 3 or 5 MDS in all.")
    p.add_argument("-I", "--init", action="store_true", help="create a new cluster")
    p.add_argument("-a", "--addr", required=True, metavar="HOST:PORT", help="address the MDS listens on")
    p.add_argument("-r", "--dir", required=True, type=Path, help="the MDS's directory (empty or new)")
    p.add_argument("--chunk-size", type=size, metavar="SIZE", default=DEFAULT_CHUNK_SIZE,
                   help="chunk size of a new cluster (default 256M; 1M-1G, a multiple of 64K)")
    p.add_argument("--metrics-addr", default="", metavar="HOST:PORT",
                   help="HTTP listener for /metrics and the dashboard (default: none)")
    p.add_argument("--tls", action="store_true",
                   help="with -I: the cluster runs every connection over TLS; its CA is made in the client "
                   "configuration and this MDS and the client configuration get certificates (`chunkfs tls --help`)")
    p.set_defaults(func=local.cmd_make_mds)

    p = sub.add_parser("make-cs", help="create a chunk server's data directory",
                       description="Create a chunk server's data directory for cluster NAME. "
                       "Run it with `chunkfs cs -r DIR`.")
    p.add_argument("-r", "--dir", required=True, type=Path, help="data directory (empty or new), usually one disk")
    p.add_argument("-a", "--addr", metavar="HOST:PORT", help="address to listen on (default 127.0.0.1, a free port)")
    p.add_argument("--host", help="host name used for placement (default: this machine's name)")
    p.add_argument("--location", default="", metavar="ROOM.ROW.RACK",
                   help="where the server is, for failure domains (failure-domain=rack|row|room)")
    p.add_argument("--tier", type=int, default=0, choices=range(4), metavar="0-3",
                   help="storage tier (files with tier=N are placed on tier-N servers only; default 0)")
    p.add_argument("--metrics-addr", default="", metavar="HOST:PORT", help="HTTP listener for /metrics (default: none)")
    p.set_defaults(func=local.cmd_make_cs)

    p = sub.add_parser("rm-mds", help="remove a metadata server from the cluster",
                       description="Take MDS ID out of the replicated metadata group (if it is the master, "
                       "it hands over to another first). Stop its process afterwards. Refused when the "
                       "servers left would not have a majority that answers (one of them down or frozen): "
                       "no master could be elected after it; bring that one back first, or remove it instead.")
    p.add_argument("id", type=whole(1), help="the MDS id, as `chunkfs stat` shows it")
    p.set_defaults(func=local.cmd_rm_mds)

    for role, what in (("mds", "metadata server"), ("cs", "chunk server")):
        p = sub.add_parser(role, help=f"run a {what}", description=f"Run the {what} whose directory is DIR, "
                           "in the foreground (logs on stderr) or with --background (logs in DIR/daemon.log).")
        p.add_argument("-r", "--dir", required=True, type=Path, help=f"the {what}'s directory")
        p.add_argument("--background", action="store_true", help="start detached, return once it listens")
        p.set_defaults(func=local.cmd_run, role=role)

    local.add_local_parser(sub)
    files.add_parsers(sub)
    from chunkfs.cli import healing  # set-config, get-config, rm-cs

    healing.add_parsers(sub)
    from chunkfs.cli import mount as mount_cli  # mount, umount

    mount_cli.add_parser(sub)
    from chunkfs.cli import secret, services, tls, top_command  # operating a cluster

    top_command.add_parser(sub)
    services.add_parser(sub)
    tls.add_parser(sub)
    secret.add_parser(sub)
    return parser


def _fill_closed_standard_fds() -> None:
    """Standard input, output or error closed (``>&-``): /dev/null there, before any socket is made.

    Otherwise the first socket the event loop makes takes the free number, and libuv, which takes
    0-2 for standard streams, aborted the process when it closed it (an operator probe: exit 134
    after a `put` that had stored the file)."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            opened = os.open(os.devnull, os.O_RDWR)  # the lowest free number: `fd`
            if opened != fd:
                os.dup2(opened, fd)
                os.close(opened)


def main(argv: list[str] | None = None) -> int:
    _fill_closed_standard_fds()
    # File names are bytes: one that is not UTF-8 is printed as its bytes, as ls does into a pipe.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="surrogateescape")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except ChunkFSError as exc:  # a value an argument's own parser refused (a size, a duration)
        parser.error(str(exc))
    from chunkfs.common.daemon import setup_logging

    setup_logging(args.verbose)
    if args.command not in ("mds", "cs"):
        # Commands print their own results; keep library chatter out of them.
        logging.getLogger().setLevel(logging.DEBUG if args.verbose else logging.ERROR)
    try:
        return int(args.func(args) or 0)
    except ChunkFSError as exc:
        print(f"chunkfs: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:
        # A local file or folder named on the command line (get's target, a --dir that is a file):
        # one line naming it, not a traceback (-v shows the traceback).
        if args.verbose:
            raise
        where = f"{exc.filename}: " if exc.filename is not None else ""
        # (a probe: `local up` on a full disk said only "No space left on device")
        what = ": the disk is full; free space there and run the command again" if is_disk_full(exc) else ""
        print(f"chunkfs: error: {where}{exc.strerror or exc}{what}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)  # (cli/context.py: SIGTERM and SIGHUP too)
        print("chunkfs: interrupted" if signum == signal.SIGINT else
              f"chunkfs: stopped by {signal.Signals(signum).name}", file=sys.stderr)
        return 128 + signum


if __name__ == "__main__":
    raise SystemExit(main())
