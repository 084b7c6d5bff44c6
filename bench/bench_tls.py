"""What TLS costs an RPC connection: 4 KiB round trips and 1 MiB payloads over loopback, with and without TLS.

    .venv/bin/python bench/bench_tls.py [--seconds 1.5] [--loop uvloop|asyncio|both]

The server is an `RpcServer` in a child process (as a chunk server is), the
client a `connect()`ed `Connection` in this one, each on its own core if the
machine has two.  Measured for each loop and each mode (plain TCP, TLS 1.3
with the cluster CA's certificates both ways):

- 4 KiB write round trips, one at a time (latency) and 32 in flight (rate);
- 1 MiB writes (client to server) and reads (server to client), 4 in flight (MB/s);
- connect + handshake (TCP, TLS, the secret) one after another (per second).

Prints a Markdown table: the best of `--repeat` alternating runs of each.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from chunkfs.common import certs  # noqa: E402
from chunkfs.protocol.messages import Msg  # noqa: E402
from chunkfs.protocol.rpc import Connection, Credentials, Reply, RpcServer, connect  # noqa: E402
from chunkfs.protocol.tls import load_tls  # noqa: E402

MiB = 1 << 20
SECRET = bytes(range(32))  # fixed: the spawned server process imports this module again
CLUSTER = "bench"
ONE_MIB = bytes(MiB)


def creds(base: Path | None, name: str, role: str) -> Credentials:
    tls = load_tls(base / name / "tls", CLUSTER) if base is not None else None
    return Credentials(CLUSTER, SECRET, role, name, tls=tls)


async def handler(conn: Connection, msg: Msg, header: dict[str, Any], payload: bytes) -> Reply:
    if msg == Msg.CS_READ:
        return {}, ONE_MIB[:header["length"]]
    return {}, b""


def serve(base: str | None, loop_kind: str, port_out: Any, stop: Any) -> None:
    async def main() -> None:
        srv = RpcServer(creds(Path(base) if base else None, "server", "cs"), handler)
        await srv.listen("127.0.0.1:0")
        port_out.put(srv.port)
        await asyncio.to_thread(stop.wait)
        await srv.close()

    run(loop_kind, main())


def run(loop_kind: str, coro: Any) -> Any:
    if loop_kind == "uvloop":
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)


async def measure(addr: str, c: Credentials, seconds: float) -> dict[str, float]:
    out: dict[str, float] = {}
    conn = await connect(addr, c, timeout=10)
    write = {"chunk_id": 1, "version": 1, "offset": 0, "chain": [], "sync": False}
    small = os.urandom(4096)

    async def timed(depth: int, one: Any) -> tuple[int, float]:
        done = 0
        start = time.perf_counter()
        deadline = start + seconds

        async def lane() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                await one()
                done += 1

        await asyncio.gather(*(lane() for _ in range(depth)))
        return done, time.perf_counter() - start

    n, t = await timed(1, lambda: conn.call(Msg.CS_WRITE, write, small, timeout=10))
    out["4k_rtt_us"] = t / n * 1e6
    n, t = await timed(32, lambda: conn.call(Msg.CS_WRITE, write, small, timeout=10))
    out["4k_ops"] = n / t
    n, t = await timed(4, lambda: conn.call(Msg.CS_WRITE, write, ONE_MIB, timeout=10))
    out["1m_write_mbs"] = n * MiB / t / 1e6
    read = {"chunk_id": 1, "version": 1, "offset": 0, "length": MiB}
    n, t = await timed(4, lambda: conn.call(Msg.CS_READ, read, timeout=10))
    out["1m_read_mbs"] = n * MiB / t / 1e6
    conn.close()
    await conn.wait_lost(2)

    async def one_connect() -> None:
        new = await connect(addr, c, timeout=10)
        new.close()
        await new.wait_lost(2)

    n, t = await timed(1, one_connect)
    out["connects_s"] = n / t
    return out


def bench(base: Path | None, loop_kind: str, seconds: float) -> dict[str, float]:
    ctx = multiprocessing.get_context("spawn")
    port_q, stop = ctx.Queue(), ctx.Event()
    child = ctx.Process(target=serve, args=(str(base) if base else None, loop_kind, port_q, stop), daemon=True)
    child.start()
    try:
        port = port_q.get(timeout=30)
        return run(loop_kind, measure(f"127.0.0.1:{port}", creds(base, "client", "client"), seconds))
    finally:
        stop.set()
        child.join(10)
        if child.is_alive():
            child.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="length of each measurement")
    parser.add_argument("--loop", choices=["uvloop", "asyncio", "both"], default="both")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of each mode, alternating; the best of each is kept (shared machines are noisy)")
    args = parser.parse_args()
    loops = ["uvloop", "asyncio"] if args.loop == "both" else [args.loop]
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        certs.make_ca(base / "ca", CLUSTER, str(uuid.uuid4()))
        for name in ("server", "client"):
            certs.issue(base / "ca", base / name / "tls", name)
        print("| loop | mode | 4 KiB round trip, 1 in flight | 4 KiB writes/s, 32 in flight "
              "| 1 MiB writes, MB/s | 1 MiB reads, MB/s | connects/s |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for loop_kind in loops:
            rows: dict[str, dict[str, float]] = {}
            for _ in range(args.repeat):
                for mode, b in (("plain", None), ("TLS", base)):
                    r = bench(b, loop_kind, args.seconds)
                    best = rows.setdefault(mode, r)
                    for key, value in r.items():
                        best[key] = min(best[key], value) if key == "4k_rtt_us" else max(best[key], value)
            for mode in ("plain", "TLS"):
                r = rows[mode]
                print(f"| {loop_kind} | {mode} | {r['4k_rtt_us']:.0f} µs | {r['4k_ops']:,.0f} | "
                      f"{r['1m_write_mbs']:,.0f} | {r['1m_read_mbs']:,.0f} | {r['connects_s']:,.0f} |", flush=True)
            p, t = rows["plain"], rows["TLS"]
            print(f"| {loop_kind} | TLS / plain | {t['4k_rtt_us'] / p['4k_rtt_us']:.2f}× | "
                  f"{t['4k_ops'] / p['4k_ops']:.2f}× | {t['1m_write_mbs'] / p['1m_write_mbs']:.2f}× | "
                  f"{t['1m_read_mbs'] / p['1m_read_mbs']:.2f}× | {t['connects_s'] / p['connects_s']:.2f}× |")


if __name__ == "__main__":
    main()
