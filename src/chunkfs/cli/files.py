"""Using a cluster without a mount: put, get, ls, rm, mkdir, attributes, stat, events."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from stat import S_IMODE
from typing import TYPE_CHECKING, Any, BinaryIO

from chunkfs.cli.arg_types import cluster_path, local_path, whole
from chunkfs.cli.context import Command, run_with_client
from chunkfs.cli.healing import parse_placement, set_placement, warn_of_goal
from chunkfs.cli.units import human_bytes
from chunkfs.client.client import Client, split_path
from chunkfs.common.errors import ChunkFSError, ConfigError, Exists, InvalidArgument, NotFound, Timeout, Unavailable
from chunkfs.protocol.frame import MAX_IO_SIZE
from chunkfs.protocol.messages import ROOT_INO

if TYPE_CHECKING:
    from rich.progress import Progress

#: Copies keep this many blocks in flight: enough to fill the chain, bounded in memory.
COPY_DEPTH = 4
#: How long `put` retries removing its partial copy after a failure (seconds).
CLEANUP_RETRY_FOR = 2.0
#: Files at least this big get a progress bar (on a terminal).
PROGRESS_MIN = 8 << 20


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    def add(name: str, func: Command, help_text: str, more: str = "") -> argparse.ArgumentParser:
        description = help_text[0].upper() + help_text[1:] + "." + (f" {more}" if more else "")
        p = sub.add_parser(name, help=help_text, description=description)
        p.set_defaults(func=lambda args: run_with_client(args, func))
        return p

    p = add("put", cmd_put, "copy a local file into the cluster",
            "The copy goes to a hidden file beside the target (.NAME.part-PID) and is renamed over it at the "
            "end: a copy that fails or is interrupted leaves the target as it was (and removes its hidden file; "
            "one killed outright, by SIGKILL or a power cut, leaves it: remove it with `chunkfs rm`). New files "
            "get the replicas of their folder (set-attr). A bar shows the progress of files of 8 MiB or more "
            "on a terminal. While the cluster cannot take the copy (no master, too few chunk servers), it "
            "retries for --retry-for seconds. Example: chunkfs -c local put disk.img /images/disk.img")
    p.add_argument("local", type=local_path, help="local file to read ('-' for standard input)")
    p.add_argument("path", type=cluster_path, help="the file's path in the cluster, from its root (replaced if "
                   "it exists)")
    p = add("get", cmd_get, "copy a file out of the cluster",
            "Into a hidden file beside LOCAL, renamed over it at the end (a device or a pipe is written in "
            "place): a copy that fails leaves LOCAL as it was. A link is followed. A bar shows the progress of "
            "files of 8 MiB or more on a terminal. Example: chunkfs -c local get /images/disk.img ./disk.img")
    p.add_argument("path", type=cluster_path, help="file in the cluster, from its root")
    p.add_argument("local", type=local_path, help="local file to write ('-' for standard output)")
    p = add("ls", cmd_ls, "list a directory",
            "One name a line, a directory's with a trailing '/'. A name holding a control character (a "
            "newline, an escape) is shown in bash's $'...' quoting, which a shell reads back as the name. "
            "Example: chunkfs -c local ls -l /images")
    p.add_argument("path", nargs="?", default="/", type=cluster_path,
                   help="directory in the cluster, from its root (default /)")
    p.add_argument("-l", action="store_true", help="long listing: type (f, d, l), size, replicas, mtime, link targets")
    p = add("rm", cmd_rm, "remove a file (or, with -r, a directory tree)")
    p.add_argument("path", type=cluster_path, help="file or directory in the cluster, from its root (/ itself is "
                   "refused)")
    p.add_argument("-r", "--recursive", action="store_true", help="a directory and everything in it")
    p = add("mkdir", cmd_mkdir, "make a directory")
    p.add_argument("path", type=cluster_path, help="the new directory, from the cluster's root")
    p.add_argument("-p", "--parents", action="store_true", help="make parents as needed, no error if it exists")
    p = add("get-attr", cmd_get_attr, "show a file's or directory's attributes")
    p.add_argument("path", type=cluster_path, help="file or directory in the cluster, from its root")
    p = add("set-attr", cmd_set_attr, "set attributes (replicas=N[:MIN], failure-domain=, tier=); directories "
            "pass them to new files. replicas=N alone keeps MIN at N//2+1 (replicas=2 is 2:2: writes wait while "
            "one of the two is down). Example: set-attr -R /images replicas=3:2")
    p.add_argument("-R", "--recursive", action="store_true", help="apply to everything below a directory too")
    p.add_argument("path", type=cluster_path, help="file or directory in the cluster, from its root")
    p.add_argument("attrs", nargs="+", metavar="replicas=N[:MIN] | failure-domain=disk|host|rack|row|room | tier=0-3")
    p = add("stat", cmd_stat, "show the cluster: space, files, metadata servers, chunk servers, chunk health")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = add("get-event", cmd_get_event, "show the cluster's event log")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--since", type=whole(0), metavar="SEQ",
                   help="the events after this sequence number, oldest first (default: the newest --limit events)")
    p.add_argument("--limit", type=whole(1), default=1000, metavar="N",
                   help="at most this many events (default 1000); with --follow, this many of the past first")
    p.add_argument("-f", "--follow", action="store_true",
                   help="then keep printing new events as they happen, until interrupted (with --json: one JSON "
                   "object a line)")


def _progress(total: int) -> Progress:
    # rich is imported here: every daemon, mount and command loads this module for its arguments.
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    return Progress(
        "[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        console=Console(stderr=True), disable=total < PROGRESS_MIN or not sys.stderr.isatty(), transient=True,
    )


async def cmd_put(client: Client, args: argparse.Namespace) -> int:
    if not args.path.strip("/"):
        raise InvalidArgument(f"{args.path} is the cluster's root directory: give the file's path, such as "
                              f"/{'name' if str(args.local) == '-' else args.local.name}")
    source = sys.stdin.buffer if str(args.local) == "-" else None
    if source is None:
        if args.local.is_dir():
            raise InvalidArgument(f"{args.local} is a directory: put copies one file (a tree: cp -r to the mount)")
        if not args.local.exists():
            raise NotFound(f"{args.local}: no such local file")
        # Not a regular file (/dev/null, a pipe, <(cmd)): read to its end, as cp does; its size is unknown.
        total = args.local.stat().st_size if args.local.is_file() else 0
        source = open(args.local, "rb")  # noqa: ASYNC230 - opening is instant; reads go to a thread
    else:
        total = 0
    started = time.monotonic()
    # Write to a hidden name and rename over the target at the end, so a failed
    # copy leaves the old file (or no file) as it was.
    parent, name = split_path(args.path)
    part = f"{parent.rstrip('/')}/.{name}.part-{os.getpid()}"
    # Asked for, the copy may exist even if its answer never came (Ctrl-C, SIGTERM meanwhile): removed then
    # too, quietly if that fails (it most likely was never made); a copy made is removed, or said left.
    asked, made = True, False
    pending: set[asyncio.Task[Any]] = set()
    try:
        try:
            made_attr = await client.create(part, exclusive=True)
        except NotFound:
            asked = False
            raise NotFound(f"{parent}: no such folder in the cluster; make it first: chunkfs -c {args.cluster} "
                           f"mkdir -p {parent}") from None
        except (Unavailable, Timeout):
            raise  # the answer may have been lost on its way
        except ChunkFSError:
            asked = False  # answered: not made
            raise
        made = True
        ino = made_attr["ino"]
        block = min(MAX_IO_SIZE, client.chunk_size)
        offset = 0
        with _progress(total) as progress:
            task = progress.add_task(f"put {args.path}", total=total or None)
            while True:
                try:
                    data = await asyncio.to_thread(source.read, block)
                except OSError as exc:  # said with the file's name (a probe: "Input/output error" alone)
                    raise OSError(exc.errno, f"reading it at byte {offset}: {exc.strerror}", str(args.local)) from None
                if not data:
                    break
                if len(pending) >= COPY_DEPTH:
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    errors = [e for t in done if (e := t.exception()) is not None]  # each one looked at
                    if errors:
                        raise errors[0]
                size = len(data)
                t = asyncio.ensure_future(client.write(ino, offset, data, extend=False))
                t.add_done_callback(lambda _t, n=size: progress.advance(task, n))
                pending.add(t)
                offset += size
            await _all_or_first_error(list(pending))
            pending = set()
        await client.fsync(ino)
        # With the file's cut as made: a master that took this copy for a dead writer's and trimmed it
        # meanwhile (a writer lost with the last master: mds/open_files.py) refuses the size, not zeros.
        await client.extend(ino, offset, cut=made_attr.get("cut"))
        await client.rename(part, args.path)
    except BaseException:
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)  # no write left running, or failing unheard-of
        if asked:
            # Bounded: the error may be the cluster gone, which a second full `--retry-for` would only repeat.
            client.mds.retry_for = min(client.mds.retry_for, CLEANUP_RETRY_FOR)
            try:
                await client.unlink(part)
            except NotFound:
                pass  # never made
            except ChunkFSError as exc:
                if made:  # (a probe: with the cluster down, a warning about a copy never made, then the error)
                    print(f"chunkfs: warning: could not remove the partial copy {part}: {exc}", file=sys.stderr)
        raise
    finally:
        if source is not sys.stdin.buffer:
            source.close()
    _report("put", args.path, offset, started)
    return 0


async def cmd_get(client: Client, args: argparse.Namespace) -> int:
    attr = await client.resolve(args.path, follow=True)  # a link is followed, as cp does (a docs probe)
    if attr["type"] != "f":
        raise InvalidArgument(f"{args.path} is not a regular file")
    to_stdout = str(args.local) == "-"
    started = time.monotonic()
    size = attr["size"]
    if to_stdout:
        await _copy_out(client, args.path, attr["ino"], size, sys.stdout.buffer)
        return 0
    # Into a hidden file beside the target, renamed over it at the end (as `put` does): a copy
    # that fails half way (a bad block, a server down, Ctrl-C) leaves what was there as it was.
    target, in_place, mode = _get_target(args.local)
    into = target if in_place else target.with_name(f".{target.name}.part-{os.getpid()}")
    try:
        with open(into, "wb" if in_place else "xb") as out:  # noqa: ASYNC230 - writes go to a thread
            await _copy_out(client, args.path, attr["ino"], size, out, str(target))
            if mode is not None:
                os.chmod(out.fileno(), mode)
        if not in_place:
            os.replace(into, target)
    except BaseException:
        if not in_place:
            into.unlink(missing_ok=True)
        raise
    _report("got", args.path, size, started)
    return 0


def _get_target(local: Path) -> tuple[Path, bool, int | None]:
    """Where `get` writes: the target's real path (a link is followed, as cp does); whether it is
    written in place (it exists and is not a regular file: /dev/null, a pipe); the mode to give the
    copy (an existing file's, as cp keeps it; else None: the umask's)."""
    if local.exists() and not local.is_file():  # (/dev/stdout and >(cmd) lead to a pipe no real path names)
        return local, True, None
    target = Path(os.path.realpath(local))
    if not target.exists():
        if not target.parent.is_dir():  # said of the folder, not of the hidden copy's name in it
            raise ConfigError(f"{target.parent}: no such local folder")
        return target, False, None
    if not target.is_file():
        return target, True, None
    return target, False, S_IMODE(target.stat().st_mode)


async def _copy_out(client: Client, path: str, ino: int, size: int, out: BinaryIO, where: str = "") -> None:
    """The file's bytes into `out`, COPY_DEPTH reads at a time, in order; a failed write names `where`
    (a probe's bare "No space left on device")."""
    block = MAX_IO_SIZE
    with _progress(size) as progress:
        task = progress.add_task(f"get {path}", total=size)
        offsets = list(range(0, size, block))
        for start in range(0, len(offsets), COPY_DEPTH):
            batch = offsets[start:start + COPY_DEPTH]
            parts = await _all_or_first_error([client.read(ino, o, block, size) for o in batch])
            for part in parts:
                try:
                    await asyncio.to_thread(out.write, part)
                except OSError as exc:
                    raise OSError(exc.errno, exc.strerror, where or None) from None
                progress.advance(task, len(part))


async def _all_or_first_error(coros: list[Coroutine[Any, Any, Any]]) -> list[Any]:
    """Run these together; their results, or the first error once every one has ended (none is left
    running or unheard-of when the command fails: asyncio would print a traceback for it)."""
    results = await asyncio.gather(*coros, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


def _report(verb: str, path: str, size: int, started: float) -> None:
    elapsed = max(time.monotonic() - started, 1e-6)
    print(f"{verb} {path}: {size} bytes in {elapsed:.2f}s ({size / elapsed / 1e6:.1f} MB/s)", file=sys.stderr)


def shown_name(name: str) -> str:
    """`name` as a line of `ls` shows it: one with a control character (a newline, an escape) in bash's
    $'...' quoting, as GNU ls quotes it on a terminal (a probe: a name with a newline read as two)."""
    if not any(ord(c) < 32 or ord(c) == 127 for c in name):
        return name
    quoted = "".join(_ESCAPES.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 32 or ord(c) == 127 else c) for c in name)
    return f"$'{quoted}'"


_ESCAPES = {"\n": "\\n", "\t": "\\t", "\\": "\\\\", "'": "\\'"}


async def cmd_ls(client: Client, args: argparse.Namespace) -> int:
    # Like ls: a link named last is listed itself with -l, followed without (or with a trailing "/").
    attr = await client.resolve(args.path, follow=not args.l or args.path.endswith("/"))
    if attr["type"] != "d":
        entries = [(args.path.rstrip("/").rsplit("/", 1)[-1], attr["ino"], attr["type"])]
    else:
        entries = await client.readdir(attr["ino"])
    for name, ino, kind in entries:
        if args.l:
            a = await client.getattr(ino)
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(a["mtime_ns"] / 1e9))
            target = f" -> {shown_name(a['target'].decode(errors='replace'))}" if kind == "l" else ""
            print(f"{kind} {a['size']:>14} {a['replicas']}:{a['min_replicas']:<3} {when}  {shown_name(name)}{target}")
        else:
            print(shown_name(name) + ("/" if kind == "d" else ""))
    return 0


