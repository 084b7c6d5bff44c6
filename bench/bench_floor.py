#!/usr/bin/env python3
"""The floor this machine puts under any Python design bound by ChunkFS's rules, measured without ChunkFS.

    .venv/bin/python bench/bench_floor.py [--seconds 5] [--dir DIR]

Issues 11 and 15 ask for rows at or above half of MooseFS (metadata) and 0.7x
(data).  Before cutting more out of ChunkFS, this asks what is left when
there is nothing to cut: skeletons that do only what the rules require, each
role its own process talking TCP on 127.0.0.1 with uvloop (as ChunkFS's
daemons do), with a 4-byte length per message and no msgpack, no SQLite, no
checksums, no FUSE:

* ``commit``: what one acknowledged metadata change costs.  A client sends a
  200-byte change to a leader; the leader sends it to one follower, appends
  it to its own log and ``fdatasync``s it (on its event loop, after the send,
  as ChunkFS's master does); the follower appends, syncs and acknowledges;
  the leader answers once both have it on disk (a majority of three).  The
  logs are written ahead with zeros, as ChunkFS's are.  One client at a
  time, then four at once (the leader sends what arrived in one turn of its
  loop as one batch, with several batches in flight).
* ``commit in one round trip``: what a metadata change would cost if the client
  sent it to the leader and to a second server at once and each synced it
  (a CURP-style witness: Park and Ousterhout, NSDI 2019), instead of the
  leader sending it on: a measure of the second hop, not a design ChunkFS has.
* ``write``: what one acknowledged 4 KiB write costs.  A client sends 4 KiB
  to three servers at once; each ``pwrite``s it into a 64 MiB file (no sync:
  a write before ``fsync``) and answers; the client waits for all three.
  One write at a time (fio's QD1).

Each figure is an upper bound of the ChunkFS row it matches (create and
unlink through the mount add the kernel's FUSE requests and the mount; a
4 KiB O_DIRECT write adds FUSE too), for a Python design that keeps the
rules.  Run it on a quiet machine: it measures latency.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_LEN = struct.Struct("!I")
_ID = struct.Struct("!Q")
#: Bytes of one metadata change in the leader's and follower's logs (a create's Raft entry is about this).
CHANGE_BYTES = 200
#: The data of one small write.
WRITE_BYTES = 4096
#: Size of each write server's file, and of each log written ahead with zeros.
FILE_BYTES = 64 << 20


def _loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # the figure is then asyncio's; say so
        print("uvloop is not installed: measuring asyncio's own loop", file=sys.stderr)
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class Framed(asyncio.Protocol):
    """Length-prefixed messages; `on_message(self, body)` for each."""

    def __init__(self, on_message) -> None:
        self.on_message = on_message
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= 4:
            (n,) = _LEN.unpack_from(self.buf)
            if len(self.buf) < 4 + n:
                return
            body = bytes(self.buf[4:4 + n])
            del self.buf[:4 + n]
            self.on_message(self, body)

    def send(self, body: bytes) -> None:
        assert self.transport is not None
        self.transport.write(_LEN.pack(len(body)) + body)


class AppendLog:
    """A log written ahead with zeros; `append` writes a record and syncs it."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.pwrite(self.fd, bytes(FILE_BYTES), 0)
        os.fsync(self.fd)
        self.end = 0

    def append(self, record: bytes) -> None:
        os.pwrite(self.fd, record, self.end)
        self.end = (self.end + len(record)) % (FILE_BYTES - len(record))
        os.fdatasync(self.fd)


# -- roles, each run in its own process ------------------------------------------------------------

async def follower(port: int, path: Path) -> None:
    log = AppendLog(path)

    def on_batch(conn: Framed, body: bytes) -> None:
        log.append(body[_ID.size:])
        conn.send(body[:_ID.size])  # the batch's number: "on my disk"

    server = await asyncio.get_running_loop().create_server(lambda: Framed(on_batch), "127.0.0.1", port)
    await server.serve_forever()


