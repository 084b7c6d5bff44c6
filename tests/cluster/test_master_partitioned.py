"""A master cut off from the other metadata servers stops acting as master; two masters never both commit.

Every MDS reaches every other through its own small TCP proxy on 127.0.0.1
(node.json ``peer_routes``), one per direction, so the test can drop all of
one server's Raft traffic while clients still reach it directly: the
partitioned ex-master must refuse them, a change sent to it must never become
visible, the majority must elect a new master and commit, and once the network
heals the ex-master must come back as a follower.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import threading
import time
from pathlib import Path

from chunkfs.client.client import SyncClient
from chunkfs.common.config import load_client_config
from chunkfs.common.errors import ChunkFSError, NotMaster, Timeout
from chunkfs.protocol.messages import Msg
from chunkfs.protocol.rpc import Connection, Credentials, connect
from chunkfs.testing.cluster import master_id


class _Proxy:
    """One direction between two MDS: forwards bytes, or loses all of them while cut."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.cut = False
        self.conns: list[tuple[asyncio.StreamWriter, ...]] = []
        self.addr = ""
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.addr = f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state = {"lost": self.cut}  # a stream that lost bytes never forwards again (its framing is broken)
        writers: tuple[asyncio.StreamWriter, ...] = (writer,)
        self.conns.append(writers)
        try:
            if state["lost"]:
                while await reader.read(65536):
                    pass  # a black hole: accepted, never answered
                return
            try:
                up_r, up_w = await asyncio.wait_for(asyncio.open_connection(*self.target), 2.0)
            except (OSError, TimeoutError):
                return
            writers = (writer, up_w)
            self.conns.append(writers)
            await asyncio.gather(self._pump(reader, up_w, state), self._pump(up_r, writer, state))
        finally:
            for w in writers:
                w.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: dict[str, bool]) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if self.cut:
                    state["lost"] = True
                if state["lost"]:
                    continue
                writer.write(data)
                await writer.drain()
        writer.close()

    def heal(self) -> None:
        # Connections that lost bytes are reset, as a long partition would; new ones go through.
        for writers in self.conns:
            for w in writers:
                w.close()
        self.conns.clear()
        self.cut = False


class ProxyNet:
    """The proxies between every ordered pair of MDS, on one event loop in a thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="proxy-net", daemon=True)
        self.thread.start()
        self.links: dict[tuple[int, int], _Proxy] = {}

    def _run(self, fn):  # noqa: ANN001, ANN202 - a callable run on the proxy loop
        async def call():  # noqa: ANN202
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(10)

    def add(self, src: int, dst: int, target: str) -> str:
        proxy = _Proxy(target)
        asyncio.run_coroutine_threadsafe(proxy.start(), self.loop).result(10)
        self.links[(src, dst)] = proxy
        return proxy.addr

    def isolate(self, node: int) -> None:
        def cut() -> None:
            for (src, dst), proxy in self.links.items():
                if node in (src, dst):
                    proxy.cut = True

        self._run(cut)

    def heal(self) -> None:
        self._run(lambda: [p.heal() for p in self.links.values()])

    def close(self) -> None:
        def stop() -> None:
            for p in self.links.values():
                p.heal()
                if p.server is not None:
                    p.server.close()

        with contextlib.suppress(Exception):
            self._run(stop)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def _direct(client: SyncClient, conn: Connection, msg: Msg, header: dict, timeout: float = 3.0) -> ChunkFSError | None:
    """Ask one MDS directly (no redirects followed); the error it answers, or None if it served it."""
    try:
        client.run(conn.call(msg, header, timeout=timeout))
    except ChunkFSError as exc:
        return exc
    return None


def test_partitioned_master_steps_down_and_rejoins_as_follower(make_cluster) -> None:
    cluster = make_cluster(n_cs=1, n_mds=3)
    mds = {p.id: p for p in cluster.processes if p.role == "mds"}
    net = ProxyNet()
    try:
        # Route every MDS's Raft traffic to every other through its own proxy, then restart the group.
        for i in mds:
            cluster.kill("mds", i, signal.SIGTERM)
        for i, proc in mds.items():
            node_file = Path(proc.dir) / "node.json"
            data = json.loads(node_file.read_text())
            data["peer_routes"] = {q.addr: net.add(i, j, q.addr) for j, q in mds.items() if j != i}
            node_file.write_text(json.dumps(data, indent=2))
        for i in mds:
            cluster.start("mds", i)
        cluster.wait_ready()

        config = load_client_config(cluster.name)
        creds = Credentials(cluster.name, config.secret, "client", "direct")
        with cluster.client() as c:
            c.client.mds.retry_for = 30.0
            c.mkdir("/before")
            old = master_id(c)
            direct = c.run(connect(mds[old].addr, creds))

            net.isolate(old)
            cut_at = time.monotonic()
            # A change sent straight to the cut-off master cannot commit: no answer, or a refusal.
            err = _direct(c, direct, Msg.MKDIR, {"parent": 1, "name": "split-brain", "mode": 0o755})
            assert isinstance(err, (Timeout, NotMaster)), err

            # It stops acting as master: within a few seconds even reads are refused (check-quorum).
            refused = None
            while time.monotonic() - cut_at < 20 and refused is None:
                err = _direct(c, direct, Msg.GETATTR, {"ino": 1})
                if isinstance(err, NotMaster):
                    refused = time.monotonic() - cut_at
                elif err is None:
                    time.sleep(0.2)
            assert refused is not None, "the partitioned master kept serving reads"
            print(f"partitioned MDS#{old} refused requests {refused:.2f}s after the cut")

            # The majority elects a new master and commits, even for a client that knows the old one first.
            c.client.mds.close()
            c.client.mds.addrs = [mds[old].addr] + [p.addr for i, p in mds.items() if i != old]
            c.mkdir("/during")
            new = master_id(c)
            assert new != old
            print(f"new master MDS#{new} committed {time.monotonic() - cut_at:.2f}s after the cut")
            err = _direct(c, direct, Msg.MKDIR, {"parent": 1, "name": "split-brain-2", "mode": 0o755})
            assert isinstance(err, (Timeout, NotMaster)), err

            net.heal()
            # The ex-master rejoins as a follower, catches up, and points clients at the new master.
            deadline = time.monotonic() + 30
            while True:
                stat = c.cluster_stat()
                roles = {m["id"]: m for m in stat["mds"]}
                master_commit = roles[new]["commit"]
                if roles[old]["role"] == "follower" and roles[old]["commit"] >= master_commit:
                    break
                assert time.monotonic() < deadline, f"MDS#{old} did not rejoin: {stat['mds']}"
                time.sleep(0.2)
            assert master_id(c) == new
            direct.close()
            direct = c.run(connect(mds[old].addr, creds))
            err = _direct(c, direct, Msg.GETATTR, {"ino": 1})
            assert isinstance(err, NotMaster) and err.context.get("leader") == mds[new].addr, err
            direct.close()

            names = {name for name, _, _ in c.listdir("/")}
            assert {"before", "during"} <= names
            assert not names & {"split-brain", "split-brain-2"}, names
    finally:
        net.close()