async def cmd_rm(client: Client, args: argparse.Namespace) -> int:
    attr = await client.resolve(args.path)
    if attr["ino"] == ROOT_INO:
        # Checked before anything goes: removing every name in it first, then failing on the root
        # itself, emptied the cluster and reported an error (found by a probe).
        raise InvalidArgument(f"refusing to remove the cluster's root directory {args.path!r}: "
                              "remove what is in it by name (rm -r /NAME)")
    if attr["type"] != "d":
        await client.unlink(args.path)
        return 0
    if not args.recursive:
        raise InvalidArgument(f"{args.path} is a directory: use rm -r")
    await remove_tree(client, *await client.parent_of(args.path), attr["ino"])
    return 0


async def remove_tree(client: Client, parent: int, name: str, ino: int) -> None:
    """Remove the directory `name` in `parent` (inode `ino`) and everything in it, deepest first.

    By inode and name, with a stack of its own: a path per entry, resolved from the root each time
    and one recursion level per folder, ended a tree 1,000 folders deep in a RecursionError
    (an operator probe), and cost a round trip per level for every entry.
    """
    stack: list[tuple[int, str, int, list[tuple[str, int, str]]]] = [
        (parent, name, ino, await client.readdir(ino))]
    while stack:
        dir_parent, dir_name, dir_ino, entries = stack[-1]
        if not entries:
            stack.pop()
            await client.rmdir_at(dir_parent, dir_name)
            continue
        entry_name, entry_ino, kind = entries.pop()
        if kind == "d":
            stack.append((dir_ino, entry_name, entry_ino, await client.readdir(entry_ino)))
        else:
            await client.unlink_at(dir_ino, entry_name)