async def leader(port: int, follower_port: int, path: Path) -> None:
    loop = asyncio.get_running_loop()
    log = AppendLog(path)
    pending: list[tuple[Framed, bytes]] = []  # (client, request id) not yet sent
    in_flight: dict[int, list[tuple[Framed, bytes]]] = {}  # batch -> its requests, until the follower has it
    next_batch = 0

    def on_ack(_conn: Framed, body: bytes) -> None:
        (batch,) = _ID.unpack(body)
        for client, req_id in in_flight.pop(batch):
            client.send(req_id)

    _, to_follower = await loop.create_connection(lambda: Framed(on_ack), "127.0.0.1", follower_port)

    def flush() -> None:
        nonlocal next_batch
        batch, requests = next_batch, list(pending)
        next_batch += 1
        pending.clear()
        in_flight[batch] = requests
        record = b"".join(bytes(CHANGE_BYTES) for _ in requests)
        to_follower.send(_ID.pack(batch) + record)
        log.append(record)  # the leader's own sync, beside the follower's; acks read after it

    def on_request(client: Framed, body: bytes) -> None:
        if not pending:
            loop.call_soon(flush)  # everything that arrives in this turn of the loop goes as one batch
        pending.append((client, body[:_ID.size]))

    server = await loop.create_server(lambda: Framed(on_request), "127.0.0.1", port)
    await server.serve_forever()


async def write_server(port: int, path: Path) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    os.ftruncate(fd, FILE_BYTES)

    def on_write(conn: Framed, body: bytes) -> None:
        (offset,) = _ID.unpack_from(body, _ID.size)
        os.pwrite(fd, memoryview(body)[2 * _ID.size:], offset)
        conn.send(body[:_ID.size])

    server = await asyncio.get_running_loop().create_server(lambda: Framed(on_write), "127.0.0.1", port)
    await server.serve_forever()


class Caller:
    """One connection with requests in flight matched by id."""

    def __init__(self) -> None:
        self.waiting: dict[bytes, asyncio.Future[None]] = {}
        self.next_id = 0
        self.conn: Framed | None = None

    async def connect(self, port: int) -> None:
        _, self.conn = await asyncio.get_running_loop().create_connection(
            lambda: Framed(lambda _c, body: self.waiting.pop(body).set_result(None)), "127.0.0.1", port)

    def call(self, payload: bytes) -> asyncio.Future[None]:
        req_id = _ID.pack(self.next_id)
        self.next_id += 1
        future = asyncio.get_running_loop().create_future()
        self.waiting[req_id] = future
        assert self.conn is not None
        self.conn.send(req_id + payload)
        return future


async def commit_client(port: int, clients: int, seconds: float) -> None:
    callers = [Caller() for _ in range(clients)]
    for caller in callers:
        await caller.connect(port)
    change = bytes(CHANGE_BYTES)
    done = 0
    end = time.perf_counter() + seconds

    async def one(caller: Caller) -> None:
        nonlocal done
        while time.perf_counter() < end:
            await caller.call(change)
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(one(c) for c in callers))
    print(f"{done} {time.perf_counter() - start:.6f}")


async def at_once_client(ports: list[int], seconds: float, kind: str) -> None:
    """One request at a time, sent to every server at once, done when each has answered: a change
    (`kind` "sync": each server syncs it) or a 4 KiB write at a random offset ("write")."""
    callers = [Caller() for _ in ports]
    for caller, port in zip(callers, ports, strict=True):
        await caller.connect(port)
    change, data = bytes(CHANGE_BYTES), os.urandom(WRITE_BYTES)
    blocks = FILE_BYTES // WRITE_BYTES
    done, seed = 0, 1
    start = time.perf_counter()
    end = start + seconds
    while time.perf_counter() < end:
        if kind == "sync":
            body = change
        else:
            seed = (seed * 1103515245 + 12345) % (1 << 31)
            body = _ID.pack((seed % blocks) * WRITE_BYTES) + data
        await asyncio.gather(*(c.call(body) for c in callers))
        done += 1
    print(f"{done} {time.perf_counter() - start:.6f}")


# -- the conductor ---------------------------------------------------------------------------------

def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _free_ports(n: int) -> list[int]:
    import socket
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "--role", *args])


def _wait_listening(port: int) -> None:
    import socket
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"bench_floor: nothing listens on 127.0.0.1:{port} after 10 s; see the errors above")


