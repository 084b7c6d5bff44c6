"""``chunkfs list-services``: the daemons configured on this machine and whether they run.

A daemon is a directory with a ``node.json`` (made by make-mds or make-cs).
The command looks in the directories given with ``--dir`` (default
``$CHUNKFS_DATA_DIR``, else ``/var/lib/chunkfs``): a directory that holds a
local cluster (``local.json``) lists that cluster's daemons; any other is
searched two levels deep for node directories.  A daemon runs when the PID in
its ``chunkfs.pid`` is alive and is a ``chunkfs`` command naming that
directory.  No cluster connection is needed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from pathlib import Path
from typing import Any

from chunkfs.common.config import NODE_FILE, load_node
from chunkfs.common.daemon import PID_FILE, daemon_pid
from chunkfs.common.errors import ConfigError

DEFAULT_DATA_DIR = "/var/lib/chunkfs"
#: Directories searched at most, so a mistaken --dir / does not walk the whole disk.
MAX_DIRS = 10_000


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("list-services", help="list the ChunkFS daemons configured on this machine and their state",
                       description=__doc__.split("\n\n", 1)[1])
    p.add_argument("--dir", action="append", type=Path, default=[], metavar="DIR",
                   help="where to look (repeatable; default $CHUNKFS_DATA_DIR or /var/lib/chunkfs)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list_services)


def _folders_not_mounted(directory: Path) -> list[Path]:
    """The folders in `directory`, but mount points (a mount of the cluster there may hang: never looked into)."""
    from chunkfs.client.fuse_session import is_mounted  # (here: it loads pyfuse3)

    out = []
    with contextlib.suppress(OSError), os.scandir(directory) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False) and not is_mounted(Path(entry.path)):
                out.append(Path(entry.path).resolve())
    return out


def unlisted_node_dirs(directory: Path, listed: list[Path]) -> list[Path]:
    """Node folders inside a local cluster's folder that `local up` did not make (make-cs/make-mds -r DIR/...):
    their daemons are the cluster's too (a probe's `local down` left two running, and `secret finish --local`
    left two accepting the old secret)."""
    known = {p.resolve() for p in listed}
    return [d for d in sorted(_folders_not_mounted(directory)) if d not in known and (d / NODE_FILE).is_file()]


def node_dirs(root: Path) -> list[Path]:
    root = root.resolve()
    local = root / "local.json"
    if local.exists():
        try:
            data = json.loads(local.read_text())
            listed = [Path(p["dir"]) for p in data["processes"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{local}: unreadable: {exc}") from None
        return listed + unlisted_node_dirs(root, listed)
    found: list[Path] = []
    level = [root]
    seen = 0
    for _ in range(3):  # root, children, grandchildren
        nxt: list[Path] = []
        for d in level:
            seen += 1
            if seen > MAX_DIRS:
                return found
            if (d / NODE_FILE).is_file():
                found.append(d)
                continue
            try:
                nxt += sorted(c for c in d.iterdir() if c.is_dir() and not c.is_symlink())
            except OSError:
                continue
        level = nxt
    return found


def describe(directory: Path) -> dict[str, Any]:
    row: dict[str, Any] = {"dir": str(directory), "role": "?", "id": None, "cluster": "", "addr": "",
                           "metrics": "", "state": "stopped", "pid": None}
    try:
        node, _ = load_node(directory)
    except ConfigError as exc:
        row["state"] = "broken"
        row["error"] = str(exc)
        return row
    row.update(role=node.role, id=node.node_id or None, cluster=node.cluster.name, addr=node.addr,
               metrics=node.metrics_addr)
    pid = daemon_pid(directory)
    if pid is not None:
        row.update(state="running", pid=pid)
    elif (directory / PID_FILE).exists():
        row["state"] = "dead"  # a PID file left by a daemon that did not stop cleanly (its number maybe reused)
    return row


def cmd_list_services(args: argparse.Namespace) -> int:
    roots = args.dir or [Path(os.environ.get("CHUNKFS_DATA_DIR", DEFAULT_DATA_DIR))]
    rows = []
    for root in roots:
        if not root.is_dir():
            raise ConfigError(f"{root}: no such directory (give the daemons' parent directory with --dir)")
        rows += [describe(d) for d in node_dirs(root)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no ChunkFS daemons configured under " + ", ".join(str(r) for r in roots))
        return 0
    print(f"{'ROLE':<4} {'ID':>3} {'CLUSTER':<12} {'ADDRESS':<22} {'STATE':<8} {'PID':>7}  DIR")
    for r in rows:
        print(f"{r['role']:<4} {r['id'] or '-':>3} {r['cluster']:<12} {r['addr']:<22} {r['state']:<8} "
              f"{r['pid'] or '-':>7}  {r['dir']}" + (f"  ({r['error']})" if r.get("error") else ""))
    return 0

