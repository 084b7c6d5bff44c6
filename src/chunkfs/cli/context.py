"""What every command needs: the cluster it is about, and a client of it for the length of the command."""

from __future__ import annotations

import argparse
import asyncio
import signal
import threading
from collections.abc import Awaitable, Callable

from chunkfs.client.client import Client
from chunkfs.common.config import ConfigError, load_client_config
from chunkfs.common.daemon import new_event_loop, unwind

#: A command that talks to the cluster: it gets a connected client and its arguments.
Command = Callable[[Client, argparse.Namespace], Awaitable[int]]
#: Signals that end a command, its cleanup done first: Ctrl-C, `kill`, a closed terminal.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stopped(KeyboardInterrupt):
    """A command ended by a signal (`STOP_SIGNALS`), after its own cleanup: a `put` or `get` cut off
    removes its hidden partial copy (a probe found them left behind after SIGTERM)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def need_cluster(args: argparse.Namespace) -> str:
    if not args.cluster:
        raise ConfigError("no cluster given: use -c NAME (for example `chunkfs -c local stat`)")
    return str(args.cluster)


def known_cluster(args: argparse.Namespace) -> str:
    """The cluster ``-c`` names, which must have a client configuration on this host (one line if not)."""
    name = need_cluster(args)
    load_client_config(name)
    return name


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
    task = loop.create_task(main())
    stopped: list[int] = []

    def stop(signum: int) -> None:
        # On the loop, between steps: the command is cancelled where it waits, never half way through
        # a statement (a signal raised as an exception there left a write's coroutine never run).
        stopped.append(signum)
        task.cancel()

    stops = STOP_SIGNALS if threading.current_thread() is threading.main_thread() else ()
    for sig in stops:
        loop.add_signal_handler(sig, stop, sig)
    try:
        try:
            result = loop.run_until_complete(task)
        except asyncio.CancelledError:
            if not stopped:
                raise
            result = 0
        if stopped:
            raise Stopped(stopped[0])
        return result
    finally:
        for sig in stops:
            loop.remove_signal_handler(sig)
        # What the command left running (a task of its own) is cancelled and waited for here, not cut
        # off by the loop closing under it (asyncio printed tracebacks of it: an operator probe).
        unwind(loop)
        loop.close()