def _measure(servers: dict[str, subprocess.Popen], client_args: list[str]) -> tuple[float, str]:
    """Run the client to its end: ops/s, and each server's CPU µs per op."""
    hz = os.sysconf("SC_CLK_TCK")
    before = {name: _cpu_ticks(p.pid) for name, p in servers.items()}
    client = subprocess.Popen([sys.executable, __file__, "--role", *client_args], stdout=subprocess.PIPE, text=True)
    out, _ = client.communicate(timeout=120)
    ops, seconds = out.split()
    cpu = ", ".join(f"{name} {(_cpu_ticks(p.pid) - before[name]) / hz / int(ops) * 1e6:,.0f}"
                    for name, p in servers.items())
    return int(ops) / float(seconds), cpu


def _stop(servers: dict[str, subprocess.Popen]) -> None:
    for p in servers.values():
        p.terminate()
    for p in servers.values():
        p.wait(timeout=10)


def conduct(seconds: float, folder: Path) -> None:
    print(f"# The floor under a Python design with ChunkFS's rules ({seconds:g} s per row; {folder})\n")
    print("| skeleton | ops/s | µs per op | server CPU µs per op |")
    print("| --- | ---: | ---: | --- |")
    leader_port, follower_port = _free_ports(2)
    servers = {"follower": _spawn("follower", str(follower_port), str(folder / "follower.log"))}
    _wait_listening(follower_port)
    servers["leader"] = _spawn("leader", str(leader_port), str(follower_port), str(folder / "leader.log"))
    _wait_listening(leader_port)
    try:
        for clients in (1, 4):
            ops_s, cpu = _measure(servers, ["commit-client", str(leader_port), str(clients), str(seconds)])
            print(f"| commit, {clients} client{'s' if clients > 1 else ''} | {ops_s:,.0f} | "
                  f"{1e6 / ops_s * clients:,.0f} | {cpu} |")
    finally:
        _stop(servers)
    _at_once_row(seconds, folder, "commit in one round trip: 1 client, to 2 servers at once, each syncs",
                 "follower", "witness", 2, "sync-client")
    _at_once_row(seconds, folder, "4 KiB write to 3 servers at once, QD1", "write-server", "chunk", 3, "write-client")


def _at_once_row(seconds: float, folder: Path, label: str, role: str, file_prefix: str, n: int,
                 client: str) -> None:
    """One row: `n` servers of `role`, one client sending each request to all of them at once."""
    ports = _free_ports(n)
    servers = {f"server {i + 1}": _spawn(role, str(port), str(folder / f"{file_prefix}{port}"))
               for i, port in enumerate(ports)}
    try:
        for port in ports:
            _wait_listening(port)
        ops_s, cpu = _measure(servers, [client, ",".join(map(str, ports)), str(seconds)])
        print(f"| {label} | {ops_s:,.0f} | {1e6 / ops_s:,.0f} | {cpu} |")
    finally:
        _stop(servers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="how long each row runs (default 5)")
    parser.add_argument("--dir", type=Path, help="where the logs and files go (default: a new temporary folder)")
    parser.add_argument("--role", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.role:
        if args.dir:
            args.dir.mkdir(parents=True, exist_ok=True)
            conduct(args.seconds, args.dir)
        else:
            with tempfile.TemporaryDirectory(prefix="chunkfs-floor-", dir=os.getcwd()) as folder:
                conduct(args.seconds, Path(folder))
        return
    role, *rest = args.role
    roles = {
        "follower": lambda: follower(int(rest[0]), Path(rest[1])),
        "leader": lambda: leader(int(rest[0]), int(rest[1]), Path(rest[2])),
        "write-server": lambda: write_server(int(rest[0]), Path(rest[1])),
        "commit-client": lambda: commit_client(int(rest[0]), int(rest[1]), float(rest[2])),
        "write-client": lambda: at_once_client([int(p) for p in rest[0].split(",")], float(rest[1]), "write"),
        "sync-client": lambda: at_once_client([int(p) for p in rest[0].split(",")], float(rest[1]), "sync"),
    }
    loop = _loop()
    try:
        loop.run_until_complete(roles[role]())
    finally:
        loop.close()


if __name__ == "__main__":
    main()
