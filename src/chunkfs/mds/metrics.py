"""What a metadata server measures, and its HTTP listener (``/metrics``, and the dashboard).

Per request the server adds to one preallocated `IoCounters` per message type
(`requests`); Raft figures and, on the master, cluster-wide chunk health and
space are computed when ``/metrics`` is scraped.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from chunkfs.common.errors import ConfigError
from chunkfs.common.http import HttpServer
from chunkfs.common.loop_lag import LoopLagMonitor
from chunkfs.common.metrics import CONTENT_TYPE, IoCounters, exposition, gauge, make_registry, step_family
from chunkfs.mds import dashboard
from chunkfs.protocol.messages import Msg

if TYPE_CHECKING:
    from chunkfs.mds.server import MetadataServer

logger = logging.getLogger(__name__)


class MdsMetrics:
    def __init__(self, server: MetadataServer) -> None:
        self.server = server
        self.requests: dict[Msg, IoCounters] = {msg: IoCounters() for msg in Msg}
        self.registry = make_registry(self._families)
        self.http: HttpServer | None = None
        #: Event-loop lag and stall warnings, with or without a metrics listener.
        self.loop_lag = LoopLagMonitor(f"MDS#{server.node.node_id}")

    async def start(self) -> None:
        self.loop_lag.start()
        addr = self.server.node.metrics_addr
        if not addr:
            return
        self.http = HttpServer({
            "/metrics": self._metrics,
            "/": dashboard.page,
            "/api/stat": lambda: dashboard.api_stat(self.server),
        })
        try:
            await self.http.listen(addr)
        except OSError as exc:
            raise ConfigError(f"option 'metrics_addr': cannot listen on {addr}: {exc.strerror or exc}") from None
        logger.info("metrics and dashboard at %s", self.server.view.dashboard_url())

    async def stop(self) -> None:
        await self.loop_lag.stop()
        if self.http is not None:
            await self.http.close()

    async def _metrics(self) -> tuple[int, str, bytes]:
        if self.server.raft.is_leader():
            await self.server.healing.settle()  # exact chunk counts, caught up in slices
        return 200, CONTENT_TYPE, exposition(self.registry)

    def _families(self) -> Iterable[Metric]:
        server = self.server
        core = server.raft.core
        node = server.node
        info = GaugeMetricFamily("chunkfs_mds_info", "This metadata server (value 1)",
                                 labels=["mds_id", "cluster", "addr"])
        info.add_metric([str(node.node_id), node.cluster.name, node.addr], 1)
        out: list[Metric] = [
            info,
            gauge("chunkfs_raft_term", "Current Raft term", core.term if core else 0),
            gauge("chunkfs_raft_commit_index", "Highest log index known committed", core.commit if core else 0),
            gauge("chunkfs_raft_applied_index", "Highest log index applied to the store", core.applied if core else 0),
            gauge("chunkfs_raft_is_leader", "1 on the master", int(server.raft.is_leader())),
        ]
        orphans = CounterMetricFamily("chunkfs_mds_orphans_freed", "Files freed at their last close, having been "
                                      "unlinked while open (each such freeing is a commit of its own)")
        orphans.add_metric([], server.reaper.freed)
        out.append(orphans)
        ops = CounterMetricFamily("chunkfs_mds_requests", "Requests served, by message type", labels=["msg"])
        latency = HistogramMetricFamily("chunkfs_mds_request_latency_seconds", "Time to answer a request",
                                        labels=["msg"])
        for msg, c in self.requests.items():
            if c.ops:
                ops.add_metric([msg.name], c.ops)
                latency.add_metric([msg.name], c.histogram_buckets(), c.lat_sum)
        out += [ops, latency, step_family("chunkfs_mds_step_seconds"), *self.loop_lag.families()]
        if server.raft.is_leader():
            stat = server.cluster_stat()
            chunks = GaugeMetricFamily("chunkfs_chunks", "Chunks by health", labels=["state"])
            for state, n in stat["chunks"].items():
                chunks.add_metric([state], n)
            servers = GaugeMetricFamily("chunkfs_chunk_servers", "Chunk servers by status", labels=["status"])
            by_status: dict[str, int] = {"active": 0, "offline": 0}
            for s in stat["cs"]:
                by_status[s["status"]] = by_status.get(s["status"], 0) + 1
            for status, n in by_status.items():
                servers.add_metric([status], n)
            out += [
                chunks, servers,
                gauge("chunkfs_cluster_space_total_bytes", "Space of all active chunk servers", stat["space"]["total"]),
                gauge("chunkfs_cluster_space_free_bytes", "Free space of all active chunk servers",
                      stat["space"]["free"]),
                gauge("chunkfs_clients_connected", "Clients connected to the master", len(stat["clients"])),
            ]
            healing = stat.get("healing") or {}
            if isinstance(healing, dict):  # the replication monitor's progress, when it reports one
                out += [
                    gauge("chunkfs_replication_active", "1 while chunks are being re-replicated",
                          int(bool(healing.get("active")))),
                    gauge("chunkfs_replication_queue", "Replica copies and moves still to do",
                          int(healing.get("left", 0)) if healing.get("active") else 0),
                ]
        return out
