"""``get-event --follow``: the event log as it grows."""

from __future__ import annotations

import asyncio
import json
import sys
import time

from chunkfs.client.client import Client

#: Events asked for at once; a full page is followed at once by the next.
PAGE = 1000


def format_event(e: dict) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["time"]))
    return f"{e['seq']:>6} {when} {e['level'].upper():<7} {e['message']}"


async def follow_events(client: Client, since: int, as_json: bool, interval: float = 1.0) -> int:
    """Print events as they are recorded (one JSON object a line with --json) until interrupted."""
    while True:
        events = await client.events(since, PAGE)
        for e in events:
            print(json.dumps(e) if as_json else format_event(e))
            since = max(since, int(e["seq"]))
        sys.stdout.flush()
        if len(events) < PAGE:
            await asyncio.sleep(interval)