async def cmd_mkdir(client: Client, args: argparse.Namespace) -> int:
    if not any(p for p in args.path.split("/")):
        if args.parents:
            return 0
        raise Exists(f"{args.path!r} is the cluster's root directory: it exists")
    if not args.parents:
        await client.mkdir(args.path)
        return 0
    path = ""
    for part in (p for p in args.path.split("/") if p):
        path += "/" + part
        try:
            attr = await client.resolve(path)
            if attr["type"] != "d":
                raise InvalidArgument(f"{path} exists and is not a directory")
        except NotFound:
            await client.mkdir(path)
    return 0


async def cmd_get_attr(client: Client, args: argparse.Namespace) -> int:
    attr = await client.resolve(args.path)
    print(f"path: {args.path}")
    print(f"type: {'directory' if attr['type'] == 'd' else 'file'}")
    print(f"inode: {attr['ino']}")
    print(f"size: {attr['size']}")
    print(f"replicas={attr['replicas']}:{attr['min_replicas']}")
    if "failure_domain" in attr:
        print(f"failure-domain={attr['failure_domain']}")
        print(f"tier={attr['tier']}")
    print(f"mode: {attr['mode'] & 0o7777:04o}")
    print(f"mtime: {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(attr['mtime_ns'] / 1e9))}")
    return 0


