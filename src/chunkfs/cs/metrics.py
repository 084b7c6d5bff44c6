"""What a chunk server measures, and how it shows it: ``/metrics`` and its heartbeats.

The request path touches only `CsStats.read` / `CsStats.write` (`IoCounters`:
a few additions per request); space and replica counts are read when a
heartbeat is sent or ``/metrics`` is scraped.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from chunkfs.common.http import HttpServer
from chunkfs.common.loop_lag import LoopLagMonitor
from chunkfs.common.metrics import (
    CONTENT_TYPE,
    IoCounters,
    ProcSampler,
    RateTracker,
    exposition,
    gauge,
    http_url,
    io_dict,
    io_families,
    make_registry,
    step_family,
)

if TYPE_CHECKING:
    from chunkfs.cs.server import ChunkServer

logger = logging.getLogger(__name__)


class CsStats:
    def __init__(self, server: ChunkServer) -> None:
        self.server = server
        self.read = IoCounters()
        self.write = IoCounters()
        #: Writes refused because the data directory's disk was full, or failed with a disk error.
        self.disk_full = 0
        self.disk_errors = 0
        self.proc = ProcSampler()
        self._rates = RateTracker()
        self.registry = make_registry(self._families)
        self.http: HttpServer | None = None
        #: Event-loop lag and stall warnings, with or without a metrics listener.
        self.loop_lag = LoopLagMonitor(f"CS {server.node.addr}")

    @property
    def url(self) -> str:
        node = self.server.node
        return http_url(node.metrics_addr, node.addr, "/metrics") if node.metrics_addr else ""

    async def start(self) -> None:
        self.loop_lag.start()
        addr = self.server.node.metrics_addr
        if not addr:
            return
        self.http = HttpServer({"/metrics": self._metrics})
        try:
            await self.http.listen(addr)
        except OSError as exc:
            from chunkfs.common.errors import ConfigError

            raise ConfigError(f"option 'metrics_addr': cannot listen on {addr}: {exc.strerror or exc}") from None
        logger.info("metrics at %s", self.url)

    async def stop(self) -> None:
        await self.loop_lag.stop()
        if self.http is not None:
            await self.http.close()

    async def _metrics(self) -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE, exposition(self.registry)

    def heartbeat_fields(self) -> dict[str, Any]:
        """Optional heartbeat fields: recent I/O, process figures and the metrics URL."""
        return {"io": io_dict(self.read, self.write, self._rates), "proc": self.proc.sample(), "metrics": self.url}

    def _families(self) -> Iterable[Metric]:
        server = self.server
        total, free = server.store.space()
        labels = {"cs_id": str(server.link.cs_id), "cluster": server.node.cluster.name}
        info = GaugeMetricFamily("chunkfs_cs_info", "This chunk server (value 1)",
                                 labels=["cs_id", "cluster", "addr", "host"])
        info.add_metric([labels["cs_id"], labels["cluster"], server.node.addr, server.node.host], 1)
        return [
            info,
            *io_families("chunkfs_cs", {"read": self.read, "write": self.write}),
            gauge("chunkfs_cs_space_total_bytes", "Size of the file system holding the data directory", total),
            gauge("chunkfs_cs_space_free_bytes", "Free space there (as seen by non-root)", free),
            gauge("chunkfs_cs_replicas", "Chunk replicas held", server.store.replica_count()),
            gauge("chunkfs_cs_requests_in_flight", "Requests being served now (queue depth)", server.in_flight),
            gauge("chunkfs_cs_registered", "1 while registered with the master", int(server.link.registered.is_set())),
            CounterMetricFamily("chunkfs_cs_disk_full", "Writes refused: the data directory's disk was full",
                                value=self.disk_full),
            CounterMetricFamily("chunkfs_cs_disk_errors", "Reads or writes that failed with a disk error",
                                value=self.disk_errors),
            step_family("chunkfs_cs_step_seconds"),
            *self.loop_lag.families(),
        ]
