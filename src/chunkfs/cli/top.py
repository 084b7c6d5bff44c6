"""What ``chunkfs top`` shows, and its live screen (top_command.py: the command and its arguments;
this module, with rich, is loaded only when the command runs)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

from chunkfs.cli.top_command import VIEWS
from chunkfs.cli.units import human_bytes
from chunkfs.client.client import Client
from chunkfs.common.errors import Unavailable

#: How to get each chunk-server sort column's keys (top_command.SORT_COLUMNS).
SORTS: dict[str, Any] = {
    "id": lambda s: s["id"],
    "status": lambda s: (s["status"], s["id"]),
    "free": lambda s: s.get("free", 0),
    "replicas": lambda s: s.get("replicas", 0),
    "io": lambda s: s.get("io", {}).get("read_bps", 0) + s.get("io", {}).get("write_bps", 0),
    "latency": lambda s: _latency(s),
    "queue": lambda s: s.get("load", 0),
}
EVENTS_SHOWN = 8
STATUS_STYLE = {"healthy": "bold green", "degraded": "bold yellow", "error": "bold red",
                "active": "green", "inactive": "yellow", "offline": "bold red", "master": "bold cyan", "follower": "",
                "joining": "yellow"}
#: A chunk server whose last heartbeat is older than this is flagged "S" (slow/stalled).
STALE_AFTER = 5.0
#: Columns left out, first to last, of a table wider than the screen; the others keep whole values.
NARROW_DROPS = {"cs": ("HOST", "SPACE", "QDEPTH", "CPU", "TIER", "LAT", "IOPS"),
                "mds": ("UPTIME", "MEM", "CPU")}
#: Wider than any screen: a table's width with no value cut short.
UNBOUNDED = 10_000


@dataclass(slots=True)
class TopState:
    view: str = "all"
    sort: str = "id"
    reverse: bool = False
    stat: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""
    fetched: float = 0.0


async def fetch(client: Client, state: TopState) -> None:
    try:
        state.stat = await client.cluster_stat()
        last = int(state.stat.get("events_seq", 0))
        state.events = await client.events(max(0, last - EVENTS_SHOWN), EVENTS_SHOWN)
        state.error = ""
    except Exception as exc:  # noqa: BLE001 - shown on screen; top keeps trying
        state.error = str(exc)
    state.fetched = time.time()


async def cmd_top(client: Client, args: argparse.Namespace) -> int:
    if args.interval < 0.2:
        from chunkfs.common.errors import ConfigError

        raise ConfigError("--interval must be at least 0.2 seconds")
    client.mds.retry_for = min(client.mds.retry_for, 5.0)
    state = TopState(view=args.view, sort=args.sort)
    if args.once or not sys.stdout.isatty():
        width = args.width or (None if sys.stdout.isatty() else 160)
        await fetch(client, state)
        if not state.stat:  # one line on stderr, as every command's failure (not a frame wrapped to the width)
            raise Unavailable(f"no answer from the cluster: {state.error}")
        console = Console(width=width, soft_wrap=False)
        console.print(render(state, console.width))
        return 1 if state.error else 0
    return await _live(client, state, args.interval)


async def _live(client: Client, state: TopState, interval: float) -> int:
    from rich.live import Live

    quit_event = asyncio.Event()
    refresh = asyncio.Event()
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno() if sys.stdin.isatty() else -1
    saved = None
    if fd >= 0:
        import termios
        import tty

        saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)

        def on_key() -> None:
            key = sys.stdin.read(1)
            if handle_key(state, key):
                quit_event.set()
            refresh.set()

        loop.add_reader(fd, on_key)
    try:
        with Live(render(state), auto_refresh=False, screen=True, transient=True) as live:
            while not quit_event.is_set():
                await fetch(client, state)
                live.update(render(state, live.console.width), refresh=True)
                refresh.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(refresh.wait(), interval)
                if refresh.is_set():
                    live.update(render(state, live.console.width), refresh=True)
    finally:
        if fd >= 0 and saved is not None:
            import termios

            loop.remove_reader(fd)
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
    return 0


def handle_key(state: TopState, key: str) -> bool:
    """Apply a key press; True means quit."""
    if key in ("q", "Q", "\x03"):
        return True
    if key == "s":
        names = list(SORTS)
        state.sort = names[(names.index(state.sort) + 1) % len(names)]
    elif key == "r":
        state.reverse = not state.reverse
    elif key == "v":
        state.view = VIEWS[(VIEWS.index(state.view) + 1) % len(VIEWS)]
    elif len(key) == 1 and key in "1234":
        state.view = VIEWS[int(key) - 1]
    return False


# -- rendering ---------------------------------------------------------------------


def human(n: float) -> str:
    return human_bytes(n, compact=True)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    s = int(seconds)
    d, h, m = s // 86400, s % 86400 // 3600, s % 3600 // 60
    return f"{d}d{h:02d}h" if d else f"{h}h{m:02d}m" if h else f"{m}m{s % 60:02d}s"


def _latency(s: dict[str, Any]) -> float:
    io = s.get("io") or {}
    return max(float(io.get("read_latency", 0.0)), float(io.get("write_latency", 0.0)))


def _styled(value: str) -> Text:
    return Text(value, style=STATUS_STYLE.get(value, ""))


def render(state: TopState, width: int | None = None) -> RenderableType:
    """One frame; tables wider than `width` columns lose their least needed columns (`NARROW_DROPS`)."""
    stat = state.stat
    if not stat:
        return Text(f"chunkfs top: no answer from the cluster: {state.error or 'waiting'}", style="bold red")
    parts: list[RenderableType] = [cluster_line(stat)]
    if state.error:
        parts.append(Text(f"last refresh failed: {state.error}", style="bold red"))
    if state.view in ("all", "mds"):
        parts.append(fit(lambda out: mds_table(stat, out), width, NARROW_DROPS["mds"]))
    if state.view in ("all", "cs"):
        parts.append(fit(lambda out: cs_table(stat, state.sort, state.reverse, out), width, NARROW_DROPS["cs"]))
        if stat.get("clients"):
            parts.append(Text("clients: " + ", ".join(c["name"] for c in stat["clients"])))
    if state.view in ("all", "events"):
        parts.append(events_table(state.events))
    when = time.strftime("%H:%M:%S", time.localtime(state.fetched))
    parts.append(Text(f"{when}  view {state.view} [v]  sort {state.sort}{' desc' if state.reverse else ''} [s/r]  "
                      "quit [q]", style="dim"))
    return Group(*parts)


def fit(build: Callable[[frozenset[str]], Table], width: int | None, drops: tuple[str, ...]) -> Table:
    """The table `build` makes, leaving out the first of `drops` it must to be at most `width` columns wide.

    Rich would instead cut every value short ("252…", "act…": an operator probe's `top --width 80`);
    a figure cut short reads as another figure, a column left out does not.
    """
    left_out: frozenset[str] = frozenset()
    table = build(left_out)
    if width is None:
        return table
    console = Console(width=UNBOUNDED)
    for name in drops:
        if max(Segment.get_line_length(line) for line in console.render_lines(table, pad=False)) <= width:
            break
        left_out |= {name}
        table = build(left_out)
    return table


def _table(title: str, columns: list[tuple[str, str]], rows: list[list[Any]], leave_out: frozenset[str]) -> Table:
    keep = [i for i, (name, _) in enumerate(columns) if name not in leave_out]
    t = Table(title=title, title_justify="left", expand=False, pad_edge=False, box=None, header_style="bold reverse")
    for i in keep:
        t.add_column(columns[i][0], justify=columns[i][1])  # type: ignore[arg-type]
    for row in rows:
        t.add_row(*(row[i] for i in keep))
    return t


def cluster_line(stat: dict[str, Any]) -> Text:
    c, space, chunks = stat["cluster"], stat["space"], stat["chunks"]
    io = stat.get("io", {})
    status = stat.get("status", "?")
    used = space["total"] - space["free"]
    pct = 100.0 * used / space["total"] if space["total"] else 0.0
    line = Text()
    line.append(f"Cluster {c['name']}", style="bold")
    line.append("  status ")
    line.append(status.upper(), style=STATUS_STYLE.get(status, ""))
    active = sum(1 for s in stat["cs"] if s["status"] == "active")
    line.append(f"  space {human(space['free'])} free of {human(space['total'])} ({pct:.0f}% used)")
    line.append(f"  CS {active}/{len(stat['cs'])} active, MDS {len(stat['mds'])}\n")
    line.append("chunks ")
    for i, (state, n) in enumerate(chunks.items()):
        style = "green" if state == "healthy" else ("bold red" if n and state != "degraded" else
                                                    "yellow" if n else "")
        line.append(f"{', ' if i else ''}{state} {n}", style=style)
    line.append(f"   I/O read {human(io.get('read_bps', 0))}/s ({io.get('read_iops', 0):g} op/s), "
                f"write {human(io.get('write_bps', 0))}/s ({io.get('write_iops', 0):g} op/s)")
    line.append(f"   clients {len(stat.get('clients', []))}")
    return line


def mds_table(stat: dict[str, Any], leave_out: frozenset[str] = frozenset()) -> Table:
    columns = [("MDSID", "right"), ("ROLE", "left"), ("TERM", "right"), ("COMMIT", "right"),
               ("CPU", "right"), ("MEM", "right"), ("UPTIME", "right"), ("ADDRESS", "left")]
    rows: list[list[Any]] = []
    for m in stat["mds"]:
        proc = m.get("proc") or {}
        rows.append([str(m["id"]), _styled(m["role"]), str(m["term"]), str(m["commit"]),
                     f"{proc['cpu']:.1f}%" if "cpu" in proc else "-", human(proc["rss"]) if "rss" in proc else "-",
                     duration(proc.get("uptime")) or "-", m["addr"]])
    return _table("Metadata servers", columns, rows, leave_out)


def cs_flags(s: dict[str, Any]) -> str:
    flags = "D" if s.get("draining") else ""  # (an operator probe: a draining server looked plain "active")
    if s["status"] == "active":
        if s.get("last_seen") is not None and s["last_seen"] > STALE_AFTER:
            flags += "S"  # heartbeats late
        if s.get("full") or (s.get("total") and s.get("free", 0) < 0.05 * s["total"]):
            flags += "F"  # full (takes no new chunks) or nearly
        if (s.get("io") or {}).get("errors"):
            flags += "E"  # failed requests since start
    return flags


def cs_table(stat: dict[str, Any], sort: str = "id", reverse: bool = False,
             leave_out: frozenset[str] = frozenset()) -> Table:
    columns = [("CSID", "right"), ("STATUS", "left"), ("SPACE", "right"), ("FREE", "right"), ("REPLICAS", "right"),
               ("READ/s", "right"), ("WRITE/s", "right"), ("IOPS", "right"), ("LAT", "right"), ("QDEPTH", "right"),
               ("CPU", "right"), ("HOST", "left")]
    has_tier = any("tier" in s for s in stat["cs"])
    if has_tier:
        columns.append(("TIER", "right"))
    columns.append(("FLAGS", "left"))
    rows: list[list[Any]] = []
    for s in sorted(stat["cs"], key=SORTS.get(sort, SORTS["id"]), reverse=reverse):
        io, proc = s.get("io") or {}, s.get("proc") or {}
        active = s["status"] == "active"
        row = [
            str(s["id"]), _styled(s["status"]), human(s["total"]) if active else "-",
            human(s["free"]) if active else "-", str(s["replicas"]),
            human(io.get("read_bps", 0)) if active else "-", human(io.get("write_bps", 0)) if active else "-",
            f"{io.get('read_iops', 0) + io.get('write_iops', 0):g}" if active else "-",
            f"{_latency(s) * 1000:.1f}ms" if active else "-", str(s.get("load", 0)) if active else "-",
            f"{proc['cpu']:.1f}%" if "cpu" in proc else "-", s.get("host", ""),
        ]
        if has_tier:
            row.append(str(s.get("tier", "")))
        row.append(cs_flags(s))
        rows.append(row)
    return _table("Chunk servers", columns, rows, leave_out)


def events_table(events: list[dict[str, Any]]) -> Table:
    t = Table(title="Latest events", title_justify="left", expand=False, pad_edge=False, box=None,
              header_style="bold reverse")
    for col in ("SEQ", "TIME", "LEVEL", "MESSAGE"):
        t.add_column(col, overflow="fold")
    for e in reversed(events):
        level = e["level"]
        style = {"warning": "yellow", "error": "bold red"}.get(level, "")
        t.add_row(str(e["seq"]), time.strftime("%m-%d %H:%M:%S", time.localtime(e["time"])),
                  Text(level.upper(), style=style), e["message"])
    return t
