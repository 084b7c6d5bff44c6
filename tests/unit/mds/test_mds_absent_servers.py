"""Which registered chunk servers a new master need not wait for (absent_servers.py)."""

from __future__ import annotations

import asyncio
import socket
import time

from chunkfs.mds.absent_servers import refusing


def _closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_only_an_address_that_refuses_is_absent() -> None:
    async def run() -> set[int]:
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        listening = server.sockets[0].getsockname()[1]
        try:
            return await refusing({1: f"127.0.0.1:{listening}", 2: f"127.0.0.1:{_closed_port()}",
                                   3: "not an address"})
        finally:
            server.close()
            await server.wait_closed()

    assert asyncio.run(run()) == {2}


def test_an_address_that_does_not_answer_in_time_is_waited_for() -> None:
    """A full backlog stands for a host that does not answer: not counted as absent."""
    async def run() -> set[int]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen(0)
            addr = f"127.0.0.1:{s.getsockname()[1]}"
            fillers = []
            try:
                for _ in range(8):  # fill the backlog, so a new connection hangs
                    f = socket.socket()
                    f.setblocking(False)
                    try:
                        f.connect(s.getsockname())
                    except BlockingIOError:
                        pass
                    fillers.append(f)
                started = time.monotonic()
                absent = await refusing({7: addr}, timeout=0.3)
                assert time.monotonic() - started >= 0.25  # it did wait: the connection hung
                return absent
            finally:
                for f in fillers:
                    f.close()

    assert asyncio.run(run()) == set()
