"""What the master adds to ``CLUSTER_STAT`` for operators: load, I/O, processes, clients, URLs.

All of it is soft state, kept beside the server's: the chunk servers' I/O and
process figures arrive with their heartbeats; the other metadata servers'
process figures and metrics URLs are fetched by the master with ``PING`` every
`PROBE_INTERVAL` (a follower answers PING itself).  Nothing here is replicated
or durable: a new master knows it all again within a heartbeat or a probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from chunkfs.common.errors import ChunkFSError
from chunkfs.common.metrics import ProcSampler, http_url
from chunkfs.protocol.messages import Msg
from chunkfs.protocol.rpc import Connection, connect

if TYPE_CHECKING:
    from chunkfs.mds.server import MetadataServer

logger = logging.getLogger(__name__)

PROBE_INTERVAL = 2.0
PROBE_TIMEOUT = 1.0
#: Keys (and their types) kept from a heartbeat's optional dicts; anything else is dropped.
_IO_KEYS = {"read_bytes": int, "write_bytes": int, "read_ops": int, "write_ops": int, "errors": int,
            "read_bps": int, "write_bps": int, "read_iops": float, "write_iops": float,
            "read_latency": float, "write_latency": float}
_PROC_KEYS = {"cpu": float, "rss": int, "uptime": float, "pid": int}
_URL_MAX = 200


def _clean(value: Any, keys: dict[str, type]) -> dict[str, Any]:
    """Keep known numeric fields of a peer-supplied dict (hostile input: shown, never trusted)."""
    if not isinstance(value, dict):
        return {}
    out: dict[str, Any] = {}
    for key, kind in keys.items():
        v = value.get(key)
        if isinstance(v, int | float) and not isinstance(v, bool):
            out[key] = kind(v)
    return out


def _clean_url(value: Any) -> str:
    return value if isinstance(value, str) and value.startswith("http://") and len(value) <= _URL_MAX else ""


class ClusterView:
    def __init__(self, server: MetadataServer) -> None:
        self.server = server
        self.proc = ProcSampler()
        #: cs_id -> {"io", "proc", "metrics", "load"} from its last heartbeat.
        self.cs: dict[int, dict[str, Any]] = {}
        #: MDS id -> {"proc", "metrics", "seen"} from the last probe.
        self.mds: dict[int, dict[str, Any]] = {}
        self._conns: dict[int, Connection] = {}

    # -- this MDS ------------------------------------------------------------------

    def metrics_url(self) -> str:
        node = self.server.node
        return http_url(node.metrics_addr, node.addr, "/metrics") if node.metrics_addr else ""

    def dashboard_url(self) -> str:
        node = self.server.node
        return http_url(node.metrics_addr, node.addr, "/") if node.metrics_addr else ""

    def ping_fields(self) -> dict[str, Any]:
        return {"proc": self.proc.sample(), "metrics": self.metrics_url()}

    # -- chunk servers -------------------------------------------------------------

    def note_heartbeat(self, cs_id: int, h: dict[str, Any]) -> None:
        self.cs[cs_id] = {"io": _clean(h.get("io"), _IO_KEYS), "proc": _clean(h.get("proc"), _PROC_KEYS),
                          "metrics": _clean_url(h.get("metrics"))}

    # -- other metadata servers ------------------------------------------------------

    async def run(self) -> None:
        """On the master, keep the other members' process figures fresh."""
        while True:
            await asyncio.sleep(PROBE_INTERVAL)
            if not self.server.raft.is_leader():
                continue
            me = self.server.node.node_id
            peers = {i: a for i, a in self.server.raft.addrs.items() if i != me and i in self.server.raft.voters()}
            await asyncio.gather(*(self._probe(i, a) for i, a in peers.items()))
            for gone in set(self._conns) - set(peers):
                self._conns.pop(gone).close()

    async def _probe(self, mds_id: int, addr: str) -> None:
        try:
            conn = self._conns.get(mds_id)
            if conn is None or conn.closed:
                conn = await connect(addr, self.server.creds, timeout=PROBE_TIMEOUT)
                self._conns[mds_id] = conn
            reply, _ = await conn.call(Msg.PING, {}, timeout=PROBE_TIMEOUT)
        except ChunkFSError as exc:
            logger.debug("probe of MDS#%d at %s: %s", mds_id, addr, exc)
            self.mds.pop(mds_id, None)
            bad = self._conns.pop(mds_id, None)
            if bad is not None:
                bad.close()
            return
        self.mds[mds_id] = {"proc": _clean(reply.get("proc"), _PROC_KEYS), "metrics": _clean_url(reply.get("metrics")),
                            "seen": time.monotonic()}

    def close(self) -> None:
        for conn in self._conns.values():
            with contextlib.suppress(Exception):
                conn.close()
        self._conns.clear()

    # -- the stat ----------------------------------------------------------------------

    def extend(self, stat: dict[str, Any]) -> dict[str, Any]:
        """Add the operator's view to a ``cluster_stat()`` dict (new keys only)."""
        server = self.server
        me = server.node.node_id
        metrics: list[dict[str, Any]] = []
        for m in stat["mds"]:
            if m["id"] == me:
                extra = {"proc": self.proc.sample(), "metrics": self.metrics_url()}
            else:
                known = self.mds.get(m["id"]) if m["role"] != "offline" else None
                extra = {"proc": known["proc"], "metrics": known["metrics"]} if known else {"proc": {}, "metrics": ""}
            m.update(extra)
            if extra["metrics"]:
                metrics.append({"role": "mds", "id": m["id"], "url": extra["metrics"]})
        io = {"read_bps": 0, "write_bps": 0, "read_iops": 0.0, "write_iops": 0.0}
        now = server.awake()
        for s in stat["cs"]:
            live = server.live.get(s["id"])
            extra = self.cs.get(s["id"], {}) if live else {}
            s["io"] = extra.get("io", {})
            s["proc"] = extra.get("proc", {})
            s["metrics"] = extra.get("metrics", "")
            s["load"] = live.load if live else 0
            s["last_seen"] = round(now - live.last_seen, 1) if live else None
            for key in io:
                io[key] += s["io"].get(key, 0)
            if s["metrics"]:
                metrics.append({"role": "cs", "id": s["id"], "url": s["metrics"]})
        chunks = stat["chunks"]
        offline_cs = sum(1 for s in stat["cs"] if s["status"] != "active")
        if any(chunks.get(state) for state in ("offline", "urgent", "blocked")):
            status = "error"
        elif (any(n for state, n in chunks.items() if state != "healthy") or offline_cs
              or any(m["role"] == "offline" for m in stat["mds"])):
            status = "degraded"
        else:
            status = "healthy"
        clients = sorted(
            (c.peer_name for c in server.rpc.connections if c.peer_role == "client"),
        )
        stat.update({
            "status": status,
            "io": {k: round(v, 1) for k, v in io.items()},
            "clients": [{"name": name} for name in clients],
            "metrics": metrics,
            "dashboard": self.dashboard_url(),
            "events_seq": server.store.last_event_seq(),
        })
        return stat
