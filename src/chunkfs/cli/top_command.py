"""``chunkfs -c NAME top``: the whole cluster on one screen, refreshed every second.

Everything shown comes from two questions to the master per refresh (the
cluster's state, and the newest events): the master already holds every
server's space, load, I/O rates and process figures (sent with heartbeats and
probes), so ``top`` opens no connection to the servers themselves.  Keys (on a
terminal): ``q`` quits, ``s`` changes the chunk-server sort column, ``r``
reverses it, ``v`` switches the view (all, chunk servers, metadata servers,
events) and ``1`` to ``4`` choose one of them, ``space`` refreshes.  A chunk
server's FLAGS: ``D`` draining (``rm-cs``: its replicas move away), ``S`` its
heartbeats are late, ``F`` full or nearly (a full one takes no new chunks),
``E`` requests failed on it since it started.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chunkfs.client.client import Client

VIEWS = ("all", "cs", "mds", "events")
#: Chunk-server sort columns (top.SORTS: how to get their keys).
SORT_COLUMNS = ("id", "status", "free", "replicas", "io", "latency", "queue")
#: Narrower, the tables wrap into fragments (a probe's --width 5 printed 96 lines of them).
MIN_WIDTH = 60


def _width(text: str) -> int:
    try:
        width = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of columns") from None
    if width and width < MIN_WIDTH:
        raise argparse.ArgumentTypeError(f"at least {MIN_WIDTH} columns, not {width}")
    return width


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from chunkfs.cli.context import run_with_client

    p = sub.add_parser("top", help="a live view of the cluster (servers, space, chunk health, I/O, events)",
                       description=__doc__.split("\n\n", 1)[1].replace("``", "'"))
    p.add_argument("--once", action="store_true", help="print one frame and exit (for scripts)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (default 1)")
    p.add_argument("--view", choices=VIEWS, default="all", help="what to show first (default all)")
    p.add_argument("--sort", choices=sorted(SORT_COLUMNS), default="id", help="chunk-server sort column (default id)")
    p.add_argument("--width", type=_width, default=0,
                   help=f"columns for --once output, at least {MIN_WIDTH} (default: terminal or 160); "
                   "narrower than the tables, they leave out their least needed columns (host, total space, "
                   "queue depth, CPU, ...), never cut a value short")
    p.set_defaults(func=lambda args: run_with_client(args, _top))


async def _top(client: Client, args: argparse.Namespace) -> int:
    # The screen's module is loaded here: rich costs every command, daemon and mount about 25 ms to import.
    from chunkfs.cli import top

    return await top.cmd_top(client, args)
