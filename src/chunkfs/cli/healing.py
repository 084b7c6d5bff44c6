"""Self-healing commands: set-config, get-config, rm-cs."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Iterator

from chunkfs.cli.arg_types import seconds, whole
from chunkfs.cli.context import run_with_client
from chunkfs.client.client import Client
from chunkfs.common.errors import InvalidArgument, Timeout
from chunkfs.common.placement import FAILURE_DOMAINS, MAX_TIER
from chunkfs.common.settings import SETTINGS, shown

#: rm-cs --wait asks the master this often how many replicas are left.
POLL = 0.5


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    names = "\n".join(f"  {s.name} (default {shown(s.default)} {s.unit}): {s.help}" for s in SETTINGS.values())
    p = sub.add_parser(
        "set-config", help="change cluster settings (failure timeouts, replication and scrub rates)",
        description="Change cluster-wide settings, kept in the replicated metadata. Each VALUE is a plain "
                    "number in the setting's unit (no suffix). Example:\n  chunkfs -c NAME set-config "
                    "cs-offline-timeout=600 replication-rate=100\nSettings:\n" + names,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("values", nargs="+", metavar="KEY=VALUE")
    p.set_defaults(func=lambda args: run_with_client(args, cmd_set_config))
    p = sub.add_parser("get-config", help="show cluster settings",
                       description="Show every cluster setting and its value. Settings:\n" + names,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=lambda args: run_with_client(args, cmd_get_config))
    p = sub.add_parser(
        "rm-cs", help="drain a chunk server and remove it from the cluster",
        description="Move every replica off chunk server ID (it gets no new chunks meanwhile), then remove it "
        "from the cluster. Without --wait the drain goes on in the background and the server is removed once "
        "empty; run the command again to see how far it got. The drain is the master's: after a master change "
        "it stops (the server takes new chunks again) until the command is run again, as --wait does by "
        "itself. The removed server's process stops by itself.")
    p.add_argument("id", type=whole(1), help="the CS id, as `chunkfs stat` shows it")
    p.add_argument("--wait", action="store_true", help="wait until it is empty and removed (with a progress bar)")
    p.add_argument("--timeout", type=seconds, default=3600.0,
                   help="give up waiting after this many seconds (default 3600; the drain goes on)")
    p.add_argument("--cancel", action="store_true", help="stop draining; the server takes new chunks again")
    p.set_defaults(func=lambda args: run_with_client(args, cmd_rm_cs))


def parse_placement(text: str) -> tuple[str | None, int | None]:
    """``failure-domain=rack`` or ``tier=1`` -> (domain, tier), the other None."""
    key, _, value = text.partition("=")
    if key == "failure-domain":
        if value not in FAILURE_DOMAINS:
            raise InvalidArgument(f"bad attribute {text!r}: failure-domain is one of {', '.join(FAILURE_DOMAINS)}")
        return value, None
    if not value.isdigit() or not 0 <= int(value) <= MAX_TIER:
        raise InvalidArgument(f"bad attribute {text!r}: tier is a number from 0 to {MAX_TIER}")
    return None, int(value)


async def set_placement(client: Client, path: str, domain: str | None, tier: int | None, recursive: bool) -> None:
    changed = await client.set_placement(path, domain, tier, recursive)
    what = f"failure-domain={domain}" if domain is not None else f"tier={tier}"
    print(f"{what} set on {changed} item(s)")


async def warn_of_goal(client: Client, path: str) -> None:
    """Say what `path`'s replicas and tier, as set now, mean with the chunk servers of that tier there are.

    Chunks go only to servers of their file's tier: a goal above their number leaves chunks below it,
    and a minimum above it fails new chunks with ENOSPC (a probe: `tier=1 replicas=4:4` with three
    servers of tier 1 said nothing, then `dd` failed "no space" with 370 GB free)."""
    attr = await client.resolve(path)
    n, minimum, tier = attr["replicas"], attr["min_replicas"], attr.get("tier", 0)
    servers = await client.cluster_stat()
    everywhere = len(servers["cs"])
    count = sum(1 for cs in servers["cs"] if cs.get("tier", 0) == tier)
    where = f"the cluster has {count} chunk server(s)"
    if count != everywhere:
        where += f" of tier {tier} (of {everywhere})"
    if count == 0:
        print(f"warning: no chunk server of tier {tier}: new chunks there cannot be placed ('no space', "
              f"ENOSPC) until one registers (chunkfs make-cs --tier {tier})", file=sys.stderr)
    elif minimum > count:
        print(f"warning: {path} keeps replicas={n}:{minimum} on servers of tier {tier}, and {where}: a write "
              f"that needs a new chunk there fails with 'no space' (ENOSPC) until there are {minimum}; chunks that "
              "exist keep the replicas they have", file=sys.stderr)
    elif n > count:
        print(f"warning: {path} keeps replicas={n}:{minimum} on servers of tier {tier}, and {where}: chunks "
              f"there stay below their goal (at {count}) until there are {n}", file=sys.stderr)


def _parse_pairs(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise InvalidArgument(f"bad setting {item!r}: expected KEY=VALUE, for example cs-offline-timeout=300")
        out[key.strip()] = value.strip()
    return out


async def cmd_set_config(client: Client, args: argparse.Namespace) -> int:
    values = _parse_pairs(args.values)
    settings = await client.set_config(values)
    for key in values:
        setting = SETTINGS.get(key)
        print(f"{key}={shown(settings[key])}" + (f" {setting.unit}" if setting else ""))
    return 0


async def cmd_get_config(client: Client, args: argparse.Namespace) -> int:
    settings = await client.get_config()
    if args.json:
        print(json.dumps(settings, indent=2, sort_keys=True))
        return 0
    for key in sorted(settings):
        setting = SETTINGS.get(key)
        about = f"  # {setting.unit}, default {shown(setting.default)}" if setting else ""
        print(f"{key}={shown(settings[key])}{about}")
    return 0


@contextlib.contextmanager
def _says_the_drain_goes_on(cs_id: int) -> Iterator[None]:
    """Ctrl-C stops the waiting, not the drain: say so, and how to stop it (an operator probe)."""
    try:
        yield
    except (asyncio.CancelledError, KeyboardInterrupt):
        print(f"chunkfs: CS#{cs_id} goes on draining in the background; `chunkfs rm-cs {cs_id} --cancel` stops it",
              file=sys.stderr)
        raise


async def cmd_rm_cs(client: Client, args: argparse.Namespace) -> int:
    reply = await client.rm_cs(args.id, args.cancel)
    if args.cancel:
        print(f"CS#{args.id}: draining cancelled ({reply['left']} replica(s) on it)")
        return 0
    if reply["removed"]:
        print(f"CS#{args.id} removed from the cluster; its process, if it runs, stops by itself")
        return 0
    if not args.wait:
        print(f"CS#{args.id} is draining: {reply['left']} replica(s) left to move, then it is removed; run "
              "again to check, or use --wait")
        return 0
    from rich.console import Console  # (here: every command and daemon loads this module)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    total = max(1, reply["left"])
    deadline = time.monotonic() + args.timeout
    progress = Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                        TextColumn("replicas moved"), TimeElapsedColumn(), console=Console(stderr=True),
                        disable=not sys.stderr.isatty(),
                        transient=True)
    with progress, _says_the_drain_goes_on(args.id):
        task = progress.add_task(f"draining CS#{args.id}", total=total)
        while not reply["removed"]:
            if time.monotonic() > deadline:
                raise Timeout(f"CS#{args.id} still holds {reply['left']} replica(s) after {args.timeout:g} s; "
                              "the drain goes on in the background (see `chunkfs stat`)")
            await asyncio.sleep(POLL)
            reply = await client.rm_cs(args.id)
            total = max(total, reply["left"])
            progress.update(task, total=total, completed=total - reply["left"])
    print(f"CS#{args.id} drained and removed from the cluster; its process, if it runs, stops by itself")
    return 0
