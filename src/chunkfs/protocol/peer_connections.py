"""Connections to peers by address (a mount's to chunk servers, a chunk server's to the others).

Each address has at most one connect under way, and every request that needs that address
meanwhile waits for the same one; no address waits for another's.  A frozen server (SIGSTOP,
a host paused or cut off) still accepts TCP, its kernel does, and then says nothing: each
connect to it costs the whole handshake timeout (5 s).  Behind one lock for every address,
a mount's writes to 16 chunks whose chains named a frozen server paid those 5 s one chunk
after the other (the last write waited 69 s; a fault probe), and a connect to a live server
waited behind them too.  Now the requests that want the frozen server fail together, after
one timeout, and the others go on.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable

from chunkfs.protocol.rpc import Connection


class PeerConnections:
    def __init__(self, make: Callable[[str], Awaitable[Connection]]) -> None:
        #: Opens, authenticates and starts a connection to an address (and closes it if cancelled).
        self._make = make
        self._open: dict[str, Connection] = {}
        self._making: dict[str, asyncio.Task[Connection]] = {}

    async def get(self, addr: str) -> Connection:
        conn = self._open.get(addr)
        if conn is not None and not conn.closed:
            return conn
        task = self._making.get(addr)
        if task is None:
            task = self._making[addr] = asyncio.create_task(self._connect(addr), name=f"connect to {addr}")
            task.add_done_callback(functools.partial(self._done, addr))
        # Shielded: a request given up (a FUSE interrupt, a caller's timeout) does not cancel the
        # connect the others wait for.  An attempt nobody waits for any more still ends by its timeouts.
        return await asyncio.shield(task)

    async def _connect(self, addr: str) -> Connection:
        conn = await self._make(addr)
        self._open[addr] = conn
        return conn

    def _done(self, addr: str, task: asyncio.Task[Connection]) -> None:
        if self._making.get(addr) is task:
            del self._making[addr]
        if not task.cancelled():
            task.exception()  # looked at: its waiters, if any are left, get it from the shield

    def values(self) -> list[Connection]:
        return list(self._open.values())

    def close(self) -> None:
        for task in self._making.values():
            task.cancel()
        self._making.clear()
        for conn in self._open.values():
            conn.close()
        self._open.clear()
