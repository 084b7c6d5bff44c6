"""What every command needs: the cluster it is about, and a client of it for the length of the command."""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Awaitable, Callable
from types import FrameType

from chunkfs.client.client import Client
from chunkfs.common.config import ConfigError, load_client_config
from chunkfs.common.daemon import new_event_loop, unwind

#: A command that talks to the cluster: it gets a connected client and its arguments.
Command = Callable[[Client, argparse.Namespace], Awaitable[int]]


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP (`kill`, a closed terminal) ends a command the way Ctrl-C does: its cleanup
    runs (a `put` or `get` cut off removes its hidden partial copy; a probe found them left behind)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _stopped(signum: int, frame: FrameType | None) -> None:
    raise Stopped(signum)


def need_cluster(args: argparse.Namespace) -> str:
    if not args.cluster:
        raise ConfigError("no cluster given: use -c NAME (for example `chunkfs -c local stat`)")
    return str(args.cluster)


def run_with_client(args: argparse.Namespace, func: Command) -> int:
    """Run `func` with a client of the cluster named by ``-c`` on an event loop of its own."""
    config = load_client_config(need_cluster(args))

    async def main() -> int:
        client = Client(config)
        if getattr(args, "retry_for", None) is not None:  # how long to retry what the cluster cannot do yet
            client.mds.retry_for = args.retry_for
        try:
            return await func(client, args)
        finally:
            await client.close()

    loop = new_event_loop()
    stops = (signal.SIGTERM, signal.SIGHUP) if threading.current_thread() is threading.main_thread() else ()
    previous = {sig: signal.signal(sig, _stopped) for sig in stops}
    try:
        return loop.run_until_complete(main())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        # Ctrl-C, the way out of `get-event --follow`, `top` and `rm-cs --wait`, stops the loop with the
        # command half way: its own cleanup (closing the client) runs here, not in a loop closed
        # under it (asyncio printed tracebacks of what was cut off: an operator probe).
        unwind(loop)
        loop.close()
