"""Which registered chunk servers a new master need not wait for: nothing listens at their address.

A new master knows no chunk server until each reconnects, and for
`CS_RECONNECT_GRACE` it makes writers of new chunks wait until every
registered one has (`MetadataServer.check_servers_settled`), so that new
chunks are not all placed on the first servers back, or refused for want of
them.  A server that was down before the change never reconnects, and every
new chunk then waited out the whole grace: a fault probe measured 9.4-11.2 s
before a new file could be written after a master was killed with a chunk
server already down.

A connection refused at a server's address says that no process listens
there now: that server is not waited for.  One whose host does not answer
at all is still waited for (the grace bounds the wait), and so is one that
accepts the connection: it is up, and registers in a moment.
"""

from __future__ import annotations

import asyncio
import contextlib

from chunkfs.common.addr import parse_addr
from chunkfs.common.errors import ChunkFSError

#: Servers that are up reconnect to a new master within this; only those still missing are probed.
PROBE_DELAY = 1.0
#: A connection neither refused nor made within this counts as "maybe up": waited for.
PROBE_TIMEOUT = 1.0


async def refusing(addrs: dict[int, str], timeout: float = PROBE_TIMEOUT) -> set[int]:
    """The ids among `addrs` (id -> "host:port") whose address refuses a TCP connection now."""

    async def refused(addr: str) -> bool:
        try:
            host, port = parse_addr(addr)
            async with asyncio.timeout(timeout):
                _, writer = await asyncio.open_connection(host, port)
        except ConnectionRefusedError:
            return True
        except (OSError, TimeoutError, ChunkFSError):
            return False  # unreachable for now, or an address this master cannot judge: waited for
        writer.close()  # a process is there: it will register
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return False

    ids = list(addrs)
    answers = await asyncio.gather(*(refused(addrs[i]) for i in ids))
    return {i for i, no in zip(ids, answers, strict=True) if no}
