"""Hostile frames against an `RpcServer` in this process (invariant 4), many of them: it is cheap here.

The server runs on its own event loop in a thread; the hostile peers are blocking sockets with timeouts
(tests/hostile_frames.py), before and after the real handshake.  After every batch: nothing on the server's
loop failed, every hostile connection is gone from its books, the handler saw only what authenticated
peers may send (read-only requests that passed validation), and a fresh peer with the secret is served.
The same frames go to real daemons in tests/cluster/test_fuzz_daemons.py.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chunkfs.common.errors import InvalidArgument, NotFound, ProtocolError
from chunkfs.protocol.messages import Msg
from chunkfs.protocol.rpc import Connection, Credentials, Reply, RpcServer
from hostile_frames import READ_ONLY, plans, run_plan, served

SECRET = bytes(range(32))
CLUSTER = "fuzzclu"
SLOW = os.environ.get("CHUNKFS_SLOW") == "1"
#: CI: a bounded number of batches; the slow run goes on until this many frames were sent (or its time is up).
CI_EXAMPLES = 300
SLOW_FRAMES = 100_000
SLOW_SECONDS = 900.0


class Handler:
    """Answers the read-only requests; anything else reaching it is a failure of the layer below."""

    def __init__(self) -> None:
        self.server: RpcServer | None = None
        self.calls: Counter[str] = Counter()
        self.wrong: list[str] = []

    async def __call__(self, conn: Connection, msg: Msg, header: dict[str, Any], payload: bytes) -> Reply:
        assert self.server is not None
        self.calls[msg.name] += 1
        if conn not in self.server.connections:
            self.wrong.append(f"{msg.name} from a connection that has not authenticated")
        if msg not in READ_ONLY and msg not in (Msg.HELLO, Msg.PROOF):
            self.wrong.append(f"{msg.name} is not read-only, yet it was well formed: {header}")
        if msg == Msg.PING:
            return {"role": "mds", "node": "fuzz"}, b""
        if msg in (Msg.HELLO, Msg.PROOF):
            raise ProtocolError(f"{msg.name}: the handshake is over")
        if msg == Msg.GETATTR:
            return {"attr": {"ino": header["ino"]}}, b""
        if msg == Msg.CS_READ:
            if not 0 <= header["length"] <= 1 << 20:
                raise InvalidArgument("length out of range")
            return {}, bytes(header["length"])
        raise NotFound(f"{msg.name}: nothing here")


class ThreadServer:
    """An RpcServer on an event loop of its own, so blocking hostile peers can talk to it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop_errors: list[str] = []
        self.loop.set_exception_handler(lambda _loop, ctx: self.loop_errors.append(str(ctx.get("message"))))
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-server", daemon=True)
        self.thread.start()
        self.handler = Handler()
        self.srv = RpcServer(Credentials(CLUSTER, SECRET, "mds", "fuzz-server"), self.handler)
        self.handler.server = self.srv
        self.run(self.srv.listen("127.0.0.1:0"))
        self.addr = f"127.0.0.1:{self.srv.port}"

    def run(self, coro: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _books(self) -> tuple[int, int, int]:
        return len(self.srv.connections), len(self.srv._handshaking), sum(self.srv._unauthenticated.values())

    def books_empty(self, timeout: float = 5.0) -> tuple[int, int, int]:
        """Connections, handshakes and per-host counts the server still holds, once they settle (bounded)."""
        deadline = time.monotonic() + timeout
        while True:
            books = self.run(self._books())
            if books == (0, 0, 0) or time.monotonic() > deadline:
                return books
            time.sleep(0.01)

    def close(self) -> None:
        self.run(self.srv.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


class Errors(logging.Handler):
    """ERROR records from anywhere (the server's loop thread included)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(f"{record.name}: {record.getMessage()}")


@pytest.fixture
def fuzz_server() -> Iterator[tuple[ThreadServer, Errors]]:
    errors = Errors()
    root, rpc_log = logging.getLogger(), logging.getLogger("chunkfs.protocol.rpc")
    level = rpc_log.level
    # One warning per refused connection is the server's job; thousands of them in the test report are not.
    rpc_log.setLevel(logging.ERROR)
    root.addHandler(errors)
    server = ThreadServer()
    try:
        yield server, errors
    finally:
        server.close()
        root.removeHandler(errors)
        rpc_log.setLevel(level)


def fuzz(server: ThreadServer, errors: Errors, max_examples: int, stats: Counter[str]) -> None:
    @settings(max_examples=max_examples, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
    @given(st.lists(plans(CLUSTER, ints=(1, 2, 42, 1 << 20)), min_size=1, max_size=6))
    def batch(batch_plans: list[Any]) -> None:
        for plan in batch_plans:
            outcome = run_plan(server.addr, plan, CLUSTER, SECRET)
            stats["connections"] += 1
            stats["frames"] += outcome.frames_sent
            stats["authenticated"] += plan.authenticate
            stats["error frames"] += bool(outcome.error_codes)
            stats["resets"] += outcome.reset
        assert server.thread.is_alive()
        assert not server.loop_errors, server.loop_errors
        assert not errors.records, errors.records
        assert not server.handler.wrong, server.handler.wrong
        assert server.books_empty() == (0, 0, 0), "the server still holds closed connections"
        assert served(server.addr, CLUSTER, SECRET)["node"] == "fuzz"

    batch()


def no_connection_objects_left(server: ThreadServer) -> list[Connection]:
    """Connection objects still alive once the server has let go of every connection.

    The batch's last check (`served`) closes its connection as it ends, and the server's side goes
    on its own loop a moment later: that moment is waited for (bounded), a leak is not."""
    assert server.books_empty() == (0, 0, 0)
    deadline = time.monotonic() + 5.0
    while True:
        gc.collect()
        left = [o for o in gc.get_objects() if isinstance(o, Connection)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def test_hostile_frames_in_process(fuzz_server: tuple[ThreadServer, Errors]) -> None:
    server, errors = fuzz_server
    stats: Counter[str] = Counter()
    fuzz(server, errors, CI_EXAMPLES, stats)
    print(f"in-process fuzz: {dict(stats)}; handler saw {dict(server.handler.calls)}")
    assert stats["authenticated"] and stats["connections"] > stats["authenticated"]
    # Every connection's buffers went with it.
    assert not no_connection_objects_left(server)


@pytest.mark.slow
@pytest.mark.timeout(SLOW_SECONDS + 600)
def test_hostile_frames_in_process_soak(fuzz_server: tuple[ThreadServer, Errors]) -> None:
    server, errors = fuzz_server
    stats: Counter[str] = Counter()
    deadline = time.monotonic() + SLOW_SECONDS
    rounds = 0
    while stats["frames"] < SLOW_FRAMES and time.monotonic() < deadline and rounds < 1000:
        fuzz(server, errors, 500, stats)
        rounds += 1
    print(f"in-process soak: {dict(stats)}; handler saw {dict(server.handler.calls)}")
    assert stats["frames"] >= SLOW_FRAMES, stats
    assert not no_connection_objects_left(server)