_REPLICAS_RE = re.compile(r"replicas=(\d+)(?::(\d+))?")


def parse_replicas(text: str) -> tuple[int, int]:
    match = _REPLICAS_RE.fullmatch(text.strip())
    if not match:
        raise InvalidArgument(
            f"bad attribute {text!r}: expected replicas=N[:MIN], failure-domain=disk|host|rack|row|room or "
            "tier=0-3, for example replicas=3:2"
        )
    n = int(match.group(1))
    minimum = int(match.group(2)) if match.group(2) else max(1, min(n, n // 2 + 1))
    if not 1 <= minimum <= n <= 16:
        raise InvalidArgument(f"bad attribute {text!r}: need 1 <= MIN <= N <= 16")
    return n, minimum


async def cmd_set_attr(client: Client, args: argparse.Namespace) -> int:

    placement = [a for a in args.attrs if a.startswith(("failure-domain=", "tier="))]
    placements = [parse_placement(a) for a in placement]
    settings = [parse_replicas(a) for a in args.attrs if a not in placement]
    for domain, tier in placements:
        await set_placement(client, args.path, domain, tier, args.recursive)
    for n, minimum in settings:
        changed = await client.set_replicas(args.path, n, minimum, args.recursive)
        print(f"replicas={n}:{minimum} set on {changed} item(s)")
    await warn_of_goal(client, args.path)
    return 0


async def cmd_stat(client: Client, args: argparse.Namespace) -> int:
    stat = await client.cluster_stat()
    if args.json:
        print(json.dumps(stat, indent=2))
        return 0
    c, space = stat["cluster"], stat["space"]
    print(f"cluster {c['name']} ({c['uuid']}), chunk size {human_bytes(c['chunk_size'])}")
    print(f"space: {human_bytes(space['free'])} free of {human_bytes(space['total'])}")
    if "inodes" in stat:  # (not counted by a master of an older version)
        print(f"files: {stat['inodes']} (files, directories and links, the root included)")
    mounts = stat.get("mounts")
    if mounts:  # (not counted by a master of an older version)
        silent = f", {mounts['silent']} silent (the unlinked files they hold open are kept until " \
            "session-timeout)" if mounts["silent"] else ""
        connected = mounts.get("connected")
        now = f" ({connected} connected now)" if connected is not None else ""
        print(f"mounts: {mounts['sessions']} that held files open{silent}{now}")
    print("chunks: " + ", ".join(f"{k} {v}" for k, v in stat["chunks"].items()))
    healing = stat.get("healing") or {}
    if healing.get("active"):
        print(f"healing: {healing['percent']}% ({healing['copied']} copied, {healing['moved']} moved, "
              f"{healing['left']} left, {healing['rate_mib_s']:.1f} MiB/s)")
    print("metadata servers:")
    for m in stat["mds"]:
        print(f"  MDS#{m['id']:<3} {m['role']:<8} {m['addr']:<22} term {m['term']} commit {m['commit']}")
    print("chunk servers:")
    for s in stat["cs"]:
        full = " FULL: takes no new chunks" if s.get("full") else ""
        draining = " DRAINING (rm-cs): its replicas move away" if s.get("draining") else ""
        print(f"  CS#{s['id']:<4} {s['status']:<8} {s['addr']:<22} host {s['host']:<12} "
              f"{human_bytes(s['free'])} free of {human_bytes(s['total'])}, {s['replicas']} replicas{full}{draining}")
    return 0


async def cmd_get_event(client: Client, args: argparse.Namespace) -> int:
    from chunkfs.cli.events import follow_events, format_event

    since = args.since
    if since is None:  # the newest: the oldest 1000 hid everything after them (a probe)
        since = max(0, int((await client.cluster_stat()).get("events_seq", 0)) - args.limit)
    events: list[dict[str, Any]] = []
    while len(events) < args.limit:  # in pages: the master answers at most a page at a time
        page = await client.events(since, args.limit - len(events))
        if not page:
            break
        events.extend(page)
        since = int(page[-1]["seq"])
    if args.follow:
        for e in events:
            print(json.dumps(e) if args.json else format_event(e))
        return await follow_events(client, since, args.json)
    if args.json:
        print(json.dumps(events, indent=2))
        return 0
    for e in events:
        print(format_event(e))
    return 0

