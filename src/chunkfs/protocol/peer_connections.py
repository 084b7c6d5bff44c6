"""Connections to peers by address (a mount's to chunk servers, a chunk server's to the others).

Each address has at most one connect under way, and every request that needs that address
meanwhile waits for the same one; no address waits for another's.  A frozen server (SIGSTOP,
a host paused or cut off) still accepts TCP, its kernel does, and then says nothing: each
connect to it costs the whole handshake timeout (5 s).  Behind one lock for every address,
a mount's writes to 16 chunks whose chains named a frozen server paid those 5 s one chunk
after the other (the last write waited 69 s; a fault probe), and a connect to a live server
waited behind them too.  Now the requests that want the frozen server fail together, after
one timeout, and the others go on.

**A silent address is not waited for again until it answers.**  After that
first timeout the next request for the frozen server, for the next chunk whose
chain names it, connected again and paid the 5 s again: a VM writing across
chunks waited 5 s per chunk for as long as the freeze lasted (a fault probe
with qemu: 8, then 5 s for every chunk).  An address whose connect timed out,
or whose connection was given up for its silence, is now *silent*: a request
for it fails at once (Unavailable, as a lost connection does: a writer asks
the master for a chain without that server, a reader reads another replica),
while one connect at a time goes on trying it in the background; the first
that completes makes it usable again.  A connect refused (a server down, its
port closed) costs nothing to try and does not make an address silent.  While
no connection of the pool is open and live (every server silent, this side's
network gone), a request waits for the connect as before: failing them all at
once would turn a pause of the network into I/O errors.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable

from chunkfs.common.errors import Timeout, Unavailable
from chunkfs.protocol.rpc import Connection


class PeerConnections:
    def __init__(self, make: Callable[[str], Awaitable[Connection]]) -> None:
        #: Opens, authenticates and starts a connection to an address (and closes it if cancelled).
        self._make = make
        self._open: dict[str, Connection] = {}
        self._making: dict[str, asyncio.Task[Connection]] = {}
        #: Silent addresses -> why (a connect timed out, a connection given up for silence).
        self._silent: dict[str, str] = {}

    async def get(self, addr: str) -> Connection:
        conn = self._open.get(addr)
        if conn is not None:
            if not conn.closed:
                return conn
            del self._open[addr]
            if conn.silent:
                self._silent[addr] = conn.close_reason
        task = self._making.get(addr)
        if task is None:
            task = self._making[addr] = asyncio.create_task(self._connect(addr), name=f"connect to {addr}")
            task.add_done_callback(functools.partial(self._done, addr))
        why = self._silent.get(addr)
        if why is not None and any(not conn.closed for conn in self._open.values()):
            # (the connect just started, or one under way, tries it meanwhile)
            raise Unavailable(f"{addr} does not answer ({why}); asked again once it answers a connect")
        # Shielded: a request given up (a FUSE interrupt, a caller's timeout) does not cancel the
        # connect the others wait for.  An attempt nobody waits for any more still ends by its timeouts.
        return await asyncio.shield(task)

    def silent(self, addr: str) -> bool:
        """Whether requests for `addr` fail at once: it has not answered since it went silent."""
        return addr in self._silent

    async def _connect(self, addr: str) -> Connection:
        conn = await self._make(addr)
        self._open[addr] = conn
        return conn

    def _done(self, addr: str, task: asyncio.Task[Connection]) -> None:
        if self._making.get(addr) is task:
            del self._making[addr]
        if task.cancelled():
            return
        exc = task.exception()  # looked at: its waiters, if any are left, get it from the shield
        if isinstance(exc, Timeout):
            self._silent[addr] = str(exc)
        else:  # answered (or refused at once, which costs nothing to try again)
            self._silent.pop(addr, None)

    def values(self) -> list[Connection]:
        return list(self._open.values())

    def close(self) -> None:
        for task in self._making.values():
            task.cancel()
        self._making.clear()
        for conn in self._open.values():
            conn.close()
        self._open.clear()
