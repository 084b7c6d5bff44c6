"""Hot-path counters, their Prometheus exposition, the HTTP listener, and the commented config samples."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from pathlib import Path

import pytest

from chunkfs.common.config import load_node, write_secret
from chunkfs.common.errors import ConfigError
from chunkfs.common.http import MAX_CONNECTIONS, HttpServer
from chunkfs.common.metrics import LATENCY_BOUNDS, IoCounters, exposition, io_families, make_registry

ETC = Path(__file__).resolve().parents[3] / "etc"


def test_latency_buckets_follow_prometheus_le() -> None:
    c = IoCounters()
    c.record(10, 0.0001)  # exactly on a bound: counted in that bucket (le)
    c.record(20, 0.003)
    c.record(30, 99.0)  # beyond every bound: only +Inf
    buckets = dict(c.histogram_buckets())
    assert buckets[repr(LATENCY_BOUNDS[0])] == 1
    assert buckets["0.005"] == 2 and buckets["10.0"] == 2 and buckets["+Inf"] == 3
    assert (c.ops, c.bytes) == (3, 60)


def test_exposition_has_prefixed_conventional_names() -> None:
    read, write = IoCounters(), IoCounters()
    write.record(4096, 0.001)
    text = exposition(make_registry(lambda: io_families("chunkfs_cs", {"read": read, "write": write}))).decode()
    assert 'chunkfs_cs_io_bytes_total{op="write"} 4096.0' in text
    assert 'chunkfs_cs_io_latency_seconds_count{op="write"} 1.0' in text
    assert "# TYPE chunkfs_cs_io_operations_total counter" in text


async def test_http_listener_serves_get_only() -> None:
    async def hello() -> tuple[int, str, bytes]:
        return 200, "text/plain", b"hi\n"

    server = HttpServer({"/x": hello})
    await server.listen("127.0.0.1:0")

    async def ask(request: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(request)
        data = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        return data

    try:
        ok = await ask(b"GET /x?a=1 HTTP/1.1\r\nHost: h\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200 ") and ok.endswith(b"\r\n\r\nhi\n")
        assert (await ask(b"GET /nope HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404 ")
        assert (await ask(b"POST /x HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 405 ")
        assert (await ask(b"GET /x HTTP/1.1\r\n" + b"X: " + b"a" * 20000 + b"\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
        # Every slot held by a connection that sends nothing (a probe: 19 of 20 scrapes then failed):
        # the one waiting longest makes room, and each scrape is answered.
        idle = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(MAX_CONNECTIONS + 8)]
        for _ in range(5):
            assert (await ask(b"GET /x HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
        for _, writer in idle:
            writer.close()
    finally:
        await server.close()


@pytest.mark.parametrize("sample", ["mds.conf-sample", "cs.conf-sample"])
def test_config_samples_are_valid_node_files(tmp_path: Path, sample: str) -> None:
    shutil.copy(ETC / sample, tmp_path / "node.json")
    write_secret(tmp_path / "secret", b"s" * 32)
    node, _ = load_node(tmp_path)
    assert node.role == sample.split(".")[0]
    assert node.metrics_addr and node.heartbeat_interval == 1.0
    # Every option of the dataclass is documented in the sample.
    text = (ETC / sample).read_text()
    for option in node.to_json():
        assert f'"{option}"' in text, option


@pytest.mark.parametrize("value", ["nope", "1.2.3.4:70000", 9100, ["127.0.0.1:1"]])
def test_bad_metrics_addr_names_the_option(tmp_path: Path, value: object) -> None:
    data = json.loads("\n".join(line for line in (ETC / "cs.conf-sample").read_text().splitlines()
                                if not line.lstrip().startswith("#")))
    data["metrics_addr"] = value
    (tmp_path / "node.json").write_text(json.dumps(data))
    write_secret(tmp_path / "secret", b"s" * 32)
    with pytest.raises(ConfigError, match="'metrics_addr'"):
        load_node(tmp_path)


@pytest.mark.parametrize("value", ["", "0"])
def test_empty_or_zero_metrics_addr_disables(tmp_path: Path, value: str) -> None:
    shutil.copy(ETC / "cs.conf-sample", tmp_path / "node.json")
    text = re.sub(r'"metrics_addr": "[^"]*"', f'"metrics_addr": {json.dumps(value)}',
                  (tmp_path / "node.json").read_text())
    (tmp_path / "node.json").write_text(text)
    write_secret(tmp_path / "secret", b"s" * 32)
    assert load_node(tmp_path)[0].metrics_addr == ""
