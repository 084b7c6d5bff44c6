"""A bad value in a daemon's node.json stops it at start with one line that names the option."""

from __future__ import annotations

import json

import pytest

from chunkfs.common.daemon import free_port

from .conftest import run_cli


@pytest.mark.parametrize(("option", "value"), [
    ("metrics_addr", "not-an-address"),
    ("metrics_addr", 9100),
    ("heartbeat_interval", "fast"),
    ("addr", "127.0.0.1:99999"),
    ("log_max_size", "huge"),
    ("log_max_size", 100),
    ("log_backups", 0),
])
def test_bad_option_names_itself(conf_dir, tmp_path, option, value) -> None:
    node_dir = tmp_path / "mds"
    made = run_cli("-c", "bad", "make-mds", "-I", "-a", f"127.0.0.1:{free_port()}", "-r", str(node_dir))
    assert made.returncode == 0, made.stderr
    path = node_dir / "node.json"
    data = json.loads(path.read_text())
    data[option] = value
    path.write_text(json.dumps(data))
    for args in (["mds", "-r", str(node_dir)], ["mds", "-r", str(node_dir), "--background"]):
        result = run_cli(*args, timeout=30)
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("chunkfs: error: ") and f"'{option}'" in lines[0]


def test_busy_metrics_port_names_the_option(conf_dir, tmp_path) -> None:
    import socket

    node_dir = tmp_path / "mds"
    assert run_cli("-c", "busy", "make-mds", "-I", "-a", f"127.0.0.1:{free_port()}", "-r", str(node_dir),
                   "--metrics-addr", "127.0.0.1:1").returncode == 0
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        path = node_dir / "node.json"
        data = json.loads(path.read_text())
        data["metrics_addr"] = f"127.0.0.1:{held.getsockname()[1]}"
        path.write_text(json.dumps(data))
        result = run_cli("mds", "-r", str(node_dir), timeout=30)
    assert result.returncode == 1
    assert "'metrics_addr'" in result.stderr.strip().splitlines()[-1]
