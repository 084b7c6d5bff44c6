"""`top` on a narrow screen leaves columns out instead of cutting values short (an operator probe)."""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console

from chunkfs.cli import top, top_command


def _stat() -> dict[str, Any]:
    cs = [{"id": i, "status": "active", "total": 252 * 2**30, "free": 46 * 2**30, "replicas": 12345,
           "io": {"read_bps": 123456789, "write_bps": 98765432, "read_iops": 1234, "write_iops": 5678,
                  "read_latency": 0.0012},
           "load": 3, "proc": {"cpu": 45.3}, "host": f"storage-node-{i}", "last_seen": 0.1, "draining": i == 2}
          for i in (1, 2, 3)]
    mds = [{"id": i, "role": "master" if i == 1 else "follower", "term": 3, "commit": 123456,
            "proc": {"cpu": 12.5, "rss": 80 * 2**20, "uptime": 30 * 3600}, "addr": "127.0.0.1:20723"}
           for i in (1, 2, 3)]
    return {"cluster": {"name": "prod"}, "status": "healthy", "space": {"total": 756 * 2**30, "free": 138 * 2**30},
            "cs": cs, "mds": mds, "chunks": {"healthy": 123}, "io": {}, "clients": []}


def _screen(width: int) -> str:
    console = Console(width=width, soft_wrap=False, file=io.StringIO())
    console.print(top.render(top.TopState(stat=_stat()), console.width))
    return console.file.getvalue()  # type: ignore[attr-defined]


@pytest.mark.parametrize("width", [top_command.MIN_WIDTH, 80, 100])
def test_a_narrow_screen_loses_columns_not_digits(width: int) -> None:
    screen = _screen(width)
    assert "…" not in screen
    assert all(len(line) <= width for line in screen.splitlines())
    rows = [line.split() for line in screen.splitlines() if line.split()[:2] in (["2", "active"], ["1", "master"])]
    assert len(rows) == 2
    cs_row, mds_row = (rows[0], rows[1]) if rows[0][1] == "active" else (rows[1], rows[0])
    # The columns an operator needs most stay, whole: free space, replicas, rates, the draining flag.
    assert {"46.0G", "12345", "117.7M", "94.2M"} <= set(cs_row) and cs_row[-1] == "D"
    assert mds_row[:4] == ["1", "master", "3", "123456"] and mds_row[-1] == "127.0.0.1:20723"


def test_a_wide_screen_shows_every_column() -> None:
    screen = _screen(160)
    for header in ("SPACE", "QDEPTH", "HOST", "UPTIME", "MEM"):
        assert header in screen
    assert "storage-node-2" in screen


def test_every_sort_column_the_command_takes_has_its_keys() -> None:
    assert set(top.SORTS) == set(top_command.SORT_COLUMNS)
