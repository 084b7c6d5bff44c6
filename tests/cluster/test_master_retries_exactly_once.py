"""Retried metadata changes act once: a retry of a change whose answer was lost gets that answer.

Before, a client that timed out on a frozen master and retried its ``mkdir``
got "already exists" for the directory its own first request had made.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from chunkfs.client.client import SyncClient
from chunkfs.common.addr import parse_addr
from chunkfs.common.config import load_client_config
from chunkfs.common.errors import Exists
from chunkfs.protocol.frame import PREFIX_SIZE, unpack_prefix
from chunkfs.protocol.messages import EXACTLY_ONCE, Msg
from chunkfs.protocol.rpc import Credentials, connect
from chunkfs.testing.cluster import master_id


def test_the_same_request_sent_twice_acts_once(make_cluster) -> None:
    """What a retry looks like on the wire: the same client id and sequence number, to any master."""
    cluster = make_cluster(n_cs=2)
    config = load_client_config(cluster.name)
    creds = Credentials(cluster.name, config.secret, "client", "retrier")
    with cluster.client() as c:
        c.create("/old")
        conn = c.run(connect(config.mds[0], creds))

        def twice(msg: Msg, header: dict[str, Any], seq: int) -> tuple[dict[str, Any], dict[str, Any]]:
            once = {**header, "cid": "retrier-1", "seq": seq, "low": seq}
            return c.run(conn.call(msg, once))[0], c.run(conn.call(msg, once))[0]

        first, again = twice(Msg.MKDIR, {"parent": 1, "name": "d", "mode": 0o755}, 1)
        assert first == again
        first, again = twice(Msg.CREATE, {"parent": 1, "name": "f", "mode": 0o644, "exclusive": True}, 2)
        assert first["attr"]["ino"] == again["attr"]["ino"]
        twice(Msg.RENAME, {"parent": 1, "name": "f", "new_parent": 1, "new_name": "g"}, 3)
        c.create("/f")  # a new "f": the retried rename must not move it
        c.write(c.stat("/g")["ino"], 0, b"12345")
        twice(Msg.SETATTR, {"ino": c.stat("/g")["ino"], "size": 2, "mode": None, "mtime_ns": None, "atime_ns": None}, 4)
        twice(Msg.UNLINK, {"parent": 1, "name": "old"}, 5)
        c.create("/old")  # made again after the unlink: the retried unlink must not remove it
        twice(Msg.RMDIR, {"parent": 1, "name": "d"}, 6)
        conn.close()
        assert sorted(name for name, _, _ in c.listdir("/")) == ["f", "g", "old"]
        assert c.stat("/g")["size"] == 2


@contextmanager
def answer_losing_proxy(target: str) -> Iterator[tuple[str, list[int]]]:
    """A TCP proxy to `target` that cuts the connection instead of passing every other answer to a change.

    The change is done on the master; its answer is lost on the way, as
    when a connection breaks or a master dies right after committing.
    Yields the proxy's address and the list of answers it dropped.
    """
    host, port = parse_addr(target)
    dropped: list[int] = []
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))
    addr = f"127.0.0.1:{listener.getsockname()[1]}"

    async def pipe_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    answers = [0]  # over all connections: a retry comes on a new one

    async def pipe_down(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            prefix = await reader.readexactly(PREFIX_SIZE)
            frame = unpack_prefix(prefix)
            rest = await reader.readexactly(frame.header_len + frame.payload_len)
            if frame.type in EXACTLY_ONCE:
                answers[0] += 1
                if answers[0] % 2 == 1:
                    dropped.append(frame.type)
                    writer.transport.abort()
                    return
            writer.write(prefix + rest)
            await writer.drain()

    async def serve(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        # Both sockets are closed however this ends, a stop while connecting included: a transport
        # left open is collected later, with its loop closed, and fails whichever test runs then.
        server_w: asyncio.StreamWriter | None = None
        try:
            server_r, server_w = await asyncio.open_connection(host, port)
            tasks = [asyncio.ensure_future(pipe_up(client_r, server_w)),
                     asyncio.ensure_future(pipe_down(server_r, client_w))]
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            client_w.transport.abort()
            if server_w is not None:
                server_w.transport.abort()

    stop: list[asyncio.Event] = []

    async def main() -> None:
        stop.append(asyncio.Event())
        connections: set[asyncio.Task[None]] = set()

        def accepted(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            task = asyncio.ensure_future(serve(r, w))
            connections.add(task)
            task.add_done_callback(connections.discard)

        server = await asyncio.start_server(accepted, sock=listener)
        ready.set()
        await stop[0].wait()
        server.close()
        for task in list(connections):
            task.cancel()
        await asyncio.gather(*connections, return_exceptions=True)

    thread = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield addr, dropped
    finally:
        loop.call_soon_threadsafe(stop[0].set)
        thread.join(10)
        loop.close()


def test_changes_whose_answers_are_lost_are_retried_and_act_once(make_cluster) -> None:
    cluster = make_cluster(n_cs=2)
    config = load_client_config(cluster.name)
    with answer_losing_proxy(config.mds[0]) as (addr, dropped), \
            SyncClient(dataclasses.replace(config, mds=(addr,))) as c:
        c.mkdir("/d")
        f = c.create("/d/f", exclusive=True)
        c.write(f["ino"], 0, b"0123456789")
        c.truncate(f["ino"], 4)
        c.rename("/d/f", "/d/g")
        c.create("/d/h", exclusive=True)
        c.unlink("/d/h")
        c.mkdir("/e")
        c.rmdir("/e")
        c.run(c.client.symlink("d/g", "/link"))
        assert len(dropped) >= 5, dropped  # about every other change lost its first answer
        assert sorted(name for name, _, _ in c.listdir("/")) == ["d", "link"]
        assert [name for name, _, _ in c.listdir("/d")] == ["g"]
        assert c.read(c.stat("/d/g")["ino"], 0, 100) == b"0123"


def test_changes_retried_through_frozen_and_killed_masters_never_fail_falsely(make_cluster) -> None:
    cluster = make_cluster(n_cs=2, n_mds=3)
    errors: list[BaseException] = []
    done: list[int] = []
    stop = threading.Event()

    def work() -> None:
        with cluster.client() as w:
            w.client.mds.call_timeout = 1.5  # time out on a frozen master, and retry
            w.client.mds.retry_for = 60.0
            try:
                for i in range(100_000):
                    if stop.is_set():
                        return
                    w.mkdir(f"/d{i}")
                    w.create(f"/d{i}/f", exclusive=True)
                    w.rename(f"/d{i}/f", f"/d{i}/g")
                    w.truncate(w.stat(f"/d{i}/g")["ino"], 10)
                    w.unlink(f"/d{i}/g")
                    w.rmdir(f"/d{i}")
                    w.mkdir(f"/kept{i}")
                    done.append(i)
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                errors.append(exc)

    worker = threading.Thread(target=work)
    worker.start()
    try:
        with cluster.client() as c:
            c.client.mds.retry_for = 60.0
            for round_ in range(3):
                before = len(done)
                deadline = time.monotonic() + 60
                while len(done) < before + 3 and time.monotonic() < deadline and not errors:
                    time.sleep(0.05)
                master = master_id(c)
                proc = cluster.find("mds", master)
                if round_ < 2:
                    os.kill(proc.pid, signal.SIGSTOP)
                    time.sleep(3)
                    os.kill(proc.pid, signal.SIGCONT)
                else:
                    cluster.kill("mds", master)
            before = len(done)
            deadline = time.monotonic() + 60
            while len(done) < before + 3 and time.monotonic() < deadline and not errors:
                time.sleep(0.05)
    finally:
        stop.set()
        worker.join(120)
    assert not errors, errors
    assert len(done) >= 6
    with cluster.client() as c:
        c.client.mds.retry_for = 60.0
        names = {name for name, _, _ in c.listdir("/")}
        last = done[-1]
        assert {f"kept{i}" for i in done} <= names
        assert not any(n.startswith("d") for n in names if n != f"d{last + 1}"), names
        try:
            c.mkdir(f"/kept{last}")
        except Exists:
            pass
        else:
            raise AssertionError("a directory that was acknowledged is missing")
